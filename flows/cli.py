"""The `albert` command line. Each command is a thin call into the packages below; results print as one JSON
object on the last line of stdout with --json, progress goes to stderr, user mistakes are one line, exit 2."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from albert_core.errors import UserError
from flows.cli_options import add_config_flags, config_from_args, json_flag

Command = Callable[[argparse.Namespace], dict[str, Any]]


def cmd_model_info(args: argparse.Namespace) -> dict[str, Any]:
    from albert_core import AlbertConfig, count_parameters

    cfg = AlbertConfig.from_preset(args.preset)
    return {
        "preset": args.preset,
        "parameters": count_parameters(cfg),  # the bare encoder, as the paper and HF AlbertModel count
        "pretraining_parameters": count_parameters(cfg, encoder_only=False),
        "config": cfg.to_dict(),
    }


def cmd_export_hf(args: argparse.Namespace) -> dict[str, Any]:
    import torch

    from albert_core import AlbertConfig, AlbertForPreTraining
    from albert_core.checkpoint import CLASSIFIER_FORMAT, load_classifier, load_model
    from albert_core.hf import export_hf, export_hf_head
    from albert_core.storage import read_json

    tokenizer_dir = args.tokenizer
    if args.source.startswith("preset:"):
        torch.manual_seed(args.seed)
        model = AlbertForPreTraining(AlbertConfig.from_preset(args.source.removeprefix("preset:")))
        outdir = export_hf(model, args.outdir, tokenizer_dir)
        return {
            "outdir": str(outdir),
            "tokenizer": tokenizer_dir is not None,
            "parameters": model.num_parameters(),
        }
    source = Path(args.source)
    if args.source.startswith(("models:/", "runs:/")):
        from training.registry import download_model

        _registry(args)
        source = download_model(args.source)
    elif not source.is_dir():
        raise UserError(f"{source} is not a folder; give a model URI, a model folder or preset:NAME")
    if tokenizer_dir is None and (source / "tokenizer").is_dir():
        tokenizer_dir = source / "tokenizer"
    if (source / "manifest.json").is_file() and read_json(source / "manifest.json").get(
        "format"
    ) == CLASSIFIER_FORMAT:
        # a fine-tuned model: AlbertFor{Sequence,Token}Classification or AlbertForQuestionAnswering
        model, head = load_classifier(source)
        outdir = export_hf_head(model, head["labels"], args.outdir, tokenizer_dir)
        kind = type(model).__name__
    else:
        model = load_model(source)
        outdir = export_hf(model, args.outdir, tokenizer_dir)
        kind = "AlbertForPreTraining"
    return {
        "outdir": str(outdir),
        "class": kind,
        "tokenizer": tokenizer_dir is not None,
        "parameters": model.num_parameters(),
    }


def _job_config(cls: type, args: argparse.Namespace) -> Any:
    """A job's config: --config-json (how a flow submits a Ray job) with the flags given on top."""
    return config_from_args(cls, args, base=json_flag(args.config_json))


def cmd_ingest(args: argparse.Namespace) -> dict[str, Any]:
    from albert_core.storage import albert_home
    from data_jobs.config import IngestConfig
    from data_jobs.ingest import ingest

    return ingest(args.paths, args.corpus, home=albert_home(args.home), cfg=_job_config(IngestConfig, args))


def cmd_tokenizer_train(args: argparse.Namespace) -> dict[str, Any]:
    from albert_core.storage import albert_home
    from data_jobs.config import TokenizerJobConfig
    from data_jobs.tokenizer_job import train_tokenizer

    cfg = _job_config(TokenizerJobConfig, args)
    return train_tokenizer(
        args.corpus, home=albert_home(args.home), version=args.version, name=args.name, cfg=cfg
    )


def cmd_shards_build(args: argparse.Namespace) -> dict[str, Any]:
    from albert_core.storage import albert_home
    from data_jobs.config import ShardsConfig
    from data_jobs.shards import build_shards

    if not hasattr(args, "max_seq_len") and args.config_json is None:
        raise UserError("--max-seq-len is required (tokens per sequence, e.g. 128)")
    cfg = _job_config(ShardsConfig, args)
    return build_shards(
        args.corpus,
        args.tokenizer,
        home=albert_home(args.home),
        version=args.version,
        workers=args.workers,
        cfg=cfg,
    )


def cmd_tokenize(args: argparse.Namespace) -> dict[str, Any]:
    from albert_core.storage import albert_home
    from data_jobs.corpus import resolve_version
    from data_jobs.tokenize import tokenize_corpus
    from data_jobs.tokenizer_job import load_tokenizer

    home = albert_home(args.home)
    source = resolve_version(home, args.corpus, args.version)
    tokenizer, _ = load_tokenizer(home, args.tokenizer or args.corpus)
    return tokenize_corpus(home, source, tokenizer, args.workers)


def cmd_verify(args: argparse.Namespace) -> dict[str, Any]:
    from albert_core.storage import albert_home
    from data_jobs.verify import verify_corpus, verify_shards, verify_tokenizer

    home = albert_home(args.home)
    if args.verify_command == "corpus":
        result = verify_corpus(home, args.name, args.version)
    elif args.verify_command == "shards":
        result = verify_shards(home, args.name)
    else:
        result = verify_tokenizer(home, args.name)
    if not result.ok:
        print(f"albert: error: {result.failure()}", file=sys.stderr)
    return result.to_dict()


def cmd_train(args: argparse.Namespace) -> dict[str, Any]:
    from albert_core.storage import albert_home, read_json, validate_name
    from training.config import TrainConfig
    from training.run import train

    home = albert_home(args.home)
    base = json_flag(args.config_json)  # the whole TrainConfig as JSON (how train_flow submits a Ray job)
    if args.resume is not None:  # continue the run with its own config; flags given now override it
        base = read_json(home / "runs" / validate_name(args.resume, "run name") / "run.json")["config"]
    elif not hasattr(args, "shards") and "shards" not in base:
        raise UserError("--shards is required (the id printed by `albert shards build`)")
    cfg = config_from_args(TrainConfig, args, base=base)
    return train(cfg, home=home, resume=args.resume, progress=progress)


def _grid(text: str | None, convert: Callable[[str], Any], flag: str) -> tuple | None:
    """A comma-separated flag value as a tuple of grid values (None when the flag is not given)."""
    if text is None:
        return None
    values = []
    for part in text.split(","):
        try:
            values.append(convert(part.strip()))
        except ValueError:
            raise UserError(f"{flag}: {part.strip()!r} is not a valid value") from None
    return tuple(values)


def cmd_sweep(args: argparse.Namespace) -> dict[str, Any]:
    from albert_core.storage import albert_home
    from training.sweep import SweepConfig, sweep, table

    home = albert_home(args.home)
    grid = {
        "lr": _grid(args.lr, float, "--lr"),
        "optimizer": _grid(args.optimizer, str, "--optimizer"),
        "warmup_steps": _grid(args.warmup_steps, _warmup, "--warmup-steps"),
        "batch_size": _grid(args.batch_size, int, "--batch-size"),
    }
    if args.model_overrides is not None:
        try:
            overrides = json.loads(args.model_overrides)
        except json.JSONDecodeError as e:
            raise UserError(f"--model-overrides is not valid JSON: {e}") from None
        grid["model_overrides"] = overrides if isinstance(overrides, list) else [overrides]
    flags = ("preset", "max_steps", "eval_every", "eval_sequences", "seed", "metric", "max_concurrent", "name")  # fmt: skip
    given = {**grid, **{k: getattr(args, k) for k in flags}}
    cfg = SweepConfig(shards=args.shards, **{k: v for k, v in given.items() if v is not None})
    result = sweep(cfg, home=home, progress=progress)
    if args.json:
        return result
    print(table(result))  # the ranked table; `_human` prints the lines below it
    best = result["best"]
    return {"best": f"{best['trial']} (MLflow run {best['run_id']})" if best else "none: every trial failed",
            "results": result["results_path"], "mlflow_parent_run": result["parent_run_id"]}  # fmt: skip


def _warmup(value: str) -> int | None:
    return None if value == "default" else int(value)


def progress(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def cmd_demo(args: argparse.Namespace) -> dict[str, Any]:
    from albert_core.storage import albert_home
    from flows.demo import run_demo

    return run_demo(albert_home(args.home), quick=args.quick)


def _registry(args: argparse.Namespace) -> Any:
    """ALBERT_HOME, with MLflow pointed at its store (or $MLFLOW_TRACKING_URI)."""
    from albert_core.storage import albert_home
    from training.registry import configure_mlflow

    home = albert_home(args.home)
    configure_mlflow(home)
    return home


def _model_name(name: str | None) -> None:
    """Refuse a model name that could be a path before any service is contacted (it names lock files)."""
    from albert_core.storage import validate_name

    if name is not None:
        validate_name(name, "model name")


def cmd_models_list(args: argparse.Namespace) -> dict[str, Any]:
    from training.promotion import list_models

    _model_name(args.name)
    return {"models": list_models(_registry(args), args.name)}


def cmd_promote(args: argparse.Namespace) -> dict[str, Any]:
    from flows.pipeline import promote_flow

    _model_name(args.model_name)
    if args.force and not args.reason:
        raise UserError("--force needs --reason TEXT: the override is recorded with the decision")
    home = _registry(args)
    return promote_flow(args.model_name, version=args.version, margin=args.margin, force=args.force,
                        reason=args.reason, home=str(home), eval_shards=args.eval_shards,
                        max_sequences=args.max_sequences)  # fmt: skip


def cmd_rollback(args: argparse.Namespace) -> dict[str, Any]:
    from training.promotion import rollback

    _model_name(args.model_name)
    return rollback(args.model_name, home=_registry(args), reason=args.reason)


def cmd_predict(args: argparse.Namespace) -> dict[str, Any]:
    from training.registry import predict

    _registry(args)
    (row,) = predict(args.model_uri, [args.text], [args.pair], top_k=args.top_k)
    return {"model_uri": args.model_uri, "text": args.text, "pair": args.pair, **row}


def cmd_finetune(args: argparse.Namespace) -> dict[str, Any]:
    from training.finetune import FinetuneConfig, finetune

    home = _registry(args)
    return finetune(config_from_args(FinetuneConfig, args), home=home, progress=progress)


def cmd_doctor(args: argparse.Namespace) -> dict[str, Any]:
    from albert_core.storage import albert_home
    from flows.doctor import doctor

    return doctor(albert_home(args.home))


def _finetune_config(path: str | None) -> Any:
    """The fine-tuning config of `albert-finetune/on-promoted`, from a JSON file (None: no such deployment)."""
    from training.config import FinetuneConfig

    if path is None:
        return None
    flag = "--finetune-config-json"
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as e:
        raise UserError(f"{flag}: cannot read {path}: {e.strerror}") from None
    try:
        return FinetuneConfig.from_dict(json_flag(text, flag))
    except UserError as e:
        raise UserError(f"{flag} {path}: {e}") from None


def cmd_flows_serve(args: argparse.Namespace) -> dict[str, Any]:
    from flows.deploy import FINETUNE_DEPLOYMENT, NO_FINETUNE_CONFIG, serve_deployments

    finetune_config = _finetune_config(args.finetune_config_json)
    if finetune_config is None:
        progress(f"{FINETUNE_DEPLOYMENT}: {NO_FINETUNE_CONFIG}")
    serve_deployments(home=args.home, cron=args.cron, sources=args.sources, corpus=args.corpus,
                      finetune_config=finetune_config)  # fmt: skip
    return {"served": True}


def cmd_flows_deploy(args: argparse.Namespace) -> dict[str, Any]:
    from flows.deploy import deploy_to_pool

    return deploy_to_pool(work_pool=args.work_pool, home=args.home, cron=args.cron, sources=args.sources,
                          corpus=args.corpus, finetune_config=_finetune_config(args.finetune_config_json))  # fmt: skip


def build_parser() -> argparse.ArgumentParser:
    from data_jobs.config import IngestConfig, ShardsConfig, TokenizerJobConfig
    from training.config import FinetuneConfig, TrainConfig

    parser = argparse.ArgumentParser(prog="albert", description="ALBERT data-and-training pipeline")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    common = argparse.ArgumentParser(add_help=False)  # every command's --json and --home, declared once
    common.add_argument(
        "--json", action="store_true", help="print the result as one JSON object on the last line"
    )
    common.add_argument("--home", help="storage root (default: $ALBERT_HOME or ./.albert)")
    config_json = "the whole job config as JSON (how a flow submits a Ray job); flags given beside it win"

    def command(parent: Any, name: str, func: Command, help: str) -> argparse.ArgumentParser:
        p = parent.add_parser(name, help=help, description=help, parents=[common])
        p.set_defaults(func=func)
        return p

    p = command(sub, "demo", cmd_demo, "run the whole chain on the builtin corpus with embedded defaults")
    p.add_argument("--quick", action="store_true", help="a smaller corpus and fewer steps (about a minute)")

    p = command(sub, "ingest", cmd_ingest, "ingest text, JSONL, Parquet or HF datasets into a corpus version")
    p.add_argument("paths", nargs="+", metavar="PATH", help="files, folders, globs, or 'builtin'")
    p.add_argument("--corpus", required=True, help="corpus name (letters, digits, -_.)")
    add_config_flags(p, IngestConfig)
    p.add_argument("--config-json", help=config_json)

    tok = sub.add_parser("tokenizer", help="SentencePiece vocabularies").add_subparsers(
        dest="tokenizer_command", required=True
    )
    p = command(tok, "train", cmd_tokenizer_train, "train a SentencePiece vocabulary on a corpus version")
    p.add_argument("--corpus", required=True)
    p.add_argument("--version", type=int, help="corpus version (default: latest)")
    p.add_argument("--name", help="tokenizer name (default: the corpus name)")
    add_config_flags(p, TokenizerJobConfig)
    p.add_argument("--cased", dest="lowercase", action="store_false", default=argparse.SUPPRESS,
                   help="keep case: the same as --no-lowercase")  # fmt: skip
    p.add_argument("--config-json", help=config_json)

    p = command(
        sub, "tokenize", cmd_tokenize, "encode a corpus version into token ids (reused by every shards build)"
    )
    p.add_argument("--corpus", required=True)
    p.add_argument("--version", type=int, help="corpus version (default: latest)")
    p.add_argument("--tokenizer", help="tokenizer name (default: the corpus name)")
    p.add_argument("--workers", type=int, help="parallel tasks (default: one per core)")

    shards = sub.add_parser("shards", help="pretraining shards").add_subparsers(
        dest="shards_command", required=True
    )
    p = command(
        shards, "build", cmd_shards_build, "tokenize a corpus version and build SOP pretraining shards"
    )
    p.add_argument("--corpus", required=True)
    p.add_argument("--version", type=int, help="corpus version (default: latest)")
    p.add_argument("--tokenizer", required=True, help="tokenizer name")
    p.add_argument("--workers", type=int, help="parallel build tasks (default: one per core)")
    add_config_flags(p, ShardsConfig)
    p.add_argument("--config-json", help=config_json)

    verify = sub.add_parser(
        "verify", help="re-check files against their manifest (sha256, Parquet rows); exit 1 if any differ"
    ).add_subparsers(dest="verify_command", required=True)
    for what, name_help in (
        ("corpus", "corpus name"),
        ("shards", "shard id from `albert shards build`"),
        ("tokenizer", "tokenizer name"),
    ):
        p = command(verify, what, cmd_verify, f"check every file of a {what} against its manifest")
        p.add_argument("name", metavar="NAME" if what != "shards" else "ID", help=name_help)
        if what == "corpus":
            p.add_argument("--version", type=int, help="one version (default: every version)")

    p = command(sub, "train", cmd_train, "pretrain ALBERT on shards with Ray Train DDP, tracked in MLflow")
    add_config_flags(p, TrainConfig, aliases={"use_gpu": ("--gpu",)})
    p.add_argument(
        "--resume",
        metavar="RUN",
        help="continue a run (same MLflow run) for more steps; at its final step, register a model that could not be "
        "registered and replay its pending metrics",
    )
    p.add_argument("--config-json", help="a whole training config as JSON (flags given beside it win)")

    p = command(sub, "sweep", cmd_sweep,
                "grid-search pretraining recipes with Ray Tune (one MLflow run per trial), ranked on held-out figures")  # fmt: skip
    p.add_argument("--shards", required=True, help="shard id from `albert shards build`")
    p.add_argument("--preset", help="model preset (default tiny)")
    p.add_argument("--lr", help="learning rates, comma-separated (default 1e-3,3e-3,1e-2)")
    p.add_argument("--optimizer", help="optimizers, comma-separated: lamb, adamw (default both)")
    p.add_argument("--warmup-steps", help="warmup steps, comma-separated; 'default' is 10%% of --max-steps")
    p.add_argument("--batch-size", help="batch sizes in sequences, comma-separated (default 32)")
    p.add_argument("--model-overrides", metavar="JSON",
                   help='AlbertConfig fields, a JSON object or a list of them (one grid value each), e.g. '
                        '\'[{"num_hidden_layers": 2}, {"num_hidden_layers": 4}]\'')  # fmt: skip
    p.add_argument("--max-steps", type=int, help="steps per trial (default 200)")
    p.add_argument("--eval-every", type=int, help="steps between held-out evaluations (default 50)")
    p.add_argument("--eval-sequences", type=int, help="held-out sequences per evaluation (default: all)")
    p.add_argument("--seed", type=int, help="one seed for every trial (default 0)")
    p.add_argument("--metric", help="what ranks the trials (default objective: eval_mlm_acc + eval_sop_acc - "
                                    "eval_sop_length_baseline)")  # fmt: skip
    p.add_argument("--max-concurrent", type=int, help="trials at once (default: one per core)")
    p.add_argument("--name", help="sweeps/NAME and the MLflow parent run's name (default <preset>-<time>)")

    models = sub.add_parser("models", help="the model registry").add_subparsers(
        dest="models_command", required=True
    )
    p = command(models, "list", cmd_models_list, "registered models, versions, aliases and last decisions")
    p.add_argument("name", nargs="?", help="one registered model (default: all)")

    p = command(
        sub, "promote", cmd_promote, "gate a candidate against the champion; move `champion` if better"
    )
    p.add_argument("model_name")
    p.add_argument("--version", type=int, help="version to promote (default: the one aliased `candidate`)")
    p.add_argument("--margin", type=float, default=0.0, help="how much better the gate metrics must be")
    p.add_argument("--eval-shards", help="shard id to compare on (default: the candidate's training shards)")
    p.add_argument("--max-sequences", type=int, help="evaluate on the first N held-out sequences only")
    p.add_argument("--force", action="store_true", help="promote regardless of the gate (needs --reason)")
    p.add_argument("--reason", help="why (recorded with the decision)")

    p = command(sub, "rollback", cmd_rollback, "move `champion` back to the previous champion")
    p.add_argument("model_name")
    p.add_argument("--reason", help="why (recorded with the decision)")

    p = command(
        sub, "predict", cmd_predict, "fill [MASK]s (and score sentence order) with a registered model"
    )
    p.add_argument("model_uri", help="models:/NAME@ALIAS or models:/NAME/VERSION")
    p.add_argument("text", help="text with one or more [MASK]")
    p.add_argument("--pair", help="a second segment: score whether TEXT and PAIR are in swapped order")
    p.add_argument("--top-k", type=int, default=5)

    p = command(
        sub,
        "finetune",
        cmd_finetune,
        "fine-tune a registered model: text classification, named entities (--task ner) or answers (--task qa)",
    )
    p.add_argument(
        "--model",
        dest="model_uri",
        required=True,
        help="pretrained model: models:/NAME@ALIAS, models:/NAME/V, runs:/ID/model or a folder",
    )
    p.add_argument(
        "--train",
        dest="train_path",
        required=True,
        help="training examples: JSONL, CSV or Parquet (--task ner: CoNLL or JSONL tokens/tags; "
        "--task qa: SQuAD v1.1/v2.0 JSON)",
    )
    p.add_argument(
        "--eval",
        dest="eval_path",
        default=argparse.SUPPRESS,
        help="held-out examples, same format (--task ner, qa: default, --eval-share of --train by a hash)",
    )
    add_config_flags(p, FinetuneConfig, skip=("model_uri", "train_path", "eval_path"))

    flows = sub.add_parser("flows", help="Prefect deployments").add_subparsers(
        dest="flows_command", required=True
    )
    for name, func, help in (
        ("serve", cmd_flows_serve, "serve the deployments from this process (schedules and triggers active)"),
        ("deploy", cmd_flows_deploy, "register the deployments with a work pool on the Prefect server"),
    ):
        p = command(flows, name, func, help)
        p.add_argument("--sources", nargs="+", default=["builtin"], help="what scheduled ingestion reads")
        p.add_argument("--corpus", default="builtin", help="corpus scheduled ingestion feeds")
        p.add_argument(
            "--cron", default="0 2 * * *", help="ingestion schedule (cron, UTC; default 02:00 daily)"
        )
        p.add_argument("--finetune-config-json", metavar="FILE",
                       help="a fine-tuning config as a JSON object (`albert finetune --help` lists its fields); "
                            "adds albert-finetune/on-promoted, which fine-tunes each new champion of the model "
                            "its model_uri names (models:/NAME@champion)")  # fmt: skip
        if name == "deploy":
            p.add_argument(
                "--work-pool", default="albert-process", help="process work pool (created if missing)"
            )

    p = command(sub, "doctor", cmd_doctor, "which services are configured, and whether they are reachable")

    model = sub.add_parser("model", help="model presets").add_subparsers(dest="model_command", required=True)
    p = command(model, "info", cmd_model_info, "parameter counts and config of a preset")
    p.add_argument("--preset", required=True)

    p = command(
        sub, "export-hf", cmd_export_hf, "write a Hugging Face AlbertForPreTraining (+ tokenizer) folder"
    )
    p.add_argument("source", help="models:/NAME@ALIAS, models:/NAME/V, a model folder, or preset:NAME")
    p.add_argument("outdir")
    p.add_argument("--tokenizer", help="tokenizer folder to include (default: the model folder's own)")
    p.add_argument("--seed", type=int, default=0, help="seed for preset:NAME initialisation")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        result = args.func(args)
    except UserError as e:
        print(f"albert: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("albert: interrupted", file=sys.stderr)
        return 130
    if args.json:
        print(json.dumps(result, sort_keys=True, default=str))
    else:
        print(_human(result))
    return 1 if args.command in ("doctor", "verify") and not result["ok"] else 0


def _human(result: dict[str, Any], prefix: str = "") -> str:
    """One `key: value` line per figure, nested objects as dotted keys (`metrics.eval_loss: 7.279`)."""
    lines = []
    for key, value in result.items():
        if isinstance(value, dict):
            if value:
                lines.append(_human(value, f"{prefix}{key}."))
        else:
            lines.append(f"{prefix}{key}: {round(value, 4) if isinstance(value, float) else value}")
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
