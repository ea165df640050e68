"""The tokenize job on real text (WikiText-2 valid articles and zhwiki_bert_sampled documents in one corpus
version): the ids are the tokenizer's own, the folder is content-addressed, reused, atomic, and independent of
the worker count."""

import json
import shutil
import sys
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import ray
from hypothesis import given, settings
from hypothesis import strategies as st

from albert_core.storage import sha256_file
from albert_core.tokenizer import preprocess_arrow, preprocess_text
from data_jobs import tokenize
from data_jobs.corpus import resolve_version
from data_jobs.tokenize import SCHEMA, documents, part_files, tokenize_corpus, tokenized_id
from data_jobs.tokenizer_job import TokenizerJobConfig, load_tokenizer, train_tokenizer
from tests.corpus_helpers import publish, wikitext_documents, zhwiki_documents


@pytest.fixture(scope="module")
def home(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("albert_home")


@pytest.fixture(scope="module")
def docs(home: Path, corpora: Path) -> dict[str, list[str]]:
    found = {**wikitext_documents(corpora / "wikitext2-valid.raw.txt")}
    found.update(zhwiki_documents(corpora / "zhwiki_bert_sampled.txt"))
    publish(home, "mixed", found, files=3)
    train_tokenizer("mixed", home=home, cfg=TokenizerJobConfig(vocab_size=4000, sample_sentences=20000))
    return found


@pytest.fixture(scope="module")
def built(home: Path, docs: dict, monkeypatch_module: pytest.MonkeyPatch) -> dict:
    monkeypatch_module.setattr(
        tokenize, "UNIT_BYTES", 256 << 10
    )  # several units per file (planned in the driver)
    tok, _ = load_tokenizer(home, "mixed")
    return tokenize_corpus(home, resolve_version(home, "mixed"), tok, workers=2)


@pytest.fixture(scope="module")
def monkeypatch_module() -> pytest.MonkeyPatch:
    with pytest.MonkeyPatch.context() as mp:
        yield mp


@pytest.mark.usefixtures("uses_ray")
def test_ids_are_the_tokenizers_own(built: dict, docs: dict, home: Path) -> None:
    tok, _ = load_tokenizer(home, "mixed")
    files = part_files(built)
    assert len(files) > 3  # the unit plan cut the 3 docs files into more parts
    seen = {}
    for file in files:
        table = pq.read_table(file)
        assert table.schema.equals(SCHEMA)
        for doc_id, text_bytes, sentences in documents(table):
            assert [s.tolist() for s in sentences] == tok.encode(docs[doc_id]), doc_id
            assert text_bytes == sum(len(s.encode()) for s in docs[doc_id])
            seen[doc_id] = table["source"][0].as_py()
    assert set(seen) == set(docs) and set(seen.values()) == {"mixed"}
    stats = built["statistics"]
    assert stats["documents"] == len(docs) and stats["sentences"] == sum(map(len, docs.values()))


@pytest.mark.usefixtures("uses_ray")
def test_manifest_and_atomic_folder(built: dict, home: Path) -> None:
    folder = Path(built["path"])
    assert folder == home / "tokenized" / built["id"] and not built["reused"]
    assert built["id"] == tokenized_id(built)  # recomputable from the recorded lineage
    for name, entry in built["files"].items():
        assert sha256_file(folder / name) == entry["sha256"]
        assert pq.ParquetFile(folder / name).metadata.num_rows == entry["rows"]
    assert sorted(p.name for p in folder.iterdir()) == sorted([*built["files"], "manifest.json"])
    assert not [p for p in (home / "tokenized").iterdir() if p.name.startswith(".")]


@pytest.mark.usefixtures("uses_ray")
def test_existing_id_is_reused(built: dict, home: Path) -> None:
    tok, _ = load_tokenizer(home, "mixed")
    again = tokenize_corpus(home, resolve_version(home, "mixed"), tok, workers=1)
    assert again["reused"] and again["id"] == built["id"] and again["files"] == built["files"]


@pytest.mark.usefixtures("uses_ray")
def test_one_worker_writes_the_same_files(built: dict, home: Path, tmp_path: Path) -> None:
    other = tmp_path / "albert_home"
    for part in ("corpora", "tokenizers"):
        shutil.copytree(home / part, other / part)
    tok, _ = load_tokenizer(other, "mixed")
    result = tokenize_corpus(other, resolve_version(other, "mixed"), tok, workers=1)
    assert not result["reused"] and result["workers"] == 1
    assert result["id"] == built["id"] and result["files"] == built["files"]  # byte-identical parts


@pytest.mark.usefixtures("uses_ray")
def test_a_failed_build_leaves_nothing(built: dict, home: Path, tmp_path: Path) -> None:
    other = tmp_path / "albert_home"
    for part in ("corpora", "tokenizers"):
        shutil.copytree(home / part, other / part)
    source = resolve_version(other, "mixed")
    damaged = source.doc_files()[1]
    data = bytearray(damaged.read_bytes())
    data[100:4000] = bytes(3900)  # pages, not the footer: planning works, a task's read fails
    damaged.write_bytes(bytes(data))
    tok, _ = load_tokenizer(other, "mixed")
    with pytest.raises(ray.exceptions.RayTaskError, match="read_row_group"):  # failed in a task, not planning
        tokenize_corpus(other, source, tok, workers=2)
    assert not (other / "tokenized").exists() or not list((other / "tokenized").iterdir())


@pytest.mark.usefixtures("uses_ray")
def test_cli_reports_the_same_folder(built: dict, home: Path, capsys: pytest.CaptureFixture) -> None:
    from flows.cli import main

    assert main(["tokenize", "--corpus", "mixed", "--home", str(home), "--json"]) == 0
    printed = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert printed["reused"] and printed["id"] == built["id"]
    assert main(["tokenize", "--corpus", "mixed", "--tokenizer", "missing", "--home", str(home)]) == 2
    assert "missing" in capsys.readouterr().err


# --- the encode path: Arrow arrays in, the same ids out --------------------------------------------------------

WHITESPACE = [chr(c) for c in range(sys.maxunicode + 1) if chr(c).isspace()]  # what str.split() splits on


@settings(max_examples=300, deadline=None)
@given(st.lists(st.text(alphabet=st.sampled_from([*WHITESPACE, *"  aZ`'\"ΣİÅ中\u200b\ufeff"]), max_size=30)))
def test_arrow_preprocessing_is_preprocess_text(texts: list[str]) -> None:
    """Whitespace runs, ``/'' and lower-casing (final sigma, dotted I) as Python's preprocess_text does them."""
    array = pa.array([*texts, None], pa.string())
    for lowercase in (False, True):
        assert preprocess_arrow(array, lowercase) == [preprocess_text(t, lowercase) for t in [*texts, ""]]


@pytest.mark.usefixtures("uses_ray")
def test_encode_arrow_is_encode(docs: dict, home: Path) -> None:
    tok, _ = load_tokenizer(home, "mixed")
    sentences = [s for d in sorted(docs) for s in docs[d]]
    sentences += ["", "  ", "\t``quoted''\u3000 text ", "ΟΔΟΣ ΣΑΣ", "İstanbul"]
    assert tok.encode_arrow(pa.array(sentences)).to_pylist() == tok.encode(sentences)
    assert tok.encode_arrow(pa.array(sentences[:3]), num_threads=1).type == pa.list_(pa.int32())
    assert tok.encode_arrow(pa.array([], pa.string())).to_pylist() == []
