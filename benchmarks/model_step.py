"""Training-step speed: our AlbertForPreTraining vs Hugging Face's, same weights, same batch, one process.

Each repetition times one forward+backward of every variant in turn (interleaved, so machine noise hits all
variants alike); the figure is the median tokens/s over repetitions and the ratio ours / HF.

- kernel level: both compute full (B, T, V) MLM logits and the same loss;
- task level: same examples, same loss value, but ours runs the MLM head only at the masked positions
  (the reference's `get_masked_lm_output`), HF computes all T x V logits and ignores most of them.

The goal (P3, ratio >= 1.2) is read from `base` fp32 at task level: on CPU a `base` step takes seconds, so the
full run gives it 7 repetitions for a stable median. `--quick` measures `tiny` fp32 only.

Run: `python -m benchmarks.model_step [--quick] [--presets tiny base]`. Writes benchmarks/results/model_step.{json,md}.
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

RESULTS = Path(__file__).parent / "results"


def make_batch(cfg: AlbertConfig, batch: int, seq: int, predictions: int) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(5, cfg.vocab_size, (batch, seq), generator=g)
    positions = torch.stack([torch.randperm(seq - 1, generator=g)[:predictions] + 1 for _ in range(batch)])
    targets = ids.gather(1, positions)
    full_labels = torch.full_like(ids, -100).scatter_(1, positions, targets)
    return dict(
        input_ids=ids,
        token_type_ids=(torch.arange(seq) >= seq // 2).long().expand(batch, seq).contiguous(),
        attention_mask=torch.ones(batch, seq, dtype=torch.long),
        sentence_order_label=torch.randint(0, 2, (batch,), generator=g),
        positions=positions,
        targets=targets,
        full_labels=full_labels,
    )


def step_fn(model: torch.nn.Module, b: dict[str, torch.Tensor], task: bool, hf: bool) -> float:
    common = dict(
        input_ids=b["input_ids"], token_type_ids=b["token_type_ids"], attention_mask=b["attention_mask"]
    )
    if task and not hf:
        out = model(**common, labels=b["targets"], masked_lm_positions=b["positions"],
                    sentence_order_label=b["sentence_order_label"])  # fmt: skip
    else:
        out = model(**common, labels=b["full_labels"], sentence_order_label=b["sentence_order_label"])
    out.loss.backward()
    model.zero_grad(set_to_none=True)
    return out.loss.item()


def dtypes_for(preset: str, quick: bool) -> tuple[str, ...]:
    """bf16 autocast on a CPU without native bf16 (AVX2 only, as here) is emulated and about 30x slower: beyond
    `tiny` a bf16 step takes minutes, so larger presets are measured in fp32 on CPU, and `--quick` skips it."""
    if quick:
        return ("fp32",)
    return ("fp32", "bf16") if preset == "tiny" or torch.cuda.is_available() else ("fp32",)


def reps_for(dtype: str, reps: int) -> int:
    """Emulated bf16 on CPU is informative only (no goal reads it) and ~30 s a step: at most 3 repetitions."""
    return min(reps, 3) if dtype == "bf16" and not torch.cuda.is_available() else reps


def bench_preset(
    preset: str, batch: int, seq: int, predictions: int, reps: int, quick: bool
) -> list[dict[str, Any]]:
    cfg = AlbertConfig.from_preset(preset)
    torch.manual_seed(0)
    ours = AlbertForPreTraining(cfg)
    theirs = to_hf(ours)
    b = make_batch(cfg, batch, seq, predictions)
    rows = []
    for dtype in dtypes_for(preset, quick):
        dtype_reps = reps_for(dtype, reps)
        autocast = torch.autocast("cpu", dtype=torch.bfloat16, enabled=dtype == "bf16")
        variants = {("ours", level): (ours, level == "task", False) for level in ("kernel", "task")}
        variants[("hf", "any")] = (theirs, False, True)
        times: dict[tuple[str, str], list[float]] = {k: [] for k in variants}
        losses: dict[tuple[str, str], float] = {}
        with autocast:
            for k, (model, task, hf) in variants.items():  # warm-up (allocator, oneDNN kernels)
                losses[k] = step_fn(model, b, task, hf)
            for _ in range(dtype_reps):
                for k, (model, task, hf) in variants.items():
                    t0 = time.perf_counter()
                    step_fn(model, b, task, hf)
                    times[k].append(time.perf_counter() - t0)
        tokens = batch * seq
        hf_tps = [tokens / t for t in times[("hf", "any")]]
        for level in ("kernel", "task"):
            ours_tps = [tokens / t for t in times[("ours", level)]]
            ratios = [o / h for o, h in zip(ours_tps, hf_tps, strict=True)]
            rows.append({
                "preset": preset, "dtype": dtype, "level": level, "batch": batch, "seq_len": seq,
                "ours_tokens_per_s": statistics.median(ours_tps), "hf_tokens_per_s": statistics.median(hf_tps),
                "ratio": statistics.median(ratios), "ratio_min": min(ratios), "ratio_max": max(ratios),
                "loss_ours": losses[("ours", level)], "loss_hf": losses[("hf", "any")], "reps": dtype_reps,
            })  # fmt: skip
            print(f"{preset:6s} {dtype} {level:6s} ours {rows[-1]['ours_tokens_per_s']:9.0f} tok/s  "
                  f"hf {rows[-1]['hf_tokens_per_s']:9.0f} tok/s  ratio {rows[-1]['ratio']:.2f} "
                  f"[{rows[-1]['ratio_min']:.2f}-{rows[-1]['ratio_max']:.2f}]", flush=True)  # fmt: skip
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="tiny preset, fp32 only, fewer repetitions")
    parser.add_argument("--presets", nargs="+", default=None)
    parser.add_argument("--reps", type=int, default=None)
    parser.add_argument("--threads", type=int, default=os.cpu_count())
    args = parser.parse_args()
    presets = args.presets or (["tiny"] if args.quick else ["tiny", "base"])
    reps = args.reps or (3 if args.quick else 7)
    torch.set_num_threads(args.threads)
    env = torch_env()
    rows = [
        row
        for p in presets
        for row in bench_preset(p, batch=8, seq=128, predictions=20, reps=reps, quick=args.quick)
    ]
    env["load_avg_after"] = os.getloadavg()
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "model_step.json").write_text(
        json.dumps({"goal": "ratio >= 1.2", "quick": args.quick, "env": env, "rows": rows}, indent=2)
    )
    lines = [
        "| preset | dtype | level | ours tok/s | HF tok/s | ratio (min-max) |",
        "|---|---|---|---|---|---|",
    ]
    lines += [
        f"| {r['preset']} | {r['dtype']} | {r['level']} | {r['ours_tokens_per_s']:.0f} | {r['hf_tokens_per_s']:.0f} "
        f"| {r['ratio']:.2f} ({r['ratio_min']:.2f}-{r['ratio_max']:.2f}) |"
        for r in rows
    ]
    lines.append(
        f"\nbatch 8, seq 128, 20 masked positions; threads {env['threads']}, load {env['load_avg_before']} before, "
        f"{env['load_avg_after']} after"
    )
    (RESULTS / "model_step.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
