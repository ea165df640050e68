"""Extractive question answering without a model: SQuAD files read and refused, the held-out part, piece offsets,
windows over long contexts, span choice, and the SQuAD script's exact match and F1 on hand-counted cases."""

import json
import re
from pathlib import Path

import numpy as np
import pytest
import torch

from albert_core.errors import UserError
from albert_core.extractive import Span, Window, best_span, choose, span_in_window, windows
from albert_core.tokenizer import SentencePieceTokenizer
from tests.squad_builder import build_squad, write_squad
from training.qa import (
    Answer,
    Question,
    encode_questions,
    exact_match,
    f1,
    held_out,
    normalize_answer,
    read_squad,
    squad_scores,
)


@pytest.fixture(scope="module")
def tokenizer(corpora: Path) -> SentencePieceTokenizer:
    lines = (corpora / "wikitext2-valid.raw.txt").read_text(encoding="utf-8").splitlines()[:3000]
    return SentencePieceTokenizer.train(lines, vocab_size=1500, lowercase=True)


@pytest.fixture(scope="module")
def squad(corpora: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    document = build_squad(corpora / "wikitext2-valid.raw.txt", questions=300, unanswerable=0.2)
    return write_squad(tmp_path_factory.mktemp("squad") / "train.json", document)


def _write(path: Path, qas: list[dict], context: str = "The ship sank in 1912 off Newfoundland.") -> Path:
    path.write_text(json.dumps({"data": [{"title": "t", "paragraphs": [{"context": context, "qas": qas}]}]}))
    return path


def test_built_set_reads_with_answers_at_their_offsets(squad: Path) -> None:
    questions = read_squad(squad)
    assert len(questions) >= 300 and len({q.id for q in questions}) == len(questions)
    impossible = [q for q in questions if q.impossible]
    assert 0.1 < len(impossible) / len(questions) < 0.3 and all(not q.answers for q in impossible)
    for q in questions:
        for a in q.answers:
            assert q.context[a.start : a.start + len(a.text)] == a.text and "what year" in q.question
    # held out by context: a paragraph's questions sit on one side
    sides: dict[str, set[bool]] = {}
    for q in questions:
        sides.setdefault(q.context, set()).add(held_out(q, 0.2))
    assert all(len(s) == 1 for s in sides.values())
    assert 0.05 < sum(held_out(q, 0.2) for q in questions) / len(questions) < 0.4


@pytest.mark.parametrize(
    ("qa", "message"),
    [
        ({"id": "q1", "question": "When?", "answers": [{"text": "1913", "answer_start": 17}]},
         "question 'q1': answer '1913' is not the context's text at answer_start 17 (found '1912')"),
        ({"id": "q2", "question": "When?", "answers": []}, "question 'q2': no answers; mark it is_impossible"),
        ({"id": "q3", "question": "When?", "answers": [{"text": "1912", "answer_start": 17}], "is_impossible": True},
         "question 'q3': is_impossible is true but it has answers"),
        ({"id": "q4", "question": "When?", "answers": [{"text": "1912", "answer_start": "17"}]},
         "question 'q4': answer_start must be an integer"),
        ({"id": "q5", "answers": []}, "question 'q5': needs 'question' (str)"),
    ],
)  # fmt: skip
def test_bad_questions_are_refused_naming_the_id(tmp_path: Path, qa: dict, message: str) -> None:
    with pytest.raises(UserError, match=f"^{re.escape(str(tmp_path / 'bad.json'))}: {re.escape(message)}"):
        read_squad(_write(tmp_path / "bad.json", [qa]))


def test_bad_files_are_refused(tmp_path: Path) -> None:
    ok = {"id": "a", "question": "When?", "answers": [{"text": "1912", "answer_start": 17}]}
    with pytest.raises(UserError, match="question id 'a' occurs twice"):
        read_squad(_write(tmp_path / "dup.json", [ok, ok]))
    (tmp_path / "not.json").write_text("{")
    with pytest.raises(UserError, match="not a SQuAD JSON file"):
        read_squad(tmp_path / "not.json")
    (tmp_path / "list.json").write_text("[]")
    with pytest.raises(UserError, match=r'expected \{"data": \[articles\]\}'):
        read_squad(tmp_path / "list.json")
    with pytest.raises(UserError, match="has no questions"):
        read_squad(_write(tmp_path / "empty.json", []))
    with pytest.raises(UserError, match="does not exist"):
        read_squad(tmp_path / "missing.json")


def test_offsets_map_pieces_back_to_the_original_characters(tokenizer: SentencePieceTokenizer) -> None:
    text = "  Crème brûlée\tcost  ``1,912'' francs in Zürich. "
    ids, spans = tokenizer.encode_with_offsets(text)
    assert ids == tokenizer.encode_one(text)
    words = ["Crème", "brûlée", "cost", "francs", "in", "Zürich."]  # and ``1,912
    covered = {}
    for a, b in spans:
        assert 0 <= a <= b <= len(text) and " " not in text[a:b] and "\t" not in text[a:b]
        covered.setdefault(a, b)
    # pieces of a word tile it in order; the quoted word (`` and '' become one character) spans as a whole
    assert "".join(text[a:b] for a, b in spans if text[a:b] != "``1,912''") == "".join(words)
    assert text.index("``") in covered and text[text.index("``") : covered[text.index("``")]] == "``1,912''"


def test_windows_cover_a_long_context_doc_stride_apart(tokenizer: SentencePieceTokenizer) -> None:
    question, context = list(range(10, 15)), list(range(100, 150))
    made = windows(tokenizer, question, context, max_seq_len=28, doc_stride=8)  # room 20 = 28 - 5 - 3
    assert [w.first for w in made] == [0, 8, 16, 24, 32] and made[-1].first + made[-1].length == 50
    for w in made:
        assert w.input_ids.tolist() == [tokenizer.cls_id, *question, tokenizer.sep_id,
                                        *context[w.first : w.first + w.length], tokenizer.sep_id]  # fmt: skip
        assert w.token_type_ids.tolist() == [0] * 7 + [1] * (w.length + 1) and len(w.input_ids) <= 28
    assert span_in_window(made[1], 10, 12) == (7 + 2, 7 + 4)
    assert span_in_window(made[1], 26, 28) == (0, 0)  # cut by the window's end: [CLS]
    assert [w.length for w in windows(tokenizer, question, [], 28, 8)] == [0]
    with pytest.raises(ValueError, match="leaves no room"):
        windows(tokenizer, question, context, max_seq_len=8, doc_stride=8)


def test_best_span_is_the_most_probable_allowed_pair() -> None:
    window = Window(np.arange(9, dtype=np.int32), first=10, offset=3, length=5)
    start = torch.tensor([0.0, 9, 9, 1, 5, 0, 0, 0, 9])  # 1, 2: question pieces; 8: the last [SEP]
    end = torch.tensor([0.0, 9, 9, 0, 0, 0, 1, 6, 9])
    span, null = best_span(start, end, window, max_answer_len=4)
    assert (span.start, span.end) == (11, 14)  # input 4..7: start 5 and end 6 beat everything allowed
    span_short, _ = best_span(start, end, window, max_answer_len=2)
    assert (span_short.start, span_short.end) == (13, 14)  # input 6..7: end 6 alone beats start 5 alone
    assert span.probability > span_short.probability and 0 < null < span.probability
    p_start, p_end = start[[0, 3, 4, 5, 6, 7]].softmax(-1), end[[0, 3, 4, 5, 6, 7]].softmax(-1)
    assert span.probability == pytest.approx(float(p_start[2] * p_end[5]))
    assert null == pytest.approx(float(p_start[0] * p_end[0]))
    a, b = (
        Span(3, 4, 0.4),
        Span(7, 7, 0.6),
    )  # the best span over windows; no answer if every window's beats it
    assert choose([(a, 0.7), (b, 0.9)], allow_no_answer=True) == Span(None, None, 0.7)
    assert choose([(a, 0.5), (b, 0.9)], allow_no_answer=True) == b
    assert choose([(a, 0.7), (b, 0.9)], allow_no_answer=False) == b
    assert choose([(None, 0.5)], allow_no_answer=False) == Span(None, None, 0.5)


def test_targets_are_the_answer_pieces(tokenizer: SentencePieceTokenizer, squad: Path) -> None:
    questions = read_squad(squad)[:80]
    encoded = encode_questions(tokenizer, questions, max_seq_len=96, max_query_len=32, doc_stride=32)
    held = set()
    for window, owner, (s, e) in zip(encoded.windows, encoded.owner, encoded.targets, strict=True):
        q = questions[owner]
        if (s, e) == (0, 0):
            continue
        spans = encoded.contexts[q.context][1]
        first, last = window.first + s - window.offset, window.first + e - window.offset
        assert q.context[spans[first][0] : spans[last][1]] == q.answers[0].text
        held.add(owner)
    answerable = {i for i, q in enumerate(questions) if not q.impossible}
    assert held == answerable  # every answer fits in some window; impossible questions never get a target
    assert len(encoded.windows) > len(questions)  # long paragraphs: several windows each


def test_squad_script_normalization_and_scores() -> None:
    assert normalize_answer("The  Cat, sat!") == "cat sat" and normalize_answer("an apple") == "apple"
    assert exact_match("the Titanic", "Titanic.") == 1.0 and exact_match("1912", "1913") == 0.0
    assert f1("the cat sat", "cat sat down") == pytest.approx(0.8)  # precision 2/3, recall 1
    assert f1("", "") == 1.0 and f1("", "cat") == 0.0 and f1("cat", "dog") == 0.0
    questions = [
        Question("a", "q", "c", (Answer("in 1912", 0), Answer("1912", 3))),
        Question("b", "q", "c", (Answer("the ship sank", 0),)),
        Question("c", "q", "c", (), impossible=True),
        Question("d", "q", "c", (), impossible=True),
    ]
    scores = squad_scores(questions, ["1912", "ship", "", "ship"])
    assert scores["has_answer"]["exact_match"] == 0.5
    assert scores["has_answer"]["f1"] == pytest.approx(
        (1.0 + 2 * (1 * 0.5) / 1.5) / 2
    )  # "ship" vs "ship sank"
    assert scores["no_answer"] == {"exact_match": 0.5, "f1": 0.5, "total": 2}
    assert scores["exact_match"] == 0.5 and scores["total"] == 4


def test_a_split_with_an_empty_side_is_refused(tmp_path: Path) -> None:
    from training.config import FinetuneConfig
    from training.qa_finetune import load_questions

    ok = {"id": "a", "question": "When?", "answers": [{"text": "1912", "answer_start": 17}]}
    path = _write(tmp_path / "one.json", [ok])  # one context: it lands on one side whatever the share
    cfg = FinetuneConfig(model_uri="models:/m/1", train_path=path, task="qa", eval_share=0.5)
    with pytest.raises(
        UserError, match=r"one.json: [01] training and [01] held-out questions; both parts need"
    ):
        load_questions(cfg)
    train, evaluation = load_questions(cfg.replace(eval_path=path))
    assert [q.id for q in train] == [q.id for q in evaluation] == ["a"]
