"""Ingestion sources: from the paths a user gives to one Ray Data stream of items (`layouts.ITEM_SCHEMA`).

Text and JSONL files are read whole by `ray.data.read_binary_files` (raw bytes, so a bad file or row can be
quarantined with its original bytes). Parquet files are read by row group in Ray tasks, with the number of each
group's first row taken from the footer: `ray.data.read_parquet` does not expose row positions, and without them
a row's id (`file:row`) would depend on the order Ray returns blocks in. A local Hugging Face `datasets` folder
goes through `datasets.load_from_disk` and `ray.data.from_huggingface` (a row-number column travels with the
rows); `builtin` is the stdlib-docstring demo corpus. The per-file work is in `data_jobs.layouts`.
"""

from __future__ import annotations

import glob
import json
import os
import re
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import pyarrow as pa
import pyarrow.parquet as pq
import ray

from albert_core.errors import UserError
from data_jobs.layouts import Items, jsonl_items, row_items, text_items

if TYPE_CHECKING:
    from data_jobs.ingest import IngestConfig

BUILTIN = "builtin"
EXTENSIONS = {"": "text", ".txt": "text", ".text": "text", ".jsonl": "jsonl", ".json": "jsonl"}
EXTENSIONS[".parquet"] = "parquet"
HF_MARKERS = ("dataset_info.json", "state.json")  # what `Dataset.save_to_disk` writes beside its Arrow files
HF_SPLITS = "dataset_dict.json"  # a DatasetDict: {"splits": [...]}, one Dataset folder per split
HF_ROW = "__albert_row"


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


# --- Ray steps --------------------------------------------------------------------------------------------------


def file_items(batch: pa.Table, sources: dict[str, Source], cfg: IngestConfig) -> pa.Table:
    """Ray `map_batches` step over `read_binary_files` rows (batch_size=1: one whole file per call)."""
    items = Items()
    for path, raw in zip(batch["path"].to_pylist(), batch["bytes"].to_pylist(), strict=True):
        source = sources[path]
        (jsonl_items if source.format == "jsonl" else text_items)(raw, source.name, cfg, items)
    return items.table()


def parquet_items(batch: pa.Table, column: str, cfg: IngestConfig) -> pa.Table:
    """Ray `map_batches` step over row-group units (batch_size=1): read the text column of one row group."""
    (unit,) = batch.to_pylist()
    table = pq.ParquetFile(unit["path"]).read_row_group(unit["row_group"], columns=[column])
    rows = list(range(unit["first_row"], unit["first_row"] + table.num_rows))
    return row_items(table.column(column).to_pylist(), rows, unit["source"], cfg)


def hf_items(batch: pa.Table, column: str, source: str, cfg: IngestConfig) -> pa.Table:
    return row_items(batch.column(column).to_pylist(), batch.column(HF_ROW).to_pylist(), source, cfg)


def builtin_items(batch: pa.Table) -> pa.Table:
    """Builtin documents are normalised and split already (data_jobs.builtin_corpus); they only get hashed."""
    items = Items()
    for row in batch.to_pylist():
        items.doc(BUILTIN, row["ordinal"], row["sentences"], doc_id=row["id"])
    n = batch.num_rows
    sentences = sum(len(s) for s in batch.column("sentences").to_pylist())
    items.counts(BUILTIN, lines_in=n, lines_accepted=n, documents=n, sentences=sentences, layout="sentences")
    return items.table()


# --- Ray datasets -----------------------------------------------------------------------------------------------


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


def _parquet_units(sources: list[Source], column: str) -> list[dict[str, Any]]:
    """One work unit per row group, with the number of its first row (footers only are read here)."""
    units = []
    for source in sources:
        try:
            meta = pq.ParquetFile(source.path).metadata
        except (OSError, pa.ArrowException) as e:
            raise UserError(f"{source.path} is not a readable Parquet file: {e}") from None
        _check_column(source.path, meta.schema.to_arrow_schema(), column)
        first = 0
        for group in range(meta.num_row_groups):
            units.append({"path": source.path, "source": source.name, "row_group": group, "first_row": first})
            first += meta.row_group(group).num_rows
    return units


def _hf_dataset(source: Source, cfg: IngestConfig) -> ray.data.Dataset:
    import datasets
    import numpy as np

    try:
        loaded = datasets.load_from_disk(source.path)
    except Exception as e:  # datasets raises several types for folders it cannot read
        raise UserError(f"cannot load {source.path} with datasets.load_from_disk: {e}") from None
    _check_column(source.path, loaded.data.schema, cfg.column)
    # Row numbers travel with the rows, so ids stay `name:row` whatever order Ray processes blocks in.
    loaded = loaded.select_columns([cfg.column]).add_column(HF_ROW, np.arange(len(loaded)))
    return ray.data.from_huggingface(loaded).map_batches(
        hf_items, batch_format="pyarrow", fn_kwargs={"column": cfg.column, "source": source.name, "cfg": cfg}
    )


def _builtin_dataset() -> ray.data.Dataset:
    from data_jobs.builtin_corpus import builtin_documents

    rows = [
        {"id": d.id, "ordinal": i, "sentences": list(d.sentences)} for i, d in enumerate(builtin_documents())
    ]
    # A few blocks, not Ray's default of one per ~2 items: the map is only hashing, and 200 tiny tasks cost ~10 s
    # of scheduling on 2 cores (measured) for 1.6 MB of text.
    return ray.data.from_items(rows, override_num_blocks=4).map_batches(builtin_items, batch_format="pyarrow")


def _unreadable_items(plan: Plan) -> pa.Table:
    """Files that could not be opened, quarantined whole (made on the driver: Ray cannot read them either)."""
    items = Items()
    names = {s.path: s.name for s in plan.sources}
    for path, error in sorted(plan.unreadable.items()):
        items.quarantine(names[path], "read", "unreadable", b"")
        items.counts(names[path], lines_in=0, error=error)
    return items.table()


def read_items(plan: Plan, cfg: IngestConfig) -> ray.data.Dataset:
    """One Ray dataset of `ITEM_SCHEMA` rows for every source of the plan (call `ensure_ray` first)."""
    by_format: dict[str, list[Source]] = defaultdict(list)
    for source in plan.sources:
        if source.path not in plan.unreadable:
            by_format[source.format].append(source)
    parts: list[ray.data.Dataset] = []
    files = by_format["text"] + by_format["jsonl"]
    if files:
        read = ray.data.read_binary_files([s.path for s in files], include_paths=True)
        kwargs = {"sources": {s.path: s for s in files}, "cfg": cfg}
        parts.append(read.map_batches(file_items, batch_size=1, batch_format="pyarrow", fn_kwargs=kwargs))
    if units := _parquet_units(by_format["parquet"], cfg.column):
        kwargs = {"column": cfg.column, "cfg": cfg}
        parts.append(
            ray.data.from_items(units).map_batches(
                parquet_items, batch_size=1, batch_format="pyarrow", fn_kwargs=kwargs
            )
        )
    parts += [_hf_dataset(source, cfg) for source in by_format["hf"]]
    if by_format[BUILTIN]:
        parts.append(_builtin_dataset())
    if plan.unreadable:
        parts.append(ray.data.from_arrow(_unreadable_items(plan)))
    if not parts:  # e.g. only empty Parquet files: still one (empty) stream
        parts.append(ray.data.from_arrow(Items().table()))
    items = parts[0].union(*parts[1:]) if len(parts) > 1 else parts[0]
    # Blocks come out in input order, so the files a version is written to are the same on every run.
    items.context.execution_options.preserve_order = True
    return items
