"""What every fine-tuning task (text labels, entities, answers) does around its own data and loop.

    with FinetuneRun(cfg, home) as run:                  pinned pretrained model downloaded, torch threads set
        rows = encode(run.tokenizer, ...)                 the task's inputs, with the pretrained tokenizer
        model = run.build(Head, num_labels)               the pretrained encoder + a fresh head (seeded)
        optimizer, scheduler = run.schedule(model, n)     AdamW, warmup then linear decay (BERT's recipe)
        run.start(params, tags, header)                   the MLflow run: params, lineage tags, a tracker
        ... run.log(figures, epoch) ...                   per-epoch figures (buffered through an outage)
        run.finish(model, labels, pyfunc_module, ...)     saved folder, artifacts, registered pyfunc (candidate)
    return run.summary(...)

The order keeps user mistakes cheap: the data is read by the task before this opens, and a sequence length the
model cannot hold fails before any MLflow run exists.
"""

from __future__ import annotations

import contextlib
import hashlib
import math
import tempfile
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from types import ModuleType
from typing import Any, TypeVar

import torch

from albert_core.checkpoint import FineTuned, load_model, save_classifier, verify_classifier_folder
from albert_core.errors import UserError
from albert_core.model import AlbertForPreTraining, AlbertForSequenceClassification
from albert_core.optim import build_optimizer, lr_scheduler
from albert_core.storage import read_json, sha256_file
from albert_core.system import available_cores
from albert_core.tokenizer import SentencePieceTokenizer
from training.config import FinetuneConfig, parse_model_uri
from training.tracking import MlflowTracker

T = TypeVar("T")
EXPERIMENT = "albert-finetuning"
WEIGHT_DECAY = 0.01  # the reference's AdamWeightDecayOptimizer; not on LayerNorm or biases
# Figures an MLflow outage kept from the run, beside the model folder (`tracking.replay_spilled` logs them).
METRICS_SPILL = "pending_metrics.jsonl"


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


def in_hashed_share(key: str, share: float) -> bool:
    """Whether `key` falls in the first `share` of [0, 1) by a sha256 of it: a split that never depends on file
    order, and puts equal keys (a repeated tweet, a paragraph's questions) on one side."""
    digest = hashlib.sha256(key.encode("utf-8")).digest()
    return int.from_bytes(digest[:8], "big") / 2**64 < share


def train_and_held_out(
    cfg: FinetuneConfig, read: Callable[[Any], list[T]], held_out: Callable[[T, float], bool], what: str
) -> tuple[list[T], list[T]]:
    """(train, eval) examples: `cfg.eval_path` read, or the `cfg.eval_share` of `cfg.train_path` that
    `held_out` picks (by a hash, so the split never depends on file order). `what` names the examples."""
    examples = read(cfg.train_path)
    if cfg.eval_path is not None:
        train, evaluation = examples, read(cfg.eval_path)
    else:
        train = [x for x in examples if not held_out(x, cfg.eval_share)]
        evaluation = [x for x in examples if held_out(x, cfg.eval_share)]
    if not train or not evaluation:
        raise UserError(f"{cfg.train_path}: {len(train)} training and {len(evaluation)} held-out {what}; "
                        "both parts need some (change eval_share, or give --eval)")  # fmt: skip
    return train, evaluation


def classifier_from_pretrained(
    pretrained: AlbertForPreTraining, num_labels: int, head: type[FineTuned] = AlbertForSequenceClassification
) -> Any:
    """A fine-tuning model (`head`) with the pretrained encoder (embeddings, shared layers, pooler) and a freshly
    initialised head; the MLM and SOP heads are dropped. Every encoder tensor must be copied, under the same name
    and shape (as nanoGPT's `from_pretrained` asserts), or this fails here rather than after an epoch."""
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
    init: str,
    head: type[FineTuned] = AlbertForSequenceClassification,
) -> Any:
    """The model `init` asks for. "random" is built exactly as "pretrained" is, the pretrained weights left out:
    under the same seed the head (drawn after the encoder) and the dropout masks are the same."""
    if init == "pretrained":
        return classifier_from_pretrained(pretrained, num_labels, head)
    if init == "random":
        return head(pretrained.config.replace(num_labels=num_labels))
    raise ValueError(f"unknown init {init!r}")


class FinetuneRun:
    """One fine-tuning run of `cfg` under `home` (see the module docstring)."""

    def __init__(self, cfg: FinetuneConfig, home: str | Path) -> None:
        self.cfg, self.home = cfg, Path(home)
        self.model_name = cfg.registered_model_name
        self.started = time.perf_counter()
        self.threads = cfg.threads if cfg.threads is not None else available_cores()
        self.device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
        self._stack = contextlib.ExitStack()

    def __enter__(self) -> FinetuneRun:
        from training.registry import configure_mlflow, download_model

        cfg = self.cfg
        configure_mlflow(self.home)
        pinned_uri, self.pretrained_version = resolve_pretrained(cfg.model_uri)
        self.run_name = f"{self.model_name}-{datetime.now(UTC):%Y%m%d-%H%M%S-%f}"
        previous_threads = torch.get_num_threads()
        torch.set_num_threads(self.threads)
        self._stack.callback(torch.set_num_threads, previous_threads)
        try:
            scratch = Path(self._stack.enter_context(tempfile.TemporaryDirectory(prefix="albert-finetune-")))
            self.pretrained_dir = download_model(pinned_uri, scratch / "pretrained")
            self.tokenizer = SentencePieceTokenizer.load(self.pretrained_dir / "tokenizer")
            self.pretrained: AlbertForPreTraining | None = load_model(self.pretrained_dir)
            limit = self.pretrained.config.max_position_embeddings
            if cfg.max_seq_len > limit:
                raise UserError(f"max_seq_len {cfg.max_seq_len} exceeds the model's {limit} positions")
            weights = read_json(self.pretrained_dir / "manifest.json")["files"]["model.safetensors"]
            self.lineage = {
                "task": cfg.task,
                "init": cfg.init,  # "random": only the config and tokenizer come from the pretrained model
                "pretrained_model_uri": absolute_location(cfg.model_uri),
                "pretrained_model_version": self.pretrained_version,
                "pretrained_model_sha256": weights,
                "train_sha256": sha256_file(cfg.train_path),
                "eval_sha256": sha256_file(cfg.eval_path) if cfg.eval_path else f"held out {cfg.eval_share}",
            }
        except BaseException:
            self._stack.close()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self._stack.close()

    def build(self, head: type[FineTuned], num_labels: int) -> Any:
        """The model to fine-tune, on the run's device; the pretrained model is released."""
        torch.manual_seed(self.cfg.seed)  # the head's init and dropout (and the encoder's, for init "random")
        assert self.pretrained is not None, "build() once per run"
        model = build_classifier(self.pretrained, num_labels, self.cfg.init, head).to(self.device)
        self.pretrained = None
        return model

    def schedule(
        self, model: torch.nn.Module, examples: int
    ) -> tuple[torch.optim.Optimizer, torch.optim.lr_scheduler.LRScheduler]:
        """AdamW with warm-up then linear decay over `cfg.epochs` passes of `examples` rows."""
        self.steps_per_epoch = math.ceil(examples / self.cfg.batch_size)
        self.total_steps = self.cfg.epochs * self.steps_per_epoch
        self.warmup_steps = round(self.cfg.warmup_ratio * self.total_steps)
        optimizer = build_optimizer(model, "adamw", self.cfg.lr, weight_decay=WEIGHT_DECAY)
        return optimizer, lr_scheduler(optimizer, self.warmup_steps, self.total_steps)

    def epoch_order(self) -> Callable[[int], list[int]]:
        """A seeded shuffle per epoch: the same data order for both inits."""
        generator = torch.Generator().manual_seed(self.cfg.seed)
        return lambda n: torch.randperm(n, generator=generator).tolist()

    def start(self, *, params: dict[str, Any], tags: dict[str, str], header: str,
              progress: Callable[[str], Any]) -> None:  # fmt: skip
        """Open the MLflow run: the config and `params`, the lineage and `tags`, a tracker for the figures."""
        import mlflow

        from training.registry import get_or_create_experiment, tracking_uri

        run = self._stack.enter_context(
            mlflow.start_run(
                experiment_id=get_or_create_experiment(EXPERIMENT, self.home), run_name=self.run_name
            )
        )
        self.run_id = run.info.run_id
        mlflow.log_params({**self.cfg.to_dict(), "threads": self.threads, "warmup_steps": self.warmup_steps,
                           "total_steps": self.total_steps, **params})  # fmt: skip
        self.lineage.update(tags)
        mlflow.set_tags({**self.lineage, "train_path": absolute_location(self.cfg.train_path),
                         **({"eval_path": absolute_location(self.cfg.eval_path)} if self.cfg.eval_path else {})})  # fmt: skip
        # Per-epoch figures go through training's tracker: while the server is unreachable they are buffered
        # (spilled beside the model at worst) instead of failing the fine-tuning.
        self.tracker = MlflowTracker(tracking_uri(self.home), self.run_id, flush_every=1, system_metrics=False,
                                     spill_path=self.home / "finetune" / self.run_name / METRICS_SPILL)  # fmt: skip
        progress(f"fine-tuning {self.cfg.model_uri} (version {self.pretrained_version or '-'}, init "
                 f"{self.cfg.init}) into {self.model_name}: {header}, {self.cfg.epochs} epochs of "
                 f"{self.steps_per_epoch} steps, {self.threads} threads; run {self.run_name}")  # fmt: skip

    def log(self, figures: dict[str, float], step: int) -> None:
        self.tracker.log(figures, step=step)

    def finish(
        self,
        model: FineTuned,
        *,
        labels: list[str],
        pyfunc: ModuleType,
        artifacts: dict[str, Any] | None = None,
        inference: dict[str, Any] | None = None,
    ) -> None:
        """Deliver what an outage held back, log `artifacts` (name -> JSON-able), save the folder and register
        it as `pyfunc` (a module with SIGNATURE and input_example, logged as the model's code)."""
        import mlflow

        from training.registry import register_pyfunc

        self.tracker.close()
        for name, value in (artifacts or {}).items():
            mlflow.log_dict(value, name)
        self.model_dir = self.home / "finetune" / self.run_name / "model"
        save_classifier(model.cpu(), self.model_dir, labels=labels, max_seq_len=self.cfg.max_seq_len,
                        tokenizer_dir=self.pretrained_dir / "tokenizer", inference=inference,
                        metadata={"run_name": self.run_name, **self.lineage})  # fmt: skip
        manifest = verify_classifier_folder(self.model_dir)  # a corrupt folder fails here, before any upload
        self.registered = register_pyfunc(
            self.model_dir, run_id=self.run_id, model_name=self.model_name, code_file=pyfunc.__file__,
            signature=pyfunc.SIGNATURE, input_example=pyfunc.input_example(),
            weights_sha256=manifest["files"]["model.safetensors"], tags={"run_name": self.run_name, **self.lineage},
        )  # fmt: skip

    def summary(self, **figures: Any) -> dict[str, Any]:
        """What `albert finetune` prints: the run, the registered version, lineage, then the task's figures."""
        from training.registry import tracking_uri

        return {
            "run_id": self.run_id, "run_name": self.run_name, "model_name": self.model_name, **self.registered,
            "model_dir": str(self.model_dir), "tracking_uri": tracking_uri(self.home), "task": self.cfg.task,
            "pretrained_model_uri": self.cfg.model_uri, "pretrained_model_version": self.pretrained_version,
            "init": self.cfg.init, **figures, "seconds": round(time.perf_counter() - self.started, 1),
        }  # fmt: skip
