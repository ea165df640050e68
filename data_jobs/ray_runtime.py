"""Connecting to Ray: the cluster at RAY_ADDRESS when set, else a local runtime sized so jobs cannot deadlock.

On a 2-core machine, actor pools or train workers that reserve every CPU leave none for the Ray Data tasks that
feed them, and the job hangs (DESIGN.md pitfalls). Locally we therefore advertise more logical CPUs than the
machine has: Ray's CPU counts are for scheduling, and torch/SentencePiece threads are capped per task anyway.
"""

from __future__ import annotations

import os
import sys

import ray

from albert_core.system import available_cores

LOCAL_CPU_FACTOR = 2  # logical CPUs per physical core advertised to a local runtime


def ensure_ray(num_cpus: int | None = None) -> None:
    """Start (or join) Ray once per process; later calls are no-ops."""
    if ray.is_initialized():
        return
    os.environ.setdefault("RAY_DEDUP_LOGS", "0")
    common = dict(log_to_driver=False, configure_logging=False, include_dashboard=False)
    address = os.environ.get("RAY_ADDRESS")
    if address:
        ray.init(address=address, **common)
    else:
        cpus = num_cpus or max(4, LOCAL_CPU_FACTOR * available_cores())
        ray.init(num_cpus=cpus, **common)
    ctx = ray.data.DataContext.get_current()
    ctx.enable_progress_bars = sys.stderr.isatty()
    ctx.execution_options.preserve_order = False  # results never depend on order (ids carry identity)
    # Ray 2.60's V2 Parquet reader starts 32 footer-reading actors for every read_parquet (~10 s on 2 cores,
    # measured); the V1 reader reads footers in its read tasks (~0.2 s for the same read).
    ctx.use_datasource_v2 = False
