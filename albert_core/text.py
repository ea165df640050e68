"""Text utilities before tokenization: normalisation, paragraph joining, sentence splitting.

The ALBERT reference (google-research/albert `create_pretraining_data.py`) expects one sentence per line and a
blank line between documents, because SOP segments are built from whole sentences. Real corpora rarely come that
way (DESIGN.md "Text layouts"), so ingestion normalises text, joins hard-wrapped lines into paragraphs
(`join_wrapped_lines`) and splits paragraphs into sentences (`split_sentences`) for English and Chinese prose.

All functions are pure and regex-based: no model, no locale, same output on every machine.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Iterable
from dataclasses import dataclass


@dataclass(frozen=True)
class Document:
    """One document as the pipeline sees it after sentence splitting: a stable id and its sentences in order.

    The id is the key every random choice of the SOP builder derives from (see `albert_core.pretraining_data`),
    so it must not depend on read order (for example `stdlib:json/decoder.py`, or a path plus an offset).
    """

    id: str
    sentences: tuple[str, ...]


# --- normalisation ---------------------------------------------------------------------------------------------

# Category Cc except \t and \n (\r is gone after newline folding), the BOM/zero-width no-break space that editors
# leave at the start of files, and lone surrogates that `surrogateescape` decoding leaves behind (they cannot be
# encoded to UTF-8 later, e.g. when writing Parquet).
_REMOVED = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f\ufeff\ud800-\udfff]")


def normalize_counted(text: str) -> tuple[str, int]:
    """`normalize` that also returns how many characters it removed (for per-step counts in manifests)."""
    text = text.replace("\r\n", "\n").replace("\r", "\n")
    # NFKC folds full-width ASCII (Ａ１！), compatibility ligatures and half-width kana, as SentencePiece's default
    # `nmt_nfkc` rule would later anyway; doing it here makes dedup and sentence splitting see the same text.
    text = unicodedata.normalize("NFKC", text)
    return _REMOVED.subn("", text)


def normalize(text: str) -> str:
    """CRLF/CR → LF, Unicode NFKC, then drop control characters (NUL included) except newline and tab."""
    return normalize_counted(text)[0]


# --- paragraphs ------------------------------------------------------------------------------------------------

# Han (incl. extension A and compatibility ideographs), kana and CJK punctuation: scripts written without spaces.
_CJK = "\u3000-\u303f\u3040-\u30ff\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff\uff00-\uffef"
_IS_CJK = re.compile(f"[{_CJK}]")


def join_wrapped_lines(lines: Iterable[str]) -> list[str]:
    """Turn hard-wrapped prose (blank line between paragraphs) into one string per paragraph.

    Lines are stripped and joined with one space, except between two CJK characters, where a line break is not a
    word break (hard-wrapped Chinese has no spaces). Whitespace-only lines end a paragraph.
    """
    paragraphs: list[str] = []
    current: list[str] = []
    for raw in lines:
        line = raw.strip()
        if not line:
            if current:
                paragraphs.append("".join(current))
                current = []
            continue
        if current and not (_IS_CJK.match(current[-1][-1]) and _IS_CJK.match(line[0])):
            current.append(" ")
        current.append(line)
    if current:
        paragraphs.append("".join(current))
    return paragraphs


# --- sentences -------------------------------------------------------------------------------------------------

# Closing quotes and brackets stay with the sentence they close: `"Stop!" He`, `……。”他`, `（完）。」`.
_CLOSE = "\"'’”»」』）)\\]】》〉"
_OPEN = "\"'“‘«「『（(\\[【《〈"
_UPPER = "A-Z0-9\u00c0-\u00d6\u00d8-\u00de"

_BOUNDARY = re.compile(
    # Chinese/Japanese: 。！？ (and the half-width ｡), or ASCII !? right after a CJK character (NFKC has turned
    # ！？ into !?). No space follows in Chinese, so none is required. A "." after a CJK character (NFKC of ．)
    # ends a sentence only before whitespace or a closer: inside a line it separates titles (世本.帝王世本), and
    # "......" is NFKC's ellipsis (……), which rarely ends a Chinese sentence.
    rf"(?:[。｡！？]+|(?<=[{_CJK}])[!?]+|(?<=[{_CJK}])[.．](?=[\s{_CLOSE}]|$))[{_CLOSE}]*\s*"
    # English: .!? (runs such as ?! or ... included), closers, whitespace, and then something that can start a
    # sentence: a capital, a digit, an opening quote/bracket or a CJK character (mixed text).
    rf"|(?P<en>[.!?]+)[{_CLOSE}]*\s+(?=[{_OPEN}{_UPPER}{_CJK}])"
)

# Words after which "." does not end a sentence (case-sensitive, without the final dot). Deliberately short: each
# entry trades a missed boundary for a false one.
ABBREVIATIONS = frozenset(
    {"Mr", "Mrs", "Ms", "Messrs", "Dr", "Prof", "Rev", "Hon", "St", "Mt", "Gen", "Col", "Capt", "Lt", "Sgt"}
    | {"Sr", "Jr", "Fig", "Vol", "vs", "etc", "cf", "viz", "al", "approx"}
)
# Words that abbreviate only before a number: "No. 2 Squadron", "Nos. 3 and 4", "pp. 366", "Op. 27". Before a
# capital they usually end a sentence ("Is it round? No. It is true."), so they stay boundaries there.
NUMBER_ABBREVIATIONS = frozenset(
    {"No", "Nos", "no", "nos", "Vols", "vol", "vols", "p", "pp", "Op", "op"}
    | {"Ch", "ch", "Figs", "fig", "figs"}
)
_TERMINATOR = re.compile(r"[.!?。｡！？．]")  # every boundary of _BOUNDARY holds one of these
_DOTTED = re.compile(r"(?:[A-Za-z]\.)+[A-Za-z]")  # e.g, i.e, U.S, a.m: dotted abbreviations
_LAST_WORD = re.compile(r"[A-Za-z.]+$")  # letters and dots before the final ".": "--Mr", "(e.g"


def _is_abbreviation(text: str, end: int, after: int) -> bool:
    """Whether the word that ends at `end` (just before a single ".") is an abbreviation or an initial; `after`
    is where the next sentence would start."""
    m = _LAST_WORD.search(text, max(0, end - 40), end)
    if m is None:
        return False
    word = m.group()
    if word in ABBREVIATIONS or _DOTTED.fullmatch(word):
        return True
    if word in NUMBER_ABBREVIATIONS:
        return text[after : after + 1].isdigit()
    # A single capital is an initial (J. R. R. Tolkien), but "I." usually ends a sentence.
    return len(word) == 1 and word.isupper() and word != "I"


def split_sentences(paragraph: str) -> list[str]:
    """Split one paragraph into sentences (English, Chinese, or both mixed); returns stripped, non-empty strings.

    English: a boundary follows `.`, `!` or `?` (plus any closing quotes/brackets) when whitespace and then a
    capital, digit, opening quote/bracket or CJK character follow, unless the `.` ends an abbreviation from
    `ABBREVIATIONS`, a dotted abbreviation (e.g., i.e., U.S.), a single-letter initial, or a word of
    `NUMBER_ABBREVIATIONS` before a digit ("No. 2").
    Chinese: a boundary follows `。！？` (and `｡`), `!?` right after a CJK character, or a `.` after a CJK
    character at the end of a clause (before whitespace, a closer or the end), plus closing quotes/brackets such
    as `”」』）`; no whitespace is needed.
    """
    body = paragraph.rstrip()
    if _TERMINATOR.search(body, 0, len(body) - 1) is None:
        # Fast path (most lines of sentence-per-line corpora): a boundary needs a terminator, and one that ends the
        # paragraph only ends the one sentence.
        body = body.strip()
        return [body] if body else []
    sentences: list[str] = []
    start = 0
    for m in _BOUNDARY.finditer(paragraph):
        if m.group("en") == "." and _is_abbreviation(paragraph, m.start(), m.end()):
            continue
        sentence = paragraph[start : m.end()].strip()
        if sentence:
            sentences.append(sentence)
        start = m.end()
    tail = paragraph[start:].strip()
    if tail:
        sentences.append(tail)
    return sentences
