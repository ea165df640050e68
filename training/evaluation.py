"""Held-out figures of a saved model folder: loss, MLM and SOP accuracy on the eval split of a shard set.

It runs in this process, without Ray, on training's own evaluation path: the rows `training.local.eval_table`
reads (the split's files in name order, rows in file order, the first `max_sequences` of them), turned into
batches by `table_batches` with epoch-0 masks seeded with `EVAL_SEED` (dynamic masking draws each row's mask from
its key, `training.batches`), summed by `training.step.eval_sums` and summarised by `training.batches.summarize`.
Same model, same shards, same `max_sequences`, same machine and torch thread count: the same numbers.

A model is only evaluated on shards built with its own tokenizer (sha256 of `tokenizer/spiece.model`) and
vocabulary size, and only on eval files that still match the manifest (present, sha256, schema): anything else is
refused with one line, because a promotion must not rest on the wrong or edited data.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pyarrow.parquet as pq
import torch

from albert_core.checkpoint import load_model
from albert_core.errors import UserError
from albert_core.model import AlbertForPreTraining
from albert_core.storage import sha256_file
from albert_core.tokenizer import SentencePieceTokenizer
from data_jobs.shards import ShardsConfig, load_manifest, row_schema, split_files
from training.batches import STATS, batch_spec, summarize
from training.gate import check_max_sequences
from training.local import eval_table, table_batches
from training.step import eval_sums

# Seeds the eval rows' dynamic masks: TrainConfig's default seed, so the masks are those training evaluated on.
EVAL_SEED = 0
EVAL_BATCH = 64
# Figures of the rows rather than of the model (the same for every model): the length rule's SOP accuracy and
# the share of length-balanced pairs.
DATA_FIGURES = ("eval_sop_length_baseline", "eval_sop_balanced_share")


def evaluate_model(
    model_folder: Path,
    home: Path,
    shards_id: str,
    max_sequences: int | None = None,
    *,
    label: str | None = None,
) -> dict[str, float]:
    """Loss, MLM and SOP accuracy of a model folder (`save_model`, with `tokenizer/`) on the first
    `max_sequences` rows (all when None) of the eval split of shards `shards_id`, plus `sequences` evaluated.
    `label` names the model in error messages (default: the folder)."""
    folder, home = Path(model_folder), Path(home)
    label = label or str(model_folder)
    check_max_sequences(max_sequences)
    manifest = load_manifest(home, shards_id)
    model, tokenizer = _load_for_shards(folder, manifest, shards_id, label)
    _check_eval_files(home, shards_id, manifest, max_sequences)
    rows = eval_table(home, shards_id, max_sequences)
    spec = batch_spec(manifest, tokenizer, EVAL_SEED)
    batches = table_batches(rows, spec, EVAL_BATCH) if rows is not None else iter(())
    stats = eval_sums(model, batches, "fp32", torch.device("cpu"))
    sequences = int(stats[STATS.index("sequences")])
    if sequences == 0:
        raise UserError(f"shards {shards_id} have no eval rows: rebuild them with --eval-share above 0")
    return {**summarize(stats, prefix="eval_"), "sequences": sequences}


def _load_for_shards(
    folder: Path, manifest: dict[str, Any], shards_id: str, label: str
) -> tuple[AlbertForPreTraining, SentencePieceTokenizer]:
    """The model and its tokenizer, refused unless the shards were built with that tokenizer and fit the model."""
    model = load_model(folder)  # every file checked against the folder's sha256 manifest
    if not (folder / "tokenizer").is_dir():
        raise UserError(f"{label} has no tokenizer/ folder: cannot tell which shards it can be evaluated on")
    tokenizer = SentencePieceTokenizer.load(folder / "tokenizer")
    built_with = manifest["tokenizer"]
    if tokenizer.sha256 != built_with["sha256"]:
        raise UserError(
            f"{label} uses tokenizer sha256 {tokenizer.sha256[:12]}…, shards {shards_id} were built with "
            f"{built_with['name']!r} ({built_with['sha256'][:12]}…): evaluate on shards of its own tokenizer"
        )
    vocab_sizes = {
        model.config.vocab_size,
        tokenizer.vocab_size,
        built_with.get("vocab_size", tokenizer.vocab_size),
    }
    if len(vocab_sizes) != 1:
        raise UserError(
            f"{label} has vocab_size {model.config.vocab_size}, its tokenizer {tokenizer.vocab_size}, shards "
            f"{shards_id} {built_with.get('vocab_size')}: they must be equal"
        )
    max_seq_len = manifest["parameters"]["max_seq_len"]
    if model.config.max_position_embeddings < max_seq_len:
        raise UserError(
            f"{label} has {model.config.max_position_embeddings} positions, shards {shards_id} hold {max_seq_len}"
        )
    return model, tokenizer


def _check_eval_files(home: Path, shards_id: str, manifest: dict[str, Any], limit: int | None) -> None:
    """Check the eval files `eval_table` will read (the same order, up to the one that reaches `limit` rows)
    against the manifest: present, the recorded sha256, the schema it describes."""
    expected = row_schema(ShardsConfig(**manifest["parameters"]))
    rows = 0
    for path in split_files(home, shards_id, "eval"):
        if limit is not None and rows >= limit:
            return
        if not path.is_file():
            raise UserError(f"{path} is missing (recorded in the manifest of shards {shards_id})")
        if sha256_file(path) != manifest["files"][f"eval/{path.name}"]["sha256"]:
            raise UserError(
                f"{path} changed since shards {shards_id} were built (sha256 differs); rebuild them"
            )
        parquet = pq.ParquetFile(path)
        if not parquet.schema_arrow.equals(expected):
            raise UserError(f"{path} does not have the schema its manifest describes; rebuild the shards")
        rows += parquet.metadata.num_rows
