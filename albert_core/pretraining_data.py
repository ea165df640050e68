"""Sentence-order-prediction (SOP) instances and n-gram masking for ALBERT pretraining.

Faithful to google-research/albert `create_pretraining_data.py` (read at commit 0cf7f57), function by function:

- `create_instances_from_document` → `document_instances`: target length `max_seq_len - 3`, with probability
  `short_seq_prob` a shorter target uniform in [2, max] drawn once per document and pass; sentences accumulate
  into a chunk until it reaches the target (or the document ends); segment A is the first `a_end` sentences,
  `a_end` uniform in [1, len(chunk) - 1]; B is the rest, and with probability 0.5 A and B are swapped (label 1).
  A chunk of a single sentence gets B from a random other document, label 1 (`single_sentence_negatives`).
- `truncate_seq_pair` → `_truncate_seq_pair`: the longer side (B on ties) loses tokens from the front or the back
  at random until the pair fits.
- `create_masked_lm_predictions` → `_masked_lm`: whole-word n-grams, n ≤ `max_ngram` with p(n) ∝ 1/n, visited in
  random order; `num_to_predict = min(max_predictions, max(1, round(len(tokens) * masked_lm_prob)))` is a budget:
  an n-gram that would overflow it is shortened (n-1, …, 1 words) and skipped if one word still overflows, and
  n-grams touching covered positions are skipped; each chosen position becomes [MASK] 80%, itself 10%, a uniform
  random id from the whole vocabulary 10%. Word starts come from a table by token id that the tokenizer builds
  with the reference's `_is_start_piece_sp`. Like the reference, [CLS]/[SEP] are not candidates but do not end a
  word either: a non-start piece right after [SEP] joins the last word of A.

Deviations, all deliberate:

- Randomness. The reference runs one `random.Random(12345)` over the whole corpus (plus the unseeded global
  `np.random` for n-gram sizes), so its output depends on file order and is not reproducible. Here every (seed,
  document id, pass) gets its own generators (`document_rngs`), so output does not depend on worker count or order
  (DESIGN.md, "Determinism as a contract"). Draws are batched (all n-gram sizes at once, the 80/10/10 choices
  after selection, truncation as a binomial count of front cuts): same distributions, different streams.
- The corpus-level `rng.shuffle` of documents and of instances is left to the loader; other documents for
  single-sentence negatives come from a `DocumentPool` (sorted by id) that every worker builds the same way.
- Only the ALBERT defaults of the reference's flags exist: `random_next_sentence=False`, `do_whole_word_mask=True`,
  `favor_shorter_ngram=True`, `do_permutation=False`.
- `single_sentence_negatives=False` (no such flag in the reference) drops single-sentence chunks instead of
  pairing them with another document, so every label is then a true sentence-order label.
- `static_masking=False` leaves pairs unmasked for masking in the loader (`mask_dynamic`); pairs do not depend on
  it, because masking draws from its own generator.
"""

from __future__ import annotations

import functools
import hashlib
import threading
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import NamedTuple

import numpy as np

from albert_core.config_base import Config
from albert_core.errors import UserError

Sentences = Sequence[Sequence[int]]  # one document: token ids per sentence
# (rng, id of the current document) -> sentences of a random other document
OtherDocument = Callable[[np.random.Generator, str], Sequence[np.ndarray]]


@dataclass(frozen=True)
class SpecialIds:
    """Token ids the builder needs, passed explicitly so this module does not depend on the tokenizer."""

    cls: int
    sep: int
    mask: int
    vocab_size: int
    pad: int = 0

    def __post_init__(self) -> None:
        ids = {"cls": self.cls, "sep": self.sep, "mask": self.mask, "pad": self.pad}
        for name, value in ids.items():
            if not _is_int(value) or not 0 <= value < self.vocab_size:
                raise UserError(
                    f"special id {name}={value!r} must be an int in [0, vocab_size={self.vocab_size})"
                )
        if len(set(ids.values())) != len(ids):
            raise UserError(f"special ids must be distinct, got {ids}")


@dataclass(frozen=True)
class SopConfig(Config):
    """Build parameters of SOP instances; defaults are the reference's flags (dupe_factor 40 included)."""

    max_seq_len: int = 512
    short_seq_prob: float = 0.1
    masked_lm_prob: float = 0.15
    max_predictions: int = 20
    max_ngram: int = 3
    dupe_factor: int = 40
    single_sentence_negatives: bool = True
    static_masking: bool = True
    seed: int = 12345

    def validate(self) -> None:
        # [CLS] A [SEP] B [SEP] with A, B non-empty, and a short target drawn from [2, max_seq_len - 3].
        _check(self.max_seq_len >= 5, f"max_seq_len must be >= 5, got {self.max_seq_len}")
        for name in ("short_seq_prob", "masked_lm_prob"):
            value = getattr(self, name)
            _check(0.0 <= value <= 1.0, f"{name} must be in [0, 1], got {value}")
        _check(
            1 <= self.max_predictions <= self.max_seq_len,
            f"max_predictions must be in [1, max_seq_len], got {self.max_predictions}",
        )
        _check(self.max_ngram >= 1, f"max_ngram must be >= 1, got {self.max_ngram}")
        _check(self.dupe_factor >= 1, f"dupe_factor must be >= 1, got {self.dupe_factor}")
        _check(self.seed >= 0, f"seed must be >= 0, got {self.seed}")


def _is_int(value: object) -> bool:
    return isinstance(value, int | np.integer) and not isinstance(value, bool)


def _check(ok: bool, message: str) -> None:
    if not ok:
        raise UserError(message)


@dataclass(frozen=True, eq=False)
class Instance:
    """One pretraining row: `[CLS] A [SEP] B [SEP]` padded to `max_seq_len`, masked LM targets padded to
    `max_predictions` (all zero weights when masking is dynamic). `(doc_id, pass_index, index)` is its stable key.
    """

    doc_id: str
    pass_index: int
    index: int  # position among the instances of (doc_id, pass_index)
    input_ids: np.ndarray  # int32 (max_seq_len,), pad 0
    token_type_ids: np.ndarray  # int32 (max_seq_len,): 0 for [CLS] A [SEP], 1 for B [SEP], 0 for padding
    attention_mask: np.ndarray  # int32 (max_seq_len,)
    word_start: np.ndarray  # int8 (max_seq_len,): the reference's token_boundary (word starts, [CLS], [SEP])
    sop_label: int  # 1 = swapped (or B from another document)
    masked_lm_positions: np.ndarray  # int32 (max_predictions,), sorted, 0-padded
    masked_lm_ids: np.ndarray  # int32 (max_predictions,): original ids at those positions
    masked_lm_weights: np.ndarray  # float32 (max_predictions,): 1.0 for real predictions
    single_sentence_negative: bool  # B came from another document (counted in manifests)
    short_target: bool  # this document pass drew a short target length


class MaskedLm(NamedTuple):
    """Result of `mask_dynamic`, padded like the corresponding `Instance` fields."""

    input_ids: np.ndarray
    masked_lm_positions: np.ndarray
    masked_lm_ids: np.ndarray
    masked_lm_weights: np.ndarray


# --- randomness --------------------------------------------------------------------------------------------------


def _entropy(seed: int, doc_id: str, pass_index: int) -> int:
    # blake2b, not Python's `hash()` (salted per process), so every worker and every run derives the same streams.
    key = f"{seed}\x00{pass_index}\x00{doc_id}".encode()
    return int.from_bytes(hashlib.blake2b(key, digest_size=32).digest(), "little")


def document_rngs(seed: int, doc_id: str, pass_index: int) -> tuple[np.random.Generator, np.random.Generator]:
    """Independent generators for pair building and for masking, keyed by (seed, document id, pass).

    Masking has its own stream so pairs are identical with static and dynamic masking. The builder gets the same
    streams from `_reused_rngs`, without building generators.
    """
    pairs, masking = np.random.SeedSequence(_entropy(seed, doc_id, pass_index)).spawn(2)
    return np.random.Generator(np.random.PCG64(pairs)), np.random.Generator(np.random.PCG64(masking))


_PCG_MULT = 0x2360ED051FC65DA44385DF649FCCF645  # PCG_DEFAULT_MULTIPLIER_128
_U128 = (1 << 128) - 1


def _pcg64_state(seq: np.random.SeedSequence) -> dict:
    """The state `np.random.PCG64(seq)` starts in (numpy's `pcg64_set_seed`: pcg_setseq_128_srandom_r on
    `seq.generate_state(4, uint64)`), computed instead of built: constructing two bit generators per document
    pass cost more than that pass's instances (profiled)."""
    s0, s1, i0, i1 = (int(w) for w in seq.generate_state(4, np.uint64))
    inc = ((((i0 << 64) | i1) << 1) | 1) & _U128
    state = (inc + ((s0 << 64) | s1)) & _U128  # step from 0, add the initial state
    state = (state * _PCG_MULT + inc) & _U128  # step
    return {"bit_generator": "PCG64", "state": {"state": state, "inc": inc}, "has_uint32": 0, "uinteger": 0}


_REUSED = threading.local()


def _reused_rngs(seed: int, doc_id: str, pass_index: int) -> tuple[np.random.Generator, np.random.Generator]:
    """The streams of `document_rngs` on this thread's two generators, whose states the next call overwrites:
    only for a caller that is done with the previous pair (`_document_instances`)."""
    if not hasattr(_REUSED, "rngs"):
        _REUSED.rngs = (np.random.Generator(np.random.PCG64()), np.random.Generator(np.random.PCG64()))
    entropy = _entropy(seed, doc_id, pass_index)
    for k, rng in enumerate(
        _REUSED.rngs
    ):  # SeedSequence.spawn(2) gives children with spawn keys (0,) and (1,)
        rng.bit_generator.state = _pcg64_state(np.random.SeedSequence(entropy, spawn_key=(k,)))
    return _REUSED.rngs


# --- other documents ---------------------------------------------------------------------------------------------


def _as_arrays(sentences: Sentences, vocab_size: int) -> list[np.ndarray]:
    """Sentences as int32 arrays without empty ones (the reference drops lines that tokenize to nothing)."""
    arrays = [np.asarray(s, dtype=np.int32) for s in sentences if len(s)]
    if arrays:
        flat = np.concatenate(arrays)
        if flat.min() < 0 or flat.max() >= vocab_size:
            raise ValueError(f"token ids must lie in [0, {vocab_size}), got [{flat.min()}, {flat.max()}]")
    return arrays


class DocumentPool:
    """Documents that single-sentence chunks draw their B segment from, in a canonical order (sorted by id).

    Every worker must build the same pool (e.g. the whole corpus, or a sample chosen by id hash), so that the draw
    for a given (seed, document, pass) picks the same document everywhere.
    """

    def __init__(self, documents: Mapping[str, Sentences], vocab_size: int) -> None:
        pairs = ((doc_id, _as_arrays(documents[doc_id], vocab_size)) for doc_id in sorted(documents))
        kept = [(doc_id, arrays) for doc_id, arrays in pairs if arrays]
        if not kept:
            raise UserError("single_sentence_negatives needs at least one non-empty document in the pool")
        self._ids = [doc_id for doc_id, _ in kept]
        self._docs = [arrays for _, arrays in kept]
        self._by_id = dict(kept)  # for `build_instances`, so a document is converted and checked once

    def __len__(self) -> int:
        return len(self._ids)

    def __call__(self, rng: np.random.Generator, exclude: str) -> list[np.ndarray]:
        # `create_instances_from_document`: up to 10 draws to avoid the current document, then take the last one.
        for _ in range(10):
            k = int(rng.integers(len(self._ids)))
            if self._ids[k] != exclude:
                break
        return self._docs[k]


# --- segment pairs -----------------------------------------------------------------------------------------------


class _Pair(NamedTuple):
    a: np.ndarray
    b: np.ndarray
    label: int
    negative: bool


def _fitted_lengths(len_a: int, len_b: int, max_tokens: int) -> tuple[int, int]:
    """Lengths `truncate_seq_pair` ends with: it cuts the longer side (B on ties) one token at a time."""
    excess = len_a + len_b - max_tokens
    if excess <= 0:
        return len_a, len_b
    gap = abs(len_a - len_b)
    if excess <= gap:  # only the longer side is cut
        return (len_a - excess, len_b) if len_a > len_b else (len_a, len_b - excess)
    # Both come down to the shorter length, then lose a token in turn, B first.
    rest, short = excess - gap, min(len_a, len_b)
    return short - rest // 2, short - (rest + 1) // 2


def _truncate_seq_pair(
    a: np.ndarray, b: np.ndarray, max_tokens: int, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """`truncate_seq_pair` in closed form: each cut is from the front with p 0.5, so a side that loses k tokens
    loses Binomial(k, 0.5) of them at the front."""
    len_a, len_b = _fitted_lengths(len(a), len(b), max_tokens)
    # Binomial(0, p) is 0 without a draw, so skipping the call for an uncut side leaves the stream unchanged.
    front_a = int(rng.binomial(len(a) - len_a, 0.5)) if len(a) > len_a else 0
    front_b = int(rng.binomial(len(b) - len_b, 0.5)) if len(b) > len_b else 0
    return a[front_a : front_a + len_a], b[front_b : front_b + len_b]


def _random_b(other: Sequence[np.ndarray], target: int, rng: np.random.Generator) -> np.ndarray:
    """B for a single-sentence chunk: sentences of another document from a random start until `target` tokens."""
    start = int(rng.integers(len(other)))
    taken: list[np.ndarray] = []
    length = 0
    for sentence in other[start:]:
        taken.append(sentence)
        length += len(sentence)
        if length >= target:
            break
    return np.concatenate(taken)


def _sop_pairs(
    doc_id: str,
    sentences: list[np.ndarray],
    cfg: SopConfig,
    rng: np.random.Generator,
    other_document: OtherDocument | None,
) -> tuple[list[_Pair], bool]:
    """`create_instances_from_document` without the masking: the pairs of one document pass, and whether the
    pass drew a short target."""
    max_tokens = cfg.max_seq_len - 3  # room for [CLS], [SEP], [SEP]
    # Drawn once per document and pass, as in the reference: short targets only mismatch pretraining and
    # fine-tuning lengths less, they are not meant to be a per-instance choice.
    short = bool(rng.random() < cfg.short_seq_prob)
    target = int(rng.integers(2, max_tokens + 1)) if short else max_tokens
    pairs: list[_Pair] = []
    chunk: list[np.ndarray] = []
    length = 0
    for i, sentence in enumerate(sentences):
        chunk.append(sentence)
        length += len(sentence)
        if i < len(sentences) - 1 and length < target:
            continue
        a_end = int(rng.integers(1, len(chunk))) if len(chunk) >= 2 else 1
        a = chunk[0] if a_end == 1 else np.concatenate(chunk[:a_end])
        if len(chunk) == 1:
            if other_document is not None:  # None only when single_sentence_negatives is off
                b = _random_b(other_document(rng, doc_id), target - len(a), rng)
                pairs.append(_Pair(*_truncate_seq_pair(a, b, max_tokens, rng), label=1, negative=True))
        else:
            b = chunk[-1] if a_end == len(chunk) - 1 else np.concatenate(chunk[a_end:])
            swap = bool(rng.random() < 0.5)
            if swap:
                a, b = b, a
            pairs.append(_Pair(*_truncate_seq_pair(a, b, max_tokens, rng), label=int(swap), negative=False))
        chunk, length = [], 0
    return pairs, short


# --- masking -----------------------------------------------------------------------------------------------------


def _candidate_words(
    ids: np.ndarray, starts: np.ndarray, special: SpecialIds
) -> tuple[np.ndarray, list[int]]:
    """The reference's `cand_indexes`: non-special positions `cand`, grouped into words; word k covers
    `cand[bounds[k]:bounds[k + 1]]`. A word opens at a word-start piece and at the first candidate."""
    candidate = ids != special.cls
    candidate &= ids != special.sep
    cand = candidate.nonzero()[0]
    new_word = starts[cand]  # a copy (fancy indexing)
    new_word[:1] = True  # `len(cand_indexes) >= 1` is false for the first candidate, whatever the piece
    return cand, [*new_word.nonzero()[0].tolist(), cand.size]


def _choose_ngrams(
    bounds: list[int], order: list[int], sizes: list[int], budget: int
) -> list[tuple[int, int]]:
    """The reference's selection loop. Visits word `order[i]` as the start of a `sizes[i]`-gram and returns the
    chosen n-grams as (first word, number of words); together they cover at most `budget` tokens."""
    num_words = len(bounds) - 1
    # n-grams cover whole words, so words stand for their positions. A bytearray, not a numpy array: the loop
    # runs once per visited word, and numpy's per-call overhead on tiny slices was most of its time.
    covered = bytearray(num_words)
    chosen: list[tuple[int, int]] = []
    used = 0
    for word, size in zip(order, sizes, strict=True):
        room = budget - used
        if room <= 0:
            break
        start = bounds[word]
        if bounds[word + 1] - start > room:  # even one word overflows the budget: skip this start
            continue
        # An n-gram near the end is cut at the last word (the reference slices cand_indexes[k:k + n]). If it
        # overflows the budget try n-1, …, 1 words (one fits, see above).
        n = min(size, num_words - word)
        while bounds[word + n] - start > room:
            n -= 1
        if n == 1:  # the most frequent case (p 6/11 and more near the budget), without slices
            if covered[word]:
                continue
            covered[word] = 1
        elif 1 in covered[word : word + n]:
            continue
        else:
            covered[word : word + n] = b"\x01" * n
        chosen.append((word, n))
        used += bounds[word + n] - start
    return chosen


@functools.cache
def _ngram_cdf(max_ngram: int) -> np.ndarray:
    """The cdf `Generator.choice(ngrams, p=p)` builds for p(n) ∝ 1/n (favor_shorter_ngram), with a leading 0.

    `choice` with `p` spends tens of microseconds per call checking `p`; `_masked_lm` does what it does after
    that — `cdf.searchsorted(rng.random(size), side="right")` — so draws and sizes are bit-identical to it.
    """
    ngrams = np.arange(1, max_ngram + 1)
    p = 1.0 / ngrams
    cdf = (p / p.sum()).cumsum()
    cdf /= cdf[-1]
    # A leading 0 shifts every index by one (u >= 0 always counts it), so searchsorted gives n, not n - 1.
    cdf = np.concatenate([[0.0], cdf])
    cdf.setflags(write=False)
    return cdf


def _masked_lm(
    ids: np.ndarray, starts: np.ndarray, special: SpecialIds, cfg: SopConfig, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """`create_masked_lm_predictions` on one unpadded sequence: (masked ids, sorted positions, original ids)."""
    cand, bounds = _candidate_words(ids, starts, special)
    if cfg.masked_lm_prob == 0 or cand.size == 0:  # the reference returns before its budget of at least 1
        none = np.zeros(0, dtype=np.int32)
        return ids.copy(), none, none
    budget = min(cfg.max_predictions, max(1, int(round(len(ids) * cfg.masked_lm_prob))))
    num_words = len(bounds) - 1
    # Every draw in one call (numpy's per-call cost is most of the time at these sizes): a uniform key per word
    # whose argsort is the visiting order (a uniform permutation), the n-gram size per visit, and three per
    # masked position at most (80/10/10 choice, keep-or-random, the random id).
    u = rng.random(2 * num_words + 3 * budget)
    order = u[:num_words].argsort(kind="stable").tolist()
    # n-gram size of each visit, p(n) ∝ 1/n: `rng.choice(ngrams, size=num_words, p=p)` without its checks.
    sizes = _ngram_cdf(cfg.max_ngram).searchsorted(u[num_words : 2 * num_words], side="right").tolist()
    chosen = _choose_ngrams(bounds, order, sizes, budget)

    cand_list = cand.tolist()
    spans: list[int] = []
    for w, n in chosen:
        spans += cand_list[bounds[w] : bounds[w + n]]
    spans.sort()
    labels = ids[spans]
    m = len(spans)
    draws = u[2 * num_words : 2 * num_words + 3 * m].tolist()
    vocab_size, mask = special.vocab_size, special.mask
    # Plain Python on ~20 values beats numpy's where/fancy indexing; the random id is drawn from the whole
    # vocabulary, specials too, as the reference does.
    shown = [
        mask
        if draws[3 * k] < 0.8
        else label
        if draws[3 * k + 1] < 0.5
        else int(draws[3 * k + 2] * vocab_size)
        for k, label in enumerate(labels.tolist())
    ]
    out = ids.copy()
    out[spans] = shown
    return out, np.array(spans, dtype=np.int32), labels.astype(np.int32, copy=False)


def _pad(values: np.ndarray, length: int, dtype: type) -> np.ndarray:
    out = np.zeros(length, dtype=dtype)
    out[: len(values)] = values
    return out


def _targets(positions: np.ndarray, labels: np.ndarray, cfg: SopConfig) -> tuple[np.ndarray, ...]:
    p = cfg.max_predictions
    weights = np.zeros(p, dtype=np.float32)
    weights[: len(positions)] = 1.0
    return _pad(positions, p, np.int32), _pad(labels, p, np.int32), weights


def mask_dynamic(
    input_ids: np.ndarray,
    word_start: np.ndarray,
    special: SpecialIds,
    cfg: SopConfig,
    rng: np.random.Generator,
) -> MaskedLm:
    """Mask an unmasked instance in the loader, with the same n-gram rule as static masking.

    `input_ids` may be padded (`special.pad` after the last [SEP]); `word_start` are per-position flags as stored
    in `Instance.word_start`. The caller owns `rng` (e.g. seeded from seed, epoch and row key).
    """
    ids = np.asarray(input_ids)
    flags = np.asarray(word_start)
    if flags.shape != ids.shape or ids.ndim != 1:
        raise ValueError(f"input_ids {ids.shape} and word_start {flags.shape} must be equal 1-D shapes")
    real = np.flatnonzero(ids != special.pad)
    n = int(real[-1]) + 1 if real.size else 0
    masked, positions, labels = _masked_lm(ids[:n], flags[:n].astype(bool), special, cfg, rng)
    out = ids.copy()
    out[:n] = masked
    return MaskedLm(out, *_targets(positions, labels, cfg))


# --- instances ---------------------------------------------------------------------------------------------------


def _check_table(word_start: np.ndarray, special: SpecialIds) -> np.ndarray:
    table = np.asarray(word_start, dtype=bool)
    if table.shape != (special.vocab_size,):
        raise ValueError(
            f"word_start must have shape ({special.vocab_size},) (one flag per id), got {table.shape}"
        )
    return table


def document_instances(
    doc_id: str,
    sentences: Sentences,
    pass_index: int,
    cfg: SopConfig,
    special: SpecialIds,
    word_start: np.ndarray,
    other_document: OtherDocument | None = None,
) -> list[Instance]:
    """All instances of one document in one pass (`create_instances_from_document`).

    `sentences`: token ids per sentence. `word_start`: bool per token id, the reference's `_is_start_piece_sp`.
    `other_document(rng, doc_id)` returns the sentences of a random other document (a `DocumentPool`); it is
    required when `cfg.single_sentence_negatives` is on. Output depends only on the arguments, never on which
    documents were processed before.
    """
    table = _check_table(word_start, special)
    if cfg.single_sentence_negatives and other_document is None:
        raise UserError("single_sentence_negatives is on: pass other_document (e.g. a DocumentPool)")
    arrays = _as_arrays(sentences, special.vocab_size)
    return _document_instances(doc_id, arrays, pass_index, cfg, special, table, other_document)


def document_passes(
    doc_id: str,
    sentences: Sentences,
    cfg: SopConfig,
    special: SpecialIds,
    word_start: np.ndarray,
    other_document: OtherDocument | None = None,
) -> Iterator[list[Instance]]:
    """`document_instances` for passes 0 … dupe_factor - 1, checking and converting the document once."""
    table = _check_table(word_start, special)
    if cfg.single_sentence_negatives and other_document is None:
        raise UserError("single_sentence_negatives is on: pass other_document (e.g. a DocumentPool)")
    arrays = _as_arrays(sentences, special.vocab_size)
    for pass_index in range(cfg.dupe_factor):
        yield _document_instances(doc_id, arrays, pass_index, cfg, special, table, other_document)


def _document_instances(
    doc_id: str,
    sentences: list[np.ndarray],
    pass_index: int,
    cfg: SopConfig,
    special: SpecialIds,
    table: np.ndarray,
    other_document: OtherDocument | None,
) -> list[Instance]:
    """`document_instances` on checked inputs (`_as_arrays`, `_check_table`), so `build_instances` checks and
    converts each document once, not once per pass."""
    pair_rng, mask_rng = _reused_rngs(cfg.seed, doc_id, pass_index)
    other = other_document if cfg.single_sentence_negatives else None
    pairs, short = _sop_pairs(doc_id, sentences, cfg, pair_rng, other)

    instances = []
    length = cfg.max_seq_len
    for index, pair in enumerate(pairs):
        # [CLS] A [SEP] B [SEP], written into place (a few numpy calls per instance is what this loop costs).
        b_start = len(pair.a) + 2
        n = b_start + len(pair.b) + 1
        ids = np.empty(n, dtype=np.int32)
        ids[0] = special.cls
        ids[1 : b_start - 1] = pair.a
        ids[b_start - 1] = ids[n - 1] = special.sep
        ids[b_start : n - 1] = pair.b
        starts = table[ids]
        starts[0] = starts[b_start - 1] = starts[n - 1] = True  # token_boundary marks [CLS] and [SEP] too
        if cfg.static_masking:
            ids, positions, labels = _masked_lm(ids, starts, special, cfg, mask_rng)
        else:
            positions = labels = np.zeros(0, dtype=np.int32)
        input_ids = np.zeros(length, dtype=np.int32)
        input_ids[:n] = ids
        token_types = np.zeros(length, dtype=np.int32)
        token_types[b_start:n] = 1
        attention_mask = np.zeros(length, dtype=np.int32)
        attention_mask[:n] = 1
        word_starts = np.zeros(length, dtype=np.int8)
        word_starts[:n] = starts
        mlm_positions, mlm_ids, mlm_weights = _targets(positions, labels, cfg)
        instances.append(
            Instance(
                doc_id=doc_id,
                pass_index=pass_index,
                index=index,
                input_ids=input_ids,
                token_type_ids=token_types,
                attention_mask=attention_mask,
                word_start=word_starts,
                sop_label=pair.label,
                masked_lm_positions=mlm_positions,
                masked_lm_ids=mlm_ids,
                masked_lm_weights=mlm_weights,
                single_sentence_negative=pair.negative,
                short_target=short,
            )
        )
    return instances


def build_instances(
    documents: Mapping[str, Sentences],
    cfg: SopConfig,
    special: SpecialIds,
    word_start: np.ndarray,
    other_document: OtherDocument | None = None,
) -> Iterator[Instance]:
    """Instances of all documents and all `dupe_factor` passes, in (doc id, pass, index) order.

    Without `other_document`, single-sentence negatives draw from a `DocumentPool` of `documents` themselves,
    as the reference draws from all documents of its input files.
    """
    table = _check_table(word_start, special)
    pool = None
    if other_document is None and cfg.single_sentence_negatives:
        other_document = pool = DocumentPool(documents, special.vocab_size)
    for doc_id in sorted(documents):
        if pool is not None:
            sentences = pool._by_id.get(doc_id, [])  # documents left out of the pool are empty
        else:
            sentences = _as_arrays(documents[doc_id], special.vocab_size)
        for pass_index in range(cfg.dupe_factor):
            yield from _document_instances(doc_id, sentences, pass_index, cfg, special, table, other_document)
