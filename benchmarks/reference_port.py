"""Plain-Python port of google-research/albert `create_pretraining_data.py`: the baseline for parity tests and
the SOP builder benchmark (`benchmarks.sop_builder`, `tests/albert_core/test_reference_parity.py`).

Ported from https://github.com/google-research/albert/blob/0cf7f5745e45a1e5af626b692b76682d24bf7b8b/create_pretraining_data.py
function by function, statement by statement: `create_training_instances` (minus reading and tokenizing files),
`create_instances_from_document`, `_is_start_piece_sp`, `create_masked_lm_predictions`, `truncate_seq_pair`, and
the feature part of `write_instance_to_example_files` (ids, padding; no TFRecord). It works on SentencePiece
pieces (strings), as the reference does, and uses the same generators the same way: one `random.Random(seed)`
over all documents, and numpy's legacy generator for n-gram sizes (`np.random.choice`).

What differs, none of it touching the algorithm or the order of random draws:

- Flags are arguments or fixed to the ALBERT defaults: `do_whole_word_mask=True`, `favor_shorter_ngram=True`,
  `random_next_sentence=False` (SOP), `do_permutation=False`; the branches of the other values are left out.
  `ngram` (3) stays an argument. The SentencePiece path of `is_start_piece` (`_is_start_piece_sp`) is the one used.
- The reference calls the global, unseeded `np.random.choice`; here a `np.random.RandomState(seed)` gives the
  same kind of stream (`np.random.choice` is the global `RandomState`'s `choice`), repeatable.
- `TrainingInstance` carries bookkeeping fields the reference does not have — `document_index`, `pass_index`,
  `short_target` and `random_document` — so tests can tell swaps from single-sentence negatives and count short
  targets per document pass. They are set from values the reference computes anyway; no extra draws.
- Input is already tokenized: `all_documents` is a list of documents, each a list of sentences (lists of pieces);
  the reference reads one sentence per line and tokenizes with its own `FullTokenizer`.

No vectorisation beyond the reference's own: lists of strings, `sum(lists, [])`, sets. This is the baseline.
"""

from __future__ import annotations

import random
from collections import namedtuple
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

CLS, SEP, MASK = "[CLS]", "[SEP]", "[MASK]"


@dataclass
class TrainingInstance:
    """A single training instance (sentence pair), as the reference's class, plus bookkeeping (module docstring)."""

    tokens: list[str]
    segment_ids: list[int]
    masked_lm_positions: list[int]
    masked_lm_labels: list[str]
    is_random_next: bool  # the sentence-order label: 1 = swapped, or B from another document
    token_boundary: list[int]
    document_index: int = -1
    pass_index: int = -1
    short_target: bool = False
    random_document: bool = False


MaskedLmInstance = namedtuple("MaskedLmInstance", ["index", "label"])


def create_training_instances(
    all_documents: list[list[list[str]]],
    vocab_words: Sequence[str],
    max_seq_length: int,
    dupe_factor: int,
    short_seq_prob: float,
    masked_lm_prob: float,
    max_predictions_per_seq: int,
    seed: int = 12345,
    ngram: int = 3,
) -> list[TrainingInstance]:
    """Create `TrainingInstance`s from tokenized documents: `dupe_factor` passes over all documents.

    `vocab_words` are all pieces of the vocabulary in id order (the reference's `list(tokenizer.vocab.keys())`).
    `document_index` of an instance refers to `all_documents` as given (before the reference's shuffle).
    """
    rng = random.Random(seed)  # main(): rng = random.Random(FLAGS.random_seed)
    np_rng = np.random.RandomState(seed)
    # Remove empty documents (in the reference, empty lines have already been skipped by `if tokens:`).
    indexed = [(k, [s for s in doc if s]) for k, doc in enumerate(all_documents)]
    indexed = [(k, doc) for k, doc in indexed if doc]
    rng.shuffle(indexed)
    original_index = [k for k, _ in indexed]
    all_documents = [doc for _, doc in indexed]

    instances = []
    for pass_index in range(dupe_factor):
        for document_index in range(len(all_documents)):
            created = create_instances_from_document(
                all_documents,
                document_index,
                max_seq_length,
                short_seq_prob,
                masked_lm_prob,
                max_predictions_per_seq,
                vocab_words,
                rng,
                np_rng,
                ngram,
            )
            for instance in created:
                instance.document_index = original_index[document_index]
                instance.pass_index = pass_index
            instances.extend(created)

    rng.shuffle(instances)
    return instances


def create_instances_from_document(
    all_documents: list[list[list[str]]],
    document_index: int,
    max_seq_length: int,
    short_seq_prob: float,
    masked_lm_prob: float,
    max_predictions_per_seq: int,
    vocab_words: Sequence[str],
    rng: random.Random,
    np_rng: np.random.RandomState,
    ngram: int = 3,
) -> list[TrainingInstance]:
    """Creates `TrainingInstance`s for a single document (SOP: `random_next_sentence=False`)."""
    document = all_documents[document_index]

    # Account for [CLS], [SEP], [SEP]
    max_num_tokens = max_seq_length - 3

    # The reference: usually fill the whole sequence; with probability short_seq_prob use a shorter target, once
    # per document (and pass), to lessen the mismatch between pretraining and fine-tuning lengths.
    target_seq_length = max_num_tokens
    short_target = False
    if rng.random() < short_seq_prob:
        short_target = True
        target_seq_length = rng.randint(2, max_num_tokens)

    instances = []
    current_chunk: list[list[str]] = []
    current_length = 0
    i = 0
    while i < len(document):
        segment = document[i]
        current_chunk.append(segment)
        current_length += len(segment)
        if i == len(document) - 1 or current_length >= target_seq_length:
            if current_chunk:
                # `a_end` is how many segments from `current_chunk` go into the `A` (first) sentence.
                a_end = 1
                if len(current_chunk) >= 2:
                    a_end = rng.randint(1, len(current_chunk) - 1)

                tokens_a: list[str] = []
                for j in range(a_end):
                    tokens_a.extend(current_chunk[j])

                tokens_b: list[str] = []
                random_document = False
                # Random next
                if len(current_chunk) == 1:
                    is_random_next = True
                    random_document = True
                    target_b_length = target_seq_length - len(tokens_a)

                    # Try to make sure that the random document is not the one we are processing.
                    for _ in range(10):
                        random_document_index = rng.randint(0, len(all_documents) - 1)
                        if random_document_index != document_index:
                            break

                    random_document_tokens = all_documents[random_document_index]
                    random_start = rng.randint(0, len(random_document_tokens) - 1)
                    for j in range(random_start, len(random_document_tokens)):
                        tokens_b.extend(random_document_tokens[j])
                        if len(tokens_b) >= target_b_length:
                            break
                    # We didn't actually use these segments so we "put them back" (always 0 here: a_end == 1).
                    num_unused_segments = len(current_chunk) - a_end
                    i -= num_unused_segments
                elif rng.random() < 0.5:
                    is_random_next = True
                    for j in range(a_end, len(current_chunk)):
                        tokens_b.extend(current_chunk[j])
                    # Note(mingdachen): in this case, we just swap tokens_a and tokens_b
                    tokens_a, tokens_b = tokens_b, tokens_a
                # Actual next
                else:
                    is_random_next = False
                    for j in range(a_end, len(current_chunk)):
                        tokens_b.extend(current_chunk[j])
                truncate_seq_pair(tokens_a, tokens_b, max_num_tokens, rng)

                assert len(tokens_a) >= 1
                assert len(tokens_b) >= 1

                tokens = []
                segment_ids = []
                tokens.append(CLS)
                segment_ids.append(0)
                for token in tokens_a:
                    tokens.append(token)
                    segment_ids.append(0)

                tokens.append(SEP)
                segment_ids.append(0)

                for token in tokens_b:
                    tokens.append(token)
                    segment_ids.append(1)
                tokens.append(SEP)
                segment_ids.append(1)

                (tokens, masked_lm_positions, masked_lm_labels, token_boundary) = (
                    create_masked_lm_predictions(
                        tokens, masked_lm_prob, max_predictions_per_seq, vocab_words, rng, np_rng, ngram
                    )
                )
                instance = TrainingInstance(
                    tokens=tokens,
                    segment_ids=segment_ids,
                    is_random_next=is_random_next,
                    token_boundary=token_boundary,
                    masked_lm_positions=masked_lm_positions,
                    masked_lm_labels=masked_lm_labels,
                    short_target=short_target,
                    random_document=random_document,
                )
                instances.append(instance)
            current_chunk = []
            current_length = 0
        i += 1

    return instances


def _is_start_piece_sp(piece: str) -> bool:
    """Check if the current word piece is the starting piece (sentence piece).

    As the reference under Python 3: the "€"/"£" entries are bytes, so they never equal a str piece or character.
    """
    special_pieces = set('!"#$%&"()*+,-./:;?@[\\]^_`{|}~')
    special_pieces.add("€".encode())
    special_pieces.add("£".encode())
    # Note(mingdachen): For foreign characters, we always treat them as a whole piece.
    english_chars = set("abcdefghijklmnopqrstuvwxyz")
    return bool(
        piece.startswith("▁")
        or piece.startswith("<")
        or piece in special_pieces
        or not all([str(i).lower() in english_chars.union(special_pieces) for i in piece])
    )


def create_masked_lm_predictions(
    tokens: list[str],
    masked_lm_prob: float,
    max_predictions_per_seq: int,
    vocab_words: Sequence[str],
    rng: random.Random,
    np_rng: np.random.RandomState,
    ngram: int = 3,
) -> tuple[list[str], list[int], list[str], list[int]]:
    """Creates the predictions for the masked LM objective (whole-word n-grams, no permutation)."""
    cand_indexes: list[list[int]] = []
    # Note(mingdachen): token_boundary records whether a piece starts a word (1), so that on-the-fly whole word
    # masking is possible.
    token_boundary = [0] * len(tokens)

    for i, token in enumerate(tokens):
        if token in (CLS, SEP):
            token_boundary[i] = 1
            continue
        # Whole Word Masking: mask all of the pieces of an original word.
        if len(cand_indexes) >= 1 and not _is_start_piece_sp(token):
            cand_indexes[-1].append(i)
        else:
            cand_indexes.append([i])
            if _is_start_piece_sp(token):
                token_boundary[i] = 1

    output_tokens = list(tokens)

    masked_lm_positions: list[int] = []
    masked_lm_labels: list[str] = []

    if masked_lm_prob == 0:
        return (output_tokens, masked_lm_positions, masked_lm_labels, token_boundary)

    num_to_predict = min(max_predictions_per_seq, max(1, int(round(len(tokens) * masked_lm_prob))))

    # Note(mingdachen): By default, we set the probabilities to favor shorter ngram sequences.
    ngrams = np.arange(1, ngram + 1, dtype=np.int64)
    pvals = 1.0 / np.arange(1, ngram + 1)
    pvals /= pvals.sum(keepdims=True)

    ngram_indexes = []
    for idx in range(len(cand_indexes)):
        ngram_index = []
        for n in ngrams:
            ngram_index.append(cand_indexes[idx : idx + n])
        ngram_indexes.append(ngram_index)

    rng.shuffle(ngram_indexes)

    masked_lms = []
    covered_indexes: set[int] = set()
    for cand_index_set in ngram_indexes:
        if len(masked_lms) >= num_to_predict:
            break
        if not cand_index_set:
            continue
        # Note(mingdachen): Skip current piece if they are covered in lm masking or previous ngrams.
        # (In the reference this loop's `continue` only continues itself: it has no effect. Kept.)
        for index_set in cand_index_set[0]:
            for index in index_set:
                if index in covered_indexes:
                    continue

        n = np_rng.choice(
            ngrams[: len(cand_index_set)],
            p=pvals[: len(cand_index_set)] / pvals[: len(cand_index_set)].sum(keepdims=True),
        )
        index_set = sum(cand_index_set[n - 1], [])
        n -= 1
        # Note(mingdachen): Repeatedly looking for a candidate that does not exceed the maximum number of
        # predictions by trying shorter ngrams.
        while len(masked_lms) + len(index_set) > num_to_predict:
            if n == 0:
                break
            index_set = sum(cand_index_set[n - 1], [])
            n -= 1
        # If adding a whole-word mask would exceed the maximum number of predictions, then just skip this
        # candidate.
        if len(masked_lms) + len(index_set) > num_to_predict:
            continue
        is_any_index_covered = False
        for index in index_set:
            if index in covered_indexes:
                is_any_index_covered = True
                break
        if is_any_index_covered:
            continue
        for index in index_set:
            covered_indexes.add(index)

            masked_token = None
            # 80% of the time, replace with [MASK]
            if rng.random() < 0.8:
                masked_token = MASK
            else:
                # 10% of the time, keep original
                if rng.random() < 0.5:
                    masked_token = tokens[index]
                # 10% of the time, replace with random word
                else:
                    masked_token = vocab_words[rng.randint(0, len(vocab_words) - 1)]

            output_tokens[index] = masked_token

            masked_lms.append(MaskedLmInstance(index=index, label=tokens[index]))
    assert len(masked_lms) <= num_to_predict

    # The reference shuffles again for its permutation branch (off by default); the draw still happens.
    rng.shuffle(ngram_indexes)

    masked_lms = sorted(masked_lms, key=lambda x: x.index)

    for p in masked_lms:
        masked_lm_positions.append(p.index)
        masked_lm_labels.append(p.label)
    return (output_tokens, masked_lm_positions, masked_lm_labels, token_boundary)


def truncate_seq_pair(
    tokens_a: list[str], tokens_b: list[str], max_num_tokens: int, rng: random.Random
) -> None:
    """Truncates a pair of sequences to a maximum sequence length (in place)."""
    while True:
        total_length = len(tokens_a) + len(tokens_b)
        if total_length <= max_num_tokens:
            break

        trunc_tokens = tokens_a if len(tokens_a) > len(tokens_b) else tokens_b
        assert len(trunc_tokens) >= 1

        # We want to sometimes truncate from the front and sometimes from the back to add more randomness and
        # avoid biases.
        if rng.random() < 0.5:
            del trunc_tokens[0]
        else:
            trunc_tokens.pop()


def instance_features(
    instance: TrainingInstance,
    vocab: Mapping[str, int],
    max_seq_length: int,
    max_predictions_per_seq: int,
) -> dict[str, list[int] | list[float]]:
    """The features `write_instance_to_example_files` puts into a tf.train.Example, as plain lists.

    `vocab` maps piece -> id (`convert_tokens_to_ids`). The reference's random flush of the writer is left out.
    """
    input_ids = [vocab[t] for t in instance.tokens]
    input_mask = [1] * len(input_ids)
    segment_ids = list(instance.segment_ids)
    token_boundary = list(instance.token_boundary)
    assert len(input_ids) <= max_seq_length

    while len(input_ids) < max_seq_length:
        input_ids.append(0)
        input_mask.append(0)
        segment_ids.append(0)
        token_boundary.append(0)

    masked_lm_positions = list(instance.masked_lm_positions)
    masked_lm_ids = [vocab[t] for t in instance.masked_lm_labels]
    masked_lm_weights = [1.0] * len(masked_lm_ids)

    while len(masked_lm_positions) < max_predictions_per_seq:
        masked_lm_positions.append(0)
        masked_lm_ids.append(0)
        masked_lm_weights.append(0.0)

    return {
        "input_ids": input_ids,
        "input_mask": input_mask,
        "segment_ids": segment_ids,
        "token_boundary": token_boundary,
        "masked_lm_positions": masked_lm_positions,
        "masked_lm_ids": masked_lm_ids,
        "masked_lm_weights": masked_lm_weights,
        "next_sentence_labels": [1 if instance.is_random_next else 0],
    }
