"""A model folder: `config.json` + `model.safetensors` (+ `tokenizer/`), sealed by a manifest of sha256 hashes.

Weights go through safetensors, never pickle, so loading a folder someone sent you cannot run code; the hashes
catch truncated or edited files before the weights reach a model. A fine-tuned classifier folder
(`save_classifier`) has the same layout under its own format name, with its label names in `config.json`.
"""

from __future__ import annotations

import shutil
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import safetensors.torch
import torch

from albert_core.config import AlbertConfig
from albert_core.errors import UserError
from albert_core.model import (
    AlbertForPreTraining,
    AlbertForQuestionAnswering,
    AlbertForSequenceClassification,
    AlbertForTokenClassification,
)
from albert_core.storage import atomic_directory, file_hashes, read_json, verify_hashes, write_json

FORMAT = "albert-model/1"


def save_model(
    model: AlbertForPreTraining,
    folder: str | Path,
    tokenizer_dir: str | Path | None = None,
    metadata: dict[str, Any] | None = None,
    inference: dict[str, Any] | None = None,
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
    return _verify_folder(Path(folder), FORMAT, "model")


def _verify_folder(folder: Path, expected: str, kind: str) -> dict[str, Any]:
    if not (folder / "manifest.json").is_file():
        raise UserError(f"{folder} is not a {kind} folder (no manifest.json)")
    manifest = read_json(folder / "manifest.json")
    if manifest.get("format") != expected:
        raise UserError(
            f"{folder}: unsupported {kind} format {manifest.get('format')!r}, expected {expected}"
        )
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


# --- classifier folders ----------------------------------------------------------------------------------------

CLASSIFIER_FORMAT = "albert-classifier/1"
# Keys config.json holds beside the AlbertConfig fields: label names in id order (as Hugging Face's `id2label`),
# and the sequence length the classifier was trained with, so serving truncates as training did.
CLASSIFIER_KEYS = ("labels", "max_seq_len")
# What a classifier labels: a text (its pooled [CLS]) or each word (named entities). Folders without the key are
# text classifiers (written before token classification existed).
HEADS = {
    "classify": AlbertForSequenceClassification,
    "ner": AlbertForTokenClassification,
    "qa": AlbertForQuestionAnswering,
}
FineTuned = AlbertForSequenceClassification | AlbertForTokenClassification | AlbertForQuestionAnswering


def save_classifier(
    model: FineTuned,
    folder: str | Path,
    *,
    labels: Sequence[str],
    max_seq_len: int,
    tokenizer_dir: str | Path,
    metadata: dict[str, Any] | None = None,
    inference: dict[str, Any] | None = None,
    replace: bool = False,
) -> Path:
    """Write a fine-tuned classifier atomically: `config.json` (the AlbertConfig plus `labels` and
    `max_seq_len`), `model.safetensors`, a copy of the tokenizer folder and a sha256 manifest. Its own format
    name keeps `load_model` from mistaking it for a pretraining model folder, and the other way round."""
    labels = list(labels)
    if len(labels) != model.config.num_labels:
        raise UserError(f"{len(labels)} label names for a model with num_labels={model.config.num_labels}")
    if len(set(labels)) != len(labels) or not all(isinstance(label, str) for label in labels):
        raise UserError(f"label names must be distinct strings, got {labels!r}")
    folder = Path(folder)
    with atomic_directory(folder, replace=replace) as tmp:
        task = next(name for name, cls in HEADS.items() if isinstance(model, cls))
        write_json(
            tmp / "config.json",
            {
                **model.config.to_dict(),
                "labels": labels,
                "max_seq_len": max_seq_len,
                "task": task,
                "inference": inference or {},
            },  # fmt: skip
        )
        safetensors.torch.save_model(model, str(tmp / "model.safetensors"))
        shutil.copytree(tokenizer_dir, tmp / "tokenizer")
        manifest = {"format": CLASSIFIER_FORMAT, "files": file_hashes(tmp), **(metadata or {})}
        write_json(tmp / "manifest.json", manifest)
    return folder


def verify_classifier_folder(folder: str | Path) -> dict[str, Any]:
    """Check a folder written by `save_classifier` against its manifest; return the manifest."""
    return _verify_folder(Path(folder), CLASSIFIER_FORMAT, "classifier")


def verify_any_folder(folder: str | Path) -> dict[str, Any]:
    """Check a pretraining model folder or a fine-tuned classifier folder (by its manifest's format)."""
    folder = Path(folder)
    fine_tuned = (folder / "manifest.json").is_file() and read_json(folder / "manifest.json").get(
        "format"
    ) == (CLASSIFIER_FORMAT)
    return verify_classifier_folder(folder) if fine_tuned else verify_model_folder(folder)


def load_classifier(
    folder: str | Path, device: str | torch.device = "cpu"
) -> tuple[FineTuned, dict[str, Any]]:
    """Load a folder written by `save_classifier`, after checking every file against the manifest.

    Returns the model (its class says the task) and `{"labels": [name of id 0, ...], "max_seq_len": L,
    "inference": {setting: value}}` (what serving must do as training did, e.g. question answering's stride)."""
    folder = Path(folder)
    verify_classifier_folder(folder)
    config = read_json(folder / "config.json")
    head = {key: config.pop(key) for key in CLASSIFIER_KEYS}
    head["inference"] = config.pop("inference", {})
    model = HEADS[config.pop("task", "classify")](AlbertConfig.from_dict(config))
    safetensors.torch.load_model(model, str(folder / "model.safetensors"), device=str(device))
    return model.to(device), head
