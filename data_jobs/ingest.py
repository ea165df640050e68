"""Corpus ingestion (`albert ingest`): raw text in, a new deduplicated corpus version out.

    from data_jobs.ingest import IngestConfig, ingest
    summary = ingest(["../shared/corpora"], "demo", home=albert_home(), cfg=IngestConfig())

Three waves of Ray tasks, each writing its own files into a build folder, so no stage passes the corpus through
the driver (which holds one small result per task) and memory per task is bounded by `range_mb`, whatever the
file sizes:

1. read: one task per work unit (`data_jobs.sources.plan_units`: small files packed together, large text and JSONL
   files cut into byte ranges at document boundaries) parses its input into documents, quarantined items and
   counts, and writes them with a keys file (content hash, position) for deduplication;
2. dedup: holding the corpus lock (concurrent ingestions of one corpus read in parallel and take turns from
   here, each deduplicating against and descending from the versions published before it), one task per hash
   bucket chooses which copy of each content hash is kept (`data_jobs.dedup`): the first in (source, position)
   order, none when an earlier version of the corpus has it;
3. write: inside `publish_version`'s build folder, one task per unit writes its kept documents (ids and line
   numbers of file ranges completed from the counts of the ranges before) as `docs-*.parquet`; the driver
   renames them in order and streams the quarantined items into `quarantine.parquet`.

A version holds only the documents new to the corpus, with the previous version as its parent (the corpus is the
union of its versions); a run that finds no new document publishes nothing and says so. The result (rows, ids,
counts) is the same for any worker count and range size.

Nothing is dropped silently: per source `lines_in = lines_accepted + lines_quarantined + separators`, and
`documents_in = new_documents + duplicates_within + duplicates_previous`, both in the manifest and the summary.
"""

from __future__ import annotations

import json
import os
import time
from collections import Counter
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, get_args

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from albert_core.storage import build_folder
from data_jobs.config import Format, IngestConfig
from data_jobs.corpus import (
    DOCS_SCHEMA,
    QUARANTINE_SCHEMA,
    CorpusVersion,
    corpus_lock,
    corpus_root,
    list_versions,
    publish_version,
)
from data_jobs.dedup import bucket_digits, find_losers, unit_keys, unit_losers, write_keys
from data_jobs.layouts import COUNTS, DOC, QUARANTINE, Items
from data_jobs.ray_runtime import ensure_ray, run_tasks
from data_jobs.sources import Plan, RangeUnit, Unit, plan_units, resolve_sources

FORMATS = get_args(Format)
# Memory a read task asks Ray for, so tasks never overcommit a node: a worker's own ~140 MB plus what parsing holds
# per byte of its range (Python strings of lines and sentences, Arrow copies). Measured on the one-sentence-per-line
# layout: +109 / +152 / +246 MB over the worker for ranges of 8 / 16 / 32 MB.
READ_MEMORY_PER_BYTE = 12
READ_MEMORY_FLOOR = 256 << 20
PART_COLUMNS = [*DOCS_SCHEMA.names, "ordinal"]  # the read tasks' documents: ordinal completes ranges' ids
# Every source reports these, zero when no task counted any (e.g. an empty Parquet file has no row group).
COUNT_KEYS = ("lines_in", "lines_accepted", "lines_quarantined", "separators", "documents", "empty_documents")
COUNT_KEYS += ("sentences", "control_chars_removed")


@dataclass
class Tally:
    """Merged per-source counts (from the read tasks) and the dedup counts (from the bucket tasks)."""

    sources: dict[str, dict[str, Any]]
    documents_in: int = 0
    new_documents: int = 0
    duplicates_previous: int = 0


def ingest(
    paths: list[str], corpus: str, *, home: Path, cfg: IngestConfig = IngestConfig()
) -> dict[str, Any]:
    """Ingest `paths` (files, folders, globs, `builtin`) into a new version of `corpus` under `home`.

    Returns the summary `albert ingest --json` prints: corpus, version (None when nothing was new), path, parent,
    documents / sentences / bytes (UTF-8 bytes of the sentences) written, documents_in, duplicates (within the
    input, in earlier versions), empty_documents, quarantined (total, by_reason), layouts and per-source counts,
    skipped paths, a one-line message and the seconds taken.
    """
    started = time.perf_counter()
    cfg = cfg.validated()
    root = corpus_root(home, corpus)  # validates the name before any work
    plan = resolve_sources(paths, cfg.format)
    units = plan_units(plan, cfg)
    ensure_ray()
    written: dict[str, int] = {}
    version = None
    # The read wave's files live in a build folder of their own (swept like any after a kill).
    with build_folder(root, ".build-") as work:
        memory = READ_MEMORY_FLOOR + READ_MEMORY_PER_BYTE * cfg.range_bytes
        reads = run_tasks(read_unit, [(u, cfg, str(work)) for u in units], "ingest: read", memory=memory)
        tally = Tally(sources=merge_counts(plan, reads))
        with corpus_lock(home, corpus):
            previous = list_versions(home, corpus)
            parent = previous[-1] if previous else None
            deduplicate(work, reads, parent, tally)
            if tally.new_documents:

                def build(folder: Path) -> dict[str, Any]:
                    written.update(write_version(folder, work, units, reads))
                    return manifest_body(paths, plan, cfg, tally, written)

                version = publish_version(home, corpus, build, parent=parent)
    summary = summarize(corpus, plan, tally, written, version, parent)
    summary["seconds"] = round(time.perf_counter() - started, 2)
    return summary


def _kind(table: pa.Table, kind: str) -> pa.Table:
    return table.filter(pc.equal(table.column("kind"), kind))


def _part(work: str | Path, kind: str, index: int) -> Path:
    return Path(work) / f"{kind}-{index:06d}.parquet"


def read_unit(unit: Unit, cfg: IngestConfig, work: str) -> dict[str, Any]:
    """Read task: parse one unit; write its documents (with their keys) and quarantined items into `work`.
    Returns its counts per source and how many documents it wrote."""
    items = Items()
    unit.read(cfg, items)
    table = items.table()
    docs = _kind(table, DOC)
    if docs.num_rows:
        pq.write_table(docs.select(PART_COLUMNS), _part(work, "docs", unit.index))
        write_keys(
            _part(work, "keys", unit.index), docs.column("content_hash"), unit_keys(unit.index, docs.num_rows)
        )
    quarantined = _kind(table, QUARANTINE).select(QUARANTINE_SCHEMA.names).cast(QUARANTINE_SCHEMA)
    if quarantined.num_rows:
        pq.write_table(quarantined, _part(work, "quarantine", unit.index))
    counts = _kind(table, COUNTS)
    return {
        "index": unit.index,
        "documents": docs.num_rows,
        "counts": list(
            zip(counts["source"].to_pylist(), map(json.loads, counts["counts"].to_pylist()), strict=True)
        ),
    }


def merge_counts(plan: Plan, reads: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Counts per source, summed over the read tasks."""
    sources = {s.name: {"path": s.path, "source": s.name, "format": s.format} for s in plan.sources}
    for read in reads:
        for name, counts in read["counts"]:
            _merge_counts(sources[name], counts)
    for counts in sources.values():
        counts["unit"] = "lines" if counts["format"] in ("text", "jsonl") else "rows"
        for name in COUNT_KEYS:
            counts.setdefault(name, 0)
        counts.setdefault("quarantined", {})
    return sources


def _merge_counts(into: dict[str, Any], counts: dict[str, Any]) -> None:
    """Add one task's counts for a source: numbers and per-reason counts add up, labels are kept."""
    for key, value in counts.items():
        if key == "quarantined":
            into[key] = dict(Counter(into.get(key, {})) + Counter(value))
        elif isinstance(value, int) and not isinstance(value, bool):
            into[key] = into.get(key, 0) + value
        else:
            into.setdefault(key, value)


def deduplicate(work: Path, reads: list[dict[str, Any]], parent: CorpusVersion | None, tally: Tally) -> None:
    """Dedup wave: one task per hash bucket writes `losers-*.parquet` into `work`; counts go into `tally`."""
    documents = sum(r["documents"] for r in reads)
    if not documents:
        return
    previous = parent.doc_files() if parent else []
    previous_documents = sum(pq.ParquetFile(p).metadata.num_rows for p in previous)
    digits = bucket_digits(documents + previous_documents)
    keys = sorted(work.glob("keys-*.parquet"))
    calls = [(b, digits, keys, previous, _part(work, "losers", b)) for b in range(16**digits)]
    for counts in run_tasks(find_losers, calls, "ingest: dedup"):
        tally.documents_in += counts["documents_in"]
        tally.new_documents += counts["new_documents"]
        tally.duplicates_previous += counts["duplicates_previous"]


@dataclass(frozen=True)
class Offsets:
    """What the ranges of a file before this one owned: documents (rows for JSONL) and lines."""

    ordinals: int = 0
    lines: int = 0


def range_offsets(units: list[Unit], reads: list[dict[str, Any]]) -> dict[int, Offsets]:
    """Offsets of every range after the first of its file, from the counts of the ranges before it."""
    offsets: dict[int, Offsets] = {}
    running: dict[str, Offsets] = {}
    for unit, read in zip(units, reads, strict=True):
        if not isinstance(unit, RangeUnit):
            continue
        before = running.get(unit.source.name, Offsets())
        if before != Offsets():
            offsets[unit.index] = before
        ((_, counts),) = read["counts"]
        jsonl = unit.source.format == "jsonl"
        owned = counts["lines_in"] - counts.get("separators", 0) if jsonl else counts.get("documents", 0)
        running[unit.source.name] = Offsets(before.ordinals + owned, before.lines + counts["lines_in"])
    return offsets


def write_unit(
    index: int, work: str, folder: str, losers: list[Path], offsets: Offsets | None
) -> dict[str, int]:
    """Write task: the unit's kept documents (all but its keys in the dedup wave's `losers` files) into `folder`
    (`docs-u<index>.parquet`, not when there are none), its quarantined items' line numbers completed in place.
    Returns what it wrote."""
    stats = Counter(documents=0, sentences=0, bytes=0)
    offsets = offsets or Offsets()
    docs_path = _part(work, "docs", index)
    if docs_path.exists():
        docs = pq.read_table(docs_path)
        lost = unit_losers(index, losers)
        docs = docs.filter(pc.invert(pc.is_in(unit_keys(index, docs.num_rows), value_set=lost)))
        if offsets.ordinals:
            ordinal = pc.add(docs.column("ordinal"), offsets.ordinals)
            ids = pc.binary_join_element_wise(docs.column("source"), pc.cast(ordinal, pa.string()), ":")
            docs = docs.set_column(docs.schema.get_field_index("id"), "id", ids)
        if docs.num_rows:
            sentences = pc.list_flatten(docs.column("sentences"))
            text_bytes = pc.sum(pc.binary_length(sentences)).as_py() or 0
            stats.update(documents=docs.num_rows, sentences=len(sentences), bytes=text_bytes)
            pq.write_table(
                docs.select(DOCS_SCHEMA.names).cast(DOCS_SCHEMA),
                Path(folder) / f"docs-u{index:06d}.parquet",
                compression="zstd",
            )
    quarantine_path = _part(work, "quarantine", index)
    if offsets.lines and quarantine_path.exists():
        table = pq.read_table(quarantine_path)
        line = table.column("line")
        line = pc.if_else(pc.greater(line, 0), pc.add(line, offsets.lines), line)
        pq.write_table(table.set_column(table.schema.get_field_index("line"), "line", line), quarantine_path)
    return dict(stats)


def write_version(folder: Path, work: Path, units: list[Unit], reads: list[dict[str, Any]]) -> dict[str, int]:
    """Write wave: kept documents into docs-00000.parquet, … (in unit order), every quarantined item into
    quarantine.parquet."""
    offsets = range_offsets(units, reads)
    losers = sorted(work.glob("losers-*.parquet"))  # listed once, not by every task
    calls = [
        (u.index, str(work), str(folder), losers, offsets.get(u.index))
        for u, read in zip(units, reads, strict=True)
        if read["documents"] or u.index in offsets  # else nothing to write or renumber
    ]
    totals: Counter[str] = Counter()
    for stats in run_tasks(write_unit, calls, "ingest: write"):
        totals.update(stats)
    files = sorted(folder.glob("docs-u*.parquet"))
    for number, path in enumerate(files):
        os.rename(path, folder / f"docs-{number:05d}.parquet")
    # Quarantined items are few and small (raw bytes cut to RAW_LIMIT): streamed, one task's part at a time.
    with pq.ParquetWriter(folder / "quarantine.parquet", QUARANTINE_SCHEMA, compression="zstd") as out:
        for path in sorted(work.glob("quarantine-*.parquet")):
            for batch in pq.ParquetFile(path).iter_batches():
                out.write_batch(batch)
    return {**totals, "doc_files": len(files)}


def _totals(plan: Plan, tally: Tally, written: dict[str, int]) -> dict[str, Any]:
    reasons: Counter[str] = Counter()
    for counts in tally.sources.values():
        reasons.update(counts.get("quarantined", {}))
    new = tally.new_documents
    return {
        "documents": written.get("documents", 0),
        "sentences": written.get("sentences", 0),
        "bytes": written.get("bytes", 0),
        "documents_in": tally.documents_in,
        "new_documents": new,
        "duplicates": tally.documents_in - new,
        "duplicates_within": tally.documents_in - new - tally.duplicates_previous,
        "duplicates_previous": tally.duplicates_previous,
        "empty_documents": sum(c.get("empty_documents", 0) for c in tally.sources.values()),
        "quarantined": {"total": sum(reasons.values()), "by_reason": dict(sorted(reasons.items()))},
        "layouts": {name: c.get("layout") for name, c in tally.sources.items()},
        "skipped": plan.skipped,
    }


def manifest_body(
    paths: list[str], plan: Plan, cfg: IngestConfig, tally: Tally, written: dict[str, int]
) -> dict:
    """What manifest.json records besides what `publish_version` adds (corpus, version, parent, file hashes)."""
    return {
        "inputs": list(paths),
        "root": plan.root,
        "parameters": asdict(cfg),
        "sources": list(tally.sources.values()),
        "doc_files": written["doc_files"],
        **_totals(plan, tally, written),
    }


def summarize(
    corpus: str,
    plan: Plan,
    tally: Tally,
    written: dict[str, int],
    version: CorpusVersion | None,
    parent: CorpusVersion | None,
) -> dict[str, Any]:
    totals = _totals(plan, tally, written)
    if version is not None:
        message = (
            f"{version.id}: {totals['documents']} new documents, {totals['duplicates']} duplicates skipped"
        )
    elif tally.documents_in and parent is not None:  # every document's hash is in an earlier version
        message = (
            f"nothing new: all {tally.documents_in} documents are already in corpus {corpus} ({parent.id})"
        )
    else:
        message = (
            f"nothing new: no documents in the input ({totals['quarantined']['total']} items quarantined)"
        )
    return {
        "corpus": corpus,
        "version": version.version if version else None,
        "path": str(version.path) if version else None,
        "parent": parent.id if parent else None,
        **totals,
        "sources": list(tally.sources.values()),
        "message": message,
    }
