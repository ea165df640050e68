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

import math
import tempfile
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import torch

from albert_core.checkpoint import load_model, save_classifier, verify_classifier_folder
from albert_core.errors import UserError
from albert_core.model import AlbertForTokenClassification
from albert_core.optim import build_optimizer, lr_scheduler
from albert_core.storage import read_json, sha256_file
from albert_core.tokenizer import SentencePieceTokenizer
from training import ner_pyfunc
from training.classifier_pyfunc import pad_batch
from training.config import FinetuneConfig
from training.finetune import (
    EXPERIMENT,
    METRICS_SPILL,
    TRAIN_LOSS,
    WEIGHT_DECAY,
    absolute_location,
    build_classifier,
    index_batches,
    labels_tag,
    resolve_pretrained,
    threads_for,
    train_epoch,
)
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
from training.registry import register_pyfunc
from training.tracking import MlflowTracker

EVAL_F1, EVAL_PRECISION, EVAL_RECALL = "eval_entity_f1", "eval_entity_precision", "eval_entity_recall"


def load_sentences(cfg: FinetuneConfig) -> tuple[list[Sentence], list[Sentence], list[str]]:
    """(train, eval, labels): read and checked before anything is downloaded or logged."""
    sentences = read_tagged(cfg.train_path)
    if cfg.eval_path is not None:
        train, evaluation = sentences, read_tagged(cfg.eval_path)
    else:
        train = [s for s in sentences if not held_out(s, cfg.eval_share)]
        evaluation = [s for s in sentences if held_out(s, cfg.eval_share)]
    if not train or not evaluation:
        raise UserError(f"{cfg.train_path}: {len(train)} training and {len(evaluation)} held-out sentences; "
                        "both parts need some (change eval_share, or give --eval)")  # fmt: skip
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
        words = [tokenizer.encode_one(word) or [tokenizer.unk_id] for word in sentence.tokens]
        ids, tags, kept = align(words, sentence.tags, label_ids, max_seq_len - 2)
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
        input_ids, attention_mask = pad_batch([rows[i] for i in batch], pad_id)
        predicted = (
            model(input_ids.to(device), attention_mask=attention_mask.to(device)).logits.argmax(-1).cpu()
        )
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
    import mlflow

    from training.registry import configure_mlflow, download_model, get_or_create_experiment, tracking_uri

    started = time.perf_counter()
    home = Path(home)
    train, evaluation, labels = load_sentences(cfg)
    label_ids = {label: i for i, label in enumerate(labels)}
    model_name = cfg.registered_model_name
    configure_mlflow(home)
    pinned_uri, pretrained_version = resolve_pretrained(cfg.model_uri)
    run_name = f"{model_name}-{datetime.now(UTC):%Y%m%d-%H%M%S-%f}"
    previous_threads, threads = torch.get_num_threads(), threads_for(cfg)
    torch.set_num_threads(threads)
    try:
        with tempfile.TemporaryDirectory(prefix="albert-finetune-") as scratch:
            pretrained_dir = download_model(pinned_uri, Path(scratch) / "pretrained")
            tokenizer = SentencePieceTokenizer.load(pretrained_dir / "tokenizer")
            pretrained = load_model(pretrained_dir)
            pretrained_sha256 = read_json(pretrained_dir / "manifest.json")["files"]["model.safetensors"]
            if cfg.max_seq_len > pretrained.config.max_position_embeddings:
                raise UserError(f"max_seq_len {cfg.max_seq_len} exceeds the model's "
                                f"{pretrained.config.max_position_embeddings} positions")  # fmt: skip
            train_rows, train_labels, train_cut = encode(tokenizer, train, label_ids, cfg.max_seq_len)
            eval_rows, eval_labels, eval_cut = encode(tokenizer, evaluation, label_ids, cfg.max_seq_len)
            eval_words = [len(s.tokens) for s in evaluation]

            torch.manual_seed(cfg.seed)
            device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
            model = build_classifier(pretrained, len(labels), cfg.init, AlbertForTokenClassification).to(
                device
            )
            del pretrained
            steps_per_epoch = math.ceil(len(train_rows) / cfg.batch_size)
            total_steps = cfg.epochs * steps_per_epoch
            warmup_steps = round(cfg.warmup_ratio * total_steps)
            optimizer = build_optimizer(model, "adamw", cfg.lr, weight_decay=WEIGHT_DECAY)
            scheduler = lr_scheduler(optimizer, warmup_steps, total_steps)
            shuffle = torch.Generator().manual_seed(cfg.seed)

            with mlflow.start_run(
                experiment_id=get_or_create_experiment(EXPERIMENT, home), run_name=run_name
            ) as run:
                run_id = run.info.run_id
                mlflow.log_params({**cfg.to_dict(), "threads": threads, "num_labels": len(labels),
                                   "warmup_steps": warmup_steps, "total_steps": total_steps})  # fmt: skip
                lineage = {
                    "task": "ner", "init": cfg.init, "pretrained_model_uri": absolute_location(cfg.model_uri),
                    "pretrained_model_version": pretrained_version, "pretrained_model_sha256": pretrained_sha256,
                    "train_sha256": sha256_file(cfg.train_path),
                    "eval_sha256": sha256_file(cfg.eval_path) if cfg.eval_path else f"held out {cfg.eval_share}",
                    "labels": labels_tag(labels),
                }  # fmt: skip
                mlflow.set_tags({**lineage, "train_path": absolute_location(cfg.train_path)})
                tracker = MlflowTracker(tracking_uri(home), run_id, flush_every=1, system_metrics=False,
                                        spill_path=home / "finetune" / run_name / METRICS_SPILL)  # fmt: skip
                progress(f"fine-tuning {cfg.model_uri} (version {pretrained_version or '-'}, init {cfg.init}) into "
                         f"{model_name} for entities: {len(train)} train / {len(evaluation)} eval sentences "
                         f"({train_cut + eval_cut} cut at {cfg.max_seq_len} pieces, {repaired_i_tags(train)} "
                         f"I- tags read as B-), {len(labels)} tags, {cfg.epochs} epochs of {steps_per_epoch} "
                         f"steps, {threads} threads; run {run_name}")  # fmt: skip
                for epoch in range(1, cfg.epochs + 1):
                    order = torch.randperm(len(train_rows), generator=shuffle).tolist()
                    batches = index_batches(len(train_rows), cfg.batch_size, order)
                    targets = lambda batch, width: _padded_labels([train_labels[i] for i in batch], width)  # noqa: E731
                    train_loss = train_epoch(model, optimizer, scheduler, train_rows, targets, batches,
                                             tokenizer.pad_id, device)  # fmt: skip
                    predicted = predict_tags(model, eval_rows, eval_labels, labels, eval_words, cfg.batch_size,
                                             tokenizer.pad_id, device)  # fmt: skip
                    scores = entity_scores([s.tags for s in evaluation], predicted)
                    micro = scores["micro"]
                    tracker.log({TRAIN_LOSS: train_loss, EVAL_F1: micro["f1"], EVAL_PRECISION: micro["precision"],
                                 EVAL_RECALL: micro["recall"]}, step=epoch)  # fmt: skip
                    progress(f"epoch {epoch}/{cfg.epochs}: train_loss {train_loss:.4f}  entity F1 "
                             f"{micro['f1']:.4f} (precision {micro['precision']:.4f}, recall "
                             f"{micro['recall']:.4f}, {micro['support']} entities)")  # fmt: skip
                tracker.close()
                mlflow.log_dict(scores, "entity_scores.json")  # per type: precision, recall, F1, support

                model_dir = home / "finetune" / run_name / "model"
                save_classifier(model.cpu(), model_dir, labels=labels, max_seq_len=cfg.max_seq_len,
                                tokenizer_dir=pretrained_dir / "tokenizer",
                                metadata={"run_name": run_name, **lineage})  # fmt: skip
                manifest = verify_classifier_folder(model_dir)
                registered = register_pyfunc(
                    model_dir, run_id=run_id, model_name=model_name, code_file=ner_pyfunc.__file__,
                    signature=ner_pyfunc.SIGNATURE, input_example=ner_pyfunc.input_example(),
                    weights_sha256=manifest["files"]["model.safetensors"], tags={"run_name": run_name, **lineage},
                )  # fmt: skip
    finally:
        torch.set_num_threads(previous_threads)
    return {
        "run_id": run_id, "run_name": run_name, "model_name": model_name, **registered,
        "model_dir": str(model_dir), "tracking_uri": tracking_uri(home), "task": "ner",
        "pretrained_model_uri": cfg.model_uri, "pretrained_model_version": pretrained_version, "init": cfg.init,
        "entity_f1": micro["f1"], "entity_precision": micro["precision"], "entity_recall": micro["recall"],
        "per_type": {k: v for k, v in scores.items() if k != "micro"}, "labels": labels,
        "train_sentences": len(train), "eval_sentences": len(evaluation),
        "seconds": round(time.perf_counter() - started, 1),
    }  # fmt: skip
