"""Named-entity data and scores, pure: reading tagged sentences, checking their BIO tags, a held-out part chosen by
a hash, labels aligned to SentencePiece pieces, and entity-level precision / recall / F1 (seqeval's default mode).

Input:
- CoNLL: one `token<TAB>tag` (or `token tag`) line per word; a sentence ends at a blank line or a line holding
  only whitespace (WNUT17's files end sentences with a single tab). Extra middle columns (POS, chunk) are allowed;
  the tag is the last column.
- JSONL: one object per sentence with `tokens` and `tags` lists of the same length.

Tags are BIO (`O`, `B-TYPE`, `I-TYPE`). Another scheme (`S-`, `E-`, `U-`, `L-`: BIOES / BILOU) is refused with the
line, never silently converted. An `I-TYPE` that does not continue an entity of its type (after `O`, at the start
of a sentence, after another type) starts a new entity, as seqeval reads it in its default mode and as the
CoNLL-2000 evaluation script does; such tags are counted (`repaired_i_tags`), not dropped.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from albert_core.errors import UserError
from albert_core.tagging import OUTSIDE, Entity, entities, first_pieces  # noqa: F401  (re-exported for the tests and callers)
from training.finetune_run import in_hashed_share

IGNORE = -100  # the loss skips padding, [CLS]/[SEP] and every piece of a word after its first


@dataclass(frozen=True)
class Sentence:
    tokens: tuple[str, ...]
    tags: tuple[str, ...]
    line: int  # where it starts in its file (1-based), for messages

    @property
    def key(self) -> str:
        return " ".join(self.tokens)


def read_tagged(path: str | Path) -> list[Sentence]:
    """Sentences of a CoNLL (`.conll`, `.txt`, `.tsv`, `.bio`) or JSONL (`.jsonl`) file, tags checked."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path} is not a file")
    sentences = _read_jsonl(path) if path.suffix in (".jsonl", ".ndjson") else _read_conll(path)
    if not sentences:
        raise UserError(f"{path} holds no tagged sentence")
    for sentence in sentences:
        check_tags(sentence, path)
    return sentences


def _read_conll(path: Path) -> list[Sentence]:
    sentences, tokens, tags, start = [], [], [], 1
    with open(path, encoding="utf-8") as f:
        for number, raw in enumerate(f, 1):
            line = raw.rstrip("\r\n")
            if not line.strip():  # a blank or whitespace-only line ends a sentence
                if tokens:
                    sentences.append(Sentence(tuple(tokens), tuple(tags), start))
                tokens, tags, start = [], [], number + 1
                continue
            columns = line.split("\t") if "\t" in line else line.split()
            columns = [c for c in columns if c != ""]
            if len(columns) < 2:
                raise UserError(f"{path}:{number}: a token line needs a token and a tag, got {line!r}")
            tokens.append(columns[0])
            tags.append(columns[-1])
    if tokens:
        sentences.append(Sentence(tuple(tokens), tuple(tags), start))
    return sentences


def _read_jsonl(path: Path) -> list[Sentence]:
    sentences = []
    with open(path, encoding="utf-8") as f:
        for number, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as e:
                raise UserError(f"{path}:{number}: not valid JSON ({e})") from None
            tokens, tags = (row.get(k) if isinstance(row, dict) else None for k in ("tokens", "tags"))
            if (
                not isinstance(tokens, list)
                or not isinstance(tags, list)
                or len(tokens) != len(tags)
                or not tokens
            ):
                raise UserError(
                    f"{path}:{number}: needs non-empty lists `tokens` and `tags` of the same length"
                )
            if not all(isinstance(t, str) and t.strip() for t in tokens) or not all(
                isinstance(t, str) for t in tags
            ):
                raise UserError(f"{path}:{number}: tokens must be non-empty strings and tags strings")
            sentences.append(Sentence(tuple(tokens), tuple(tags), number))
    return sentences


def check_tags(sentence: Sentence, path: Path) -> None:
    """BIO only: `O` or `B-`/`I-` with a type; the first offending tag is named with its line."""
    for i, tag in enumerate(sentence.tags):
        if tag == OUTSIDE:
            continue
        prefix, sep, kind = tag.partition("-")
        if not sep or not kind or prefix not in ("B", "I"):
            scheme = (
                " (BIOES/BILOU tags are not read: convert them to BIO)" if prefix in "SEUL" and sep else ""
            )
            where = (
                f"{path}:{sentence.line + i}"
                if path.suffix not in (".jsonl", ".ndjson")
                else f"{path}:{sentence.line}"
            )
            raise UserError(f"{where}: tag {tag!r} is not BIO (O, B-TYPE or I-TYPE){scheme}")


def repaired_i_tags(sentences: Sequence[Sentence]) -> int:
    """I- tags that start an entity rather than continue one (read as B-, counted, never dropped)."""
    count = 0
    for sentence in sentences:
        previous = OUTSIDE
        for tag in sentence.tags:
            if tag.startswith("I-") and previous.partition("-")[2] != tag[2:]:
                count += 1
            previous = tag
    return count


def labels_of(sentences: Sequence[Sentence]) -> list[str]:
    """Every tag, `O` first then by type and B before I, so label ids do not depend on the file's order."""
    kinds = sorted({tag[2:] for s in sentences for tag in s.tags if tag != OUTSIDE})
    return [OUTSIDE, *(f"{prefix}-{kind}" for kind in kinds for prefix in ("B", "I"))]


def held_out(sentence: Sentence, eval_share: float) -> bool:
    """The sentence belongs to the evaluation part: a hash of its words, so the split never depends on order,
    and a repeated tweet lands on one side only."""
    return in_hashed_share(sentence.key, eval_share)


def align(
    words: Iterable[list[int]], tags: Sequence[str], label_ids: dict[str, int], limit: int
) -> tuple[list[int], list[int], int]:
    """(piece ids, labels, words kept): the first piece of each word carries its tag's id, later pieces
    `IGNORE`; words are kept whole while `limit` pieces (without [CLS]/[SEP]) hold them (`first_pieces`, as the
    served tagger packs them)."""
    ids, firsts = first_pieces(words, limit)
    labels = [IGNORE] * len(ids)
    for first, tag in zip(firsts, tags, strict=False):  # the kept words: the first len(firsts) tags
        labels[first] = label_ids[tag]
    return ids, labels, len(firsts)


def entity_scores(
    truth: Sequence[Sequence[str]], predicted: Sequence[Sequence[str]]
) -> dict[str, dict[str, float]]:
    """Entity-level precision, recall, F1 and support per type and `micro` over all: an entity counts when its
    type and its exact span match (seqeval's default mode)."""
    hits: Counter[str] = Counter()
    gold: Counter[str] = Counter()
    guessed: Counter[str] = Counter()
    for true_tags, predicted_tags in zip(truth, predicted, strict=True):
        true_set = {(e.type, e.start, e.end) for e in entities(true_tags)}
        predicted_set = {(e.type, e.start, e.end) for e in entities(predicted_tags)}
        for kind, *_ in true_set:
            gold[kind] += 1
        for kind, *_ in predicted_set:
            guessed[kind] += 1
        for kind, *_ in true_set & predicted_set:
            hits[kind] += 1
    scores = {kind: _prf(hits[kind], guessed[kind], gold[kind]) for kind in sorted(gold | guessed)}
    scores["micro"] = _prf(sum(hits.values()), sum(guessed.values()), sum(gold.values()))
    return scores


def _prf(hits: int, guessed: int, gold: int) -> dict[str, float]:
    precision = hits / guessed if guessed else 0.0
    recall = hits / gold if gold else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return {"precision": precision, "recall": recall, "f1": f1, "support": gold}
