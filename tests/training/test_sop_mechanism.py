"""The SOP mechanism check: on a corpus whose only sentence-order signal is content, the real tokenizer, shards
and training step learn sentence order; and the same run with broken wiring does not, so the check can fail.

The corpus (`drifting_documents`): sentence k of a document takes half its words from topic group b + k, so
groups rise through the document, and every sentence has the same length at every position. Whole documents fit
one 64-token sequence (no short targets), so each document is exactly one pair and nothing is truncated, and the
length rule ("swapped when segment A is longer") must score chance. Training runs at world size 1 in this process
(`training.local`, the optimizer step and evaluation the Ray Train workers run), which lets the controls break the
wiring at the real seams with monkeypatch:
- labels permuted: each training batch's SOP labels shuffled, so they no longer belong to their pairs;
- tokens not swapped: a pair labelled "swapped" is put back in original order before the model sees it;
- detached pooled output: the SOP head learns on features no SOP gradient shapes.
Each control must stay near chance while the intact run passes 0.90.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

from albert_core.model import AlbertSOPHead
from data_jobs.shards import ShardsConfig, build_shards, load_manifest
from data_jobs.tokenizer_job import TokenizerJobConfig, train_tokenizer
from tests.corpus_helpers import drifting_documents, publish
from training import local
from training import tracking as m
from training.config import TrainConfig

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("uses_ray")]
# The schedule is 800 steps (warmup, then linear decay); every run stops after 500 of them, where the intact
# wiring has learned sentence order (0.987 held out) and the controls have had the same budget.
DOCUMENTS, SEQ_LEN, SCHEDULE, STEPS = 6000, 64, 800, 500


@pytest.fixture(scope="module")
def drift_shards(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    home = tmp_path_factory.mktemp("home")
    publish(home, "drift", drifting_documents(DOCUMENTS))
    train_tokenizer("drift", home=home, cfg=TokenizerJobConfig(vocab_size=256))
    shards = build_shards("drift", "drift", home=home, cfg=ShardsConfig(
        max_seq_len=SEQ_LEN, dupe_factor=1, eval_share=0.1, short_seq_prob=0.0,
        single_sentence_negatives=False))["id"]  # fmt: skip
    return home, shards


def pretrain(home: Path, shards: str) -> dict[str, float]:
    cfg = TrainConfig(shards=shards, preset="tiny", optimizer="adamw", lr=2e-3, batch_size=32, max_steps=SCHEDULE,
                      eval_every=STEPS)  # fmt: skip
    return local.train_local(cfg, home=home, stop_after=STEPS).final


def test_length_says_nothing_and_each_document_is_one_whole_pair(drift_shards: tuple[Path, str]) -> None:
    home, shards = drift_shards
    stats = load_manifest(home, shards)["statistics"]
    for split in ("train", "eval"):
        assert stats[split]["instances"] == stats[split]["documents"] == stats[split]["pairs"], stats[split]
    assert stats["tokens"] / stats["documents"] <= SEQ_LEN - 3  # [CLS] A [SEP] B [SEP]: a document fits
    rule = _eval_figures(home, shards)[m.EVAL_SOP_LENGTH_BASELINE]
    assert 0.45 <= rule <= 0.55, rule


def test_intact_wiring_learns_sentence_order(drift_shards: tuple[Path, str]) -> None:
    final = pretrain(*drift_shards)
    assert 0.45 <= final[m.EVAL_SOP_LENGTH_BASELINE] <= 0.55, final
    assert final[m.EVAL_SOP_ACC] >= 0.90, final
    assert final[m.EVAL_SOP_BALANCED_ACC] >= 0.85, final  # not from length: pairs of (nearly) equal segments


def _permuted_labels(batch: dict[str, torch.Tensor], rng: torch.Generator) -> dict[str, torch.Tensor]:
    labels = batch["sentence_order_label"]
    return {**batch, "sentence_order_label": labels[torch.randperm(len(labels), generator=rng)]}


def _never_swapped(batch: dict[str, torch.Tensor], rng: torch.Generator) -> dict[str, torch.Tensor]:
    """[CLS] B [SEP] A [SEP] -> [CLS] A [SEP] B [SEP] for rows labelled swapped (label kept), masks moved along."""
    batch = {k: v.clone() for k, v in batch.items()}
    for row in torch.nonzero(batch["sentence_order_label"] == 1).flatten().tolist():
        ids, types = batch["input_ids"][row], batch["token_type_ids"][row]
        real = int(batch["attention_mask"][row].sum())
        first = int((types[:real] == 0).sum())  # [CLS] seg1 [SEP]
        order = torch.cat([torch.tensor([0]), torch.arange(first, real - 1), torch.tensor([first - 1]),
                           torch.arange(1, first - 1), torch.tensor([real - 1])])  # fmt: skip
        ids[:real] = ids[order].clone()
        new_first = real - first + 1  # [CLS] seg2 [SEP]
        types[:real] = (torch.arange(real) >= new_first).long()
        where = torch.empty(real, dtype=torch.long)
        where[order] = torch.arange(real)  # old position -> new position
        positions = batch["masked_lm_positions"][row]
        used = batch["labels"][row] != -100
        positions[used] = where[positions[used]]
    return batch


def _detached_sop_head(self: AlbertSOPHead, pooled: torch.Tensor) -> torch.Tensor:
    return self.classifier(self.dropout(pooled.detach()))


@pytest.mark.parametrize(
    "control", ["labels permuted", "tokens not swapped", "SOP head on a detached pooled output"]
)
def test_broken_wiring_stays_at_chance(
    control: str, drift_shards: tuple[Path, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    if control == "SOP head on a detached pooled output":
        monkeypatch.setattr(AlbertSOPHead, "forward", _detached_sop_head)
    else:
        breaks = _permuted_labels if control == "labels permuted" else _never_swapped
        intact = local.train_batches

        def broken(*args, **kwargs) -> Iterator[dict[str, torch.Tensor]]:
            rng = torch.Generator().manual_seed(0)
            return (breaks(batch, rng) for batch in intact(*args, **kwargs))

        monkeypatch.setattr(local, "train_batches", broken)
    final = pretrain(*drift_shards)
    assert final[m.EVAL_SOP_ACC] <= 0.56, (control, final)
    assert final[m.EVAL_MLM_ACC] > 0.1, (control, final)  # the run trained: only its SOP wiring is broken


def test_unswapping_restores_the_original_pair(drift_shards: tuple[Path, str]) -> None:
    """The 'tokens not swapped' control moves tokens and mask positions as the builder would have placed them."""
    home, shards = drift_shards
    cfg = TrainConfig(shards=shards, batch_size=32)
    manifest = load_manifest(home, shards)
    from data_jobs.tokenizer_job import load_tokenizer
    from training.batches import batch_spec

    spec = batch_spec(manifest, load_tokenizer(home, manifest["tokenizer"]["name"])[0], cfg.seed)
    table = local.eval_table(home, shards)
    batch = next(local.table_batches(table, spec, 64))
    fixed = _never_swapped(batch, torch.Generator())
    for row in range(64):
        ids, new = batch["input_ids"][row], fixed["input_ids"][row]
        real = int(batch["attention_mask"][row].sum())
        assert sorted(ids[:real].tolist()) == sorted(new[:real].tolist())
        assert new[0] == ids[0] and new[real - 1] == ids[real - 1]
        masked = batch["labels"][row] != -100
        # the masked tokens ([MASK] or a replacement) are still at their (moved) positions
        assert (
            new[fixed["masked_lm_positions"][row][masked]].tolist()
            == ids[batch["masked_lm_positions"][row][masked]].tolist()
        )
        if batch["sentence_order_label"][row] == 0:
            assert torch.equal(ids, new)
        else:
            a = int((batch["token_type_ids"][row][:real] == 0).sum()) - 2
            b = real - a - 3
            assert ids[1 : 1 + a].tolist() == new[b + 2 : b + 2 + a].tolist()  # segment A now second
            assert ids[a + 2 : a + 2 + b].tolist() == new[1 : 1 + b].tolist()


def _eval_figures(home: Path, shards: str) -> dict[str, float]:
    """The held-out figures of an untrained model: the length rule needs no training."""
    cfg = TrainConfig(shards=shards, preset="tiny", batch_size=32, max_steps=1, eval_every=1, lr=1e-9)
    return local.train_local(cfg, home=home).final
