"""Loader vs trainer (issue 5, P4): can Ray Data feed the training step, with room to spare?

- loader: `read_shards(home, id, "train").iter_torch_batches(batch_size=16, collate_fn=ModelInputs(spec, 0))`, the call
  the training loop makes, over the training split (static shards read their masks; dynamic shards draw them
  in `to_model_inputs`). Samples/s over the pass, start-up included; time to the first batch reported beside it.
- trainer: forward + backward + clip + LAMB step + schedule step of the `tiny` preset (the loop's step without its
  bookkeeping) on batches taken from that same loader, in this process, torch threads = cores, no Ray Train.

Each repetition runs, for each masking, one loader pass then the trainer on its batches (interleaved, so machine
noise hits both alike); the figure is the median of the per-repetition ratios loader / trainer, with min-max.
Goal (issue 5): ratio >= 5.

Set-up (not timed): a temporary ALBERT_HOME (or `--home`, reused), WikiText-2 valid + the Gutenberg books of
`../shared/corpora` ingested as corpus `en` (`--quick`: WikiText-2 valid alone, corpus `en-quick`), an 8000-piece
tokenizer, static and dynamic shards (dupe factor 2, 5% held out). `benchmarks.train_scaling` and
`benchmarks.learning_curve` use the same set-up from here.

Run: `python -m benchmarks.train_loader [--quick]`. Writes benchmarks/results/train_loader.{json,md}.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import ray
import torch

from albert_core import AlbertConfig, AlbertForPreTraining
from albert_core.optim import build_optimizer, lr_scheduler
from data_jobs.ingest import ingest
from data_jobs.shards import ShardsConfig, build_shards, load_manifest, read_shards
from data_jobs.tokenizer_job import TokenizerJobConfig, load_tokenizer, train_tokenizer
from training.batches import BatchSpec, batch_spec
from training.config import TrainConfig
from training.loop import ModelInputs

RESULTS = Path(__file__).parent / "results"
CORPORA = Path(__file__).resolve().parents[2] / "shared" / "corpora"
CORPUS, QUICK_CORPUS = "en", "en-quick"
SOURCES = ("wikitext2-valid.raw.txt", "gutenberg")
QUICK_SOURCES = ("wikitext2-valid.raw.txt",)  # 1.2 of the 3.7 MB: a shorter set-up for --quick
BATCH = 16  # sequences per loader batch (issue 5)
GOAL = 5.0

# --- set-up shared by the training benchmarks --------------------------------------------------------------------


@contextmanager
def bench_home(home: str | None) -> Any:
    """`home` when given (kept, so a second run reuses its corpus, tokenizer and shards), else a temporary one."""
    if home:
        Path(home).mkdir(parents=True, exist_ok=True)
        yield Path(home)
        return
    with tempfile.TemporaryDirectory(prefix="albert-bench-") as tmp:
        yield Path(tmp)


def build_bench_shards(
    home: Path, max_seq_len: int, maskings: tuple[str, ...] = ("static",), quick: bool = False
) -> dict[str, str]:
    """Shard ids by masking, built from the real corpora (reused when `home` already holds them)."""
    corpus, sources = (QUICK_CORPUS, QUICK_SOURCES) if quick else (CORPUS, SOURCES)
    if not (home / "corpora" / corpus).is_dir():
        ingest([str(CORPORA / source) for source in sources], corpus, home=home)
    if not (home / "tokenizers" / corpus / "manifest.json").is_file():
        train_tokenizer(corpus, home=home, cfg=TokenizerJobConfig(vocab_size=8000))
    return {
        masking: build_shards(corpus, corpus, home=home,
                              cfg=ShardsConfig(max_seq_len=max_seq_len, dupe_factor=2, eval_share=0.05,
                                               masking=masking))["id"]
        for masking in maskings
    }  # fmt: skip


def loader_spec(home: Path, shard_id: str, seed: int = 0) -> tuple[BatchSpec, int]:
    """The loader's `BatchSpec` for a shard set, as `training.run.train` builds it, and the vocabulary size."""
    manifest = load_manifest(home, shard_id)
    tokenizer, _ = load_tokenizer(home, manifest["tokenizer"]["name"])
    return batch_spec(manifest, tokenizer, seed), tokenizer.vocab_size


def environment() -> dict[str, Any]:
    """What a figure depends on: versions, cores, torch threads and the machine's load (DESIGN pitfalls)."""
    return {
        "torch": torch.__version__, "ray": ray.__version__, "python": platform.python_version(),
        "machine": platform.machine(), "cpus": os.cpu_count(), "threads": torch.get_num_threads(),
        "load_avg_before": os.getloadavg(),
    }  # fmt: skip


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


# --- the two sides -----------------------------------------------------------------------------------------------


def loader_pass(
    home: Path, shard_id: str, spec: BatchSpec, keep: int, max_batches: int | None
) -> dict[str, Any]:
    """One pass of the training loader: samples/s, time to the first batch, and its first `keep` batches (what
    the trainer steps on)."""
    dataset = read_shards(home, shard_id, "train")
    collate = ModelInputs(spec, epoch=0)
    kept, samples, first = [], 0, None
    started = time.perf_counter()
    iterator = iter(dataset.iter_torch_batches(batch_size=BATCH, collate_fn=collate, drop_last=True))
    for batches, batch in enumerate(iterator, start=1):
        if first is None:
            first = time.perf_counter() - started
        samples += len(batch["input_ids"])
        if len(kept) < keep:
            kept.append(batch)
        if max_batches is not None and batches >= max_batches:
            break
    seconds = time.perf_counter() - started
    iterator.close()  # stops the Ray Data execution when the pass ended early
    return {"samples": samples, "seconds": seconds, "first_batch_s": first, "batches": kept}


class Trainer:
    """The training loop's step on one process: forward, backward, clip, LAMB, schedule."""

    def __init__(self, vocab_size: int, max_seq_len: int, steps: int) -> None:
        cfg = TrainConfig(shards="-", preset="tiny")
        torch.manual_seed(0)
        self.model = AlbertForPreTraining(
            AlbertConfig.from_preset(
                "tiny", vocab_size=vocab_size, max_position_embeddings=max(512, max_seq_len)
            )
        )
        self.optimizer = build_optimizer(self.model, cfg.optimizer, cfg.lr, cfg.weight_decay)
        self.scheduler = lr_scheduler(self.optimizer, 0, steps)
        self.grad_clip = cfg.grad_clip

    def step(self, batch: dict[str, torch.Tensor]) -> float:
        out = self.model(**batch)
        out.loss.backward()
        torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.grad_clip)
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        self.scheduler.step()
        return out.loss.item()

    def run(self, batches: list[dict[str, torch.Tensor]]) -> dict[str, Any]:
        started = time.perf_counter()
        for batch in batches:
            self.step(batch)
        seconds = time.perf_counter() - started
        return {"samples": sum(len(b["input_ids"]) for b in batches), "seconds": seconds}


# --- the benchmark -----------------------------------------------------------------------------------------------


def bench(home: Path, shards: dict[str, str], reps: int, train_batches: int, max_batches: int | None) -> list:
    specs = {masking: loader_spec(home, sid) for masking, sid in shards.items()}
    max_seq_len = load_manifest(home, next(iter(shards.values())))["parameters"]["max_seq_len"]
    vocab = next(iter(specs.values()))[1]
    # One model per masking, so each trainer's schedule spans its own steps (warm-up + reps passes).
    trainers = {m: Trainer(vocab, max_seq_len, steps=(reps + 1) * train_batches) for m in shards}
    loader: dict[str, list[dict]] = {m: [] for m in shards}
    trainer: dict[str, list[dict]] = {m: [] for m in shards}
    kept: dict[str, list] = {}
    for masking, sid in shards.items():  # warm-up: Ray Data's first read, oneDNN kernels, optimizer state
        kept[masking] = loader_pass(home, sid, specs[masking][0], train_batches, train_batches)["batches"]
        trainers[masking].run(kept[masking])
    for rep in range(reps):
        for masking, sid in shards.items():
            passed = loader_pass(home, sid, specs[masking][0], train_batches, max_batches)
            kept[masking] = passed.pop("batches")
            loader[masking].append(passed)
            trainer[masking].append(trainers[masking].run(kept[masking]))
            l_sps = passed["samples"] / passed["seconds"]
            t_sps = trainer[masking][-1]["samples"] / trainer[masking][-1]["seconds"]
            log(f"rep {rep} {masking:7s} loader {l_sps:7.0f} samples/s ({passed['samples']} samples, first "
                f"batch {passed['first_batch_s']:.2f} s)  trainer {t_sps:5.1f} samples/s  "
                f"ratio {l_sps / t_sps:.1f}")  # fmt: skip
    rows = []
    for masking in shards:
        l_sps = [r["samples"] / r["seconds"] for r in loader[masking]]
        t_sps = [r["samples"] / r["seconds"] for r in trainer[masking]]
        ratios = [a / b for a, b in zip(l_sps, t_sps, strict=True)]
        rows.append({
            "masking": masking, "shards": shards[masking], "batch": BATCH, "seq_len": max_seq_len,
            "loader_samples_per_s": statistics.median(l_sps), "trainer_samples_per_s": statistics.median(t_sps),
            "ratio": statistics.median(ratios), "ratio_min": min(ratios), "ratio_max": max(ratios),
            "loader_samples_per_pass": loader[masking][0]["samples"],
            "loader_first_batch_s": statistics.median(r["first_batch_s"] for r in loader[masking]),
            "trainer_samples_per_pass": trainer[masking][0]["samples"], "reps": reps,
        })  # fmt: skip
    return rows


def write_results(rows: list[dict[str, Any]], env: dict[str, Any], quick: bool) -> str:
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "train_loader.json").write_text(
        json.dumps({"goal": f"ratio >= {GOAL:g}", "quick": quick, "env": env, "rows": rows}, indent=2)
    )
    lines = [
        "| masking | loader samples/s | trainer samples/s (tiny, LAMB) | ratio (min-max) | goal |",
        "|---|---|---|---|---|",
    ]
    lines += [
        f"| {r['masking']} | {r['loader_samples_per_s']:.0f} | {r['trainer_samples_per_s']:.1f} "
        f"| {r['ratio']:.1f} ({r['ratio_min']:.1f}-{r['ratio_max']:.1f}) | {'met' if r['ratio'] >= GOAL else 'missed'} "
        f"(>= {GOAL:g}) |"
        for r in rows
    ]
    r = rows[0]
    lines.append(
        f"\nbatch {r['batch']}, seq {r['seq_len']}; loader: {r['loader_samples_per_pass']} samples per pass, "
        f"start-up included (first batch after {r['loader_first_batch_s']:.2f} s); trainer: "
        f"{r['trainer_samples_per_pass']} samples per pass; {r['reps']} interleaved repetitions; "
        f"torch threads {env['threads']} of {env['cpus']} cores, load {env['load_avg_before']} before, "
        f"{env['load_avg_after']} after"
    )
    text = "\n".join(lines) + "\n"
    (RESULTS / "train_loader.md").write_text(text)
    return text


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="fewer repetitions, part of an epoch per pass")
    parser.add_argument("--reps", type=int, default=None)
    parser.add_argument("--seq-len", type=int, default=128)
    parser.add_argument("--home", default=None, help="ALBERT_HOME to build in and reuse (default: temporary)")
    args = parser.parse_args()
    reps = args.reps or (3 if args.quick else 5)
    train_batches = 10 if args.quick else 30  # the trainer is ~100x slower: a few batches give a stable rate
    max_batches = 300 if args.quick else None  # None: the whole training split
    torch.set_num_threads(os.cpu_count() or 1)
    with bench_home(args.home) as home:
        shards = build_bench_shards(home, args.seq_len, ("static", "dynamic"), quick=args.quick)
        env = environment()
        rows = bench(home, shards, reps, train_batches, max_batches)
        env["load_avg_after"] = os.getloadavg()
    print(write_results(rows, env, args.quick))


if __name__ == "__main__":
    main()
