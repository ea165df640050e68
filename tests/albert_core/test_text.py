"""Text utilities: normalisation, paragraph joining, sentence splitting (hand cases, properties, real corpora)."""

import re
import unicodedata
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from albert_core.text import (
    ABBREVIATIONS,
    NUMBER_ABBREVIATIONS,
    Document,
    join_wrapped_lines,
    normalize,
    normalize_counted,
    split_sentences,
)

_WS = re.compile(r"\s")


def _book_sentences(path: Path) -> list[str]:
    text = normalize(path.read_bytes().decode("utf-8"))  # not read_text: normalize must see the CRLFs
    return [s for p in join_wrapped_lines(text.split("\n")) for s in split_sentences(p)]


# --- normalize -------------------------------------------------------------------------------------------------


def test_normalize_newlines_nfkc_and_controls() -> None:
    text, removed = normalize_counted("\ufeffa\r\nb\rc\x00d\x07\te\x1b\u0085f\nＡ１！ﬁ")
    assert text == "a\nb\ncd\tef\nA1!fi"
    assert removed == 5  # BOM, NUL, BEL, ESC, NEL (U+0085)
    assert normalize("plain text\n") == "plain text\n"


@settings(max_examples=200, deadline=None)
@given(st.text())
def test_normalize_is_idempotent_and_leaves_no_controls(text: str) -> None:
    once = normalize(text)
    assert normalize(once) == once
    assert "\r" not in once
    assert all(unicodedata.category(c) != "Cc" or c in "\n\t" for c in once)


# --- join_wrapped_lines ----------------------------------------------------------------------------------------


def test_join_wrapped_lines() -> None:
    lines = [
        "  First line of",
        "a paragraph.  ",
        "",
        "   ",
        "Second",
        "paragraph.",
        "中文第一行",
        "第二行。",
        "",
    ]
    assert join_wrapped_lines(lines) == ["First line of a paragraph.", "Second paragraph. 中文第一行第二行。"]
    assert join_wrapped_lines([]) == []
    assert join_wrapped_lines(["", " "]) == []


# --- split_sentences: hand cases -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("paragraph", "expected"),
    [
        ("One. Two! Three? Four", ["One.", "Two!", "Three?", "Four"]),
        (
            "Mr. Smith met Dr. Jones at St. Paul's. Then they left.",
            ["Mr. Smith met Dr. Jones at St. Paul's.", "Then they left."],
        ),
        (
            "Use a list, e.g. a tuple. Or i.e. Something else.",
            ["Use a list, e.g. a tuple.", "Or i.e. Something else."],
        ),
        (
            "J. R. R. Tolkien wrote it. So did I. Then we slept.",
            ["J. R. R. Tolkien wrote it.", "So did I.", "Then we slept."],
        ),
        ("\"Stop!\" He ran. 'Why?' she asked.", ['"Stop!"', "He ran.", "'Why?' she asked."]),
        ("(It ended.) Next one. In 1865. 1866 came.", ["(It ended.)", "Next one.", "In 1865.", "1866 came."]),
        ("Version 3.11 is out. pi is 3.14 here.", ["Version 3.11 is out. pi is 3.14 here."]),
        ("What?! Really... Yes.", ["What?!", "Really...", "Yes."]),
        (
            "He led No. 2 Squadron in 1941. Nos. 3 and 4 followed, see pp. 366 – 73 and p. 45. Op. 27 ends.",
            [
                "He led No. 2 Squadron in 1941.",
                "Nos. 3 and 4 followed, see pp. 366 – 73 and p. 45.",
                "Op. 27 ends.",
            ],
        ),
        (
            "Is it round? No. It is flat. Say no. Then go.",
            ["Is it round?", "No.", "It is flat.", "Say no.", "Then go."],
        ),
        (
            "Vol. II is out. Mr. Smith read Vol. 3 at St. Ives.",
            ["Vol. II is out.", "Mr. Smith read Vol. 3 at St. Ives."],
        ),
        ("他说：“你好。”然后走了！真的？是的。", ["他说：“你好。”", "然后走了！", "真的？", "是的。"]),
        ("「完了。」『好！』（注：见上。）后文", ["「完了。」", "『好！』", "（注：见上。）", "后文"]),
        ("NFKC后的感叹号!问号?句号. 下一句", ["NFKC后的感叹号!", "问号?", "句号.", "下一句"]),
        ("《世本.帝王世本》有记载。", ["《世本.帝王世本》有记载。"]),
        ("Python是一种语言。It is popular. 很流行。", ["Python是一种语言。", "It is popular.", "很流行。"]),
        ("", []),
        ("   ", []),
    ],
)
def test_split_sentences_cases(paragraph: str, expected: list[str]) -> None:
    assert split_sentences(paragraph) == expected


@settings(max_examples=300, deadline=None)
@given(st.text(alphabet=st.sampled_from(list("ab Mr.!?。！？”」\"' ABC12中文\n")), max_size=80))
def test_split_sentences_loses_nothing(paragraph: str) -> None:
    sentences = split_sentences(paragraph)
    assert _WS.sub("", "".join(sentences)) == _WS.sub("", paragraph)
    assert all(s and s == s.strip() for s in sentences)


def test_document_is_frozen() -> None:
    doc = Document(id="x", sentences=("A.", "B."))
    with pytest.raises(AttributeError):
        doc.id = "y"  # type: ignore[misc]


# --- real corpora ----------------------------------------------------------------------------------------------


def test_alice_sentences(corpora: Path) -> None:
    sentences = _book_sentences(corpora / "gutenberg" / "carroll-alice.txt")
    # NLTK's punkt finds about 1,600 sentences in this book; quotes and chapter headings make ours a bit fewer.
    assert 1200 <= len(sentences) <= 2000
    assert not [s for s in sentences if s.split()[-1].rstrip(".") in ABBREVIATIONS and s.endswith(".")]
    starts = sum(bool(re.match(r"[\"'(\[]*[A-Z0-9]", s)) for s in sentences)
    assert starts / len(sentences) > 0.97
    assert max(len(s) for s in sentences) < 2500


def test_wikitext_keeps_numbered_units_whole(corpora: Path) -> None:
    """WikiText's RAAF articles name units "No. 2 Squadron" (50 of them): none may end a sentence."""
    lines = normalize((corpora / "wikitext2-valid.raw.txt").read_text(encoding="utf-8")).split("\n")
    sentences = [s for line in lines if line.strip() for s in split_sentences(line.strip())]
    ends = [
        s for s in sentences if re.search(r"\b(\w+)\.$", s) and s.split()[-1][:-1] in NUMBER_ABBREVIATIONS
    ]
    assert not ends
    numbered = sum(line.count("No. ") for line in lines)
    assert numbered > 40 and sum(s.count("No. ") for s in sentences) == numbered
    assert 8000 <= len(sentences) <= 9500  # 8,719 (8,770 when "No." still ended sentences)


def test_emma_keeps_titles_inside_sentences(corpora: Path) -> None:
    path = corpora / "gutenberg" / "austen-emma.txt"
    sentences = _book_sentences(path)
    assert 6000 <= len(sentences) <= 11000
    assert not [s for s in sentences if re.search(r"\b(Mr|Mrs|Dr)\.$", s)]
    paragraphs = " ".join(join_wrapped_lines(normalize(path.read_bytes().decode()).split("\n")))
    assert sum(s.count("Mr. Knightley") for s in sentences) == paragraphs.count("Mr. Knightley") > 300


def test_moby_dick_crlf(corpora: Path) -> None:
    assert b"\r\n" in (corpora / "gutenberg" / "melville-moby_dick.txt").read_bytes()
    sentences = _book_sentences(corpora / "gutenberg" / "melville-moby_dick.txt")
    assert all("\r" not in s and "\n" not in s for s in sentences)
    assert 7000 <= len(sentences) <= 12000


def test_zhwiki_lines_are_sentences(corpora: Path) -> None:
    text = normalize((corpora / "zhwiki_bert_sampled.txt").read_bytes().decode("utf-8"))
    docs = [block.split("\n") for block in text.split("\n\n") if block.strip()]
    assert len(docs) == 2500
    lines = [line for doc in docs for line in doc if line.strip()]
    # The corpus is one sentence per line: a line should come back whole ...
    whole = sum(split_sentences(line) == [line.strip()] for line in lines)
    assert whole / len(lines) > 0.99
    # ... and the lines of a document, glued together without spaces, should be cut again where a line ended in
    # sentence-final punctuation (headings such as "内容及形式" cannot be told apart from the next sentence).
    glued = [split_sentences("".join(line.strip() for line in doc)) for doc in docs]
    final = sum(bool(re.search(r"[。!?]\W*$", line)) for line in lines)
    assert final <= sum(map(len, glued)) <= len(lines)
