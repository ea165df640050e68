"""Data-parallel scaling on this machine (issue 5, P6): 2 Ray Train workers x 1 thread vs 1 worker x 2 threads.

Both variants are whole `training.run.train` runs (Ray Train TorchTrainer, Ray Data shards, MLflow tracking, the
final model registered), `tiny` preset, the same global batch (32 sequences per optimizer step) and step count;
`run.py` gives each worker cores // workers torch threads. The figure per run is the median of the loop's
per-step `samples_per_s` (global sequences per second of wall time on rank 0, all-reduced over ranks) from the
MLflow metric history, after the first `SKIP_STEPS` steps (start-up, first DDP bucket building). Evaluation and
checkpointing happen only at the last step, so they do not disturb the steps that count.

Repetitions are interleaved, the order alternating each time (so machine noise and any warming hits both
alike); the ratio is 2x1 / 1x2 per repetition, reported as median with min-max. Goal (issue 5): ratio >= 0.85.

Set-up (not timed): `benchmarks.train_loader.build_bench_shards` (static shards, seq 128, WikiText-2 valid +
Gutenberg books; `--quick`: WikiText-2 valid alone) in a temporary ALBERT_HOME (or `--home`, reused) whose
embedded SQLite MLflow store is used (MLFLOW_TRACKING_URI and MLFLOW_REGISTRY_URI are unset for this process).

`--quick`: one run of each variant, 20 steps (15 counted).

Run: `python -m benchmarks.train_scaling [--quick]`. Writes benchmarks/results/train_scaling.{json,md}.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from pathlib import Path
from typing import Any

from benchmarks.train_loader import RESULTS, bench_home, build_bench_shards, environment, log
from training import tracking as m
from training.config import TrainConfig
from training.run import train

GLOBAL_BATCH = 32
SKIP_STEPS = 5
VARIANTS = {"1x2": 1, "2x1": 2}  # name (workers x threads on 2 cores) -> workers
GOAL = 0.85


def run_variant(home: Path, shard_id: str, workers: int, steps: int) -> dict[str, Any]:
    """One training run; its median samples/s over the steps after the first SKIP_STEPS."""
    from mlflow.tracking import MlflowClient

    cfg = TrainConfig(shards=shard_id, preset="tiny", workers=workers, batch_size=GLOBAL_BATCH, max_steps=steps,
                      eval_every=steps, checkpoint_every=steps, model_name="albert-tiny-scaling-bench")  # fmt: skip
    started = time.perf_counter()
    summary = train(cfg, home=home, progress=log)
    wall = time.perf_counter() - started
    history = MlflowClient(summary["tracking_uri"]).get_metric_history(summary["run_id"], m.SAMPLES_PER_S)
    rates = [h.value for h in sorted(history, key=lambda h: h.step) if h.step > SKIP_STEPS]
    if len(rates) < 5:
        raise RuntimeError(f"only {len(rates)} steps after the first {SKIP_STEPS}: ask for more --steps")
    return {
        "workers": workers,
        "samples_per_s": statistics.median(rates),
        "samples_per_s_min": min(rates),
        "samples_per_s_max": max(rates),
        "steps_counted": len(rates),
        "run_seconds": round(wall, 1),
        "load_avg_after": os.getloadavg(),  # other processes on the machine slow both variants alike
        "final_loss": summary["metrics"].get(m.LOSS),
        "run_id": summary["run_id"],
    }


def bench(home: Path, shard_id: str, reps: int, steps: int) -> dict[str, Any]:
    runs: dict[str, list[dict[str, Any]]] = {name: [] for name in VARIANTS}
    for rep in range(reps):
        order = list(VARIANTS) if rep % 2 == 0 else list(reversed(VARIANTS))
        for name in order:
            run = run_variant(home, shard_id, VARIANTS[name], steps)
            runs[name].append(run)
            log(f"rep {rep} {name}: {run['samples_per_s']:.1f} samples/s (run {run['run_seconds']} s, "
                f"load {run['load_avg_after'][0]:.1f})")  # fmt: skip
    ratios = [a["samples_per_s"] / b["samples_per_s"] for a, b in zip(runs["2x1"], runs["1x2"], strict=True)]
    return {
        "preset": "tiny", "global_batch": GLOBAL_BATCH, "steps": steps, "skip_steps": SKIP_STEPS, "reps": reps,
        **{f"samples_per_s_{name}": statistics.median(r["samples_per_s"] for r in runs[name]) for name in VARIANTS},
        "ratio": statistics.median(ratios), "ratio_min": min(ratios), "ratio_max": max(ratios),
        "ratios": ratios, "runs": runs,
    }  # fmt: skip


def write_results(
    result: dict[str, Any], env: dict[str, Any], shard_id: str, seq_len: int, quick: bool
) -> str:
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "train_scaling.json").write_text(
        json.dumps(
            {
                "goal": f"ratio >= {GOAL:g}",
                "quick": quick,
                "env": env,
                "shards": shard_id,
                "seq_len": seq_len,
                "result": result,
            },
            indent=2,
        )  # fmt: skip
    )
    r = result
    met = "met" if r["ratio"] >= GOAL else "missed"
    text = (
        "| variant | workers x threads | samples/s (median of runs) |\n|---|---|---|\n"
        f"| 1x2 | 1 x {env['cpus'] // 1} | {r['samples_per_s_1x2']:.1f} |\n"
        f"| 2x1 | 2 x {env['cpus'] // 2} | {r['samples_per_s_2x1']:.1f} |\n\n"
        f"ratio 2x1 / 1x2: **{r['ratio']:.2f}** ({r['ratio_min']:.2f}-{r['ratio_max']:.2f}), goal >= {GOAL:g}: "
        f"{met}\n\n"
        f"`training.run.train`, tiny preset, global batch {r['global_batch']}, seq {seq_len}, {r['steps']} steps "
        f"per run (per-step samples/s from MLflow, median after step {r['skip_steps']}), {r['reps']} interleaved "
        f"repetitions; {env['cpus']} cores, load {env['load_avg_before']} before, {env['load_avg_after']} after\n"
    )
    (RESULTS / "train_scaling.md").write_text(text)
    return text


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="one run of each variant, 20 steps")
    parser.add_argument("--reps", type=int, default=None)
    parser.add_argument("--steps", type=int, default=None)
    parser.add_argument("--seq-len", type=int, default=128)
    parser.add_argument("--home", default=None, help="ALBERT_HOME to build in and reuse (default: temporary)")
    args = parser.parse_args()
    # A run's start-up (Ray Train workers, MLflow, registering the model) is most of a short run's time.
    reps = args.reps or (1 if args.quick else 3)
    steps = args.steps or (20 if args.quick else 40)
    for var in ("MLFLOW_TRACKING_URI", "MLFLOW_REGISTRY_URI"):  # the temporary home's SQLite store
        os.environ.pop(var, None)
    with bench_home(args.home) as home:
        shard_id = build_bench_shards(home, args.seq_len, quick=args.quick)["static"]
        env = environment()
        result = bench(home, shard_id, reps, steps)
        env["load_avg_after"] = os.getloadavg()
    print(write_results(result, env, shard_id, args.seq_len, args.quick))


if __name__ == "__main__":
    main()
