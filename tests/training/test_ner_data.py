"""Named-entity data and scores without a model: reading CoNLL and JSONL, refusing what is not BIO, the I- repair,
the held-out part, piece alignment, and entity-level scores checked against hand-counted cases and WNUT17."""

import json
from pathlib import Path

import pytest

from albert_core.errors import UserError
from training.ner import (
    IGNORE,
    Entity,
    align,
    entities,
    entity_scores,
    held_out,
    labels_of,
    read_tagged,
    repaired_i_tags,
)


def test_entities_follow_seqeval_default_mode() -> None:
    tags = ["B-loc", "I-loc", "O", "I-per", "I-per", "B-per", "I-loc", "B-org"]
    assert entities(tags) == [Entity("loc", 0, 2), Entity("per", 3, 5), Entity("per", 5, 6), Entity("loc", 6, 7),
                              Entity("org", 7, 8)]  # fmt: skip
    assert entities(["O", "O"]) == [] and entities([]) == []


def test_entity_scores_count_exact_spans_per_type_and_micro() -> None:
    truth = [["B-per", "I-per", "O", "B-loc"], ["B-loc", "O"]]
    predicted = [["B-per", "I-per", "O", "B-per"], ["B-loc", "B-loc"]]  # 2 right, 2 wrong guesses, 1 missed
    scores = entity_scores(truth, predicted)
    assert scores["per"] == {"precision": 0.5, "recall": 1.0, "f1": pytest.approx(2 / 3), "support": 1}
    assert scores["loc"] == {"precision": 0.5, "recall": 0.5, "f1": 0.5, "support": 2}
    assert scores["micro"]["precision"] == 0.5 and scores["micro"]["recall"] == pytest.approx(2 / 3)
    assert entity_scores([["O"]], [["O"]])["micro"] == {
        "precision": 0.0,
        "recall": 0.0,
        "f1": 0.0,
        "support": 0,
    }


def test_wnut17_reads_whole_with_its_tab_separators(corpora: Path) -> None:
    sentences = read_tagged(corpora / "downstream" / "wnut17-train.conll")
    assert len(sentences) == 3394 and sum(len(s.tokens) for s in sentences) == 62730  # the corpora README
    assert labels_of(sentences) == ["O", "B-corporation", "I-corporation", "B-creative-work", "I-creative-work",
                                    "B-group", "I-group", "B-location", "I-location", "B-person", "I-person",
                                    "B-product", "I-product"]  # fmt: skip
    assert sentences[0].tokens[14:17] == ("Empire", "State", "Building") and sentences[0].line == 1
    assert entities(sentences[0].tags) == [Entity("location", 14, 17), Entity("location", 18, 19)]
    share = sum(held_out(s, 0.1) for s in sentences) / len(sentences)
    assert 0.08 < share < 0.12
    assert entity_scores([s.tags for s in sentences], [s.tags for s in sentences])["micro"]["f1"] == 1.0


def test_bad_input_names_its_line_and_i_after_o_is_repaired(tmp_path: Path) -> None:
    def write(name: str, text: str) -> Path:
        path = tmp_path / name
        path.write_text(text)
        return path

    with pytest.raises(UserError, match=r"one.conll:3: a token line needs a token and a tag"):
        read_tagged(write("one.conll", "Paris\tB-loc\nis\tO\nlovely\n"))
    with pytest.raises(UserError, match=r"bioes.conll:2: tag 'S-loc' is not BIO .*convert them to BIO"):
        read_tagged(write("bioes.conll", "In\tO\nParis\tS-loc\n"))
    with pytest.raises(UserError, match=r"rows.jsonl:2: needs non-empty lists `tokens` and `tags`"):
        read_tagged(
            write("rows.jsonl", json.dumps({"tokens": ["a"], "tags": ["O"]}) + '\n{"tokens": ["a"]}\n')
        )
    with pytest.raises(UserError, match="holds no tagged sentence"):
        read_tagged(write("empty.conll", "\n\t\n"))

    sentences = read_tagged(
        write("repair.conll", "In\tO\nNew\tI-loc\nYork\tI-loc\n\t\nHi\tB-per\nthere\tI-loc\n")
    )
    assert [s.line for s in sentences] == [1, 5] and repaired_i_tags(sentences) == 2
    assert entities(sentences[0].tags) == [Entity("loc", 1, 3)]  # read as B-loc I-loc: nothing dropped


def test_labels_sit_on_the_first_piece_of_each_word() -> None:
    label_ids = {"O": 0, "B-loc": 1, "I-loc": 2}
    words = [[10], [11, 12, 13], [14, 15], [16]]
    ids, labels, kept = align(words, ["O", "B-loc", "I-loc", "O"], label_ids, limit=6)
    assert ids == [10, 11, 12, 13, 14, 15] and labels == [0, 1, IGNORE, IGNORE, 2, IGNORE] and kept == 3
