"""BIO tag sequences as entity spans: shared by named-entity training (`training.ner`) and the served model
(which loads with `albert_core` only)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

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
