"""A small SQuAD-format set built from WikiText-2 paragraphs (no SQuAD file is on this machine).

Each question is one sentence of a paragraph that names exactly one year, the year replaced by "what year"
("In 1998 , the band toured ." -> "In what year , the band toured ?"); the answer is that year, a span of the
paragraph. Only paragraphs that name two or more different years are used, so a reader must find the sentence,
not just a year. With
`unanswerable` > 0 some questions are asked of a different paragraph of the same article (SQuAD 2.0's
`is_impossible`): one that does not hold the sentence.
"""

from __future__ import annotations

import json
import random
import re
from pathlib import Path
from typing import Any

YEAR = re.compile(r"\b(1[5-9]\d\d|20[0-2]\d)\b")


def wikitext_articles(path: Path) -> list[list[str]]:
    """Each article's paragraphs (WikiText's body lines), headings left out."""
    articles: list[list[str]] = []
    for line in path.read_text(encoding="utf-8").splitlines():
        text = line.strip()
        if text.startswith("= ") and not text.startswith("= ="):
            articles.append([])
        elif text and not text.startswith("=") and articles:
            articles[-1].append(text)
    return [a for a in articles if a]


def year_questions(paragraph: str) -> list[tuple[str, str, int]]:
    """(question, year, its offset in the paragraph) for each sentence that names exactly one year."""
    out, start = [], 0
    for sentence in re.split(r"(?<= \.) ", paragraph):
        years = list(YEAR.finditer(sentence))
        if len(years) == 1 and len(sentence.split()) >= 6:
            year = years[0]
            question = f"{sentence[: year.start()]}what year{sentence[year.end() :]}".rstrip(" .") + " ?"
            out.append((question, year.group(), start + year.start()))
        start += len(sentence) + 1
    return out


def build_squad(corpus: Path, *, questions: int, unanswerable: float = 0.0, seed: int = 0) -> dict[str, Any]:
    """A SQuAD v1.1 (or, with `unanswerable`, v2.0) document of about `questions` questions, from paragraphs
    that name at least two different years (so that "any year" is not the answer)."""
    rng = random.Random(seed)
    data, count = [], 0
    for a, paragraphs in enumerate(wikitext_articles(corpus)):
        entries = []
        for p, paragraph in enumerate(paragraphs):
            if len({m.group() for m in YEAR.finditer(paragraph)}) < 2:
                continue
            qas = []
            for k, (question, year, offset) in enumerate(year_questions(paragraph)):
                assert paragraph[offset : offset + len(year)] == year
                qid = f"wt2-{a}-{p}-{k}"
                others = [o for o in paragraphs if o != paragraph and question[:40] not in o]
                if others and rng.random() < unanswerable:
                    entries.append({"context": rng.choice(others), "qas": [
                        {"id": qid, "question": question, "answers": [], "is_impossible": True}]})  # fmt: skip
                else:
                    qas.append({"id": qid, "question": question,
                                "answers": [{"text": year, "answer_start": offset}]})  # fmt: skip
                count += 1
            if qas:
                entries.append({"context": paragraph, "qas": qas})
        if entries:
            data.append({"title": f"article {a}", "paragraphs": entries})
        if count >= questions:
            break
    return {"version": "v2.0" if unanswerable else "1.1", "data": data}


def write_squad(path: Path, document: dict[str, Any]) -> Path:
    path.write_text(json.dumps(document, ensure_ascii=False), encoding="utf-8")
    return path
