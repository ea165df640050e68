"""Ingestion's pure steps per file: layout detection, grouping lines into documents, decoding, and the items
(documents and quarantine entries) a text or JSONL file gives. No Ray: `test_ingest.py` runs whole ingestions."""

import hashlib
import json
import random
from typing import Any

from data_jobs.config import IngestConfig
from data_jobs.layouts import (
    Items,
    Refusal,
    decode,
    detect_layout,
    document_sentences,
    group_documents,
    jsonl_items,
    text_items,
)
from tests.data_jobs.test_ingest import FRENCH


def lines_add_up(source: dict[str, Any]) -> bool:
    return source["lines_in"] == source["lines_accepted"] + source["lines_quarantined"] + source["separators"]


def test_detect_layout_on_hand_written_files() -> None:
    sentences = ["One sentence here.", "Another one.", "", "A new document.", "Its second sentence."]
    paragraphs = [
        "First sentence. Second sentence. Third one here.",
        "",
        "Next document. It goes on. And on.",
    ]
    wikitext = [
        " = Alpha = ",
        " ",
        " Text about alpha . ",
        " = = Part = = ",
        " More . ",
        " = Beta = ",
        " B . ",
    ]
    wrapped = [
        "It was the best of times and the worst of times, said somebody who wrote",
        "a very long book,",
    ]
    wrapped += ["and then the paragraph simply went on and on, as paragraphs in old books", "do."]
    documents = ["A whole document on one line. With two sentences.", "Another document on its own line."]
    assert detect_layout(sentences) == "sentences"
    assert detect_layout(paragraphs) == "paragraphs"
    assert detect_layout(wikitext) == "wikitext"
    assert detect_layout(wrapped) == "wrapped"
    assert detect_layout(documents) == "documents"
    assert detect_layout([]) == "documents"


def test_group_documents_per_layout() -> None:
    wikitext = [
        " = Alpha = ",
        " ",
        " Text a . ",
        " = = Part = = ",
        None,
        " More a . ",
        " = Beta = ",
        " Text b . ",
    ]
    docs, separators = group_documents(wikitext, "wikitext")
    assert docs == [["Text a .", "More a ."], ["Text b ."]]
    assert separators == 4  # two titles, a section heading and a blank line; the quarantined line is neither
    docs, separators = group_documents(["a", "b", "", "", "c"], "sentences")
    assert (docs, separators) == ([["a", "b"], ["c"]], 2)
    docs, separators = group_documents(["one line", "wrapped", "", "next para"], "wrapped")
    assert (docs, separators) == ([["one line", "wrapped", "", "next para"]], 1)
    assert document_sentences(docs[0], "wrapped", pre_split=False) == ["one line wrapped", "next para"]
    assert document_sentences(["A b. C d.", "E f."], "sentences", pre_split=True) == ["A b. C d.", "E f."]
    assert document_sentences(["A b. C d.", "E f."], "sentences", pre_split=False) == ["A b.", "C d.", "E f."]


def test_decode_refusals_and_detection() -> None:
    latin1 = FRENCH.encode("latin-1")
    assert decode(latin1, "utf-8") == Refusal("not_utf8", latin1.index("é".encode("latin-1")))
    assert decode(latin1, "auto") == (FRENCH, "cp1252")
    assert decode(latin1, "latin-1") == (FRENCH, "latin-1")
    assert decode(b"\xff\xfe", "ascii") == Refusal("decode_error", 0)
    assert decode(b"text\x00\x00\x00\x00" * 100, "utf-8") == Refusal("binary", 4)
    assert decode(random.Random(0).randbytes(4096), "auto").reason == "binary"  # type: ignore[union-attr]
    assert decode(b"a few\x00 stray NULs are still text " * 10, "utf-8")[1] == "utf-8"  # type: ignore[index]
    assert decode(b"short\x00\x07", "utf-8")[1] == "utf-8"  # type: ignore[index]
    assert decode("ab\r\n".encode("utf-16"), "utf-16") == ("ab\r\n", "utf-16")  # no binary check for a codec


def test_text_items_quarantine_long_lines_and_count_everything() -> None:
    raw = (
        b"Short line one.\r\nShort line two.\r\n"
        + b"x" * 150
        + b"\r\n\r\nA bell\x07 rang. Then NUL\x00 too.\r\n"
    )
    items = Items()
    text_items(raw, "f.txt", IngestConfig(max_line_bytes=100, layout="sentences"), items)
    rows = items.table().to_pylist()
    (quarantined,) = [r for r in rows if r["kind"] == "quarantine"]
    assert quarantined["reason"] == "line_too_long" and quarantined["line"] == 3
    assert quarantined["offset"] == raw.index(b"xxx") and quarantined["raw"] == b"x" * 150
    docs = [r for r in rows if r["kind"] == "doc"]
    assert [d["id"] for d in docs] == ["f.txt:0", "f.txt:1"]
    assert docs[1]["sentences"] == ["A bell rang.", "Then NUL too."]
    assert docs[0]["content_hash"] == hashlib.sha256(b"Short line one.\nShort line two.").hexdigest()
    counts = json.loads(next(r["counts"] for r in rows if r["kind"] == "counts"))
    assert counts["lines_in"] == 5 and counts["lines_quarantined"] == 1 and counts["separators"] == 1
    assert counts["control_chars_removed"] == 2 and lines_add_up(counts)
    assert counts["quarantined"] == {"line_too_long": 1}


def test_jsonl_items_quarantine_bad_rows_with_line_numbers() -> None:
    lines = [
        {"text": "Good row one. It has two sentences."},
        "{not json",
        {"text": 42},
        {"body": "no text field"},
        "",
        ["not", "an", "object"],
        {"text": "Good row two.", "meta": 1},
        {"text": "   "},
    ]
    raw = "\n".join(x if isinstance(x, str) else json.dumps(x) for x in lines).encode() + b"\n"
    items = Items()
    jsonl_items(raw, "d.jsonl", IngestConfig(), items)
    rows = items.table().to_pylist()
    quarantined = [(r["line"], r["reason"]) for r in rows if r["kind"] == "quarantine"]
    assert quarantined == [(2, "bad_json"), (3, "not_string"), (4, "missing_field"), (6, "missing_field")]
    assert next(r for r in rows if r["line"] == 2)["raw"] == b"{not json"
    assert [r["id"] for r in rows if r["kind"] == "doc"] == ["d.jsonl:0", "d.jsonl:5"]
    counts = json.loads(next(r["counts"] for r in rows if r["kind"] == "counts"))
    assert (counts["lines_in"], counts["lines_accepted"], counts["separators"]) == (8, 3, 1)
    assert counts["empty_documents"] == 1 and lines_add_up(counts)
