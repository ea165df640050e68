"""A model folder: `config.json` + `model.safetensors` (+ `tokenizer/`), sealed by a manifest of sha256 hashes.

Weights go through safetensors, never pickle, so loading a folder someone sent you cannot run code; the hashes
catch truncated or edited files before the weights reach a model.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import safetensors.torch
import torch

from albert_core.config import AlbertConfig
from albert_core.errors import UserError
from albert_core.model import AlbertForPreTraining
from albert_core.storage import atomic_directory, file_hashes, read_json, verify_hashes, write_json

FORMAT = "albert-model/1"


def save_model(
    model: AlbertForPreTraining,
    folder: str | Path,
    tokenizer_dir: str | Path | None = None,
    metadata: dict[str, Any] | None = None,
    replace: bool = False,
) -> Path:
    """Write `model` (and a copy of a tokenizer folder) atomically to `folder`."""
    folder = Path(folder)
    with atomic_directory(folder, replace=replace) as tmp:
        write_json(tmp / "config.json", model.config.to_dict())
        # save_model drops the tied duplicates (decoder = word embeddings) that save_file would reject.
        safetensors.torch.save_model(model, str(tmp / "model.safetensors"))
        if tokenizer_dir is not None:
            shutil.copytree(tokenizer_dir, tmp / "tokenizer")
        write_json(tmp / "manifest.json", {"format": FORMAT, "files": file_hashes(tmp), **(metadata or {})})
    return folder


def verify_model_folder(folder: str | Path) -> dict[str, Any]:
    """Check a folder written by `save_model` against its manifest; return the manifest."""
    folder = Path(folder)
    if not (folder / "manifest.json").is_file():
        raise UserError(f"{folder} is not a model folder (no manifest.json)")
    manifest = read_json(folder / "manifest.json")
    if manifest.get("format") != FORMAT:
        raise UserError(f"{folder}: unsupported model format {manifest.get('format')!r}, expected {FORMAT}")
    verify_hashes(folder, manifest["files"])
    return manifest


def load_weights(model: torch.nn.Module, folder: str | Path) -> None:
    """Load verified weights from a model folder into an existing model of the same config."""
    verify_model_folder(folder)
    safetensors.torch.load_model(model, str(Path(folder) / "model.safetensors"))


def load_model(folder: str | Path, device: str | torch.device = "cpu") -> AlbertForPreTraining:
    """Load a folder written by `save_model`, after checking every file against the manifest."""
    folder = Path(folder)
    verify_model_folder(folder)
    model = AlbertForPreTraining(AlbertConfig.from_dict(read_json(folder / "config.json")))
    safetensors.torch.load_model(model, str(folder / "model.safetensors"), device=str(device))
    return model.to(device)
