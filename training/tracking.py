"""Metrics sinks behind one seam: `log(metrics, step)` and `close()`.

Only rank 0 writes to MLflow (SQLite allows one writer, and one copy of each figure is what we want); other ranks
and unit tests get `NullTracker`. A restarted worker continues the same MLflow run and skips steps it already
logged, so every step appears once in the metric history.
"""

from __future__ import annotations

import time
from typing import Protocol

# Metric names shared by the loop, tracking and tests.
LOSS, MLM_LOSS, SOP_LOSS = "loss", "mlm_loss", "sop_loss"
MLM_ACC, SOP_ACC = "mlm_acc", "sop_acc"
LR, GRAD_NORM = "lr", "grad_norm"
TOKENS_PER_S, SAMPLES_PER_S = "tokens_per_s", "samples_per_s"
EVAL_LOSS, EVAL_MLM_ACC, EVAL_SOP_ACC = "eval_loss", "eval_mlm_acc", "eval_sop_acc"


class Tracker(Protocol):
    def log(self, metrics: dict[str, float], step: int) -> None: ...
    def close(self) -> None: ...


class NullTracker:
    def log(self, metrics: dict[str, float], step: int) -> None:
        pass

    def close(self) -> None:
        pass


class MlflowTracker:
    """Buffers per-step metrics and writes them to an existing MLflow run in batches."""

    def __init__(self, tracking_uri: str, run_id: str, flush_every: int = 10, system_metrics: bool = True):
        import mlflow
        from mlflow.tracking import MlflowClient

        self.client = MlflowClient(tracking_uri)
        self.run_id = run_id
        self.flush_every = flush_every
        history = self.client.get_metric_history(run_id, LOSS)
        self.last_logged = max((m.step for m in history), default=-1)
        self._buffer: list = []
        self._metric = mlflow.entities.Metric
        self._monitor = None
        if system_metrics:
            from mlflow.system_metrics.system_metrics_monitor import SystemMetricsMonitor

            self._monitor = SystemMetricsMonitor(run_id, resume_logging=True, tracking_uri=tracking_uri)
            self._monitor.start()

    def log(self, metrics: dict[str, float], step: int) -> None:
        if step <= self.last_logged:
            return  # logged before a restart; keep the history free of duplicates
        now = int(time.time() * 1000)
        self._buffer += [self._metric(k, float(v), now, step) for k, v in metrics.items()]
        if len(self._buffer) >= self.flush_every * len(metrics):
            self.flush()

    def flush(self) -> None:
        for start in range(0, len(self._buffer), 1000):  # MLflow's log_batch limit
            self.client.log_batch(self.run_id, metrics=self._buffer[start : start + 1000])
        self._buffer = []

    def close(self) -> None:
        self.flush()
        if self._monitor is not None:
            self._monitor.finish()
