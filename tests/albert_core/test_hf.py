"""Parity with transformers.AlbertForPreTraining (same keys, same shapes, same logits, both directions) and with
the fine-tuned heads' classes (sequence and token classification, question answering)."""

from pathlib import Path

import pytest
import torch
import transformers

from albert_core import AlbertConfig, AlbertForPreTraining, UserError
from albert_core.hf import TIED_KEYS, export_hf_head, from_hf, from_hf_config, to_hf, to_hf_config
from albert_core.model import (
    AlbertForQuestionAnswering,
    AlbertForSequenceClassification,
    AlbertForTokenClassification,
)
from albert_core.tokenizer import SentencePieceTokenizer


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


@pytest.mark.parametrize(
    ("head", "labels", "outputs"),
    [
        (AlbertForSequenceClassification, ["neg", "pos", "mixed"], ("logits",)),
        (AlbertForTokenClassification, ["O", "B-per", "I-per"], ("logits",)),
        (AlbertForQuestionAnswering, ["start", "end"], ("start_logits", "end_logits")),
    ],
)
def test_fine_tuned_heads_export_to_their_transformers_class(
    head: type, labels: list[str], outputs: tuple[str, ...], tmp_path: Path, corpora: Path
) -> None:
    lines = (corpora / "wikitext2-valid.raw.txt").read_text(encoding="utf-8").splitlines()[:2000]
    tokenizer = SentencePieceTokenizer.train(lines, vocab_size=600, lowercase=True)
    tokenizer_dir = tokenizer.save(tmp_path / "tokenizer")
    torch.manual_seed(0)
    cfg = AlbertConfig.from_preset("tiny", vocab_size=600, num_labels=len(labels))
    ours = head(cfg).eval()
    export_hf_head(ours, labels, tmp_path / "hf", tokenizer_dir)
    theirs, info = getattr(transformers, head.__name__).from_pretrained(
        tmp_path / "hf", output_loading_info=True
    )
    assert not any(info.values()), info  # no missing, unexpected or mismatched keys
    assert theirs.config.id2label == dict(enumerate(labels))
    batch = inputs(cfg)
    # per-token outputs: padded positions are undefined on both sides
    keep = slice(None) if head is AlbertForSequenceClassification else batch["attention_mask"].bool()
    with torch.no_grad():
        for name in outputs:
            mine, hf = getattr(ours(**batch), name), getattr(theirs.eval()(**batch), name)
            assert (mine[keep] - hf[keep]).abs().max() <= 1e-5
    if head is AlbertForSequenceClassification:  # the pipeline a user reaches for, with our tokenizer
        folder = str(tmp_path / "hf")
        classify = transformers.pipeline("text-classification", model=folder, tokenizer=folder)
        (answer,) = classify("It was the best of times.")
        assert answer["label"] in labels and 0 < answer["score"] <= 1
