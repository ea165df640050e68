"""Pretraining in this process at world size 1: the same step, evaluation and figures as the Ray Train workers
(`training.step`), fed straight from the shard files by pyarrow. No Ray, no MLflow unless a tracker is given.

For what needs many short runs in one process: the SOP mechanism check and its broken-wiring controls, and the
trials of `albert sweep`. `albert train` (Ray Train, DDP, checkpoints, registry) stays the way to pretrain.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch

from albert_core import AlbertConfig, AlbertForPreTraining
from data_jobs.shards import load_manifest, split_files
from data_jobs.tokenizer_job import load_tokenizer
from training import tracking as m
from training.batches import BatchSpec, batch_spec, summarize, to_model_inputs
from training.config import TrainConfig
from training.step import build, eval_sums, model_config, training_steps

MODEL_COLUMNS = ("input_ids", "token_type_ids", "attention_mask", "masked_lm_positions", "masked_lm_ids",
                 "masked_lm_weights", "word_start", "sop_label", "doc_id", "pass_index", "index")  # fmt: skip


def eval_table(home: Path, shards: str, limit: int | None = None) -> pa.Table | None:
    """The held-out split, or its first `limit` rows in file order (every evaluation sees the same rows);
    None when the split has no file."""
    tables, rows = [], 0
    for path in split_files(home, shards, "eval"):
        if limit is not None and rows >= limit:
            break
        table = pq.read_table(path)
        tables.append(table if limit is None else table.slice(0, limit - rows))
        rows += len(tables[-1])
    return pa.concat_tables(tables) if tables else None


def _rows(table: pa.Table) -> dict[str, np.ndarray]:
    return {c: table[c].to_numpy(zero_copy_only=False) for c in MODEL_COLUMNS if c in table.column_names}


def table_batches(table: pa.Table, spec: BatchSpec, batch_size: int, epoch: int = 0) -> Iterator[dict]:
    """Model inputs in row order, the last batch short."""
    for start in range(0, len(table), batch_size):
        yield to_model_inputs(_rows(table.slice(start, batch_size)), spec, epoch)


def train_batches(
    files: list[Path], spec: BatchSpec, batch_size: int, *, seed: int, shuffle_buffer: int
) -> Iterator[dict]:
    """Endless full batches, epoch after epoch: files in a seeded order, rows shuffled through a buffer of
    `shuffle_buffer` rows (shards store a document's rows together), as the Ray Data loader does."""
    epoch = 0
    while True:
        rng = np.random.default_rng((seed, epoch))
        buffer: list[pa.Table] = []
        held = yielded = 0
        order = [files[i] for i in rng.permutation(len(files))]
        for i, path in enumerate(order):
            table = pq.read_table(path, columns=[c for c in MODEL_COLUMNS if c in pq.read_schema(path).names])
            buffer.append(table)
            held += len(table)
            if held < shuffle_buffer and i < len(order) - 1:
                continue
            rows = pa.concat_tables(buffer)
            rows = rows.take(rng.permutation(len(rows)))
            full = len(rows) // batch_size * batch_size
            for start in range(0, full, batch_size):
                yield to_model_inputs(_rows(rows.slice(start, batch_size)), spec, epoch)
                yielded += 1
            buffer, held = [rows.slice(full)], len(rows) - full  # the remainder joins the next buffer
        if not yielded:
            raise ValueError(f"the training split has fewer rows ({held}) than one batch ({batch_size})")
        epoch += 1


@dataclass
class LocalRun:
    model: AlbertForPreTraining
    history: list[dict[str, float]] = field(
        default_factory=list
    )  # one entry per step: step, seconds, figures

    @property
    def final(self) -> dict[str, float]:
        return self.history[-1]


def train_local(
    cfg: TrainConfig,
    *,
    home: Path,
    tracker: m.Tracker | None = None,
    model_cfg: AlbertConfig | None = None,
    on_eval: Callable[[dict[str, float]], None] | None = None,
    stop_after: int | None = None,
) -> LocalRun:
    """Pretrain `cfg` at world size 1 (`cfg.workers` is ignored: one process takes the whole batch).
    Held-out figures every `eval_every` steps and at the end; `seconds` counts training and evaluation.
    `stop_after`: leave after that step, the learning rate still on `cfg.max_steps`' schedule (an early stop,
    as a sweep's scheduler does)."""
    cfg = cfg.replace(workers=1)
    manifest = load_manifest(home, cfg.shards)
    tokenizer, _ = load_tokenizer(home, manifest["tokenizer"]["name"])
    spec = batch_spec(manifest, tokenizer, cfg.seed)
    model_cfg = model_cfg or model_config(cfg, tokenizer.vocab_size, manifest["parameters"]["max_seq_len"])
    model, optimizer, scheduler = build(cfg, model_cfg)
    torch.manual_seed(cfg.seed * 1000)  # dropout, as rank 0 of a fresh `albert train` run
    device = torch.device("cpu")
    scaler = torch.amp.GradScaler(device.type, enabled=False)
    held_out = eval_table(home, cfg.shards, cfg.eval_sequences)
    data = train_batches(split_files(home, cfg.shards, "train"), spec, cfg.per_worker_batch, seed=cfg.seed,
                         shuffle_buffer=cfg.shuffle_buffer)  # fmt: skip
    tracker = tracker or m.NullTracker()
    run = LocalRun(model)

    def evaluate() -> dict[str, float]:
        batches = table_batches(held_out, spec, cfg.per_worker_batch)
        return summarize(eval_sums(model, batches, cfg.precision, device).cpu(), prefix="eval_")

    started = time.perf_counter()
    steps = training_steps(model, optimizer, scheduler, scaler, data, cfg, device,
                           evaluate=evaluate if held_out is not None else None)  # fmt: skip
    for step, metrics, _, _ in steps:
        if on_eval is not None and m.EVAL_LOSS in metrics:
            on_eval({"step": step, **metrics})
        tracker.log(metrics, step)
        run.history.append({"step": step, "seconds": time.perf_counter() - started, **metrics})
        if step == stop_after:
            break
    tracker.close()
    return run
