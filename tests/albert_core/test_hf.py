"""Parity with transformers.AlbertForPreTraining: same keys, same shapes, same logits, both directions."""

import pytest
import torch
import transformers

from albert_core import AlbertConfig, AlbertForPreTraining, UserError
from albert_core.hf import TIED_KEYS, from_hf, from_hf_config, to_hf, to_hf_config


def inputs(cfg: AlbertConfig, B: int = 2, T: int = 64) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(5, cfg.vocab_size, (B, T), generator=g)
    mask = torch.ones(B, T, dtype=torch.long)
    mask[1, 40:] = 0
    types = (torch.arange(T) >= 20).long().expand(B, T)
    return dict(input_ids=ids, token_type_ids=types, attention_mask=mask)


def max_diff(ours, theirs, mask: torch.Tensor) -> tuple[float, float]:
    keep = mask.bool()  # padded query positions are undefined in both implementations
    mlm = (ours.prediction_logits[keep] - theirs.prediction_logits[keep]).abs().max().item()
    return mlm, (ours.sop_logits - theirs.sop_logits).abs().max().item()


@pytest.mark.parametrize(
    ("preset", "overrides"),
    [
        ("tiny", {}),
        ("base", {}),
        ("tiny", dict(num_hidden_groups=2, inner_group_num=2)),
        ("tiny", dict(sharing="none")),
    ],
)
def test_to_hf_and_back_gives_the_same_logits(preset: str, overrides: dict) -> None:
    cfg = AlbertConfig.from_preset(preset, **overrides)
    torch.manual_seed(0)
    ours = AlbertForPreTraining(cfg).eval()
    theirs = to_hf(ours)
    assert isinstance(theirs, transformers.AlbertForPreTraining) and not theirs.training
    batch = inputs(cfg)
    with torch.no_grad():
        assert max(max_diff(ours(**batch), theirs(**batch), batch["attention_mask"])) <= 1e-5
        back = from_hf(theirs)
        assert back.config == cfg
        assert max(max_diff(back(**batch), theirs(**batch), batch["attention_mask"])) <= 1e-5


def test_from_hf_of_a_transformers_initialised_model() -> None:
    hf_cfg = to_hf_config(AlbertConfig.from_preset("tiny"))
    torch.manual_seed(3)
    theirs = transformers.AlbertForPreTraining(hf_cfg).eval()
    ours = from_hf(theirs)
    batch = inputs(ours.config)
    labels = batch["input_ids"].masked_fill(torch.rand(batch["input_ids"].shape) > 0.15, -100)
    sop = torch.tensor([0, 1])
    with torch.no_grad():
        a = ours(**batch, labels=labels, sentence_order_label=sop)
        b = theirs(**batch, labels=labels, sentence_order_label=sop)
    assert max(max_diff(a, b, batch["attention_mask"])) <= 1e-5
    assert abs(a.loss.item() - b.loss.item()) <= 1e-5
    assert ours.predictions.decoder.weight is ours.albert.embeddings.word_embeddings.weight


def test_weight_names_and_shapes_match_transformers_both_ways() -> None:
    cfg = AlbertConfig.from_preset("tiny", num_hidden_groups=2)
    ours = AlbertForPreTraining(cfg).state_dict()
    theirs = transformers.AlbertForPreTraining(to_hf_config(cfg)).state_dict()
    assert set(ours) == set(theirs)
    assert {k: v.shape for k, v in ours.items()} == {k: v.shape for k, v in theirs.items()}
    assert set(TIED_KEYS) | set(TIED_KEYS.values()) <= set(ours)


def test_config_mapping_round_trip_and_none_sharing() -> None:
    for cfg in (AlbertConfig.from_preset("xxlarge"), AlbertConfig.from_preset("base", sharing="none")):
        hf = to_hf_config(cfg)
        assert hf.hidden_size == cfg.hidden_size and hf.intermediate_size == cfg.intermediate_size
        assert from_hf_config(hf) == cfg
    assert to_hf_config(AlbertConfig.from_preset("base", sharing="none")).num_hidden_groups == 12


@pytest.mark.parametrize("sharing", ["attention", "ffn"])
def test_partial_sharing_cannot_be_exported(sharing: str) -> None:
    with pytest.raises(UserError, match="cannot represent"):
        to_hf(AlbertForPreTraining(AlbertConfig.from_preset("tiny", sharing=sharing)))
