"""The builtin demo corpus: built from stdlib docstrings at run time, deterministic, sized, never stored."""

import unicodedata
from pathlib import Path

import pytest

from albert_core.errors import UserError
from albert_core.text import Document
from data_jobs.builtin_corpus import SKIPPED_DIRS, builtin_documents, text_bytes

REPO = Path(__file__).resolve().parents[2]
BUDGET = 200_000


@pytest.fixture(scope="module")
def docs() -> list[Document]:
    return list(builtin_documents(max_bytes=BUDGET))


def test_deterministic(docs: list[Document]) -> None:
    assert list(builtin_documents(max_bytes=BUDGET)) == docs


def test_size_near_target(docs: list[Document]) -> None:
    size = sum(text_bytes(s) for d in docs for s in d.sentences)
    assert 0.95 * BUDGET <= size <= BUDGET


def test_prefix_of_larger_budget(docs: list[Document]) -> None:
    smaller = list(builtin_documents(max_bytes=BUDGET // 4))
    assert [d.id for d in smaller[:-1]] == [d.id for d in docs[: len(smaller) - 1]]
    assert smaller[:-1] == docs[: len(smaller) - 1]


def test_ids_and_text(docs: list[Document]) -> None:
    ids = [d.id for d in docs]
    assert len(set(ids)) == len(ids)
    assert ids == sorted(ids)  # sorted relative paths
    for doc_id in ids:
        assert doc_id.startswith("stdlib:") and doc_id.endswith(".py")
        parts = doc_id.removeprefix("stdlib:").split("/")
        assert not SKIPPED_DIRS.intersection(parts)
        assert not any(p.startswith("_") and p != "__init__.py" for p in parts)
    sentences = [s for d in docs for s in d.sentences]
    assert all(len(d.sentences) >= 2 for d in docs)
    assert all(s and s == s.strip() and "\n" not in s for s in sentences)
    assert not [s for s in sentences if s.startswith((">>>", "..."))]
    assert all(unicodedata.category(c) != "Cc" for s in sentences for c in s)
    # English prose, mostly: most sentences end like sentences.
    assert sum(s.endswith((".", ":", "?", "!", ")")) for s in sentences) / len(sentences) > 0.8


def test_full_corpus_includes_help_topics() -> None:
    docs = list(builtin_documents())
    ids = [d.id for d in docs]
    assert len(set(ids)) == len(ids)
    assert ids == sorted(ids)
    assert "stdlib:pydoc_data/topics.py#for" in ids
    assert 1_000_000 < sum(text_bytes(s) for d in docs for s in d.sentences) <= 4_000_000


def test_bad_budget() -> None:
    with pytest.raises(UserError):
        next(builtin_documents(max_bytes=0))


def test_no_corpus_text_in_repository() -> None:
    """The corpus is built at run time: no text or data files live in the source packages."""
    data_suffixes = {".txt", ".jsonl", ".json", ".parquet", ".csv", ".gz", ".zst"}
    for package in ("albert_core", "data_jobs"):
        found = [p for p in (REPO / package).rglob("*") if p.suffix in data_suffixes]
        assert not found, found
