"""Which inputs an ingestion reads: files, folders, globs and `builtin` resolved to sources with their formats,
and what is skipped with its reason. No Ray: `test_ingest.py` runs whole ingestions."""

from pathlib import Path

import pytest

from albert_core.errors import UserError
from data_jobs.sources import resolve_sources


def test_resolve_sources(tmp_path: Path) -> None:
    (tmp_path / "sub").mkdir()
    (tmp_path / "a.txt").write_text("a")
    (tmp_path / "sub" / "b.jsonl").write_text("{}")
    (tmp_path / ".hidden.txt").write_text("h")
    (tmp_path / "notes.md").write_text("m")
    (tmp_path / "loop.txt").symlink_to(tmp_path / "loop.txt")
    (tmp_path / "sub" / "up").symlink_to(tmp_path)  # a folder cycle
    plan = resolve_sources([str(tmp_path)], None)
    assert [(s.name, s.format) for s in plan.sources] == [
        ("a.txt", "text"),
        ("loop.txt", "text"),
        ("sub/b.jsonl", "jsonl"),
    ]
    assert set(plan.unreadable) == {str(tmp_path / "loop.txt")}
    reasons = {Path(s["path"]).name: s["reason"] for s in plan.skipped}
    assert reasons == {
        ".hidden.txt": "hidden",
        "notes.md": "unknown format",
        "up": "symlink to a folder already read",
    }
    assert [s.name for s in resolve_sources([str(tmp_path / "*.txt")], None).sources] == ["a.txt", "loop.txt"]
    with pytest.raises(UserError, match=r"no match for the glob\): .*nope\*\.txt, .*missing\.txt"):
        resolve_sources(
            [str(tmp_path / "nope*.txt"), str(tmp_path / "a.txt"), str(tmp_path / "missing.txt")], None
        )
    with pytest.raises(UserError, match="notes.md from its extension: pass --format"):
        resolve_sources([str(tmp_path / "notes.md")], None)
