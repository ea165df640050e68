"""Faults on the data side, with the real console script in its own process: ingestion and the shards build
frozen and SIGKILLed in the middle of writing leave nothing visible and do not stop the next run; `albert verify`
finds a flipped byte and a truncated file; two ingestions of one corpus at once give two valid versions."""

import json
import os
from collections.abc import Callable
from pathlib import Path

import pytest

from albert_core.errors import UserError
from data_jobs.corpus import list_versions, resolve_version
from data_jobs.ingest import ingest
from data_jobs.shards import ShardsConfig, build_shards, load_manifest, planned_shard_id
from data_jobs.verify import verify_corpus, verify_shards
from flows.cli import main
from tests.data_jobs.conftest import Killable, SmallShards, run_albert


def first_file_in(pattern_root: Path, pattern: str) -> Callable[[], Path | None]:
    """A poll for a temporary build folder (`pattern` under `pattern_root`) that already holds a file."""

    def found() -> Path | None:
        for folder in pattern_root.glob(pattern):
            try:
                if any(p.is_file() for p in folder.rglob("*")):
                    return folder
            except FileNotFoundError:  # renamed into place meanwhile
                continue
        return None

    return found


def damage(corrupt: Path, truncate: Path) -> None:
    """Flip one byte a third of the way into `corrupt`; cut `truncate` to half its size."""
    data = bytearray(corrupt.read_bytes())
    data[len(data) // 3] ^= 0xFF
    corrupt.write_bytes(bytes(data))
    os.truncate(truncate, truncate.stat().st_size // 2)


def assert_verify_fails_naming(args: list[str], home: Path, files: list[Path]) -> None:
    """`albert verify ...` exits 1 with one line on stderr that names every damaged file, and no traceback."""
    result = run_albert("verify", *args, home=home)
    assert result.returncode == 1, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("albert: error: ") and "Traceback" not in result.stderr
    for path in files:
        assert str(path) in lines[0]


@pytest.mark.slow
@pytest.mark.usefixtures("runs_cli")
def test_killed_ingestion_publishes_nothing_and_the_next_run_completes(
    albert_home: Path, corpora: Path, killable: Callable[..., Killable], capsys: pytest.CaptureFixture
) -> None:
    inputs = [
        str(corpora / "gutenberg" / "carroll-alice.txt"),
        str(corpora / "gutenberg" / "chesterton-thursday.txt"),
    ]
    root = albert_home / "corpora" / "books"
    run = killable("ingest", *inputs, "--corpus", "books", home=albert_home)
    build = run.freeze_when(first_file_in(root, ".build-*.tmp"))
    # Frozen mid-write: the build folder holds data files, no version is published.
    assert any(build.glob("*.parquet")) and list_versions(albert_home, "books") == []
    run.kill()
    assert run.proc.returncode == -9
    assert list_versions(albert_home, "books") == [] and build.is_dir()  # a leftover, invisible
    with pytest.raises(UserError, match="has no versions"):
        resolve_version(albert_home, "books")

    summary = ingest(inputs, "books", home=albert_home)
    assert summary["version"] == 1 and summary["documents"] == 2
    assert not build.exists() and [p.name for p in root.iterdir()] == ["v1"]  # the leftover was swept
    result = verify_corpus(albert_home, "books")
    assert (
        result.ok
        and result.files == 2
        and result.rows == summary["documents"] + summary["quarantined"]["total"]
    )

    docs, quarantine = root / "v1" / "docs-00000.parquet", root / "v1" / "quarantine.parquet"
    damage(corrupt=docs, truncate=quarantine)
    assert_verify_fails_naming(["corpus", "books"], albert_home, [docs, quarantine])
    assert main(["verify", "corpus", "books", "--version", "1", "--json"]) == 1
    problems = {p["path"]: p["reason"] for p in json.loads(capsys.readouterr().out)["problems"]}
    assert problems[str(docs)].startswith("sha256 differs")
    assert problems[str(quarantine)].startswith("truncated or not a Parquet file")


@pytest.mark.slow
@pytest.mark.usefixtures("uses_ray")
def test_killed_shards_build_publishes_nothing_and_the_next_run_completes(
    small_shards: SmallShards, killable: Callable[..., Killable]
) -> None:
    home = small_shards.home
    cfg = ShardsConfig(max_seq_len=64, dupe_factor=2, eval_share=0.1)  # not the fixture's build: a new id
    shard_id = planned_shard_id("wiki", "wiki", home=home, cfg=cfg)
    flags = ["--max-seq-len", "64", "--dupe-factor", "2", "--eval-share", "0.1", "--workers", "1"]
    run = killable("shards", "build", "--corpus", "wiki", "--tokenizer", "wiki", *flags, home=home)
    build = run.freeze_when(first_file_in(home / "shards", f".{shard_id}.*.tmp"))
    assert not (build / "manifest.json").exists() and not (home / "shards" / shard_id).exists()
    run.kill()
    with pytest.raises(UserError, match="unknown shards"):
        load_manifest(home, shard_id)

    summary = build_shards("wiki", "wiki", home=home, workers=1, cfg=cfg)
    assert summary["id"] == shard_id and not summary["reused"] and not build.exists()
    result = verify_shards(home, shard_id)
    assert result.ok and result.rows == sum(summary["instances"].values())

    folder = home / "shards" / shard_id
    train, evaluation = folder / "train" / "part-00000.parquet", folder / "eval" / "part-00000.parquet"
    damage(corrupt=train, truncate=evaluation)
    assert_verify_fails_naming(["shards", shard_id], home, [train, evaluation])
    problems = {p.path: p.reason for p in verify_shards(home, shard_id).problems}
    assert problems[str(evaluation)].endswith("(truncated)")


@pytest.mark.slow
@pytest.mark.usefixtures("runs_cli")
def test_two_ingestions_of_one_corpus_at_once_take_turns(
    albert_home: Path, corpora: Path, killable: Callable[..., Killable]
) -> None:
    """Both succeed with consecutive versions; the later one descends from the earlier and does not repeat the
    book both were given."""
    books = corpora / "gutenberg"
    given = {
        "a": [books / "carroll-alice.txt", books / "chesterton-thursday.txt"],
        "b": [books / "chesterton-thursday.txt", books / "austen-emma.txt"],
    }
    runs = {
        k: killable("ingest", *map(str, paths), "--corpus", "race", "--json", home=albert_home)
        for k, paths in given.items()
    }
    summaries = {}
    for k, run in runs.items():
        out, err = run.proc.communicate(timeout=600)
        assert run.proc.returncode == 0, err.decode()[-3000:]
        summaries[k] = json.loads(out.decode().splitlines()[-1])
    first, second = sorted(summaries.values(), key=lambda s: s["version"])
    assert (first["version"], second["version"]) == (1, 2)
    assert first["parent"] is None and second["parent"] == "race/v1"
    assert (first["documents"], second["documents"], second["duplicates_previous"]) == (2, 1, 1)
    versions = list_versions(albert_home, "race")
    assert [v.manifest["version"] for v in versions] == [1, 2]
    assert len(versions[-1].doc_files()) == 2  # the latest snapshot holds all three books
    assert verify_corpus(albert_home, "race").ok
