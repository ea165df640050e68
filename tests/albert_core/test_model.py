import pytest
import torch

from albert_core import AlbertConfig, AlbertForPreTraining, AlbertForSequenceClassification


def small(**overrides) -> AlbertConfig:
    return AlbertConfig.from_preset("tiny", vocab_size=500, num_hidden_layers=3, **overrides)


def batch(cfg: AlbertConfig, B: int = 4, T: int = 32, seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(5, cfg.vocab_size, (B, T), generator=g)
    mask = torch.ones(B, T, dtype=torch.long)
    mask[-1, T // 2 :] = 0  # one padded row
    types = torch.zeros(B, T, dtype=torch.long)
    types[:, T // 3 :] = 1
    return dict(input_ids=ids, token_type_ids=types, attention_mask=mask)


def test_output_shapes_and_tied_weights() -> None:
    cfg = small()
    torch.manual_seed(0)
    model = AlbertForPreTraining(cfg)
    out = model(**batch(cfg))
    assert out.prediction_logits.shape == (4, 32, cfg.vocab_size)
    assert out.sop_logits.shape == (4, 2)
    assert out.loss is None
    assert model.predictions.decoder.weight is model.albert.embeddings.word_embeddings.weight
    assert model.predictions.decoder.bias is model.predictions.bias


@pytest.mark.parametrize("sharing", ["all", "attention", "ffn", "none"])
def test_sharing_modes_share_what_they_say(sharing: str) -> None:
    model = AlbertForPreTraining(small(sharing=sharing))
    groups = model.albert.encoder.albert_layer_groups
    layers = [g.albert_layers[0] for g in groups]
    assert len(groups) == (1 if sharing == "all" else 3)
    if sharing in ("attention", "ffn"):
        assert (layers[0].attention is layers[2].attention) == (sharing == "attention")
        assert (layers[0].ffn is layers[2].ffn) == (sharing == "ffn")
    if sharing == "none":
        assert layers[0].attention is not layers[1].attention and layers[0].ffn is not layers[1].ffn


def test_padding_does_not_change_unpadded_positions() -> None:
    cfg = small()
    model = AlbertForPreTraining(cfg).eval()
    b = batch(cfg, B=1, T=16)
    b["attention_mask"][:] = 1
    padded = {k: torch.cat([v, torch.zeros(1, 8, dtype=v.dtype)], dim=1) for k, v in b.items()}
    padded["input_ids"][0, 16:] = 0  # pad id; attention_mask is 0 there
    with torch.no_grad():
        full = model(**b)
        with_pad = model(**padded)
    torch.testing.assert_close(
        with_pad.prediction_logits[:, :16], full.prediction_logits, atol=1e-5, rtol=1e-5
    )
    torch.testing.assert_close(with_pad.sop_logits, full.sop_logits, atol=1e-5, rtol=1e-5)


def test_masked_positions_give_the_same_loss_as_full_logits() -> None:
    cfg = small()
    torch.manual_seed(1)
    model = AlbertForPreTraining(cfg).eval()
    b = batch(cfg)
    positions = torch.tensor([[1, 5, 9], [2, 3, 0], [7, 8, 11], [4, 6, 10]])
    targets = torch.randint(5, cfg.vocab_size, positions.shape)
    targets[1, 2] = -100  # padding prediction slot
    full_labels = torch.full_like(b["input_ids"], -100)
    full_labels.scatter_(1, positions[:, :2], targets[:, :2])
    full_labels[[0, 2, 3], positions[[0, 2, 3], 2]] = targets[[0, 2, 3], 2]
    sop = torch.tensor([0, 1, 1, 0])
    full = model(**b, labels=full_labels, sentence_order_label=sop)
    sparse = model(**b, labels=targets, sentence_order_label=sop, masked_lm_positions=positions)
    assert sparse.prediction_logits.shape == (4, 3, cfg.vocab_size)
    torch.testing.assert_close(sparse.loss, full.loss)
    torch.testing.assert_close(sparse.prediction_logits[0, 1], full.prediction_logits[0, 5])


def test_training_step_reduces_loss_and_reaches_every_parameter() -> None:
    cfg = small(sharing="none")
    torch.manual_seed(0)
    model = AlbertForPreTraining(cfg)
    b = batch(cfg, B=8, T=16)
    labels = b["input_ids"].clone()
    sop = torch.randint(0, 2, (8,))
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    losses = []
    for _ in range(30):
        loss = model(**b, labels=labels, sentence_order_label=sop).loss
        optimizer.zero_grad()
        loss.backward()
        if not losses:  # every layer of the unshared stack, both heads and the embeddings learn
            assert [n for n, p in model.named_parameters() if p.grad is None or not p.grad.any()] == []
        optimizer.step()
        losses.append(loss.item())
    assert losses[-1] < 0.5 * losses[0]


def test_bf16_autocast_on_cpu_matches_fp32_closely() -> None:
    cfg = small()
    torch.manual_seed(0)
    model = AlbertForPreTraining(cfg).eval()
    b = batch(cfg)
    with torch.no_grad():
        ref = model(**b).sop_logits
        with torch.autocast("cpu", dtype=torch.bfloat16):
            out = model(**b, labels=b["input_ids"], sentence_order_label=torch.zeros(4, dtype=torch.long))
    assert out.prediction_logits.dtype == torch.bfloat16
    assert out.loss.dtype == torch.float32 and torch.isfinite(out.loss)
    assert (out.sop_logits.float() - ref).abs().max() < 0.05


def test_sequence_classification_heads() -> None:
    cfg = small(num_labels=3)
    model = AlbertForSequenceClassification(cfg)
    b = batch(cfg)
    out = model(**b, labels=torch.tensor([0, 1, 2, 1]))
    assert out.logits.shape == (4, 3) and out.loss.ndim == 0
    out.loss.backward()
    reg = AlbertForSequenceClassification(small(num_labels=1))(**b, labels=torch.rand(4))
    assert reg.logits.shape == (4, 1) and reg.loss.item() > 0


def test_torch_compile_matches_eager() -> None:
    cfg = small()
    torch.manual_seed(0)
    model = AlbertForPreTraining(cfg).eval()
    b = batch(cfg)
    compiled = torch.compile(model)
    with torch.no_grad():
        torch.testing.assert_close(compiled(**b).sop_logits, model(**b).sop_logits, atol=1e-4, rtol=1e-4)
