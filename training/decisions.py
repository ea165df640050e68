"""The promotion decision log: every decision about a registered model, written by `record_decision` and read
back by `history` (all decisions) and `last_decision` (a version's latest).

A decision is "promoted", "rejected" or "rolled back" (a rollback's `version` is the champion it demotes,
`champion_after` the one it restores). `record_decision` writes it in two places, from one record:

- an MLflow run in experiment `albert-promotions` (one run per decision, never edited afterwards) whose tags hold
  the whole record (model_name, version, decision, seq, decided_at, reason, forced, operator_reason,
  previous_champion, champion_after, eval_shards, metrics and policy as JSON), with the policy as params and both
  models' metrics as `candidate.*` / `champion.*` metrics, so `mlflow ui` can chart them. `seq` counts the
  decisions about one registered model (1, 2, …; assigned under the promotion lock, so there are no gaps or
  repeats). The run is created RUNNING before the alias moves and set FINISHED after the version tags are
  written: its status is the commit marker. `history` reads FINISHED records (an interrupted decision stays
  RUNNING or FAILED, visible with `include_unfinished=True`); `rollback` walks them back.
- the latest decision about a version as its version tags (`promotion.decision`, `.decided_at`, `.reason`,
  `.forced`, `.metrics`, `.previous_champion`, `.eval_shards`, `.seq`, `.record` = the run id), so the registry
  UI and `list_models` show it without a search; earlier decisions about the same version (rejected, then
  forced) remain as their own runs.
"""

from __future__ import annotations

import contextlib
import json
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from training.registry import configure_mlflow, get_or_create_experiment, retry_transient

EXPERIMENT = "albert-promotions"
PROMOTED, REJECTED, ROLLED_BACK = "promoted", "rejected", "rolled back"
TAG = "promotion."  # prefix of the version tags that hold a version's latest decision
# The run tags a version's tags repeat (besides `record`, the run id).
VERSION_TAGS = (
    "decision",
    "decided_at",
    "reason",
    "forced",
    "metrics",
    "previous_champion",
    "eval_shards",
    "seq",
)


def record_decision(
    client: Any,
    home: Path,
    record: dict[str, Any],
    move_alias: Callable[[], None],
    tagged_versions: list[str],
) -> dict[str, Any]:
    """Commit a decision, under the promotion lock: open its run (RUNNING), move the alias, tag the versions,
    finish the run. A failure on the way marks the run FAILED; a killed process leaves it RUNNING. Either way it
    is not FINISHED, which is what `history` and `rollback` trust. Returns `record` with `seq`, `decided_at`
    and `record` (the run id) filled in."""
    from mlflow.entities import Metric, Param

    name = record["model_name"]
    experiment_id = get_or_create_experiment(EXPERIMENT, home)
    record["seq"] = 1 + max((r["seq"] for r in history(name, home=home, include_unfinished=True)), default=0)
    record["decided_at"] = datetime.now(UTC).isoformat(timespec="milliseconds")
    tags = _run_tags(record)
    run = client.create_run(
        experiment_id,
        tags=tags,
        run_name=f"{name} v{record['version']} {record['decision']} #{record['seq']}",
    )
    record["record"] = run_id = run.info.run_id
    try:
        now_ms = int(time.time() * 1000)
        metrics = [
            Metric(f"{who}.{key}", float(value), now_ms, 0)
            for who, values in record["metrics"].items()
            for key, value in values.items()
        ]
        params = [Param(f"policy.{k}", str(v)) for k, v in (record["policy"] or {}).items()]
        client.log_batch(run_id, metrics=metrics, params=params)
        move_alias()
        version_tags = {**{key: tags[key] for key in VERSION_TAGS}, "record": run_id}
        for v in tagged_versions:
            for key, value in version_tags.items():
                retry_transient(
                    lambda v=v, key=key, value=value: client.set_model_version_tag(name, v, TAG + key, value)
                )
        client.set_terminated(run_id, status="FINISHED")
    except BaseException:
        with contextlib.suppress(Exception):
            client.set_terminated(run_id, status="FAILED")
        raise
    return record


def history(model_name: str, *, home: Path, include_unfinished: bool = False) -> list[dict[str, Any]]:
    """Every recorded decision about `model_name`, oldest first (by `seq`): one dict per `albert-promotions` run,
    with `status` and `record` (the run id). Only FINISHED records unless `include_unfinished`."""
    from mlflow import MlflowClient
    from mlflow.entities import ViewType

    configure_mlflow(Path(home))
    client = MlflowClient()
    experiment = client.get_experiment_by_name(EXPERIMENT)
    if experiment is None:
        return []
    records, token = [], None
    while True:
        page = client.search_runs(
            [experiment.experiment_id],
            filter_string=f"tags.model_name = {quote(model_name)}",
            run_view_type=ViewType.ALL,
            max_results=1000,
            page_token=token,
        )
        records += [_from_run(run) for run in page]
        token = page.token
        if not token:
            break
    keep = [r for r in records if include_unfinished or r["status"] == "FINISHED"]
    return sorted(keep, key=lambda r: r["seq"])


def last_decision(version_tags: dict[str, str]) -> dict[str, Any] | None:
    """A model version's latest decision, from its tags (None when it has none)."""
    if TAG + "decision" not in version_tags:
        return None
    return {
        "decision": version_tags[TAG + "decision"],
        "decided_at": version_tags.get(TAG + "decided_at"),
        "reason": version_tags.get(TAG + "reason"),
        "forced": version_tags.get(TAG + "forced") == "true",
    }


def quote(value: str) -> str:
    """`value` as a string literal in an MLflow search filter."""
    return "'" + value.replace("\\", "\\\\").replace("'", "\\'") + "'"


def _run_tags(record: dict[str, Any]) -> dict[str, str]:
    return {
        "model_name": record["model_name"],
        "version": str(record["version"]),
        "decision": record["decision"],
        "seq": str(record["seq"]),
        "decided_at": record["decided_at"],
        "reason": record["reason"],
        "forced": str(record["forced"]).lower(),
        "operator_reason": record["operator_reason"] or "",
        "previous_champion": _str_or_empty(record["previous_champion"]),
        "champion_after": _str_or_empty(record["champion_version"]),
        "eval_shards": record["eval_shards"] or "",
        "metrics": json.dumps(record["metrics"], sort_keys=True),
        "policy": json.dumps(record["policy"], sort_keys=True),
    }


def _from_run(run: Any) -> dict[str, Any]:
    """The record `_run_tags` wrote, read back from its run."""
    tags = run.data.tags
    return {
        "record": run.info.run_id,
        "status": run.info.status,
        "seq": int(tags.get("seq", 0)),
        "model_name": tags.get("model_name"),
        "version": int(tags["version"]),
        "decision": tags.get("decision"),
        "decided_at": tags.get("decided_at"),
        "reason": tags.get("reason"),
        "forced": tags.get("forced") == "true",
        "operator_reason": tags.get("operator_reason") or None,
        "previous_champion": _int_or_none(tags.get("previous_champion")),
        "champion_version": _int_or_none(tags.get("champion_after")),
        "eval_shards": tags.get("eval_shards") or None,
        "metrics": json.loads(tags.get("metrics", "{}")),
        "policy": json.loads(tags.get("policy", "null")),
    }


def _int_or_none(value: str | None) -> int | None:
    return int(value) if value not in (None, "") else None


def _str_or_empty(value: int | None) -> str:
    return "" if value is None else str(value)
