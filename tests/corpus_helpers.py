"""Corpus versions built straight from real text (without ingestion), for tests that need exact control over
document ids and file counts: WikiText articles and zhwiki documents as `publish_version` lays them out. Also a
small labelled set for fine-tuning: book sentences labelled by their book."""

import hashlib
import json
import random
import re
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from albert_core.text import join_wrapped_lines, normalize, split_sentences
from data_jobs.corpus import DOCS_SCHEMA, publish_version

_TITLE = re.compile(r"^ = [^=].* = $")  # ` = Title = ` starts an article; ` = = Section = = ` does not
_HEADING = re.compile(r"^ (= )+.*( =)+ $")


def wikitext_documents(path: Path) -> dict[str, list[str]]:
    """Sentences of each WikiText article (headings dropped), keyed `wikitext:<k>`."""
    docs: dict[str, list[str]] = {}
    current: list[str] | None = None
    for line in normalize(path.read_text(encoding="utf-8")).split("\n"):
        if _TITLE.match(line):
            current = docs.setdefault(f"wikitext:{len(docs):03d}", [])
        elif current is not None and line.strip() and not _HEADING.match(line):
            current += split_sentences(line.strip())
    return docs


def zhwiki_documents(path: Path) -> dict[str, list[str]]:
    """One sentence per line, a blank line between documents (the ALBERT/BERT layout)."""
    blocks = normalize(path.read_text(encoding="utf-8")).split("\n\n")
    docs = {f"zhwiki:{k:04d}": [s.strip() for s in b.split("\n") if s.strip()] for k, b in enumerate(blocks)}
    return {doc_id: sentences for doc_id, sentences in docs.items() if sentences}


def publish(home: Path, name: str, docs: dict[str, list[str]], files: int = 4) -> None:
    """A corpus version as ingestion lays it out: `files` docs-*.parquet files of contiguous documents."""

    def build(folder: Path) -> dict:
        ids = sorted(docs)
        for f in range(files):
            part = ids[f * len(ids) // files : (f + 1) * len(ids) // files]
            table = pa.table(
                {
                    "id": part,
                    "source": [name] * len(part),
                    "sentences": [docs[i] for i in part],
                    "content_hash": [hashlib.sha256("\n".join(docs[i]).encode()).hexdigest() for i in part],
                },
                schema=DOCS_SCHEMA,
            )
            pq.write_table(table, folder / f"docs-{f:05d}.parquet")
        return {"documents": len(ids)}

    publish_version(home, name, build)


def drifting_documents(documents: int, *, seed: int = 0, groups: int = 24, group_words: int = 8,
                       shared_words: int = 48, sentences: tuple[int, int] = (4, 6)) -> dict[str, list[str]]:  # fmt: skip
    """Documents whose only sentence-order signal is content drifting through them: sentence k of a document
    draws half its words from a shared pool and half from topic group b + k (b random per document), so groups
    rise with position. Every sentence has the same length at every position, so segment length says nothing."""
    import numpy as np

    rng = np.random.default_rng(seed)
    letters = "bdfgklmnprstvz"

    def word() -> str:
        return "".join(rng.choice(list(letters)) + rng.choice(list("aeiou")) for _ in range(2))

    vocab = list(dict.fromkeys(word() for _ in range(4 * (shared_words + groups * group_words))))
    shared, topical = vocab[:shared_words], vocab[shared_words:]
    topics = [topical[g * group_words : (g + 1) * group_words] for g in range(groups)]
    docs = {}
    for d in range(documents):
        n = int(rng.integers(sentences[0], sentences[1] + 1))
        base = int(rng.integers(0, groups - n + 1))
        body = []
        for k in range(n):
            words = list(rng.choice(shared, 3)) + list(rng.choice(topics[base + k], 3))
            body.append(" ".join(rng.permutation(words)).capitalize() + ".")
        docs[f"drift:{d:05d}"] = body
    return docs


def book_sentences(
    corpora: Path, folder: Path, *, train: int, evaluation: int,
    books: tuple[str, ...] = ("carroll-alice", "chesterton-thursday"),
) -> tuple[Path, Path]:  # fmt: skip
    """train.jsonl and eval.jsonl in `folder`: `train` and `evaluation` sentences of each Gutenberg book (disjoint,
    40-300 characters), labelled by the book: a fine-tuning task on real text, small enough for a flow test."""
    folder.mkdir(parents=True, exist_ok=True)
    rows: dict[str, list[dict[str, str]]] = {"train": [], "eval": []}
    for book in books:
        text = normalize((corpora / "gutenberg" / f"{book}.txt").read_text(encoding="utf-8"))
        sentences = [s for paragraph in join_wrapped_lines(text.split("\n")) for s in split_sentences(paragraph)
                     if 40 <= len(s) <= 300]  # fmt: skip
        random.Random(book).shuffle(sentences)
        rows["train"] += [{"text": s, "label": book} for s in sentences[:train]]
        rows["eval"] += [{"text": s, "label": book} for s in sentences[train : train + evaluation]]
    for split, items in rows.items():
        (folder / f"{split}.jsonl").write_text(
            "".join(json.dumps(row) + "\n" for row in items), encoding="utf-8"
        )
    return folder / "train.jsonl", folder / "eval.jsonl"
