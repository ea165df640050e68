"""Connecting to Ray: the cluster at RAY_ADDRESS when set, else a local runtime sized so jobs cannot deadlock.

On a 2-core machine, actor pools or train workers that reserve every CPU leave none for the Ray Data tasks that
feed them, and the job hangs (DESIGN.md pitfalls). Locally we therefore advertise more logical CPUs than the
machine has: Ray's CPU counts are for scheduling, and torch/SentencePiece threads are capped per task anyway.

A request Ray can never place (GPUs on a CPU-only cluster, a worker larger than every node) does not fail in
Ray: it stays pending, and the job hangs with no message. `require_resources` compares the request with the
nodes' capacity first and fails with one line naming what is missing. Where an autoscaler may add nodes it waits
instead, with a message; whether one runs is told by ALBERT_AUTOSCALER=1 (set it where the cluster autoscales,
e.g. KubeRay's `enableInTreeAutoscaling`): Ray has no cheap public way to ask, and guessing wrong either hangs
again or refuses work an autoscaler would have placed.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import ray

from albert_core.errors import UserError
from albert_core.system import available_cores

LOCAL_CPU_FACTOR = 2  # logical CPUs per physical core advertised to a local runtime
AUTOSCALER_ENV = "ALBERT_AUTOSCALER"  # "1": the cluster may add nodes, so wait for missing resources


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


def _amount(resource: str, value: float) -> str:
    if resource == "memory":
        return f"{value / 2**30:.1f} GiB of memory"
    number = f"{value:g}"
    return f"{number} {resource}" + ("" if value == 1 else "s")


def missing_resources(
    what: str,
    workers: int,
    per_worker: Mapping[str, float],
    nodes: Sequence[Mapping[str, float]],
    *,
    where: str,
    spread: bool = False,
) -> str | None:
    """One line saying why `workers` bundles of `per_worker` (Ray resource names: CPU, GPU, memory in bytes, …)
    cannot all be placed on `nodes` (each node's total resources, as `ray.nodes()` reports them), or None.

    A bundle must fit on one node, so enough in total is not enough: count how many bundles each node holds.
    `spread`: at most one bundle per node (STRICT_SPREAD placement)."""
    ask = {name: amount for name, amount in per_worker.items() if amount > 0}
    asked = f"{what} asks for {workers} worker{'' if workers == 1 else 's'} with"
    for name, need in ask.items():
        total = sum(node.get(name, 0.0) for node in nodes)
        if total < workers * need:
            return f"{asked} {_amount(name, need)} each; {where} has {_amount(name, total)}"
    per_node = [
        min((int(node.get(n, 0.0) // need) for n, need in ask.items()), default=workers) for node in nodes
    ]
    placeable = sum(min(k, 1) if spread else k for k in per_node)
    if placeable >= workers:
        return None
    bundle = " and ".join(_amount(n, need) for n, need in ask.items())
    layout = " on separate nodes" if spread else ""
    return f"{asked} {bundle} each{layout}; {where} has room for {placeable}"


def require_resources(
    what: str,
    workers: int,
    per_worker: Mapping[str, float],
    *,
    spread: bool = False,
    log: Callable[[str], None] = print,
) -> None:
    """Fail fast with a UserError when the connected Ray cannot place the request; with ALBERT_AUTOSCALER=1,
    log one line saying the request waits for the autoscaler instead."""
    nodes = [node["Resources"] for node in ray.nodes() if node.get("Alive")]
    address = os.environ.get("RAY_ADDRESS")
    where = f"the Ray cluster at {address}" if address else "the local Ray runtime"
    missing = missing_resources(what, workers, per_worker, nodes, where=where, spread=spread)
    if missing is None:
        return
    if os.environ.get(AUTOSCALER_ENV) == "1":
        log(f"{missing} now; waiting for the autoscaler to add it ({AUTOSCALER_ENV}=1)")
        return
    raise UserError(missing)


def release_memory() -> None:
    """Give the memory Arrow has freed back to the OS. Its allocator (mimalloc) keeps freed pages until the
    process allocates again, so an idle Ray worker otherwise holds its last task's peak: 0.2-0.5 GB each
    (measured USS) after the tokenizer job's sampling, all of it counted against the node."""
    import pyarrow as pa

    pa.default_memory_pool().release_unused()


def run_tasks(
    fn: Callable[..., Any], calls: Sequence[tuple], what: str, memory: int | None = None
) -> list[Any]:
    """`fn(*args)` for every args tuple, as Ray tasks of one CPU (and `memory` bytes) each; results in call order.
    Each task gives its freed memory back when it ends. Progress on stderr when it is a terminal. Interrupted,
    it cancels what is still running: callers remove the folders their tasks write into."""
    # SPREAD: over the cluster's nodes, as Ray Data spreads its tasks (the default packs them onto the driver's node)
    remote = ray.remote(num_cpus=1, memory=memory, max_retries=2, scheduling_strategy="SPREAD")(_releasing)
    remote = remote.options(name=fn.__name__)
    refs = [remote.remote(fn, *args) for args in calls]
    pending, done = list(refs), 0
    try:
        while pending:
            ready, pending = ray.wait(pending, num_returns=len(pending), timeout=2.0)
            done += len(ready)
            if sys.stderr.isatty():
                print(f"\r{what} {done}/{len(refs)}", end="" if pending else "\n", file=sys.stderr)
    except BaseException:
        for task in pending:
            ray.cancel(task, force=True)
        raise
    return ray.get(refs)  # every task has ended: a failure raises here


def _releasing(fn: Callable[..., Any], *args: Any) -> Any:
    result = fn(*args)
    release_memory()
    return result
