"""Atomic files and folders, build folders that killed processes leave behind, and locks across processes."""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from albert_core.errors import UserError
from albert_core.storage import (
    atomic_directory,
    build_folder,
    exclusive_lock,
    read_json,
    validate_name,
    write_json,
)

REPO = Path(__file__).resolve().parents[2]


def _holder(code: str) -> subprocess.Popen:
    """A separate process running `code` (with albert_core importable) that prints `held` once it holds."""
    proc = subprocess.Popen([sys.executable, "-c", code], cwd=REPO, stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "held"
    return proc


def test_write_json_is_atomic_and_readable_by_others(tmp_path: Path) -> None:
    path = tmp_path / "manifest.json"
    write_json(path, {"b": 1, "a": [1, 2]})
    write_json(path, {"b": 2})
    assert read_json(path) == {"b": 2}
    assert [p.name for p in tmp_path.iterdir()] == ["manifest.json"]  # no temporary file left
    assert path.stat().st_mode & 0o777 == 0o644
    path.write_text("{broken")
    with pytest.raises(UserError, match="is not valid JSON"):
        read_json(path)
    with pytest.raises(UserError, match="does not exist"):
        read_json(tmp_path / "missing.json")


def test_atomic_directory_publishes_whole_or_nothing(tmp_path: Path) -> None:
    target = tmp_path / "v1"
    with pytest.raises(RuntimeError), atomic_directory(target) as tmp:
        (tmp / "half.txt").write_text("half")
        raise RuntimeError("killed mid-write")
    assert list(tmp_path.iterdir()) == []  # neither the target nor the temporary folder

    with atomic_directory(target) as tmp:
        (tmp / "a.txt").write_text("1")
        assert not target.exists()  # readers see nothing until the rename
    assert (target / "a.txt").read_text() == "1" and target.stat().st_mode & 0o777 == 0o755

    with pytest.raises(UserError, match="already exists"), atomic_directory(target) as tmp:
        (tmp / "a.txt").write_text("2")
    assert (target / "a.txt").read_text() == "1"  # a version is never overwritten
    with atomic_directory(target, replace=True) as tmp:
        (tmp / "b.txt").write_text("2")
    assert sorted(p.name for p in target.iterdir()) == ["b.txt"]
    assert [p.name for p in tmp_path.iterdir()] == ["v1"]


def test_build_folders_of_killed_processes_are_swept_and_live_ones_kept(tmp_path: Path) -> None:
    abandoned = tmp_path / ".v2.dead.tmp"
    abandoned.mkdir()
    (abandoned / "part").write_text("left by a killed build")
    live = _holder(
        "import sys, time\n"
        "from albert_core.storage import build_folder\n"
        f"with build_folder({str(tmp_path)!r}, '.v2.') as tmp:\n"
        "    print('held', flush=True); print(tmp, flush=True); time.sleep(60)\n"
    )
    try:
        held = Path(live.stdout.readline().strip())
        with build_folder(tmp_path, ".v2.") as mine:
            assert not abandoned.exists(), "a folder no process holds is swept"
            assert held.is_dir(), "a folder a live process holds is kept"
            assert mine.is_dir() and mine != held
        assert not mine.exists()  # removed after use when not renamed
    finally:
        live.send_signal(signal.SIGKILL)
        live.wait()
    with build_folder(tmp_path, ".v2.") as _:
        assert not held.exists(), "once its process is killed, its folder is swept"


def test_exclusive_lock_waits_names_the_holder_and_dies_with_it(tmp_path: Path) -> None:
    lock = tmp_path / "locks" / "promote.lock"
    holder = _holder(
        "import time\n"
        "from albert_core.storage import exclusive_lock\n"
        f"with exclusive_lock({str(lock)!r}, 'a promotion', 5):\n"
        "    print('held', flush=True); time.sleep(60)\n"
    )
    try:
        started = time.monotonic()
        with (
            pytest.raises(UserError, match=rf"a promotion has held .* \(pid {holder.pid} on "),
            exclusive_lock(lock, "a promotion", timeout_s=0.5),
        ):
            pass
        assert 0.5 <= time.monotonic() - started < 5
    finally:
        os.kill(holder.pid, signal.SIGKILL)  # the kernel releases an flock with its process
        holder.wait()
    with exclusive_lock(lock, "a promotion", timeout_s=5):
        assert f"pid {os.getpid()}" in lock.read_text()
    assert lock.exists()  # never unlinked: that would race with waiters


@pytest.mark.parametrize("name", ["../x", "/etc", ".hidden", "a/b", "", "x" * 129, "nul\x00"])
def test_names_can_never_be_paths(name: str) -> None:
    with pytest.raises(UserError, match="invalid corpus name"):
        validate_name(name, "corpus name")
    assert validate_name("wiki-2.v_1", "corpus name") == "wiki-2.v_1"
