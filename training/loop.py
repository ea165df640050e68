"""The per-worker pretraining loop: plain PyTorch, with the Ray touchpoints numbered.

Read top to bottom it is the recipe: config -> model -> optimizer and schedule -> resume -> DDP -> data -> loop
(forward, backward with accumulation, clip, step, log, evaluate, checkpoint). Every rank calls
`ray.train.report` equally often (it is a barrier); only rank 0 attaches checkpoints and writes to MLflow.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import ray.train
import ray.train.torch
import torch
import torch.distributed as dist
from ray.data.collate_fn import NumpyBatchCollateFn

from albert_core import AlbertConfig
from albert_core.system import available_cores
from training import tracking as m
from training.batches import BatchSpec, summarize, to_model_inputs
from training.checkpointing import TrainState, load_checkpoint, save_checkpoint
from training.config import TrainConfig
from training.step import build, eval_sums, training_steps


def all_reduce(t: torch.Tensor) -> torch.Tensor:
    if dist.is_available() and dist.is_initialized():
        dist.all_reduce(t)
    return t


class ModelInputs(NumpyBatchCollateFn):
    """Ray Data collate function: shard rows -> model inputs, with the masks of `epoch` (dynamic masking)."""

    def __init__(self, spec: BatchSpec, epoch: int) -> None:
        self.spec, self.epoch = spec, epoch

    def __call__(self, batch: dict) -> dict[str, torch.Tensor]:
        return to_model_inputs(batch, self.spec, self.epoch)


def micro_batches(
    shard: Any, spec: BatchSpec, cfg: TrainConfig, state: TrainState, rank: int
) -> Iterator[dict]:
    """Endless micro-batches from a Ray Data shard, epoch after epoch, resuming at the saved data position.

    Shards keep a document's rows together, so rows are shuffled through a buffer, seeded by (seed, epoch, rank):
    each epoch sees another order. Resuming skips the micro-batches this rank had consumed in the epoch; which
    rows a rank streams is Ray Data's choice, so a resumed epoch covers the split as a whole, not row for row.
    """
    while True:
        batches = shard.iter_torch_batches(
            batch_size=cfg.per_worker_batch,
            collate_fn=ModelInputs(spec, state.epoch),
            drop_last=True,
            local_shuffle_buffer_size=cfg.shuffle_buffer,
            local_shuffle_seed=(cfg.seed * 1_000_003 + state.epoch) * 1_009 + rank,
        )
        for i, batch in enumerate(batches):
            if i < state.batches_in_epoch:
                continue  # consumed before the checkpoint we resumed from
            state.batches_in_epoch = i + 1
            yield batch
        if state.batches_in_epoch == 0:
            raise RuntimeError("a worker's training shard has fewer rows than one micro-batch")
        state.epoch, state.batches_in_epoch = state.epoch + 1, 0


def evaluate(
    model: torch.nn.Module, shard: Any, spec: BatchSpec, cfg: TrainConfig, device: torch.device
) -> dict:
    """Held-out figures over this rank's whole eval split, summed over ranks."""
    batches = shard.iter_torch_batches(batch_size=cfg.per_worker_batch, collate_fn=ModelInputs(spec, 0))
    return summarize(all_reduce(eval_sums(model, batches, cfg.precision, device)).cpu(), prefix="eval_")


def train_loop_per_worker(config: dict[str, Any]) -> None:
    cfg = TrainConfig.from_dict(config["train"])
    spec: BatchSpec = config["spec"]
    ctx = ray.train.get_context()  # (1) who am I
    rank = ctx.get_world_rank()
    # This node's cores split between its workers: more threads than cores is 10x slower (DESIGN pitfalls).
    torch.set_num_threads(max(1, available_cores() // ctx.get_local_world_size()))

    # the same init on every rank (DDP broadcasts rank 0's weights anyway)
    model, optimizer, scheduler = build(cfg, AlbertConfig.from_dict(config["model"]))
    state = TrainState()
    # (2) restarted after a failure: continue from the last checkpoint
    checkpoint = ray.train.get_checkpoint()
    if checkpoint is not None:
        with checkpoint.as_directory() as folder:
            state = load_checkpoint(Path(folder), model, optimizer, scheduler)
        state.restarts += 1
    elif config.get("resume_from"):
        state = load_checkpoint(Path(config["resume_from"]), model, optimizer, scheduler)
    torch.manual_seed(cfg.seed * 1000 + rank + state.step)  # dropout differs by rank and step

    ddp_model = ray.train.torch.prepare_model(model)  # (3) DDP + device placement
    device = ray.train.torch.get_device()
    if cfg.compile:
        ddp_model = torch.compile(ddp_model)
    train_shard = ray.train.get_dataset_shard("train")  # (4) this rank's streaming split of the shards
    eval_shard = ray.train.get_dataset_shard("eval")

    tracker: m.Tracker = m.NullTracker()
    if rank == 0:
        for var, value in m.FAST_FAIL_ENV.items():  # this worker process's MLflow client only
            os.environ.setdefault(var, value)
        tracker = m.MlflowTracker(config["tracking_uri"], config["mlflow_run_id"],
                                  spill_path=Path(config["metrics_spill_path"]), resume_step=state.step)  # fmt: skip
    data = micro_batches(train_shard, spec, cfg, state, rank)
    scaler = torch.amp.GradScaler(device.type, enabled=cfg.precision == "fp16")
    no_sync = getattr(ddp_model, "no_sync", contextlib.nullcontext)  # one worker: no DDP wrapper
    steps = training_steps(ddp_model, optimizer, scheduler, scaler, data, cfg, device, first_step=state.step + 1,
                           no_sync=no_sync, reduce=all_reduce,
                           evaluate=lambda: evaluate(ddp_model, eval_shard, spec, cfg, device))  # fmt: skip
    for state.step, metrics, seconds, tokens in steps:
        state.train_seconds += seconds
        state.tokens_seen += tokens
        tracker.log(metrics, state.step)

        last = state.step == cfg.max_steps
        if state.step % cfg.checkpoint_every == 0 or last:
            if last:
                metrics["ranks_in_sync"] = float(ranks_in_sync(model))
            metrics.update(
                step=state.step,
                epoch=state.epoch,
                tokens_seen=state.tokens_seen,
                train_seconds=state.train_seconds,
                restarts=state.restarts,
            )
            tracker.checkpoint()  # no step up to this checkpoint may live only in memory
            with tempfile.TemporaryDirectory() as tmp:
                ckpt = None
                if rank == 0:
                    save_checkpoint(Path(tmp), model, optimizer, scheduler, state)
                    ckpt = ray.train.Checkpoint.from_directory(tmp)
                ray.train.report(metrics, checkpoint=ckpt)  # (5) every rank reports; rank 0 attaches
        elif state.step % cfg.log_every == 0:
            ray.train.report({**metrics, "step": state.step})
    tracker.close()


def ranks_in_sync(model: torch.nn.Module) -> bool:
    """True when every rank holds bit-identical parameters (DDP's promise, checked at the end of a run)."""
    flat = torch.cat([p.detach().double().flatten() for p in model.parameters()])
    digest = torch.tensor(
        [flat.sum().item(), (flat * torch.arange(len(flat), dtype=torch.float64)).sum().item()]
    )
    if not (dist.is_available() and dist.is_initialized()):
        return True
    gathered = [torch.zeros_like(digest) for _ in range(dist.get_world_size())]
    dist.all_gather(gathered, digest)
    return all(torch.equal(g, gathered[0]) for g in gathered)
