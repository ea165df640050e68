"""The training driver: shards + preset -> Ray Train TorchTrainer (DDP) -> MLflow run -> registered model.

    runs/<run>/run.json            the run record: config, MLflow run id, attempts, latest checkpoint, final step
    runs/<run>/ray/<attempt>/      Ray Train storage (checkpoints, keep K)
    runs/<run>/model/              the final model folder (weights, config, tokenizer), logged to MLflow
    runs/<run>/pending_metrics.jsonl  metrics the tracking server could not take (replayed when it can)

Each call makes a new Ray Train run name (an existing name would silently resume, DESIGN pitfalls); `resume`
continues a finished run for more steps in the same MLflow run.

A worker that dies is restarted by Ray Train from the last checkpoint (`max_failures`); the summary counts those
`restarts`. An unreachable tracking server does not stop training (see `training.tracking`); registering the model
at the end needs it, so then `train` fails with one line saying so. Registration is not retried blindly (a new
version is not idempotent): the model folder and run record are on disk, and resuming the run at its final step
(`--resume RUN --max-steps N`) registers it and replays the spilled metrics.
"""

from __future__ import annotations

import contextlib
import re
import shutil
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from albert_core.checkpoint import load_model, save_model
from albert_core.errors import UserError
from albert_core.storage import read_json, validate_name, write_json
from data_jobs.ray_runtime import ensure_ray, require_resources
from data_jobs.shards import load_manifest, read_shards
from data_jobs.tokenizer_job import load_tokenizer
from training.batches import batch_spec
from training.config import TrainConfig
from training.local import eval_table
from training.registry import configure_mlflow, get_or_create_experiment, log_and_register, tracking_uri
from training.step import model_config
from training.tracking import is_unavailable, replay_spilled

EXPERIMENT = "albert-pretraining"
METRICS_SPILL = "pending_metrics.jsonl"


def _flatten(prefix: str, value: Any, out: dict[str, str]) -> dict[str, str]:
    if isinstance(value, dict):
        for k, v in value.items():
            _flatten(f"{prefix}{k}.", v, out)
    else:
        out[prefix.rstrip(".")] = str(value)
    return out


@contextlib.contextmanager
def _needs_mlflow(uri: str, consequence: str) -> Iterator[None]:
    """Turn "the tracking server does not answer" into one line saying what it means for this run."""
    try:
        yield
    except Exception as e:
        if not is_unavailable(e):
            raise
        raise UserError(
            f"MLflow at {uri} is unreachable, so {consequence} ({str(e).splitlines()[0][:160]})"
        ) from None


def _new_run_name(preset: str) -> str:
    return f"{preset}-{datetime.now(UTC):%Y%m%d-%H%M%S-%f}"


def _log_lineage(mlflow: Any, shards_id: str, manifest: dict[str, Any], shards_path: Path) -> None:
    from mlflow.data.dataset_source_registry import resolve_dataset_source
    from mlflow.data.meta_dataset import MetaDataset

    digest = manifest.get("sha256") or shards_id
    for split in ("train", "eval"):
        source = resolve_dataset_source(str(shards_path / split))
        dataset = MetaDataset(source, name=f"shards/{shards_id}/{split}", digest=str(digest)[:36])
        mlflow.log_input(dataset, context="training" if split == "train" else "evaluation")


def train(cfg: TrainConfig, *, home: Path, resume: str | None = None, progress=print) -> dict[str, Any]:
    """Run (or continue) a pretraining run; return the summary the CLI prints."""
    import mlflow
    import ray.train
    from ray.train.torch import TorchTrainer

    started = time.perf_counter()
    if not cfg.shards:
        raise UserError("shards is required (the id printed by `albert shards build`)")
    manifest = load_manifest(home, cfg.shards)
    tokenizer, tok_manifest = load_tokenizer(home, manifest["tokenizer"]["name"])
    if tokenizer.sha256 != manifest["tokenizer"]["sha256"]:
        raise UserError(
            f"tokenizer {manifest['tokenizer']['name']!r} changed since shards {cfg.shards} were built "
            "(sha256 differs); rebuild the shards"
        )
    params = manifest["parameters"]
    max_seq_len = params["max_seq_len"]
    model_cfg = model_config(cfg, tokenizer.vocab_size, max_seq_len)
    spec = batch_spec(manifest, tokenizer, cfg.seed)

    configure_mlflow(home)
    uri = tracking_uri(home)
    if resume:
        run_dir = home / "runs" / validate_name(resume, "run name")
        record = read_json(run_dir / "run.json")
        if cfg.max_steps == record["final_step"] and not record.get("registered", True):
            # trained earlier, but the tracking server was unreachable when the model was to be registered
            return _register(record, run_dir, cfg, tokenizer.sha256, uri, started)
        if cfg.max_steps <= record["final_step"]:
            raise UserError(
                f"run {resume} already reached step {record['final_step']}; ask for more --max-steps"
            )
        _require_workers(cfg, progress)
        run_name, resume_from = resume, record["latest_checkpoint"]
        mlflow_run_id = record["mlflow_run_id"]
    else:
        _require_workers(cfg, progress)  # before the MLflow run exists
        run_name, resume_from = _new_run_name(cfg.preset), None
        run_dir = home / "runs" / run_name
        with _needs_mlflow(uri, "the run cannot start"):
            experiment_id = get_or_create_experiment(EXPERIMENT, home)
            with mlflow.start_run(experiment_id=experiment_id, run_name=run_name) as active:
                mlflow_run_id = active.info.run_id
                mlflow.log_params(_flatten("", {"train": cfg.to_dict(), "model": model_cfg.to_dict()}, {}))
                mlflow.set_tags({"shards": cfg.shards, "corpus": str(manifest.get("corpus")),
                                 "tokenizer": manifest["tokenizer"]["name"],
                                 "tokenizer_sha256": tokenizer.sha256, "preset": cfg.preset})  # fmt: skip
                _log_lineage(mlflow, cfg.shards, manifest, home / "shards" / cfg.shards)
        record = {"run_name": run_name, "mlflow_run_id": mlflow_run_id, "attempts": [], "final_step": 0}
    run_dir.mkdir(parents=True, exist_ok=True)
    attempt = f"attempt-{len(record['attempts']) + 1}"
    record.update(config=cfg.to_dict(), attempts=[*record["attempts"], attempt])
    write_json(run_dir / "run.json", record)

    progress(f"training {cfg.preset} on shards {cfg.shards}: {cfg.workers} workers, "
             f"{cfg.max_steps} steps of {cfg.batch_size} sequences; run {run_name}")  # fmt: skip
    trainer = TorchTrainer(
        train_loop_per_worker=_train_loop,
        train_loop_config={
            "train": cfg.to_dict(),
            "model": model_cfg.to_dict(),
            "spec": spec,
            "tracking_uri": uri,
            "mlflow_run_id": mlflow_run_id,
            "metrics_spill_path": str(run_dir / METRICS_SPILL),
            "resume_from": resume_from,
        },
        scaling_config=ray.train.ScalingConfig(
            num_workers=cfg.workers,
            use_gpu=cfg.use_gpu,
            resources_per_worker=_worker_resources(cfg),
            placement_strategy=cfg.placement_strategy,
        ),
        run_config=ray.train.RunConfig(
            name=attempt,
            storage_path=str(run_dir / "ray"),
            failure_config=ray.train.FailureConfig(max_failures=cfg.max_failures),
            checkpoint_config=ray.train.CheckpointConfig(num_to_keep=cfg.keep_checkpoints),
        ),
        datasets={
            "train": read_shards(home, cfg.shards, "train"),
            "eval": _eval_split(home, cfg),
        },
    )
    try:
        result = trainer.fit()
    except ray.train.TrainingFailedError as e:
        diverged = re.search(r"Diverged: (.+)", str(e))  # the worker's `training.step.Diverged`
        if diverged is None:
            raise
        raise UserError(f"run {run_name} diverged: {diverged.group(1)}") from None
    if result.checkpoint is None:
        raise RuntimeError(f"training run {run_name} finished without a checkpoint")
    metrics = dict(result.metrics)
    final_step = int(metrics["step"])

    model_dir = run_dir / "model"
    with result.checkpoint.as_directory() as folder:
        if model_dir.exists():
            shutil.rmtree(model_dir)
        save_model(load_model(Path(folder) / "model"), model_dir, tokenizer_dir=tok_manifest["path"])
    summary = {
        "run_id": mlflow_run_id,
        "run_name": run_name,
        "final_step": final_step,
        "metrics": {k: v for k, v in metrics.items() if k.startswith(("eval_", "loss", "mlm_", "sop_"))},
        # the whole run's rate (all attempts), not the last step's
        "tokens_per_second": round(metrics["tokens_seen"] / max(metrics["train_seconds"], 1e-9), 1),
        "ranks_in_sync": bool(metrics.get("ranks_in_sync", 1.0)),
        "restarts": int(metrics.get("restarts", 0)),
        "model_dir": str(model_dir),
        "tracking_uri": uri,
    }
    record.update(latest_checkpoint=str(result.checkpoint.path), final_step=final_step, summary=summary,
                  registered=False)  # fmt: skip
    write_json(run_dir / "run.json", record)
    return _register(record, run_dir, cfg, tokenizer.sha256, uri, started)


def _require_workers(cfg: TrainConfig, progress: Any) -> None:
    """Workers Ray can never place would leave `fit()` pending forever with no message: fail fast instead."""
    ensure_ray()
    require_resources("train", cfg.workers, _worker_resources(cfg), log=progress,
                      spread=cfg.placement_strategy == "STRICT_SPREAD")  # fmt: skip


def _worker_resources(cfg: TrainConfig) -> dict[str, float]:
    """One Ray CPU per worker (the local runtime advertises 2 per core, so Ray Data keeps CPUs to feed them),
    plus one GPU with use_gpu: the ScalingConfig's bundle and what `_require_workers` checks."""
    return {"CPU": 1, "GPU": 1} if cfg.use_gpu else {"CPU": 1}


def _register(
    record: dict[str, Any], run_dir: Path, cfg: TrainConfig, tokenizer_sha256: str, uri: str, started: float
) -> dict[str, Any]:
    """Replay metrics spilled during an outage, register the run's model folder; return the summary."""
    summary, run_name = record["summary"], record["run_name"]
    step, model_dir = record["final_step"], summary["model_dir"]
    consequence = (f"run {run_name} (trained to step {step}, model in {model_dir}) is not registered; when MLflow "
                   f"is back, `albert train --resume {run_name} --max-steps {step}` registers it")  # fmt: skip
    with _needs_mlflow(uri, consequence):
        spill = run_dir / METRICS_SPILL
        if spill.is_file():
            replay_spilled(uri, record["mlflow_run_id"], spill)
        registered = log_and_register(
            Path(model_dir),
            run_id=record["mlflow_run_id"],
            model_name=cfg.registered_model_name,
            tags={
                "shards": cfg.shards,
                "run_name": run_name,
                "final_step": str(step),
                "tokenizer_sha256": tokenizer_sha256,
            },  # fmt: skip
        )
    write_json(run_dir / "run.json", {**record, "registered": True})
    return {**summary, **registered, "seconds": round(time.perf_counter() - started, 1)}


def _eval_split(home: Path, cfg: TrainConfig) -> Any:
    """The held-out split, or its first `eval_sequences` rows in file order: read here, because Ray Data's
    `limit` takes whichever blocks come first, and every evaluation (and every run) must see the same rows."""
    dataset = read_shards(home, cfg.shards, "eval")  # checks every file against the manifest
    if cfg.eval_sequences is None:
        return dataset
    import ray.data

    table = eval_table(home, cfg.shards, cfg.eval_sequences)
    return dataset if table is None else ray.data.from_arrow(table)  # an empty split has no file


def _train_loop(config: dict[str, Any]) -> None:
    from training.loop import train_loop_per_worker

    train_loop_per_worker(config)
