"""The one typed configuration of a pretraining run, shared by the CLI, the driver, the workers and MLflow."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field, fields
from typing import Any, Literal, get_args

from albert_core.config import PRESETS
from albert_core.errors import UserError
from albert_core.storage import validate_name

Optimizer = Literal["lamb", "adamw"]
Precision = Literal["fp32", "bf16", "fp16"]
Placement = Literal["PACK", "SPREAD", "STRICT_SPREAD"]


@dataclass(frozen=True)
class TrainConfig:
    shards: str  # shard id under ALBERT_HOME/shards
    preset: str = "tiny"
    model_overrides: dict[str, Any] = field(
        default_factory=dict
    )  # AlbertConfig fields, e.g. {"sharing": "none"}
    workers: int = 2
    batch_size: int = 32  # global: sequences per optimizer step, over all workers and accumulation steps
    grad_accum: int = 1
    max_steps: int = 200
    # AdamW at 2e-3 is what learns at the batches one machine trains with (`albert sweep`, README "Choosing a
    # recipe"): LAMB scales every tensor's step to its norm, which at batch 32 turns noisy gradients into full-size
    # steps (held-out MLM stalls at the unigram level). LAMB is the reference's choice for batch 4096:
    # `--optimizer lamb --lr 1.76e-3` with a batch of thousands reproduces the paper's recipe.
    lr: float = 2e-3
    warmup_steps: int | None = None  # default: 10% of max_steps
    optimizer: Optimizer = "adamw"
    weight_decay: float = 0.01
    grad_clip: float = 1.0
    precision: Precision = "fp32"  # bf16 autocast on CPU and GPU; fp16 + GradScaler on GPU only
    compile: bool = False
    eval_every: int = 50
    eval_sequences: int | None = (
        None  # held-out sequences per evaluation (the first N); None: the whole split
    )
    # Rows each worker shuffles over. Shards store a document's rows together and a small build is one file in
    # corpus order (four books, then WikiText): with 4096 rows a worker read 2,400 rows of books before any other
    # text and held-out loss stalled (P8). 32768 rows of 128 tokens hold ~50 MB per worker.
    shuffle_buffer: int = 32768
    log_every: int = 10
    checkpoint_every: int = 50
    keep_checkpoints: int = 2
    max_failures: int = 1
    seed: int = 0
    use_gpu: bool = False
    placement_strategy: Placement = "PACK"  # Ray's placement of workers; STRICT_SPREAD: one per node
    model_name: str | None = None  # registered model; default albert-<preset>

    def __post_init__(self) -> None:
        if self.preset not in PRESETS:
            raise UserError(f"unknown preset {self.preset!r}; choose one of: {', '.join(PRESETS)}")
        if self.model_name is not None:
            validate_name(self.model_name, "model name")
        for name in ("workers", "batch_size", "grad_accum", "max_steps", "eval_every", "log_every",
                     "checkpoint_every", "keep_checkpoints", "shuffle_buffer"):  # fmt: skip
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise UserError(f"{name} must be a positive integer, got {value!r}")
        if self.eval_sequences is not None and (
            isinstance(self.eval_sequences, bool)
            or not isinstance(self.eval_sequences, int)
            or self.eval_sequences < 1
        ):
            raise UserError(f"eval_sequences must be a positive integer or None, got {self.eval_sequences!r}")
        if self.batch_size % (self.workers * self.grad_accum):
            raise UserError(
                f"batch_size {self.batch_size} must be divisible by workers x grad_accum "
                f"({self.workers} x {self.grad_accum})"
            )
        if self.optimizer not in get_args(Optimizer):
            raise UserError(f"optimizer must be one of {', '.join(get_args(Optimizer))}")
        if self.placement_strategy not in get_args(Placement):
            raise UserError(f"placement_strategy must be one of {', '.join(get_args(Placement))}")
        if self.precision not in get_args(Precision):
            raise UserError(f"precision must be one of {', '.join(get_args(Precision))}")
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

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TrainConfig:
        unknown = sorted(set(data) - {f.name for f in fields(cls)})
        if unknown:
            raise UserError(f"unknown training config keys: {', '.join(unknown)}")
        return cls(**data)

    def replace(self, **changes: Any) -> TrainConfig:
        return self.from_dict({**self.to_dict(), **changes})
