"""`albert verify`: re-check a published corpus, shard set or tokenizer against its manifest.

Every file the manifest lists is hashed again (sha256) and, for Parquet, its footer read again: the row count
must be the recorded one (for shards the byte size and the row schema too), and a truncated file, whose footer
pyarrow cannot find, is reported as truncated rather than only as a changed hash. Files in the folder that the
manifest does not list are reported too. Nothing is repaired: a problem means rebuilding what it names.

    from data_jobs.verify import verify_corpus
    result = verify_corpus(home, "demo")   # every version; version=2 for one
    result.ok, result.problems             # [Problem(path, reason), ...]
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from albert_core.errors import UserError
from albert_core.storage import read_json, sha256_file
from data_jobs.corpus import list_versions, resolve_version

MANIFEST = "manifest.json"
SHOWN_PROBLEMS = 3  # in the one-line failure message; the result lists all of them


@dataclass(frozen=True)
class Problem:
    path: str  # the file (or folder) at fault
    reason: str


@dataclass(frozen=True)
class Expected:
    """What a manifest records about one file (None: not recorded)."""

    sha256: str
    rows: int | None = None
    bytes: int | None = None


@dataclass
class Verification:
    target: str  # "corpus demo (v1, v2)", "shards 0123456789abcdef", "tokenizer demo"
    path: str
    files: int = 0  # files checked
    rows: int = 0  # Parquet rows counted from the footers
    bytes: int = 0
    problems: list[Problem] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems

    def failure(self) -> str:
        """One line naming the bad files and why (the first few of them)."""
        shown = "; ".join(f"{p.path}: {p.reason}" for p in self.problems[:SHOWN_PROBLEMS])
        more = len(self.problems) - SHOWN_PROBLEMS
        return f"{self.target} failed verification: {shown}" + (f"; and {more} more" if more > 0 else "")

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "ok": self.ok}


def _check_parquet(path: Path, expected: Expected, schema: pa.Schema | None) -> tuple[int, str | None]:
    """(rows in the footer, the problem or None)."""
    try:
        meta = pq.ParquetFile(path).metadata
    except (OSError, pa.ArrowException) as e:
        return 0, f"truncated or not a Parquet file ({e})"
    if expected.rows is not None and meta.num_rows != expected.rows:
        return meta.num_rows, f"{meta.num_rows} rows, the manifest records {expected.rows}"
    if schema is not None and not meta.schema.to_arrow_schema().equals(schema):
        return meta.num_rows, "its columns are not the shard schema the manifest's parameters give"
    return meta.num_rows, None


def _check_file(path: Path, expected: Expected, schema: pa.Schema | None) -> tuple[int, str | None]:
    """(Parquet rows, the first problem or None): missing, then unreadable, wrong size, bad footer or row count,
    and last a sha256 that differs although everything else looks right."""
    if not path.is_file():
        return 0, "missing"
    size = path.stat().st_size
    if expected.bytes is not None and size != expected.bytes:
        problem = f"{size} bytes, the manifest records {expected.bytes}"
        if path.suffix == ".parquet" and size < expected.bytes:
            problem += " (truncated)"
        return 0, problem
    rows = 0
    if path.suffix == ".parquet":
        rows, problem = _check_parquet(path, expected, schema)
        if problem:
            return rows, problem
    try:
        digest = sha256_file(path)
    except OSError as e:
        return rows, f"cannot be read ({e.strerror or e})"
    if digest != expected.sha256:
        return rows, "sha256 differs from the manifest: the file was changed or corrupted"
    return rows, None


def _check_folder(
    result: Verification, folder: Path, expected: dict[str, Expected], schema: pa.Schema | None = None
) -> None:
    for name, want in sorted(expected.items()):
        path = folder / name
        rows, problem = _check_file(path, want, schema)
        result.files += 1
        result.rows += rows
        result.bytes += path.stat().st_size if path.is_file() else 0
        if problem:
            result.problems.append(Problem(str(path), problem))
    for path in sorted(folder.rglob("*")):
        name = path.relative_to(folder).as_posix()
        if path.is_file() and name != MANIFEST and name not in expected:
            result.problems.append(Problem(str(path), "not listed in the manifest"))


def _table(manifest: Any, key: str, folder: Path, result: Verification) -> dict[str, Any] | None:
    """manifest[key] when it is a table; else a problem on the manifest (a hand-edited or foreign file)."""
    table = manifest.get(key) if isinstance(manifest, dict) else None
    if not isinstance(table, dict):
        result.problems.append(Problem(str(folder / MANIFEST), f"has no `{key}` table"))
        return None
    return table


def verify_corpus(home: Path, name: str, version: int | None = None) -> Verification:
    """Every version of corpus `name` (or only `version`): each file's sha256 and Parquet row count."""
    versions = list_versions(home, name) if version is None else [resolve_version(home, name, version)]
    if not versions:
        resolve_version(home, name)  # raises the usual "no versions: run `albert ingest`"
    label = ", ".join(f"v{v.version}" for v in versions)
    result = Verification(f"corpus {name} ({label})", str(versions[0].path.parent))
    for v in versions:
        manifest = read_json(v.path / MANIFEST)
        files = _table(manifest, "files", v.path, result)
        if files is None:
            continue
        rows = manifest.get("rows") or {}
        expected = {f: Expected(str(digest), rows.get(f)) for f, digest in files.items()}
        _check_folder(result, v.path, expected)
    return result


def verify_shards(home: Path, shard_id: str) -> Verification:
    """A shard set: each file's sha256, byte size, row count and schema, as its manifest records them."""
    from data_jobs.shards import ShardsConfig, load_manifest, row_schema, shards_dir  # imports Ray: only here

    manifest = load_manifest(home, shard_id)
    folder = shards_dir(home, shard_id)
    result = Verification(f"shards {shard_id}", str(folder))
    files = _table(manifest, "files", folder, result)
    if files is None:
        return result
    try:
        schema = row_schema(ShardsConfig(**manifest["parameters"]))
    except (KeyError, TypeError, UserError) as e:
        result.problems.append(
            Problem(str(folder / MANIFEST), f"its parameters are not a shards config ({e})")
        )
        schema = None
    try:
        expected = {f: Expected(str(e["sha256"]), int(e["rows"]), int(e["bytes"])) for f, e in files.items()}
    except (KeyError, TypeError, ValueError):
        result.problems.append(
            Problem(str(folder / MANIFEST), "its `files` entries lack sha256, rows or bytes")
        )
        return result
    _check_folder(result, folder, expected, schema)
    return result


def verify_tokenizer(home: Path, name: str) -> Verification:
    """A trained tokenizer: each file's sha256 as its manifest records it."""
    from data_jobs.tokenizer_job import tokenizer_dir  # imports Ray: only here

    folder = tokenizer_dir(home, name)
    if not (folder / MANIFEST).is_file():
        raise UserError(f"tokenizer {name!r} not found under {home / 'tokenizers'}")
    result = Verification(f"tokenizer {name}", str(folder))
    files = _table(read_json(folder / MANIFEST), "files", folder, result)
    if files is not None:
        _check_folder(result, folder, {f: Expected(str(digest)) for f, digest in files.items()})
    return result
