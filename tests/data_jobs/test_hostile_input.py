"""Hostile and broken input: every case gives a quarantine entry or one clear line (a UserError), never a
traceback, and ingestion's line accounting always holds (lines_in = accepted + quarantined + separators, with
lines_in counted independently of the code under test). Property tests (hypothesis, reproducible: derandomized,
no example database) run the per-file steps and whole ingestions in process; fixed cases cover each kind of
damage named in the issue, the console script shows what a user sees, and names that could escape ALBERT_HOME
are refused by every entry point."""

import itertools
import json
import os
import shutil
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from albert_core.errors import UserError
from albert_core.storage import sha256_file
from data_jobs.corpus import list_versions
from data_jobs.ingest import IngestConfig, ingest
from data_jobs.layouts import COUNTS, DOC, LAYOUTS, QUARANTINE, Items, jsonl_items, text_items
from data_jobs.shards import load_manifest, read_shards
from data_jobs.tokenizer_job import load_tokenizer, train_tokenizer
from data_jobs.verify import verify_corpus, verify_shards, verify_tokenizer
from flows.cli import main
from tests.data_jobs.conftest import SmallShards, run_albert

# Reproducible in CI: the same examples every run, nothing remembered between runs.
PROPERTY = settings(
    max_examples=50,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)
# Text with the characters that break naive line handling: NUL and other controls, lone CR, CRLF, and the
# separators str.splitlines() would split on but files do not (\x1c, \x85, \u2028).
NASTY = st.lists(st.sampled_from(["a", "b", " ", ".", "\x00", "\x07", "\t", "\r", "\n", "\r\n", "\x0c", "\x1c",
                                  "\x85", "\u2028", "é", "中", "\ufeff", "= T =", "Word. "]),
                 max_size=200).map("".join)  # fmt: skip
JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | NASTY,
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.sampled_from(["text", "x"]), inner, max_size=2)
    ),
    max_leaves=6,
)
JSONL_LINES = st.one_of(JSON_VALUES.map(json.dumps), NASTY.filter(lambda s: "\n" not in s and "\r" not in s))


def line_count(raw: bytes) -> int:
    """Lines in a file, counted here independently of ingestion: CRLF, CR and LF end a line."""
    text = raw.replace(b"\r\n", b"\n").replace(b"\r", b"\n")
    return text.count(b"\n") + (not text.endswith(b"\n") and len(text) > 0)


def lines_add_up(counts: dict[str, Any]) -> bool:
    return counts["lines_in"] == counts["lines_accepted"] + counts["lines_quarantined"] + counts["separators"]


def file_steps(raw: bytes, fmt: str, cfg: IngestConfig) -> tuple[dict[str, Any], pa.Table]:
    """The per-file step ingestion runs in its Ray tasks: (the file's counts, every item it emitted)."""
    items = Items()
    (jsonl_items if fmt == "jsonl" else text_items)(raw, "f", cfg, items)
    table = items.table()
    (counts,) = [
        json.loads(c)
        for c, k in zip(table["counts"].to_pylist(), table["kind"].to_pylist(), strict=True)
        if k == COUNTS
    ]
    return {"lines_accepted": 0, "lines_quarantined": 0, "separators": 0, **counts}, table


def assert_accounted(raw: bytes, counts: dict[str, Any], table: pa.Table) -> None:
    kinds = table["kind"].to_pylist()
    assert counts["lines_in"] == line_count(raw), counts
    assert lines_add_up(counts), counts
    assert kinds.count(DOC) == counts.get("documents", 0)
    assert kinds.count(QUARANTINE) == sum(counts["quarantined"].values())


# --- properties of the per-file steps ----------------------------------------------------------------------------


@PROPERTY
@given(raw=st.binary(max_size=3000), encoding=st.sampled_from(["utf-8", "auto", "latin-1"]))
def test_random_bytes_are_decoded_or_quarantined_and_every_line_counted(raw: bytes, encoding: str) -> None:
    counts, table = file_steps(raw, "text", IngestConfig(encoding=encoding).validated())
    assert_accounted(raw, counts, table)
    if counts["encoding"] is None:  # refused whole: every line is quarantined with it
        assert counts["lines_quarantined"] == counts["lines_in"]


@PROPERTY
@given(
    text=NASTY,
    layout=st.sampled_from([None, *LAYOUTS]),
    pre_split=st.booleans(),
    limit=st.sampled_from([8, 10**6]),
)
def test_text_with_nuls_and_mixed_line_breaks_keeps_its_line_accounting(
    text: str, layout: str | None, pre_split: bool, limit: int
) -> None:
    raw = text.encode("utf-8")
    cfg = IngestConfig(layout=layout, pre_split=pre_split, max_line_bytes=limit).validated()  # type: ignore[arg-type]
    counts, table = file_steps(raw, "text", cfg)
    assert_accounted(raw, counts, table)
    sentences = [
        s for row in table.filter(pc.equal(table["kind"], DOC))["sentences"].to_pylist() for s in row
    ]
    assert all(s and "\x00" not in s and "\r" not in s for s in sentences)  # normalised, never empty


@PROPERTY
@given(lines=st.lists(JSONL_LINES, max_size=12), breaks=st.sampled_from(["\n", "\r\n", "\r"]))
def test_jsonl_rows_of_any_type_are_documents_or_quarantined(lines: list[str], breaks: str) -> None:
    raw = breaks.join(lines).encode("utf-8")
    counts, table = file_steps(raw, "jsonl", IngestConfig().validated())
    assert_accounted(raw, counts, table)
    if counts["encoding"] is not None:  # each accepted row is one document, or one empty document
        assert counts["lines_accepted"] == counts.get("documents", 0) + counts.get("empty_documents", 0)
        reasons = set(counts["quarantined"])
        assert reasons <= {"bad_json", "missing_field", "not_string", "line_too_long"}


# --- whole ingestions ---------------------------------------------------------------------------------------------

FILE_KINDS = st.one_of(
    st.tuples(st.just("bin.txt"), st.binary(max_size=2000)),
    st.tuples(st.just("text.txt"), NASTY.map(lambda s: s.encode("utf-8"))),
    st.tuples(
        st.just("rows.jsonl"), st.lists(JSONL_LINES, max_size=6).map(lambda ls: "\n".join(ls).encode())
    ),
)
_runs = itertools.count()


@settings(PROPERTY, max_examples=30)
@given(files=st.lists(FILE_KINDS, min_size=1, max_size=4))
@pytest.mark.usefixtures("uses_ray")
def test_whole_ingestions_lose_nothing(files: list[tuple[str, bytes]], tmp_path: Path) -> None:
    """Every source's lines add up, every document is new or a duplicate, and what the summary counts is what
    the version holds on disk (documents and quarantine rows), which `verify` confirms."""
    run = next(_runs)
    folder = tmp_path / f"in-{run}"
    folder.mkdir()
    for k, (suffix, raw) in enumerate(files):
        (folder / f"{k}.{suffix}").write_bytes(raw)
    home = tmp_path / "home"
    summary = ingest([str(folder)], f"c{run}", home=home)
    for source in summary["sources"]:
        assert lines_add_up(source) and source["lines_in"] == line_count(
            (folder / source["source"]).read_bytes()
        )
    assert summary["documents_in"] == sum(s["documents"] for s in summary["sources"])
    assert summary["documents_in"] == summary["new_documents"] + summary["duplicates"]
    if summary["version"] is None:
        assert summary["new_documents"] == 0 and list_versions(home, f"c{run}") == []
        return
    (version,) = list_versions(home, f"c{run}")
    rows = version.manifest["rows"]
    assert rows["quarantine.parquet"] == summary["quarantined"]["total"]
    assert (
        sum(n for f, n in rows.items() if f.startswith("docs-"))
        == summary["documents"]
        == summary["new_documents"]
    )
    assert verify_corpus(home, f"c{run}").ok


# --- fixed cases --------------------------------------------------------------------------------------------------


@pytest.mark.usefixtures("uses_ray")
def test_each_kind_of_broken_file_is_quarantined_and_the_rest_ingests(
    albert_home: Path, tmp_path: Path
) -> None:
    data = tmp_path / "data"
    (data / "sub").mkdir(parents=True)
    (data / "good.txt").write_text("A sentence that survives. And another one.\n")
    (data / "random.txt").write_bytes(os.urandom(20_000))
    (data / "not_utf8.txt").write_bytes(b"A fine line.\n\xff\xfe then bytes that are not UTF-8.\n")
    (data / "nuls.txt").write_bytes(b"Some\x00 text with a NUL.\r\nAnd a CRLF line.\rAnd a CR line.\n")
    (data / "huge_line.txt").write_bytes(b"w" * 10_000_000)  # one 10 MB line, no line break
    (data / "huge_row.jsonl").write_bytes(json.dumps({"text": "x " * 5_000_000}).encode() + b"\n")
    (data / "empty.txt").write_bytes(b"")
    (data / "blank.txt").write_bytes(b"\n   \n\t\r\n")
    rows = ["{bad", "[1, 2]", '"a string"', "null", '{"text": 5}', '{"text": null}', '{"text": {"a": 1}}',
            '{"other": "x"}', "[" * 100_000, '{"text": "A good row."}', '{"text": ""}']  # fmt: skip
    (data / "rows.jsonl").write_text("\n".join(rows) + "\n")
    (data / "loop.txt").symlink_to(data / "loop.txt")
    (data / "dangling.txt").symlink_to(data / "nowhere.txt")
    (data / "sub" / "back").symlink_to(data)  # a folder loop

    summary = ingest([str(data)], "hostile", home=albert_home)
    sources = {s["source"]: s for s in summary["sources"]}
    for name, source in sources.items():
        assert lines_add_up(source), source
        if "error" not in source:  # readable
            assert source["lines_in"] == line_count((data / name).read_bytes()), name
    assert summary["quarantined"]["by_reason"] == {
        "bad_json": 2,  # "{bad" and 100 000 nested brackets
        "binary": 1,
        "line_too_long": 2,
        "missing_field": 4,  # a list, a string, null, an object without "text"
        "not_string": 3,
        "not_utf8": 1,
        "unreadable": 2,  # the self-link and the dangling link
    }
    assert sources["huge_line.txt"]["lines_in"] == sources["huge_line.txt"]["lines_quarantined"] == 1
    assert sources["nuls.txt"]["control_chars_removed"] == 1 and sources["nuls.txt"]["lines_accepted"] == 3
    assert sources["empty.txt"]["lines_in"] == 0 and sources["blank.txt"]["separators"] == 3
    assert sources["rows.jsonl"]["empty_documents"] == 1
    assert {"path": str(data / "sub" / "back"), "reason": "symlink to a folder already read"} in summary[
        "skipped"
    ]
    assert summary["documents"] == 5  # good.txt (one document per line: 1), nuls.txt (3), rows.jsonl (1)
    assert verify_corpus(albert_home, "hostile").ok


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads files whatever their mode")
def test_a_file_without_read_permission_is_quarantined(albert_home: Path, tmp_path: Path) -> None:
    (tmp_path / "secret.txt").write_text("Nobody may read this.\n")
    (tmp_path / "secret.txt").chmod(0)
    summary = ingest([str(tmp_path / "secret.txt")], "locked", home=albert_home)
    assert summary["quarantined"]["by_reason"] == {"unreadable": 1} and summary["version"] is None


@pytest.mark.usefixtures("uses_ray")
def test_zero_documents_publish_nothing_and_say_so(
    albert_home: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    (tmp_path / "blank.txt").write_bytes(b"\n\n  \n")
    (tmp_path / "empty.jsonl").write_bytes(b"")
    assert main(["ingest", str(tmp_path), "--corpus", "nothing"]) == 0
    assert "message: nothing new: no documents in the input (0 items quarantined)" in capsys.readouterr().out
    assert list_versions(albert_home, "nothing") == []


@pytest.mark.usefixtures("runs_cli")
def test_broken_parquet_inputs_are_one_line(
    albert_home: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    pq.write_table(pa.table({"text": [1, 2, 3]}), tmp_path / "ints.parquet")
    (tmp_path / "random.parquet").write_bytes(os.urandom(5000))
    pq.write_table(pa.table({"text": ["A row."] * 100}), tmp_path / "cut.parquet")
    os.truncate(tmp_path / "cut.parquet", 200)
    expected = {
        "ints.parquet": "column 'text' has type int64, not a string type: pass --column",
        "random.parquet": "is not a readable Parquet file",
        "cut.parquet": "is not a readable Parquet file",
    }
    for name, message in expected.items():
        assert main(["ingest", str(tmp_path / name), "--corpus", "pq"]) == 2
        (line,) = capsys.readouterr().err.strip().splitlines()
        assert line.startswith(f"albert: error: {tmp_path / name}") and message in line
    # What a user's shell shows: one line, no traceback.
    result = run_albert("ingest", str(tmp_path / "ints.parquet"), "--corpus", "pq", home=albert_home)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert result.stderr.strip().splitlines() == [
        f"albert: error: {tmp_path / 'ints.parquet'}: {expected['ints.parquet']}"
    ]


# --- shards and tokenizers that do not fit ----------------------------------------------------------------------


@pytest.mark.usefixtures("uses_ray")
def test_shards_with_a_wrong_schema_are_refused(
    small_shards: SmallShards, capsys: pytest.CaptureFixture
) -> None:
    """A part file whose hashes and counts are recorded correctly but whose columns are not the shard schema."""
    folder = small_shards.copy("wrong-schema")
    part = folder / "train" / "part-00000.parquet"
    rows = pq.read_table(part)
    column = rows.schema.get_field_index("input_ids")
    wrong = rows.set_column(column, "input_ids", rows["input_ids"].cast(pa.list_(pa.int64())))
    pq.write_table(wrong, part)
    manifest = json.loads((folder / "manifest.json").read_text())
    manifest["files"]["train/part-00000.parquet"] = {
        "sha256": sha256_file(part),
        "rows": wrong.num_rows,
        "bytes": part.stat().st_size,
    }
    (folder / "manifest.json").write_text(json.dumps(manifest))
    (problem,) = verify_shards(small_shards.home, "wrong-schema").problems
    assert problem.path == str(part) and "not the shard schema" in problem.reason
    with pytest.raises(UserError, match="does not have the schema"):
        read_shards(small_shards.home, "wrong-schema", "train")
    (folder / "stray.parquet").write_bytes(b"")
    assert main(["verify", "shards", "wrong-schema", "--home", str(small_shards.home)]) == 1
    (line,) = capsys.readouterr().err.strip().splitlines()
    assert (
        "not the shard schema" in line and f"{folder / 'stray.parquet'}: not listed in the manifest" in line
    )
    (folder / "manifest.json").write_text("{not json")
    assert main(["verify", "shards", "wrong-schema", "--home", str(small_shards.home)]) == 2
    assert "is not valid JSON" in capsys.readouterr().err
    shutil.rmtree(folder)


@pytest.mark.usefixtures("uses_ray")
def test_a_tokenizer_that_does_not_match_the_shards_is_refused(small_shards: SmallShards) -> None:
    """Shards record the sha256 of the tokenizer they were built with; training refuses another one (here the
    record says the tokenizer was different, as after retraining it under the same name)."""
    from training.config import TrainConfig
    from training.run import train

    home = small_shards.home
    folder = small_shards.copy("other-tokenizer")
    manifest = json.loads((folder / "manifest.json").read_text())
    manifest["tokenizer"]["sha256"] = "0" * 64
    (folder / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(UserError, match="changed since shards other-tokenizer were built"):
        train(TrainConfig(shards="other-tokenizer"), home=home)
    shutil.rmtree(folder)
    # A damaged tokenizer file is found by verify and refused by the loader.
    assert verify_tokenizer(home, "wiki").ok
    copy = home / "tokenizers" / "wiki-copy"
    shutil.copytree(home / "tokenizers" / "wiki", copy)
    model = copy / "spiece.model"
    model.write_bytes(model.read_bytes()[:-10])
    (problem,) = verify_tokenizer(home, "wiki-copy").problems
    assert problem.path == str(model) and problem.reason.startswith("sha256 differs")
    with pytest.raises(UserError):
        load_tokenizer(home, "wiki-copy")
    shutil.rmtree(copy)


# --- names that could escape ALBERT_HOME --------------------------------------------------------------------------

BAD_NAMES = ["../x", "/etc/passwd", "a\x00b", "..", ".", ".hidden", "a/b", "x\n", "", "x" * 129]


@pytest.mark.parametrize("name", BAD_NAMES, ids=repr)
def test_names_that_could_escape_the_home_are_refused(
    name: str, albert_home: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    (tmp_path / "a.txt").write_text("One sentence.\n")
    python_entry_points = [
        lambda: ingest([str(tmp_path / "a.txt")], name, home=albert_home),
        lambda: list_versions(albert_home, name),
        lambda: verify_corpus(albert_home, name),
        lambda: train_tokenizer("corpus", home=albert_home, name=name),
        lambda: load_tokenizer(albert_home, name),
        lambda: verify_tokenizer(albert_home, name),
        lambda: load_manifest(albert_home, name),
        lambda: verify_shards(albert_home, name),
    ]
    for call in python_entry_points:
        with pytest.raises(UserError, match="invalid"):
            call()
    commands = [
        ["ingest", str(tmp_path / "a.txt"), "--corpus", name],
        ["verify", "corpus", name],
        ["tokenizer", "train", "--corpus", name],
        ["tokenizer", "train", "--corpus", "c", "--name", name],
        ["verify", "shards", name],
        ["train", "--resume", name],
        ["train", "--shards", "abc", "--model-name", name],
        ["promote", name],
        ["rollback", name],
        ["models", "list", name],
    ]
    for argv in commands:
        assert main(argv) == 2, argv
        (line,) = capsys.readouterr().err.strip().splitlines()
        assert line.startswith("albert: error: invalid "), (argv, line)
    assert not albert_home.exists()  # refused before anything was written
