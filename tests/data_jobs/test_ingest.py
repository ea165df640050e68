"""Ingestion: whole runs on real Ray over ../shared/corpora, hand-made bad inputs, Parquet, Hugging Face folders,
the builtin corpus and the CLI (the per-file steps: `test_layouts.py`, `test_sources.py`)."""

import csv
import hashlib
import json
import random
import re
from collections import Counter
from pathlib import Path
from typing import Any

import datasets
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from albert_core.errors import UserError
from data_jobs.corpus import DOCS_SCHEMA, QUARANTINE_SCHEMA, RAW_LIMIT, list_versions
from data_jobs.ingest import IngestConfig, ingest
from flows.cli import main

# Original French prose (not from any corpus), with the accents that Latin-1 and UTF-8 encode differently.
FRENCH = (
    "Le marché du village ouvre très tôt le samedi. Les marchands déballent leurs légumes, leurs fromages et "
    "leurs pâtés avant l'aube.\nUne vieille dame vend des crêpes sucrées près de la fontaine. Les enfants "
    "préfèrent les gâteaux à la crème, mais leurs parents achètent surtout du pain complet.\n\nÀ midi, la place "
    "est déjà presque vide et les pigeons se disputent les miettes. Ça recommence la semaine prochaine.\n"
)
PROSE = "The first line of a note. It has two sentences.\nA second document follows here.\n"


def lines_add_up(source: dict[str, Any]) -> bool:
    return source["lines_in"] == source["lines_accepted"] + source["lines_quarantined"] + source["separators"]


def read_docs(version_path: str | Path) -> list[dict[str, Any]]:
    return pq.read_table(sorted(Path(version_path).glob("docs-*.parquet"))).to_pylist()


def read_quarantine(version_path: str | Path) -> list[dict[str, Any]]:
    table = pq.read_table(Path(version_path) / "quarantine.parquet")
    assert table.schema.equals(QUARANTINE_SCHEMA)
    return table.to_pylist()


# --- pure steps -------------------------------------------------------------------------------------------------


def test_config_is_validated(albert_home: Path, tmp_path: Path) -> None:
    (tmp_path / "a.txt").write_text(PROSE)
    with pytest.raises(UserError, match="unknown encoding 'klingon'"):
        ingest([str(tmp_path / "a.txt")], "c", home=albert_home, cfg=IngestConfig(encoding="klingon"))
    with pytest.raises(UserError, match="invalid corpus name '../x'"):
        ingest([str(tmp_path / "a.txt")], "../x", home=albert_home)


# --- the shared real corpora ------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def shared(corpora: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """The whole ../shared/corpora folder ingested once: summary, home and the documents written."""
    home = tmp_path_factory.mktemp("shared_home")
    summary = ingest([str(corpora)], "shared", home=home)
    return {"summary": summary, "home": home, "docs": read_docs(summary["path"])}


@pytest.mark.usefixtures("uses_ray")
def test_shared_corpora_ingest_cleanly_with_detected_layouts(shared: dict[str, Any]) -> None:
    summary = shared["summary"]
    assert summary["version"] == 1 and summary["parent"] is None
    assert summary["quarantined"] == {"total": 0, "by_reason": {}}
    assert summary["layouts"] == {
        "gutenberg/austen-emma.txt": "wrapped",
        "gutenberg/carroll-alice.txt": "wrapped",
        "gutenberg/chesterton-thursday.txt": "wrapped",
        "gutenberg/melville-moby_dick.txt": "wrapped",
        "wikitext2-valid.raw.txt": "wikitext",
        "zhwiki_bert_sampled.txt": "sentences",
    }
    skipped = {Path(s["path"]).name for s in summary["skipped"]}
    assert {"MANIFEST.tsv", "README.md"} <= skipped and all(
        s["reason"] == "unknown format" for s in summary["skipped"]
    )
    assert not read_quarantine(summary["path"])


@pytest.mark.usefixtures("uses_ray")
def test_shared_corpora_line_accounting_matches_their_manifest(shared: dict[str, Any], corpora: Path) -> None:
    with open(corpora / "MANIFEST.tsv", newline="") as f:
        expected = {row["file"]: row for row in csv.DictReader(f, delimiter="\t")}
    # downstream task data (.conll) is not pretraining text: skipped as an unknown format
    expected = {name: row for name, row in expected.items() if not name.startswith("downstream/")}
    sources = {s["source"]: s for s in shared["summary"]["sources"]}
    assert set(sources) == set(expected)
    for name, source in sources.items():
        assert lines_add_up(source), source
        assert source["lines_in"] == int(expected[name]["lines"]) and source["bytes"] == int(
            expected[name]["bytes"]
        )
        assert source["lines_quarantined"] == 0 and source["encoding"] == "utf-8"
    assert sources["zhwiki_bert_sampled.txt"]["separators"] == 2500  # one blank line after each document


@pytest.mark.usefixtures("uses_ray")
def test_zhwiki_gives_its_documents_minus_exact_duplicates(shared: dict[str, Any], corpora: Path) -> None:
    text = (corpora / "zhwiki_bert_sampled.txt").read_text(encoding="utf-8")
    blocks = [tuple(line.strip() for line in b.split("\n") if line.strip()) for b in text.split("\n\n")]
    blocks = [b for b in blocks if b]
    assert len(blocks) == 2500
    docs = [d for d in shared["docs"] if d["source"] == "zhwiki_bert_sampled.txt"]
    assert len(docs) == len(set(blocks)) == 2499
    summary = shared["summary"]
    assert summary["duplicates_within"] == 1 and summary["documents"] == summary["documents_in"] - 1
    # the duplicate kept is the first occurrence (smallest position)
    first = blocks.index(next(b for b, n in Counter(blocks).items() if n > 1))
    assert f"zhwiki_bert_sampled.txt:{first}" in {d["id"] for d in docs}


@pytest.mark.usefixtures("uses_ray")
def test_wikitext_gives_its_60_articles_without_headings(shared: dict[str, Any], corpora: Path) -> None:
    lines = (corpora / "wikitext2-valid.raw.txt").read_bytes().decode("utf-8").split("\r\n")
    titles = [line for line in lines if re.fullmatch(r" = [^=].* = ", line)]
    docs = [d for d in shared["docs"] if d["source"] == "wikitext2-valid.raw.txt"]
    assert len(titles) == len(docs) == 60
    assert sorted(d["id"] for d in docs) == sorted(f"wikitext2-valid.raw.txt:{i}" for i in range(60))
    assert not [s for d in docs for s in d["sentences"] if s.startswith("=") or s.endswith("=")]
    first = next(d for d in docs if d["id"].endswith(":0"))
    assert first["sentences"][0].startswith(lines[3].strip()[:40])  # the text under the first title


@pytest.mark.usefixtures("uses_ray")
def test_books_are_one_document_each_and_crlf_is_gone(shared: dict[str, Any], corpora: Path) -> None:
    assert b"\r\n" in (corpora / "gutenberg" / "melville-moby_dick.txt").read_bytes()
    books = {d["source"]: d for d in shared["docs"] if d["source"].startswith("gutenberg/")}
    assert len(books) == 4 and all(d["id"] == f"{name}:0" for name, d in books.items())
    for doc in books.values():
        assert not [s for s in doc["sentences"] if "\r" in s or "\n" in s or s != s.strip() or not s]
        assert len(doc["sentences"]) > 1000
    assert books["gutenberg/melville-moby_dick.txt"]["sentences"][:2] == [
        "[Moby Dick by Herman Melville 1851]",
        "ETYMOLOGY.",
    ]


@pytest.mark.usefixtures("uses_ray")
def test_version_files_and_manifest(shared: dict[str, Any]) -> None:
    (version,) = list_versions(shared["home"], "shared")
    version.verify()  # sha256 of every file as recorded
    manifest = version.manifest
    assert manifest["parameters"] == {
        "format": None,
        "text_field": "text",
        "column": "text",
        "layout": None,
        "pre_split": False,
        "encoding": "utf-8",
        "max_line_bytes": 1_000_000,
        "range_mb": 16.0,
    }
    assert set(manifest["files"]) == {"docs-00000.parquet", "quarantine.parquet"}
    assert pq.read_schema(version.path / "docs-00000.parquet").equals(DOCS_SCHEMA)
    assert manifest["documents"] == len(shared["docs"]) == shared["summary"]["documents"]
    ids = [d["id"] for d in shared["docs"]]
    assert len(set(ids)) == len(ids)
    for doc in shared["docs"][:50]:
        assert doc["content_hash"] == hashlib.sha256("\n".join(doc["sentences"]).encode()).hexdigest()
    assert manifest["sentences"] == sum(len(d["sentences"]) for d in shared["docs"])


@pytest.mark.usefixtures("uses_ray")
def test_reingest_creates_no_new_version(shared: dict[str, Any], corpora: Path) -> None:
    again = ingest([str(corpora)], "shared", home=shared["home"])
    n = shared["summary"]["documents_in"]
    assert again["version"] is None and again["new_documents"] == 0 and again["duplicates_previous"] == n
    assert again["message"] == f"nothing new: all {n} documents are already in corpus shared (shared/v1)"
    assert [v.version for v in list_versions(shared["home"], "shared")] == [1]


# --- incremental, bad inputs, encodings -------------------------------------------------------------------------


@pytest.mark.usefixtures("uses_ray")
def test_adding_a_file_gives_v2_with_only_its_documents(albert_home: Path, corpora: Path) -> None:
    alice, thursday = (
        str(corpora / "gutenberg" / n) for n in ("carroll-alice.txt", "chesterton-thursday.txt")
    )
    first = ingest([alice], "books", home=albert_home)
    second = ingest([alice, thursday], "books", home=albert_home)
    assert (first["version"], second["version"], second["parent"]) == (1, 2, "books/v1")
    assert second["duplicates_previous"] == 1 and second["documents"] == 1
    assert [d["id"] for d in read_docs(second["path"])] == ["chesterton-thursday.txt:0"]
    assert list_versions(albert_home, "books")[-1].manifest["parent"] == "books/v1"


@pytest.mark.usefixtures("uses_ray")
def test_bad_inputs_are_quarantined_and_the_rest_ingests(albert_home: Path, tmp_path: Path) -> None:
    data = tmp_path / "data"
    data.mkdir()
    latin1 = FRENCH.encode("latin-1")
    long_line = b"y" * 2_000_000
    (data / "good.txt").write_text(PROSE)
    (data / "latin1.txt").write_bytes(latin1)
    (data / "long.txt").write_bytes(b"Before the long line.\n" + long_line + b"\nAfter the long line.\n")
    (data / "nuls.bin.txt").write_bytes(b"\x00\x01\x02\x03text" * 1000)
    (data / "random.txt").write_bytes(random.Random(1).randbytes(50_000))
    (data / "controls.txt").write_bytes(b"A tab\tand a bell\x07 here. NUL\x00 too.\n")
    (data / "empty.txt").write_bytes(b"")
    rows = [json.dumps({"text": "A good row. Two sentences."}), "{bad", json.dumps({"text": ["a"]}), "{}"]
    (data / "rows.jsonl").write_text("\n".join(rows) + "\n")
    (data / "loop.txt").symlink_to(data / "loop.txt")

    summary = ingest([str(data)], "mixed", home=albert_home)
    sources = {s["source"]: s for s in summary["sources"]}
    assert all(lines_add_up(s) for s in sources.values()), sources
    assert summary["quarantined"]["by_reason"] == {
        "bad_json": 1,
        "binary": 2,
        "line_too_long": 1,
        "missing_field": 1,
        "not_string": 1,
        "not_utf8": 1,
        "unreadable": 1,
    }
    quarantine = {(q["source"], q["reason"]): q for q in read_quarantine(summary["path"])}
    assert len(quarantine) == summary["quarantined"]["total"] == 8
    bad_utf8 = quarantine["latin1.txt", "not_utf8"]
    assert (
        bad_utf8["line"] == -1 and bad_utf8["offset"] == latin1.index(b"\xe9") and bad_utf8["raw"] == latin1
    )
    assert sources["latin1.txt"]["lines_quarantined"] == sources["latin1.txt"]["lines_in"] == 4
    too_long = quarantine["long.txt", "line_too_long"]
    assert (too_long["line"], too_long["offset"], too_long["raw"]) == (2, 22, long_line[:RAW_LIMIT])
    assert quarantine["nuls.bin.txt", "binary"]["offset"] == 0
    assert quarantine["random.txt", "binary"]["step"] == "decode"
    assert [(q["line"], q["reason"]) for (s, _), q in sorted(quarantine.items()) if s == "rows.jsonl"] == [
        (2, "bad_json"),
        (4, "missing_field"),
        (3, "not_string"),
    ]
    assert sources["loop.txt"]["error"] and quarantine["loop.txt", "unreadable"]["step"] == "read"
    assert sources["empty.txt"]["lines_in"] == 0 and sources["empty.txt"]["documents"] == 0
    assert sources["controls.txt"]["control_chars_removed"] == 2
    docs = {d["id"]: d["sentences"] for d in read_docs(summary["path"])}
    assert docs == {
        "controls.txt:0": ["A tab\tand a bell here.", "NUL too."],
        "good.txt:0": ["The first line of a note.", "It has two sentences."],  # one document per line
        "good.txt:1": ["A second document follows here."],
        "long.txt:0": ["Before the long line."],
        "long.txt:1": ["After the long line."],
        "rows.jsonl:0": ["A good row.", "Two sentences."],
    }
    # Same inputs, same files: output does not depend on Ray's scheduling.
    again = ingest([str(data)], "mixed-again", home=albert_home)
    assert (
        list_versions(albert_home, "mixed-again")[0].manifest["files"]
        == list_versions(albert_home, "mixed")[0].manifest["files"]
    )
    assert again["documents"] == summary["documents"]


@pytest.mark.usefixtures("uses_ray")
def test_latin1_ingests_with_auto_or_named_encoding(albert_home: Path, tmp_path: Path) -> None:
    path = tmp_path / "latin1.txt"
    path.write_bytes(FRENCH.encode("latin-1"))
    strict = ingest([str(path)], "fr", home=albert_home)
    assert strict["version"] is None and strict["quarantined"]["by_reason"] == {"not_utf8": 1}
    assert strict["message"] == "nothing new: no documents in the input (1 items quarantined)"
    auto = ingest([str(path)], "fr", home=albert_home, cfg=IngestConfig(encoding="auto"))
    assert auto["version"] == 1 and auto["sources"][0]["encoding"] == "cp1252"
    docs = read_docs(auto["path"])
    sentences = [s for d in docs for s in d["sentences"]]
    assert sentences[0] == "Le marché du village ouvre très tôt le samedi."
    assert "À midi, la place est déjà presque vide et les pigeons se disputent les miettes." in sentences
    named = ingest([str(path)], "fr-named", home=albert_home, cfg=IngestConfig(encoding="ISO-8859-1"))
    assert named["sources"][0]["encoding"] == "iso8859-1" and read_docs(named["path"]) == docs


# --- Parquet, Hugging Face, builtin -----------------------------------------------------------------------------


@pytest.mark.usefixtures("uses_ray")
def test_parquet_rows_keep_their_positions(albert_home: Path, tmp_path: Path) -> None:
    texts = ["Row zero. It is here.", None, "Row two.", "", "Row four.\nIts second paragraph."]
    table = pa.table({"text": texts, "n": list(range(5))})
    pq.write_table(table, tmp_path / "rows.parquet", row_group_size=2)  # three row groups
    summary = ingest([str(tmp_path / "rows.parquet")], "pq", home=albert_home)
    (source,) = summary["sources"]
    assert (source["unit"], source["lines_in"], source["empty_documents"]) == ("rows", 5, 2) and lines_add_up(
        source
    )
    docs = {d["id"]: d["sentences"] for d in read_docs(summary["path"])}
    assert docs == {
        "rows.parquet:0": ["Row zero.", "It is here."],
        "rows.parquet:2": ["Row two."],
        "rows.parquet:4": ["Row four.", "Its second paragraph."],
    }
    # a Parquet dataset folder (as pyarrow.dataset writes it): every file a source, positions per file
    (tmp_path / "ds").mkdir()
    pq.write_table(table.slice(0, 2), tmp_path / "ds" / "part-0.parquet")
    pq.write_table(table.slice(2), tmp_path / "ds" / "part-1.parquet")
    folder = ingest([str(tmp_path / "ds")], "pq-folder", home=albert_home)
    assert sorted(d["id"] for d in read_docs(folder["path"])) == [
        "part-0.parquet:0",
        "part-1.parquet:0",
        "part-1.parquet:2",
    ]
    with pytest.raises(UserError, match=r"rows.parquet: column 'n' has type int64, not a string type"):
        ingest([str(tmp_path / "rows.parquet")], "pq", home=albert_home, cfg=IngestConfig(column="n"))
    with pytest.raises(UserError, match=r"rows.parquet has no column 'body' \(it has text, n\)"):
        ingest([str(tmp_path / "rows.parquet")], "pq", home=albert_home, cfg=IngestConfig(column="body"))


@pytest.mark.usefixtures("uses_ray")
def test_hf_save_to_disk_folders_ingest(albert_home: Path, tmp_path: Path) -> None:
    datasets.Dataset.from_dict(
        {"text": ["Alpha doc. Two sentences.", "Beta doc."], "label": [0, 1]}
    ).save_to_disk(tmp_path / "hf" / "plain")
    splits = {
        "train": datasets.Dataset.from_dict({"text": ["Train doc."]}),
        "test": datasets.Dataset.from_dict({"text": ["Test doc."]}),
    }
    datasets.DatasetDict(splits).save_to_disk(tmp_path / "hf" / "dict")
    summary = ingest([str(tmp_path / "hf")], "hf", home=albert_home)
    assert {s["source"]: s["format"] for s in summary["sources"]} == {
        "dict/test": "hf",
        "dict/train": "hf",
        "plain": "hf",
    }
    docs = {d["id"]: d["sentences"] for d in read_docs(summary["path"])}
    assert docs == {
        "plain:0": ["Alpha doc.", "Two sentences."],
        "plain:1": ["Beta doc."],
        "dict/train:0": ["Train doc."],
        "dict/test:0": ["Test doc."],
    }
    with pytest.raises(UserError, match="column 'label' has type int64"):
        ingest([str(tmp_path / "hf" / "plain")], "hf", home=albert_home, cfg=IngestConfig(column="label"))


@pytest.mark.usefixtures("uses_ray")
def test_builtin_corpus_ingests_into_several_doc_files(
    albert_home: Path,
) -> None:
    # ~1.6 MB of text in units of 128 KB: one docs file per unit
    summary = ingest(["builtin"], "demo", home=albert_home, cfg=IngestConfig(range_mb=0.125))
    (source,) = summary["sources"]
    assert source["source"] == "builtin" and lines_add_up(source) and summary["documents_in"] > 100
    (version,) = list_versions(albert_home, "demo")
    version.verify()
    files = [p.name for p in version.doc_files()]
    assert len(files) >= 10 and files == [f"docs-{i:05d}.parquet" for i in range(len(files))]
    docs = read_docs(summary["path"])
    assert all(d["id"].startswith("stdlib:") and len(d["sentences"]) >= 2 for d in docs)
    assert len(docs) == summary["documents"] == summary["documents_in"] - summary["duplicates_within"]


# --- command line -----------------------------------------------------------------------------------------------


@pytest.mark.usefixtures("uses_ray")
def test_cli_ingest_json_and_user_errors(
    albert_home: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    (tmp_path / "a.txt").write_text(PROSE)
    assert (
        main(["ingest", str(tmp_path / "a.txt"), "--corpus", "cli", "--json", "--layout", "sentences"]) == 0
    )
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert (
        summary["version"] == 1 and summary["documents"] == 1 and summary["layouts"] == {"a.txt": "sentences"}
    )
    assert Path(summary["path"]).parent.parent.parent == albert_home
    assert main(["ingest", str(tmp_path / "missing.txt"), "--corpus", "cli", "--json"]) == 2
    out, err = capsys.readouterr()
    assert out == "" and err.strip().splitlines() == [
        f"albert: error: no such file or folder (or no match for the glob): {tmp_path / 'missing.txt'}"
    ]
