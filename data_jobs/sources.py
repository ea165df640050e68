"""Ingestion sources: from the paths a user gives to work units, each about `range_bytes` of input for one task.

Text and JSONL files are read as raw bytes (so a bad file or row can be quarantined with its original bytes):
small ones whole, several to a unit; large ones in byte ranges cut at document boundaries (`data_jobs.ranges`),
with the encoding and layout detected once, on a sample spread over the whole file. Parquet files are read by
row groups, with the number of each group's first row taken from the footer. A local Hugging Face `datasets`
folder is read by row ranges (memory-mapped); `builtin` is the stdlib-docstring demo corpus. The per-file work is
in `data_jobs.layouts`; ingestion (`data_jobs.ingest`) runs one Ray task per unit.
"""

from __future__ import annotations

import glob
import json
import os
import re
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING

import pyarrow as pa
import pyarrow.parquet as pq

from albert_core.errors import UserError
from albert_core.text import normalize_counted
from data_jobs.layouts import (
    Items,
    Layout,
    Refusal,
    decode,
    detect_layout,
    jsonl_items,
    looks_binary,
    row_items,
    text_items,
)
from data_jobs.ranges import cut_rule, owned_span, plan_ranges, sample_bytes, splittable

if TYPE_CHECKING:
    from data_jobs.config import IngestConfig

BUILTIN = "builtin"
EXTENSIONS = {"": "text", ".txt": "text", ".text": "text", ".jsonl": "jsonl", ".json": "jsonl"}
EXTENSIONS[".parquet"] = "parquet"
HF_MARKERS = ("dataset_info.json", "state.json")  # what `Dataset.save_to_disk` writes beside its Arrow files
HF_SPLITS = "dataset_dict.json"  # a DatasetDict: {"splits": [...]}, one Dataset folder per split


# --- resolving paths --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Source:
    path: str  # absolute, symlinks kept: ids must not change when a link is retargeted
    name: str  # path relative to the common input root: the `source` column and the prefix of document ids
    format: str  # text, jsonl, parquet, hf or builtin


@dataclass
class Plan:
    """What one ingestion reads: its sources, what was left out and why, and files that could not be opened."""

    sources: list[Source]
    root: str | None
    skipped: list[dict[str, str]] = field(default_factory=list)  # {"path", "reason"}: not ingested, not data
    unreadable: dict[str, str] = field(default_factory=dict)  # file path -> OS error: quarantined whole


def is_hf_folder(path: str) -> bool:
    """A `save_to_disk` folder: a Dataset (its Arrow files and markers) or a DatasetDict (one folder per split)."""
    markers = [os.path.join(path, m) for m in HF_MARKERS]
    return os.path.isfile(os.path.join(path, HF_SPLITS)) or all(os.path.isfile(m) for m in markers)


def resolve_sources(paths: Sequence[str], fmt: str | None) -> Plan:
    """Expand files, folders and globs (and `builtin`) into sources; missing paths are one UserError."""
    found: dict[str, str] = {}  # absolute path -> format, first occurrence wins
    plan = Plan(sources=[], root=None)
    missing = [p for p in paths if p != BUILTIN and not _expand(p, fmt, found, plan)]
    if missing:
        raise UserError(f"no such file or folder (or no match for the glob): {', '.join(missing)}")
    if found:
        plan.root = os.path.commonpath([os.path.dirname(p) for p in found])
    names = {p: os.path.relpath(p, plan.root).replace(os.sep, "/") for p in found}
    plan.sources = sorted((Source(p, names[p], f) for p, f in found.items()), key=lambda s: s.name)
    if BUILTIN in paths:
        plan.sources.append(Source(BUILTIN, BUILTIN, BUILTIN))
    if not plan.sources:
        raise UserError(f"nothing to ingest in {', '.join(paths)}: {len(plan.skipped)} files skipped")
    return plan


def _expand(given: str, fmt: str | None, found: dict[str, str], plan: Plan) -> bool:
    """Add what `given` names to `found`; False when it names nothing."""
    matches = sorted(glob.glob(given, recursive=True)) if re.search(r"[*?[]", given) else [given]
    matches = [os.path.abspath(m) for m in matches if os.path.lexists(m)]  # a symlink loop is quarantined
    for path in matches:
        if os.path.isdir(path) and (fmt == "hf" or is_hf_folder(path)):
            _add_hf(path, found)
        elif os.path.isdir(path):
            _walk(path, fmt, found, plan)
        else:
            file_format = fmt or EXTENSIONS.get(os.path.splitext(path)[1].lower())
            if file_format is None:
                raise UserError(f"cannot tell the format of {path} from its extension: pass --format")
            _add_file(path, file_format, found, plan)
    return bool(matches)


def _add_hf(path: str, found: dict[str, str]) -> None:
    """A Dataset folder is one source; a DatasetDict folder gives one source per split."""
    if not is_hf_folder(path):
        raise UserError(f"{path} is not a Hugging Face `datasets` folder (no {' / '.join(HF_MARKERS)})")
    if os.path.isfile(os.path.join(path, HF_SPLITS)):
        with open(os.path.join(path, HF_SPLITS)) as f:
            for split in json.load(f)["splits"]:
                found.setdefault(os.path.join(path, split), "hf")
    else:
        found.setdefault(path, "hf")


def _walk(top: str, fmt: str | None, found: dict[str, str], plan: Plan) -> None:
    """Files under a folder in sorted order (HF dataset folders as one source each); hidden entries, unknown
    extensions and symlinks to folders already walked (cycles included) are listed in `plan.skipped`."""
    visited: set[str] = set()

    def cannot_list(error: OSError) -> None:
        raise UserError(f"cannot read folder {error.filename}: {error.strerror or error}")

    for folder, dirs, files in os.walk(top, followlinks=True, onerror=cannot_list):
        real = os.path.realpath(folder)
        if real in visited:
            plan.skipped.append({"path": folder, "reason": "symlink to a folder already read"})
            dirs[:] = []
            continue
        visited.add(real)
        for name in sorted(dirs):
            path = os.path.join(folder, name)
            if name.startswith("."):
                plan.skipped.append({"path": path, "reason": "hidden"})
            elif is_hf_folder(path):
                _add_hf(path, found)
            else:
                continue
            dirs.remove(name)
        dirs.sort()
        for name in sorted(files):
            path = os.path.join(folder, name)
            file_format = fmt or EXTENSIONS.get(os.path.splitext(name)[1].lower())
            if name.startswith("."):
                plan.skipped.append({"path": path, "reason": "hidden"})
            elif file_format is None:
                plan.skipped.append({"path": path, "reason": "unknown format"})
            else:
                _add_file(path, file_format, found, plan)


def _add_file(path: str, file_format: str, found: dict[str, str], plan: Plan) -> None:
    try:
        with open(path, "rb"):
            pass
    except OSError as e:  # permissions, symlink loops (ELOOP), a folder that vanished
        plan.unreadable[path] = e.strerror or str(e)
    found.setdefault(path, file_format)


# --- work units: what one Ray task reads ------------------------------------------------------------------------
#
# Units are numbered in (source, position) order and a unit emits its documents in that order too, so
# (unit index, row in the unit's output) orders documents exactly as (source, position in it) does: the order that
# decides which of several duplicates is kept. A unit holds about `range_bytes` of input, whatever the file sizes:
# small files are packed together, large text and JSONL files cut into ranges (`data_jobs.ranges`).


@dataclass(frozen=True)
class FilesUnit:
    """Whole text or JSONL files, read and detected one by one, as one task."""

    index: int
    files: tuple[Source, ...]

    def read(self, cfg: IngestConfig, items: Items) -> None:
        for source in self.files:
            with open(source.path, "rb") as f:
                raw = f.read()
            (jsonl_items if source.format == "jsonl" else text_items)(raw, source.name, cfg, items)


@dataclass(frozen=True)
class RangeUnit:
    """Bytes `[start, end)` of a large text or JSONL file whose encoding and layout were detected on a sample
    of the whole file. `ordinal_base` and `line_base` (documents or rows, and lines, owned by the ranges before
    this one) are only known once every range is read: ingestion adds them when it writes the version."""

    index: int
    source: Source
    start: int
    end: int
    size: int
    encoding: str
    layout: Layout | None  # None for JSONL

    def read(self, cfg: IngestConfig, items: Items) -> None:
        cfg = replace(cfg, encoding=self.encoding, layout=self.layout or cfg.layout)
        rule = cut_rule(self.layout, self.encoding, cfg.max_line_bytes)
        with open(self.source.path, "rb") as f:
            a, b = owned_span(f, self.start, self.end, self.size, rule)
            f.seek(a)
            raw = f.read(b - a)
        if not raw:  # a document longer than the range: the range before owns it
            items.counts(
                self.source.name, lines_in=0, layout=self.layout or "documents", encoding=self.encoding
            )
            return
        (jsonl_items if self.source.format == "jsonl" else text_items)(raw, self.source.name, cfg, items, a)


@dataclass(frozen=True)
class RowGroupsUnit:
    """Consecutive row groups of one Parquet file, with the number of the first row of each (from the footer:
    `ray.data.read_parquet` does not expose row positions, and a row's id is `file:row`)."""

    index: int
    source: Source
    groups: tuple[tuple[int, int], ...]  # (row group, its first row)

    def read(self, cfg: IngestConfig, items: Items) -> None:
        parquet = pq.ParquetFile(self.source.path)
        for group, first in self.groups:
            texts = parquet.read_row_group(group, columns=[cfg.column]).column(cfg.column).to_pylist()
            row_items(texts, list(range(first, first + len(texts))), self.source.name, cfg, items)


@dataclass(frozen=True)
class HfRowsUnit:
    """Rows `[start, end)` of a local Hugging Face `save_to_disk` folder (memory-mapped, read by row number)."""

    index: int
    source: Source
    start: int
    end: int

    def read(self, cfg: IngestConfig, items: Items) -> None:
        import datasets

        texts = datasets.load_from_disk(self.source.path).select_columns([cfg.column])[self.start : self.end]
        row_items(texts[cfg.column], list(range(self.start, self.end)), self.source.name, cfg, items)


@dataclass(frozen=True)
class BuiltinUnit:
    """Builtin documents (normalised and split already, `data_jobs.builtin_corpus`): they only get hashed."""

    index: int
    rows: tuple[tuple[int, str, tuple[str, ...]], ...]  # (ordinal, id, sentences)

    def read(self, cfg: IngestConfig, items: Items) -> None:
        for ordinal, doc_id, sentences in self.rows:
            items.doc(BUILTIN, ordinal, list(sentences), doc_id=doc_id)
        n = len(self.rows)
        sentences = sum(len(s) for _, _, s in self.rows)
        items.counts(
            BUILTIN, lines_in=n, lines_accepted=n, documents=n, sentences=sentences, layout="sentences"
        )


@dataclass(frozen=True)
class UnreadableUnit:
    """Files that could not be opened, quarantined whole."""

    index: int
    files: tuple[tuple[Source, str], ...]  # (source, OS error)

    def read(self, cfg: IngestConfig, items: Items) -> None:
        for source, error in self.files:
            items.quarantine(source.name, "read", "unreadable", b"")
            items.counts(source.name, lines_in=0, error=error)


Unit = FilesUnit | RangeUnit | RowGroupsUnit | HfRowsUnit | BuiltinUnit | UnreadableUnit


def plan_units(plan: Plan, cfg: IngestConfig) -> list[Unit]:
    """The work units of an ingestion, numbered in (source, position) order (footers, samples and the builtin
    corpus are read here; nothing else)."""
    units: list[Unit] = []
    pack: list[Source] = []
    pack_bytes = 0

    def flush() -> None:
        nonlocal pack, pack_bytes
        if pack:
            units.append(FilesUnit(len(units), tuple(pack)))
        pack, pack_bytes = [], 0

    for source in plan.sources:
        if source.path in plan.unreadable:
            continue  # quarantined by the last unit
        if source.format in ("text", "jsonl"):
            size = os.path.getsize(source.path)
            split = _split_file(source, size, cfg) if size > cfg.range_bytes else None
            if split is None:
                if pack_bytes + size > cfg.range_bytes:
                    flush()
                pack.append(source)
                pack_bytes += size
                continue
            flush()
            encoding, layout = split
            for start, end in plan_ranges(size, cfg.range_bytes):
                units.append(RangeUnit(len(units), source, start, end, size, encoding, layout))
        else:
            flush()
            units += _row_units(source, cfg, len(units))
    flush()
    if plan.unreadable:
        names = {s.path: s for s in plan.sources}
        errors = tuple((names[p], e) for p, e in sorted(plan.unreadable.items()))
        units.append(UnreadableUnit(len(units), errors))
    return units


def _split_file(source: Source, size: int, cfg: IngestConfig) -> tuple[str, Layout | None] | None:
    """(encoding, layout) detected on a sample of a large file, or None when the file is read whole: binary or
    undecodable samples (quarantined whole, as any file), encodings whose line breaks are not single bytes
    (UTF-16/32), and `wrapped` files (one document)."""
    with open(source.path, "rb") as f:
        sample = sample_bytes(f, size)
    if cfg.encoding in ("utf-8", "auto") and looks_binary(sample):
        return None
    decoded = decode(sample, cfg.encoding)
    if isinstance(decoded, Refusal):
        return None
    text, encoding = decoded
    if source.format == "jsonl":
        layout: Layout | None = None
    else:
        layout = cfg.layout or detect_layout([normalize_counted(line)[0] for line in text.splitlines()])
    if not splittable(layout or "documents", encoding):
        return None
    # `auto` found UTF-8: ranges decode strictly (and check for binary) as a plain UTF-8 file is
    return ("utf-8" if encoding in ("utf-8", "utf_8") else encoding), layout


def _row_units(source: Source, cfg: IngestConfig, first_index: int) -> list[Unit]:
    if source.format == "parquet":
        return _parquet_units(source, cfg, first_index)
    if source.format == "hf":
        return _hf_units(source, cfg, first_index)
    return _builtin_units(cfg, first_index)


def _is_text_type(dtype: pa.DataType) -> bool:
    if pa.types.is_dictionary(dtype):
        dtype = dtype.value_type
    return pa.types.is_string(dtype) or pa.types.is_large_string(dtype) or pa.types.is_string_view(dtype)


def _check_column(path: str, schema: pa.Schema, column: str) -> None:
    if column not in schema.names:
        raise UserError(f"{path} has no column {column!r} (it has {', '.join(schema.names)}): pass --column")
    dtype = schema.field(column).type
    if not _is_text_type(dtype):
        raise UserError(f"{path}: column {column!r} has type {dtype}, not a string type: pass --column")


def _parquet_units(source: Source, cfg: IngestConfig, first_index: int) -> list[Unit]:
    """Consecutive row groups up to `range_bytes` (uncompressed) per unit."""
    try:
        meta = pq.ParquetFile(source.path).metadata
    except (OSError, pa.ArrowException) as e:
        raise UserError(f"{source.path} is not a readable Parquet file: {e}") from None
    _check_column(source.path, meta.schema.to_arrow_schema(), cfg.column)
    units: list[Unit] = []
    groups: list[tuple[int, int]] = []
    first = weight = 0
    for group in range(meta.num_row_groups):
        size = meta.row_group(group).total_byte_size
        if groups and weight + size > cfg.range_bytes:
            units.append(RowGroupsUnit(first_index + len(units), source, tuple(groups)))
            groups, weight = [], 0
        groups.append((group, first))
        first += meta.row_group(group).num_rows
        weight += size
    if groups:
        units.append(RowGroupsUnit(first_index + len(units), source, tuple(groups)))
    return units


def _hf_units(source: Source, cfg: IngestConfig, first_index: int) -> list[Unit]:
    import datasets

    try:
        loaded = datasets.load_from_disk(source.path)
    except Exception as e:  # datasets raises several types for folders it cannot read
        raise UserError(f"cannot load {source.path} with datasets.load_from_disk: {e}") from None
    _check_column(source.path, loaded.data.schema, cfg.column)
    rows = len(loaded)
    per_unit = max(1, int(cfg.range_bytes * rows / max(1, loaded.data.nbytes)))
    return [
        HfRowsUnit(first_index + i, source, start, min(rows, start + per_unit))
        for i, start in enumerate(range(0, rows, per_unit))
    ]


def _builtin_units(cfg: IngestConfig, first_index: int) -> list[Unit]:
    from data_jobs.builtin_corpus import builtin_documents, text_bytes

    units: list[Unit] = []
    rows: list[tuple[int, str, tuple[str, ...]]] = []
    weight = 0
    for ordinal, doc in enumerate(builtin_documents()):
        rows.append((ordinal, doc.id, tuple(doc.sentences)))
        weight += sum(text_bytes(s) for s in doc.sentences)
        if weight >= cfg.range_bytes:
            units.append(BuiltinUnit(first_index + len(units), tuple(rows)))
            rows, weight = [], 0
    if rows:
        units.append(BuiltinUnit(first_index + len(units), tuple(rows)))
    return units
