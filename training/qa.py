"""Extractive question answering data: SQuAD v1.1 / v2.0 files read and checked, questions encoded as model
windows with their answer targets, and the SQuAD evaluation's exact match and F1.

Input is the SQuAD JSON: `{"data": [{"title", "paragraphs": [{"context", "qas": [{"id", "question", "answers":
[{"text", "answer_start"}], "is_impossible"}]}]}]}` (`is_impossible`, SQuAD 2.0, may be left out: false). Every
answer must be its context's text at `answer_start`; a mismatch, a duplicate id, an answerable question without an
answer or an unanswerable one with answers is a one-line error naming the file and the question's id, never a
silent drop. Without a held-out file, a share of the *contexts* (by a hash of the text) is held out, so the
questions of one paragraph never sit on both sides.

Scores follow the official SQuAD 2.0 script (`evaluate-v2.0.py`, which gives v1.1's figures on v1.1 data):
answers are compared after lower-casing and removing punctuation, articles and extra whitespace; a question
scores its best match over its gold answers; an unanswerable question's only gold answer is "". Reported as
fractions (the script prints percentages).
"""

from __future__ import annotations

import collections
import dataclasses
import json
import re
import string
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from albert_core.errors import UserError
from albert_core.extractive import Window, question_pieces, span_in_window, windows
from albert_core.tokenizer import SentencePieceTokenizer
from training.finetune_run import in_hashed_share


@dataclass(frozen=True)
class Answer:
    text: str
    start: int  # character offset in the context


@dataclass(frozen=True)
class Question:
    id: str
    question: str
    context: str
    answers: tuple[Answer, ...]  # empty when impossible
    impossible: bool = False


def read_squad(path: str | Path) -> list[Question]:
    """Every question of a SQuAD v1.1 or v2.0 file, checked (see the module docstring)."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path} does not exist")
    try:
        document = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise UserError(f"{path}: not a SQuAD JSON file ({e})") from None
    if not isinstance(document, dict) or not isinstance(document.get("data"), list):
        raise UserError(f'{path}: not a SQuAD file: expected {{"data": [articles]}}')
    questions: list[Question] = []
    seen: set[str] = set()
    for a, article in enumerate(document["data"]):
        where = f"{path}: article {a + 1}"
        for p, paragraph in enumerate(_list(article, "paragraphs", where)):
            context = _field(paragraph, "context", str, f"{where}, paragraph {p + 1}")
            for qa in _list(paragraph, "qas", f"{where}, paragraph {p + 1}"):
                question = _question(qa, context, f"{where}, paragraph {p + 1}")
                if question.id in seen:
                    raise UserError(f"{path}: question id {question.id!r} occurs twice")
                seen.add(question.id)
                questions.append(question)
    if not questions:
        raise UserError(f"{path} has no questions")
    return questions


def _list(obj: Any, key: str, where: str) -> list[Any]:
    return _field(obj, key, list, where)


def _field(obj: Any, key: str, kind: type, where: str) -> Any:
    if not isinstance(obj, dict) or not isinstance(obj.get(key), kind):
        raise UserError(f"{where}: needs {key!r} ({kind.__name__})")
    return obj[key]


def _question(qa: Any, context: str, where: str) -> Question:
    qid = str(_field(qa, "id", str | int, where))
    where = f"{where.split(':')[0]}: question {qid!r}"
    text = _field(qa, "question", str, where)
    impossible = qa.get("is_impossible", False)
    if not isinstance(impossible, bool):
        raise UserError(f"{where}: is_impossible must be true or false, got {impossible!r}")
    answers = []
    for answer in _list(qa, "answers", where):
        value, start = _field(answer, "text", str, where), answer.get("answer_start")
        if isinstance(start, bool) or not isinstance(start, int):
            raise UserError(f"{where}: answer_start must be an integer, got {start!r}")
        if not value.strip() or context[start : start + len(value)] != value:
            found = context[start : start + len(value)] if 0 <= start < len(context) else "nothing"
            raise UserError(f"{where}: answer {value!r} is not the context's text at answer_start {start} "
                            f"(found {found!r})")  # fmt: skip
        answers.append(Answer(value, start))
    if impossible and answers:
        raise UserError(f"{where}: is_impossible is true but it has answers (SQuAD 2.0 keeps those apart)")
    if not impossible and not answers:
        raise UserError(f"{where}: no answers; mark it is_impossible (SQuAD 2.0) or give its answer")
    return Question(qid, text, context, tuple(answers), impossible)


def held_out(question: Question, share: float) -> bool:
    """Whether the question's context falls in the held-out `share`, by a sha256 of the context text."""
    return in_hashed_share(question.context, share)


# --- model inputs ------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Encoded:
    """A set of questions as model windows: window i belongs to question `owner[i]` and is trained towards
    input positions `targets[i]` (the answer's first and last piece, or (0, 0) for [CLS]: no answer here)."""

    windows: list[Window]
    owner: list[int]
    targets: list[tuple[int, int]]
    contexts: dict[str, tuple[list[int], list[tuple[int, int]]]]  # context -> (piece ids, character spans)
    questions_cut: int  # questions longer than max_query_len


def answer_pieces(spans: Sequence[tuple[int, int]], answer: Answer) -> tuple[int, int]:
    """The first and last context piece that overlap the answer's characters."""
    end = answer.start + len(answer.text)
    inside = [i for i, (a, b) in enumerate(spans) if a < b and a < end and b > answer.start]
    return inside[0], inside[-1]


def encode_questions(
    tokenizer: SentencePieceTokenizer,
    questions: Iterable[Question],
    max_seq_len: int,
    max_query_len: int,
    doc_stride: int,
) -> Encoded:
    """Windows and targets of each question; each distinct context is encoded once."""
    encoded = Encoded([], [], [], {}, 0)
    cut = 0
    for q, question in enumerate(questions):
        if question.context not in encoded.contexts:
            encoded.contexts[question.context] = tokenizer.encode_with_offsets(question.context)
        context_ids, spans = encoded.contexts[question.context]
        ids, was_cut = question_pieces(tokenizer, question.question, max_query_len)
        cut += was_cut
        answer = None if question.impossible else answer_pieces(spans, question.answers[0])
        for window in windows(tokenizer, ids, context_ids, max_seq_len, doc_stride):
            encoded.windows.append(window)
            encoded.owner.append(q)
            encoded.targets.append((0, 0) if answer is None else span_in_window(window, *answer))
    return dataclasses.replace(encoded, questions_cut=cut)


# --- the SQuAD evaluation ----------------------------------------------------------------------------------------

_ARTICLES = re.compile(r"\b(a|an|the)\b", re.UNICODE)
_PUNCTUATION = set(string.punctuation)


def normalize_answer(text: str) -> str:
    """Lower-case, drop punctuation and the articles a/an/the, collapse whitespace (the SQuAD script's)."""
    text = "".join(ch for ch in text.lower() if ch not in _PUNCTUATION)
    return " ".join(_ARTICLES.sub(" ", text).split())


def exact_match(gold: str, predicted: str) -> float:
    return float(normalize_answer(gold) == normalize_answer(predicted))


def f1(gold: str, predicted: str) -> float:
    """Word-overlap F1 of the normalized answers; 1 if both are empty, 0 if only one is."""
    gold_words, predicted_words = normalize_answer(gold).split(), normalize_answer(predicted).split()
    if not gold_words or not predicted_words:
        return float(gold_words == predicted_words)
    same = sum((collections.Counter(gold_words) & collections.Counter(predicted_words)).values())
    if same == 0:
        return 0.0
    precision, recall = same / len(predicted_words), same / len(gold_words)
    return 2 * precision * recall / (precision + recall)


def squad_scores(questions: Sequence[Question], predicted: Sequence[str]) -> dict[str, Any]:
    """Exact match and F1 over all questions, and over the answerable and unanswerable ones apart (as the
    SQuAD 2.0 script's HasAns / NoAns figures); "" is the prediction "no answer"."""
    if len(questions) != len(predicted) or not questions:
        raise ValueError("need one prediction per question, and at least one question")
    rows = []
    for question, answer in zip(questions, predicted, strict=True):
        golds = [a.text for a in question.answers if normalize_answer(a.text)] or [""]
        rows.append((question.impossible, max(exact_match(g, answer) for g in golds),
                     max(f1(g, answer) for g in golds)))  # fmt: skip

    def mean(selected: list[tuple[bool, float, float]]) -> dict[str, Any]:
        n = len(selected)
        return {"exact_match": sum(r[1] for r in selected) / n if n else None,
                "f1": sum(r[2] for r in selected) / n if n else None, "total": n}  # fmt: skip

    return {
        **mean(rows),
        "has_answer": mean([r for r in rows if not r[0]]),
        "no_answer": mean([r for r in rows if r[0]]),
    }
