"""The registered model's serving face: an MLflow `pyfunc` that fills masks and scores sentence order on raw text.

It wraps a model folder written by `albert_core.checkpoint.save_model` (safetensors weights checked against their
sha256, `config.json`, `tokenizer/`), so nothing the registry hands out is a pickle of weights. Input is a
DataFrame with `text` and optional `text_b`:

- every literal `[MASK]` becomes the mask id and gets its top-k candidates (MLM head, softmax over V) in
  `fill_mask`: one list per mask, in order, of {"token": piece, "score": p};
- with `text_b`, the pair `[CLS] A [SEP] B [SEP]` (token types 0 then 1) gets `sop_swapped_probability` from the
  SOP head (label 1 = swapped, as in the ALBERT reference); null without `text_b`;
- `truncated` says whether the input was cut to the model's positions (the longer segment loses its tail first,
  as the reference truncates pairs); with the param `truncate=false` an over-long input is refused instead.

The output is plain JSON through `mlflow models serve` (lists and objects, null rather than NaN), and a user's
mistake comes back as a one-line message with status 400, not a stack trace.

Loading needs only `albert_core` (shipped with the model as code) and its dependencies, not this project; MLflow
stays out of albert_core, so this module lives in `training`. The file is logged as the model's code
("models from code"): `set_model` at the bottom names the object MLflow serves.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, NamedTuple

import mlflow
import pandas as pd
import torch
from mlflow.exceptions import MlflowException
from mlflow.models import ModelSignature
from mlflow.protos.databricks_pb2 import INVALID_PARAMETER_VALUE
from mlflow.types import ColSpec, ParamSchema, ParamSpec, Schema
from mlflow.types.schema import Array, Object, Property

from albert_core.checkpoint import load_model
from albert_core.errors import UserError
from albert_core.tokenizer import MASK, SentencePieceTokenizer

DEFAULT_TOP_K = 5
BATCH_ROWS = 32  # rows per forward pass: bounds padding waste and memory for large requests

CANDIDATE = Object([Property("token", "string"), Property("score", "double")])
SIGNATURE = ModelSignature(
    inputs=Schema([ColSpec("string", "text"), ColSpec("string", "text_b", required=False)]),
    outputs=Schema([
        ColSpec(Array(Array(CANDIDATE)), "fill_mask"),
        ColSpec("double", "sop_swapped_probability", required=False),
        ColSpec("boolean", "truncated"),
    ]),
    params=ParamSchema([ParamSpec("top_k", "long", DEFAULT_TOP_K), ParamSpec("truncate", "boolean", True)]),
)  # fmt: skip


def input_example() -> pd.DataFrame:
    """A masked sentence with a second one: both outputs in one row. (A missing `text_b` would be written to
    `serving_input_example.json` as NaN, which is not JSON.)"""
    return pd.DataFrame({"text": ["The cat sat on the [MASK]."], "text_b": ["It was fast asleep."]})


class Encoded(NamedTuple):
    ids: list[int]
    types: list[int]
    is_pair: bool
    truncated: bool


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
        try:
            return self._predict(model_input, params or {})
        except UserError as e:  # the server answers 400 with this one line, not a stack trace
            raise MlflowException(str(e), error_code=INVALID_PARAMETER_VALUE) from None

    def _predict(self, model_input: pd.DataFrame, params: dict[str, Any]) -> pd.DataFrame:
        top_k, truncate = int(params.get("top_k", DEFAULT_TOP_K)), bool(params.get("truncate", True))
        if top_k < 1:
            raise UserError(f"top_k must be >= 1, got {top_k}")
        if "text" not in model_input:
            raise UserError(f"input needs a column `text` (and optionally `text_b`), got {list(model_input)}")
        texts = model_input["text"].tolist()
        pairs = model_input["text_b"].tolist() if "text_b" in model_input else [None] * len(texts)
        for i, text in enumerate(texts):
            if not isinstance(text, str):
                raise UserError(f"row {i}: `text` must be a string, got {type(text).__name__}")
        rows = [
            self._encode(a, b if isinstance(b, str) else None, truncate)
            for a, b in zip(texts, pairs, strict=True)
        ]
        fill_mask: list[list] = []
        sop: list[float | None] = []
        for start in range(0, len(rows), BATCH_ROWS):
            chunk = rows[start : start + BATCH_ROWS]
            filled, swapped = self._score(chunk, min(top_k, self.tokenizer.vocab_size))
            fill_mask += filled
            sop += swapped
        # object columns keep None as None (JSON null); a float column would turn it into NaN
        return pd.DataFrame(
            {"fill_mask": pd.Series(fill_mask, dtype=object, index=model_input.index),
             "sop_swapped_probability": pd.Series(sop, dtype=object, index=model_input.index),
             "truncated": [row.truncated for row in rows]},
            index=model_input.index,
        )  # fmt: skip

    def _segment(self, text: str) -> list[int]:
        """Ids of one segment; the literal `[MASK]` becomes the mask id. The pieces around it are encoded
        separately, so each starts a word, as transformers' tokenizer treats an added special token."""
        ids: list[int] = []
        for i, piece in enumerate(text.split(MASK)):
            if i:
                ids.append(self.tokenizer.mask_id)
            ids += self.tokenizer.encode_one(piece)
        return ids

    def _encode(self, text: str, text_b: str | None, truncate: bool) -> Encoded:
        """`[CLS] A [SEP]` or `[CLS] A [SEP] B [SEP]`, cut to the model's positions when `truncate`."""
        tok = self.tokenizer
        a = self._segment(text)
        b = None if text_b is None else self._segment(text_b)
        positions = self.model.config.max_position_embeddings
        budget = positions - (2 if b is None else 3)  # [CLS] and one or two [SEP]
        total = len(a) + (len(b) if b is not None else 0)
        if total > budget and not truncate:
            raise UserError(
                f"input of {positions - budget + total} tokens exceeds the model's {positions} positions: "
                f"{text[:60]!r}… (truncate=true cuts it instead)"
            )
        while len(a) + (len(b) if b is not None else 0) > budget:  # the longer segment loses its tail
            (a if b is None or len(a) >= len(b) else b).pop()
        ids = [tok.cls_id, *a, tok.sep_id]
        types = [0] * len(ids)
        if b is not None:
            ids, types = ids + [*b, tok.sep_id], types + [1] * (len(b) + 1)
        return Encoded(ids, types, b is not None, total > budget)

    @torch.inference_mode()
    def _score(self, rows: list[Encoded], top_k: int) -> tuple[list[list], list[float | None]]:
        """Fill-mask candidates and P(swapped) for a batch of encoded rows, in one padded forward pass."""
        B, T = len(rows), max(len(row.ids) for row in rows)
        masks = [[j for j, t in enumerate(row.ids) if t == self.tokenizer.mask_id] for row in rows]
        input_ids = torch.zeros(B, T, dtype=torch.long)  # pad id 0
        token_types = torch.zeros_like(input_ids)
        attention = torch.zeros_like(input_ids)
        # (B, P): each row's mask positions; unused slots point at [CLS] and are never read back.
        positions = torch.zeros(B, max(1, *map(len, masks)), dtype=torch.long)
        for i, (ids, types, _, _) in enumerate(rows):
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
        for i, row in enumerate(rows):
            candidates = [
                [
                    {"token": self.tokenizer.id_to_piece(t), "score": s}
                    for t, s in zip(top[i, m].tolist(), scores[i, m].tolist(), strict=True)
                ]
                for m in range(len(masks[i]))
            ]
            fill_mask.append(candidates)
            sop.append(swapped[i] if row.is_pair else None)
        return fill_mask, sop


mlflow.models.set_model(AlbertPyfunc())
