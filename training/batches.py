"""Shard rows -> model inputs: static masks are read as stored; dynamic masks are drawn here, per row and epoch.

Each row's dynamic mask is seeded from (seed, doc id, pass, index, epoch), so which worker reads a row, and in
which order, never changes what is masked.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import torch

from albert_core.model import IGNORE_INDEX
from albert_core.pretraining_data import SopConfig, SpecialIds, mask_dynamic
from albert_core.tokenizer import SentencePieceTokenizer
from training import tracking as m


@dataclass(frozen=True)
class BatchSpec:
    """What the loader needs to know about the shards it reads."""

    masking: Literal["static", "dynamic"]
    special: SpecialIds
    sop: SopConfig  # masked_lm_prob, max_predictions and max_ngram for dynamic masking
    seed: int


def column(batch: dict[str, np.ndarray], name: str, dtype: type) -> np.ndarray:
    """A (B, L) array from a list column, whether Ray hands it over as 2-D or as an object array of rows."""
    values = batch[name]
    if values.dtype == object:
        values = np.stack(values)
    return values.astype(dtype, copy=False)


def row_rng(seed: int, doc_id: str, pass_index: int, index: int, epoch: int) -> np.random.Generator:
    key = f"{seed}\x00{doc_id}\x00{pass_index}\x00{index}\x00{epoch}".encode()
    return np.random.default_rng(int.from_bytes(hashlib.blake2b(key, digest_size=8).digest(), "big"))


def to_model_inputs(batch: dict[str, np.ndarray], spec: BatchSpec, epoch: int = 0) -> dict[str, torch.Tensor]:
    """Model keyword arguments (AlbertForPreTraining.forward) for one batch of shard rows."""
    input_ids = column(batch, "input_ids", np.int64)
    if spec.masking == "static":
        positions = column(batch, "masked_lm_positions", np.int64)
        ids = column(batch, "masked_lm_ids", np.int64)
        weights = column(batch, "masked_lm_weights", np.float32)
    else:
        word_start = column(batch, "word_start", np.int8)
        masked = [
            mask_dynamic(input_ids[i], word_start[i], spec.special, spec.sop,
                         row_rng(spec.seed, str(batch["doc_id"][i]), int(batch["pass_index"][i]),
                                 int(batch["index"][i]), epoch))
            for i in range(len(input_ids))
        ]  # fmt: skip
        input_ids = np.stack([m.input_ids for m in masked]).astype(np.int64)
        positions = np.stack([m.masked_lm_positions for m in masked]).astype(np.int64)
        ids = np.stack([m.masked_lm_ids for m in masked]).astype(np.int64)
        weights = np.stack([m.masked_lm_weights for m in masked])
    labels = np.where(weights > 0, ids, IGNORE_INDEX)
    return {
        "input_ids": torch.from_numpy(input_ids),
        "token_type_ids": torch.from_numpy(column(batch, "token_type_ids", np.int64)),
        "attention_mask": torch.from_numpy(column(batch, "attention_mask", np.int64)),
        "masked_lm_positions": torch.from_numpy(positions),
        "labels": torch.from_numpy(labels),
        "sentence_order_label": torch.from_numpy(np.asarray(batch["sop_label"], dtype=np.int64)),
    }


# Sums each rank contributes per step or per evaluation; all-reduced so figures cover every rank's data.
# The length rule ("swapped when segment A is longer than B") is the SOP baseline a model must beat: the
# reference's chunking makes B longer than A in original order, so length alone predicts part of the label.
# Balanced pairs (|len A - len B| <= BALANCED_TOKENS) are where length says nothing.
STATS = ("loss_sum", "mlm_loss_sum", "sop_loss_sum", "mlm_hits", "mlm_total", "sop_hits", "sequences",
         "sop_length_rule_hits", "sop_balanced_hits", "sop_balanced")  # fmt: skip
BALANCED_TOKENS = 2


def segment_lengths(batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """Tokens of segment A and B per row, without [CLS] and the [SEP]s: ([CLS] A [SEP] B [SEP] [PAD]...)."""
    real = batch["attention_mask"].bool()
    second = batch["token_type_ids"].bool() & real
    return (real & ~second).sum(-1) - 2, second.sum(-1) - 1


def batch_stats(out: Any, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """This batch's contribution to `STATS`: one float64 tensor on the batch's device, so summing steps costs
    no host sync (figures are read once, at log steps)."""
    valid = batch["labels"] != -100
    n = len(batch["input_ids"])
    sop_label = batch["sentence_order_label"]
    sop_right = out.sop_logits.detach().argmax(-1) == sop_label
    len_a, len_b = segment_lengths(batch)
    balanced = (len_a - len_b).abs() <= BALANCED_TOKENS
    return torch.stack([
        out.loss.detach() * n, out.mlm_loss.detach() * n, out.sop_loss.detach() * n,
        (out.prediction_logits.detach().argmax(-1) == batch["labels"])[valid].sum(), valid.sum(),
        sop_right.sum(), torch.tensor(n, device=sop_label.device), ((len_a > len_b).long() == sop_label).sum(),
        (sop_right & balanced).sum(), balanced.sum(),
    ]).to(torch.float64)  # fmt: skip


def summarize(stats: torch.Tensor, prefix: str = "") -> dict[str, float]:
    s = dict(zip(STATS, stats.tolist(), strict=True))
    n = max(s["sequences"], 1.0)
    return {
        f"{prefix}{m.LOSS}": s["loss_sum"] / n,
        f"{prefix}{m.MLM_LOSS}": s["mlm_loss_sum"] / n,
        f"{prefix}{m.SOP_LOSS}": s["sop_loss_sum"] / n,
        f"{prefix}{m.MLM_ACC}": s["mlm_hits"] / max(s["mlm_total"], 1.0),
        f"{prefix}{m.SOP_ACC}": s["sop_hits"] / n,
        f"{prefix}{m.SOP_LENGTH_BASELINE}": s["sop_length_rule_hits"] / n,
        f"{prefix}{m.SOP_BALANCED_ACC}": s["sop_balanced_hits"] / max(s["sop_balanced"], 1.0),
        f"{prefix}{m.SOP_BALANCED_SHARE}": s["sop_balanced"] / n,
    }


def batch_spec(manifest: dict[str, Any], tokenizer: SentencePieceTokenizer, seed: int) -> BatchSpec:
    """How to turn a shard set's rows into model inputs: the masking parameters the shards were built with."""
    from data_jobs.shards import ShardsConfig, special_ids

    cfg = ShardsConfig(**manifest["parameters"])
    return BatchSpec(masking=cfg.masking, special=special_ids(tokenizer), sop=cfg.sop(), seed=seed)
