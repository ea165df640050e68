"""ALBERT model configuration: one dataclass and one table of named presets.

The published presets follow google-research/albert's `albert_config.json` files (v2): factorised embeddings
E=128, vocabulary 30000, 512 positions, every layer sharing one set of weights. `tiny` and `mini` are ours, sized
for CPU tests and demos.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar, Literal

from albert_core.config_base import Config
from albert_core.errors import UserError

Sharing = Literal["all", "attention", "ffn", "none"]
Activation = Literal["gelu_new", "gelu", "relu"]


@dataclass(frozen=True)
class AlbertConfig(Config):
    config_kind: ClassVar[str] = "config"

    vocab_size: int = 30000
    embedding_size: int = 128  # E: the factorised embedding width (paper section 3.1)
    hidden_size: int = 768  # H
    num_hidden_layers: int = 12  # L: how many times a layer is applied
    num_attention_heads: int = 12  # A
    intermediate_size: int = 3072
    # Cross-layer sharing (paper section 3.1, Table 4): "all" is ALBERT, "none" is BERT-like,
    # "attention" / "ffn" share only that part of every layer.
    sharing: Sharing = "all"
    num_hidden_groups: int = 1  # with sharing="all": layer i runs group floor(i * G / L)
    inner_group_num: int = 1  # layers inside one group, applied in sequence
    hidden_act: Activation = "gelu_new"
    hidden_dropout_prob: float = 0.0  # ALBERT v2 trains without dropout
    attention_probs_dropout_prob: float = 0.0
    classifier_dropout_prob: float = 0.1
    max_position_embeddings: int = 512
    type_vocab_size: int = 2
    initializer_range: float = 0.02
    layer_norm_eps: float = 1e-12
    pad_token_id: int = 0
    num_labels: int = 2  # sequence classification only

    def validate(self) -> None:
        positive = ("vocab_size", "embedding_size", "hidden_size", "num_hidden_layers", "num_attention_heads",
                    "intermediate_size", "num_hidden_groups", "inner_group_num", "max_position_embeddings",
                    "type_vocab_size", "num_labels")  # fmt: skip
        for name in positive:
            if getattr(self, name) < 1:
                raise UserError(f"config field {name} must be >= 1, got {getattr(self, name)}")
        if self.hidden_size % self.num_attention_heads:
            raise UserError(
                f"hidden_size {self.hidden_size} is not divisible by num_attention_heads {self.num_attention_heads}"
            )
        if self.num_hidden_groups > self.num_hidden_layers:
            raise UserError(
                f"num_hidden_groups {self.num_hidden_groups} exceeds num_hidden_layers {self.num_hidden_layers}"
            )
        if self.sharing != "all" and (self.num_hidden_groups, self.inner_group_num) != (1, 1):
            raise UserError(
                f"layer groups apply to sharing='all' only; sharing={self.sharing!r} needs 1 and 1"
            )
        for name in ("hidden_dropout_prob", "attention_probs_dropout_prob", "classifier_dropout_prob"):
            if not 0.0 <= getattr(self, name) < 1.0:
                raise UserError(f"{name} must be in [0, 1), got {getattr(self, name)}")
        if not 0 <= self.pad_token_id < self.vocab_size:
            raise UserError(
                f"pad_token_id {self.pad_token_id} is outside the vocabulary of {self.vocab_size}"
            )

    @property
    def layer_groups(self) -> int:
        """Number of distinct layer groups the encoder holds: G for sharing="all", else one per layer."""
        return self.num_hidden_groups if self.sharing == "all" else self.num_hidden_layers

    @property
    def head_size(self) -> int:
        return self.hidden_size // self.num_attention_heads

    @classmethod
    def from_preset(cls, name: str, **overrides: Any) -> AlbertConfig:
        if name not in PRESETS:
            raise UserError(f"unknown preset {name!r}; choose one of: {', '.join(PRESETS)}")
        return cls.from_dict({**PRESETS[name], **overrides})


# Published ALBERT v2 sizes (paper Table 1) and two CPU-sized ones. Everything not listed takes the defaults above.
PRESETS: dict[str, dict[str, Any]] = {
    "tiny": dict(hidden_size=128, num_hidden_layers=4, num_attention_heads=2, intermediate_size=512),
    "mini": dict(hidden_size=256, num_hidden_layers=6, num_attention_heads=4, intermediate_size=1024),
    "base": dict(hidden_size=768, num_hidden_layers=12, num_attention_heads=12, intermediate_size=3072),
    "large": dict(hidden_size=1024, num_hidden_layers=24, num_attention_heads=16, intermediate_size=4096),
    "xlarge": dict(hidden_size=2048, num_hidden_layers=24, num_attention_heads=16, intermediate_size=8192),
    "xxlarge": dict(hidden_size=4096, num_hidden_layers=12, num_attention_heads=64, intermediate_size=16384),
}
