"""The training package's configs (a leaf module: the CLI, the flows, the driver, the workers and MLflow read
them): a pretraining run, and a fine-tuning run."""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, Literal, get_args

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


Init = Literal["pretrained", "random"]
Task = Literal["classify", "ner", "qa"]


def parse_model_uri(model_uri: str) -> tuple[str, str | None, int | None]:
    """(name, alias, version) of `models:/NAME@ALIAS` or `models:/NAME/V`."""
    body = model_uri.removeprefix("models:/")
    if body == model_uri or not body:
        raise UserError(f"{model_uri!r} is not a registered model URI (models:/NAME@ALIAS or models:/NAME/V)")
    if "@" in body:
        name, alias = body.split("@", 1)
        return name, alias, None
    name, _, version = body.partition("/")
    if not version.isdigit():
        raise UserError(f"{model_uri!r}: the version must be a number (models:/NAME/V)")
    return name, None, int(version)


@dataclass(frozen=True)
class FinetuneConfig(Config):
    config_kind: ClassVar[str] = "fine-tuning config"

    model_uri: str = setting(
        help="pretrained model: models:/NAME@ALIAS, models:/NAME/V, runs:/ID/model or a folder"
    )
    train_path: str | Path = setting(
        help="training examples: JSONL, CSV or Parquet (ner: CoNLL or JSONL; qa: SQuAD v1.1/v2.0 JSON)"
    )
    eval_path: str | Path | None = setting(
        None,
        "held-out examples, same format (ner, qa: default, the eval_share of train_path chosen by a hash)",
    )
    task: Task = setting(
        "classify",
        "classify: a label per text; ner: a BIO tag per word (named entities); qa: an answer span in a context",
    )
    eval_share: float = setting(
        0.1, "ner, qa without eval_path: share of the sentences (qa: contexts) held out, by a hash"
    )
    text_field: str = setting("text", "field holding the text")
    label_field: str = setting("label", "field holding the label")
    epochs: int = setting(3, "passes over the training examples")
    batch_size: int = setting(32, "examples per step")
    # ALBERT's GLUE/SQuAD runs (paper appendix A.4) use 1e-5..5e-5, for base to xxlarge. The presets this
    # project pretrains on CPU are far smaller (tiny: H=128, mini: H=256); for BERTs of that size Google's
    # small-model release (google-research/bert README, Turc et al. 2019) picks from 3e-5..3e-4 over 4 epochs,
    # and a fresh head learns little at 2e-5 in 3 epochs. 1e-4 is the middle of that grid; pass 2e-5 for base+.
    lr: float = setting(1e-4, "peak learning rate (2e-5 for base and larger)")
    max_seq_len: int = setting(128, "tokens per example, [CLS] and [SEP] included")
    warmup_ratio: float = setting(0.1, "share of all steps spent warming up (BERT/ALBERT fine-tuning: 10%)")
    # BERT's and ALBERT's SQuAD scripts: 64-piece questions, windows 128 pieces apart, answers up to 30 pieces.
    max_query_len: int = setting(64, "qa: question pieces kept (the rest is cut)")
    doc_stride: int = setting(128, "qa: pieces between the starts of two windows over a long context")
    max_answer_len: int = setting(30, "qa: longest answer predicted, in pieces")
    seed: int = setting(0, "head init, data order, dropout")
    threads: int | None = setting(None, "torch threads (default: every core this process may use)")
    model_name: str | None = setting(
        None,
        'registered name (default "<pretrained name>-classifier", "-tagger" for ner, "-reader" for qa; '
        'or "albert-classifier" for a folder)',
    )
    # "random" is the control that measures what pretraining is worth: the same classifier (the pretrained model's
    # config and tokenizer, the same seed, head, data, steps and schedule) with the encoder freshly initialised.
    init: Init = setting("pretrained", "encoder weights: the pretrained model's, or random (the control)")

    def __post_init__(self) -> None:  # its own checks only: their messages name each field's valid range
        self.validate()

    def validate(self) -> None:
        for name in ("model_uri", "text_field", "label_field"):
            if not isinstance(getattr(self, name), str) or not getattr(self, name):
                raise UserError(f"{name} must be a non-empty string, got {getattr(self, name)!r}")
        if self.text_field == self.label_field:
            raise UserError(f"text_field and label_field are both {self.text_field!r}")
        if self.task not in get_args(Task):
            raise UserError(f"task must be one of {', '.join(get_args(Task))}, got {self.task!r}")
        if self.eval_path is None and self.task == "classify":
            raise UserError("classify needs eval_path (--eval FILE): held-out examples with their labels")
        for name in ("train_path", "eval_path"):
            value = getattr(self, name)
            if (value is not None or name == "train_path") and (
                not isinstance(value, str | Path) or not str(value)
            ):
                raise UserError(f"{name} must be a file path, got {value!r}")
        if (
            isinstance(self.eval_share, bool)
            or not isinstance(self.eval_share, int | float)
            or not 0 < self.eval_share < 1
        ):
            raise UserError(f"eval_share must be a number in (0, 1), got {self.eval_share!r}")
        for name in ("epochs", "batch_size", "max_seq_len", "max_query_len", "doc_stride", "max_answer_len"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise UserError(f"{name} must be a positive integer, got {value!r}")
        if self.max_seq_len < 3:
            raise UserError(f"max_seq_len must be >= 3 ([CLS], a token, [SEP]), got {self.max_seq_len}")
        if self.task == "qa" and self.max_query_len + 4 > self.max_seq_len:
            raise UserError(f"max_query_len {self.max_query_len} leaves no context in max_seq_len "
                            f"{self.max_seq_len} (it needs max_query_len + 4 at least)")  # fmt: skip
        if isinstance(self.lr, bool) or not isinstance(self.lr, int | float) or not 0 < self.lr < math.inf:
            raise UserError(f"lr must be a positive number, got {self.lr!r}")
        if isinstance(self.warmup_ratio, bool) or not isinstance(self.warmup_ratio, int | float):
            raise UserError(f"warmup_ratio must be a number in [0, 1), got {self.warmup_ratio!r}")
        if not 0 <= self.warmup_ratio < 1:
            raise UserError(f"warmup_ratio must be in [0, 1), got {self.warmup_ratio}")
        if isinstance(self.seed, bool) or not isinstance(self.seed, int) or self.seed < 0:
            raise UserError(f"seed must be a non-negative integer, got {self.seed!r}")
        if self.threads is not None and (
            isinstance(self.threads, bool) or not isinstance(self.threads, int) or self.threads < 1
        ):
            raise UserError(f"threads must be a positive integer, got {self.threads!r}")
        if self.model_name is not None:
            validate_name(self.model_name, "model name")
        if self.init not in get_args(Init):
            raise UserError(f"init must be one of {', '.join(get_args(Init))}, got {self.init!r}")
        if self.model_uri.startswith("models:/"):
            parse_model_uri(self.model_uri)  # a malformed URI fails here, with the other config mistakes

    def to_dict(self) -> dict[str, Any]:
        return {k: str(v) if isinstance(v, Path) else v for k, v in super().to_dict().items()}

    @property
    def registered_model_name(self) -> str:
        suffix = {"classify": "classifier", "ner": "tagger", "qa": "reader"}[self.task]
        if self.model_name:
            return self.model_name
        if self.model_uri.startswith("models:/"):
            return validate_name(f"{parse_model_uri(self.model_uri)[0]}-{suffix}", "model name")
        return f"albert-{suffix}"
