"""SOP learning curve (issue 5): does a `tiny` ALBERT learn sentence order and masked tokens from real text?

One `training.run.train` run (Ray Train, the defaults of `TrainConfig`: AdamW, warm-up then linear decay) on
static shards of WikiText-2 valid + the Gutenberg books, evaluated on the held-out documents every `EVAL_EVERY`
steps. The histories are read back from the run's MLflow metrics (`MlflowClient.get_metric_history`), the way a
user would see them: per step the training loss and accuracies, and per evaluation `eval_loss`, `eval_mlm_acc`
and `eval_sop_acc` over the whole held-out split, with the length rule's accuracy on the same rows and the
model's accuracy on length-balanced pairs (the figures that say whether order, not length, was learned). The SOP baseline is not 0.5: pairs are swapped half of the
time, but a chunk with a single sentence becomes a negative with label 1 (the reference's rule), and a book whose
pass drew a short target yields thousands of those, so label 1 dominates. The majority-class share of each split
is measured from the shards and drawn as the baseline to beat.
The training curves are plotted as running means; they swing with the document being read, because the loader
streams each shard file in document order (a book's instances, pass after pass, follow one another), so read
the evaluation points for progress.

Set-up (not timed): `benchmarks.train_loader.build_bench_shards` (seq 128, dupe factor 2, 5% of documents held
out) in a temporary ALBERT_HOME with its embedded SQLite MLflow store (MLFLOW_TRACKING_URI and
MLFLOW_REGISTRY_URI are unset for this process).

Run: `python -m benchmarks.learning_curve [--quick] [--steps N]`. Writes
benchmarks/results/learning_curve.{json,md,png}.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq

from benchmarks.train_loader import RESULTS, bench_home, build_bench_shards, environment, log
from data_jobs.shards import load_manifest, shards_dir
from training import tracking as m
from training.config import TrainConfig
from training.run import train

EVAL_EVERY = 50
TRAIN_METRICS = (m.LOSS, m.MLM_LOSS, m.SOP_LOSS, m.MLM_ACC, m.SOP_ACC, m.LR)
EVAL_METRICS = (m.EVAL_LOSS, "eval_mlm_loss", "eval_sop_loss", m.EVAL_MLM_ACC, m.EVAL_SOP_ACC,
                m.EVAL_SOP_LENGTH_BASELINE, m.EVAL_SOP_BALANCED_ACC)  # fmt: skip


def histories(tracking_uri: str, run_id: str) -> dict[str, dict[str, list[float]]]:
    """{metric: {"step": [...], "value": [...]}} from the MLflow run, sorted by step."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri)
    out = {}
    for name in TRAIN_METRICS + EVAL_METRICS:
        points = sorted(client.get_metric_history(run_id, name), key=lambda p: p.step)
        out[name] = {"step": [p.step for p in points], "value": [p.value for p in points]}
    return out


def label_one_share(home: Path, shard_id: str, split: str) -> float:
    """Share of SOP label 1 (swapped, or B from another document) in a split: 'always 1' scores this."""
    labels = pq.read_table(shards_dir(home, shard_id) / split, columns=["sop_label"])["sop_label"]
    return float(np.asarray(labels).mean())


def running_mean(values: list[float], window: int) -> np.ndarray:
    """Mean of the last `window` values at each step (fewer at the start)."""
    sums = np.cumsum(np.concatenate([[0.0], values]))
    ends = np.arange(1, len(values) + 1)
    starts = np.maximum(0, ends - window)
    return (sums[ends] - sums[starts]) / (ends - starts)


def plot(h: dict[str, dict[str, list[float]]], window: int, baseline: float, title: str, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")  # files only, no display
    import matplotlib.pyplot as plt

    fig, (loss_ax, acc_ax) = plt.subplots(1, 2, figsize=(12, 4.5))
    steps = h[m.LOSS]["step"]
    loss_ax.plot(steps, h[m.LOSS]["value"], color="tab:blue", alpha=0.2, lw=0.8)
    loss_ax.plot(steps, running_mean(h[m.LOSS]["value"], window), color="tab:blue",
                 label=f"train loss (mean of {window} steps)")  # fmt: skip
    for name, color in (
        (m.EVAL_LOSS, "tab:red"),
        ("eval_mlm_loss", "tab:orange"),
        ("eval_sop_loss", "tab:green"),
    ):
        loss_ax.plot(h[name]["step"], h[name]["value"], "o-", color=color, ms=4, label=name.replace("_", " "))
    loss_ax.set(xlabel="step", ylabel="loss (MLM + SOP)", title="loss")
    loss_ax.grid(alpha=0.3)
    loss_ax.legend()

    majority = max(baseline, 1 - baseline)
    acc_ax.axhline(majority, color="grey", ls=":", lw=1, label=f"eval SOP majority class ({majority:.3f})")
    for train_name, eval_name, color in ((m.SOP_ACC, m.EVAL_SOP_ACC, "tab:green"),
                                         (m.MLM_ACC, m.EVAL_MLM_ACC, "tab:purple")):  # fmt: skip
        acc_ax.plot(steps, running_mean(h[train_name]["value"], window), "--", color=color, alpha=0.7,
                    label=f"train {train_name.replace('_', ' ')} (mean of {window} steps)")  # fmt: skip
        acc_ax.plot(h[eval_name]["step"], h[eval_name]["value"], "o-", color=color, ms=4,
                    label=eval_name.replace("_", " "))  # fmt: skip
    rule = h[m.EVAL_SOP_LENGTH_BASELINE]["value"]
    if rule:  # the same held-out rows every time: one figure
        acc_ax.axhline(rule[-1], color="black", ls="--", lw=1, label=f"length rule on eval ({rule[-1]:.3f})")
        acc_ax.plot(h[m.EVAL_SOP_BALANCED_ACC]["step"], h[m.EVAL_SOP_BALANCED_ACC]["value"], "s:",
                    color="tab:olive", ms=4, label="eval SOP on length-balanced pairs")  # fmt: skip
    acc_ax.set(xlabel="step", ylabel="accuracy", title="SOP and MLM accuracy", ylim=(0, 1))
    acc_ax.grid(alpha=0.3)
    acc_ax.legend(loc="upper left", fontsize="small")
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument(
        "--quick", action="store_true", help="150 steps instead of 600, WikiText-2 valid only"
    )
    parser.add_argument("--steps", type=int, default=None)
    parser.add_argument("--workers", type=int, default=TrainConfig.workers)
    parser.add_argument("--seq-len", type=int, default=128)
    parser.add_argument("--home", default=None, help="ALBERT_HOME to build in and reuse (default: temporary)")
    args = parser.parse_args()
    steps = args.steps or (150 if args.quick else 600)
    for var in ("MLFLOW_TRACKING_URI", "MLFLOW_REGISTRY_URI"):  # the temporary home's SQLite store
        os.environ.pop(var, None)
    with bench_home(args.home) as home:
        shard_id = build_bench_shards(home, args.seq_len, quick=args.quick)["static"]
        stats = load_manifest(home, shard_id)["statistics"]
        label_one = {split: label_one_share(home, shard_id, split) for split in ("train", "eval")}
        cfg = TrainConfig(shards=shard_id, preset="tiny", workers=args.workers, max_steps=steps,
                          eval_every=EVAL_EVERY, checkpoint_every=steps,
                          model_name="albert-tiny-learning-curve")  # fmt: skip
        env = environment()
        started = time.perf_counter()
        summary = train(cfg, home=home, progress=log)
        seconds = time.perf_counter() - started
        env["load_avg_after"] = os.getloadavg()
        h = histories(summary["tracking_uri"], summary["run_id"])

    final = {name: h[name]["value"][-1] for name in EVAL_METRICS}
    window = max(5, steps // 25)
    setup = {
        "preset": "tiny", "steps": steps, "global_batch": cfg.batch_size, "workers": cfg.workers, "lr": cfg.lr,
        "warmup_steps": cfg.warmup, "optimizer": cfg.optimizer, "eval_every": EVAL_EVERY, "seq_len": args.seq_len,
        "shards": shard_id, "train_sequences": stats["train"]["instances"],
        "eval_sequences": stats["eval"]["instances"], "eval_documents": stats["eval"]["documents"],
        "sop_label_one_share": label_one,
        "epochs": round(steps * cfg.batch_size / stats["train"]["instances"], 2), "seconds": round(seconds, 1),
    }  # fmt: skip
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "learning_curve.json").write_text(
        json.dumps(
            {"setup": setup, "quick": args.quick, "env": env, "final": final, "histories": h}, indent=2
        )
    )
    text = "WikiText-2 valid" if args.quick else "WikiText-2 valid + 4 Gutenberg books"
    title = (f"tiny ALBERT, {text}: {steps} steps x {cfg.batch_size} sequences "
             f"of {args.seq_len}; eval on {setup['eval_sequences']} held-out sequences")  # fmt: skip
    plot(h, window, label_one["eval"], title, RESULTS / "learning_curve.png")
    best_sop = max(h[m.EVAL_SOP_ACC]["value"])
    majority = max(label_one["eval"], 1 - label_one["eval"])
    text = (
        f"tiny preset, {steps} steps x {cfg.batch_size} sequences ({setup['epochs']} epochs of "
        f"{setup['train_sequences']}), {cfg.workers} workers, {cfg.optimizer} lr {cfg.lr:g}: final eval SOP acc "
        f"**{final[m.EVAL_SOP_ACC]:.3f}** (best {best_sop:.3f}; length rule on the same rows "
        f"{final[m.EVAL_SOP_LENGTH_BASELINE]:.3f}; majority class {majority:.3f}; label 1 is "
        f"{label_one['train']:.3f} of train), eval MLM acc "
        f"**{final[m.EVAL_MLM_ACC]:.3f}**, eval loss {final[m.EVAL_LOSS]:.3f} (MLM {final['eval_mlm_loss']:.3f}, "
        f"SOP {final['eval_sop_loss']:.3f}) on {setup['eval_sequences']} held-out sequences from "
        f"{setup['eval_documents']} documents; {setup['seconds']:.0f} s on {env['cpus']} cores, load "
        f"{env['load_avg_before']} before, {env['load_avg_after']} after. Plot: learning_curve.png\n"
    )
    (RESULTS / "learning_curve.md").write_text(text)
    print(text)


if __name__ == "__main__":
    main()
