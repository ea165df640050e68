"""The builtin demo corpus: English prose from the docstrings of the installed Python standard library.

`albert demo` must run offline and must not ship corpus text in the repository (DESIGN.md, "No network at run
time"), so the corpus is built at run time from text every machine already has. Each public stdlib module is one
document; its module, class and function docstrings are read with `ast` (modules are never imported: importing
runs code), cleaned with `inspect.cleandoc`, stripped of doctest sessions and the most common reST markup, joined
into paragraphs and split into sentences with `albert_core.text`. The help topics of `pydoc_data/topics.py` (the
language reference text behind `help("for")`, also read with `ast`) are one document per topic. Files are visited
in sorted path order and the walk stops at a byte budget, so two calls on one Python installation give identical
documents.

Size: CPython 3.11 holds about 1.6 MB of such text outside tests and GUI code (docstrings ≈1.1 MB, help topics
≈0.5 MB), so the default budget takes all of it; `max_bytes` cuts a deterministic prefix.
"""

from __future__ import annotations

import ast
import inspect
import os
import re
import sysconfig
from collections.abc import Iterable, Iterator
from pathlib import Path

from albert_core.errors import UserError
from albert_core.text import Document, join_wrapped_lines, normalize, split_sentences

# Test suites, GUI/demo code, third-party packages and the 2to3 fixers: code-heavy or not stdlib prose.
SKIPPED_DIRS = frozenset(
    {"test", "tests", "idlelib", "tkinter", "turtledemo", "site-packages", "dist-packages", "lib2to3"}
)
MIN_DOCSTRING_CHARS = 40  # shorter ones are mostly "Return self." or a signature
PYDOC_TOPICS = "pydoc_data/topics.py"
MIN_SENTENCES = 2  # SOP needs two segments; single-sentence documents would only feed negatives

_DOCTEST_PROMPT = re.compile(r"^\s*(>>>|\.\.\.)(\s|$)")
_UNDERLINE = re.compile(r"^\s*([=\-~^*#+`])\1{2,}\s*$")  # reST section underlines
_DIRECTIVE = re.compile(r"^\s*\.\. |::=")  # `.. note::`, `.. versionadded:: 3.2`, grammar productions
_ROLE = re.compile(r":[\w.+-]+(?::[\w.+-]+)*:`~?([^`]*)`")  # :func:`~os.path.join` -> os.path.join
_LITERAL = re.compile(r"``([^`]+)``")


def stdlib_root() -> Path:
    """Folder of the running interpreter's standard library (the base install, also inside a venv)."""
    return Path(sysconfig.get_paths()["stdlib"])


def _module_files(root: Path) -> list[Path]:
    """Public `.py` files under `root`, sorted by relative path; private names (`_x`) are skipped."""
    found = []
    for folder, dirs, files in os.walk(root):
        dirs[:] = [d for d in dirs if d not in SKIPPED_DIRS and not d.startswith(("_", "."))]
        for name in files:
            if name.endswith(".py") and (name == "__init__.py" or not name.startswith("_")):
                found.append(Path(folder) / name)
    return sorted(found, key=lambda path: path.relative_to(root).as_posix())


def _docstrings(tree: ast.Module) -> Iterator[str]:
    """Module docstring, then class/function docstrings in source order (nested ones included)."""
    stack: list[ast.AST] = [tree]
    while stack:
        node = stack.pop()
        doc = ast.get_docstring(node, clean=False)  # type: ignore[arg-type]
        if doc:
            yield doc
        defs = ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef
        stack.extend(reversed([child for child in getattr(node, "body", []) if isinstance(child, defs)]))


def _clean_lines(doc: str) -> list[str]:
    """Docstring lines without doctest sessions, reST underlines/directives and role markup."""
    lines: list[str] = []
    in_session = False  # doctest output runs from a prompt to the next blank line
    for line in inspect.cleandoc(doc).split("\n"):
        if not line.strip():
            in_session = False
        elif _DOCTEST_PROMPT.match(line):
            in_session = True
            continue
        if in_session or _UNDERLINE.match(line) or _DIRECTIVE.match(line):
            continue
        lines.append(_LITERAL.sub(r"\1", _ROLE.sub(r"\1", line)))
    return lines


def _sentences(texts: Iterable[str]) -> list[str]:
    """Sentences of docstring-like texts: normalised, cleaned, joined into paragraphs, split."""
    sentences: list[str] = []
    for text in texts:
        text = normalize(text)
        if len(text) < MIN_DOCSTRING_CHARS:
            continue
        for paragraph in join_wrapped_lines(_clean_lines(text)):
            sentences.extend(split_sentences(paragraph))
    return sentences


def _pydoc_topics(tree: ast.Module) -> list[tuple[str, str]]:
    """(topic, text) pairs of the `topics = {...}` literal in pydoc_data/topics.py, sorted by topic."""
    pairs = []
    for node in tree.body:
        if isinstance(node, ast.Assign) and isinstance(node.value, ast.Dict):
            for key, value in zip(node.value.keys, node.value.values, strict=True):
                if isinstance(key, ast.Constant) and isinstance(value, ast.Constant):
                    pairs.append((str(key.value), str(value.value)))
    return sorted(pairs)


def file_documents(path: Path, root: Path) -> list[Document]:
    """Documents of one stdlib source file (none when it cannot be parsed or has too little prose)."""
    try:
        tree = ast.parse(path.read_bytes(), filename=str(path))
    except (SyntaxError, ValueError, OSError):
        return []  # e.g. files kept for other Python versions
    doc_id = f"stdlib:{path.relative_to(root).as_posix()}"
    if path.relative_to(root).as_posix() == PYDOC_TOPICS:
        parts = [(f"{doc_id}#{topic}", _sentences([text])) for topic, text in _pydoc_topics(tree)]
    else:
        parts = [(doc_id, _sentences(_docstrings(tree)))]
    return [Document(id=i, sentences=tuple(s)) for i, s in parts if len(s) >= MIN_SENTENCES]


def text_bytes(sentence: str) -> int:
    """Size of a sentence in the one-sentence-per-line layout: UTF-8 bytes plus the newline."""
    return len(sentence.encode("utf-8")) + 1


def builtin_documents(max_bytes: int = 4_000_000) -> Iterator[Document]:
    """Stdlib docstring documents in sorted path order, at most `max_bytes` of text in all (see `text_bytes`).

    The document that would cross the budget is cut to the sentences that fit, and the walk stops there, so the
    corpus is a deterministic prefix of the full stdlib text (about 1.6 MB on CPython 3.11).
    """
    if max_bytes <= 0:
        raise UserError(f"max_bytes must be positive, got {max_bytes}")
    root = stdlib_root()
    used = 0
    for doc in (doc for path in _module_files(root) for doc in file_documents(path, root)):
        kept: list[str] = []
        for sentence in doc.sentences:
            size = text_bytes(sentence)
            if used + size > max_bytes:
                break
            kept.append(sentence)
            used += size
        if len(kept) == len(doc.sentences):
            yield doc
            continue
        if len(kept) >= MIN_SENTENCES:
            yield Document(id=doc.id, sentences=tuple(kept))
        return
