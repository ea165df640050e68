"""Training-step scaling curves: tokens/s of our step and of Hugging Face's vs batch size and sequence length.

The step and its method are `benchmarks.model_step`'s (same weights, same batch, forward + backward, `tiny`,
fp32): ours at task level (MLM head at the masked positions only, what training runs) and at kernel level (full
logits, as HF), HF `AlbertForPreTraining` computing all T x V logits. Masked positions per sequence scale with
the length as the reference's settings do (20 at 128, 80 at 512). Each repetition times every variant at every
point in turn (interleaved, so machine noise hits all alike), after one untimed warm-up step per point; the figure
is the median tokens/s over repetitions with min-max.

Sweeps: batch 4, 8, 16, 32 at seq 128, and seq 64, 128, 256, 512 at batch 8 (`--quick`: batch 4, 16 and seq 64,
256, two repetitions).

Run: `python -m benchmarks.train_curves [--quick]`. Writes benchmarks/results/train_curves.{json,md,png}.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from pathlib import Path
from typing import Any

import torch

from albert_core import AlbertConfig, AlbertForPreTraining
from albert_core.hf import to_hf
from benchmarks import torch_env
from benchmarks.model_step import RESULTS, make_batch, step_fn

PRESET = "tiny"
# variant -> (is HF, task level)
VARIANTS = {"ours, task level": (False, True), "ours, kernel level": (False, False), "HF": (True, False)}
SWEEPS = {
    "batch": {"fixed": 128, "values": (4, 8, 16, 32)},
    "seq_len": {"fixed": 8, "values": (64, 128, 256, 512)},
}
QUICK_SWEEPS = {"batch": {"fixed": 128, "values": (4, 16)}, "seq_len": {"fixed": 8, "values": (64, 256)}}


def points(sweeps: dict[str, dict[str, Any]]) -> list[tuple[int, int]]:
    """(batch, seq_len) of every point of both sweeps, each once."""
    batch_sweep = [(b, sweeps["batch"]["fixed"]) for b in sweeps["batch"]["values"]]
    seq_sweep = [(sweeps["seq_len"]["fixed"], s) for s in sweeps["seq_len"]["values"]]
    return list(dict.fromkeys(batch_sweep + seq_sweep))


def bench(grid: list[tuple[int, int]], reps: int) -> list[dict[str, Any]]:
    torch.manual_seed(0)
    ours = AlbertForPreTraining(AlbertConfig.from_preset(PRESET))
    models = {False: ours, True: to_hf(ours)}
    batches = {(b, s): make_batch(ours.config, b, s, predictions=s * 20 // 128) for b, s in grid}
    times: dict[tuple[int, int, str], list[float]] = {(*p, v): [] for p in grid for v in VARIANTS}
    for rep in range(reps + 1):  # the first pass is the warm-up (allocator, oneDNN kernels for each shape)
        for point, batch in batches.items():
            for variant, (hf, task) in VARIANTS.items():
                started = time.perf_counter()
                step_fn(models[hf], batch, task, hf)
                if rep:
                    times[(*point, variant)].append(time.perf_counter() - started)
    rows = []
    for b, s in grid:
        tps = {v: [b * s / t for t in times[(b, s, v)]] for v in VARIANTS}
        row: dict[str, Any] = {"batch": b, "seq_len": s, "tokens": b * s, "reps": reps}
        for variant, values in tps.items():
            row[variant] = {"median": statistics.median(values), "min": min(values), "max": max(values)}
        ratios = [o / h for o, h in zip(tps["ours, task level"], tps["HF"], strict=True)]
        row["ratio_task_vs_hf"] = {
            "median": statistics.median(ratios),
            "min": min(ratios),
            "max": max(ratios),
        }
        rows.append(row)
        print(f"batch {b:3d} seq {s:4d}: " + ", ".join(f"{v} {row[v]['median']:7.0f}" for v in VARIANTS)
              + f" tokens/s; ours task / HF {row['ratio_task_vs_hf']['median']:.2f}", flush=True)  # fmt: skip
    return rows


def plot(rows: list[dict[str, Any]], sweeps: dict[str, dict[str, Any]], title: str, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")  # files only, no display
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(12, 4.5))
    for ax, (axis, sweep) in zip(axes, sweeps.items(), strict=True):
        fixed = "seq_len" if axis == "batch" else "batch"
        on_curve = sorted((r for r in rows if r[fixed] == sweep["fixed"]), key=lambda r: r[axis])
        xs = [r[axis] for r in on_curve]
        for variant in VARIANTS:
            med = [r[variant]["median"] for r in on_curve]
            err = [[m - r[variant]["min"] for m, r in zip(med, on_curve, strict=True)],
                   [r[variant]["max"] - m for m, r in zip(med, on_curve, strict=True)]]  # fmt: skip
            ax.errorbar(xs, med, yerr=err, marker="o", capsize=3, label=variant)
        ax.set_xscale("log", base=2)
        ax.set_xticks(xs, [str(x) for x in xs])
        ax.set(xlabel=axis.replace("_", " "), ylabel="tokens/s (median, min-max)",
               title=f"tokens/s vs {axis.replace('_', ' ')} ({fixed.replace('_', ' ')} {sweep['fixed']})")  # fmt: skip
        ax.set_ylim(bottom=0)
        ax.grid(alpha=0.3)
        ax.legend()
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="two points per sweep, two repetitions")
    parser.add_argument("--reps", type=int, default=None)
    parser.add_argument("--threads", type=int, default=os.cpu_count())
    args = parser.parse_args()
    sweeps = QUICK_SWEEPS if args.quick else SWEEPS
    reps = args.reps or (2 if args.quick else 3)
    torch.set_num_threads(args.threads)
    env = torch_env()
    rows = bench(points(sweeps), reps)
    env["load_avg_after"] = os.getloadavg()
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "train_curves.json").write_text(json.dumps(
        {"preset": PRESET, "dtype": "fp32", "quick": args.quick, "sweeps": sweeps, "env": env, "rows": rows},
        indent=2))  # fmt: skip
    title = (f"{PRESET} ALBERT training step (forward + backward), fp32, {env['threads']} threads; "
             f"{reps} interleaved repetitions")  # fmt: skip
    plot(rows, sweeps, title, RESULTS / "train_curves.png")
    lines = ["| batch | seq | " + " | ".join(f"{v} tok/s" for v in VARIANTS) + " | ours task / HF |",
             "|---|---|" + "---|" * (len(VARIANTS) + 1)]  # fmt: skip
    lines += [
        f"| {r['batch']} | {r['seq_len']} | "
        + " | ".join(f"{r[v]['median']:.0f}" for v in VARIANTS)
        + f" | {r['ratio_task_vs_hf']['median']:.2f} ({r['ratio_task_vs_hf']['min']:.2f}-"
        f"{r['ratio_task_vs_hf']['max']:.2f}) |"
        for r in rows
    ]
    lines.append(f"\n{title}; load {env['load_avg_before']} before, {env['load_avg_after']} after. "
                 "Plot: train_curves.png")  # fmt: skip
    (RESULTS / "train_curves.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
