"""Fine-tuning a registered pretrained ALBERT for text classification, in one process.

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
import math
import tempfile
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypeVar

import torch

from albert_core.checkpoint import load_model, save_classifier, verify_classifier_folder
from albert_core.errors import UserError
from albert_core.model import (
    AlbertForPreTraining,
    AlbertForSequenceClassification,
    AlbertForTokenClassification,
)
from albert_core.optim import build_optimizer, lr_scheduler
from albert_core.storage import read_json, sha256_file
from albert_core.system import available_cores
from albert_core.tokenizer import SentencePieceTokenizer
from training import classifier_pyfunc
from training.classifier_pyfunc import encode_texts, pad_batch
from training.config import FinetuneConfig, Init  # noqa: F401  (FinetuneConfig re-exported)
from training.registry import parse_model_uri, register_pyfunc
from training.tracking import MlflowTracker

EXPERIMENT = "albert-finetuning"
Head = TypeVar("Head", AlbertForSequenceClassification, AlbertForTokenClassification)
FORMATS = {".jsonl": "jsonl", ".ndjson": "jsonl", ".csv": "csv", ".parquet": "parquet", ".pq": "parquet"}
GRAD_CLIP = 1.0  # as in pretraining and the reference `run_classifier.py`
WEIGHT_DECAY = 0.01  # the reference's AdamWeightDecayOptimizer; not on LayerNorm or biases
# Metric names shared by the loop, MLflow and tests (logged once per epoch, step = epoch).
TRAIN_LOSS, EVAL_ACCURACY, EVAL_F1_MACRO = "train_loss", "eval_accuracy", "eval_f1_macro"
EVAL_MAJORITY_BASELINE = "eval_majority_baseline"  # logged once, at step 0
# Figures an MLflow outage kept from the run, beside the model folder (`tracking.replay_spilled` logs them).
METRICS_SPILL = "pending_metrics.jsonl"

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


# --- model -----------------------------------------------------------------------------------------------------


def classifier_from_pretrained(
    pretrained: AlbertForPreTraining, num_labels: int, head: type[Head] = AlbertForSequenceClassification
) -> Head:
    """A classifier (`head`: text or token classification) with the pretrained encoder (embeddings, shared
    layers, pooler) and a freshly initialised head; the MLM and SOP heads are dropped. Every encoder tensor must
    be copied, under the same name and shape (as nanoGPT's `from_pretrained` asserts), or this fails here rather
    than after an epoch of training."""
    model = head(pretrained.config.replace(num_labels=num_labels))
    source = pretrained.albert.state_dict()
    target = model.albert.state_dict()
    if source.keys() != target.keys():
        raise RuntimeError(f"encoder weight names differ: {sorted(source.keys() ^ target.keys())}")
    model.albert.load_state_dict(source, strict=True)
    copied = model.albert.state_dict()
    not_copied = [name for name, tensor in source.items() if not torch.equal(copied[name], tensor)]
    if not_copied:
        raise RuntimeError(f"encoder weights not copied: {not_copied}")
    return model


def build_classifier(
    pretrained: AlbertForPreTraining,
    num_labels: int,
    init: Init,
    head: type[Head] = AlbertForSequenceClassification,
) -> Head:
    """The classifier `init` asks for. "random" is built exactly as "pretrained" is, the pretrained weights
    left out: under the same seed the head (drawn after the encoder) and the dropout masks are the same."""
    if init == "pretrained":
        return classifier_from_pretrained(pretrained, num_labels, head)
    if init == "random":
        return head(pretrained.config.replace(num_labels=num_labels))
    raise ValueError(f"unknown init {init!r}")


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


# --- the run ---------------------------------------------------------------------------------------------------


def resolve_pretrained(model_uri: str) -> tuple[str, str]:
    """(URI to download, registered version or ""): an alias is pinned to its version first, so the weights,
    the tag and the lineage all name the same version even if the alias moves meanwhile."""
    if not model_uri.startswith("models:/"):
        return model_uri, ""
    from mlflow import MlflowClient
    from mlflow.exceptions import MlflowException

    name, alias, version = parse_model_uri(model_uri)
    if alias is None:
        return model_uri, str(version)
    try:
        resolved = str(MlflowClient().get_model_version_by_alias(name, alias).version)
    except MlflowException as e:
        raise UserError(f"cannot load {model_uri}: {str(e).splitlines()[0]}") from None
    return f"models:/{name}/{resolved}", resolved


def absolute_location(uri_or_path: str | Path) -> str:
    """A URI as given; a local path made absolute, so lineage tags still point at it from elsewhere."""
    text = str(uri_or_path)
    return text if ":/" in text else str(Path(text).absolute())


def labels_tag(labels: list[str]) -> str:
    """The label names as a JSON list, unless too long for an MLflow tag (the folder's config.json has them)."""
    text = json.dumps(labels, ensure_ascii=False)
    return text if len(text) <= 4000 else f"{len(labels)} labels: see config.json of the model"


def threads_for(cfg: FinetuneConfig) -> int:
    if cfg.threads is not None:
        return cfg.threads
    return available_cores()


def index_batches(n: int, batch_size: int, order: Sequence[int] | None = None) -> list[list[int]]:
    indices = list(range(n)) if order is None else list(order)
    return [indices[i : i + batch_size] for i in range(0, n, batch_size)]


@torch.inference_mode()
def _predict(
    model: AlbertForSequenceClassification,
    rows: list[list[int]],
    batch_size: int,
    pad_id: int,
    device: torch.device,
) -> list[int]:
    model.eval()
    predicted: list[int] = []
    for batch in index_batches(len(rows), batch_size):
        input_ids, attention_mask = pad_batch([rows[i] for i in batch], pad_id)
        logits = model(input_ids.to(device), attention_mask=attention_mask.to(device)).logits  # (B, labels)
        predicted += logits.argmax(-1).tolist()
    return predicted


def train_epoch(
    model: AlbertForSequenceClassification | AlbertForTokenClassification,
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler,
    rows: list[list[int]],
    targets: Callable[[list[int], int], torch.Tensor],
    batches: list[list[int]],
    pad_id: int,
    device: torch.device,
) -> float:
    """One pass over `batches` (lists of row indices); `targets(batch, width)` gives the batch's labels (one per
    text, or one per piece padded to `width`). Returns the mean training loss."""
    model.train()
    losses = []
    for batch in batches:
        input_ids, attention_mask = pad_batch([rows[i] for i in batch], pad_id)
        labels = targets(batch, input_ids.shape[1]).to(device)
        loss = model(input_ids.to(device), attention_mask=attention_mask.to(device), labels=labels).loss
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), GRAD_CLIP)
        optimizer.step()
        scheduler.step()
        losses.append(loss.item())
    return sum(losses) / len(losses)


def finetune(cfg: FinetuneConfig, *, home: Path, progress: Callable[[str], Any] = print) -> dict[str, Any]:
    """Fine-tune `cfg.model_uri` on `cfg.train_path`, evaluate on `cfg.eval_path` after every epoch, log the
    run to MLflow, and register the classifier as a new version of `cfg.registered_model_name` (alias
    `candidate`). Returns the summary the CLI prints."""
    if cfg.task == "ner":
        from training.ner_finetune import finetune_ner

        return finetune_ner(cfg, home=home, progress=progress)
    import mlflow

    from training.registry import configure_mlflow, download_model, get_or_create_experiment, tracking_uri

    started = time.perf_counter()
    home = Path(home)
    splits = load_splits(cfg)  # before anything is downloaded or logged: data mistakes fail fast
    model_name = cfg.registered_model_name
    majority = Counter(splits.eval_label_ids).most_common(1)[0][1] / len(splits.eval_label_ids)

    configure_mlflow(home)
    pinned_uri, pretrained_version = resolve_pretrained(cfg.model_uri)
    run_name = f"{model_name}-{datetime.now(UTC):%Y%m%d-%H%M%S-%f}"
    previous_threads = torch.get_num_threads()
    threads = threads_for(cfg)
    torch.set_num_threads(threads)
    try:
        with tempfile.TemporaryDirectory(prefix="albert-finetune-") as scratch:
            pretrained_dir = download_model(pinned_uri, Path(scratch) / "pretrained")
            tokenizer = SentencePieceTokenizer.load(pretrained_dir / "tokenizer")
            pretrained = load_model(pretrained_dir)
            pretrained_sha256 = read_json(pretrained_dir / "manifest.json")["files"]["model.safetensors"]
            limit = pretrained.config.max_position_embeddings
            if cfg.max_seq_len > limit:
                raise UserError(f"max_seq_len {cfg.max_seq_len} exceeds the model's {limit} positions")
            train_rows = encode_texts(tokenizer, splits.train_texts, cfg.max_seq_len, threads)
            eval_rows = encode_texts(tokenizer, splits.eval_texts, cfg.max_seq_len, threads)
            at_limit = sum(len(ids) == cfg.max_seq_len for ids in train_rows)  # truncated, or just fitting

            torch.manual_seed(cfg.seed)  # the head's init and dropout (and the encoder's, for init "random")
            device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
            model = build_classifier(pretrained, len(splits.labels), cfg.init).to(device)
            del pretrained
            steps_per_epoch = math.ceil(len(train_rows) / cfg.batch_size)
            total_steps = cfg.epochs * steps_per_epoch
            warmup_steps = round(cfg.warmup_ratio * total_steps)
            optimizer = build_optimizer(model, "adamw", cfg.lr, weight_decay=WEIGHT_DECAY)
            scheduler = lr_scheduler(optimizer, warmup_steps, total_steps)
            shuffle = torch.Generator().manual_seed(cfg.seed)

            experiment_id = get_or_create_experiment(EXPERIMENT, home)
            with mlflow.start_run(experiment_id=experiment_id, run_name=run_name) as run:
                run_id = run.info.run_id
                mlflow.log_params({**cfg.to_dict(), "threads": threads, "num_labels": len(splits.labels),
                                   "warmup_steps": warmup_steps, "total_steps": total_steps})  # fmt: skip
                lineage = {
                    "init": cfg.init,  # "random": only the config and tokenizer come from the pretrained model
                    "pretrained_model_uri": absolute_location(cfg.model_uri),
                    "pretrained_model_version": pretrained_version,
                    "pretrained_model_sha256": pretrained_sha256,
                    "train_sha256": sha256_file(cfg.train_path),
                    "eval_sha256": sha256_file(cfg.eval_path),
                    "labels": labels_tag(splits.labels),
                }
                mlflow.set_tags(
                    {
                        **lineage,
                        "train_path": absolute_location(cfg.train_path),
                        "eval_path": absolute_location(cfg.eval_path),
                    }
                )
                # Per-epoch figures go through training's tracker: while the server is unreachable they are
                # buffered (spilled beside the model at worst) instead of failing the fine-tuning.
                tracker = MlflowTracker(tracking_uri(home), run_id, flush_every=1, system_metrics=False,
                                        spill_path=home / "finetune" / run_name / METRICS_SPILL)  # fmt: skip
                tracker.log({EVAL_MAJORITY_BASELINE: majority}, step=0)
                progress(f"fine-tuning {cfg.model_uri} (version {pretrained_version or '-'}, init {cfg.init}) "
                         f"into {model_name}: "
                         f"{len(train_rows)} train / {len(eval_rows)} eval texts ({at_limit} train texts at the "
                         f"{cfg.max_seq_len}-token limit), {len(splits.labels)} labels, {cfg.epochs} epochs of "
                         f"{steps_per_epoch} steps, {threads} threads; run {run_name}")  # fmt: skip

                for epoch in range(1, cfg.epochs + 1):
                    order = torch.randperm(len(train_rows), generator=shuffle).tolist()
                    batches = index_batches(len(train_rows), cfg.batch_size, order)
                    targets = lambda batch, _: torch.tensor([splits.train_label_ids[i] for i in batch])  # noqa: E731
                    train_loss = train_epoch(model, optimizer, scheduler, train_rows, targets, batches,
                                             tokenizer.pad_id, device)  # fmt: skip
                    predicted = _predict(model, eval_rows, cfg.batch_size, tokenizer.pad_id, device)
                    accuracy, f1 = accuracy_and_macro_f1(splits.eval_label_ids, predicted)
                    tracker.log(
                        {TRAIN_LOSS: train_loss, EVAL_ACCURACY: accuracy, EVAL_F1_MACRO: f1}, step=epoch
                    )
                    progress(f"epoch {epoch}/{cfg.epochs}: train_loss {train_loss:.4f}  eval_accuracy "
                             f"{accuracy:.4f}  eval_f1_macro {f1:.4f}  (majority {majority:.4f})")  # fmt: skip
                tracker.close()  # delivers what an outage held back, before the model is registered

                model_dir = home / "finetune" / run_name / "model"
                save_classifier(
                    model.cpu(),
                    model_dir,
                    labels=splits.labels,
                    max_seq_len=cfg.max_seq_len,
                    tokenizer_dir=pretrained_dir / "tokenizer",
                    metadata={"run_name": run_name, **lineage},
                )
                registered = _register_classifier(
                    model_dir, run_id=run_id, model_name=model_name, tags={"run_name": run_name, **lineage}
                )
    finally:
        torch.set_num_threads(previous_threads)
    return {
        "run_id": run_id,
        "run_name": run_name,
        **registered,
        "model_dir": str(model_dir),
        "tracking_uri": tracking_uri(home),
        "pretrained_model_uri": cfg.model_uri,
        "pretrained_model_version": pretrained_version,
        "init": cfg.init,
        "accuracy": accuracy,
        "f1_macro": f1,
        "majority_baseline": majority,
        "labels": splits.labels,
        "train_examples": len(train_rows),
        "eval_examples": len(eval_rows),
        "seconds": round(time.perf_counter() - started, 1),
    }


def _register_classifier(
    model_dir: Path, *, run_id: str, model_name: str, tags: dict[str, str]
) -> dict[str, Any]:
    """Log the classifier folder as the pyfunc of run `run_id` (the file `classifier_pyfunc.py` as its code) and
    register it as a new version of `model_name` aliased `candidate`, the way pretraining models are."""
    manifest = verify_classifier_folder(model_dir)  # a corrupt folder fails here, before anything is uploaded
    registered = register_pyfunc(
        model_dir,
        run_id=run_id,
        model_name=model_name,
        code_file=classifier_pyfunc.__file__,
        signature=classifier_pyfunc.SIGNATURE,
        input_example=classifier_pyfunc.input_example(),
        weights_sha256=manifest["files"]["model.safetensors"],
        tags=tags,
    )
    return {"model_name": model_name, **registered}
