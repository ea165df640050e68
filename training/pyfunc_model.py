"""The registered model's serving face: an MLflow `pyfunc` that fills masks and scores sentence order on raw text.

It wraps a model folder written by `albert_core.checkpoint.save_model` (safetensors weights checked against their
sha256, `config.json`, `tokenizer/`), so nothing the registry hands out is a pickle of weights. Input is a
DataFrame with `text` and optional `text_b`:

- every literal `[MASK]` becomes the mask id and gets its top-k candidates (MLM head, softmax over V), returned
  as the JSON string `fill_mask`: one list per mask, in order, of {"token": piece, "score": p};
- with `text_b`, the pair `[CLS] A [SEP] B [SEP]` (token types 0 then 1) gets `sop_swapped_probability` from the
  SOP head (label 1 = swapped, as in the ALBERT reference); NaN without `text_b`.

Loading needs only `albert_core` (shipped with the model as code) and its dependencies, not this project; MLflow
stays out of albert_core, so this module lives in `training`. The file is logged as the model's code
("models from code"): `set_model` at the bottom names the object MLflow serves.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import mlflow
import pandas as pd
import torch
from mlflow.models import ModelSignature
from mlflow.types import ColSpec, ParamSchema, ParamSpec, Schema

from albert_core.checkpoint import load_model
from albert_core.errors import UserError
from albert_core.tokenizer import MASK, SentencePieceTokenizer

DEFAULT_TOP_K = 5
BATCH_ROWS = 32  # rows per forward pass: bounds padding waste and memory for large requests

SIGNATURE = ModelSignature(
    inputs=Schema([ColSpec("string", "text"), ColSpec("string", "text_b", required=False)]),
    outputs=Schema([ColSpec("string", "fill_mask"), ColSpec("double", "sop_swapped_probability")]),
    params=ParamSchema([ParamSpec("top_k", "long", DEFAULT_TOP_K)]),
)


def input_example() -> pd.DataFrame:
    """A masked sentence with a second one: both outputs in one row. (A missing `text_b` would be written to
    `serving_input_example.json` as NaN, which is not JSON.)"""
    return pd.DataFrame({"text": ["The cat sat on the [MASK]."], "text_b": ["It was fast asleep."]})


class AlbertPyfunc(mlflow.pyfunc.PythonModel):
    """Fill-mask top-k and SOP scoring with an ALBERT model folder (artifact `model`)."""

    def load_context(self, context: mlflow.pyfunc.PythonModelContext) -> None:
        folder = Path(context.artifacts["model"])
        self.device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
        self.model = load_model(folder, device=self.device).eval()
        self.tokenizer = SentencePieceTokenizer.load(folder / "tokenizer")

    def predict(
        self,
        context: mlflow.pyfunc.PythonModelContext,
        model_input: pd.DataFrame,
        params: dict[str, Any] | None = None,
    ) -> pd.DataFrame:
        top_k = int((params or {}).get("top_k", DEFAULT_TOP_K))
        if top_k < 1:
            raise UserError(f"top_k must be >= 1, got {top_k}")
        texts = model_input["text"].tolist()
        pairs = model_input["text_b"].tolist() if "text_b" in model_input else [None] * len(texts)
        rows = [self._encode(a, b if isinstance(b, str) else None) for a, b in zip(texts, pairs, strict=True)]
        fill_mask: list[str] = []
        sop: list[float] = []
        for start in range(0, len(rows), BATCH_ROWS):
            chunk = rows[start : start + BATCH_ROWS]
            filled, swapped = self._score(chunk, min(top_k, self.tokenizer.vocab_size))
            fill_mask += filled
            sop += swapped
        return pd.DataFrame({"fill_mask": fill_mask, "sop_swapped_probability": sop}, index=model_input.index)

    def _segment(self, text: str) -> list[int]:
        """Ids of one segment; the literal `[MASK]` becomes the mask id. The pieces around it are encoded
        separately, so each starts a word, as transformers' tokenizer treats an added special token."""
        ids: list[int] = []
        for i, piece in enumerate(text.split(MASK)):
            if i:
                ids.append(self.tokenizer.mask_id)
            ids += self.tokenizer.encode_one(piece)
        return ids

    def _encode(self, text: str, text_b: str | None) -> tuple[list[int], list[int], bool]:
        """(input_ids, token_type_ids, is_pair) for `[CLS] A [SEP]` or `[CLS] A [SEP] B [SEP]`."""
        tok = self.tokenizer
        ids = [tok.cls_id, *self._segment(text), tok.sep_id]
        types = [0] * len(ids)
        if text_b is not None:
            b = [*self._segment(text_b), tok.sep_id]
            ids, types = ids + b, types + [1] * len(b)
        limit = self.model.config.max_position_embeddings
        if len(ids) > limit:
            raise UserError(
                f"input of {len(ids)} tokens exceeds the model's {limit} positions: {text[:60]!r}…"
            )
        return ids, types, text_b is not None

    @torch.inference_mode()
    def _score(
        self, rows: list[tuple[list[int], list[int], bool]], top_k: int
    ) -> tuple[list[str], list[float]]:
        """Fill-mask JSON and P(swapped) for a batch of encoded rows, in one padded forward pass."""
        B, T = len(rows), max(len(ids) for ids, _, _ in rows)
        masks = [[j for j, t in enumerate(ids) if t == self.tokenizer.mask_id] for ids, _, _ in rows]
        input_ids = torch.zeros(B, T, dtype=torch.long)  # pad id 0
        token_types = torch.zeros_like(input_ids)
        attention = torch.zeros_like(input_ids)
        # (B, P): each row's mask positions; unused slots point at [CLS] and are never read back.
        positions = torch.zeros(B, max(1, *map(len, masks)), dtype=torch.long)
        for i, (ids, types, _) in enumerate(rows):
            input_ids[i, : len(ids)] = torch.tensor(ids)
            token_types[i, : len(ids)] = torch.tensor(types)
            attention[i, : len(ids)] = 1
            positions[i, : len(masks[i])] = torch.tensor(masks[i], dtype=torch.long)
        # The MLM head runs at the P mask slots only: all T positions would cost B*T*V floats (2 GB at 32x512x30k).
        dev = self.device
        out = self.model(
            input_ids.to(dev), token_types.to(dev), attention.to(dev), masked_lm_positions=positions.to(dev)
        )
        scores, top = out.prediction_logits.float().softmax(-1).topk(top_k, dim=-1)  # (B, P, k)
        swapped = out.sop_logits.float().softmax(-1)[:, 1].tolist()  # (B,): P(label 1 = swapped)
        fill_mask, sop = [], []
        for i, (_, _, is_pair) in enumerate(rows):
            candidates = [
                [
                    {"token": self.tokenizer.id_to_piece(t), "score": s}
                    for t, s in zip(top[i, m].tolist(), scores[i, m].tolist(), strict=True)
                ]
                for m in range(len(masks[i]))
            ]
            fill_mask.append(json.dumps(candidates, ensure_ascii=False))
            sop.append(swapped[i] if is_pair else math.nan)
        return fill_mask, sop


mlflow.models.set_model(AlbertPyfunc())
