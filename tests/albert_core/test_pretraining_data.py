"""SOP instances and n-gram masking on a toy vocabulary: reference parity of the loops, invariants of every
instance, the recipe's proportions over many instances, and determinism independent of order and workers."""

import random
from collections import Counter, defaultdict
from itertools import pairwise

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from albert_core.errors import UserError
from albert_core.pretraining_data import (
    DocumentPool,
    Instance,
    SopConfig,
    SpecialIds,
    _candidate_words,
    _choose_ngrams,
    _fitted_lengths,
    _reused_rngs,
    _truncate_seq_pair,
    build_instances,
    document_instances,
    document_rngs,
    mask_dynamic,
)

V = 3000
SPECIAL = SpecialIds(cls=2, sep=3, mask=4, vocab_size=V)  # pad 0, unk 1
FIRST_ID = 5  # first ordinary token id
WORD_START = np.random.default_rng(0).random(V) < 0.6  # toy "▁" pieces: 60% of ids start a word
WORD_START[:FIRST_ID] = True


def random_docs(n: int, seed: int, max_sentences: int = 30, max_len: int = 40) -> dict[str, list[list[int]]]:
    rng = np.random.default_rng(seed)
    return {
        f"doc-{seed}-{i}": [
            rng.integers(FIRST_ID, V, int(rng.integers(1, max_len + 1))).tolist()
            for _ in range(int(rng.integers(1, max_sentences + 1)))
        ]
        for i in range(n)
    }


def unmasked(inst: Instance) -> np.ndarray:
    """input_ids with the original ids put back at the masked positions."""
    ids = inst.input_ids.copy()
    real = inst.masked_lm_weights > 0
    ids[inst.masked_lm_positions[real]] = inst.masked_lm_ids[real]
    return ids


def key(inst: Instance) -> tuple[str, int, int]:
    return inst.doc_id, inst.pass_index, inst.index


def fingerprint(inst: Instance) -> tuple:
    arrays = (inst.input_ids, inst.token_type_ids, inst.attention_mask, inst.word_start)
    targets = (inst.masked_lm_positions, inst.masked_lm_ids, inst.masked_lm_weights)
    flags = (inst.sop_label, inst.single_sentence_negative, inst.short_target)
    return key(inst), *(a.tobytes() for a in arrays + targets), flags


def check_instance(inst: Instance, cfg: SopConfig) -> None:
    """Every invariant a single instance must satisfy."""
    L, P = cfg.max_seq_len, cfg.max_predictions
    assert inst.input_ids.shape == inst.token_type_ids.shape == inst.attention_mask.shape == (L,)
    assert inst.masked_lm_positions.shape == inst.masked_lm_ids.shape == inst.masked_lm_weights.shape == (P,)
    n = int(inst.attention_mask.sum())
    assert 5 <= n <= L and inst.attention_mask[:n].all()
    ids = unmasked(inst)
    assert (ids[n:] == SPECIAL.pad).all() and (inst.input_ids[n:] == SPECIAL.pad).all()
    # [CLS] A [SEP] B [SEP]: one [CLS] first, exactly two [SEP], the last one closing the sequence.
    assert ids[0] == SPECIAL.cls and (ids[:n] == SPECIAL.cls).sum() == 1
    seps = np.flatnonzero(ids[:n] == SPECIAL.sep)
    assert len(seps) == 2 and seps[1] == n - 1 and 2 <= seps[0] <= n - 3
    expected_types = np.zeros(L, dtype=np.int32)
    expected_types[seps[0] + 1 : n] = 1
    assert (inst.token_type_ids == expected_types).all()
    assert inst.word_start[[0, seps[0], n - 1]].all() and not inst.word_start[n:].any()
    # Masked LM targets: sorted, unique, inside the sequence, never [CLS]/[SEP], within the budget.
    m = int((inst.masked_lm_weights > 0).sum())
    assert (inst.masked_lm_weights[:m] == 1).all() and (inst.masked_lm_weights[m:] == 0).all()
    positions = inst.masked_lm_positions[:m]
    assert (np.diff(positions) > 0).all() and (positions > 0).all() and (positions < n - 1).all()
    assert not np.isin(positions, seps).any()
    assert (inst.masked_lm_positions[m:] == 0).all() and (inst.masked_lm_ids[m:] == 0).all()
    if cfg.static_masking and cfg.masked_lm_prob > 0:
        # Can be 0: a word of more pieces than the budget is skipped.
        assert m <= min(cfg.max_predictions, max(1, round(n * cfg.masked_lm_prob)))
    else:
        assert m == 0
    unchanged = np.ones(L, dtype=bool)
    unchanged[positions] = False
    assert (inst.input_ids[unchanged] == ids[unchanged]).all()
    assert inst.sop_label in (0, 1) and (inst.sop_label == 1 or not inst.single_sentence_negative)


# --- config ------------------------------------------------------------------------------------------------------


def test_defaults_are_the_reference_flags() -> None:
    cfg = SopConfig()
    assert (cfg.max_seq_len, cfg.short_seq_prob, cfg.masked_lm_prob) == (512, 0.1, 0.15)
    assert (cfg.max_predictions, cfg.max_ngram, cfg.dupe_factor, cfg.seed) == (20, 3, 40, 12345)
    assert cfg.single_sentence_negatives and cfg.static_masking


@pytest.mark.parametrize(
    "kwargs",
    [
        {"max_seq_len": 4},
        {"max_seq_len": 128.0},
        {"short_seq_prob": 1.5},
        {"masked_lm_prob": -0.1},
        {"max_predictions": 0},
        {"max_predictions": 600},
        {"max_ngram": 0},
        {"dupe_factor": 0},
        {"seed": -1},
        {"seed": "1"},
        {"single_sentence_negatives": 1},
        {"static_masking": "yes"},
    ],
)
def test_config_rejects_nonsense(kwargs: dict) -> None:
    with pytest.raises(UserError):
        SopConfig(**kwargs)


@pytest.mark.parametrize(
    "kwargs",
    [
        {"cls": 2, "sep": 2, "mask": 4, "vocab_size": 10},
        {"cls": 2, "sep": 3, "mask": 10, "vocab_size": 10},
        {"cls": -1, "sep": 3, "mask": 4, "vocab_size": 10},
        {"cls": 0, "sep": 3, "mask": 4, "vocab_size": 10},  # cls equals the default pad 0
    ],
)
def test_special_ids_rejects_nonsense(kwargs: dict) -> None:
    with pytest.raises(UserError):
        SpecialIds(**kwargs)


def test_bad_inputs() -> None:
    cfg = SopConfig(max_seq_len=32, dupe_factor=1, single_sentence_negatives=False)
    with pytest.raises(UserError, match="other_document"):
        document_instances("d", [[5, 6]], 0, SopConfig(), SPECIAL, WORD_START)
    with pytest.raises(ValueError, match="word_start"):
        document_instances("d", [[5, 6], [7]], 0, cfg, SPECIAL, WORD_START[:10])
    with pytest.raises(ValueError, match="token ids"):
        document_instances("d", [[5, V]], 0, cfg, SPECIAL, WORD_START)
    with pytest.raises(UserError):
        DocumentPool({"empty": [[]]}, V)


# --- parity with the reference loops -----------------------------------------------------------------------------


def reference_truncate(len_a: int, len_b: int, max_tokens: int, rng: random.Random) -> tuple[list, list]:
    """`truncate_seq_pair` transcribed."""
    a, b = list(range(len_a)), list(range(len_b))
    while len(a) + len(b) > max_tokens:
        trunc = a if len(a) > len(b) else b
        if rng.random() < 0.5:
            del trunc[0]
        else:
            trunc.pop()
    return a, b


@settings(max_examples=300, deadline=None)
@given(st.integers(1, 300), st.integers(1, 300), st.integers(2, 300), st.integers(0, 2**32))
def test_truncation_matches_reference(len_a: int, len_b: int, max_tokens: int, seed: int) -> None:
    ref_a, ref_b = reference_truncate(len_a, len_b, max_tokens, random.Random(seed))
    assert _fitted_lengths(len_a, len_b, max_tokens) == (len(ref_a), len(ref_b))
    a, b = _truncate_seq_pair(np.arange(len_a), np.arange(len_b), max_tokens, np.random.default_rng(seed))
    assert (len(a), len(b)) == (len(ref_a), len(ref_b)) and len(a) >= 1 and len(b) >= 1
    assert (np.diff(a) == 1).all() and (np.diff(b) == 1).all()  # a window: cut only at the ends


def test_truncation_cuts_front_and_back_evenly() -> None:
    rng = np.random.default_rng(0)
    fronts = [_truncate_seq_pair(np.arange(100), np.arange(10), 50, rng)[0][0] for _ in range(2000)]
    assert abs(np.mean(fronts) - 30) < 1.0  # 60 cuts, half of them at the front


def reference_candidates(tokens: list[int], is_start: list[bool]) -> list[list[int]]:
    """`cand_indexes` of `create_masked_lm_predictions` (whole-word masking) transcribed."""
    cand_indexes: list[list[int]] = []
    for i, token in enumerate(tokens):
        if token in (SPECIAL.cls, SPECIAL.sep):
            continue
        if len(cand_indexes) >= 1 and not is_start[i]:
            cand_indexes[-1].append(i)
        else:
            cand_indexes.append([i])
    return cand_indexes


def reference_selection(
    cand_indexes: list[list[int]], order: list[int], sizes: list[int], num_to_predict: int, max_ngram: int
) -> list[int]:
    """The selection loop of `create_masked_lm_predictions` transcribed, with the shuffle and the n draws given."""
    ngram_indexes = [
        [cand_indexes[idx : idx + n] for n in range(1, max_ngram + 1)] for idx in range(len(order))
    ]
    ngram_indexes = [ngram_indexes[k] for k in order]
    masked: list[int] = []
    covered: set[int] = set()
    for cand_index_set, n in zip(ngram_indexes, sizes, strict=True):
        if len(masked) >= num_to_predict:
            break
        index_set = sum(cand_index_set[n - 1], [])
        n -= 1
        while len(masked) + len(index_set) > num_to_predict:
            if n == 0:
                break
            index_set = sum(cand_index_set[n - 1], [])
            n -= 1
        if len(masked) + len(index_set) > num_to_predict:
            continue
        if any(index in covered for index in index_set):
            continue
        covered.update(index_set)
        masked.extend(index_set)
    return sorted(masked)


@settings(max_examples=150, deadline=None)
@given(st.data())
def test_masking_selection_matches_reference(data: st.DataObject) -> None:
    len_a, len_b = data.draw(st.integers(1, 40)), data.draw(st.integers(1, 40))
    tokens = [SPECIAL.cls, *[7] * len_a, SPECIAL.sep, *[7] * len_b, SPECIAL.sep]
    is_start = data.draw(st.lists(st.booleans(), min_size=len(tokens), max_size=len(tokens)))
    cand_indexes = reference_candidates(tokens, is_start)
    cand, bounds = _candidate_words(np.array(tokens), np.array(is_start), SPECIAL)
    assert [cand[lo:hi].tolist() for lo, hi in pairwise(bounds)] == cand_indexes

    max_ngram = data.draw(st.integers(1, 4))
    budget = data.draw(st.integers(1, 25))
    order = data.draw(st.permutations(range(len(cand_indexes))))
    sizes = data.draw(st.lists(st.integers(1, max_ngram), min_size=len(order), max_size=len(order)))
    chosen = _choose_ngrams(bounds, list(order), sizes, budget)
    positions = sorted(p for w, n in chosen for p in cand[bounds[w] : bounds[w + n]].tolist())
    assert positions == reference_selection(cand_indexes, list(order), sizes, budget, max_ngram)


# --- every instance ----------------------------------------------------------------------------------------------


@settings(max_examples=60, deadline=None)
@given(
    docs_seed=st.integers(0, 10_000),
    max_seq_len=st.integers(5, 96),
    masked_lm_prob=st.sampled_from([0.0, 0.05, 0.15, 0.5]),
    max_predictions=st.integers(1, 5),
    max_ngram=st.integers(1, 4),
    negatives=st.booleans(),
    static=st.booleans(),
)
def test_instance_invariants(
    docs_seed: int,
    max_seq_len: int,
    masked_lm_prob: float,
    max_predictions: int,
    max_ngram: int,
    negatives: bool,
    static: bool,
) -> None:
    cfg = SopConfig(
        max_seq_len=max_seq_len,
        short_seq_prob=0.3,
        masked_lm_prob=masked_lm_prob,
        max_predictions=min(max_predictions, max_seq_len),
        max_ngram=max_ngram,
        dupe_factor=2,
        single_sentence_negatives=negatives,
        static_masking=static,
        seed=docs_seed,
    )
    docs = random_docs(4, docs_seed, max_sentences=6, max_len=60)  # sentences longer than the sequence too
    instances = list(build_instances(docs, cfg, SPECIAL, WORD_START))
    for inst in instances:
        check_instance(inst, cfg)
    for doc_id, sentences in docs.items():
        if len(sentences) == 1 and negatives:
            assert all(i.single_sentence_negative for i in instances if i.doc_id == doc_id)
        if not negatives:
            assert not any(i.single_sentence_negative for i in instances)


# --- the recipe's proportions --------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def many() -> tuple[SopConfig, list[Instance]]:
    cfg = SopConfig(max_seq_len=128, dupe_factor=3)
    return cfg, list(build_instances(random_docs(600, 1), cfg, SPECIAL, WORD_START))


def test_many_instances_are_valid(many: tuple[SopConfig, list[Instance]]) -> None:
    cfg, instances = many
    for inst in instances:
        check_instance(inst, cfg)
    assert len({key(i) for i in instances}) == len(instances)


def test_mask_replacement_proportions(many: tuple[SopConfig, list[Instance]]) -> None:
    _, instances = many
    counts = Counter()
    for inst in instances:
        real = inst.masked_lm_weights > 0
        replaced = inst.input_ids[inst.masked_lm_positions[real]]
        original = inst.masked_lm_ids[real]
        counts["mask"] += int((replaced == SPECIAL.mask).sum())
        counts["keep"] += int((replaced == original).sum())
        counts["total"] += int(real.sum())
    counts["random"] = counts["total"] - counts["mask"] - counts["keep"]
    assert counts["total"] > 50_000
    assert abs(counts["mask"] / counts["total"] - 0.8) < 0.01
    assert (
        abs(counts["keep"] / counts["total"] - 0.1) < 0.01
    )  # a random id equals the original 1/V of the time
    assert abs(counts["random"] / counts["total"] - 0.1) < 0.01


def test_budget_is_mostly_filled(many: tuple[SopConfig, list[Instance]]) -> None:
    cfg, instances = many
    filled = [
        int((i.masked_lm_weights > 0).sum()) == min(cfg.max_predictions, round(i.attention_mask.sum() * 0.15))
        for i in instances
    ]
    assert np.mean(filled) > 0.6  # whole words that overflow the budget are skipped, so not always


def test_sop_labels_and_negatives(many: tuple[SopConfig, list[Instance]]) -> None:
    _, instances = many
    pairs = [i.sop_label for i in instances if not i.single_sentence_negative]
    assert abs(np.mean(pairs) - 0.5) < 0.03
    negatives = np.mean([i.single_sentence_negative for i in instances])
    # Single-sentence chunks come from one-sentence documents and from a last sentence left alone in a chunk.
    assert 0.02 < negatives < 0.2
    assert all(i.sop_label == 1 for i in instances if i.single_sentence_negative)


def test_short_target_once_per_document_pass(many: tuple[SopConfig, list[Instance]]) -> None:
    cfg, instances = many
    by_pass: dict[tuple[str, int], list[Instance]] = defaultdict(list)
    for inst in instances:
        by_pass[inst.doc_id, inst.pass_index].append(inst)
    flags = [{i.short_target for i in group} for group in by_pass.values()]
    assert all(len(f) == 1 for f in flags)
    assert abs(np.mean([f.pop() for f in flags]) - cfg.short_seq_prob) < 0.03
    # With the full target max_seq_len - 3, every chunk but a document's last fills the sequence exactly.
    for group in by_pass.values():
        if not group[0].short_target:
            for inst in group[:-1]:
                if not inst.single_sentence_negative:
                    assert inst.attention_mask.sum() == cfg.max_seq_len


def test_ngram_lengths_favour_short() -> None:
    """Realised n-gram lengths follow p(n) ∝ 1/n (6/11, 3/11, 2/11), shifted a little towards short n-grams by
    the budget. One-piece words and a small budget keep chosen n-grams apart, so runs of masks are n-grams."""
    cfg = SopConfig(max_seq_len=512, max_predictions=12, masked_lm_prob=0.15)
    all_starts = np.ones(V, dtype=bool)
    rng = np.random.default_rng(3)
    runs = Counter()
    for _ in range(1500):
        ids = np.concatenate(
            [[SPECIAL.cls], rng.integers(FIRST_ID, V, 508), [SPECIAL.sep], [9], [SPECIAL.sep]]
        )
        out = mask_dynamic(ids, all_starts[ids], SPECIAL, cfg, rng)
        positions = out.masked_lm_positions[out.masked_lm_weights > 0]
        breaks = np.flatnonzero(np.diff(positions) > 1)
        runs.update(np.diff(np.concatenate([[-1], breaks, [len(positions) - 1]])).tolist())
    total = sum(runs.values())
    share = [runs[n] / total for n in (1, 2, 3)]
    assert runs.keys() <= {1, 2, 3, 4, 5, 6}
    assert abs(share[0] - 6 / 11) < 0.05 and abs(share[1] - 3 / 11) < 0.04 and abs(share[2] - 2 / 11) < 0.04


# --- segment semantics -------------------------------------------------------------------------------------------


def ordered_docs(n: int, seed: int, span: int = 60) -> dict[str, list[list[int]]]:
    """Document i holds the consecutive ids of its own range, cut into sentences, so order and origin show."""
    rng = np.random.default_rng(seed)
    docs = {}
    for i in range(n):
        ids = list(range(FIRST_ID + i * span, FIRST_ID + (i + 1) * span))
        cuts = sorted(rng.choice(np.arange(1, span), int(rng.integers(0, 8)), replace=False).tolist())
        docs[f"d{i:02d}"] = [ids[a:b] for a, b in pairwise([0, *cuts, span])]
    return docs


def test_segments_keep_or_swap_order_and_negatives_come_from_elsewhere() -> None:
    cfg = SopConfig(max_seq_len=40, masked_lm_prob=0.0, dupe_factor=5)
    docs = ordered_docs(40, 0)
    seen = Counter()
    for inst in build_instances(docs, cfg, SPECIAL, WORD_START):
        n = int(inst.attention_mask.sum())
        sep = int(np.flatnonzero(inst.input_ids[:n] == SPECIAL.sep)[0])
        a, b = inst.input_ids[1:sep], inst.input_ids[sep + 1 : n - 1]
        assert (np.diff(a) == 1).all() and (np.diff(b) == 1).all()
        doc_of = (np.concatenate([a, b]) - FIRST_ID) // 60  # which document each token comes from
        assert (doc_of[: len(a)] == int(inst.doc_id[1:])).all()
        if inst.single_sentence_negative:
            assert (doc_of[len(a) :] != int(inst.doc_id[1:])).all()  # B from another document
            seen["negative"] += 1
        elif inst.sop_label == 0:
            assert a[-1] < b[0]  # original order (adjacent unless truncation cut between them)
            seen["kept"] += 1
        else:
            assert b[-1] < a[0]  # swapped
            seen["swapped"] += 1
        if not inst.single_sentence_negative:
            assert (doc_of == int(inst.doc_id[1:])).all()
    assert min(seen.values()) > 20


def test_without_single_sentence_negatives() -> None:
    cfg = SopConfig(max_seq_len=64, dupe_factor=4, single_sentence_negatives=False)
    docs = random_docs(200, 4)
    instances = list(build_instances(docs, cfg, SPECIAL, WORD_START))
    assert not any(i.single_sentence_negative for i in instances)
    single = {doc_id for doc_id, s in docs.items() if len(s) == 1}
    assert single and not any(i.doc_id in single for i in instances)
    assert abs(np.mean([i.sop_label for i in instances]) - 0.5) < 0.04


# --- determinism -------------------------------------------------------------------------------------------------


def test_same_seed_same_output_regardless_of_order_and_workers() -> None:
    cfg = SopConfig(max_seq_len=96, dupe_factor=3)
    docs = random_docs(60, 7)
    expected = sorted(fingerprint(i) for i in build_instances(docs, cfg, SPECIAL, WORD_START))

    # Three "workers", documents and passes in shuffled order, each worker with its own pool built from the
    # documents in another order.
    ids = list(docs)
    random.Random(1).shuffle(ids)
    out = []
    for worker in range(3):
        shuffled = {doc_id: docs[doc_id] for doc_id in random.Random(worker).sample(ids, len(ids))}
        pool = DocumentPool(shuffled, V)
        for doc_id in ids[worker::3]:
            for pass_index in reversed(range(cfg.dupe_factor)):
                out += document_instances(doc_id, docs[doc_id], pass_index, cfg, SPECIAL, WORD_START, pool)
    assert sorted(fingerprint(i) for i in out) == expected

    other_seed = SopConfig(max_seq_len=96, dupe_factor=3, seed=1)
    assert sorted(fingerprint(i) for i in build_instances(docs, other_seed, SPECIAL, WORD_START)) != expected


def test_document_pool_is_canonical() -> None:
    docs = random_docs(20, 9)
    pool_a = DocumentPool(docs, V)
    pool_b = DocumentPool(dict(reversed(list(docs.items()))), V)
    for seed in range(50):
        a = pool_a(np.random.default_rng(seed), "doc-9-0")
        b = pool_b(np.random.default_rng(seed), "doc-9-0")
        assert len(a) == len(b) and all((x == y).all() for x, y in zip(a, b, strict=True))
    lonely = DocumentPool({"only": [[5, 6]]}, V)
    assert lonely(np.random.default_rng(0), "only")[0].tolist() == [5, 6]  # as the reference, after 10 tries


def test_document_rngs_are_keyed() -> None:
    draws = {k: document_rngs(*k)[0].random() for k in [(1, "a", 0), (1, "a", 1), (1, "b", 0), (2, "a", 0)]}
    assert len(set(draws.values())) == 4
    assert document_rngs(1, "a", 0)[0].random() == draws[1, "a", 0]
    pairs, masking = document_rngs(1, "a", 0)
    assert pairs.random() != masking.random()


@pytest.mark.parametrize("key", [(1, "a", 0), (12345, "wikitext:007", 39), (0, "zhwiki:0001#r3", 1)])
def test_reused_rngs_are_the_document_rngs(key: tuple) -> None:
    """The builder's generators (states computed, not seeded) give exactly the streams of `document_rngs`."""
    fresh, reused = document_rngs(*key), _reused_rngs(*key)
    for a, b in zip(fresh, reused, strict=True):
        assert a.bit_generator.state == b.bit_generator.state
        assert (a.random(64) == b.random(64)).all() and (
            a.integers(0, 30000, 64) == b.integers(0, 30000, 64)
        ).all()


# --- dynamic masking ---------------------------------------------------------------------------------------------


def test_dynamic_masking_shares_pairs_and_rule() -> None:
    static = SopConfig(max_seq_len=64, dupe_factor=2)
    dynamic = SopConfig(max_seq_len=64, dupe_factor=2, static_masking=False)
    docs = random_docs(40, 11)
    masked = list(build_instances(docs, static, SPECIAL, WORD_START))
    plain = list(build_instances(docs, dynamic, SPECIAL, WORD_START))
    assert [key(i) for i in masked] == [key(i) for i in plain]
    for m, p in zip(masked, plain, strict=True):
        check_instance(p, dynamic)
        assert (unmasked(m) == p.input_ids).all() and (m.word_start == p.word_start).all()
        assert m.sop_label == p.sop_label
        # The first instance of a document pass is masked with the first draws of its masking stream, so the
        # loader's rule reproduces static masking exactly.
        if p.index == 0:
            out = mask_dynamic(
                p.input_ids, p.word_start, SPECIAL, static, document_rngs(static.seed, *key(p)[:2])[1]
            )
            assert (out.input_ids == m.input_ids).all()
            assert (out.masked_lm_positions == m.masked_lm_positions).all()
            assert (out.masked_lm_ids == m.masked_lm_ids).all()
            assert (out.masked_lm_weights == m.masked_lm_weights).all()


def test_mask_dynamic_checks_shapes() -> None:
    with pytest.raises(ValueError, match="shape"):
        mask_dynamic(
            np.zeros(8, np.int32), np.zeros(7, np.int8), SPECIAL, SopConfig(), np.random.default_rng(0)
        )
