"""Where things live (ALBERT_HOME) and how they are written: names that cannot escape the home, atomic
folders that become visible only when complete, and sha256 of every file others will read."""

from __future__ import annotations

import contextlib
import fcntl
import glob
import hashlib
import json
import os
import re
import shutil
import socket
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from albert_core.errors import UserError

DEFAULT_HOME = ".albert"
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,127}")  # fullmatch only: with `^…$`, "x\n" passes


def albert_home(override: str | Path | None = None) -> Path:
    """The storage root: `override`, else $ALBERT_HOME, else ./.albert (absolute, not created)."""
    return Path(override or os.environ.get("ALBERT_HOME") or DEFAULT_HOME).expanduser().absolute()


def validate_name(name: str, kind: str = "name") -> str:
    """Corpus, tokenizer, model and run names: letters, digits and `-_.`, not starting with a dot, so a name
    can never be a path (`../x`, `/etc`, NUL) that escapes ALBERT_HOME."""
    if not isinstance(name, str) or not _NAME.fullmatch(name):
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
def exclusive_lock(path: str | Path, what: str, timeout_s: float) -> Iterator[None]:
    """Hold an exclusive `fcntl.flock` on the file `path` (created if missing, never removed: unlinking a lock
    file races with processes waiting on it). The kernel releases it when the process dies, even by SIGKILL, so
    a lock is never stale. Waits up to `timeout_s`, then a UserError naming `what` and the holder."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    deadline = time.monotonic() + timeout_s
    with open(path, "a+") as f:
        while True:
            try:
                fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() > deadline:
                    f.seek(0)
                    holder = f.read().strip() or "holder unknown"
                    raise UserError(
                        f"{what} has held {path} for over {timeout_s:g} s ({holder}); try again later"
                    ) from None
                time.sleep(0.1)
        try:
            f.seek(0)
            f.truncate()
            f.write(
                f"pid {os.getpid()} on {socket.gethostname()} since {time.strftime('%Y-%m-%dT%H:%M:%S')}\n"
            )
            f.flush()
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def _lock_folder(path: Path, flags: int = fcntl.LOCK_EX) -> int:
    """A descriptor of folder `path` holding an flock on it (BlockingIOError under LOCK_NB if held elsewhere)."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        fcntl.flock(fd, flags)
    except BaseException:
        os.close(fd)
        raise
    return fd


def _abandoned(folder: Path) -> bool:
    """No process holds `folder`'s lock: the build that made it was killed."""
    try:
        os.close(_lock_folder(folder, fcntl.LOCK_EX | fcntl.LOCK_NB))
    except BlockingIOError:
        return False
    return True


@contextlib.contextmanager
def build_folder(parent: str | Path, prefix: str) -> Iterator[Path]:
    """A new empty folder `parent/<prefix>XXXX.tmp`, locked (flock on its descriptor) while it is in use and
    removed afterwards unless the caller renamed it.

    Folders with the same prefix that no process holds are what killed builds left behind: they are removed
    first. Sweeping and creating happen under a flock on `parent` itself, so a new folder is never swept in the
    moment between its creation and its lock."""
    parent = Path(parent)
    parent.mkdir(parents=True, exist_ok=True)
    parent_fd = _lock_folder(parent)
    try:
        for stale in parent.glob(f"{glob.escape(prefix)}*.tmp"):
            if stale.is_dir() and _abandoned(stale):
                shutil.rmtree(stale, ignore_errors=True)
        tmp = Path(tempfile.mkdtemp(dir=parent, prefix=prefix, suffix=".tmp"))
        fd = _lock_folder(tmp)
    finally:
        os.close(parent_fd)
    try:
        # mkdtemp makes it private (0700); what we publish is read by other users' processes
        os.chmod(tmp, 0o755)
        yield tmp
    finally:
        if tmp.exists():
            shutil.rmtree(tmp)
        os.close(fd)


@contextlib.contextmanager
def atomic_directory(target: str | Path, replace: bool = False) -> Iterator[Path]:
    """Yield an empty temporary folder beside `target` (`build_folder`); on success rename it to `target` in
    one step.

    Readers never see a half-written folder, and a later build of the same target removes what a killed one
    left. With `replace`, an existing target is swapped out and removed; without it, an existing target is an
    error (a version is never overwritten)."""
    target = Path(target)
    with build_folder(target.parent, f".{target.name}.") as tmp:
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
