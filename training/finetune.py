"""Fine-tuning a registered pretrained ALBERT, in one process: text classification here; named entities
(`training.ner_finetune`) and extractive answers (`training.qa_finetune`) share this module's loop and
`training.finetune_run` (the MLflow run, lineage and registration around it).

    pretrained model (models:/NAME@ALIAS, models:/NAME/V or a folder)  +  train / eval files (JSONL, CSV, Parquet)
      -> AlbertForSequenceClassification: the pretrained encoder (every tensor copied) + a new linear head
         (init "random": the same config, tokenizer and head with a freshly initialised encoder, as a control)
      -> AdamW, warmup then linear decay, clipping at 1.0; accuracy and macro-F1 on eval after every epoch
      -> MLflow run in experiment `albert-finetuning` (per-epoch figures through `training.tracking`'s tracker)
      -> <home>/finetune/<run>/model -> registered pyfunc (`training.registry.register_pyfunc`, as pretraining)

The recipe is the paper's (ALBERT, Lan et al. 2020, section 4.1 and appendix A.4; BERT section 4): a linear layer
on the pooled `[CLS]` output, cross-entropy, a few epochs, a small learning rate. It runs without Ray: fine-tuning
data is small, and DDP would only add start-up time. Data is read and checked before anything is downloaded or
logged, so a wrong field name or a label seen only in eval fails in a second with one line.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from albert_core.errors import UserError
from albert_core.model import AlbertForSequenceClassification
from training import classifier_pyfunc
from training.classifier_pyfunc import encode_texts, pad_batch
from training.config import FinetuneConfig, Init  # noqa: F401  (FinetuneConfig re-exported)
from training.finetune_run import FinetuneRun

FORMATS = {".jsonl": "jsonl", ".ndjson": "jsonl", ".csv": "csv", ".parquet": "parquet", ".pq": "parquet"}
GRAD_CLIP = 1.0  # as in pretraining and the reference `run_classifier.py`
# Metric names shared by the loop, MLflow and tests (logged once per epoch, step = epoch).
TRAIN_LOSS, EVAL_ACCURACY, EVAL_F1_MACRO = "train_loss", "eval_accuracy", "eval_f1_macro"
EVAL_MAJORITY_BASELINE = "eval_majority_baseline"  # logged once, at step 0

Label = str | int | bool


@dataclass(frozen=True)
class Splits:
    """Both files read and checked; label ids index `labels` (sorted label values, as strings)."""

    labels: list[str]
    train_texts: list[str]
    train_label_ids: list[int]
    eval_texts: list[str]
    eval_label_ids: list[int]


def read_examples(path: str | Path, text_field: str, label_field: str) -> tuple[list[str], list[Label]]:
    """(texts, labels) of a JSONL, CSV or Parquet file, chosen by suffix; a problem is one `UserError` line
    naming the file, the field and, for JSONL, the line."""
    path = Path(path)
    kind = FORMATS.get(path.suffix.lower())
    if kind is None:
        raise UserError(f"{path}: unknown file type {path.suffix!r}; use {', '.join(FORMATS)}")
    if not path.is_file():
        raise UserError(f"{path} does not exist")
    if kind == "jsonl":
        texts, labels = _read_jsonl(path, text_field, label_field)
    else:
        texts, labels = _read_table(path, kind, text_field, label_field)
    if not texts:
        raise UserError(f"{path} has no examples")
    for i, (text, label) in enumerate(zip(texts, labels, strict=True)):
        if not isinstance(text, str):
            raise UserError(f"{path}: row {i + 1}: field {text_field!r} must be a string, got {text!r}")
        if not isinstance(label, Label):
            raise UserError(
                f"{path}: row {i + 1}: field {label_field!r} must be a string or an integer, got {label!r}"
            )
    return texts, labels


def _read_jsonl(path: Path, text_field: str, label_field: str) -> tuple[list[Any], list[Any]]:
    texts, labels = [], []
    with open(path, encoding="utf-8") as f:
        for lineno, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as e:
                raise UserError(f"{path}:{lineno}: not valid JSON ({e.msg})") from None
            if not isinstance(row, dict):
                raise UserError(f"{path}:{lineno}: expected a JSON object, got {type(row).__name__}")
            for field in (text_field, label_field):
                if field not in row:
                    raise UserError(
                        f"{path}:{lineno}: no field {field!r} (fields: {', '.join(row) or 'none'})"
                    )
            texts.append(row[text_field])
            labels.append(row[label_field])
    return texts, labels


def _read_table(path: Path, kind: str, text_field: str, label_field: str) -> tuple[list[Any], list[Any]]:
    import pyarrow as pa
    import pyarrow.csv
    import pyarrow.parquet

    try:
        if kind == "csv":
            # Text stays text even when a column looks numeric; labels keep the inferred type (ints sort as ints).
            options = pyarrow.csv.ConvertOptions(column_types={text_field: pa.string()})
            table = pyarrow.csv.read_csv(path, convert_options=options)
        else:
            table = pyarrow.parquet.read_table(path)
    except (pa.ArrowInvalid, OSError) as e:
        if "Empty CSV file" in str(e):
            raise UserError(f"{path} has no examples") from None
        raise UserError(f"cannot read {path} as {kind}: {str(e).splitlines()[0]}") from None
    for field in (text_field, label_field):
        if field not in table.column_names:
            raise UserError(f"{path}: no field {field!r} (fields: {', '.join(table.column_names) or 'none'})")
    return table.column(text_field).to_pylist(), table.column(label_field).to_pylist()


def _label_kind(labels: Sequence[Label], path: Path, field: str) -> type:
    """The one type all labels share (bool, int or str): mixing 1 and "1" is almost always a mistake."""
    kinds = {type(label) for label in labels}
    if len(kinds) > 1:
        names = ", ".join(sorted(k.__name__ for k in kinds))
        raise UserError(f"{path}: field {field!r} mixes label types ({names}); use one")
    return kinds.pop()


def load_splits(cfg: FinetuneConfig) -> Splits:
    """Read and check both files; map labels to ids in sorted order (numeric order for integer labels)."""
    train_path, eval_path = Path(cfg.train_path), Path(cfg.eval_path)
    train_texts, train_labels = read_examples(train_path, cfg.text_field, cfg.label_field)
    eval_texts, eval_labels = read_examples(eval_path, cfg.text_field, cfg.label_field)
    kind = _label_kind(train_labels, train_path, cfg.label_field)
    eval_kind = _label_kind(eval_labels, eval_path, cfg.label_field)
    if eval_kind is not kind:
        raise UserError(
            f"{eval_path}: field {cfg.label_field!r} holds {eval_kind.__name__} labels, "
            f"{train_path} holds {kind.__name__}"
        )
    values = sorted(set(train_labels))
    if len(values) < 2:
        raise UserError(
            f"{train_path}: field {cfg.label_field!r} has a single class ({values[0]!r}); "
            "classification needs at least 2"
        )
    unseen = sorted(set(eval_labels) - set(values))
    if unseen:
        shown = ", ".join(map(repr, unseen[:5])) + (", …" if len(unseen) > 5 else "")
        raise UserError(
            f"{eval_path}: label(s) {shown} in field {cfg.label_field!r} never occur in {train_path}"
        )
    names = [str(v) for v in values]
    if len(set(names)) != len(names):  # e.g. True and "True" cannot both occur (one kind), but be sure
        raise UserError(f"{train_path}: labels {values!r} are not distinct as strings")
    index = {v: i for i, v in enumerate(values)}
    return Splits(
        labels=names,
        train_texts=train_texts,
        train_label_ids=[index[v] for v in train_labels],
        eval_texts=eval_texts,
        eval_label_ids=[index[v] for v in eval_labels],
    )


# --- metrics ---------------------------------------------------------------------------------------------------


def accuracy_and_macro_f1(truth: Sequence[int], predicted: Sequence[int]) -> tuple[float, float]:
    """Accuracy, and F1 averaged over the classes that occur in `truth` or `predicted` (scikit-learn's
    `f1_score(average="macro")`, with 0 for a class never predicted correctly)."""
    if len(truth) != len(predicted) or not truth:
        raise ValueError("need as many predictions as labels, and at least one")
    tp: Counter[int] = Counter()
    fp: Counter[int] = Counter()
    fn: Counter[int] = Counter()
    for t, p in zip(truth, predicted, strict=True):
        if t == p:
            tp[t] += 1
        else:
            fp[p] += 1
            fn[t] += 1
    classes = set(truth) | set(predicted)
    f1 = [2 * tp[c] / (2 * tp[c] + fp[c] + fn[c]) for c in classes]  # = 2PR/(P+R), 0 when tp = 0
    return sum(tp.values()) / len(truth), sum(f1) / len(f1)


def confusion(truth: Sequence[int], predicted: Sequence[int], labels: list[str]) -> dict[str, Any]:
    """The confusion table (rows: true label, columns: predicted, in `labels` order), as the run's artifact."""
    matrix = [[0] * len(labels) for _ in labels]
    for t, p in zip(truth, predicted, strict=True):
        matrix[t][p] += 1
    return {"labels": labels, "rows": "true label", "columns": "predicted label", "matrix": matrix}


# --- the run ---------------------------------------------------------------------------------------------------


def labels_tag(labels: list[str]) -> str:
    """The label names as a JSON list, unless too long for an MLflow tag (the folder's config.json has them)."""
    text = json.dumps(labels, ensure_ascii=False)
    return text if len(text) <= 4000 else f"{len(labels)} labels: see config.json of the model"


def index_batches(n: int, batch_size: int, order: Sequence[int] | None = None) -> list[list[int]]:
    indices = list(range(n)) if order is None else list(order)
    return [indices[i : i + batch_size] for i in range(0, n, batch_size)]


def padded(rows: Sequence[list[int]], pad_id: int, **more: torch.Tensor) -> dict[str, torch.Tensor]:
    """Model inputs of `rows` padded to the longest, plus `more` (labels, token types)."""
    input_ids, attention_mask = pad_batch(rows, pad_id)
    return {"input_ids": input_ids, "attention_mask": attention_mask, **more}


def train_epoch(
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler,
    batches: Iterable[dict[str, torch.Tensor]],
    device: torch.device,
) -> float:
    """One pass over `batches` (the model's keyword inputs, `labels` included); returns the mean training loss."""
    model.train()
    losses = []
    for inputs in batches:
        loss = model(**{name: tensor.to(device) for name, tensor in inputs.items()}).loss
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), GRAD_CLIP)
        optimizer.step()
        scheduler.step()
        losses.append(loss.item())
    return sum(losses) / len(losses)


@torch.inference_mode()
def _predict(model: AlbertForSequenceClassification, rows: list[list[int]], batch_size: int, pad_id: int,
             device: torch.device) -> list[int]:  # fmt: skip
    model.eval()
    predicted: list[int] = []
    for batch in index_batches(len(rows), batch_size):
        inputs = padded([rows[i] for i in batch], pad_id)
        predicted += model(**{k: v.to(device) for k, v in inputs.items()}).logits.argmax(-1).tolist()
    return predicted


def finetune(cfg: FinetuneConfig, *, home: Path, progress: Callable[[str], Any] = print) -> dict[str, Any]:
    """Fine-tune `cfg.model_uri` for `cfg.task`, evaluate after every epoch, log the run to MLflow, and register
    the model as a new version of `cfg.registered_model_name` (alias `candidate`). Returns the summary the CLI
    prints. Text classification is here; entities and answers in `training.ner_finetune` / `qa_finetune`."""
    if cfg.task == "ner":
        from training.ner_finetune import finetune_ner

        return finetune_ner(cfg, home=home, progress=progress)
    if cfg.task == "qa":
        from training.qa_finetune import finetune_qa

        return finetune_qa(cfg, home=home, progress=progress)
    splits = load_splits(cfg)  # before anything is downloaded or logged: data mistakes fail fast
    majority = Counter(splits.eval_label_ids).most_common(1)[0][1] / len(splits.eval_label_ids)
    with FinetuneRun(cfg, home) as run:
        train_rows = encode_texts(run.tokenizer, splits.train_texts, cfg.max_seq_len, run.threads)
        eval_rows = encode_texts(run.tokenizer, splits.eval_texts, cfg.max_seq_len, run.threads)
        at_limit = sum(len(ids) == cfg.max_seq_len for ids in train_rows)  # truncated, or just fitting
        model = run.build(AlbertForSequenceClassification, len(splits.labels))
        optimizer, scheduler = run.schedule(model, len(train_rows))
        run.start(params={"num_labels": len(splits.labels)}, tags={"labels": labels_tag(splits.labels)},
                  header=f"{len(train_rows)} train / {len(eval_rows)} eval texts ({at_limit} train texts at the "
                         f"{cfg.max_seq_len}-token limit), {len(splits.labels)} labels", progress=progress)  # fmt: skip
        run.log({EVAL_MAJORITY_BASELINE: majority}, step=0)
        order = run.epoch_order()
        pad_id = run.tokenizer.pad_id
        for epoch in range(1, cfg.epochs + 1):
            batches = index_batches(len(train_rows), cfg.batch_size, order(len(train_rows)))
            inputs = (padded([train_rows[i] for i in batch], pad_id,
                             labels=torch.tensor([splits.train_label_ids[i] for i in batch])) for batch in batches)  # fmt: skip
            train_loss = train_epoch(model, optimizer, scheduler, inputs, run.device)
            predicted = _predict(model, eval_rows, cfg.batch_size, pad_id, run.device)
            accuracy, f1 = accuracy_and_macro_f1(splits.eval_label_ids, predicted)
            run.log({TRAIN_LOSS: train_loss, EVAL_ACCURACY: accuracy, EVAL_F1_MACRO: f1}, step=epoch)
            progress(f"epoch {epoch}/{cfg.epochs}: train_loss {train_loss:.4f}  eval_accuracy "
                     f"{accuracy:.4f}  eval_f1_macro {f1:.4f}  (majority {majority:.4f})")  # fmt: skip
        table = confusion(splits.eval_label_ids, predicted, splits.labels)
        run.finish(model, labels=splits.labels, pyfunc=classifier_pyfunc, artifacts={"confusion.json": table})
    return run.summary(accuracy=accuracy, f1_macro=f1, majority_baseline=majority, labels=splits.labels,
                       train_examples=len(train_rows), eval_examples=len(eval_rows))  # fmt: skip
