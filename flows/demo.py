"""`albert demo`: the chain on the builtin corpus with embedded defaults, in one process.

builtin corpus -> SentencePiece vocabulary -> SOP instances with static n-gram masking -> `tiny` pretraining with
LAMB -> held-out MLM / SOP accuracy -> a model folder under ALBERT_HOME/runs/. The orchestrated version (Ray Data
shards, Ray Train DDP, MLflow, Prefect) replaces the middle steps as those layers land.
"""

from __future__ import annotations

import dataclasses
import hashlib
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import torch

from albert_core import AlbertConfig, AlbertForPreTraining
from albert_core.checkpoint import save_model
from albert_core.optim import build_optimizer, lr_scheduler
from albert_core.pretraining_data import Instance, SopConfig, SpecialIds, build_instances
from albert_core.tokenizer import SentencePieceTokenizer
from data_jobs.builtin_corpus import builtin_documents


@dataclass(frozen=True)
class DemoConfig:
    corpus_bytes: int = 4_000_000  # the whole builtin corpus (about 1.6 MB of stdlib docstrings)
    vocab_size: int = 8000  # the corpus is too small for ALBERT's 30000 pieces
    max_seq_len: int = 64
    max_predictions: int = 10
    dupe_factor: int = 2
    batch_size: int = 32
    steps: int = 300
    lr: float = 5e-3
    warmup_steps: int = 30
    eval_share: float = 0.05  # documents held out for evaluation, chosen by a hash of their id
    log_every: int = 25
    seed: int = 0


QUICK = DemoConfig(
    corpus_bytes=600_000, vocab_size=4000, dupe_factor=1, steps=80, warmup_steps=8, log_every=10
)


def progress(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def held_out(doc_id: str, share: float) -> bool:
    """Stable train/eval split: the same document lands on the same side on every run and machine."""
    return int.from_bytes(hashlib.blake2b(doc_id.encode(), digest_size=8).digest(), "big") / 2**64 < share


def to_tensors(instances: list[Instance]) -> dict[str, torch.Tensor]:
    def stack(name: str) -> torch.Tensor:
        return torch.from_numpy(np.stack([getattr(i, name) for i in instances]))

    weights = stack("masked_lm_weights")
    return {
        "input_ids": stack("input_ids").long(),
        "token_type_ids": stack("token_type_ids").long(),
        "attention_mask": stack("attention_mask").long(),
        "masked_lm_positions": stack("masked_lm_positions").long(),
        "labels": stack("masked_lm_ids").long().masked_fill(weights == 0, -100),
        "sentence_order_label": torch.tensor([i.sop_label for i in instances]),
    }


def batch_indices(n: int, batch_size: int, generator: torch.Generator) -> Iterator[torch.Tensor]:
    """Endless shuffled batches of row indices, a fresh permutation each epoch (last partial batch dropped)."""
    while True:
        order = torch.randperm(n, generator=generator)
        for start in range(0, max(n - batch_size, 0) + 1, batch_size):
            yield order[start : start + batch_size]


@torch.no_grad()
def evaluate(
    model: AlbertForPreTraining, data: dict[str, torch.Tensor], batch_size: int = 256
) -> dict[str, float]:
    model.eval()
    mlm_hits = mlm_total = sop_hits = 0
    loss_sum = 0.0
    n = len(data["input_ids"])
    for start in range(0, n, batch_size):
        batch = {k: v[start : start + batch_size] for k, v in data.items()}
        out = model(**batch)
        valid = batch["labels"] != -100
        mlm_hits += (out.prediction_logits.argmax(-1) == batch["labels"])[valid].sum().item()
        mlm_total += valid.sum().item()
        sop_hits += (out.sop_logits.argmax(-1) == batch["sentence_order_label"]).sum().item()
        loss_sum += out.loss.item() * len(batch["input_ids"])
    model.train()
    return {
        "eval_loss": loss_sum / n,
        "mlm_accuracy": mlm_hits / max(mlm_total, 1),
        "sop_accuracy": sop_hits / n,
    }


def run_demo(home: Path, quick: bool = False, cfg: DemoConfig | None = None) -> dict[str, Any]:
    cfg = cfg or (QUICK if quick else DemoConfig())
    started = time.perf_counter()
    torch.manual_seed(cfg.seed)

    progress(f"[1/4] building the builtin corpus (stdlib docstrings, up to {cfg.corpus_bytes:,} bytes)")
    documents = list(builtin_documents(max_bytes=cfg.corpus_bytes))
    sentences = [s for d in documents for s in d.sentences]

    progress(
        f"[2/4] training a {cfg.vocab_size}-piece SentencePiece vocabulary on {len(sentences):,} sentences"
    )
    tokenizer = SentencePieceTokenizer.train(sentences, vocab_size=cfg.vocab_size, seed=cfg.seed)
    tokenizer_dir = tokenizer.save(home / "tokenizers" / "builtin")

    progress("[3/4] building SOP instances with n-gram masking")
    encoded = {d.id: tokenizer.encode(list(d.sentences)) for d in documents}
    sop = SopConfig(max_seq_len=cfg.max_seq_len, max_predictions=cfg.max_predictions, dupe_factor=cfg.dupe_factor,
                    seed=cfg.seed)  # fmt: skip
    special = SpecialIds(tokenizer.cls_id, tokenizer.sep_id, tokenizer.mask_id, tokenizer.vocab_size)
    train_docs = {k: v for k, v in encoded.items() if not held_out(k, cfg.eval_share)}
    eval_docs = {k: v for k, v in encoded.items() if held_out(k, cfg.eval_share)}
    word_start = tokenizer.word_start_mask()
    train = to_tensors(list(build_instances(train_docs, sop, special, word_start)))
    evals = to_tensors(
        list(build_instances(eval_docs, dataclasses.replace(sop, dupe_factor=1), special, word_start))
    )
    progress(f"      {len(train['input_ids']):,} training and {len(evals['input_ids']):,} held-out instances")

    model_cfg = AlbertConfig.from_preset("tiny", vocab_size=tokenizer.vocab_size, max_position_embeddings=512)
    model = AlbertForPreTraining(model_cfg)
    optimizer = build_optimizer(model, "lamb", lr=cfg.lr)
    scheduler = lr_scheduler(optimizer, cfg.warmup_steps, cfg.steps)
    progress(f"[4/4] pretraining tiny ({model.num_parameters():,} parameters), {cfg.steps} LAMB steps of "
             f"{cfg.batch_size} x {cfg.max_seq_len} tokens")  # fmt: skip
    batches = batch_indices(len(train["input_ids"]), cfg.batch_size, torch.Generator().manual_seed(cfg.seed))
    losses: list[float] = []
    for step, idx in zip(range(cfg.steps), batches, strict=False):
        out = model(**{k: v[idx] for k, v in train.items()})
        optimizer.zero_grad(set_to_none=True)
        out.loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        scheduler.step()
        losses.append(out.loss.item())
        if (step + 1) % cfg.log_every == 0 or step == 0:
            window = losses[-cfg.log_every :]
            progress(f"      step {step + 1:4d}  loss {sum(window) / len(window):.3f}  "
                     f"(mlm {out.mlm_loss.item():.3f}, sop {out.sop_loss.item():.3f})")  # fmt: skip
    metrics = evaluate(model, evals)

    run_name = f"demo-{datetime.now(UTC):%Y%m%d-%H%M%S-%f}"
    model_dir = save_model(model, home / "runs" / run_name / "model", tokenizer_dir=tokenizer_dir)
    head = min(cfg.log_every, len(losses))
    result = {
        "run_name": run_name,
        "model_dir": str(model_dir),
        "tokenizer_dir": str(tokenizer_dir),
        "documents": len(documents),
        "train_instances": len(train["input_ids"]),
        "eval_instances": len(evals["input_ids"]),
        "steps": cfg.steps,
        "loss_first": sum(losses[:head]) / head,
        "loss_last": sum(losses[-head:]) / head,
        **metrics,
        "seconds": round(time.perf_counter() - started, 1),
    }
    progress(f"loss {result['loss_first']:.3f} -> {result['loss_last']:.3f}; held-out MLM accuracy "
             f"{metrics['mlm_accuracy']:.3f}, SOP accuracy {metrics['sop_accuracy']:.3f}; model in {model_dir}")  # fmt: skip
    return result
