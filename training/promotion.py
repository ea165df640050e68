"""Gated promotion and rollback on the MLflow model registry: the `champion` alias moves to a candidate version
only when the candidate beats the champion on the same held-out shards, and every decision is kept.

This module orchestrates; each step has its own module:

- `training.evaluation`: both models' figures on the same eval rows (in this process, without Ray);
- `training.gate`: the pure decision, `PromotionPolicy` and `decide`;
- `training.decisions`: the decision log (an `albert-promotions` run per decision, and version tags), `history`.

`promote` returns "promoted" or "rejected"; `rollback` records "rolled back".

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
import tempfile
from collections.abc import Iterator
from dataclasses import asdict
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from albert_core.errors import UserError
from albert_core.storage import exclusive_lock, validate_name
from data_jobs.shards import load_manifest
from training.decisions import (
    EXPERIMENT,
    PROMOTED,
    REJECTED,
    ROLLED_BACK,
    TAG,
    history,
    last_decision,
    quote,
    record_decision,
)
from training.evaluation import DATA_FIGURES, EVAL_BATCH, EVAL_SEED, evaluate_model
from training.gate import EVAL_METRICS, PromotionPolicy, decide, lower_is_better
from training.registry import CANDIDATE, configure_mlflow, download_model, retry_transient

# Also the names callers imported from here before evaluation, the gate and the log had modules of their own.
__all__ = [
    "CHAMPION", "DATA_FIGURES", "EVAL_BATCH", "EVAL_METRICS", "EVAL_SEED", "EXPERIMENT", "KEY_TAGS",
    "PROMOTED", "REJECTED", "ROLLED_BACK", "TAG", "PromotionPolicy", "evaluate_model", "history",
    "list_models", "lower_is_better", "promote", "promotion_lock", "rollback",
]  # fmt: skip

CHAMPION = "champion"
LOCK_TIMEOUT_S = 600.0
MAX_REASON_CHARS = 1000
KEY_TAGS = ("shards", "run_name", "final_step", "tokenizer_sha256", "run_id")  # lineage `list_models` shows
DEFAULT_POLICY = PromotionPolicy()  # the default gate: SOP and MLM accuracy, no margin


@contextlib.contextmanager
def promotion_lock(home: Path, model_name: str, timeout_s: float = LOCK_TIMEOUT_S) -> Iterator[Path]:
    """Hold the exclusive lock on `<home>/locks/promote-<model_name>.lock` while a decision is made."""
    path = Path(home) / "locks" / f"promote-{validate_name(model_name, 'model name')}.lock"
    with exclusive_lock(path, f"another promotion or rollback of {model_name}", timeout_s):
        yield path


def promote(
    model_name: str,
    *,
    home: Path,
    version: int | None = None,
    policy: PromotionPolicy = DEFAULT_POLICY,
    force: bool = False,
    reason: str | None = None,
) -> dict[str, Any]:
    """Evaluate `version` (None: the one aliased `candidate`) and the champion on the same eval shards and move
    the `champion` alias to the candidate when it passes `policy`'s gate, or regardless with `force` (which
    needs a `reason`). Records the decision (`training.decisions`) and returns it."""
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
                evaluated[v] = evaluate_model(
                    folder, home, shards, policy.max_sequences, label=f"{model_name} v{v}"
                )
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
        unmeasurable = None
        if champion is not None:
            try:
                champion_metrics = evaluate(champion)
            except UserError as e:
                unmeasurable = f"champion v{champion} cannot be evaluated on shards {shards}: {e}"
        verdict = decide(
            policy,
            evaluated[cv],
            champion_metrics,
            champion_version=champion,
            champion_unmeasurable=unmeasurable,
            forced_because=reason if force else None,
        )
        record.update(
            decision=PROMOTED if verdict.promote else REJECTED,
            promoted=verdict.promote,
            reason=verdict.reason,
            champion_version=int(cv) if verdict.promote else _int_or_none(champion),
            metrics={"candidate": evaluated[cv], "champion": champion_metrics},
        )

        def move_alias() -> None:
            if verdict.promote:
                retry_transient(lambda: client.set_registered_model_alias(model_name, CHAMPION, cv))

        return record_decision(client, home, record, move_alias, tagged_versions=[cv])


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

        return record_decision(client, home, record, move_alias, tagged_versions=[current, str(previous)])


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
            client.search_model_versions(f"name = {quote(model_name)}", max_results=10000),
            key=lambda mv: int(mv.version),
        )
        summaries = [_version_summary(mv, by_version.get(str(mv.version), [])) for mv in versions]
        aliased = {alias: int(v) for alias, v in sorted(aliases.items())}
        out.append({"name": model_name, "aliases": aliased, "versions": summaries})
    return out


def _version_summary(mv: Any, aliases: list[str]) -> dict[str, Any]:
    tags = mv.tags or {}
    return {
        "version": int(mv.version),
        "aliases": aliases,
        "created_at": datetime.fromtimestamp(mv.creation_timestamp / 1000, UTC).isoformat(timespec="seconds"),
        "status": mv.status,
        "tags": {k: tags[k] for k in KEY_TAGS if k in tags},
        "last_decision": last_decision(tags),
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


def _int_or_none(version: str | None) -> int | None:
    return None if version is None else int(version)
