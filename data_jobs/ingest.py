"""Corpus ingestion (`albert ingest`): raw text in, a new deduplicated corpus version out.

    from data_jobs.ingest import IngestConfig, ingest
    summary = ingest(["../shared/corpora"], "demo", home=albert_home(), cfg=IngestConfig())

Steps: resolve the paths into sources (`data_jobs.sources`), read them with Ray Data into one stream of documents,
quarantined items and per-source counts, materialise it, then, holding the corpus lock (concurrent ingestions of
one corpus read in parallel and take turns from here, each deduplicating against and descending from the versions
published before it), two passes on the driver: (1) merge the counts and pick, for every content hash, the
document that is kept (the smallest (source, position); hashes already in an earlier version of the corpus are
not new); (2) inside `publish_version`'s build folder, stream the kept documents into `docs-00000.parquet`, …
(a new file every ~64 MB) and every quarantined item into `quarantine.parquet`. A version holds only the documents
new to the corpus, with the previous version as its parent (the corpus is the union of its versions); a run that
finds no new document publishes nothing and says so.

Nothing is dropped silently: per source `lines_in = lines_accepted + lines_quarantined + separators`, and
`documents_in = new_documents + duplicates_within + duplicates_previous`, both in the manifest and the summary.
"""

from __future__ import annotations

import codecs
import json
import time
from collections import Counter
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, Literal

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import ray

from albert_core.errors import UserError
from data_jobs.corpus import (
    DOCS_SCHEMA,
    QUARANTINE_SCHEMA,
    CorpusVersion,
    corpus_lock,
    corpus_root,
    list_versions,
    publish_version,
)
from data_jobs.layouts import COUNTS, DOC, LAYOUTS, QUARANTINE
from data_jobs.ray_runtime import ensure_ray
from data_jobs.sources import Plan, read_items, resolve_sources

FORMATS = ("text", "jsonl", "parquet", "hf")
DOCS_FILE_BYTES = 64 << 20  # Arrow bytes per docs-*.parquet file (before compression)
# Every source reports these, zero when no task counted any (e.g. an empty Parquet file has no row group).
COUNT_KEYS = ("lines_in", "lines_accepted", "lines_quarantined", "separators", "documents", "empty_documents")
COUNT_KEYS += ("sentences", "control_chars_removed")


@dataclass(frozen=True)
class IngestConfig:
    format: Literal["text", "jsonl", "parquet", "hf"] | None = None  # None: from the extension / folder
    text_field: str = "text"  # JSONL field holding the text
    column: str = "text"  # Parquet / HF column holding the text
    # None: detected per file (and recorded); JSONL, Parquet and HF rows default to `documents`
    layout: Literal["sentences", "paragraphs", "wikitext", "wrapped", "documents"] | None = None
    pre_split: bool = False  # lines are sentences already: do not split them
    encoding: str = "utf-8"  # "utf-8" (strict), "auto" (detect, recorded per source) or a codec name
    max_line_bytes: int = 1_000_000  # longer lines (and JSONL rows) are quarantined

    def validated(self) -> IngestConfig:
        """This config with the codec name normalised; a UserError for values that cannot work."""
        if self.format is not None and self.format not in FORMATS:
            raise UserError(f"unknown format {self.format!r}: use one of {', '.join(FORMATS)}")
        if self.layout is not None and self.layout not in LAYOUTS:
            raise UserError(f"unknown layout {self.layout!r}: use one of {', '.join(LAYOUTS)}")
        if self.max_line_bytes < 1:
            raise UserError(f"max_line_bytes must be positive, got {self.max_line_bytes}")
        if self.encoding == "auto":
            return self
        try:
            return replace(self, encoding=codecs.lookup(self.encoding).name)
        except LookupError:
            raise UserError(
                f"unknown encoding {self.encoding!r}: use utf-8, auto or a Python codec name"
            ) from None


@dataclass
class Tally:
    """Pass 1: merged per-source counts and, per new content hash, the (source, ordinal) of the kept document."""

    sources: dict[str, dict[str, Any]]
    winners: dict[str, tuple[str, int]] = field(default_factory=dict)
    documents_in: int = 0
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
    corpus_root(home, corpus)  # validates the name before any work
    plan = resolve_sources(paths, cfg.format)
    ensure_ray()
    items = read_items(plan, cfg).materialize()
    written: dict[str, int] = {}
    version = None
    with corpus_lock(home, corpus):
        previous = list_versions(home, corpus)
        tally = tally_items(items, plan, previous_hashes(previous))
        parent = previous[-1] if previous else None
        if tally.winners:

            def build(folder: Path) -> dict[str, Any]:
                written.update(write_version(folder, items, tally))
                return manifest_body(paths, plan, cfg, tally, written)

            version = publish_version(home, corpus, build, parent=parent)
    summary = summarize(corpus, plan, tally, written, version, parent)
    summary["seconds"] = round(time.perf_counter() - started, 2)
    return summary


def previous_hashes(versions: list[CorpusVersion]) -> set[str]:
    """Content hashes of every document in earlier versions (only that column is read); the latest version's
    snapshot holds all of them."""
    hashes: set[str] = set()
    for path in versions[-1].doc_files() if versions else []:
        hashes.update(pq.read_table(path, columns=["content_hash"]).column("content_hash").to_pylist())
    return hashes


def _kind(batch: pa.Table, kind: str) -> pa.Table:
    return batch.filter(pc.equal(batch.column("kind"), kind))


def _doc_keys(docs: pa.Table) -> list[tuple[str, int]]:
    """(source, ordinal) of each document: the order that decides which of several duplicates is kept."""
    return list(zip(docs.column("source").to_pylist(), docs.column("ordinal").to_pylist(), strict=True))


def tally_items(items: ray.data.Dataset, plan: Plan, seen: set[str]) -> Tally:
    """Pass 1 over the item stream: counts per source, and which document keeps each new content hash."""
    tally = Tally(
        sources={s.name: {"path": s.path, "source": s.name, "format": s.format} for s in plan.sources}
    )
    for batch in items.iter_batches(batch_format="pyarrow", batch_size=None):
        for name, counts in zip(
            *_kind(batch, COUNTS).select(["source", "counts"]).to_pydict().values(), strict=True
        ):
            _merge_counts(tally.sources[name], json.loads(counts))
        docs = _kind(batch, DOC)
        for digest, key in zip(docs.column("content_hash").to_pylist(), _doc_keys(docs), strict=True):
            tally.documents_in += 1
            if digest in seen:
                tally.duplicates_previous += 1
            elif digest not in tally.winners or key < tally.winners[digest]:
                tally.winners[digest] = key
    for counts in tally.sources.values():
        counts["unit"] = "lines" if counts["format"] in ("text", "jsonl") else "rows"
        for name in COUNT_KEYS:
            counts.setdefault(name, 0)
        counts.setdefault("quarantined", {})
    return tally


def _merge_counts(into: dict[str, Any], counts: dict[str, Any]) -> None:
    """Add one task's counts for a source: numbers and per-reason counts add up, labels are kept."""
    for key, value in counts.items():
        if key == "quarantined":
            into[key] = dict(Counter(into.get(key, {})) + Counter(value))
        elif isinstance(value, int) and not isinstance(value, bool):
            into[key] = into.get(key, 0) + value
        else:
            into.setdefault(key, value)


class _DocsWriter:
    """docs-00000.parquet, docs-00001.parquet, …: streamed, a new file once DOCS_FILE_BYTES have gone in."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.files = 0
        self.writer: pq.ParquetWriter | None = None
        self.size = 0  # Arrow bytes written to the open file
        self.stats = Counter(documents=0, sentences=0, bytes=0)

    def write(self, docs: pa.Table) -> None:
        if not docs.num_rows:
            return
        if self.writer is None:
            path = self.folder / f"docs-{self.files:05d}.parquet"
            self.writer = pq.ParquetWriter(path, DOCS_SCHEMA, compression="zstd")
            self.files += 1
        self.writer.write_table(docs)
        self.size += docs.nbytes
        sentences = pc.list_flatten(docs.column("sentences"))
        self.stats["documents"] += docs.num_rows
        self.stats["sentences"] += len(sentences)
        self.stats["bytes"] += pc.sum(pc.binary_length(sentences)).as_py() or 0
        if self.size >= DOCS_FILE_BYTES:
            self.close()

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
        self.writer, self.size = None, 0


def write_version(folder: Path, items: ray.data.Dataset, tally: Tally) -> dict[str, int]:
    """Pass 2: the kept documents into docs-*.parquet, every quarantined item into quarantine.parquet."""
    docs_writer = _DocsWriter(folder)
    with pq.ParquetWriter(folder / "quarantine.parquet", QUARANTINE_SCHEMA, compression="zstd") as quarantine:
        for batch in items.iter_batches(batch_format="pyarrow", batch_size=None):
            docs = _kind(batch, DOC)
            hashes = docs.column("content_hash").to_pylist()
            keep = [tally.winners.get(h) == key for h, key in zip(hashes, _doc_keys(docs), strict=True)]
            docs_writer.write(
                docs.filter(pa.array(keep, pa.bool_())).select(DOCS_SCHEMA.names).cast(DOCS_SCHEMA)
            )
            quarantined = _kind(batch, QUARANTINE).select(QUARANTINE_SCHEMA.names).cast(QUARANTINE_SCHEMA)
            if quarantined.num_rows:
                quarantine.write_table(quarantined)
    docs_writer.close()
    return {**docs_writer.stats, "doc_files": docs_writer.files}


def _totals(plan: Plan, tally: Tally, written: dict[str, int]) -> dict[str, Any]:
    reasons: Counter[str] = Counter()
    for counts in tally.sources.values():
        reasons.update(counts.get("quarantined", {}))
    new = len(tally.winners)
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
