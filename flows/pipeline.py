"""Prefect flows: the top of the stack. Each task is a call into a data or training job; Prefect adds retries,
caching, artifacts, events, schedules and the UI.

    ingest_flow     sources -> corpus version -> SentencePiece (when asked or missing) -> token ids -> shards,
                    in this process or as Ray jobs on a cluster (Jobs API); emits `albert.corpus.published`
                    when a new version got its shards
    train_flow      shards (or a corpus's newest shards) -> pretraining on local Ray, or on a Ray cluster through
                    the Jobs API -> registered model version (alias `candidate`)
    promote_flow    candidate vs champion on the same held-out shards -> alias `champion` moves, or not, and why;
                    emits `albert.model.promoted` when a version becomes the new champion (`albert promote` too)
    finetune_flow   a registered model (the config's, or the version that event names) fine-tuned on labelled
                    files -> registered classifier or tagger version (alias `candidate`)
    pipeline_flow   ingest, train and promote in a row (`albert demo`)

With a Jobs API address (the flow's `ray_address`, else $ALBERT_RAY_ADDRESS or $RAY_API_SERVER_ADDRESS), every
data step and the training run is an `albert … --json` Ray job on that cluster (flows/ray_jobs.py); without one,
the steps run in this process on local Ray (or the cluster in $RAY_ADDRESS, as a client).

Flows run on the API in $PREFECT_API_URL, else on a temporary local server Prefect starts itself. The jobs are
content-addressed (a shard id is a hash of its inputs; ingestion skips documents it already has), so a rerun after a
failure redoes only what is missing. The shards task's Prefect cache key is that id, and the cache is refreshed
when the shards are no longer on disk: an unchanged corpus is not re-tokenized, a deleted one is rebuilt.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from prefect import flow, get_run_logger, task
from prefect.artifacts import create_markdown_artifact
from prefect.events import emit_event

from albert_core.errors import UserError
from albert_core.storage import albert_home
from data_jobs.config import IngestConfig, ShardsConfig, TokenizerJobConfig
from flows.ray_jobs import PROJECT_ROOT, jobs_address, run_cli_job
from training.config import FinetuneConfig, TrainConfig

__all__ = [
    "CORPUS_PUBLISHED", "MODEL_PROMOTED", "PROJECT_ROOT", "finetune_flow", "ingest_flow", "pipeline_flow",
    "promote_flow", "train_flow",
]  # fmt: skip

CORPUS_PUBLISHED = "albert.corpus.published"
MODEL_PROMOTED = "albert.model.promoted"


def _retry_unless_user_error(task: Any, task_run: Any, state: Any) -> bool:
    """Retry transient failures (a lost Ray node, a busy store), never a user's mistake: it would fail again."""
    try:
        state.result()
    except UserError:
        return False
    except Exception:
        return True
    return False


def _log(message: str) -> None:
    get_run_logger().info(message)


def _cli_job(address: str, argv: list[str], home: str, kind: str, upload_project: bool) -> dict[str, Any]:
    """`albert <argv> --json` as a Ray job at `address`, its log in this task's log."""
    return run_cli_job(address, argv, home=home, kind=kind, upload_project=upload_project, log=_log)


# --- tasks ---------------------------------------------------------------------------------------------------


@task(retries=2, retry_delay_seconds=5, retry_condition_fn=_retry_unless_user_error)
def ingest_task(
    paths: list[str], corpus: str, home: str, options: dict[str, Any], ray_address: str | None = None,
    upload_project: bool = True,
) -> dict[str, Any]:  # fmt: skip
    if ray_address:
        argv = ["ingest", *paths, "--corpus", corpus, "--home", home, "--config-json", json.dumps(options)]
        summary = _cli_job(ray_address, argv, home, "ingest", upload_project)
    else:
        from data_jobs.ingest import ingest

        summary = ingest(paths, corpus, home=Path(home), cfg=IngestConfig(**options))
    _log(summary["message"])
    return summary


@task(retries=2, retry_delay_seconds=5, retry_condition_fn=_retry_unless_user_error)
def tokenizer_task(
    corpus: str, home: str, options: dict[str, Any], retrain: bool, ray_address: str | None = None,
    upload_project: bool = True,
) -> dict[str, Any]:  # fmt: skip
    """Train a vocabulary when asked or when the corpus has none; otherwise keep the one the shards use."""
    from data_jobs.tokenizer_job import load_tokenizer, train_tokenizer

    if not retrain:
        try:
            tokenizer, manifest = load_tokenizer(Path(home), corpus)
        except UserError:
            pass  # none yet
        else:
            _log(
                f"tokenizer {corpus!r} exists ({tokenizer.vocab_size} pieces); retrain_tokenizer=True replaces it"
            )
            return {"name": corpus, "path": manifest["path"], "sha256": tokenizer.sha256, "reused": True}
    if ray_address:
        argv = [
            "tokenizer",
            "train",
            "--corpus",
            corpus,
            "--home",
            home,
            "--config-json",
            json.dumps(options),
        ]
        summary = _cli_job(ray_address, argv, home, "tokenizer", upload_project)
    else:
        summary = train_tokenizer(corpus, home=Path(home), cfg=TokenizerJobConfig(**options))
    _log(
        f"trained tokenizer {corpus!r}: {summary['vocab_size']} pieces on {summary['sentences_sampled']} sentences"
    )
    return {**summary, "reused": False}


@task(retries=2, retry_delay_seconds=5, retry_condition_fn=_retry_unless_user_error)
def tokenize_task(corpus: str, home: str, ray_address: str | None = None, upload_project: bool = True) -> str:
    """The corpus's newest version as token ids (reused when built before); returns the tokenized id."""
    if ray_address:
        argv = ["tokenize", "--corpus", corpus, "--home", home]
        summary = _cli_job(ray_address, argv, home, "tokenize", upload_project)
    else:
        from data_jobs.corpus import resolve_version
        from data_jobs.tokenize import tokenize_corpus
        from data_jobs.tokenizer_job import load_tokenizer

        tokenizer, _ = load_tokenizer(Path(home), corpus)
        summary = tokenize_corpus(Path(home), resolve_version(Path(home), corpus, None), tokenizer)
    _log(f"tokenized {summary['id']}: {summary['statistics']['tokens']} tokens "
         f"({'reused' if summary['reused'] else 'built'})")  # fmt: skip
    return summary["id"]


def _shards_cache_key(context: Any, parameters: dict[str, Any]) -> str:
    """The shard id: a hash of everything that determines the rows (corpus manifest, tokenizer, parameters)."""
    return f"albert-shards-{parameters['shard_id']}"


@task(
    retries=2,
    retry_delay_seconds=5,
    retry_condition_fn=_retry_unless_user_error,
    cache_key_fn=_shards_cache_key,
    persist_result=True,
    result_serializer="json",
)
def shards_task(
    corpus: str, home: str, options: dict[str, Any], shard_id: str, ray_address: str | None = None,
    upload_project: bool = True,
) -> dict[str, Any]:  # fmt: skip
    if ray_address:
        argv = ["shards", "build", "--corpus", corpus, "--tokenizer", corpus, "--home", home,
                "--config-json", json.dumps(options)]  # fmt: skip
        summary = _cli_job(ray_address, argv, home, "shards", upload_project)
    else:
        from data_jobs.shards import build_shards

        summary = build_shards(corpus, corpus, home=Path(home), cfg=ShardsConfig(**options))
    _log(
        f"shards {summary['id']}: {summary['instances']} instances ({'reused' if summary['reused'] else 'built'})"
    )
    return summary


def _build_or_cached_shards(
    corpus: str, home: str, options: dict[str, Any], ray_address: str | None, upload_project: bool
) -> dict[str, Any]:
    """Shards from Prefect's cache when the same inputs were built before and are still on disk, else built
    (after their token ids: a step of its own, so a cluster runs it as its own job)."""
    from data_jobs.shards import MANIFEST, planned_shard_id, shards_dir

    sid = planned_shard_id(corpus, corpus, home=Path(home), cfg=ShardsConfig(**options))
    on_disk = (shards_dir(Path(home), sid) / MANIFEST).is_file()
    if not on_disk:
        tokenize_task(corpus, home, ray_address, upload_project)
    run = shards_task.with_options(refresh_cache=not on_disk)
    summary = run(corpus, home, options, sid, ray_address, upload_project)
    return {**summary, "reused": on_disk}  # a cached summary is the one of the run that built them


@task
def train_task(config: dict[str, Any], home: str, resume: str | None = None) -> dict[str, Any]:
    """Pretraining on the local Ray runtime (or $RAY_ADDRESS). No Prefect retries: Ray Train restarts failed
    workers from the last checkpoint itself (`max_failures`)."""
    from training.run import train

    return train(TrainConfig.from_dict(config), home=Path(home), resume=resume, progress=_log)


@task
def submit_training_job(
    config: dict[str, Any], home: str, ray_address: str, upload_project: bool
) -> dict[str, Any]:
    """Pretraining as a Ray job on a cluster (`albert train --config-json … --json`): its log streamed into this
    flow's log; a failed job fails the task with the user's error line, or Ray's reason and the log's tail."""
    argv = ["train", "--config-json", json.dumps(config), "--home", home]
    return _cli_job(ray_address, argv, home, "train", upload_project)


@task
def promote_task(
    model_name: str, home: str, version: int | None, policy: dict[str, Any], force: bool, reason: str | None
) -> dict[str, Any]:
    from training.promotion import PromotionPolicy, promote

    decision = promote(model_name, home=Path(home), version=version, policy=PromotionPolicy(**policy),
                       force=force, reason=reason)  # fmt: skip
    _log(f"{model_name} v{decision['version']}: {decision['decision']} ({decision['reason']})")
    return decision


@task(retries=2, retry_delay_seconds=5, retry_condition_fn=_retry_unless_user_error)
def finetune_task(config: dict[str, Any], home: str) -> dict[str, Any]:
    """Fine-tuning in this process (no Ray: the data is small); a lost tracking server is worth a retry."""
    from training.finetune import finetune

    return finetune(FinetuneConfig.from_dict(config), home=Path(home), progress=_log)


# --- flows ---------------------------------------------------------------------------------------------------


@flow(name="albert-ingest")
def ingest_flow(
    sources: list[str],
    corpus: str,
    home: str | None = None,
    ingest_config: IngestConfig = IngestConfig(),
    tokenizer_config: TokenizerJobConfig = TokenizerJobConfig(),
    shards_config: ShardsConfig = ShardsConfig(),
    retrain_tokenizer: bool = False,
    ray_address: str | None = None,
    upload_project: bool = True,
) -> dict[str, Any]:
    """Ingest `sources` into `corpus`, make sure it has a vocabulary, build (or reuse) the newest version's
    shards; publish a Markdown summary and, when a new version got shards, the `albert.corpus.published` event.
    The three configs are the jobs' own (`albert ingest|tokenizer train|shards build --help` lists their fields);
    a deployment's run form shows them, and a JSON object with some of their fields is accepted.

    With a Jobs API address (`ray_address`, default $ALBERT_RAY_ADDRESS or $RAY_API_SERVER_ADDRESS) each step is
    a Ray job on that cluster; `sources` and `home` must then name storage the cluster reaches too."""
    root = str(albert_home(home))
    address = jobs_address(ray_address)
    ingested = ingest_task(sources, corpus, root, ingest_config.to_dict(), address, upload_project)
    tokenizer = tokenizer_task(
        corpus, root, tokenizer_config.to_dict(), retrain_tokenizer, address, upload_project
    )
    shards = _build_or_cached_shards(corpus, root, shards_config.to_dict(), address, upload_project)
    result = {"corpus": corpus, "home": root, "ingest": ingested, "tokenizer": tokenizer, "shards": shards}
    create_markdown_artifact(_ingest_report(result), key=_artifact_key("ingest", corpus),
                             description=f"ingestion of {corpus}")  # fmt: skip
    if ingested["version"] is not None:
        emit_event(
            event=CORPUS_PUBLISHED,
            resource={"prefect.resource.id": f"albert.corpus.{corpus}", "prefect.resource.name": corpus},
            payload={"corpus": corpus, "version": ingested["version"], "shards": shards["id"], "home": root},
        )
    return result


@flow(name="albert-train")
def train_flow(
    shards: str | None = None,
    corpus: str | None = None,
    train_config: TrainConfig = TrainConfig(),
    home: str | None = None,
    ray_address: str | None = None,
    upload_project: bool = True,
    promote: bool = False,
) -> dict[str, Any]:
    """Pretrain on `shards` (or the newest shards of `corpus`, or the ones `train_config` names) with
    `train_config` (`albert train --help` lists its fields); on local Ray, or on the Ray cluster at `ray_address`
    (default $ALBERT_RAY_ADDRESS or $RAY_API_SERVER_ADDRESS) through the Jobs API. Returns the training summary:
    run id, model version and metrics, and with `promote` the gate's decision on the new version."""
    from data_jobs.shards import latest_shards

    root = albert_home(home)
    ray_address = jobs_address(ray_address)
    if shards is None and corpus is not None:
        shards = latest_shards(root, corpus)
    cfg = train_config.replace(shards=shards) if shards is not None else train_config
    if not cfg.shards:
        raise UserError("train_flow needs shards=ID, corpus=NAME or a train_config with its shards")
    if ray_address:
        summary = submit_training_job(cfg.to_dict(), str(root), ray_address, upload_project)
    else:
        summary = train_task(cfg.to_dict(), str(root))
    create_markdown_artifact(_train_report(summary), key=_artifact_key("train", cfg.registered_model_name),
                             description=f"training run {summary['run_name']}")  # fmt: skip
    if promote:
        summary["promotion"] = promote_flow(cfg.registered_model_name, version=summary["model_version"],
                                            home=str(root))  # fmt: skip
    return summary


@flow(name="albert-promote")
def promote_flow(
    model_name: str,
    version: int | None = None,
    margin: float = 0.0,
    force: bool = False,
    reason: str | None = None,
    home: str | None = None,
    eval_shards: str | None = None,
    max_sequences: int | None = None,
) -> dict[str, Any]:
    """Gate `version` (default: the `candidate`) against the champion on the same held-out shards (default: the
    eval split of the shards the candidate was trained on)."""
    policy = {"margin": margin, "eval_shards": eval_shards, "max_sequences": max_sequences}
    root = str(albert_home(home))
    decision = promote_task(model_name, root, version, policy, force, reason)
    create_markdown_artifact(_promote_report(decision), key=_artifact_key("promote", model_name),
                             description=f"promotion decision for {model_name}")  # fmt: skip
    # Only a champion that changed: not a rejection, nor a repeated call on the version already champion.
    if decision["promoted"] and decision["champion_version"] != decision["previous_champion"]:
        # Pinned to the version, not `@champion`: a run triggered late fine-tunes the model that was promoted.
        # emit_event logs and swallows a delivery failure (and is a no-op without an API): never fails a promotion.
        emit_event(
            event=MODEL_PROMOTED,
            resource={"prefect.resource.id": f"albert.model.{model_name}", "prefect.resource.name": model_name},
            payload={"model_name": model_name, "version": decision["version"],
                     "model_uri": f"models:/{model_name}/{decision['version']}",
                     "previous_champion": decision["previous_champion"], "forced": decision["forced"],
                     "eval_shards": decision["eval_shards"], "home": root},
        )  # fmt: skip
    return decision


@flow(name="albert-finetune")
def finetune_flow(
    finetune_config: FinetuneConfig,
    model_uri: str | None = None,
    home: str | None = None,
) -> dict[str, Any]:
    """Fine-tune a registered model with `finetune_config` (`albert finetune --help` lists its fields: task,
    train and eval files, epochs, ...); `model_uri` (e.g. `models:/NAME/3`, what `albert.model.promoted`
    carries) replaces the config's. Registers the classifier (or tagger) as a new version aliased `candidate`
    and returns the fine-tuning summary. The data files must be readable where the flow runs."""
    cfg = finetune_config.replace(model_uri=model_uri) if model_uri else finetune_config
    summary = finetune_task(cfg.to_dict(), str(albert_home(home)))
    create_markdown_artifact(_finetune_report(cfg, summary), description=f"fine-tuning run {summary['run_name']}",
                             key=_artifact_key("finetune", cfg.registered_model_name))  # fmt: skip
    return summary


@flow(name="albert-pipeline")
def pipeline_flow(
    sources: list[str],
    corpus: str,
    home: str | None = None,
    ingest_config: IngestConfig = IngestConfig(),
    tokenizer_config: TokenizerJobConfig = TokenizerJobConfig(),
    shards_config: ShardsConfig = ShardsConfig(),
    train_config: TrainConfig = TrainConfig(),
    margin: float = 0.0,
    ray_address: str | None = None,
) -> dict[str, Any]:
    """ingest -> train -> promote, as subflows (each keeps its own runs, artifacts and logs); training runs on the
    shards the ingestion built or reused."""
    data = ingest_flow(sources, corpus, home, ingest_config, tokenizer_config, shards_config,
                       ray_address=ray_address)  # fmt: skip
    trained = train_flow(shards=data["shards"]["id"], train_config=train_config, home=data["home"],
                         ray_address=ray_address)  # fmt: skip
    decision = promote_flow(train_config.registered_model_name, version=trained["model_version"], margin=margin,
                            home=data["home"])  # fmt: skip
    return {"ingest": data, "train": trained, "promote": decision}


# --- reports -------------------------------------------------------------------------------------------------


def _artifact_key(kind: str, name: str) -> str:
    """Prefect artifact keys allow lowercase letters, digits and dashes only."""
    return "albert-" + "".join(c if c.isalnum() else "-" for c in f"{kind}-{name}".lower())


def _table(rows: list[tuple[str, Any]]) -> str:
    return "\n".join(["| | |", "|---|---|", *(f"| {k} | {v} |" for k, v in rows)])


def _ingest_report(result: dict[str, Any]) -> str:
    ingested, shards = result["ingest"], result["shards"]
    quarantined = ingested["quarantined"]
    rows = [
        ("corpus version", ingested["version"] or f"nothing new (parent {ingested['parent']})"),
        ("documents written", ingested["documents"]),
        ("duplicates skipped", ingested["duplicates"]),
        ("quarantined", f"{quarantined['total']} {json.dumps(quarantined.get('by_reason', {}))}"),
        (
            "tokenizer",
            f"{result['tokenizer']['name']} ({'reused' if result['tokenizer']['reused'] else 'trained'})",
        ),
        (
            "shards",
            f"`{shards['id']}` train {shards['instances']['train']}, eval {shards['instances']['eval']}",
        ),
        ("shards manifest", f"`{Path(shards['path']) / 'manifest.json'}`"),
        ("corpus manifest", f"`{Path(ingested['path']) / 'manifest.json'}`" if ingested["path"] else "-"),
    ]
    return f"# Ingestion of `{result['corpus']}`\n\n{ingested['message']}\n\n{_table(rows)}\n"


def _train_report(summary: dict[str, Any]) -> str:
    rows = [("run", summary["run_name"]), ("MLflow run", summary["run_id"]),
            ("model", f"`{summary['model_uri']}` (alias `candidate`)"), ("final step", summary["final_step"]),
            ("tokens/s", summary["tokens_per_second"])]  # fmt: skip
    rows += [(k, f"{v:.4f}") for k, v in sorted(summary["metrics"].items())]
    return f"# Training run `{summary['run_name']}`\n\n{_table(rows)}\n"


def _finetune_report(cfg: FinetuneConfig, summary: dict[str, Any]) -> str:
    rows = [("run", summary["run_name"]), ("MLflow run", summary["run_id"]),
            ("model", f"`{summary['model_uri']}` (alias `candidate`)"),
            ("pretrained model", f"`{cfg.model_uri}` (version {summary.get('pretrained_model_version') or '-'})"),
            ("train file", f"`{cfg.train_path}`"), ("eval file", f"`{cfg.eval_path or '-'}`")]  # fmt: skip
    # The figures differ by task (accuracy and macro-F1, entity F1, ...): every number the summary holds.
    shown = {"run_id", "model_version", "pretrained_model_version"}
    rows += [(k, f"{v:.4f}" if isinstance(v, float) else v) for k, v in sorted(summary.items())
             if isinstance(v, int | float) and not isinstance(v, bool) and k not in shown]  # fmt: skip
    return f"# Fine-tuning run `{summary['run_name']}` ({cfg.task})\n\n{_table(rows)}\n"


def _promote_report(decision: dict[str, Any]) -> str:
    rows = [("decision", decision["decision"]), ("reason", decision["reason"]),
            ("champion now", decision["champion_version"]), ("previous champion", decision["previous_champion"]),
            ("evaluated on shards", decision["eval_shards"])]  # fmt: skip
    for who, metrics in decision["metrics"].items():
        rows += [
            (f"{who} {k}", f"{v:.4f}") for k, v in sorted((metrics or {}).items()) if isinstance(v, float)
        ]
    return f"# Promotion of `{decision['model_name']}` v{decision['version']}\n\n{_table(rows)}\n"
