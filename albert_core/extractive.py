"""Extractive question answering on SentencePiece pieces: a question and a context of any length as model
windows (BERT's document stride), and the most probable answer span of the windows mapped back to characters of
the context. Shared by fine-tuning (`training.qa`) and the served model (which loads with `albert_core` only), so
both see exactly the same inputs.

    [CLS] question pieces [SEP] context pieces first .. first+length-1 [SEP]      token types 0 ... 0 1 ... 1

A context longer than the room left by the question is covered by windows that start `doc_stride` pieces apart
(the last one ends with the context). A span's probability is p(start) * p(end), each a softmax over the window's
context pieces and [CLS] (what `transformers`' question-answering pipeline computes); [CLS] twice is "no answer".
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from albert_core.tokenizer import SentencePieceTokenizer


@dataclass(frozen=True, eq=False)
class Window:
    input_ids: (
        np.ndarray
    )  # int32: a SQuAD-sized training set is ~30 M ids, 4 bytes each instead of ~36 in a list
    first: int  # index in the context's pieces of the window's first context piece
    offset: int  # position of that piece in input_ids: len(question) + 2
    length: int  # context pieces in the window

    @property
    def token_type_ids(self) -> np.ndarray:
        """0 for [CLS] question [SEP], 1 for the context and its [SEP]."""
        return (np.arange(len(self.input_ids)) >= self.offset).astype(np.int32)


@dataclass(frozen=True)
class Span:
    start: int | None  # context piece indices, inclusive; None for "no answer"
    end: int | None
    probability: float


def question_pieces(
    tokenizer: SentencePieceTokenizer, question: str, max_query_len: int
) -> tuple[list[int], bool]:
    """(the question's pieces, cut to `max_query_len`; whether it was cut)."""
    ids = tokenizer.encode_one(question)
    return ids[:max_query_len], len(ids) > max_query_len


def windows(
    tokenizer: SentencePieceTokenizer,
    question_ids: list[int],
    context_ids: list[int],
    max_seq_len: int,
    doc_stride: int,
) -> list[Window]:
    """The windows that cover the context (one, holding no context piece, for an empty context)."""
    room = max_seq_len - len(question_ids) - 3
    if room < 1:
        raise ValueError(f"a {len(question_ids)}-piece question leaves no room in {max_seq_len} tokens")
    head = [tokenizer.cls_id, *question_ids, tokenizer.sep_id]
    out, first = [], 0
    while True:
        length = min(room, len(context_ids) - first)
        ids = np.array([*head, *context_ids[first : first + length], tokenizer.sep_id], dtype=np.int32)
        out.append(Window(ids, first, len(head), length))
        if first + length >= len(context_ids):
            return out
        first += min(length, doc_stride)


def span_in_window(window: Window, start: int, end: int) -> tuple[int, int]:
    """Input positions of the context pieces start..end, or (0, 0) ([CLS], the no-answer target) unless the
    window holds the whole span (BERT's rule: a window that cuts the answer teaches "not here")."""
    if start < window.first or end >= window.first + window.length:
        return 0, 0
    return window.offset + start - window.first, window.offset + end - window.first


def best_span(
    start_logits: torch.Tensor, end_logits: torch.Tensor, window: Window, max_answer_len: int
) -> tuple[Span | None, float]:
    """(the window's most probable span of at most `max_answer_len` pieces, or None if it holds no context;
    the probability of "no answer" in this window). Logits are the model's for `window.input_ids`."""
    positions = torch.cat([torch.zeros(1, dtype=torch.long), torch.arange(window.length) + window.offset])
    p_start = start_logits[positions].float().softmax(-1)  # index 0: [CLS]
    p_end = end_logits[positions].float().softmax(-1)
    null = float(p_start[0] * p_end[0])
    if window.length == 0:
        return None, null
    scores = p_start[1:, None] * p_end[None, 1:]  # (start, end) over context pieces
    allowed = (
        torch.ones_like(scores, dtype=torch.bool).triu().tril(max_answer_len - 1)
    )  # start <= end < start+L
    scores = scores.masked_fill(~allowed, -1.0)
    best = int(scores.argmax())
    start, end = divmod(best, window.length)
    return Span(window.first + start, window.first + end, float(scores[start, end])), null


def choose(candidates: list[tuple[Span | None, float]], allow_no_answer: bool) -> Span:
    """The best span over a context's windows; "no answer" (start None, with its probability) when allowed and
    the least confident window's no-answer probability beats it (BERT's SQuAD 2.0 rule, with probabilities
    instead of logit sums), or when the context holds no piece at all."""
    spans = [span for span, _ in candidates if span is not None]
    best = max(spans, key=lambda s: s.probability, default=None)
    null = min(p for _, p in candidates)
    if best is None or (allow_no_answer and null > best.probability):
        return Span(None, None, null)
    return best


def window_batch(batch: list[Window], pad_id: int) -> dict[str, torch.Tensor]:
    """The model's inputs for `batch`, padded to its longest window."""
    width = max(len(w.input_ids) for w in batch)
    input_ids = torch.full((len(batch), width), pad_id, dtype=torch.long)
    token_type_ids = torch.zeros_like(input_ids)
    attention_mask = torch.zeros_like(input_ids)
    for i, w in enumerate(batch):
        input_ids[i, : len(w.input_ids)] = torch.from_numpy(w.input_ids)
        token_type_ids[i, w.offset : len(w.input_ids)] = 1
        attention_mask[i, : len(w.input_ids)] = 1
    return {"input_ids": input_ids, "token_type_ids": token_type_ids, "attention_mask": attention_mask}


@torch.inference_mode()
def answer_spans(
    model: torch.nn.Module,
    all_windows: list[Window],
    owner: list[int],
    questions: int,
    *,
    pad_id: int,
    max_answer_len: int,
    allow_no_answer: bool,
    batch_size: int = 32,
) -> list[Span]:
    """The answer span of each of `questions`, from the windows they own (`owner[i]` is the
    question of window i), `batch_size` windows per forward pass."""
    model.eval()
    device = next(model.parameters()).device
    candidates: list[list[tuple[Span | None, float]]] = [[] for _ in range(questions)]
    for first in range(0, len(all_windows), batch_size):
        batch = all_windows[first : first + batch_size]
        out = model(**{k: v.to(device) for k, v in window_batch(batch, pad_id).items()})
        for j, window in enumerate(batch):
            span = best_span(out.start_logits[j].cpu(), out.end_logits[j].cpu(), window, max_answer_len)
            candidates[owner[first + j]].append(span)
    return [choose(c, allow_no_answer) for c in candidates]
