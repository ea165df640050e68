"""The data jobs' configs, in one leaf module (imported by the jobs, the CLI and the flows; imports no job).

Each is a `Config` (albert_core.config_base): typed, round-trips through JSON (how a flow hands a job to a Ray
cluster: `--config-json`), and its fields are the job's CLI flags.
"""

from __future__ import annotations

import codecs
from dataclasses import asdict, dataclass
from typing import Any, ClassVar, Literal

from albert_core.config_base import Config, setting
from albert_core.errors import UserError
from albert_core.pretraining_data import SopConfig

Format = Literal["text", "jsonl", "parquet", "hf"]
Layout = Literal["sentences", "paragraphs", "wikitext", "wrapped", "documents"]
Masking = Literal["static", "dynamic"]


@dataclass(frozen=True)
class IngestConfig(Config):
    config_kind: ClassVar[str] = "ingest config"

    format: Format | None = setting(None, "input format (default: from the extension or folder)")
    text_field: str = setting("text", "JSONL field holding the text")
    column: str = setting("text", "Parquet / HF column holding the text")
    layout: Layout | None = setting(
        None, "how text files are laid out (default: detected per file and recorded; JSONL, Parquet and HF "
        "rows are documents)"
    )  # fmt: skip
    pre_split: bool = setting(False, "one sentence per line already: do not split")
    encoding: str = setting("utf-8", "utf-8 (strict), auto (detect, recorded per source), or a codec name")
    max_line_bytes: int = setting(1_000_000, "longer lines (and JSONL rows) are quarantined")
    range_mb: float = setting(
        16.0, "input per task: larger text and JSONL files are read as ranges of this size"
    )

    def validate(self) -> None:
        if self.max_line_bytes < 1:
            raise UserError(f"max_line_bytes must be positive, got {self.max_line_bytes}")
        if not self.range_mb > 0:
            raise UserError(f"range_mb must be positive, got {self.range_mb}")
        if self.encoding != "auto":
            try:
                object.__setattr__(self, "encoding", codecs.lookup(self.encoding).name)  # the canonical name
            except LookupError:
                raise UserError(
                    f"unknown encoding {self.encoding!r}: use utf-8, auto or a Python codec name"
                ) from None

    @property
    def range_bytes(self) -> int:
        return max(1, int(self.range_mb * (1 << 20)))

    def validated(self) -> IngestConfig:
        """Checked and normalised on construction; kept for callers that ask explicitly."""
        return self


@dataclass(frozen=True)
class TokenizerJobConfig(Config):
    config_kind: ClassVar[str] = "tokenizer config"

    vocab_size: int = setting(30000, "pieces in the vocabulary (the published ALBERT has 30000)")
    lowercase: bool = setting(True, "lower-case the text, as the reference's uncased models")
    sample_sentences: int = setting(10_000_000, "at most this many sentences reach SentencePiece")
    seed: int = setting(0, "chooses the sample")
    max_memory_gb: float | None = setting(
        None,
        "memory the trainer may use; the sample is capped to fit (default: 80% of the largest Ray node's)",
    )

    def validate(self) -> None:
        if self.max_memory_gb is not None and not self.max_memory_gb > 0:
            raise UserError(f"max_memory_gb must be > 0, got {self.max_memory_gb}")
        if self.sample_sentences < 1:
            raise UserError(f"sample_sentences must be >= 1, got {self.sample_sentences}")
        if self.seed < 0:
            raise UserError(f"seed must be >= 0, got {self.seed}")


@dataclass(frozen=True)
class ShardsConfig(Config):
    """Build parameters; all but `eval_share` and `masking` are `SopConfig` fields (the reference's flags), with
    the defaults of a first build on one machine (128 tokens, one pass) rather than the reference's (512, 40)."""

    config_kind: ClassVar[str] = "shards config"

    max_seq_len: int = setting(128, "tokens per sequence")
    dupe_factor: int = setting(1, "passes over the corpus, each with other pairs and masks")
    masking: Masking = setting("static", "static: masks written in the shards; dynamic: drawn by the loader")
    # None: round(masked_lm_prob * max_seq_len), the largest budget a sequence can have (19 for 128; the
    # reference's flag is 20, whose last slot can never be used at 128 tokens).
    max_predictions: int | None = setting(
        None, "masked positions per sequence (default: masked_lm_prob x length)"
    )
    short_seq_prob: float = setting(0.1, "share of pairs with a shorter random target length")
    masked_lm_prob: float = setting(0.15, "share of tokens masked")
    eval_share: float = setting(0.01, "documents held out for evaluation, chosen by a hash of their id")
    single_sentence_negatives: bool = setting(True, "a one-sentence chunk pairs with another document's text")
    seed: int = setting(12345, "pairs and masks")

    def validate(self) -> None:
        if not 0 <= self.eval_share < 1:
            raise UserError(f"eval_share must be a number in [0, 1), got {self.eval_share!r}")
        self.sop()  # SopConfig checks the rest, with its own messages

    def sop(self) -> SopConfig:
        predictions = self.max_predictions
        if predictions is None:
            predictions = max(1, round(self.masked_lm_prob * self.max_seq_len))
        return SopConfig(
            max_seq_len=self.max_seq_len,
            short_seq_prob=self.short_seq_prob,
            masked_lm_prob=self.masked_lm_prob,
            max_predictions=predictions,
            dupe_factor=self.dupe_factor,
            single_sentence_negatives=self.single_sentence_negatives,
            static_masking=self.masking == "static",
            seed=self.seed,
        )

    def resolved(self) -> dict[str, Any]:
        """The parameters as recorded in the manifest and hashed into the id (max_predictions filled in)."""
        return {**asdict(self), "max_predictions": self.sop().max_predictions}
