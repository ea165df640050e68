"""The one typed configuration of a pretraining run, shared by the CLI, the driver, the workers and MLflow."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar, Literal

from albert_core.config import PRESETS
from albert_core.config_base import Config, setting
from albert_core.errors import UserError
from albert_core.storage import validate_name

Optimizer = Literal["lamb", "adamw"]
Precision = Literal["fp32", "bf16", "fp16"]
Placement = Literal["PACK", "SPREAD", "STRICT_SPREAD"]


@dataclass(frozen=True)
class TrainConfig(Config):
    config_kind: ClassVar[str] = "training config"

    # empty only in a flow's template: train_flow fills it from its `shards` or `corpus` parameter
    shards: str = setting("", "shard id from `albert shards build` (under ALBERT_HOME/shards)")
    preset: str = setting("tiny", f"model preset: {', '.join(PRESETS)}")
    model_overrides: dict[str, Any] = setting(
        default_factory=dict, help='AlbertConfig fields over the preset, e.g. {"sharing": "none"}'
    )
    workers: int = setting(2, "DDP workers (Ray Train), one process each")
    batch_size: int = setting(
        32, "global batch: sequences per optimizer step over all workers and micro-batches"
    )
    grad_accum: int = setting(1, "micro-batches per optimizer step")
    max_steps: int = setting(200, "optimizer steps")
    # AdamW at 2e-3 is what learns at the batches one machine trains with (`albert sweep`, README "Choosing a
    # recipe"): LAMB scales every tensor's step to its norm, which at batch 32 turns noisy gradients into full-size
    # steps (held-out MLM stalls at the unigram level). LAMB is the reference's choice for batch 4096:
    # `--optimizer lamb --lr 1.76e-3` with a batch of thousands reproduces the paper's recipe.
    lr: float = setting(2e-3, "peak learning rate")
    warmup_steps: int | None = setting(None, "linear warmup steps (default: 10% of max_steps)")
    optimizer: Optimizer = setting("adamw", "adamw, or lamb for batches of thousands (the reference's)")
    weight_decay: float = setting(0.01, "decoupled weight decay (not on biases and LayerNorm)")
    grad_clip: float = setting(1.0, "clip the global gradient norm to this")
    precision: Precision = setting("fp32", "bf16 autocast on CPU and GPU; fp16 with a GradScaler on GPU only")
    compile: bool = setting(False, "torch.compile the model")
    eval_every: int = setting(50, "steps between held-out evaluations")
    eval_sequences: int | None = setting(
        None, "held-out sequences per evaluation, the first N (default: all)"
    )
    # Rows each worker shuffles over. Shards store a document's rows together and a small build is one file in
    # corpus order (four books, then WikiText): with 4096 rows a worker read 2,400 rows of books before any other
    # text and held-out loss stalled (P8). 32768 rows of 128 tokens hold ~50 MB per worker.
    shuffle_buffer: int = setting(32768, "rows each worker shuffles over")
    log_every: int = setting(10, "steps between reports to Ray Train")
    checkpoint_every: int = setting(50, "steps between checkpoints")
    keep_checkpoints: int = setting(2, "checkpoints kept per run")
    max_failures: int = setting(1, "worker failures Ray Train recovers from (from the last checkpoint)")
    seed: int = setting(0, "model init, data order and masks")
    use_gpu: bool = setting(False, "one GPU per worker (NCCL)")
    placement_strategy: Placement = setting("PACK", "Ray's placement of workers; STRICT_SPREAD: one per node")
    model_name: str | None = setting(None, "registered model name (default albert-<preset>)")

    def validate(self) -> None:
        if self.preset not in PRESETS:
            raise UserError(f"unknown preset {self.preset!r}; choose one of: {', '.join(PRESETS)}")
        if self.model_name is not None:
            validate_name(self.model_name, "model name")
        for name in ("workers", "batch_size", "grad_accum", "max_steps", "eval_every", "log_every",
                     "checkpoint_every", "keep_checkpoints", "shuffle_buffer"):  # fmt: skip
            if getattr(self, name) < 1:
                raise UserError(f"{name} must be a positive integer, got {getattr(self, name)!r}")
        if self.eval_sequences is not None and self.eval_sequences < 1:
            raise UserError(f"eval_sequences must be a positive integer or None, got {self.eval_sequences!r}")
        if self.batch_size % (self.workers * self.grad_accum):
            raise UserError(
                f"batch_size {self.batch_size} must be divisible by workers x grad_accum "
                f"({self.workers} x {self.grad_accum})"
            )
        if self.precision == "fp16" and not self.use_gpu:
            raise UserError("fp16 needs a GPU (GradScaler); use bf16 on CPU")
        if not self.lr > 0:
            raise UserError(f"lr must be positive, got {self.lr}")
        if self.warmup_steps is not None and not 0 <= self.warmup_steps <= self.max_steps:
            raise UserError(f"warmup_steps must be in [0, max_steps], got {self.warmup_steps}")

    @property
    def per_worker_batch(self) -> int:
        """Sequences one worker feeds to one forward pass."""
        return self.batch_size // (self.workers * self.grad_accum)

    @property
    def warmup(self) -> int:
        return self.max_steps // 10 if self.warmup_steps is None else self.warmup_steps

    @property
    def registered_model_name(self) -> str:
        return self.model_name or f"albert-{self.preset}"
