"""Metrics sinks behind one seam: `log(metrics, step)`, `checkpoint()` and `close()`.

Only rank 0 writes to MLflow (SQLite allows one writer, and one copy of each figure is what we want); other ranks
and unit tests get `NullTracker`. A restarted worker continues the same MLflow run and skips steps it already
logged, so every step appears once in the metric history.

An unreachable tracking server never stops training: metrics stay buffered (one warning names the server and how
many are pending), later flushes retry with backoff, and what cannot be delivered by `close()` — or would not fit
in memory — is written to a JSON-lines spill file that `replay_spilled` (or the next worker) logs back.
Resending a batch whose reply was lost adds nothing: MLflow's SQL store ignores a metric identical in key, step,
timestamp and value to one it has.
"""

from __future__ import annotations

import itertools
import json
import logging
import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Protocol

logger = logging.getLogger(__name__)

# Metric names shared by the loop, tracking and tests.
LOSS, MLM_LOSS, SOP_LOSS = "loss", "mlm_loss", "sop_loss"
MLM_ACC, SOP_ACC = "mlm_acc", "sop_acc"
LR, GRAD_NORM = "lr", "grad_norm"
TOKENS_PER_S, SAMPLES_PER_S = "tokens_per_s", "samples_per_s"
SOP_LENGTH_BASELINE, SOP_BALANCED_ACC, SOP_BALANCED_SHARE = (
    "sop_length_baseline",
    "sop_balanced_acc",
    "sop_balanced_share",
)
EVAL_LOSS, EVAL_MLM_LOSS, EVAL_MLM_ACC, EVAL_SOP_ACC = (
    "eval_loss",
    "eval_mlm_loss",
    "eval_mlm_acc",
    "eval_sop_acc",
)
EVAL_SOP_LENGTH_BASELINE, EVAL_SOP_BALANCED_ACC = "eval_sop_length_baseline", "eval_sop_balanced_acc"

BATCH_LIMIT = 1000  # MLflow's log_batch limit on metrics per request
# MLflow's REST client retries a refused connection for minutes by default; a training worker fails fast and
# retries on its own schedule instead (unless the user chose other values).
FAST_FAIL_ENV = {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "1", "MLFLOW_HTTP_REQUEST_TIMEOUT": "10"}


class Tracker(Protocol):
    def log(self, metrics: dict[str, float], step: int) -> None: ...
    def checkpoint(self) -> None: ...
    def close(self) -> None: ...


class NullTracker:
    def log(self, metrics: dict[str, float], step: int) -> None:
        pass

    def checkpoint(self) -> None:
        pass

    def close(self) -> None:
        pass


def is_unavailable(error: Exception) -> bool:
    """True for a tracking store that cannot answer now (refused connection, timeout, HTTP 5xx or 429); False for
    a request it refused (a 4xx: retrying would fail again)."""
    from mlflow.exceptions import MlflowException

    if isinstance(error, MlflowException):
        status = error.get_http_status_code()
        return status >= 500 or status == 429
    return isinstance(error, OSError)  # requests' ConnectionError is one


class MlflowTracker:
    """Buffers per-step metrics and writes them to an existing MLflow run in batches, surviving outages."""

    def __init__(
        self,
        tracking_uri: str,
        run_id: str,
        *,
        spill_path: Path,
        resume_step: int = 0,
        flush_every: int = 10,
        max_pending: int = 100_000,
        retry_max_s: float = 60.0,
        system_metrics: bool = True,
    ):
        import mlflow
        from mlflow.tracking import MlflowClient

        self.client = MlflowClient(tracking_uri)
        self.tracking_uri, self.run_id = tracking_uri, run_id
        self.spill_path = spill_path
        self.flush_every, self.max_pending, self.retry_max_s = flush_every, max_pending, retry_max_s
        self._metric = mlflow.entities.Metric
        self._buffer: list = []
        self._failures = 0  # consecutive failed flushes; drives the backoff
        self._next_try = 0.0
        self.delivered = self.spilled = 0
        try:
            if spill_path.is_file():
                self.delivered += replay_spilled(tracking_uri, run_id, spill_path)
            history = self.client.get_metric_history(run_id, LOSS)
            self.last_logged = max((m.step for m in history), default=-1)
        except Exception as e:
            if not is_unavailable(e):
                raise
            # Steps up to the checkpoint were delivered or spilled before it was taken; later ones may be
            # logged twice if the previous worker delivered them before it died.
            self.last_logged = max(resume_step, _last_spilled_step(spill_path))
            self._warn_unavailable(e)
        self._monitor = None
        if system_metrics:
            from mlflow.system_metrics.system_metrics_monitor import SystemMetricsMonitor

            # It logs from its own thread and stops (with a warning) when the server fails; training goes on.
            self._monitor = SystemMetricsMonitor(run_id, resume_logging=True, tracking_uri=tracking_uri)
            self._monitor.start()

    @property
    def pending(self) -> int:
        return len(self._buffer)

    def log(self, metrics: dict[str, float], step: int) -> None:
        if step <= self.last_logged:
            return  # logged before a restart; keep the history free of duplicates
        now = int(time.time() * 1000)
        self._buffer += [self._metric(k, float(v), now, step) for k, v in metrics.items()]
        if len(self._buffer) >= self.flush_every * len(metrics):
            self.flush()
        if len(self._buffer) > self.max_pending:
            self._spill(f"more than {self.max_pending} metrics are pending")

    def flush(self, force: bool = False) -> bool:
        """Deliver the buffer; True when it is empty afterwards. While the server is failing, attempts are spaced
        out (exponential backoff up to `retry_max_s`) unless `force`d. Metrics spilled earlier are replayed."""
        if not self._buffer and not self.spill_path.is_file():
            return True
        if not force and time.monotonic() < self._next_try:
            return False
        try:
            for chunk in _whole_steps(self._buffer, BATCH_LIMIT):
                self.client.log_batch(self.run_id, metrics=chunk)
                self._buffer = self._buffer[len(chunk) :]
                self.delivered += len(chunk)
            if self.spill_path.is_file():  # spilled during an outage that is over now
                self.delivered += replay_spilled(self.tracking_uri, self.run_id, self.spill_path)
        except Exception as e:
            if not is_unavailable(e):
                raise
            self._failures += 1
            self._next_try = time.monotonic() + min(self.retry_max_s, 2.0**self._failures)
            if self._failures == 1:
                self._warn_unavailable(e)
            return False
        if self._failures:
            logger.warning("MLflow at %s is reachable again; pending metrics delivered", self.tracking_uri)
            self._failures = 0
        return True

    def checkpoint(self) -> None:
        """Called before a checkpoint is taken: afterwards no step up to it exists only in this process's memory
        (a restart resumes after the checkpoint and would not log those steps again)."""
        if not self.flush(force=True):
            self._spill("the tracking server is unreachable at a checkpoint")

    def close(self) -> None:
        if not self.flush(force=True):
            self._spill("the tracking server is still unreachable at the end of training")
        if self._monitor is not None:
            self._monitor.finish()

    def _warn_unavailable(self, error: Exception) -> None:
        logger.warning(
            "MLflow at %s is unreachable (%s); training continues, %d metrics pending, retrying with backoff",
            self.tracking_uri, str(error).splitlines()[0][:200], len(self._buffer),
        )  # fmt: skip

    def _spill(self, why: str) -> None:
        write_spill(self.spill_path, self._buffer)
        logger.warning(
            "%s: %d more metrics written to %s; `replay_spilled` (or resuming this run) logs them to MLflow",
            why, len(self._buffer), self.spill_path,
        )  # fmt: skip
        self.spilled += len(self._buffer)
        self._buffer = []


def _whole_steps(metrics: list, limit: int) -> Iterator[list]:
    """Chunks of at most `limit` metrics that split no step (unless one step alone has more), so a step is
    delivered whole or not at all: a restart decides what to skip by the last step in the history."""
    chunk: list = []
    for _, group in itertools.groupby(metrics, key=lambda m: m.step):
        step_metrics = list(group)
        if chunk and len(chunk) + len(step_metrics) > limit:
            yield chunk
            chunk = []
        chunk += step_metrics
        while len(chunk) > limit:
            yield chunk[:limit]
            chunk = chunk[limit:]
    if chunk:
        yield chunk


def write_spill(path: Path, metrics: list) -> None:
    """Append metrics to a JSON-lines file (one metric a line), flushed to disk before returning."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a", encoding="utf-8") as f:
        for m in metrics:
            f.write(
                json.dumps({"key": m.key, "value": m.value, "timestamp": m.timestamp, "step": m.step}) + "\n"
            )
        f.flush()
        os.fsync(f.fileno())


def _read_spill(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def _last_spilled_step(path: Path) -> int:
    if not path.is_file():
        return -1
    return max((row["step"] for row in _read_spill(path)), default=-1)


def replay_spilled(tracking_uri: str, run_id: str, path: Path) -> int:
    """Log a spill file's metrics to run `run_id`, skipping (key, step) pairs the run already has, then delete the
    file; return how many were logged. Safe to repeat after a failure part way."""
    from mlflow.entities import Metric
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri)
    rows = _read_spill(path)
    known = {
        key: {m.step for m in client.get_metric_history(run_id, key)} for key in {row["key"] for row in rows}
    }
    todo, seen = [], set()
    for row in rows:
        if row["step"] not in known[row["key"]] and (row["key"], row["step"]) not in seen:
            seen.add((row["key"], row["step"]))
            todo.append(Metric(row["key"], row["value"], row["timestamp"], row["step"]))
    for chunk in _whole_steps(todo, BATCH_LIMIT):
        client.log_batch(run_id, metrics=chunk)
    path.unlink()
    if todo:
        logger.warning("replayed %d spilled metrics from %s into MLflow run %s", len(todo), path, run_id)
    return len(todo)
