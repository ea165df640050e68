"""Training checkpoints: the model folder (safetensors, hashed) plus everything needed to resume exactly.

`training_state.pt` holds the optimizer and scheduler state, the step, the data position and the RNG states;
it is loaded with `torch.load(weights_only=True)`, so a checkpoint cannot run code, and its sha256 is recorded
beside it and checked before loading.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch

from albert_core.checkpoint import load_weights, save_model
from albert_core.errors import UserError
from albert_core.model import AlbertForPreTraining
from albert_core.storage import read_json, sha256_file, write_json

STATE_FILE = "training_state.pt"
MODEL_DIR = "model"


@dataclass
class TrainState:
    """The trainer's own counters, saved with every checkpoint so a resume restores them."""

    step: int = 0  # optimizer steps done
    epoch: int = 0  # passes over the training shards started
    batches_in_epoch: int = 0  # micro-batches consumed in the current epoch (the data position)
    tokens_seen: int = 0
    train_seconds: float = 0.0  # time in training steps (not evaluation or checkpoints), over all attempts
    restarts: int = 0  # times Ray Train restarted the workers from a checkpoint after a failure


def save_checkpoint(
    folder: Path,
    model: AlbertForPreTraining,
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler,
    state: TrainState,
) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    save_model(model, folder / MODEL_DIR, metadata={"step": state.step})
    torch.save(
        {
            "optimizer": optimizer.state_dict(),
            "scheduler": scheduler.state_dict(),
            "state": asdict(state),
            "torch_rng": torch.get_rng_state(),
        },
        folder / STATE_FILE,
    )
    write_json(
        folder / "checkpoint.json", {"step": state.step, "state_sha256": sha256_file(folder / STATE_FILE)}
    )
    return folder


def load_checkpoint(
    folder: Path,
    model: AlbertForPreTraining,
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler,
) -> TrainState:
    """Restore model, optimizer, scheduler and RNG in place; return the counters."""
    meta = read_json(folder / "checkpoint.json")
    if sha256_file(folder / STATE_FILE) != meta["state_sha256"]:
        raise UserError(f"{folder / STATE_FILE} does not match its recorded sha256")
    load_weights(model, folder / MODEL_DIR)
    blob: dict[str, Any] = torch.load(folder / STATE_FILE, weights_only=True)
    optimizer.load_state_dict(blob["optimizer"])
    scheduler.load_state_dict(blob["scheduler"])
    torch.set_rng_state(blob["torch_rng"])
    return TrainState(**blob["state"])
