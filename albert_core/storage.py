"""Where things live (ALBERT_HOME) and how they are written: names that cannot escape the home, atomic
folders that become visible only when complete, and sha256 of every file others will read."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from albert_core.errors import UserError

DEFAULT_HOME = ".albert"
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$")


def albert_home(override: str | Path | None = None) -> Path:
    """The storage root: `override`, else $ALBERT_HOME, else ./.albert (absolute, not created)."""
    return Path(override or os.environ.get("ALBERT_HOME") or DEFAULT_HOME).expanduser().absolute()


def validate_name(name: str, kind: str = "name") -> str:
    """Corpus, tokenizer, model and run names: letters, digits and `-_.`, not starting with a dot, so a name
    can never be a path (`../x`, `/etc`, NUL) that escapes ALBERT_HOME."""
    if not isinstance(name, str) or not _NAME.match(name) or name in (".", ".."):
        raise UserError(
            f"invalid {kind} {name!r}: use 1-128 letters, digits, '-', '_' or '.', not starting with '.'"
        )
    return name


def sha256_file(path: str | Path, chunk: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def write_bytes(path: str | Path, data: bytes) -> None:
    """Write a file atomically: a temporary file in the same folder, fsync, then rename over `path`."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        os.fchmod(fd, 0o644)  # mkstemp's files are private (0600)
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def write_json(path: str | Path, data: Any) -> None:
    write_bytes(path, (json.dumps(data, indent=2, sort_keys=True, ensure_ascii=False) + "\n").encode())


def read_json(path: str | Path) -> Any:
    try:
        return json.loads(Path(path).read_text())
    except FileNotFoundError:
        raise UserError(f"{path} does not exist") from None
    except json.JSONDecodeError as e:
        raise UserError(f"{path} is not valid JSON: {e}") from None


@contextlib.contextmanager
def atomic_directory(target: str | Path, replace: bool = False) -> Iterator[Path]:
    """Yield an empty temporary folder beside `target`; on success rename it to `target` in one step.

    Readers never see a half-written folder. With `replace`, an existing target is swapped out and removed;
    without it, an existing target is an error (a version is never overwritten)."""
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=target.parent, prefix=f".{target.name}.", suffix=".tmp"))
    os.chmod(tmp, 0o755)  # mkdtemp makes it private (0700); what we publish is read by other users' processes
    try:
        yield tmp
        if target.exists():
            if not replace:
                raise UserError(f"{target} already exists")
            old = target.with_name(f".{target.name}.old.{os.getpid()}")
            os.replace(target, old)
            os.replace(tmp, target)
            shutil.rmtree(old)
        else:
            os.replace(tmp, target)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp)


def file_hashes(folder: str | Path) -> dict[str, str]:
    """sha256 of every file under `folder`, keyed by relative POSIX path (manifests themselves excluded)."""
    folder = Path(folder)
    return {
        p.relative_to(folder).as_posix(): sha256_file(p)
        for p in sorted(folder.rglob("*"))
        if p.is_file() and p.name != "manifest.json"
    }


def verify_hashes(folder: str | Path, expected: dict[str, str]) -> None:
    """Raise UserError naming the first file whose content differs from what was recorded."""
    folder = Path(folder)
    for name, digest in expected.items():
        path = folder / name
        if not path.is_file():
            raise UserError(f"{path} is missing (recorded in {folder / 'manifest.json'})")
        if sha256_file(path) != digest:
            raise UserError(f"{path} does not match its recorded sha256: the file was changed or corrupted")
