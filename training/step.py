"""The training step, the step loop and one evaluation pass, in plain PyTorch: no Ray, no MLflow.

`training_steps` is the loop at any world size: the Ray Train worker loop (`training.loop`) runs it with DDP's
`no_sync` and an all-reduce and adds checkpoints and reports; the single-process runner (`training.local`) runs
it as it is. Promotion's evaluation shares `eval_sums`, so every figure is summed the same way
(`training.batches.STATS`).
"""

from __future__ import annotations

import contextlib
import math
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import NamedTuple

import torch

from albert_core import AlbertConfig, AlbertForPreTraining
from albert_core.optim import build_optimizer, lr_scheduler
from training import tracking as m
from training.batches import STATS, batch_stats, summarize
from training.config import TrainConfig


def autocast(precision: str, device: torch.device) -> contextlib.AbstractContextManager:
    if precision == "fp32":
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=torch.bfloat16 if precision == "bf16" else torch.float16)


def model_config(cfg: TrainConfig, vocab_size: int, max_seq_len: int) -> AlbertConfig:
    """The preset, sized to the tokenizer and the shards, with the run's overrides on top."""
    sized = {"vocab_size": vocab_size, "max_position_embeddings": max(512, max_seq_len)}
    return AlbertConfig.from_preset(cfg.preset, **sized | cfg.model_overrides)


def build(
    cfg: TrainConfig, model_cfg: AlbertConfig
) -> tuple[AlbertForPreTraining, torch.optim.Optimizer, torch.optim.lr_scheduler.LRScheduler]:
    """The model (seeded: every rank builds the same one), its optimizer and the LR schedule."""
    torch.manual_seed(cfg.seed)
    model = AlbertForPreTraining(model_cfg)
    optimizer = build_optimizer(model, cfg.optimizer, cfg.lr, cfg.weight_decay)
    return model, optimizer, lr_scheduler(optimizer, cfg.warmup, cfg.max_steps)


class Diverged(FloatingPointError):
    """The loss or the gradients went to inf/NaN: the run stops before the optimizer would spread it into the
    weights (the last checkpoint stays good); training on would be wasted time."""


@dataclass
class StepResult:
    stats: torch.Tensor  # this rank's STATS sums over the step's micro-batches, on its device
    tokens: torch.Tensor  # real (unpadded) tokens this rank fed, on its device
    grad_norm: torch.Tensor
    lr: float  # the rate this step used


def optimizer_step(
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler,
    scaler: torch.amp.GradScaler,
    data: Iterator[dict[str, torch.Tensor]],
    cfg: TrainConfig,
    device: torch.device,
    no_sync: Callable[[], contextlib.AbstractContextManager] = contextlib.nullcontext,
) -> StepResult:
    """Forward and backward over `grad_accum` micro-batches, clip, step. `no_sync` is DDP's: gradients are
    all-reduced on the last micro-batch only. Raises `Diverged` before the update when the gradient norm is
    not finite (with fp16 the GradScaler skips such steps itself and lowers its scale)."""
    stats = torch.zeros(len(STATS), dtype=torch.float64, device=device)
    tokens = torch.zeros((), dtype=torch.float64, device=device)
    for micro in range(cfg.grad_accum):
        batch = {k: v.to(device) for k, v in next(data).items()}
        sync = contextlib.nullcontext() if micro == cfg.grad_accum - 1 else no_sync()
        with sync, autocast(cfg.precision, device):
            out = model(**batch)
            scaler.scale(out.loss / cfg.grad_accum).backward()
        stats += batch_stats(out, batch)
        tokens += batch["attention_mask"].sum()
    scaler.unscale_(optimizer)
    grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
    # One scalar to the host: every rank holds the same all-reduced norm, so all ranks stop together.
    if not scaler.is_enabled() and not torch.isfinite(grad_norm):
        optimizer.zero_grad(set_to_none=True)
        loss = float(stats[STATS.index("loss_sum")] / max(float(stats[STATS.index("sequences")]), 1.0))
        figure = f"loss is {loss}" if not math.isfinite(loss) else f"gradient norm is {float(grad_norm)}"
        raise Diverged(
            f"{figure} at step {scheduler.last_epoch + 1} (lr {scheduler.get_last_lr()[0]:.3g}): stopped "
            "before the update (lower --lr, raise --warmup-steps or train in fp32)"
        )
    scaler.step(optimizer)
    scaler.update()
    optimizer.zero_grad(set_to_none=True)
    lr = scheduler.get_last_lr()[0]
    scheduler.step()
    return StepResult(stats, tokens, grad_norm.detach(), lr)


class Step(NamedTuple):
    step: int
    figures: dict[str, float]
    seconds: float  # training only, not evaluation
    tokens: int  # real tokens fed, over all ranks


def training_steps(
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler,
    scaler: torch.amp.GradScaler,
    data: Iterator[dict[str, torch.Tensor]],
    cfg: TrainConfig,
    device: torch.device,
    *,
    first_step: int = 1,
    no_sync: Callable[[], contextlib.AbstractContextManager] = contextlib.nullcontext,
    reduce: Callable[[torch.Tensor], torch.Tensor] = lambda t: t,
    evaluate: Callable[[], dict[str, float]] | None = None,
) -> Iterator[Step]:
    """Steps `first_step`..`cfg.max_steps`, one `Step` each: the training figures summed over ranks by `reduce`
    (one host sync per step), and at evaluation steps (every `eval_every`, and the last) the held-out ones from
    `evaluate`, whose time the step's seconds exclude."""
    for step in range(first_step, cfg.max_steps + 1):
        started = time.perf_counter()
        result = optimizer_step(model, optimizer, scheduler, scaler, data, cfg, device, no_sync)
        totals = reduce(torch.cat([result.stats, result.tokens.view(1)])).cpu()  # the step's one host sync
        seconds = time.perf_counter() - started
        figures = {
            **summarize(totals[:-1]),
            m.LR: result.lr,
            m.GRAD_NORM: float(result.grad_norm),
            m.TOKENS_PER_S: float(totals[-1]) / seconds,
            m.SAMPLES_PER_S: float(totals[STATS.index("sequences")]) / seconds,
        }
        if evaluate is not None and (step % cfg.eval_every == 0 or step == cfg.max_steps):
            figures.update(evaluate())
        yield Step(step, figures, seconds, int(totals[-1]))


@torch.no_grad()
def eval_sums(
    model: torch.nn.Module, batches: Iterable[dict[str, torch.Tensor]], precision: str, device: torch.device
) -> torch.Tensor:
    """STATS sums over `batches` (this rank's share of the held-out rows); the model is left in train mode."""
    model.eval()
    stats = torch.zeros(len(STATS), dtype=torch.float64, device=device)
    for batch in batches:
        batch = {k: v.to(device) for k, v in batch.items()}
        with autocast(precision, device):
            stats += batch_stats(model(**batch), batch)
    model.train()
    return stats
