"""Corpus versions on disk: `ALBERT_HOME/corpora/<name>/v<k>/` with `docs-*.parquet`, `quarantine.parquet` and
`manifest.json`.

A version is visible only once its folder exists under its final name, and that folder is complete when it
appears: it is built under a temporary name and renamed in one step, with the manifest (sha256 and Parquet row
count of every file, counts, sources, parameters, parent version) written last inside it. A build killed midway
leaves only its temporary folder, which the next build removes (`albert_core.storage.build_folder`). Two
publishers racing for the same corpus both succeed: the loser of the rename takes the next number. Ingestion
also holds `corpus_lock` from reading the latest version to publishing, so each version's parent is the one
before it.
"""

from __future__ import annotations

import contextlib
import os
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from albert_core.errors import UserError
from albert_core.storage import (
    build_folder,
    exclusive_lock,
    file_hashes,
    read_json,
    validate_name,
    verify_hashes,
    write_json,
)

# One row per document. `sentences` keeps the segment units SOP is built from (one sentence each);
# `content_hash` is the sha256 of the normalised sentences joined by "\n", the key of exact deduplication.
DOCS_SCHEMA = pa.schema(
    [
        ("id", pa.string()),  # stable: source path relative to the input root + position in it
        ("source", pa.string()),
        ("sentences", pa.list_(pa.string())),
        ("content_hash", pa.string()),
    ]
)
# One row per quarantined item: what it was, where it came from, why it was refused, in which step.
QUARANTINE_SCHEMA = pa.schema(
    [
        ("source", pa.string()),
        ("line", pa.int64()),  # 1-based first line, or -1 when the item is a whole file or a row
        ("offset", pa.int64()),  # byte offset in the source (for encoding errors, where decoding failed)
        ("step", pa.string()),
        ("reason", pa.string()),
        ("raw", pa.binary()),  # the original bytes, truncated to RAW_LIMIT
    ]
)
RAW_LIMIT = 64 * 1024
_VERSION = re.compile(r"^v(\d+)$")
# Another ingestion of the same corpus writes and publishes before this one may (the whole second pass).
LOCK_TIMEOUT_S = 3600.0


@dataclass(frozen=True)
class CorpusVersion:
    name: str
    version: int
    path: Path

    @property
    def id(self) -> str:
        return f"{self.name}/v{self.version}"

    @property
    def manifest(self) -> dict[str, Any]:
        return read_json(self.path / "manifest.json")

    def doc_files(self) -> list[Path]:
        """Every document of this version: a version stores only what was new when it was ingested, so its
        snapshot is its own files plus those of its parents."""
        files = sorted(self.path.glob("docs-*.parquet"))
        parent = self.manifest.get("parent")
        if parent:
            number = int(parent.rsplit("/v", 1)[1])
            files = CorpusVersion(self.name, number, self.path.parent / f"v{number}").doc_files() + files
        return files

    def verify(self) -> None:
        verify_hashes(self.path, self.manifest["files"])


def corpus_root(home: Path, name: str) -> Path:
    return home / "corpora" / validate_name(name, "corpus name")


@contextlib.contextmanager
def corpus_lock(home: Path, name: str) -> Iterator[None]:
    """Exclusive right to choose the next version of corpus `name` (`<home>/locks/corpus-<name>.lock`)."""
    path = home / "locks" / f"corpus-{validate_name(name, 'corpus name')}.lock"
    with exclusive_lock(path, f"another ingestion of corpus {name!r}", LOCK_TIMEOUT_S):
        yield


def parquet_rows(folder: Path) -> dict[str, int]:
    """Row count of every Parquet file under `folder` (from the footers), keyed like `file_hashes`."""
    return {
        p.relative_to(folder).as_posix(): pq.ParquetFile(p).metadata.num_rows
        for p in sorted(folder.rglob("*.parquet"))
    }


def list_versions(home: Path, name: str) -> list[CorpusVersion]:
    """Published versions, oldest first (a folder without a manifest is not a version)."""
    root = corpus_root(home, name)
    found = []
    if root.is_dir():
        for entry in root.iterdir():
            m = _VERSION.match(entry.name)
            if m and (entry / "manifest.json").is_file():
                found.append(CorpusVersion(name, int(m.group(1)), entry))
    return sorted(found, key=lambda v: v.version)


def resolve_version(home: Path, name: str, version: int | None = None) -> CorpusVersion:
    """The named version, or the latest one; a clear error when there is none."""
    versions = list_versions(home, name)
    if not versions:
        raise UserError(
            f"corpus {name!r} has no versions under {home / 'corpora'}; run `albert ingest` first"
        )
    if version is None:
        return versions[-1]
    for v in versions:
        if v.version == version:
            return v
    raise UserError(
        f"corpus {name!r} has no version {version}; it has {', '.join(f'v{v.version}' for v in versions)}"
    )


def publish_version(
    home: Path, name: str, build: Callable[[Path], dict[str, Any]], parent: CorpusVersion | None = None
) -> CorpusVersion:
    """Build a new version in a temporary folder and publish it under the next free `v<k>`.

    `build(folder)` writes the data files and returns the manifest body; this function adds the file hashes,
    Parquet row counts and the parent, writes the manifest last, and renames the folder into place.
    """
    root = corpus_root(home, name)
    with build_folder(root, ".build-") as tmp:
        body = build(tmp)
        manifest = {
            "corpus": name,
            "parent": parent.id if parent else None,
            **body,
            "files": file_hashes(tmp),
            "rows": parquet_rows(tmp),
        }
        while True:
            taken = [int(m.group(1)) for e in root.iterdir() if (m := _VERSION.match(e.name))]
            number = max(taken, default=0) + 1
            target = root / f"v{number}"
            manifest["version"] = number
            write_json(tmp / "manifest.json", manifest)
            try:
                os.rename(tmp, target)  # fails if another publisher took this number first
                return CorpusVersion(name, number, target)
            except OSError:
                if not target.exists():
                    raise
