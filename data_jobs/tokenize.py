"""Tokenize job: a corpus version + a tokenizer -> the token ids of every sentence, in Parquet, by Ray tasks.

    tokenized/<id>/   part-00000.parquet …   manifest.json

One row per document: `id`, `source`, `text_bytes` (UTF-8 bytes of its sentences) and `sentences` as
`list<list<int32>>` (one list of ids per sentence, empty where a sentence encodes to nothing). The SOP job reads
these rows, so a shards build with another sequence length, dupe factor or seed never encodes the corpus again.

The id is a short hash of what determines the rows: the sha256 of every document file of the corpus version (from
the version manifests, parents included), the tokenizer's sha256 and casing, and `FORMAT`. An id that already has
a manifest is reused. The worker count is not part of the id: it changes no byte.

How: the driver cuts the docs files into units (a slice of about `UNIT_BYTES` of one row group), from Parquet
metadata alone. One Ray task per row group, at most `workers` at a time, reads it once and, for each of its units,
encodes the sentences (preprocessing in pyarrow.compute, SentencePiece batches on `threads` threads, int32 buffers
back), builds the Arrow list arrays from offsets and writes `part-<unit>.parquet`; only statistics rows come back.
Memory per task is one row group, whatever the corpus size; file names follow the unit plan, never the arrival
order, and neither the worker count nor the thread count changes a byte. The folder is written under a temporary
name, the manifest (sha256 and rows of each file) last, then renamed into place.

Plain Ray tasks, not Ray Data: the tasks read and write their own files and return a few numbers, so Ray Data's
streaming executor had nothing to stream, and its start cost ~0.15 s per job (measured) against ~0.01 s for
tasks: more than encoding 2 MB of text on 2 cores.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import math
import time
from collections.abc import Iterator
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
from albert_core.storage import atomic_directory, read_json, sha256_file, validate_name, write_json
from albert_core.system import available_cores
from albert_core.tokenizer import SentencePieceTokenizer
from data_jobs.corpus import CorpusVersion
from data_jobs.ray_runtime import ensure_ray

FORMAT = 1  # part of the id: bump it when the same inputs would give different files
MANIFEST = "manifest.json"
# Text per task. Small enough that a few MB of text still spread over every core, large enough that Ray's
# per-task cost (~10 ms) stays a few percent of the encode (~1 MB at ~8 MB/s per core).
UNIT_BYTES = 1 << 20
# Units per row group at most: they are the parts (files) of the output. A task reads its row group once for all
# of them.
MAX_SLICES = 8
ENCODE_SENTENCES = 16384  # sentences per SentencePiece batch call: bounds the Python strings alive at once

SCHEMA = pa.schema(
    [
        ("id", pa.string()),
        ("source", pa.string()),
        ("text_bytes", pa.int64()),
        ("sentences", pa.list_(pa.list_(pa.int32()))),
    ]
)
STATS_SCHEMA = pa.schema(
    [("unit", pa.int64()), ("file", pa.string()), ("sha256", pa.string()), ("bytes", pa.int64()),
     ("documents", pa.int64()), ("sentences", pa.int64()), ("tokens", pa.int64()), ("text_bytes", pa.int64())]
)  # fmt: skip


@dataclass(frozen=True)
class Unit:
    """Rows [start, stop) of one row group of one docs file: the work of one task, the content of one part."""

    index: int
    file: str
    row_group: int
    start: int
    stop: int


def plan_units(files: list[str]) -> list[Unit]:
    """Slices of about `UNIT_BYTES` (uncompressed) per non-empty row group, in file and row order."""
    units: list[Unit] = []
    for file in files:
        meta = pq.ParquetFile(file).metadata
        for rg in range(meta.num_row_groups):
            rows = meta.row_group(rg).num_rows
            if not rows:  # no part for it: a 0-row Parquet file breaks `datasets`
                continue
            wanted = math.ceil(meta.row_group(rg).total_byte_size / UNIT_BYTES)
            slices = max(1, min(rows, MAX_SLICES, wanted))
            bounds = [rows * k // slices for k in range(slices + 1)]
            units += [
                Unit(len(units) + k, file, rg, a, b) for k, (a, b) in enumerate(itertools.pairwise(bounds))
            ]
    return units


# --- the task ----------------------------------------------------------------------------------------------------


def encode_documents(tokenizer: SentencePieceTokenizer, docs: pa.Table, threads: int) -> pa.Table:
    """`docs` (`id`, `source`, `sentences` as strings) -> rows of `SCHEMA`; the lists are built from offsets."""
    sentences = docs["sentences"].combine_chunks()
    if isinstance(sentences, pa.ChunkedArray):  # an empty table combines to no chunk
        sentences = pa.array([], pa.list_(pa.string()))
    per_doc = pc.list_value_length(sentences).fill_null(0).to_numpy(zero_copy_only=False).astype(np.int64)
    flat = pc.list_flatten(sentences).fill_null("")
    # Whole Arrow string arrays go to SentencePiece (`encode_arrow`: preprocessing in pyarrow.compute, int32
    # buffers back), in slices that bound the Python strings alive at once.
    inner = pa.concat_arrays(
        [tokenizer.encode_arrow(flat.slice(at, ENCODE_SENTENCES), num_threads=threads)
         for at in range(0, len(flat), ENCODE_SENTENCES)]
        or [pa.array([], pa.list_(pa.int32()))]
    )  # fmt: skip
    doc_offsets = np.concatenate([[0], np.cumsum(per_doc)]).astype(np.int32)
    text_bytes = np.bincount(
        np.repeat(np.arange(len(per_doc)), per_doc),
        weights=pc.binary_length(flat).to_numpy(zero_copy_only=False),
        minlength=len(per_doc),
    ).astype(np.int64)
    columns = [
        docs["id"].combine_chunks(),
        docs["source"].combine_chunks(),
        pa.array(text_bytes),
        pa.ListArray.from_arrays(pa.array(doc_offsets), inner),
    ]
    return pa.Table.from_arrays(columns, schema=SCHEMA)


_TOKENIZERS: dict[tuple[str, bool], SentencePieceTokenizer] = {}  # per worker process, by content and casing


def _tokenizer(ref: ray.ObjectRef, key: tuple[str, bool]) -> SentencePieceTokenizer:
    """Loaded once per worker process, and kept across jobs: unpickling a 16k-piece model costs ~25 ms."""
    if key not in _TOKENIZERS:
        _TOKENIZERS.clear()
        _TOKENIZERS[key] = ray.get(ref)
    return _TOKENIZERS[key]


@ray.remote(num_cpus=1, scheduling_strategy="SPREAD")  # over the nodes, as Ray Data spreads its tasks
def _tokenize_row_group(
    units: list[Unit], tokenizer: list[ray.ObjectRef], key: tuple[str, bool], folder: str, threads: int
) -> list[dict[str, Any]]:
    """Ray task: the units of one row group (read once) -> `part-<unit>.parquet` each in `folder`; one statistics
    row per unit. `tokenizer` is a list so that Ray passes the reference, not the unpickled model."""
    tok = _tokenizer(tokenizer[0], key)
    docs = pq.ParquetFile(units[0].file).read_row_group(
        units[0].row_group, columns=["id", "source", "sentences"]
    )
    rows = []
    for unit in units:
        table = encode_documents(tok, docs.slice(unit.start, unit.stop - unit.start), threads)
        path = Path(folder) / part_name(unit.index)
        # No dictionary for the token lists: building one cost as much as the rest of the write and made the
        # file larger (measured). A retried task rewrites its files.
        pq.write_table(table, path, compression="zstd", use_dictionary=["source"])
        rows.append({
            "unit": unit.index, "file": path.name, "sha256": sha256_file(path), "bytes": path.stat().st_size,
            "documents": table.num_rows, "sentences": len(pc.list_flatten(table["sentences"])),
            "tokens": len(pc.list_flatten(pc.list_flatten(table["sentences"]))),
            "text_bytes": int(pc.sum(table["text_bytes"]).as_py() or 0),
        })  # fmt: skip
    return rows


def part_name(unit: int) -> str:
    return f"part-{unit:05d}.parquet"


# --- the job -----------------------------------------------------------------------------------------------------


def tokenized_dir(home: Path, tokenized_id: str) -> Path:
    return home / "tokenized" / validate_name(tokenized_id, "tokenized id")


def document_hashes(source: CorpusVersion) -> dict[str, str]:
    """sha256 of each docs file of the version (parents included), as its version's manifest records it."""
    manifests: dict[Path, dict[str, Any]] = {}
    hashes = {}
    for path in source.doc_files():
        files = manifests.setdefault(path.parent, read_json(path.parent / MANIFEST))["files"]
        hashes[f"{path.parent.name}/{path.name}"] = files[path.name]
    return hashes


def lineage(source: CorpusVersion, tokenizer: SentencePieceTokenizer) -> dict[str, Any]:
    return {
        "format": FORMAT,
        "corpus": source.id,
        "documents_sha256": document_hashes(source),
        "tokenizer": {"sha256": tokenizer.sha256, "lowercase": tokenizer.lowercase},
    }


def tokenized_id(lineage: dict[str, Any]) -> str:
    """16 hex digits of sha256 over the file contents and the tokenizer (not the corpus name: same bytes, same
    id). `lineage` may be a manifest: only the lineage fields are read."""
    key = {
        "format": lineage["format"],
        "documents_sha256": sorted(lineage["documents_sha256"].values()),
        "tokenizer": lineage["tokenizer"],
    }
    return hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:16]


def resources(workers: int | None) -> tuple[int, int]:
    """(concurrent tasks, SentencePiece threads per task)."""
    cores = available_cores()
    n = cores if workers is None else workers
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise UserError(f"workers must be a positive integer, got {workers!r}")
    return n, max(1, cores // n)


def tokenize_corpus(
    home: Path, source: CorpusVersion, tokenizer: SentencePieceTokenizer, workers: int | None = None
) -> dict[str, Any]:
    """Build (or reuse) the token ids of `source` with `tokenizer`; returns the manifest plus `path` and
    `reused`."""
    started = time.perf_counter()
    tree = lineage(source, tokenizer)
    tid = tokenized_id(tree)
    target = tokenized_dir(home, tid)
    if (target / MANIFEST).is_file():
        return {**read_json(target / MANIFEST), "path": str(target), "reused": True}
    files = [str(p) for p in source.doc_files()]
    if not files:
        raise UserError(f"corpus {source.id} has no document files")
    n, threads = resources(workers)
    units = plan_units(files)
    ensure_ray()
    try:
        with atomic_directory(target) as tmp:
            stats = _run_units(units, tokenizer, tmp, n, threads).sort_by("unit")
            placed = {
                r["file"]: {"sha256": r["sha256"], "rows": r["documents"], "bytes": r["bytes"]}
                for r in stats.to_pylist()
            }
            if len(placed) != len(units):
                raise RuntimeError(f"{len(units)} units planned, {len(placed)} written")
            counts = ("documents", "sentences", "tokens", "text_bytes")
            manifest = {
                "id": tid,
                **tree,
                "schema": SCHEMA.to_string(),
                "statistics": {c: int(pc.sum(stats[c]).as_py() or 0) for c in counts},
                "files": placed,
                "workers": n,
                "created": datetime.now(UTC).isoformat(timespec="seconds"),
                "seconds": round(time.perf_counter() - started, 2),
            }
            write_json(tmp / MANIFEST, manifest)
    except UserError:
        if (target / MANIFEST).is_file():  # a concurrent build of the same id was renamed first: same files
            return {**read_json(target / MANIFEST), "path": str(target), "reused": True}
        raise
    return {**manifest, "path": str(target), "reused": False}


def _run_units(
    units: list[Unit], tokenizer: SentencePieceTokenizer, folder: Path, n: int, threads: int
) -> pa.Table:
    """One task per row group, at most `n` in flight; the statistics rows of every unit."""
    groups = [list(g) for _, g in itertools.groupby(units, key=lambda u: (u.file, u.row_group))]
    if 0 < len(groups) < n:  # fewer tasks than workers (a small corpus): give each the idle cores' threads
        threads = max(threads, available_cores() // len(groups))
    ref, key = [ray.put(tokenizer)], (tokenizer.sha256, tokenizer.lowercase)
    pending: list[ray.ObjectRef] = []
    rows: list[dict[str, Any]] = []
    try:
        for group in groups:
            if len(pending) >= n:
                done, pending = ray.wait(pending, num_returns=1)
                rows += ray.get(done[0])
            pending.append(_tokenize_row_group.remote(group, ref, key, str(folder), threads))
        for rows_of_group in ray.get(pending):
            rows += rows_of_group
    except BaseException:
        for task in pending:  # nothing may write into the build folder once it is being removed
            ray.cancel(task, force=True)
        raise
    return pa.Table.from_pylist(rows, schema=STATS_SCHEMA)


# --- readers -----------------------------------------------------------------------------------------------------


def part_files(manifest: dict[str, Any]) -> list[str]:
    """The parts of a tokenized build, in unit order."""
    return [str(Path(manifest["path"]) / name) for name in sorted(manifest["files"])]


def documents(table: pa.Table | pa.RecordBatch) -> Iterator[tuple[str, int, list[np.ndarray]]]:
    """(id, text bytes, int32 ids per sentence) of each row: numpy views of one flat buffer, no Python lists."""
    sentences = table["sentences"]
    if isinstance(sentences, pa.ChunkedArray):
        sentences = sentences.combine_chunks() if sentences.num_chunks else pa.array([], SCHEMA.field(3).type)
    inner = sentences.flatten()
    tokens = inner.flatten().to_numpy()
    token_offsets = inner.offsets.to_numpy()[: len(inner) + 1] - inner.offsets[0].as_py()
    doc_offsets = sentences.offsets.to_numpy() - sentences.offsets[0].as_py()
    ids, text_bytes = table["id"].to_pylist(), table["text_bytes"].to_pylist()
    for k, doc_id in enumerate(ids):
        cuts = token_offsets[doc_offsets[k] : doc_offsets[k + 1] + 1].tolist()
        yield doc_id, text_bytes[k], [tokens[a:b] for a, b in itertools.pairwise(cuts)]
