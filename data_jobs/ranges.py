"""Cutting a large text or JSONL file into byte ranges that many tasks read in parallel.

A range `[start, end)` owns the lines from the first *cut* at or after `start` to the first cut at or after `end`
(the file's first and last byte are cuts). A cut is a line start where grouping lines into documents begins
afresh, so the documents of each range's lines are exactly those the whole file gives:

- `documents` and JSONL: every line start (each line is a document or a row);
- `sentences` and `paragraphs`: a line start right after a blank line (a blank line ends the document before it);
- `wikitext`: a ` = Title = ` line (a title ends the document before it and starts the next one);
- `wrapped`: none (the whole file is one document), so wrapped files are never split.

The two ranges beside a cut find it with the same call (`first_cut(f, end)` of the one is `first_cut(f, start)`
of the other), so every line is owned by exactly one range. Judging a line reads at most `CUT_LINE_BYTES` of it;
a longer line is never blank nor a title here, which only moves a cut further on, never makes a wrong one.
Nothing here depends on the range size but where the files are cut, so documents and counts are the same for any
range size (tested).
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import BinaryIO

from albert_core.text import normalize_counted
from data_jobs.layouts import Layout, is_title

CUT_LINE_BYTES = 4096  # the longest line judged blank or a title when looking for a cut
SCAN_BYTES = 256 * 1024  # first read when looking for a cut; doubled until one is found
SAMPLE_WINDOWS = 8  # layout and encoding detection read this many windows, spread over the file ...
SAMPLE_WINDOW_BYTES = 256 * 1024  # ... of this size each
_BREAK_BYTES = re.compile(rb"\r\n|\r|\n")

# (previous line or None when it is longer than CUT_LINE_BYTES or before the file, line) -> is a cut before `line`
CutRule = Callable[[bytes | None, bytes], bool]


def splittable(layout: Layout, codec: str) -> bool:
    """Whether files of this layout in this encoding can be cut at line breaks found as bytes."""
    return layout != "wrapped" and "\r\n".encode(codec) == b"\r\n"


def cut_rule(layout: Layout | None, codec: str, max_line_bytes: int) -> CutRule:
    """The cut rule for a layout (None: JSONL, one row per line)."""
    limit = min(CUT_LINE_BYTES, max_line_bytes)  # a longer line may be quarantined: not blank, not a title

    def text(line: bytes) -> str | None:
        return None if len(line) > limit else normalize_counted(line.decode(codec, "replace"))[0].strip()

    if layout is None or layout == "documents":
        return lambda previous, line: True
    if layout in ("sentences", "paragraphs"):
        return lambda previous, line: previous is not None and text(previous) == ""
    if layout == "wikitext":
        return lambda previous, line: (t := text(line)) is not None and is_title(t)
    raise ValueError(f"{layout} files are not split")


def first_cut(f: BinaryIO, pos: int, size: int, is_cut: CutRule) -> int:
    """The first cut at or after byte `pos` of the file `f` of `size` bytes (0 and `size` are cuts)."""
    if pos <= 0 or pos >= size:
        return max(0, min(pos, size))
    low = max(0, pos - CUT_LINE_BYTES - 2)  # enough to see the whole line before `pos` when it is short
    step = SCAN_BYTES
    while True:
        high = min(size, pos + step)
        f.seek(low)
        buf = f.read(high - low)
        at_eof = high == size
        breaks = [(m.start(), m.end()) for m in _BREAK_BYTES.finditer(buf)]
        if not at_eof and buf.endswith(b"\r"):
            breaks.pop()  # perhaps the first half of a \r\n
        # line i starts at starts[i] and ends (before its break) at ends[i]
        starts = ([0] if low == 0 else []) + [end for _, end in breaks]
        ends = [start for start, _ in breaks] + ([len(buf)] if at_eof else [])
        if low > 0:
            ends = ends[1:]  # the line ending at the first break started before `low`
        for i, start in enumerate(starts):
            if low + start < pos:
                continue
            if low + start == size:
                return size
            if i < len(ends):
                line = buf[start : ends[i]]
            elif len(buf) - start > CUT_LINE_BYTES:
                line = buf[start:]  # runs past what was read, but is long: judged as the whole line would be
            else:
                break  # read more
            previous = buf[starts[i - 1] : ends[i - 1]] if i > 0 else None
            if is_cut(previous, line):
                return low + start
        if at_eof:
            return size
        step *= 2


def owned_span(f: BinaryIO, start: int, end: int, size: int, is_cut: CutRule) -> tuple[int, int]:
    """The bytes `[a, b)` that the range `[start, end)` owns (a == b when no cut falls inside it)."""
    a = first_cut(f, start, size, is_cut)
    b = first_cut(f, end, size, is_cut) if end < size else size
    return a, max(a, b)


def plan_ranges(size: int, range_bytes: int) -> list[tuple[int, int]]:
    """Equal byte ranges of about `range_bytes` covering a file of `size` bytes."""
    n = max(1, -(-size // range_bytes))
    bounds = [size * i // n for i in range(n + 1)]
    return list(zip(bounds[:-1], bounds[1:], strict=True))


def sample_bytes(f: BinaryIO, size: int) -> bytes:
    """Whole lines from SAMPLE_WINDOWS windows spread evenly over the file, joined: what detection reads of a file
    too large to read whole. The first window starts the sample, so a binary check sees the file's head."""
    parts = []
    for i in range(SAMPLE_WINDOWS):
        offset = max(0, size - SAMPLE_WINDOW_BYTES) * i // (SAMPLE_WINDOWS - 1)
        f.seek(offset)
        window = f.read(SAMPLE_WINDOW_BYTES)
        if offset > 0:  # drop the partial first line
            first = _BREAK_BYTES.search(window)
            window = window[first.end() :] if first else b""
        if offset + len(window) < size:  # and the partial last one
            last = max(window.rfind(b"\n"), window.rfind(b"\r"))
            window = window[: last + 1] if last >= 0 else b""
        parts.append(window)
        if size <= SAMPLE_WINDOW_BYTES:
            break
    return b"".join(parts)
