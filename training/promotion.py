"""Gated promotion and rollback on the MLflow model registry: the `champion` alias moves to a candidate version
only when the candidate beats the champion on the same held-out shards, and every decision is kept.

**Evaluation** (`evaluate_model`) runs in this process, without Ray: the eval split of a shard set, files in
name order and rows in file order, epoch-0 masks seeded with `EVAL_SEED` (dynamic masking draws each row's mask
from its key, `training.batches`), `torch.no_grad`, the training loop's `batch_stats` / `summarize`. Same model, same
shards, same `max_sequences`, same machine and torch thread count: the same numbers. A model is only evaluated on shards built with its
own tokenizer (sha256 of `tokenizer/spiece.model`) and vocabulary size; anything else is refused.

**Gate** (`PromotionPolicy.judge`): on every gate metric the candidate must improve on the champion by at least
`margin` (accuracies up, losses down), and on at least one it must be strictly better, so re-registering the
same weights never moves the alias. With several metrics the gate is a partial order: it promotes only a
candidate that is at least as good on all of them, never a trade of one metric for another.

**Decisions.** `promote` returns "promoted" or "rejected"; `rollback` records "rolled back" (its `version`
is the champion it demotes, `champion_after` the one it restores). Each decision is written twice:

- an MLflow run in experiment `albert-promotions` (one run per decision, never edited afterwards) whose tags hold
  the whole record (model_name, version, decision, seq, decided_at, reason, forced, operator_reason,
  previous_champion, champion_after, eval_shards, metrics and policy as JSON), with the policy as params and both
  models' metrics as `candidate.*` / `champion.*` metrics, so `mlflow ui` can chart them. `seq` counts the
  decisions about one registered model (1, 2, …; assigned under the lock, so there are no gaps or repeats).
  The run is created RUNNING before the alias moves and set FINISHED after the version tags are written: its
  status is the commit marker. `history` reads FINISHED records (an interrupted decision stays RUNNING or FAILED,
  visible with `include_unfinished=True`); `rollback` walks them back.
- the latest decision about a version as its version tags (`promotion.decision`, `.decided_at`, `.reason`,
  `.forced`, `.metrics`, `.previous_champion`, `.eval_shards`, `.seq`, `.record` = the run id), so the registry
  UI and `list_models` show it without a search; earlier decisions about the same version (rejected, then
  forced) remain as their own runs.

**Concurrency.** Evaluation is slow, so it happens before the lock. From "read the champion" to "move the alias
and finish the record" a process holds an exclusive `fcntl.flock` on `<home>/locks/promote-<model>.lock`; under it
the champion alias is read again and, if it moved since it was evaluated, the new champion is evaluated there.
So no decision rests on a stale champion, concurrent promotions of different versions end with the best of them
as champion (the gate only ever moves the alias to something strictly better), and the history's `seq` order is
the order in which the decisions took effect. Limits: the lock serialises processes that share one `home` on
one machine's local disk (flock over NFS is not reliable); processes on several machines that share a tracking
server but not a home are not serialised, and need a concurrency limit of one per model above this (the Prefect
flow's). A process killed while holding the lock releases it (the kernel drops it), leaving at most a RUNNING
record. Anything that moves the alias without this module (the MLflow UI) is outside the gate and the history.
"""

from __future__ import annotations

import contextlib
import json
import math
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch

from albert_core.checkpoint import load_model
from albert_core.errors import UserError
from albert_core.storage import exclusive_lock, sha256_file, validate_name
from albert_core.tokenizer import SentencePieceTokenizer
from data_jobs.shards import ShardsConfig, load_manifest, row_schema, shards_dir
from training.batches import STATS, batch_spec, summarize, to_model_inputs
from training.registry import (
    CANDIDATE,
    configure_mlflow,
    download_model,
    get_or_create_experiment,
    retry_transient,
)
from training.step import eval_sums

CHAMPION = "champion"
EXPERIMENT = "albert-promotions"
PROMOTED, REJECTED, ROLLED_BACK = "promoted", "rejected", "rolled back"
# Seeds the eval rows' dynamic masks: TrainConfig's default seed, so the masks are those training evaluated on.
EVAL_SEED = 0
EVAL_BATCH = 64
# What the gate may compare: the model's held-out figures. Evaluation also reports two figures of the data, the
# length rule's accuracy and the share of length-balanced pairs, which are the same for every model.
EVAL_METRICS = (
    "eval_loss",
    "eval_mlm_loss",
    "eval_sop_loss",
    "eval_mlm_acc",
    "eval_sop_acc",
    "eval_sop_balanced_acc",
)
DATA_FIGURES = ("eval_sop_length_baseline", "eval_sop_balanced_share")
LOCK_TIMEOUT_S = 600.0
MAX_REASON_CHARS = 1000
TAG = "promotion."  # prefix of the version tags that hold a version's latest decision
KEY_TAGS = ("shards", "run_name", "final_step", "tokenizer_sha256", "run_id")


def lower_is_better(metric: str) -> bool:
    return metric.endswith("_loss")


# --- evaluation --------------------------------------------------------------------------------------------------


def evaluate_model(
    model_folder: Path, home: Path, shards_id: str, max_sequences: int | None = None
) -> dict[str, float]:
    """Loss, MLM and SOP accuracy of a model folder (`save_model`, with `tokenizer/`) on the first
    `max_sequences` rows (all when None) of the eval split of shards `shards_id`, plus `sequences` evaluated."""
    return _evaluate(Path(model_folder), Path(home), shards_id, max_sequences, label=str(model_folder))


def _evaluate(
    folder: Path, home: Path, shards_id: str, max_sequences: int | None, label: str
) -> dict[str, float]:
    _check_max_sequences(max_sequences)
    manifest = load_manifest(home, shards_id)
    model = load_model(folder)  # every file checked against the folder's sha256 manifest
    if not (folder / "tokenizer").is_dir():
        raise UserError(f"{label} has no tokenizer/ folder: cannot tell which shards it can be evaluated on")
    tokenizer = SentencePieceTokenizer.load(folder / "tokenizer")
    built_with = manifest["tokenizer"]
    if tokenizer.sha256 != built_with["sha256"]:
        raise UserError(
            f"{label} uses tokenizer sha256 {tokenizer.sha256[:12]}…, shards {shards_id} were built with "
            f"{built_with['name']!r} ({built_with['sha256'][:12]}…): evaluate on shards of its own tokenizer"
        )
    vocab_sizes = {
        model.config.vocab_size,
        tokenizer.vocab_size,
        built_with.get("vocab_size", tokenizer.vocab_size),
    }
    if len(vocab_sizes) != 1:
        raise UserError(
            f"{label} has vocab_size {model.config.vocab_size}, its tokenizer {tokenizer.vocab_size}, shards "
            f"{shards_id} {built_with.get('vocab_size')}: they must be equal"
        )
    max_seq_len = manifest["parameters"]["max_seq_len"]
    if model.config.max_position_embeddings < max_seq_len:
        raise UserError(
            f"{label} has {model.config.max_position_embeddings} positions, shards {shards_id} hold {max_seq_len}"
        )
    spec = batch_spec(manifest, tokenizer, EVAL_SEED)
    batches = (
        to_model_inputs(rows, spec, epoch=0) for rows in _eval_rows(home, shards_id, manifest, max_sequences)
    )
    stats = eval_sums(model, batches, "fp32", torch.device("cpu"))
    sequences = int(stats[STATS.index("sequences")])
    if sequences == 0:
        raise UserError(f"shards {shards_id} have no eval rows: rebuild them with --eval-share above 0")
    return {**summarize(stats, prefix="eval_"), "sequences": sequences}


def _eval_rows(
    home: Path, shards_id: str, manifest: dict[str, Any], max_sequences: int | None
) -> Iterator[dict[str, np.ndarray]]:
    """Batches of eval rows as numpy columns, in a fixed order: files by name, rows as stored. Each file is
    checked against the sha256 in the manifest first: a promotion must not rest on edited data."""
    folder = shards_dir(home, shards_id)
    expected = row_schema(ShardsConfig(**manifest["parameters"]))
    left = math.inf if max_sequences is None else max_sequences
    for name in sorted(n for n in manifest["files"] if n.startswith("eval/")):
        path = folder / name
        if not path.is_file():
            raise UserError(f"{path} is missing (recorded in the manifest of shards {shards_id})")
        if sha256_file(path) != manifest["files"][name]["sha256"]:
            raise UserError(
                f"{path} changed since shards {shards_id} were built (sha256 differs); rebuild them"
            )
        parquet = pq.ParquetFile(path)
        if not parquet.schema_arrow.equals(expected):
            raise UserError(f"{path} does not have the schema its manifest describes; rebuild the shards")
        for batch in parquet.iter_batches(batch_size=EVAL_BATCH):
            if left <= 0:
                return
            batch = batch.slice(0, int(min(left, batch.num_rows)))
            left -= batch.num_rows
            yield _numpy_columns(batch)


def _numpy_columns(batch: pa.RecordBatch) -> dict[str, np.ndarray]:
    """Fixed-length list columns as (B, L) arrays, the rest as 1-D arrays (what `to_model_inputs` reads)."""
    out = {}
    for name, col in zip(batch.schema.names, batch.columns, strict=True):
        if pa.types.is_fixed_size_list(col.type):
            out[name] = col.flatten().to_numpy().reshape(len(col), col.type.list_size)
        else:
            out[name] = col.to_numpy(zero_copy_only=False)
    return out


def _check_max_sequences(value: int | None) -> None:
    if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
        raise UserError(f"max_sequences must be a positive integer or None, got {value!r}")


# --- the gate ----------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class PromotionPolicy:
    """When a candidate replaces the champion: on each of `metrics` it improves by at least `margin` (accuracies
    up, losses down; one margin in each metric's own units) and on at least one it is strictly better.

    `eval_shards`: the shard set both are evaluated on (None: the candidate version's `shards` tag, the data it
    was trained on, whose eval split it never saw). `max_sequences`: evaluate only the first N eval rows.
    """

    metrics: tuple[str, ...] = ("eval_sop_acc", "eval_mlm_acc")
    margin: float = 0.0
    eval_shards: str | None = None
    max_sequences: int | None = None

    def __post_init__(self) -> None:
        metrics = (self.metrics,) if isinstance(self.metrics, str) else tuple(self.metrics)
        object.__setattr__(self, "metrics", metrics)
        unknown = [m for m in metrics if m not in EVAL_METRICS]
        if not metrics or unknown:
            raise UserError(f"gate metrics must be some of {', '.join(EVAL_METRICS)}, got {list(metrics)}")
        margin = self.margin
        if isinstance(margin, bool) or not isinstance(margin, int | float) or not 0 <= margin < math.inf:
            raise UserError(f"margin must be a number >= 0, got {margin!r}")
        if self.eval_shards is not None:
            validate_name(self.eval_shards, "shard id")
        _check_max_sequences(self.max_sequences)

    def judge(self, candidate: dict[str, float], champion: dict[str, float]) -> tuple[bool, str]:
        """(passes, why): the first metric that falls short with both values, or what improved."""
        improved = []
        for metric in self.metrics:
            new, old = candidate[metric], champion[metric]
            gain = old - new if lower_is_better(metric) else new - old
            if not gain >= self.margin:  # also false for NaN
                sign = "-" if lower_is_better(metric) else "+"
                need = "<=" if lower_is_better(metric) else ">="
                return False, (
                    f"{metric}: candidate {new:.4f}, champion {old:.4f}; "
                    f"needs {need} {old:.4f} {sign} margin {self.margin:g}"
                )
            if gain > 0:
                improved.append(f"{metric} {old:.4f} -> {new:.4f}")
        if not improved:
            return False, f"ties the champion on {', '.join(self.metrics)}: nothing improves"
        return True, "improves " + ", ".join(improved)


# --- the lock ----------------------------------------------------------------------------------------------------


@contextlib.contextmanager
def promotion_lock(home: Path, model_name: str, timeout_s: float = LOCK_TIMEOUT_S) -> Iterator[Path]:
    """Hold the exclusive lock on `<home>/locks/promote-<model_name>.lock` while a decision is made."""
    path = Path(home) / "locks" / f"promote-{validate_name(model_name, 'model name')}.lock"
    with exclusive_lock(path, f"another promotion or rollback of {model_name}", timeout_s):
        yield path


# --- promote / rollback ------------------------------------------------------------------------------------------


def promote(
    model_name: str,
    *,
    home: Path,
    version: int | None = None,
    policy: PromotionPolicy = PromotionPolicy(),
    force: bool = False,
    reason: str | None = None,
) -> dict[str, Any]:
    """Evaluate `version` (None: the one aliased `candidate`) and the champion on the same eval shards and move
    the `champion` alias to the candidate when it passes `policy`'s gate, or regardless with `force` (which
    needs a `reason`). Records the decision (module docstring) and returns it."""
    from mlflow import MlflowClient

    home = Path(home)
    reason = _operator_reason(reason, required=force)
    configure_mlflow(home)
    client = MlflowClient()
    _aliases(client, model_name)  # an unknown model fails here, before anything is evaluated
    candidate = _resolve_version(client, model_name, version)
    cv = str(candidate.version)  # an int from the SQL store in MLflow 3.17, a str elsewhere and in aliases
    shards = policy.eval_shards or candidate.tags.get("shards")
    if not shards:
        raise UserError(f"{model_name} v{cv} has no `shards` tag: name the eval shards (--eval-shards ID)")
    load_manifest(home, shards)  # unknown shards: one line now, not after a download

    evaluated: dict[str, dict[str, float]] = {}

    def evaluate(v: str) -> dict[str, float]:
        if v not in evaluated:
            with tempfile.TemporaryDirectory(prefix="albert-promote-") as tmp:
                folder = download_model(f"models:/{model_name}/{v}", Path(tmp))
                evaluated[v] = _evaluate(folder, home, shards, policy.max_sequences, f"{model_name} v{v}")
        return evaluated[v]

    evaluate(cv)  # the candidate must be measurable on these shards, even when forced
    seen = _aliases(client, model_name).get(CHAMPION)
    if seen is not None and seen != cv:
        with contextlib.suppress(UserError):  # judged under the lock, where the error is evaluated again
            evaluate(seen)

    with promotion_lock(home, model_name):
        champion = _aliases(client, model_name).get(CHAMPION)  # fresh: the alias may have moved meanwhile
        record: dict[str, Any] = {
            "model_name": model_name,
            "version": int(cv),
            "eval_shards": shards,
            "policy": {**asdict(policy), "eval_shards": shards},
            "forced": force,
            "operator_reason": reason,
            "previous_champion": _int_or_none(champion),
        }
        if champion == cv:
            # Nothing to decide (a retried task, a second identical call): the alias stays, nothing is recorded.
            return {
                **record,
                "decision": PROMOTED,
                "promoted": True,
                "reason": f"v{cv} is already the champion; nothing changed",
                "champion_version": int(cv),
                "metrics": {"candidate": evaluated[cv], "champion": evaluated[cv]},
                "decided_at": None,
                "seq": None,
                "record": None,
            }
        champion_metrics: dict[str, float] = {}
        if champion is None:
            passed, why = True, "first champion"
        else:
            try:
                champion_metrics = evaluate(champion)
                passed, why = policy.judge(evaluated[cv], champion_metrics)
                why = f"against champion v{champion}: {why}"
            except UserError as e:
                passed, why = False, f"champion v{champion} cannot be evaluated on shards {shards}: {e}"
        if force and not passed:
            why = f"forced ({reason}); the gate said: {why}"
        promoted = passed or force
        record.update(
            decision=PROMOTED if promoted else REJECTED,
            promoted=promoted,
            reason=why,
            champion_version=int(cv) if promoted else _int_or_none(champion),
            metrics={"candidate": evaluated[cv], "champion": champion_metrics},
        )

        def move_alias() -> None:
            if promoted:
                retry_transient(lambda: client.set_registered_model_alias(model_name, CHAMPION, cv))

        return _commit(client, home, record, move_alias, tagged_versions=[cv])


def rollback(model_name: str, *, home: Path, reason: str | None = None) -> dict[str, Any]:
    """Move `champion` back to the version it replaced: the `previous_champion` of the last recorded promotion
    into the current champion. Repeated rollbacks walk down the chain of promotions."""
    from mlflow import MlflowClient

    home = Path(home)
    reason = _operator_reason(reason, required=False)
    configure_mlflow(home)
    client = MlflowClient()
    _aliases(client, model_name)
    with promotion_lock(home, model_name):
        current = _aliases(client, model_name).get(CHAMPION)
        if current is None:
            raise UserError(f"{model_name} has no champion: there is nothing to roll back")
        into = [
            r
            for r in history(model_name, home=home)
            if r["decision"] == PROMOTED and r["champion_version"] == int(current)
        ]
        if not into:
            raise UserError(
                f"{model_name} v{current} became champion without a recorded promotion: cannot tell what it replaced"
            )
        previous = into[-1]["previous_champion"]
        if previous is None:
            raise UserError(
                f"{model_name} v{current} is the first champion: there is no previous one to roll back to"
            )
        _resolve_version(client, model_name, previous)  # deleted since? say so, not fail in the registry
        why = f"champion v{current} -> v{previous}" + (f": {reason}" if reason else "")
        record = {
            "model_name": model_name,
            "version": int(current),
            "eval_shards": None,
            "policy": None,
            "forced": False,
            "operator_reason": reason,
            "decision": ROLLED_BACK,
            "promoted": False,
            "reason": why,
            "previous_champion": int(current),
            "champion_version": previous,
            "metrics": {"candidate": {}, "champion": {}},
        }

        def move_alias() -> None:
            retry_transient(lambda: client.set_registered_model_alias(model_name, CHAMPION, str(previous)))

        return _commit(client, home, record, move_alias, tagged_versions=[current, str(previous)])


def _commit(
    client: Any,
    home: Path,
    record: dict[str, Any],
    move_alias: Callable[[], None],
    tagged_versions: list[str],
) -> dict[str, Any]:
    """Under the lock: open the history run (RUNNING), move the alias, tag the versions, finish the run. A
    failure on the way marks the run FAILED; a killed process leaves it RUNNING. Either way it is not FINISHED,
    which is what `history` and `rollback` trust."""
    from mlflow.entities import Metric, Param

    name = record["model_name"]
    experiment_id = get_or_create_experiment(EXPERIMENT, home)
    record["seq"] = 1 + max((r["seq"] for r in history(name, home=home, include_unfinished=True)), default=0)
    record["decided_at"] = _now()
    tags = {
        "model_name": name,
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
        version_tags = {
            "decision": record["decision"],
            "decided_at": record["decided_at"],
            "reason": record["reason"],
            "forced": tags["forced"],
            "metrics": tags["metrics"],
            "previous_champion": tags["previous_champion"],
            "eval_shards": tags["eval_shards"],
            "seq": tags["seq"],
            "record": run_id,
        }
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


# --- reading the registry ----------------------------------------------------------------------------------------


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
            filter_string=f"tags.model_name = {_quote(model_name)}",
            run_view_type=ViewType.ALL,
            max_results=1000,
            page_token=token,
        )
        records += [_record(run) for run in page]
        token = page.token
        if not token:
            break
    keep = [r for r in records if include_unfinished or r["status"] == "FINISHED"]
    return sorted(keep, key=lambda r: r["seq"])


def list_models(home: Path, name: str | None = None) -> list[dict[str, Any]]:
    """Registered models (or just `name`) with their aliases and versions: key lineage tags and each version's
    latest promotion decision. What `albert models list` prints."""
    from mlflow import MlflowClient

    configure_mlflow(Path(home))
    client = MlflowClient()
    if name is not None:
        _aliases(client, name)
        names = [name]
    else:
        names, token = [], None
        while True:
            page = client.search_registered_models(max_results=100, page_token=token)
            names += [m.name for m in page]
            token = page.token
            if not token:
                break
    out = []
    for model_name in sorted(names):
        aliases = _aliases(client, model_name)
        by_version: dict[str, list[str]] = {}
        for alias, v in sorted(aliases.items()):
            by_version.setdefault(v, []).append(alias)
        versions = sorted(
            client.search_model_versions(f"name = {_quote(model_name)}", max_results=10000),
            key=lambda mv: int(mv.version),
        )
        summaries = [_version_summary(mv, by_version.get(str(mv.version), [])) for mv in versions]
        aliased = {alias: int(v) for alias, v in sorted(aliases.items())}
        out.append({"name": model_name, "aliases": aliased, "versions": summaries})
    return out


def _version_summary(mv: Any, aliases: list[str]) -> dict[str, Any]:
    tags = mv.tags or {}
    decision = None
    if TAG + "decision" in tags:
        decision = {
            "decision": tags[TAG + "decision"],
            "decided_at": tags.get(TAG + "decided_at"),
            "reason": tags.get(TAG + "reason"),
            "forced": tags.get(TAG + "forced") == "true",
        }
    return {
        "version": int(mv.version),
        "aliases": aliases,
        "created_at": datetime.fromtimestamp(mv.creation_timestamp / 1000, UTC).isoformat(timespec="seconds"),
        "status": mv.status,
        "tags": {k: tags[k] for k in KEY_TAGS if k in tags},
        "last_decision": decision,
    }


def _record(run: Any) -> dict[str, Any]:
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


def _aliases(client: Any, model_name: str) -> dict[str, str]:
    """{alias: version} of a registered model; an unknown name is the user's mistake."""
    from mlflow.exceptions import MlflowException

    try:
        model = retry_transient(lambda: client.get_registered_model(model_name))
    except MlflowException as e:
        if e.error_code in ("RESOURCE_DOES_NOT_EXIST", "INVALID_PARAMETER_VALUE"):
            raise UserError(
                f"no registered model named {model_name!r} (`albert models list` shows them)"
            ) from None
        raise
    return {alias: str(v) for alias, v in (model.aliases or {}).items()}


def _resolve_version(client: Any, model_name: str, version: int | str | None) -> Any:
    """The ModelVersion `version` of `model_name`, or the one aliased `candidate` when None."""
    from mlflow.exceptions import MlflowException

    if version is None:
        aliased = _aliases(client, model_name).get(CANDIDATE)
        if aliased is None:
            raise UserError(f"{model_name} has no `{CANDIDATE}` version: name one with --version")
        version = aliased
    if isinstance(version, bool) or not str(version).isdigit():
        raise UserError(f"a model version is a positive integer, got {version!r}")
    try:
        return retry_transient(lambda: client.get_model_version(model_name, str(int(version))))
    except MlflowException as e:
        if e.error_code in ("RESOURCE_DOES_NOT_EXIST", "INVALID_PARAMETER_VALUE"):
            raise UserError(f"{model_name} has no version {version}") from None
        raise


def _operator_reason(reason: str | None, required: bool) -> str | None:
    reason = " ".join(reason.split()) if reason else None  # one line in tags and in the CLI
    if required and not reason:
        raise UserError(
            "--force needs --reason: say why the gate is overridden, it is recorded with the decision"
        )
    if reason and len(reason) > MAX_REASON_CHARS:
        raise UserError(f"the reason is {len(reason)} characters; keep it under {MAX_REASON_CHARS}")
    return reason


def _quote(value: str) -> str:
    return "'" + value.replace("\\", "\\\\").replace("'", "\\'") + "'"


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds")


def _int_or_none(value: str | int | None) -> int | None:
    return int(value) if value not in (None, "") else None


def _str_or_empty(value: int | None) -> str:
    return "" if value is None else str(value)
