"""`albert demo`: the whole pipeline on embedded defaults, then a look at what it made.

builtin corpus -> ingestion (Ray Data) -> SentencePiece -> SOP shards (Ray Data) -> 2-worker DDP pretraining
(Ray Train) tracked in MLflow -> registered version (`candidate`) -> gated promotion (`champion`), all as one
Prefect flow run; then a fill-mask and a sentence-order prediction from `models:/albert-demo@champion`.
Run it again on the same home: ingestion finds nothing new, the shards come from cache, training makes a new
candidate and the gate decides.
"""

from __future__ import annotations

import math
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from albert_core.config_base import Config, setting
from data_jobs.config import ShardsConfig, TokenizerJobConfig
from training import tracking as m
from training.config import TrainConfig

MODEL_NAME = "albert-demo"
MASKED = "Return a new [MASK] containing all items from the iterable."
PAIR = ("Open the file and return a stream.", "Raise OSError upon failure.")


@dataclass(frozen=True)
class DemoConfig(Config):
    """The jobs' own configs, with the demo's sizes."""

    # the builtin corpus (1.6 MB of stdlib docstrings) is too small for 30000 pieces
    tokenizer: TokenizerJobConfig = setting(default_factory=lambda: TokenizerJobConfig(vocab_size=8000))
    shards: ShardsConfig = setting(
        default_factory=lambda: ShardsConfig(max_seq_len=64, dupe_factor=2, eval_share=0.05)
    )
    train: TrainConfig = setting(
        default_factory=lambda: TrainConfig(
            model_name=MODEL_NAME, max_steps=300, eval_every=100, checkpoint_every=300
        )
    )


QUICK = DemoConfig(
    tokenizer=TokenizerJobConfig(vocab_size=4000),
    shards=ShardsConfig(max_seq_len=64, dupe_factor=1, eval_share=0.05),
    train=TrainConfig(model_name=MODEL_NAME, max_steps=60, eval_every=60, checkpoint_every=60),
)


def progress(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def run_demo(home: Path, quick: bool = False, cfg: DemoConfig | None = None) -> dict[str, Any]:
    from flows.pipeline import pipeline_flow
    from training.registry import configure_mlflow, predict, tracking_uri

    cfg = cfg or (QUICK if quick else DemoConfig())
    started = time.perf_counter()
    progress(f"albert demo ({'quick' if quick else 'full'}): {cfg.to_json()}; home {home}")
    result = pipeline_flow(["builtin"], "builtin", home=str(home), tokenizer_config=cfg.tokenizer,
                           shards_config=cfg.shards, train_config=cfg.train)  # fmt: skip
    configure_mlflow(home)
    champion = f"models:/{MODEL_NAME}@champion"
    predictions = predict(champion, [MASKED, PAIR[0]], [None, PAIR[1]])
    trained, decision = result["train"], result["promote"]
    summary = {
        "corpus_version": result["ingest"]["ingest"]["version"],
        "ingest_message": result["ingest"]["ingest"]["message"],
        "shards": result["ingest"]["shards"]["id"],
        "shards_reused": result["ingest"]["shards"]["reused"],
        "run_name": trained["run_name"],
        "run_id": trained["run_id"],
        "model_uri": trained["model_uri"],
        "final_step": trained["final_step"],
        "metrics": trained["metrics"],
        "learned": learned(trained["metrics"]),
        "promotion": decision["decision"],
        "promotion_reason": decision["reason"],
        "champion_uri": champion,
        "champion_version": decision["champion_version"],
        "fill_mask": {"text": MASKED, "top": predictions[0]["fill_mask"][0]},
        "sop": {"pair": PAIR, "swapped_probability": predictions[1]["sop_swapped_probability"]},
        "tracking_uri": tracking_uri(home),
        "mlflow_ui": f"mlflow ui --backend-store-uri {tracking_uri(home)}",
        "home": str(home),
        "seconds": round(time.perf_counter() - started, 1),
    }
    summary["phases"] = _phases(result, summary["seconds"])
    top = ", ".join(f"{c['token']} ({c['score']:.2f})" for c in summary["fill_mask"]["top"])
    progress(
        f"\ncorpus {result['ingest']['corpus']}: {summary['ingest_message']}; shards {summary['shards']}\n"
        f"trained {summary['run_name']} to step {summary['final_step']}: "
        + ", ".join(f"{k} {v:.3f}" for k, v in sorted(summary["metrics"].items()) if k.startswith("eval_"))
        + f"\n{summary['learned']}"
        + f"\nregistered {summary['model_uri']}; promotion: {summary['promotion']} ({summary['promotion_reason']})"
        f"\nchampion: {champion} (version {summary['champion_version']})"
        f"\nfill-mask  {MASKED!r}: {top}"
        f"\nsentence order  {PAIR}: swapped with probability {summary['sop']['swapped_probability']:.2f}"
        f"\nMLflow UI: {summary['mlflow_ui']}\ndone in {summary['seconds']} s ("
        + ", ".join(f"{k} {v} s" for k, v in summary["phases"].items())
        + ")"
    )
    return summary


def learned(metrics: dict[str, float]) -> str:
    """What the held-out figures say, in words: sentence order against the length rule, and words."""
    sop, rule = metrics.get(m.EVAL_SOP_ACC, math.nan), metrics.get(m.EVAL_SOP_LENGTH_BASELINE, math.nan)
    balanced = metrics.get(m.EVAL_SOP_BALANCED_ACC, math.nan)
    verdict = "above" if sop > rule else "NOT above"
    return (
        f"held out: sentence order {sop:.3f}, {verdict} the length rule's {rule:.3f} (pairs of equal length: "
        f"{balanced:.3f}); masked words {metrics.get(m.EVAL_MLM_ACC, math.nan):.3f} right"
    )


def _phases(result: dict[str, Any], total: float) -> dict[str, float]:
    """Seconds per step of the chain, from each job's own summary (0 for a step served from cache); the rest is
    start-up (Ray, Prefect), promotion and the predictions."""
    data = result["ingest"]
    phases = {
        "ingest": data["ingest"]["seconds"],
        "tokenizer": 0.0 if data["tokenizer"].get("reused", True) else data["tokenizer"]["seconds"],
        "shards": 0.0 if data["shards"]["reused"] else data["shards"]["seconds"],
        "train": result["train"]["seconds"],
    }
    phases["other"] = round(max(total - sum(phases.values()), 0.0), 1)
    return phases
