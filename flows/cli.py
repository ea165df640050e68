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
    from albert_core.checkpoint import load_model
    from albert_core.hf import export_hf

    tokenizer_dir = args.tokenizer
    if args.source.startswith("preset:"):
        torch.manual_seed(args.seed)
        model = AlbertForPreTraining(AlbertConfig.from_preset(args.source.removeprefix("preset:")))
    else:
        source = Path(args.source)
        if not source.is_dir():
            raise UserError(f"{source} is not a folder; give a model folder or preset:NAME")
        model = load_model(source)
        if tokenizer_dir is None and (source / "tokenizer").is_dir():
            tokenizer_dir = source / "tokenizer"
    outdir = export_hf(model, args.outdir, tokenizer_dir)
    return {
        "outdir": str(outdir),
        "tokenizer": tokenizer_dir is not None,
        "parameters": model.num_parameters(),
    }


def cmd_ingest(args: argparse.Namespace) -> dict[str, Any]:
    from albert_core.storage import albert_home
    from data_jobs.ingest import IngestConfig, ingest

    cfg = IngestConfig(
        format=args.format,
        text_field=args.text_field,
        column=args.column,
        layout=args.layout,
        pre_split=args.pre_split,
        encoding=args.encoding,
        max_line_bytes=args.max_line_bytes,
    )
    return ingest(args.paths, args.corpus, home=albert_home(args.home), cfg=cfg)


def cmd_tokenizer_train(args: argparse.Namespace) -> dict[str, Any]:
    from albert_core.storage import albert_home
    from data_jobs.tokenizer_job import TokenizerJobConfig, train_tokenizer

    cfg = TokenizerJobConfig(
        vocab_size=args.vocab_size,
        lowercase=not args.cased,
        sample_sentences=args.sample_sentences,
        seed=args.seed,
    )
    return train_tokenizer(
        args.corpus, home=albert_home(args.home), version=args.version, name=args.name, cfg=cfg
    )


def cmd_shards_build(args: argparse.Namespace) -> dict[str, Any]:
    from albert_core.storage import albert_home
    from data_jobs.shards import ShardsConfig, build_shards

    cfg = ShardsConfig(
        max_seq_len=args.max_seq_len,
        dupe_factor=args.dupe_factor,
        masking=args.masking,
        max_predictions=args.max_predictions,
        eval_share=args.eval_share,
        seed=args.seed,
    )
    return build_shards(
        args.corpus,
        args.tokenizer,
        home=albert_home(args.home),
        version=args.version,
        workers=args.workers,
        cfg=cfg,
    )


TRAIN_FLAGS = ("shards", "preset", "workers", "max_steps", "batch_size", "grad_accum", "lr", "optimizer",
               "precision", "eval_every", "checkpoint_every", "seed", "model_name")  # fmt: skip


def cmd_train(args: argparse.Namespace) -> dict[str, Any]:
    from albert_core.storage import albert_home, read_json, validate_name
    from training.config import TrainConfig
    from training.run import train

    home = albert_home(args.home)
    given = {k: getattr(args, k) for k in TRAIN_FLAGS if getattr(args, k) is not None}
    if args.compile:
        given["compile"] = True
    if args.resume:  # continue with the run's own config; flags given now override it (e.g. --max-steps)
        base = read_json(home / "runs" / validate_name(args.resume, "run name") / "run.json")["config"]
        cfg = TrainConfig.from_dict({**base, **given})
    else:
        if "shards" not in given:
            raise UserError("--shards is required (the id printed by `albert shards build`)")
        cfg = TrainConfig.from_dict(given)
    return train(cfg, home=home, resume=args.resume, progress=progress)


def progress(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def cmd_demo(args: argparse.Namespace) -> dict[str, Any]:
    from albert_core.storage import albert_home
    from flows.demo import run_demo

    return run_demo(albert_home(args.home), quick=args.quick)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="albert", description="ALBERT data-and-training pipeline")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def command(parent: Any, name: str, func: Command, help: str) -> argparse.ArgumentParser:
        p = parent.add_parser(name, help=help, description=help)
        p.add_argument(
            "--json", action="store_true", help="print the result as one JSON object on the last line"
        )
        p.set_defaults(func=func)
        return p

    p = command(sub, "demo", cmd_demo, "run the whole chain on the builtin corpus with embedded defaults")
    p.add_argument("--home", help="storage root (default: $ALBERT_HOME or ./.albert)")
    p.add_argument("--quick", action="store_true", help="a smaller corpus and fewer steps (about a minute)")

    p = command(sub, "ingest", cmd_ingest, "ingest text, JSONL, Parquet or HF datasets into a corpus version")
    p.add_argument("paths", nargs="+", metavar="PATH", help="files, folders, globs, or 'builtin'")
    p.add_argument("--corpus", required=True, help="corpus name (letters, digits, -_.)")
    p.add_argument("--format", choices=["text", "jsonl", "parquet", "hf"], help="default: from the extension")
    p.add_argument("--text-field", default="text", help="JSONL field holding the text")
    p.add_argument("--column", default="text", help="Parquet / HF column holding the text")
    p.add_argument("--layout", choices=["sentences", "paragraphs", "wikitext", "wrapped", "documents"],
                   help="how text files are laid out (default: detected per file and recorded)")  # fmt: skip
    p.add_argument("--pre-split", action="store_true", help="one sentence per line already: do not split")
    p.add_argument("--encoding", default="utf-8", help="utf-8 (strict), auto (detect), or a codec name")
    p.add_argument("--max-line-bytes", type=int, default=1_000_000, help="longer lines are quarantined")
    p.add_argument("--home", help="storage root (default: $ALBERT_HOME or ./.albert)")

    tok = sub.add_parser("tokenizer", help="SentencePiece vocabularies").add_subparsers(
        dest="tokenizer_command", required=True
    )
    p = command(tok, "train", cmd_tokenizer_train, "train a SentencePiece vocabulary on a corpus version")
    p.add_argument("--corpus", required=True)
    p.add_argument("--version", type=int, help="corpus version (default: latest)")
    p.add_argument("--name", help="tokenizer name (default: the corpus name)")
    p.add_argument("--vocab-size", type=int, default=30000)
    p.add_argument("--cased", action="store_true", help="keep case (the reference lower-cases)")
    p.add_argument("--sample-sentences", type=int, default=10_000_000, help="at most this many sentences")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--home", help="storage root (default: $ALBERT_HOME or ./.albert)")

    shards = sub.add_parser("shards", help="pretraining shards").add_subparsers(
        dest="shards_command", required=True
    )
    p = command(
        shards, "build", cmd_shards_build, "tokenize a corpus version and build SOP pretraining shards"
    )
    p.add_argument("--corpus", required=True)
    p.add_argument("--version", type=int, help="corpus version (default: latest)")
    p.add_argument("--tokenizer", required=True, help="tokenizer name")
    p.add_argument("--max-seq-len", type=int, required=True)
    p.add_argument("--dupe-factor", type=int, default=1)
    p.add_argument("--masking", choices=["static", "dynamic"], default="static")
    p.add_argument("--max-predictions", type=int, help="default: round(0.15 * max_seq_len)")
    p.add_argument(
        "--eval-share", type=float, default=0.01, help="share of documents held out for evaluation"
    )
    p.add_argument("--workers", type=int, help="parallel build tasks (default: one per core)")
    p.add_argument("--seed", type=int, default=12345)
    p.add_argument("--home", help="storage root (default: $ALBERT_HOME or ./.albert)")

    p = command(sub, "train", cmd_train, "pretrain ALBERT on shards with Ray Train DDP, tracked in MLflow")
    p.add_argument("--shards", help="shard id from `albert shards build`")
    p.add_argument("--preset", help="model preset (default tiny)")
    p.add_argument("--workers", type=int, help="DDP workers (default 2)")
    p.add_argument("--max-steps", type=int)
    p.add_argument("--batch-size", type=int, help="global batch in sequences")
    p.add_argument("--grad-accum", type=int, help="micro-batches per optimizer step")
    p.add_argument("--lr", type=float)
    p.add_argument("--optimizer", choices=["lamb", "adamw"])
    p.add_argument("--precision", choices=["fp32", "bf16", "fp16"])
    p.add_argument("--compile", action="store_true", help="torch.compile the model")
    p.add_argument("--eval-every", type=int)
    p.add_argument("--checkpoint-every", type=int)
    p.add_argument("--seed", type=int)
    p.add_argument("--model-name", help="registered model name (default albert-<preset>)")
    p.add_argument("--resume", metavar="RUN", help="continue a finished run (same MLflow run) for more steps")
    p.add_argument("--home", help="storage root (default: $ALBERT_HOME or ./.albert)")

    model = sub.add_parser("model", help="model presets").add_subparsers(dest="model_command", required=True)
    p = command(model, "info", cmd_model_info, "parameter counts and config of a preset")
    p.add_argument("--preset", required=True)

    p = command(
        sub, "export-hf", cmd_export_hf, "write a Hugging Face AlbertForPreTraining (+ tokenizer) folder"
    )
    p.add_argument("source", help="a model folder, or preset:NAME for a seeded random init")
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
    return 0


def _human(result: dict[str, Any]) -> str:
    return "\n".join(f"{k}: {v}" for k, v in result.items() if not isinstance(v, dict))


if __name__ == "__main__":
    sys.exit(main())
