"""Words as pieces and BIO tag sequences as entity spans: shared by named-entity training (`training.ner`) and the
served model (which loads with `albert_core` only), so both encode a sentence the same way."""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from albert_core.tokenizer import SentencePieceTokenizer

OUTSIDE = "O"


@dataclass(frozen=True)
class Entity:
    type: str
    start: int  # word index, inclusive
    end: int  # word index, exclusive


def entities(tags: Sequence[str]) -> list[Entity]:
    """Spans of a BIO sequence. An `I-TYPE` that does not continue an entity of its type (after `O`, first in the
    sentence, after another type) starts one, as seqeval reads it in its default mode."""
    found: list[Entity] = []
    kind, start = None, 0
    for i, tag in enumerate([*tags, OUTSIDE]):
        prefix, _, tag_kind = tag.partition("-")
        continues = prefix == "I" and tag_kind == kind
        if kind is not None and not continues:
            found.append(Entity(kind, start, i))
            kind = None
        if prefix in ("B", "I") and not continues:
            kind, start = tag_kind, i
    return found


def word_pieces(tokenizer: SentencePieceTokenizer, words: Iterable[str]) -> Iterator[list[int]]:
    """Each word encoded on its own, as it is needed; one SentencePiece drops entirely is [UNK], so it keeps its
    tag."""
    return (tokenizer.encode_one(word) or [tokenizer.unk_id] for word in words)


def first_pieces(words: Iterable[list[int]], limit: int) -> tuple[list[int], list[int]]:
    """(the pieces of the words that fit whole in `limit`, the index of each kept word's first piece); words past
    the limit are not drawn from `words`."""
    ids: list[int] = []
    firsts: list[int] = []
    for pieces in words:
        if len(ids) + len(pieces) > limit:
            break
        firsts.append(len(ids))
        ids += pieces
    return ids, firsts
