"""A fine-tuned classifier's serving face: an MLflow `pyfunc` that labels raw text.

It wraps a folder written by `albert_core.checkpoint.save_classifier` (safetensors weights checked against their
sha256, `config.json` with the label names and the training sequence length, `tokenizer/`). Input is a
DataFrame with a `text` column; output has `label` (the predicted label's name, a string) and `probability`
(its softmax probability).

Training (`training.finetune`) encodes and pads with `encode_texts` and `pad_batch` from this file, so what is
served is tokenised exactly as what was trained: `[CLS] text [SEP]`, truncated to `max_seq_len`, one segment.

Loading needs only `albert_core` (shipped with the model as code) and its dependencies, not this project. The
file is logged as the model's code ("models from code"): `set_model` at the bottom names the object MLflow serves.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import mlflow
import pandas as pd
import torch
from mlflow.models import ModelSignature
from mlflow.types import ColSpec, Schema

from albert_core.checkpoint import load_classifier
from albert_core.errors import UserError
from albert_core.tokenizer import SentencePieceTokenizer

BATCH_ROWS = 64  # rows per forward pass: bounds padding waste and memory for large requests

SIGNATURE = ModelSignature(
    inputs=Schema([ColSpec("string", "text")]),
    outputs=Schema([ColSpec("string", "label"), ColSpec("double", "probability")]),
)


def input_example() -> pd.DataFrame:
    return pd.DataFrame({"text": ["It was the best of times, it was the worst of times."]})


def encode_texts(
    tokenizer: SentencePieceTokenizer, texts: Sequence[str], max_seq_len: int, num_threads: int = -1
) -> list[list[int]]:
    """`[CLS] ids [SEP]` for each text, its pieces cut to `max_seq_len - 2` (the tail is dropped, as
    `transformers` truncates a single sequence by default)."""
    cls_id, sep_id = tokenizer.cls_id, tokenizer.sep_id
    return [[cls_id, *ids[: max_seq_len - 2], sep_id] for ids in tokenizer.encode(texts, num_threads)]


def pad_batch(rows: Sequence[list[int]], pad_id: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """(input_ids, attention_mask), both (B, T) with T the longest row: padding only to the batch, not to
    `max_seq_len`, so short texts cost little."""
    input_ids = torch.full((len(rows), max(map(len, rows))), pad_id, dtype=torch.long)
    attention_mask = torch.zeros_like(input_ids)
    for i, ids in enumerate(rows):
        input_ids[i, : len(ids)] = torch.tensor(ids, dtype=torch.long)
        attention_mask[i, : len(ids)] = 1
    return input_ids, attention_mask


class AlbertClassifierPyfunc(mlflow.pyfunc.PythonModel):
    """Text classification with a fine-tuned ALBERT classifier folder (artifact `model`)."""

    def load_context(self, context: mlflow.pyfunc.PythonModelContext) -> None:
        folder = Path(context.artifacts["model"])
        self.device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
        model, head = load_classifier(folder, device=self.device)
        self.model = model.eval()
        self.labels: list[str] = head["labels"]
        self.max_seq_len: int = head["max_seq_len"]
        self.tokenizer = SentencePieceTokenizer.load(folder / "tokenizer")

    def predict(
        self,
        context: mlflow.pyfunc.PythonModelContext,
        model_input: pd.DataFrame,
        params: dict[str, Any] | None = None,
    ) -> pd.DataFrame:
        texts = model_input["text"].tolist()
        for i, text in enumerate(texts):
            if not isinstance(text, str):
                raise UserError(f"row {i}: text must be a string, got {text!r}")
        labels: list[str] = []
        probabilities: list[float] = []
        for start in range(0, len(texts), BATCH_ROWS):
            rows = encode_texts(self.tokenizer, texts[start : start + BATCH_ROWS], self.max_seq_len)
            probs, ids = self._probabilities(rows).max(-1)  # (B,), (B,)
            labels += [self.labels[i] for i in ids.tolist()]
            probabilities += probs.tolist()
        return pd.DataFrame({"label": labels, "probability": probabilities}, index=model_input.index)

    @torch.inference_mode()
    def _probabilities(self, rows: list[list[int]]) -> torch.Tensor:
        """Softmax over the labels for a batch of encoded rows, in one padded forward pass: (B, num_labels)."""
        input_ids, attention_mask = pad_batch(rows, self.tokenizer.pad_id)
        logits = self.model(input_ids.to(self.device), attention_mask=attention_mask.to(self.device)).logits
        return logits.float().softmax(-1).cpu()


mlflow.models.set_model(AlbertClassifierPyfunc())
