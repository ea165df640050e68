"""Tracking under load: several processes log thousands of metrics into a real MLflow server at once, through
`MlflowTracker` (batched) and one `log_metric` call at a time; every metric is counted back, none lost, none
twice."""

import multiprocessing
import time
from collections import Counter
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

from mlflow import MlflowClient

from training.tracking import MlflowTracker

PROCESSES = 4
BATCHED_STEPS, KEYS = 290, 10  # 2,900 metrics a process through the tracker (a request per 100)
SINGLE_STEPS = 100  # and 100 one request each
_start_together = None  # a barrier, set in each worker process


def _share_barrier(barrier) -> None:
    global _start_together
    _start_together = barrier


def log_metrics(url: str, experiment_id: str, index: int, spill_dir: Path) -> dict:
    client = MlflowClient(url)
    run_id = client.create_run(experiment_id, run_name=f"load-{index}").info.run_id
    tracker = MlflowTracker(url, run_id, spill_path=spill_dir / f"{index}.jsonl", system_metrics=False)
    _start_together.wait()
    started = time.time()
    for step in range(1, BATCHED_STEPS + 1):
        tracker.log({f"k{i}": index * 1e6 + step * 100 + i for i in range(KEYS)}, step)
    tracker.close()
    batched = time.time()
    for step in range(1, SINGLE_STEPS + 1):
        client.log_metric(run_id, "single", index * 1e6 + step, step=step)
    return {
        "run_id": run_id,
        "started": started,
        "batched": batched,
        "ended": time.time(),
        "spilled": tracker.spilled,
    }


def test_concurrent_loggers_lose_and_repeat_nothing(mlflow_server, tmp_path: Path) -> None:
    client = MlflowClient(mlflow_server.url)
    experiment_id = client.create_experiment("load")
    ctx = multiprocessing.get_context("spawn")
    barrier = ctx.Barrier(PROCESSES)
    with ProcessPoolExecutor(
        PROCESSES, mp_context=ctx, initializer=_share_barrier, initargs=(barrier,)
    ) as pool:
        futures = [
            pool.submit(log_metrics, mlflow_server.url, experiment_id, i, tmp_path) for i in range(PROCESSES)
        ]
        results = [f.result(timeout=300) for f in futures]

    assert all(r["spilled"] == 0 for r in results)
    for index, result in enumerate(results):
        for i in range(KEYS):
            history = client.get_metric_history(result["run_id"], f"k{i}")
            assert Counter(m.step for m in history) == Counter(range(1, BATCHED_STEPS + 1)), f"k{i}"
            assert {m.value for m in history} == {
                index * 1e6 + s * 100 + i for s in range(1, BATCHED_STEPS + 1)
            }
        single = client.get_metric_history(result["run_id"], "single")
        assert sorted((m.step, m.value) for m in single) == [
            (s, index * 1e6 + s) for s in range(1, SINGLE_STEPS + 1)
        ]
    total = PROCESSES * (BATCHED_STEPS * KEYS + SINGLE_STEPS)
    seconds = max(r["ended"] for r in results) - min(r["started"] for r in results)
    batched_s = max(r["batched"] for r in results) - min(r["started"] for r in results)
    print(f"\n{total} metrics from {PROCESSES} processes in {seconds:.1f}s: {total / seconds:.0f} metrics/s "
          f"({PROCESSES * BATCHED_STEPS * KEYS / batched_s:.0f}/s batched), all counted back once")  # fmt: skip
