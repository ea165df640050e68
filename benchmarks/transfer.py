"""Transfer (issue "Pretraining must help downstream"): the same classifier fine-tuned from a pretrained `tiny`
ALBERT and from a random initialisation, with the same steps, on the same sentences.

- Pretraining: `albert train --shards ID --preset tiny --max-steps N --json` as a subprocess with ALBERT_HOME set to
  the benchmark's home, on the defaults of `training.config.TrainConfig` (read back from the run record), on the
  static shards `benchmarks.train_loader.build_bench_shards` builds (WikiText-2 valid + the Gutenberg books,
  8000-piece vocabulary, `--seq-len` tokens; `--quick`: WikiText-2 valid alone). With `--home` the corpus,
  tokenizer and shards of the other training benchmarks are reused.
- Task: which of the four Gutenberg books a sentence comes from (`write_book_splits`: 40 to 300 characters,
  `TRAIN_PER_BOOK` for training and `EVAL_PER_BOOK` held out per book, disjoint; the same files for every run).
  tests/training/test_transfer.py fine-tunes with this recipe and asserts the margin on the `pretrained_en` model.
- Fine-tuning: `albert finetune --model models:/NAME/V --init pretrained|random --json` per seed, the two inits at
  once (one torch thread each), on `albert finetune`'s defaults (`FinetuneConfig`: 3 epochs, AdamW lr 1e-4, 10%
  warm-up then linear decay, batch 32, 128 tokens): the same steps, head initialisation, shuffling and dropout for
  both inits; only the encoder's starting weights differ.
- Statistics: each run's accuracy and macro-F1 on the held-out sentences, as `albert finetune` reports them. The
  standard error of a difference of two accuracies on n sentences, pooled, is sqrt(2 p (1 - p) / n) with p their
  mean (the two-proportion z-test's; `standard_error`); the paired one (same sentences: McNemar's, from the b and c
  sentences only one of the two gets right, sqrt(b + c - (b - c)^2 / n) / n) comes from both classifiers'
  predictions, recomputed from the registered folders. Both measure the luck of the held-out sentences, not of the
  fine-tuning seed: the full run fine-tunes `SEEDS` seeds and reports the spread of the difference between them.

Run: `python -m benchmarks.transfer [--quick] [--home DIR] [--steps N] [--seeds S ...]`. Writes
benchmarks/results/transfer.{json,md}. The full run (600 pretraining steps, 3 seeds) takes 6 to 8 minutes on 2
cores. `--quick` takes about 3 and checks the machinery, not the claim: 100 pretraining steps on WikiText alone
leave the encoder collapsed (every sentence gets nearly the same [CLS] state; `cls_spread`), and its pretrained
side stays at chance.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import random
import statistics
import subprocess
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from benchmarks.time_to_quality import albert_command, child_env
from benchmarks.train_loader import CORPORA, RESULTS, bench_home, build_bench_shards, environment, log
from training.finetune import EVAL_ACCURACY, FinetuneConfig

REPO = Path(__file__).resolve().parents[1]
TRAIN_PER_BOOK, EVAL_PER_BOOK = 400, 400  # the smallest book (Alice) has about 1,050 usable sentences
MIN_CHARS, MAX_CHARS = 40, 300  # as tests/training/test_finetune.py: very short sentences say nothing
# `albert finetune`'s own recipe (3 epochs of 50 steps at lr 1e-4, 128 tokens). With 8 epochs at 1e-3 a random
# encoder catches up with today's lightly pretrained `tiny` models, and the pretrained one overfits (train loss
# 0.04 against 0.36): what pretraining buys here is learning faster, not a better end point.
EPOCHS, LR = FinetuneConfig.epochs, FinetuneConfig.lr
BATCH, MAX_SEQ_LEN = FinetuneConfig.batch_size, FinetuneConfig.max_seq_len
Z = 3.0  # the margin: pretrained must beat random by more than Z standard errors
STEPS, QUICK_STEPS = 600, 100
SEEDS, QUICK_SEEDS = (0, 1, 2), (0,)
MODEL_NAME = "albert-tiny-transfer"
# A pretrained [CLS] spread below this share of a random encoder's: collapsed (see cls_spread).
COLLAPSED = 0.1
INITS = ("pretrained", "random")


def standard_error(accuracies: tuple[float, float], n: int) -> float:
    """Standard error of the difference of two accuracies on n examples each, pooled (two-proportion z-test)."""
    p = sum(accuracies) / 2
    return math.sqrt(2 * p * (1 - p) / n)


def paired_standard_error(only_first: int, only_second: int, n: int) -> float:
    """Standard error of the difference of two accuracies on the same n examples, from the b examples only the
    first gets right and the c only the second does (McNemar)."""
    b, c = only_first, only_second
    return math.sqrt(max(b + c - (b - c) ** 2 / n, 0.0)) / n


def book_sentences(corpora: Path) -> dict[str, list[str]]:
    """Each Gutenberg book's sentences of MIN_CHARS..MAX_CHARS characters, shuffled by the book's name."""
    from albert_core.text import join_wrapped_lines, normalize, split_sentences

    books = {}
    for path in sorted((corpora / "gutenberg").glob("*.txt")):
        text = normalize(path.read_text(encoding="utf-8"))
        sentences = [
            s
            for paragraph in join_wrapped_lines(text.split("\n"))
            for s in split_sentences(paragraph)
            if MIN_CHARS <= len(s) <= MAX_CHARS
        ]
        random.Random(path.stem).shuffle(sentences)
        books[path.stem] = sentences
    return books


def write_book_splits(corpora: Path, folder: Path) -> tuple[Path, Path]:
    """train.jsonl / eval.jsonl: TRAIN_PER_BOOK and EVAL_PER_BOOK sentences of each book labelled by the book,
    disjoint; training rows shuffled, eval rows by book."""
    train, evaluation = [], []
    for book, sentences in book_sentences(corpora).items():
        if len(sentences) < TRAIN_PER_BOOK + EVAL_PER_BOOK:
            raise ValueError(
                f"{book} has {len(sentences)} sentences, fewer than {TRAIN_PER_BOOK + EVAL_PER_BOOK}"
            )
        train += [{"text": s, "label": book} for s in sentences[:TRAIN_PER_BOOK]]
        evaluation += [{"text": s, "label": book} for s in sentences[TRAIN_PER_BOOK:][:EVAL_PER_BOOK]]
    random.Random(0).shuffle(train)
    folder.mkdir(parents=True, exist_ok=True)
    paths = folder / "train.jsonl", folder / "eval.jsonl"
    for path, rows in zip(paths, (train, evaluation), strict=True):
        path.write_text("".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows), encoding="utf-8")
    return paths


# --- the commands ----------------------------------------------------------------------------------------------


def start_albert(args: list[str], home: Path, stderr_path: Path) -> tuple[subprocess.Popen, float]:
    """`albert ARGS --json` started, with its launch time."""
    log(f"albert {' '.join(args)}")
    with stderr_path.open("w") as stderr:
        proc = subprocess.Popen(albert_command() + [*args, "--json"], cwd=REPO, env=child_env(home),
                                stdout=subprocess.PIPE, stderr=stderr, text=True)  # fmt: skip
    return proc, time.perf_counter()


def finish_albert(started: tuple[subprocess.Popen, float], stderr_path: Path) -> tuple[dict[str, Any], float]:
    """(the --json summary, seconds from launch to exit) of a command `start_albert` started."""
    proc, launched = started
    stdout, _ = proc.communicate()
    seconds = time.perf_counter() - launched
    if proc.returncode != 0:
        raise RuntimeError(f"albert failed (exit {proc.returncode}):\n{stderr_path.read_text()[-3000:]}")
    return json.loads(stdout.strip().splitlines()[-1]), seconds


def pretrain(home: Path, shard_id: str, steps: int, workdir: Path) -> dict[str, Any]:
    args = ["train", "--shards", shard_id, "--preset", "tiny", "--max-steps", str(steps),
            "--eval-every", str(steps), "--checkpoint-every", str(steps), "--model-name", MODEL_NAME]  # fmt: skip
    stderr = workdir / "train.stderr"
    summary, seconds = finish_albert(start_albert(args, home, stderr), stderr)
    config = json.loads((home / "runs" / summary["run_name"] / "run.json").read_text())["config"]
    return {"command": ["albert", *args, "--json"], "summary": summary, "config": config, "seconds": seconds}


def both_inits(
    home: Path, seed: int, workdir: Path, args: Callable[[str], list[str]]
) -> dict[str, dict[str, Any]]:
    """`albert finetune ARGS(init)` for both inits at once, one torch thread each (2 cores): {init: its run}."""
    started = {
        init: start_albert(args(init), home, workdir / f"finetune-{init}-{seed}.stderr") for init in INITS
    }
    pair = {}
    for init in INITS:
        summary, seconds = finish_albert(started[init], workdir / f"finetune-{init}-{seed}.stderr")
        pair[init] = {"init": init, "seed": seed, "summary": summary, "command_seconds": seconds}
    return pair


def finetune_pair(
    home: Path, model_uri: str, seed: int, paths: tuple[Path, Path], workdir: Path
) -> dict[str, dict[str, Any]]:
    """Both inits fine-tuned on the book sentences, into their own registered names."""
    return both_inits(home, seed, workdir, lambda init: [
        "finetune", "--model", model_uri, "--train", str(paths[0]), "--eval", str(paths[1]), "--init", init,
        "--seed", str(seed), "--epochs", str(EPOCHS), "--lr", str(LR), "--batch-size", str(BATCH),
        "--max-seq-len", str(MAX_SEQ_LEN), "--threads", "1", "--model-name", f"{MODEL_NAME}-classifier-{init}",
    ])  # fmt: skip


def metric_by_epoch(tracking_uri: str, run_id: str, metric: str) -> list[float]:
    """A fine-tuning run's `metric` after each epoch, in order."""
    from mlflow.tracking import MlflowClient

    points = MlflowClient(tracking_uri).get_metric_history(run_id, metric)
    return [round(p.value, 4) for p in sorted(points, key=lambda p: p.step)]


def predictions(model_dir: str, texts: list[str]) -> list[str]:
    """Labels the saved classifier gives `texts`, the way `albert finetune` evaluates (dropout off)."""
    import torch

    from albert_core.checkpoint import load_classifier
    from albert_core.tokenizer import SentencePieceTokenizer
    from training.classifier_pyfunc import encode_texts, pad_batch

    model, head = load_classifier(model_dir)
    model.eval()
    tokenizer = SentencePieceTokenizer.load(Path(model_dir) / "tokenizer")
    rows = encode_texts(tokenizer, texts, head["max_seq_len"])
    labels = []
    with torch.inference_mode():
        for start in range(0, len(rows), 64):
            input_ids, attention_mask = pad_batch(rows[start : start + 64], tokenizer.pad_id)
            labels += [
                head["labels"][i] for i in model(input_ids, attention_mask=attention_mask).logits.argmax(-1)
            ]
    return labels


def cls_spread(model_dir: str, texts: list[str]) -> dict[str, float]:
    """How much the encoder's last [CLS] state varies over `texts` (its standard deviation over the texts, averaged
    over dimensions), for the pretrained encoder and for the same config freshly initialised (seed 0). Far below
    random's, the pretrained encoder maps every sentence to nearly the same state: it has collapsed (early in
    pretraining a `tiny` model predicts word frequencies whatever the input) and fine-tuning starts from nothing."""
    import torch

    from albert_core.checkpoint import load_model
    from albert_core.model import AlbertForPreTraining
    from albert_core.tokenizer import SentencePieceTokenizer
    from training.classifier_pyfunc import encode_texts, pad_batch

    pretrained = load_model(model_dir)
    torch.manual_seed(0)
    models = {"pretrained": pretrained, "random": AlbertForPreTraining(pretrained.config)}
    tokenizer = SentencePieceTokenizer.load(Path(model_dir) / "tokenizer")
    rows = encode_texts(tokenizer, texts, MAX_SEQ_LEN)
    spread = {}
    with torch.inference_mode():
        for init, model in models.items():
            model.eval()
            states = []
            for start in range(0, len(rows), 64):
                input_ids, attention_mask = pad_batch(rows[start : start + 64], tokenizer.pad_id)
                states.append(model.albert(input_ids, attention_mask=attention_mask).last_hidden_state[:, 0])
            spread[init] = torch.cat(states).std(0).mean().item()
    return spread


def compare(pair: dict[str, dict[str, Any]], eval_path: Path) -> dict[str, Any]:
    """One seed's figures: both accuracies, the difference and its standard errors."""
    rows = [json.loads(line) for line in eval_path.read_text(encoding="utf-8").splitlines()]
    truth = [row["label"] for row in rows]
    right = {}
    for init, run in pair.items():
        predicted = predictions(run["summary"]["model_dir"], [row["text"] for row in rows])
        right[init] = [p == t for p, t in zip(predicted, truth, strict=True)]
        recomputed = sum(right[init]) / len(truth)
        if abs(recomputed - run["summary"]["accuracy"]) > 1.5 / len(truth):  # the same encoding on both sides
            raise RuntimeError(
                f"{init}: accuracy {recomputed} from the folder, {run['summary']['accuracy']} logged"
            )
    n = len(truth)
    acc = {init: pair[init]["summary"]["accuracy"] for init in pair}
    b = sum(p and not r for p, r in zip(right["pretrained"], right["random"], strict=True))
    c = sum(r and not p for p, r in zip(right["pretrained"], right["random"], strict=True))
    se = standard_error((acc["pretrained"], acc["random"]), n)
    difference = acc["pretrained"] - acc["random"]
    return {
        "difference": difference, "standard_error": se, "z": difference / se, "margin": Z * se,
        "beats_by_margin": difference > Z * se, "paired_standard_error": paired_standard_error(b, c, n),
        "only_pretrained_right": b, "only_random_right": c, "eval_examples": n,
    }  # fmt: skip


def transfer_arguments(description: str, quick: str) -> argparse.Namespace:
    """The command line both transfer benchmarks take (`quick`: what --quick does, after the pretraining)."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--quick", action="store_true", help=f"{QUICK_STEPS} pretraining steps on WikiText-2 valid, "
                                                             f"{quick}")  # fmt: skip
    parser.add_argument("--steps", type=int, default=None, help=f"pretraining steps (default {STEPS})")
    parser.add_argument("--seq-len", type=int, default=128, help="pretraining sequence length")
    parser.add_argument("--seeds", type=int, nargs="+", default=None, help="fine-tuning seeds")
    parser.add_argument("--home", default=None, help="ALBERT_HOME to build in and reuse (default: temporary)")
    return parser.parse_args()


def main() -> None:
    args = transfer_arguments(__doc__.split("\n")[0], "one seed")
    steps = args.steps or (QUICK_STEPS if args.quick else STEPS)
    seeds = tuple(args.seeds or (QUICK_SEEDS if args.quick else SEEDS))
    for var in ("MLFLOW_TRACKING_URI", "MLFLOW_REGISTRY_URI"):  # the home's SQLite store
        os.environ.pop(var, None)
    env = environment()
    started = time.perf_counter()
    with bench_home(args.home) as home, tempfile.TemporaryDirectory(prefix="albert-transfer-") as tmp:
        workdir = Path(tmp)
        shard_id = build_bench_shards(home, args.seq_len, quick=args.quick)["static"]
        from data_jobs.shards import load_manifest

        manifest = load_manifest(home, shard_id)
        paths = write_book_splits(CORPORA, workdir / "books")
        phases = {"set-up": time.perf_counter() - started}
        pre = pretrain(home, shard_id, steps, workdir)
        phases["pretraining"] = pre["seconds"]
        model_uri = pre["summary"]["model_uri"]  # models:/NAME/V: pinned, both inits read the same version
        eval_texts = [json.loads(line)["text"] for line in paths[1].read_text(encoding="utf-8").splitlines()]
        spread = cls_spread(pre["summary"]["model_dir"], eval_texts)
        log(f"[CLS] spread over the held-out sentences: pretrained {spread['pretrained']:.2e}, random "
            f"{spread['random']:.2e}")  # fmt: skip
        mark = time.perf_counter()
        runs, per_seed = [], []
        for seed in seeds:
            pair = finetune_pair(home, model_uri, seed, paths, workdir)
            for run in pair.values():
                s = run["summary"]
                run["eval_accuracy_by_epoch"] = metric_by_epoch(s["tracking_uri"], s["run_id"], EVAL_ACCURACY)
            figures = compare(pair, paths[1])
            per_seed.append(
                {"seed": seed, **{init: pair[init]["summary"]["accuracy"] for init in pair}, **figures}
            )
            runs += pair.values()
            log(f"seed {seed}: pretrained {pair['pretrained']['summary']['accuracy']:.4f} vs random "
                f"{pair['random']['summary']['accuracy']:.4f}: {figures['difference']:+.4f} "
                f"(standard error {figures['standard_error']:.4f}, z {figures['z']:.2f})")  # fmt: skip
        phases["fine-tuning"] = time.perf_counter() - mark
        env["load_avg_after"] = os.getloadavg()
        env["threads"] = {"pretraining": f"{pre['config']['workers']} Ray Train workers x 1 torch thread",
                          "finetuning": "2 processes at once (the two inits) x 1 torch thread"}  # fmt: skip

    def mean(init: str, key: str) -> float:
        return statistics.fmean(r["summary"][key] for r in runs if r["init"] == init)

    n = per_seed[0]["eval_examples"]
    accuracy = {init: mean(init, "accuracy") for init in INITS}
    difference = accuracy["pretrained"] - accuracy["random"]
    se = standard_error((accuracy["pretrained"], accuracy["random"]), n)
    differences = [s["difference"] for s in per_seed]
    cfg, summary = pre["config"], pre["summary"]
    result = {
        "pretrained": {"accuracy": accuracy["pretrained"], "f1_macro": mean("pretrained", "f1_macro")},
        "random": {"accuracy": accuracy["random"], "f1_macro": mean("random", "f1_macro")},
        "majority_baseline": runs[0]["summary"]["majority_baseline"],
        "difference": difference, "standard_error": se, "z": difference / se, "margin": Z * se,
        "ratio": difference / (Z * se),  # >= 1: pretrained beats random by the margin
        "beats_by_margin": difference > Z * se, "seeds": list(seeds),
        "seed_difference_sd": statistics.stdev(differences) if len(differences) > 1 else None,
        "per_seed": per_seed,
    }  # fmt: skip
    stats = manifest["statistics"]
    data = {
        "quick": args.quick, "env": env, "goal": f"pretrained accuracy - random accuracy > {Z:g} standard errors",
        "setup": {
            "pretraining": {
                "command": pre["command"], "corpus": manifest["corpus"], "tokenizer": manifest["tokenizer"]["name"],
                "vocab_size": manifest["tokenizer"]["vocab_size"], "shards": shard_id,
                "seq_len": manifest["parameters"]["max_seq_len"], "preset": cfg["preset"], "steps": cfg["max_steps"],
                "batch": cfg["batch_size"], "workers": cfg["workers"], "optimizer": cfg["optimizer"], "lr": cfg["lr"],
                "train_sequences": stats["train"]["instances"],
                "epochs": round(cfg["max_steps"] * cfg["batch_size"] / stats["train"]["instances"], 2),
                "model_uri": summary["model_uri"],
                "final_metrics": {k: v for k, v in summary["metrics"].items() if k.startswith("eval_")},
                "cls_spread": spread, "collapsed": spread["pretrained"] < COLLAPSED * spread["random"],
                "seconds": round(pre["seconds"], 1),
            },
            "finetune": {
                "task": "which of 4 Gutenberg books a sentence comes from", "labels": runs[0]["summary"]["labels"],
                "train_examples": runs[0]["summary"]["train_examples"], "eval_examples": n, "epochs": EPOCHS,
                "batch_size": BATCH, "steps": EPOCHS * math.ceil(runs[0]["summary"]["train_examples"] / BATCH),
                "lr": LR, "max_seq_len": MAX_SEQ_LEN, "threads": 1, "sentence_chars": [MIN_CHARS, MAX_CHARS],
            },
        },
        "runs": [
            {"init": r["init"], "seed": r["seed"], "accuracy": r["summary"]["accuracy"],
             "f1_macro": r["summary"]["f1_macro"], "eval_accuracy_by_epoch": r["eval_accuracy_by_epoch"],
             "seconds": r["summary"]["seconds"], "command_seconds": round(r["command_seconds"], 1),
             "run_id": r["summary"]["run_id"], "model_uri": r["summary"]["model_uri"]}
            for r in runs
        ],
        "result": result,
        "seconds": {**{k: round(v, 1) for k, v in phases.items()}, "total": round(time.perf_counter() - started, 1)},
    }  # fmt: skip
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "transfer.json").write_text(json.dumps(data, indent=2))
    text = markdown(data)
    (RESULTS / "transfer.md").write_text(text)
    print(text)


def markdown(data: dict[str, Any]) -> str:
    r, pre, ft = data["result"], data["setup"]["pretraining"], data["setup"]["finetune"]
    env, seconds = data["env"], data["seconds"]
    verdict = "beats" if r["beats_by_margin"] else "does **not** beat"
    lines = [
        f"# Transfer: pretrained vs random init{' (quick)' if data['quick'] else ''}",
        "",
        f"Pretraining: `tiny`, {pre['steps']} steps x {pre['batch']} sequences of {pre['seq_len']} tokens "
        f"({pre['epochs']} epochs of {pre['train_sequences']}; corpus `{pre['corpus']}`, {pre['optimizer']} lr "
        f"{pre['lr']:g}, {pre['workers']} workers; {pre['seconds']:.0f} s), held-out MLM acc "
        f"{pre['final_metrics'].get('eval_mlm_acc', float('nan')):.3f}, SOP acc "
        f"{pre['final_metrics'].get('eval_sop_acc', float('nan')):.3f}. Its last [CLS] state varies by "
        f"{pre['cls_spread']['pretrained']:.2e} over the held-out sentences (a random encoder's: "
        f"{pre['cls_spread']['random']:.2e})"
        + (
            ": **collapsed**, it gives every sentence nearly the same state (too little pretraining; fine-tuning "
            "starts from nothing)."
            if pre["collapsed"]
            else "."
        ),
        f"Fine-tuning: {ft['task']}; {ft['train_examples']} training / {ft['eval_examples']} held-out sentences, "
        f"{ft['steps']} steps ({ft['epochs']} epochs of batch {ft['batch_size']}), AdamW lr {ft['lr']:g}, "
        f"{ft['max_seq_len']} tokens, 1 thread; the same for both inits. Majority class {r['majority_baseline']:.3f}.",
        "",
        "| seed | pretrained acc | random acc | difference | standard error (pooled / paired) | z |",
        "|---|---|---|---|---|---|",
    ]
    lines += [
        f"| {s['seed']} | {s['pretrained']:.4f} | {s['random']:.4f} | {s['difference']:+.4f} | "
        f"{s['standard_error']:.4f} / {s['paired_standard_error']:.4f} | {s['z']:.2f} |"
        for s in r["per_seed"]
    ]
    spread = (
        f" The difference varies by {r['seed_difference_sd']:.4f} (standard deviation) from one fine-tuning seed "
        f"to the next: the standard errors above cover only the choice of held-out sentences."
        if r["seed_difference_sd"] is not None
        else ""
    )
    lines += [
        "",
        f"Mean over seeds: pretrained accuracy **{r['pretrained']['accuracy']:.4f}** (macro-F1 "
        f"{r['pretrained']['f1_macro']:.4f}) vs random **{r['random']['accuracy']:.4f}** (macro-F1 "
        f"{r['random']['f1_macro']:.4f}): difference **{r['difference']:+.4f}**, standard error {r['standard_error']:.4f} "
        f"(z = {r['z']:.2f}); pretraining {verdict} random init by {Z:g} standard errors ({r['margin']:.4f}).{spread}",
        "",
        f"{seconds['total']:.0f} s in all (set-up {seconds['set-up']:.0f}, pretraining {seconds['pretraining']:.0f}, "
        f"fine-tuning {seconds['fine-tuning']:.0f}) on {env['cpus']} cores; load {env['load_avg_before']} before, "
        f"{env['load_avg_after']} after.",
    ]  # fmt: skip
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
