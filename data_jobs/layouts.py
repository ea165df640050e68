"""From a file's bytes (or a row's text) to documents: the per-file steps of ingestion, with no Ray in them.

Steps, in order: decode (strict UTF-8, `auto` detection or a named codec; binary files refused), split lines with
their byte positions, quarantine lines over the size limit, normalise (`albert_core.text.normalize_counted`),
detect the layout, group lines into documents, join paragraphs and split sentences. The results are rows of
`ITEM_SCHEMA`, one stream for three kinds of output: documents, quarantined items (reason, step, position, raw
bytes) and one `counts` row per source and task, which add up to
`lines_in = lines_accepted + lines_quarantined + separators` (rows instead of lines for Parquet, HF, builtin).
`data_jobs.sources` runs these steps in Ray tasks.

Layouts met in real corpora (DESIGN.md "Text layouts", ../shared/corpora/README.md):

- `sentences`: one sentence per line, a blank line between documents (the ALBERT/BERT input, zhwiki_bert_sampled).
- `paragraphs`: one paragraph per line, a blank line between documents.
- `wikitext`: one paragraph per line; ` = Title = ` lines start documents, ` = = Section = = ` lines sit inside
  them, and whitespace-only lines pad everything (WikiText-2 raw).
- `wrapped`: hard-wrapped prose, a blank line between paragraphs, the whole file one document (Gutenberg books).
- `documents`: one document per line (zhwiki_sampled, most JSONL/Parquet text columns).

Every line is text (it goes into a document), a separator (blank lines, and WikiText's title and section lines,
which mark boundaries and are not text) or quarantined, so a file's line counts always add up.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections import Counter, defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, get_args

import pyarrow as pa

from albert_core.text import join_wrapped_lines, normalize_counted, split_sentences
from data_jobs.config import Layout
from data_jobs.corpus import RAW_LIMIT

if TYPE_CHECKING:
    from data_jobs.config import IngestConfig

LAYOUTS: tuple[Layout, ...] = get_args(Layout)
DOC, QUARANTINE, COUNTS = "doc", "quarantine", "counts"
ITEM_SCHEMA = pa.schema(
    [
        ("kind", pa.string()),  # DOC, QUARANTINE or COUNTS
        ("source", pa.string()),
        ("ordinal", pa.int64()),  # documents: position in the source (with `source`, the dedup tie-break)
        ("id", pa.string()),
        ("sentences", pa.list_(pa.string())),
        ("content_hash", pa.string()),
        ("line", pa.int64()),  # quarantine: as in QUARANTINE_SCHEMA
        ("offset", pa.int64()),
        ("step", pa.string()),
        ("reason", pa.string()),
        ("raw", pa.binary()),
        ("counts", pa.string()),  # COUNTS: JSON object of per-source counts
    ]
)

# Binary files: more than 5% of the first 64 KiB (and at least 16 bytes) are C0 control bytes other than tab, line
# breaks, form feed and escape. Random bytes have about 10%, UTF-16 text about 50%, real text almost none (a few
# stray NULs or bells are removed and counted by normalisation instead).
BINARY_SAMPLE = 64 * 1024
BINARY_SHARE = 0.05
BINARY_MIN_CONTROLS = 16
_CONTROL_BYTES = bytes([*range(0x00, 0x09), *range(0x0E, 0x1B), *range(0x1C, 0x20), 0x7F])
_FIRST_CONTROL = re.compile(b"[" + re.escape(_CONTROL_BYTES) + b"]")
_BREAK = re.compile(r"\r\n|\r|\n")
_BREAK_BYTES = re.compile(rb"\r\n|\r|\n")
# On short Western European text charset-normalizer's "chaos" scores for cp1252, cp1250, cp1257 or mac_latin2
# differ by about 0.01 (French in Latin-1 comes out as cp1257, è as č). Candidates within CHAOS_MARGIN of the best
# count as a tie, and ties go to the encodings below, in this order (cp1252 is what browsers assume for
# undeclared 8-bit text).
CHAOS_MARGIN = 0.02
PREFERRED_ENCODINGS = ("utf_8", "cp1252", "latin_1")

# Matched against stripped lines: "= Homarus gammarus =" is a title, "= = Description = =" a section heading.
_TITLE = re.compile(r"^= (?!=).*\S =$")
_SECTION = re.compile(r"^(?:= ){2,}.*(?: =){2,}$")
# A line that ends a sentence: final punctuation, then any closing quotes or brackets.
_ENDS_SENTENCE = re.compile(r"[.!?。！？][\"'’”»」』）)\]]*$")

# Detection thresholds, measured on ../shared/corpora: Gutenberg books have 72-90% of their lines 50-80
# characters long and 17-33% ending a sentence; WikiText and zhwiki have under 20% such lines. zhwiki averages
# 1.0 sentence per line, WikiText paragraphs 3.6.
WRAP_WIDTH = (50, 80)
MIN_WRAPPED_SHARE = 0.5
MAX_WRAPPED_ENDINGS = 0.5
MAX_SENTENCES_PER_LINE = 1.5
DETECT_SAMPLE = 2000  # lines whose sentences are counted (spread over the file)


def is_title(stripped: str) -> bool:
    """A WikiText ` = Title = ` line (stripped), which starts a document."""
    return bool(_TITLE.match(stripped))


# --- items ------------------------------------------------------------------------------------------------------


def content_hash(sentences: Sequence[str]) -> str:
    return hashlib.sha256("\n".join(sentences).encode("utf-8")).hexdigest()


class Items:
    """The rows one task emits (documents, quarantined items, counts), as columns of `ITEM_SCHEMA`."""

    def __init__(self) -> None:
        self.columns: dict[str, list[Any]] = {name: [] for name in ITEM_SCHEMA.names}
        self.reasons: dict[str, Counter[str]] = defaultdict(Counter)

    def _add(self, **values: Any) -> None:
        for name, column in self.columns.items():
            column.append(values.get(name))

    def doc(self, source: str, ordinal: int, sentences: list[str], doc_id: str | None = None) -> None:
        doc_id = doc_id or f"{source}:{ordinal}"
        digest = content_hash(sentences)
        self._add(
            kind=DOC, source=source, ordinal=ordinal, id=doc_id, sentences=sentences, content_hash=digest
        )

    def quarantine(
        self, source: str, step: str, reason: str, raw: bytes, line: int = -1, offset: int = -1
    ) -> None:
        raw = raw[:RAW_LIMIT]
        self._add(kind=QUARANTINE, source=source, step=step, reason=reason, raw=raw, line=line, offset=offset)
        self.reasons[source][reason] += 1

    def counts(self, source: str, **counts: Any) -> None:
        """Per-source counts of this task, with the quarantine reasons recorded so far for the source."""
        counts["quarantined"] = dict(self.reasons.pop(source, {}))
        self._add(kind=COUNTS, source=source, counts=json.dumps(counts))

    def table(self) -> pa.Table:
        return pa.Table.from_pydict(self.columns, schema=ITEM_SCHEMA)


# --- decoding ---------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Refusal:
    """Why a whole file was not decoded, and the byte offset where that was found."""

    reason: str
    offset: int = -1


def looks_binary(raw: bytes) -> bool:
    head = raw[:BINARY_SAMPLE]
    controls = len(head) - len(head.translate(None, _CONTROL_BYTES))
    return controls >= BINARY_MIN_CONTROLS and controls > BINARY_SHARE * len(head)


def decode(raw: bytes, encoding: str) -> tuple[str, str] | Refusal:
    """(text, encoding used) or a Refusal. `encoding`: "utf-8" (strict), "auto" (UTF-8, else charset-normalizer's
    best guess) or a codec name (taken as given: no binary check, since e.g. UTF-16 is full of NULs)."""
    if encoding in ("utf-8", "auto") and looks_binary(raw):
        return Refusal("binary", _FIRST_CONTROL.search(raw).start())  # type: ignore[union-attr]
    codec = "utf-8" if encoding == "auto" else encoding
    try:
        return raw.decode(codec), codec
    except UnicodeDecodeError as e:
        if encoding != "auto":
            return Refusal("not_utf8" if encoding == "utf-8" else "decode_error", e.start)
        first_error = e.start
    import charset_normalizer

    matches = charset_normalizer.from_bytes(raw)
    best = matches.best()
    if best is None:
        return Refusal("unknown_encoding", first_error)
    tied = [m for m in matches if m.chaos <= best.chaos + CHAOS_MARGIN]
    for name in PREFERRED_ENCODINGS:
        best = next((m for m in tied if m.encoding == name), best)
    return str(best), best.encoding


def _spans(raw: bytes) -> list[tuple[int, int]]:
    """(start, end) byte offsets of each line, without its line break; a final break ends the last line."""
    spans, start = [], 0
    for m in _BREAK_BYTES.finditer(raw):
        spans.append((start, m.start()))
        start = m.end()
    if start < len(raw):
        spans.append((start, len(raw)))
    return spans


def split_lines(text: str, raw: bytes, encoding: str) -> tuple[list[str], bytes, list[tuple[int, int]]]:
    """Lines of the decoded text with their byte spans in `raw`. When line breaks are not the ASCII bytes in the
    source (UTF-16/32, EBCDIC), spans refer to the UTF-8 encoding of the text, which is returned as `raw`."""
    lines = _BREAK.split(text)
    if lines[-1] == "":
        lines.pop()
    spans = _spans(raw)
    if len(spans) != len(lines) or not "\r\n".encode(encoding).endswith(b"\r\n"):
        raw = text.encode("utf-8")
        spans = _spans(raw)
    return lines, raw, spans


def _decoded_lines(
    raw: bytes, source: str, cfg: IngestConfig, items: Items, offset: int
) -> tuple[list[str], bytes, list[tuple[int, int]], str] | None:
    """Decode step shared by text and JSONL files: a file (or a range of one, `offset` bytes in) that fails is
    quarantined whole (None returned)."""
    result = decode(raw, cfg.encoding)
    if isinstance(result, Refusal):
        items.quarantine(source, "decode", result.reason, raw, offset=offset + result.offset)
        lines = len(_spans(raw))
        items.counts(source, bytes=len(raw), lines_in=lines, lines_quarantined=lines, encoding=None)
        return None
    text, encoding = result
    return *split_lines(text, raw, encoding), encoding


# --- layouts ----------------------------------------------------------------------------------------------------


def detect_layout(lines: Sequence[str]) -> Layout:
    """Guess the layout of a file from its (normalised) lines.

    wikitext if at least two lines are ` = Title = ` headings; wrapped if most lines are 50-80 characters long and
    most of them do not end a sentence; documents if no line is blank; otherwise sentences when lines hold about
    one sentence each (≤1.5 on average), paragraphs when they hold more.
    """
    text = [line.strip() for line in lines if line.strip()]
    if not text:
        return "documents"
    if sum(1 for line in text if is_title(line)) >= 2:
        return "wikitext"
    low, high = WRAP_WIDTH
    wrapped = sum(low <= len(line) <= high for line in text) / len(text)
    endings = sum(bool(_ENDS_SENTENCE.search(line)) for line in text) / len(text)
    if wrapped >= MIN_WRAPPED_SHARE and endings < MAX_WRAPPED_ENDINGS:
        return "wrapped"
    if len(text) == len(lines):
        return "documents"
    sample = text[:: max(1, len(text) // DETECT_SAMPLE)]
    per_line = sum(len(split_sentences(line)) for line in sample) / len(sample)
    return "sentences" if per_line <= MAX_SENTENCES_PER_LINE else "paragraphs"


def group_documents(lines: Sequence[str | None], layout: Layout) -> tuple[list[list[str]], int]:
    """Group lines into documents; returns (documents as lists of their lines, number of separator lines).

    `None` marks a quarantined line: it is neither text nor a boundary. Blank lines are separators in every
    layout; in `wrapped` they also stay inside the document, because they end its paragraphs.
    """
    documents: list[list[str]] = []
    current: list[str] = []
    separators = 0
    for line in lines:
        if line is None:
            continue
        stripped = line.strip()
        title = layout == "wikitext" and is_title(stripped)
        if title or not stripped or (layout == "wikitext" and _SECTION.match(stripped)):
            separators += 1
            if current and (title or layout in ("sentences", "paragraphs")):
                documents.append(current)
                current = []
            elif current and layout == "wrapped":
                current.append("")
        elif layout == "documents":
            documents.append([stripped])
        else:
            current.append(stripped)
    if current:
        documents.append(current)
    return documents, separators


def document_sentences(lines: Sequence[str], layout: Layout, pre_split: bool) -> list[str]:
    """Sentences of one document: lines joined into paragraphs (hard-wrapped ones in `wrapped`, otherwise one
    paragraph per line), each paragraph split; with `pre_split`, every non-blank line is one sentence as is."""
    if pre_split:
        return [line.strip() for line in lines if line.strip()]
    if layout == "wrapped":
        paragraphs = join_wrapped_lines(lines)
    else:
        paragraphs = [line.strip() for line in lines if line.strip()]
    return [sentence for paragraph in paragraphs for sentence in split_sentences(paragraph)]


# --- per-file and per-row steps ---------------------------------------------------------------------------------


def text_items(raw: bytes, source: str, cfg: IngestConfig, items: Items, offset: int = 0) -> None:
    """A text file: decode, quarantine long lines, normalise, detect the layout, group and split documents."""
    decoded = _decoded_lines(raw, source, cfg, items, offset)
    if decoded is None:
        return
    lines, raw, spans, encoding = decoded
    kept: list[str | None] = []
    removed = 0
    for number, (line, (start, end)) in enumerate(zip(lines, spans, strict=True), start=1):
        if end - start > cfg.max_line_bytes:
            items.quarantine(
                source, "lines", "line_too_long", raw[start:end], line=number, offset=offset + start
            )
            kept.append(None)
            continue
        text, n = normalize_counted(line)
        removed += n
        kept.append(text)
    layout = cfg.layout or detect_layout([line for line in kept if line is not None])
    documents, separators = group_documents(kept, layout)
    stats: Counter[str] = Counter()
    for doc_lines in documents:
        _add_document(
            document_sentences(doc_lines, layout, cfg.pre_split), source, stats["documents"], items, stats
        )
    items.counts(
        source,
        bytes=len(raw),
        lines_in=len(lines),
        lines_accepted=sum(1 for doc in documents for line in doc if line),
        lines_quarantined=kept.count(None),
        separators=separators,
        control_chars_removed=removed,
        layout=layout,
        encoding=encoding,
        **stats,
    )


def _add_document(sentences: list[str], source: str, ordinal: int, items: Items, stats: Counter[str]) -> None:
    """Emit a document, or count it when it has no sentences (then it is not a document)."""
    if sentences:
        items.doc(source, ordinal, sentences)
        stats["documents"] += 1
        stats["sentences"] += len(sentences)
    else:
        stats["empty_documents"] += 1


def _row_document(
    text: str | None, source: str, ordinal: int, cfg: IngestConfig, items: Items, stats: Counter[str]
) -> None:
    """One row is one document; its lines are paragraphs (hard-wrapped ones with `--layout wrapped`). A null or
    blank value gives an empty document."""
    normalized, removed = normalize_counted(text or "")
    stats["control_chars_removed"] += removed
    sentences = document_sentences(normalized.split("\n"), cfg.layout or "documents", cfg.pre_split)
    _add_document(sentences, source, ordinal, items, stats)


def _json_text(line: str, field: str) -> tuple[str | None, str | None]:
    """(text, None) for a good JSONL row, else (None, reason)."""
    try:
        row = json.loads(line)
    except (ValueError, RecursionError):
        return None, "bad_json"
    if not isinstance(row, dict) or field not in row:
        return None, "missing_field"
    if not isinstance(row[field], str):
        return None, "not_string"
    return row[field], None


def jsonl_items(raw: bytes, source: str, cfg: IngestConfig, items: Items, offset: int = 0) -> None:
    """A JSONL file: decode, then one document per row; bad rows are quarantined with their line number."""
    decoded = _decoded_lines(raw, source, cfg, items, offset)
    if decoded is None:
        return
    lines, raw, spans, encoding = decoded
    stats: Counter[str] = Counter()
    row = 0
    for number, (line, (start, end)) in enumerate(zip(lines, spans, strict=True), start=1):
        if not line.strip():
            stats["separators"] += 1
            continue
        text, problem = (
            (None, "line_too_long") if end - start > cfg.max_line_bytes else _json_text(line, cfg.text_field)
        )
        if problem:
            items.quarantine(source, "parse", problem, raw[start:end], line=number, offset=offset + start)
            stats["lines_quarantined"] += 1
        else:
            _row_document(text, source, row, cfg, items, stats)
            stats["lines_accepted"] += 1
        row += 1  # quarantined rows keep their ordinal, so fixing one does not renumber the others
    layout = cfg.layout or "documents"
    items.counts(source, bytes=len(raw), lines_in=len(lines), layout=layout, encoding=encoding, **stats)


def row_items(texts: list[str | None], rows: list[int], source: str, cfg: IngestConfig, items: Items) -> None:
    """Rows of a Parquet or HF text column: one document each, ordinal = row number in the source."""
    stats: Counter[str] = Counter()
    for text, row in zip(texts, rows, strict=True):
        _row_document(text, source, row, cfg, items, stats)
    layout = cfg.layout or "documents"
    items.counts(source, lines_in=len(texts), lines_accepted=len(texts), layout=layout, **stats)
