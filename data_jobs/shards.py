"""Shards job: a corpus version + a tokenizer -> SOP pretraining rows in Parquet, built by Ray Data workers.

    shards/<id>/   train/part-00000.parquet …   eval/part-00000.parquet …   manifest.json

The id is a short hash of everything that determines the rows: the corpus version and the sha256 of its manifest
(which holds the sha256 of every document file), the tokenizer's sha256 and the resolved `ShardsConfig`. Building
an id that already has a manifest returns it (content-addressed reuse). The worker count is not part of the id:
it changes no row.

How rows are made (google-research/albert `create_pretraining_data.py`, see `albert_core.pretraining_data`):
the tokenize job (`data_jobs.tokenize`) first turns the corpus version into token ids per sentence, or reuses them
when they exist, so a new sequence length, dupe factor or seed never encodes the corpus again. Then Ray Data runs
one task per tokenized part: it builds each document's instances for every dupe pass (static n-gram masking, or
unmasked pairs plus word-start flags for dynamic masking in the loader) and streams them into row groups of its
own Parquet files. Neither the driver nor a task ever holds more than a part and a row group of instances, so
memory does not grow with the corpus. The driver receives one small statistics row per written file. Then it
coalesces: consecutive files of a split (in the order of their tokenized parts, never in arrival order) are
grouped up to `TARGET_FILE_BYTES` and each group is merged by a task that copies it a row group at a time, so a
small build writes one file per split, not one per part. The files are named `part-00000…`; the manifest is
written last and the folder renamed into place. No file has 0 rows: a split without instances has no file, and
the manifest and summary list it in `empty_splits`.

Determinism: every random choice derives from (seed, document id, pass) in albert_core; the train/eval split from a
hash of the document id (plus, in a small corpus, the `eval_floor` document: see `EvalSplit`); the document pool
that single-sentence chunks draw their B segment from ("a random other document" in the reference) is the ≤2000
training documents with the smallest hash of (seed, id), built once in the driver and shared with every worker.
So the rows do not depend on the worker count, on block layout or on order.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from collections import Counter
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import ray

from albert_core.errors import UserError
from albert_core.pretraining_data import DocumentPool, Instance, SpecialIds, document_passes
from albert_core.storage import atomic_directory, read_json, sha256_file, validate_name, write_json
from albert_core.tokenizer import SentencePieceTokenizer
from data_jobs.config import ShardsConfig
from data_jobs.corpus import CorpusVersion, resolve_version
from data_jobs.ray_runtime import ensure_ray
from data_jobs.tokenize import documents, part_files, tokenize_corpus
from data_jobs.tokenize import resources as tokenize_resources
from data_jobs.tokenizer_job import load_tokenizer

# Part of the shard id: bump it when the same inputs would give different rows (2: masking draws; 3: the eval
# floor document, coalesced files).
FORMAT = 3
# Format 2 has the same row schema (it differs in an empty eval file for tiny builds, and more files), so it reads.
READABLE_FORMATS = (2, FORMAT)
MANIFEST = "manifest.json"
SPLITS = ("train", "eval")
POOL_DOCUMENTS = 2000  # bounds the pool's memory; the reference draws from every document
ROW_GROUP_ROWS = 4096  # instances buffered by a worker before they go to disk
# Consecutive files of a split are merged up to this size (a file already larger stays as it is): a few MB of
# text gives one file per split, 1 GB a few dozen, and Ray Data and `datasets` still read them in parallel.
# The merge decodes and re-encodes the rows: ~20 MB of shard files per second per task, ~10% of a 5.7 MB build
# (measured); tasks that build several tokenized parts each would make large builds' files big enough to skip it.
TARGET_FILE_BYTES = 64 << 20
TOKENIZED_COLUMNS = ["id", "text_bytes", "sentences"]


def row_schema(cfg: ShardsConfig) -> pa.Schema:
    """Shard rows: fixed-length int32 token columns (`fixed_size_list`, which ray.data, pyarrow.dataset and
    datasets all read), the stable key (doc_id, pass_index, index), and the masking columns of `cfg.masking`."""
    seq_len, predictions = cfg.max_seq_len, cfg.sop().max_predictions
    fields = [
        ("doc_id", pa.string()),
        ("pass_index", pa.int32()),
        ("index", pa.int32()),
        ("input_ids", pa.list_(pa.int32(), seq_len)),
        ("token_type_ids", pa.list_(pa.int32(), seq_len)),
        ("attention_mask", pa.list_(pa.int32(), seq_len)),
        ("sop_label", pa.int8()),  # 1 = swapped, or B from another document
    ]
    if cfg.masking == "static":
        fields += [
            ("masked_lm_positions", pa.list_(pa.int32(), predictions)),
            ("masked_lm_ids", pa.list_(pa.int32(), predictions)),
            ("masked_lm_weights", pa.list_(pa.float32(), predictions)),
        ]
    else:
        fields.append(("word_start", pa.list_(pa.int8(), seq_len)))
    return pa.schema(fields)


def _hash64(key: str) -> int:
    return int.from_bytes(hashlib.blake2b(key.encode(), digest_size=8).digest(), "little")


def _eval_key(doc_id: str) -> float:
    return _hash64(f"eval\x00{doc_id}") / 2**64


def held_out(doc_id: str, share: float) -> bool:
    """Train/eval split by a hash of the document id alone: the same documents are held out whatever the seed,
    dupe factor or sequence length, so evaluations of different builds compare on the same text."""
    return _eval_key(doc_id) < share


@dataclass(frozen=True)
class EvalSplit:
    """`held_out` plus a floor: when `share` > 0 holds out no document of a corpus of two or more (62 documents
    at 0.01 do so half the time), the document with the smallest hash is held out, so evaluation has text."""

    share: float
    floor: str | None = None

    def holds(self, doc_id: str) -> bool:
        return doc_id == self.floor or held_out(doc_id, self.share)


def eval_split(parts: list[str], share: float) -> EvalSplit:
    """The split of the documents in `parts`. Reads only their ids, and stops at the first held-out one, so a
    large corpus costs a few hundred ids; the result depends on the set of ids alone, not on their order."""
    if share <= 0:
        return EvalSplit(share)
    smallest: tuple[float, str] | None = None
    documents = 0
    for part in parts:
        for doc_id in pq.read_table(part, columns=["id"])["id"].to_pylist():
            key = (_eval_key(doc_id), doc_id)
            if key[0] < share:
                return EvalSplit(share)
            smallest = key if smallest is None else min(smallest, key)
            documents += 1
    return EvalSplit(share, smallest[1] if smallest is not None and documents >= 2 else None)


# --- the worker --------------------------------------------------------------------------------------------------


class _SplitWriter:
    """Instances of one split from one block: buffered, written as row groups of one Parquet file, counted."""

    def __init__(self, path: Path, cfg: ShardsConfig) -> None:
        self.path = path
        self.counts: Counter[str] = Counter()
        self._static = cfg.masking == "static"
        self._sop = cfg.sop()
        self._schema = row_schema(cfg)
        self._buffer: list[Instance] = []
        self._writer: pq.ParquetWriter | None = None

    def add(self, instances: list[Instance]) -> None:
        self._buffer += instances
        if len(self._buffer) >= ROW_GROUP_ROWS:
            self._flush()

    def close(self) -> dict[str, Any]:
        """Finish the file; its statistics row (file None when the block had no instances of this split)."""
        self._flush()
        row: dict[str, Any] = {"file": None, "sha256": None, "bytes": 0}
        if self._writer is not None:
            self._writer.close()
            row.update(file=self.path.name, sha256=sha256_file(self.path), bytes=self.path.stat().st_size)
        return {**row, **self.counts}

    def _flush(self) -> None:
        if not self._buffer:
            return
        value_fields = list(self._schema)[3:]  # after the key columns doc_id, pass_index, index
        columns = {f.name: np.stack([getattr(i, f.name) for i in self._buffer]) for f in value_fields}
        self._count(columns)
        arrays = [
            pa.array([i.doc_id for i in self._buffer], pa.string()),
            pa.array([i.pass_index for i in self._buffer], pa.int32()),
            pa.array([i.index for i in self._buffer], pa.int32()),
        ]
        for f in value_fields:
            values = columns[f.name].astype(_numpy_type(f.type))
            if pa.types.is_fixed_size_list(f.type):
                arrays.append(pa.FixedSizeListArray.from_arrays(pa.array(values.ravel()), f.type.list_size))
            else:
                arrays.append(pa.array(values, f.type))
        if self._writer is None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._writer = pq.ParquetWriter(self.path, self._schema, compression="zstd")
        self._writer.write_batch(pa.RecordBatch.from_arrays(arrays, schema=self._schema))
        self._buffer = []

    def _count(self, columns: dict[str, np.ndarray]) -> None:
        negative = np.array([i.single_sentence_negative for i in self._buffer])
        lengths = columns["attention_mask"].sum(axis=1)
        c = self.counts
        c["instances"] += len(self._buffer)
        c["tokens"] += int(lengths.sum())
        c["negatives"] += int(negative.sum())
        c["pairs"] += int((~negative).sum())
        c["swapped"] += int(((columns["sop_label"] == 1) & ~negative).sum())
        if self._static:
            masked = columns["masked_lm_weights"].sum(axis=1)
            budget = np.minimum(
                self._sop.max_predictions, np.maximum(1, np.round(lengths * self._sop.masked_lm_prob))
            )
            c["masked_positions"] += int(masked.sum())
            c["budget_filled"] += int((masked == budget).sum())


def _numpy_type(t: pa.DataType) -> type:
    return (t.value_type if pa.types.is_fixed_size_list(t) else t).to_pandas_dtype()


_POOLS: dict[str, DocumentPool] = {}  # per worker process: the pool is fetched once, not once per task


def _pool(ref: ray.ObjectRef | None) -> DocumentPool | None:
    if ref is None:
        return None
    key = ref.hex()
    if key not in _POOLS:
        _POOLS.clear()
        _POOLS[key] = ray.get(ref)
    return _POOLS[key]


def _build_units(
    batch: pa.Table, word_start: np.ndarray, special: SpecialIds, pool: ray.ObjectRef | None, cfg: ShardsConfig,
    split: EvalSplit, folder: str,
) -> pa.Table:  # fmt: skip
    """Ray Data task: each tokenized part of the batch -> its instances in one Parquet file per split under
    `folder/<split>/`; one statistics row per unit and split it touched."""
    other = _pool(pool)
    sop = cfg.sop()
    rows = []
    for unit, file in zip(batch["unit"].to_pylist(), batch["file"].to_pylist(), strict=True):
        stem = f".unit-{unit:05d}.parquet"  # a retried task rewrites its own file; renamed by the driver
        writers = {split: _SplitWriter(Path(folder) / split / stem, cfg) for split in SPLITS}
        for doc_id, text_bytes, sentences in documents(pq.read_table(file, columns=TOKENIZED_COLUMNS)):
            writer = writers["eval" if split.holds(doc_id) else "train"]
            writer.counts["documents"] += 1
            writer.counts["sentences"] += len(sentences)
            writer.counts["text_bytes"] += text_bytes
            for instances in document_passes(doc_id, sentences, sop, special, word_start, other):
                if instances:  # the short target is drawn once per document pass: count it once
                    writer.counts["document_passes"] += 1
                    writer.counts["short_document_passes"] += instances[0].short_target
                    writer.add(instances)
        rows += [{"split": split, "unit": unit, **w.close()} for split, w in writers.items() if w.counts]
    return pa.Table.from_pylist(rows, schema=STATS_SCHEMA)


STAT_COUNTS = ("documents", "sentences", "text_bytes", "instances", "tokens", "pairs", "swapped", "negatives",
               "document_passes", "short_document_passes", "masked_positions", "budget_filled")  # fmt: skip


# What a worker returns per block and split: where its file is (None if no instances) and what it counted.
STATS_SCHEMA = pa.schema(
    [("split", pa.string()), ("unit", pa.int64()), ("file", pa.string()), ("sha256", pa.string()),
     ("bytes", pa.int64()), *((name, pa.int64()) for name in STAT_COUNTS)]
)  # fmt: skip


def special_ids(tokenizer: SentencePieceTokenizer) -> SpecialIds:
    return SpecialIds(tokenizer.cls_id, tokenizer.sep_id, tokenizer.mask_id, tokenizer.vocab_size)


# --- the document pool -------------------------------------------------------------------------------------------


def _pool_candidates(table: pa.Table, seed: int, split: EvalSplit, k: int) -> pa.Table:
    """The ≤k training documents of `table` with the smallest pool keys."""
    keyed = sorted(
        (_hash64(f"pool\x00{seed}\x00{doc_id}"), doc_id, row)
        for row, doc_id in enumerate(table["id"].to_pylist())
        if not split.holds(doc_id)
    )[:k]
    rows = pa.array([row for _, _, row in keyed], pa.int64())  # typed: an empty list would be null-typed
    picked = table.take(rows)
    return picked.append_column("key", pa.array([key for key, _, _ in keyed], pa.uint64()))


def build_pool(
    parts: list[str], vocab_size: int, cfg: ShardsConfig, split: EvalSplit, k: int = POOL_DOCUMENTS
) -> DocumentPool:
    """The documents single-sentence chunks draw B from: the k training documents with the smallest hash of
    (seed, id), read from the tokenized parts one at a time (so the driver holds at most 2k documents)."""
    best: pa.Table | None = None
    for part in parts:
        table = _pool_candidates(pq.read_table(part, columns=TOKENIZED_COLUMNS), cfg.seed, split, k)
        merged = table if best is None else pa.concat_tables([best, table])
        best = merged.sort_by([("key", "ascending"), ("id", "ascending")]).slice(0, k)
    if best is None or not len(best):
        raise UserError("single_sentence_negatives needs training documents for its pool; there are none")
    return DocumentPool({doc_id: sentences for doc_id, _, sentences in documents(best)}, vocab_size)


# --- the job -----------------------------------------------------------------------------------------------------


def shards_dir(home: Path, shard_id: str) -> Path:
    return home / "shards" / validate_name(shard_id, "shard id")


def _lineage(source: CorpusVersion, name: str, tokenizer: SentencePieceTokenizer, cfg: ShardsConfig) -> dict:
    return {
        "format": FORMAT,
        "corpus": source.id,
        "corpus_manifest_sha256": sha256_file(source.path / MANIFEST),
        "tokenizer": {
            "name": name,
            "sha256": tokenizer.sha256,
            "vocab_size": tokenizer.vocab_size,
            "lowercase": tokenizer.lowercase,
        },
        "parameters": cfg.resolved(),
    }


def shard_id(lineage: dict[str, Any]) -> str:
    """16 hex digits of sha256 over what determines the rows (the tokenizer by content, not by name)."""
    key = {**lineage, "tokenizer": lineage["tokenizer"]["sha256"]}
    return hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:16]


def _run_workers(
    parts: list[str], word_start: np.ndarray, special: SpecialIds, pool: DocumentPool | None, cfg: ShardsConfig,
    split: EvalSplit, folder: Path, workers: int,
) -> pa.Table:  # fmt: skip
    """Build every tokenized part's files; return the statistics rows (one per part and split)."""
    # Tasks, not actors (as in the tokenize job): a part is read, built and written in one task.
    plan = ray.data.from_items(
        [{"unit": k, "file": f} for k, f in enumerate(parts)], override_num_blocks=len(parts)
    )
    results = plan.map_batches(
        _build_units,
        fn_kwargs={
            "word_start": word_start,
            "special": special,
            "pool": ray.put(pool) if pool is not None else None,
            "cfg": cfg,
            "split": split,
            "folder": str(folder),
        },
        batch_format="pyarrow",
        batch_size=1,
        compute=ray.data.TaskPoolStrategy(size=workers),
        num_cpus=1,
    )
    tables = list(results.iter_batches(batch_format="pyarrow", batch_size=None))
    return pa.concat_tables(tables) if tables else STATS_SCHEMA.empty_table()


def _file_groups(stats: pa.Table) -> dict[str, list[list[dict[str, Any]]]]:
    """Per split, the statistics rows of its written files in tokenized-part order, cut into runs of at most
    `TARGET_FILE_BYTES` (a larger file is a run of its own). Depends only on the files, not on the worker count."""
    written = sorted((r for r in stats.to_pylist() if r["file"]), key=lambda r: r["unit"])
    groups: dict[str, list[list[dict[str, Any]]]] = {}
    for split in SPLITS:
        runs: list[list[dict[str, Any]]] = []
        size = 0
        for row in (r for r in written if r["split"] == split):
            if not runs or size + row["bytes"] > TARGET_FILE_BYTES:
                runs.append([])
                size = 0
            runs[-1].append(row)
            size += row["bytes"]
        groups[split] = runs
    return groups


@ray.remote(num_cpus=1)
def _merge(sources: list[str], target: str) -> dict[str, Any]:
    """Ray task: concatenate `sources` into `target` one row group at a time (memory: one row group); its
    manifest entry. Sources are left for the driver to delete, so a retried task can start over."""
    with pq.ParquetWriter(target, pq.read_schema(sources[0]), compression="zstd") as writer:
        for source in sources:
            file = pq.ParquetFile(source)
            for rg in range(file.num_row_groups):
                writer.write_table(file.read_row_group(rg))  # a row group in, the same row group out
    path = Path(target)
    return {
        "sha256": sha256_file(path),
        "rows": pq.ParquetFile(path).metadata.num_rows,
        "bytes": path.stat().st_size,
    }


def _place_files(folder: Path, stats: pa.Table) -> dict[str, dict[str, Any]]:
    """Coalesce each split's files (`_file_groups`) into `<split>/part-00000…`: a run of one file is renamed, a
    longer run merged by a task. A split without instances gets no file (`datasets` cannot read a 0-row one)."""
    placed: dict[str, Any] = {}
    for split, runs in _file_groups(stats).items():
        (folder / split).mkdir(exist_ok=True)
        for k, run in enumerate(runs):
            name, sources = f"{split}/part-{k:05d}.parquet", [folder / split / r["file"] for r in run]
            if len(run) == 1:
                os.replace(sources[0], folder / name)
                placed[name] = {
                    "sha256": run[0]["sha256"],
                    "rows": run[0]["instances"],
                    "bytes": run[0]["bytes"],
                }
            else:
                placed[name] = _merge.remote([str(p) for p in sources], str(folder / name))
    merged = [name for name, entry in placed.items() if isinstance(entry, ray.ObjectRef)]
    placed.update(zip(merged, ray.get([placed[name] for name in merged]), strict=True))
    for leftover in folder.glob("*/.unit-*.parquet"):
        leftover.unlink()
    return placed


def _statistics(stats: pa.Table, cfg: ShardsConfig) -> dict[str, Any]:
    def ratio(a: int, b: int) -> float | None:
        return round(a / b, 6) if b else None

    per_split = {
        split: {name: int(pc.sum(stats.filter(pc.equal(stats["split"], split))[name]).as_py() or 0)
                for name in STAT_COUNTS}
        for split in SPLITS
    }  # fmt: skip
    total = {name: sum(s[name] for s in per_split.values()) for name in STAT_COUNTS}
    static = cfg.masking == "static"
    masked = ratio(total["masked_positions"], total["instances"]) if static else None
    filled = ratio(total["budget_filled"], total["instances"]) if static else None
    return {
        **per_split,
        "documents": total["documents"],
        "text_bytes": total["text_bytes"],
        "instances": total["instances"],
        "tokens": total["tokens"],
        # Of true sentence pairs: single-sentence negatives always have label 1 and are counted on their own.
        "swapped_fraction": ratio(total["swapped"], total["pairs"]),
        "short_target_fraction": ratio(total["short_document_passes"], total["document_passes"]),
        "single_sentence_negative_fraction": ratio(total["negatives"], total["instances"]),
        "mean_masked_positions": masked,
        "masked_budget_filled_fraction": filled,
    }


def _plan(
    home: Path, corpus: str, tokenizer: str, version: int | None, cfg: ShardsConfig
) -> tuple[CorpusVersion, SentencePieceTokenizer, dict[str, Any]]:
    source = resolve_version(home, corpus, version)
    tok, _ = load_tokenizer(home, tokenizer)
    return source, tok, _lineage(source, tokenizer, tok, cfg)


def planned_shard_id(
    corpus: str, tokenizer: str, *, home: Path, version: int | None = None, cfg: ShardsConfig = ShardsConfig()
) -> str:
    """The id `build_shards` gives these inputs, without building anything (a cache key for orchestration)."""
    return shard_id(_plan(home, corpus, tokenizer, version, cfg)[2])


def build_shards(
    corpus: str,
    tokenizer: str,
    *,
    home: Path,
    version: int | None = None,
    workers: int | None = None,
    cfg: ShardsConfig = ShardsConfig(),
) -> dict[str, Any]:
    """Build (or reuse) the shards of a corpus version with a tokenizer; return the summary the CLI prints."""
    started = time.perf_counter()
    source, tok, lineage = _plan(home, corpus, tokenizer, version, cfg)
    sid = shard_id(lineage)
    target = shards_dir(home, sid)
    if (target / MANIFEST).is_file():
        return _summary(read_json(target / MANIFEST), target, reused=True, started=started)
    workers = tokenize_resources(workers)[0]  # checks the value before anything runs
    tokenized = tokenize_corpus(home, source, tok, workers)
    parts = part_files(tokenized)
    ensure_ray()  # a reused tokenized build started nothing
    split = eval_split(parts, cfg.eval_share)
    pool = build_pool(parts, tok.vocab_size, cfg, split) if cfg.single_sentence_negatives else None
    try:
        with atomic_directory(target) as tmp:
            stats = _run_workers(
                parts, tok.word_start_mask(), special_ids(tok), pool, cfg, split, tmp, workers
            )
            placed = _place_files(tmp, stats)
            manifest = {
                "id": sid,
                **lineage,
                "pool": {"documents": len(pool), "limit": POOL_DOCUMENTS} if pool is not None else None,
                "eval_floor": split.floor,  # held out although its hash is not below eval_share
                "statistics": _statistics(stats, cfg),
                "empty_splits": [s for s in SPLITS if not any(f.startswith(f"{s}/") for f in placed)],
                "files": placed,
                "sha256": hashlib.sha256(json.dumps(placed, sort_keys=True).encode()).hexdigest(),
                "tokenized": tokenized["id"],
                "workers": workers,
                "created": datetime.now(UTC).isoformat(timespec="seconds"),
                "seconds": round(time.perf_counter() - started, 2),
            }
            write_json(tmp / MANIFEST, manifest)
    except UserError:
        if (target / MANIFEST).is_file():  # a concurrent build of the same id was renamed first: same rows
            return _summary(read_json(target / MANIFEST), target, reused=True, started=started)
        raise
    return _summary(manifest, target, reused=False, started=started)


def _summary(manifest: dict[str, Any], path: Path, *, reused: bool, started: float) -> dict[str, Any]:
    stats = manifest["statistics"]
    return {
        "id": manifest["id"],
        "path": str(path),
        "corpus": manifest["corpus"],
        "tokenizer": manifest["tokenizer"]["name"],
        "instances": {split: stats[split]["instances"] for split in SPLITS},
        "tokens": stats["tokens"],
        "statistics": {k: v for k, v in stats.items() if k not in SPLITS},
        "files": len(manifest["files"]),
        "empty_splits": manifest.get("empty_splits", []),
        "reused": reused,
        "seconds": round(time.perf_counter() - started, 2),
    }


# --- readers (the training layer's entry points) -----------------------------------------------------------------


def load_manifest(home: Path, shard_id: str) -> dict[str, Any]:
    path = shards_dir(home, shard_id) / MANIFEST
    if not path.is_file():
        raise UserError(
            f"unknown shards {shard_id!r}: {path} does not exist (`albert shards build` prints ids)"
        )
    manifest = read_json(path)
    if manifest.get("format") not in READABLE_FORMATS:
        raise UserError(
            f"shards {shard_id} have format {manifest.get('format')!r}, this version reads {FORMAT}; rebuild them"
        )
    return manifest


def latest_shards(home: Path, corpus: str) -> str:
    """Id of the shards built from the newest version of `corpus` that has any (the latest built, on a tie)."""
    found = []
    for path in (home / "shards").glob(f"*/{MANIFEST}"):
        if path.parent.name.startswith("."):
            continue  # a build folder (pathlib's glob does not skip hidden names)
        manifest = read_json(path)
        name, _, version = str(manifest.get("corpus", "")).rpartition("/v")
        if name == corpus and version.isdigit():
            found.append((int(version), manifest.get("created", ""), manifest["id"]))
    if not found:
        raise UserError(f"corpus {corpus!r} has no shards under {home / 'shards'}; run `albert shards build`")
    return max(found)[2]


def split_files(home: Path, shard_id: str, split: str) -> list[Path]:
    """The Parquet files of one split, in name order, as recorded in the manifest."""
    folder = shards_dir(home, shard_id)
    return [
        folder / name
        for name in sorted(load_manifest(home, shard_id)["files"])
        if name.startswith(f"{split}/")
    ]


def read_shards(home: Path, shard_id: str, split: str) -> ray.data.Dataset:
    """One split of a shard set as a Ray Dataset, after checking every file's schema against the manifest."""
    if split not in SPLITS:
        raise UserError(f"split must be one of {', '.join(SPLITS)}, got {split!r}")
    manifest = load_manifest(home, shard_id)
    expected = row_schema(ShardsConfig(**manifest["parameters"]))
    folder = shards_dir(home, shard_id)
    paths = split_files(home, shard_id, split)
    for path in paths:
        if not path.is_file():
            raise UserError(f"{path} is missing (recorded in {folder / MANIFEST})")
        found = pq.read_schema(path)
        if not found.equals(expected):
            raise UserError(f"{path} does not have the schema of format {FORMAT} shards; rebuild them")
    ensure_ray()
    if not paths:  # an empty split has no file
        return ray.data.from_arrow(expected.empty_table())
    return ray.data.read_parquet([str(p) for p in paths])
