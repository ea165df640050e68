"""Fine-tuning a registered pretrained ALBERT for named-entity recognition (`albert finetune --task ner`).

    pretrained model + tagged sentences (CoNLL or JSONL, `training.ner`)
      -> held-out part: `--eval FILE`, or `eval_share` of the sentences chosen by a hash of their words
      -> each word encoded on its own; its first piece carries the tag, later pieces are ignored by the loss
      -> AlbertForTokenClassification: the pretrained encoder + a new linear layer per token (init "random": the
         control with a freshly initialised encoder)
      -> AdamW, warmup then linear decay, clipping at 1.0; entity-level precision / recall / F1 after each epoch
      -> MLflow run in `albert-finetuning` (params, per-epoch figures, the per-type table as an artifact)
      -> <home>/finetune/<run>/model -> registered pyfunc (`training/ner_pyfunc.py`: entities with offsets)

The schedule, optimizer, lineage tags and registration are the text classifier's (`training.finetune`).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from albert_core.errors import UserError
from albert_core.model import AlbertForTokenClassification
from albert_core.tagging import word_pieces
from albert_core.tokenizer import SentencePieceTokenizer
from training import ner_pyfunc
from training.config import FinetuneConfig
from training.finetune import TRAIN_LOSS, index_batches, labels_tag, padded, train_epoch
from training.finetune_run import FinetuneRun, train_and_held_out
from training.ner import (
    IGNORE,
    OUTSIDE,
    Sentence,
    align,
    entity_scores,
    held_out,
    labels_of,
    read_tagged,
    repaired_i_tags,
)

EVAL_F1, EVAL_PRECISION, EVAL_RECALL = "eval_entity_f1", "eval_entity_precision", "eval_entity_recall"


def load_sentences(cfg: FinetuneConfig) -> tuple[list[Sentence], list[Sentence], list[str]]:
    """(train, eval, labels): read and checked before anything is downloaded or logged."""
    train, evaluation = train_and_held_out(cfg, read_tagged, held_out, "sentences")
    labels = labels_of(train)
    unseen = sorted({tag for s in evaluation for tag in s.tags} - set(labels))
    if unseen:
        raise UserError(
            f"held-out tags {unseen[:5]} never occur in the training sentences of {cfg.train_path}"
        )
    return train, evaluation, labels


def encode(
    tokenizer: SentencePieceTokenizer, sentences: list[Sentence], label_ids: dict[str, int], max_seq_len: int
) -> tuple[list[list[int]], list[list[int]], int]:
    """(`[CLS] pieces [SEP]` per sentence, labels aligned to them, sentences cut short by max_seq_len)."""
    rows, labels, cut = [], [], 0
    for sentence in sentences:
        ids, tags, kept = align(
            word_pieces(tokenizer, sentence.tokens), sentence.tags, label_ids, max_seq_len - 2
        )
        rows.append([tokenizer.cls_id, *ids, tokenizer.sep_id])
        labels.append([IGNORE, *tags, IGNORE])
        cut += kept < len(sentence.tokens)
    return rows, labels, cut


def _padded_labels(labels: list[list[int]], width: int) -> torch.Tensor:
    out = torch.full((len(labels), width), IGNORE, dtype=torch.long)
    for i, row in enumerate(labels):
        out[i, : len(row)] = torch.tensor(row, dtype=torch.long)
    return out


@torch.inference_mode()
def predict_tags(
    model, rows, labels, names: list[str], n_words: list[int], batch_size, pad_id, device
) -> list[list[str]]:
    """Each sentence's predicted tag per word (its first piece's argmax); words past the sequence limit get `O`."""
    model.eval()
    tags: list[list[str]] = []
    for batch in index_batches(len(rows), batch_size):
        inputs = padded([rows[i] for i in batch], pad_id)
        predicted = model(**{k: v.to(device) for k, v in inputs.items()}).logits.argmax(-1).cpu()
        for j, i in enumerate(batch):
            firsts = [k for k, label in enumerate(labels[i]) if label != IGNORE]
            words = [names[t] for t in predicted[j, firsts].tolist()]
            tags.append(words + [OUTSIDE] * (n_words[i] - len(words)))
    return tags


def finetune_ner(
    cfg: FinetuneConfig, *, home: Path, progress: Callable[[str], Any] = print
) -> dict[str, Any]:
    """Fine-tune `cfg.model_uri` to tag entities, evaluate entity F1 after every epoch, log the run to MLflow
    and register the tagger (alias `candidate`). Returns the summary the CLI prints."""
    train, evaluation, labels = load_sentences(cfg)  # before anything is downloaded or logged
    label_ids = {label: i for i, label in enumerate(labels)}
    with FinetuneRun(cfg, home) as run:
        train_rows, train_labels, train_cut = encode(run.tokenizer, train, label_ids, cfg.max_seq_len)
        eval_rows, eval_labels, eval_cut = encode(run.tokenizer, evaluation, label_ids, cfg.max_seq_len)
        eval_words = [len(s.tokens) for s in evaluation]
        model = run.build(AlbertForTokenClassification, len(labels))
        optimizer, scheduler = run.schedule(model, len(train_rows))
        run.start(params={"num_labels": len(labels)}, tags={"labels": labels_tag(labels)}, progress=progress,
                  header=f"entities in {len(train)} train / {len(evaluation)} eval sentences ({train_cut + eval_cut} "
                         f"cut at {cfg.max_seq_len} pieces, {repaired_i_tags(train)} I- tags read as B-), "
                         f"{len(labels)} tags")  # fmt: skip
        order, pad_id = run.epoch_order(), run.tokenizer.pad_id
        for epoch in range(1, cfg.epochs + 1):
            batches = index_batches(len(train_rows), cfg.batch_size, order(len(train_rows)))
            inputs = (padded(rows := [train_rows[i] for i in batch], pad_id,
                             labels=_padded_labels([train_labels[i] for i in batch], max(map(len, rows))))
                      for batch in batches)  # fmt: skip
            train_loss = train_epoch(model, optimizer, scheduler, inputs, run.device)
            predicted = predict_tags(model, eval_rows, eval_labels, labels, eval_words, cfg.batch_size, pad_id,
                                     run.device)  # fmt: skip
            scores = entity_scores([s.tags for s in evaluation], predicted)
            micro = scores["micro"]
            run.log({TRAIN_LOSS: train_loss, EVAL_F1: micro["f1"], EVAL_PRECISION: micro["precision"],
                     EVAL_RECALL: micro["recall"]}, step=epoch)  # fmt: skip
            progress(f"epoch {epoch}/{cfg.epochs}: train_loss {train_loss:.4f}  entity F1 {micro['f1']:.4f} "
                     f"(precision {micro['precision']:.4f}, recall {micro['recall']:.4f}, "
                     f"{micro['support']} entities)")  # fmt: skip
        # per type: precision, recall, F1, support
        run.finish(model, labels=labels, pyfunc=ner_pyfunc, artifacts={"entity_scores.json": scores})
    return run.summary(
        entity_f1=micro["f1"], entity_precision=micro["precision"], entity_recall=micro["recall"],
        per_type={k: v for k, v in scores.items() if k != "micro"}, labels=labels,
        train_sentences=len(train), eval_sentences=len(evaluation),
    )  # fmt: skip
