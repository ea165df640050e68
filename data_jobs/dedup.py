"""Exact deduplication by content hash, without one process holding every hash (hash-partitioned, as datatrove's
exact-dedup stages are).

1. Each ingestion task writes, beside its documents, a keys file: (content_hash, key) sorted by hash, where
   key = unit << 32 | row orders documents by (source, position in it) (`data_jobs.sources` numbers the units).
2. Bucket `b` of `16**digits` (the hashes whose first hex digits are `b`) reads its hashes from every keys file —
   the files are sorted, so row-group statistics skip the rest — and from the earlier versions of the corpus, and
   writes its losers, sorted by key: documents whose hash an earlier version has, and every copy of a hash but
   the one with the smallest key.
3. Each unit's writer reads its own key range of every bucket's losers and keeps the other documents.

Memory: a bucket holds about 1/`16**digits` of the hashes (`bucket_digits` keeps that under BUCKET_DOCS); the
driver holds none. Which copy wins depends only on keys, so the result is the same for any worker count or
block layout.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

KEYS_SCHEMA = pa.schema([("content_hash", pa.string()), ("key", pa.int64())])
LOSERS_SCHEMA = pa.schema([("key", pa.int64()), ("previous", pa.bool_())])
BUCKET_DOCS = 2_000_000  # at most about this many documents per bucket (~150 MB of Arrow)
ROW_GROUP = 8192  # rows per row group of keys and losers files: what statistics can skip


def unit_keys(unit: int, rows: int) -> pa.Array:
    return pa.array((np.int64(unit) << np.int64(32)) + np.arange(rows, dtype=np.int64))


def key_range(unit: int) -> tuple[int, int]:
    return unit << 32, (unit + 1) << 32


def write_keys(path: Path, hashes: pa.Array, keys: pa.Array) -> None:
    table = pa.table({"content_hash": hashes, "key": keys}, schema=KEYS_SCHEMA)
    pq.write_table(table.sort_by("content_hash"), path, row_group_size=ROW_GROUP)


def bucket_digits(documents: int) -> int:
    """Hex digits of the bucket prefix: 16 buckets, or 256, 4096, ... when there are many documents."""
    digits = 1
    while documents / 16**digits > BUCKET_DOCS:
        digits += 1
    return digits


def _bounds(bucket: int, digits: int) -> tuple[str, str]:
    low = format(bucket, f"0{digits}x")
    high = format(bucket + 1, f"0{digits}x") if bucket + 1 < 16**digits else "g"  # "g" sorts after every hex
    return low, high


def _hashes(files: list[Path], low: str, high: str, schema: pa.Schema) -> pa.Table:
    """The rows of `files` whose hash is in [low, high), `schema`'s columns only."""
    where = [("content_hash", ">=", low), ("content_hash", "<", high)]
    tables = [pq.read_table(path, columns=schema.names, filters=where) for path in files]
    return pa.concat_tables(tables) if tables else schema.empty_table()


def find_losers(
    bucket: int, digits: int, key_files: list[Path], previous_files: list[Path], out: Path
) -> dict[str, int]:
    """Write bucket `bucket`'s losers to `out` (only when there are any); return its counts."""
    low, high = _bounds(bucket, digits)
    keys = _hashes(key_files, low, high, KEYS_SCHEMA).sort_by(
        [("content_hash", "ascending"), ("key", "ascending")]
    )
    hashes = keys.column("content_hash").combine_chunks()
    previous = _hashes(previous_files, low, high, pa.schema([KEYS_SCHEMA.field("content_hash")]))
    old = pc.is_in(hashes, value_set=previous.column("content_hash").combine_chunks()).to_numpy(
        zero_copy_only=False
    )
    first = np.ones(len(hashes), dtype=bool)  # the smallest key of each hash comes first
    if len(hashes) > 1:
        first[1:] = pc.not_equal(hashes.slice(1), hashes.slice(0, len(hashes) - 1)).to_numpy(
            zero_copy_only=False
        )
    lose = ~first | old
    losers = pa.table({"key": keys.column("key").filter(pa.array(lose)), "previous": pa.array(old[lose])})
    if losers.num_rows:
        pq.write_table(losers.sort_by("key"), out, row_group_size=ROW_GROUP)
    return {
        "documents_in": len(hashes),
        "duplicates_previous": int(old.sum()),
        "new_documents": int((~lose).sum()),
    }


def unit_losers(unit: int, loser_files: list[Path]) -> pa.Array:
    """Keys of the unit's documents that are not kept."""
    low, high = key_range(unit)
    where = [("key", ">=", low), ("key", "<", high)]
    tables = [pq.read_table(path, columns=["key"], filters=where) for path in loser_files]
    return pa.concat_tables(tables).column("key").combine_chunks() if tables else pa.array([], pa.int64())
