"""Hugging Face interop: our AlbertForPreTraining <-> `transformers.AlbertForPreTraining`.

Our parameter names are Hugging Face's by design, so the weight map is the identity; what a conversion must
prove is that both sides hold the same keys with the same shapes (checked before any copy, nanoGPT's
`from_pretrained` pattern), so a bad mapping fails at load, not after a day of training. `transformers` is
imported lazily: the rest of albert_core never needs it.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from albert_core.config import AlbertConfig
from albert_core.errors import UserError
from albert_core.model import AlbertForPreTraining, AlbertForSequenceClassification

if TYPE_CHECKING:
    import transformers

    from albert_core.checkpoint import FineTuned

# Tied tensors: the decoder reuses the word embeddings and the MLM bias. Both sides list them in state_dict.
TIED_KEYS: dict[str, str] = {
    "predictions.decoder.weight": "albert.embeddings.word_embeddings.weight",
    "predictions.decoder.bias": "predictions.bias",
}
# Config fields that mean the same on both sides (everything except our `sharing` and `num_labels`).
SHARED_CONFIG_FIELDS = (
    "vocab_size", "embedding_size", "hidden_size", "num_hidden_layers", "num_attention_heads",
    "intermediate_size", "num_hidden_groups", "inner_group_num", "hidden_act", "hidden_dropout_prob",
    "attention_probs_dropout_prob", "classifier_dropout_prob", "max_position_embeddings", "type_vocab_size",
    "initializer_range", "layer_norm_eps", "pad_token_id",
)  # fmt: skip


def _transformers() -> Any:
    try:
        import transformers
    except ImportError as e:  # pragma: no cover - depends on the install
        raise UserError("Hugging Face interop needs transformers: pip install 'albert-pipeline[hf]'") from e
    return transformers


def to_hf_config(cfg: AlbertConfig) -> transformers.AlbertConfig:
    """Our config as `transformers.AlbertConfig` (never its defaults: those are xxlarge, not base)."""
    if cfg.sharing in ("attention", "ffn"):
        raise UserError(
            f"sharing={cfg.sharing!r} shares part of each layer, which transformers.AlbertModel cannot represent; "
            "export models trained with sharing 'all' or 'none'"
        )
    values = {name: getattr(cfg, name) for name in SHARED_CONFIG_FIELDS}
    # "none" is a stack of L unshared layers: in Hugging Face's terms, L groups of one layer.
    values["num_hidden_groups"] = cfg.layer_groups
    return _transformers().AlbertConfig(**values, bos_token_id=2, eos_token_id=3, tie_word_embeddings=True)


def from_hf_config(hf_config: transformers.AlbertConfig) -> AlbertConfig:
    values = {name: getattr(hf_config, name) for name in SHARED_CONFIG_FIELDS}
    L, G, inner = values["num_hidden_layers"], values["num_hidden_groups"], values["inner_group_num"]
    if G == L and inner == 1 and L > 1:
        values.update(sharing="none", num_hidden_groups=1)  # one group per layer: nothing is shared
    return AlbertConfig.from_dict(values)


def _copy_weights(source: dict[str, torch.Tensor], target: torch.nn.Module) -> None:
    """Copy a state dict into `target` after checking that keys and shapes match exactly."""
    target_state = target.state_dict()
    missing, unexpected = sorted(set(target_state) - set(source)), sorted(set(source) - set(target_state))
    if missing or unexpected:
        raise UserError(f"weight names differ: missing {missing[:5]}, unexpected {unexpected[:5]}")
    bad = [k for k in source if source[k].shape != target_state[k].shape]
    if bad:
        raise UserError(f"weight shapes differ for {bad[:5]}")
    with torch.no_grad():
        for key, value in target_state.items():
            value.copy_(source[key])


def to_hf(model: AlbertForPreTraining) -> transformers.AlbertForPreTraining:
    """A `transformers.AlbertForPreTraining` with our weights (same device and dtype as `model`)."""
    hf_model = _transformers().AlbertForPreTraining(to_hf_config(model.config))
    param = next(model.parameters())
    hf_model.to(device=param.device, dtype=param.dtype)
    _copy_weights(model.state_dict(), hf_model)
    return hf_model.train(model.training)


def from_hf(hf_model: transformers.AlbertForPreTraining) -> AlbertForPreTraining:
    """Our AlbertForPreTraining with the weights of a `transformers.AlbertForPreTraining`."""
    model = AlbertForPreTraining(from_hf_config(hf_model.config))
    param = next(hf_model.parameters())
    model.to(device=param.device, dtype=param.dtype)
    _copy_weights(hf_model.state_dict(), model)
    return model.train(hf_model.training)


def head_to_hf(model: FineTuned, labels: list[str]) -> Any:
    """A fine-tuned model as the `transformers` class of the same name, its label names in the config
    (`id2label`, so `transformers.pipeline` reports them). Hugging Face's token classifier and question
    answerer have no pooler: ours is left out."""
    if len(labels) != model.config.num_labels:
        raise UserError(f"{len(labels)} label names for a model with num_labels={model.config.num_labels}")
    hf_config = to_hf_config(model.config)
    hf_config.num_labels = len(labels)
    hf_config.id2label = dict(enumerate(labels))
    hf_config.label2id = {label: i for i, label in enumerate(labels)}
    hf_model = getattr(_transformers(), type(model).__name__)(hf_config)
    state = model.state_dict()
    if not isinstance(model, AlbertForSequenceClassification):
        state = {k: v for k, v in state.items() if not k.startswith("albert.pooler.")}
    _copy_weights(state, hf_model)
    return hf_model.eval()


def export_hf_head(
    model: FineTuned,
    labels: list[str],
    outdir: str | Path,
    tokenizer_dir: str | Path | None = None,
) -> Path:
    """Write a folder that `transformers.AlbertFor{Sequence,Token}Classification` / `AlbertForQuestionAnswering`
    `.from_pretrained` loads with no
    missing or unexpected keys (and `transformers.pipeline` runs, with the tokenizer)."""
    from albert_core.tokenizer import SentencePieceTokenizer

    outdir = Path(outdir)
    head_to_hf(model.cpu(), labels).save_pretrained(outdir)
    if tokenizer_dir is not None:
        SentencePieceTokenizer.load(tokenizer_dir).save_hf_files(outdir)
    return outdir


def export_hf(
    model: AlbertForPreTraining, outdir: str | Path, tokenizer_dir: str | Path | None = None
) -> Path:
    """Write a folder that `transformers.AlbertForPreTraining.from_pretrained` (and, with a tokenizer,
    `AlbertTokenizer.from_pretrained`) loads offline."""
    from albert_core.tokenizer import SentencePieceTokenizer

    outdir = Path(outdir)
    to_hf(model.cpu()).save_pretrained(outdir)
    if tokenizer_dir is not None:
        SentencePieceTokenizer.load(tokenizer_dir).save_hf_files(outdir)
    return outdir
