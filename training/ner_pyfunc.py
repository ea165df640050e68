"""A fine-tuned named-entity tagger's serving face: an MLflow `pyfunc` that finds entities in raw text.

It wraps a folder written by `albert_core.checkpoint.save_classifier` for an `AlbertForTokenClassification`. Input
is a DataFrame with a `text` column. The text is split into words at whitespace (as the training data's tokens are),
each word is encoded on its own and tagged by its first piece, exactly as training aligned the labels
(`albert_core.tagging.word_pieces` and `first_pieces`, which `training.ner.align` uses too); the tags become
entities with `albert_core.tagging.entities`. Output, one row per text: `entities`, a list of {"type", "text",
"start", "end", "score"} with character offsets into the text (the score is the mean probability of the entity's
word tags), and `truncated` (words past the model's sequence length are not tagged).

Loading needs only `albert_core` (shipped with the model as code) and its dependencies, not this project. The
file is logged as the model's code ("models from code"): `set_model` at the bottom names the object MLflow serves.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import mlflow
import pandas as pd
import torch
from mlflow.exceptions import MlflowException
from mlflow.models import ModelSignature
from mlflow.protos.databricks_pb2 import INVALID_PARAMETER_VALUE
from mlflow.types import ColSpec, Schema
from mlflow.types.schema import Array, Object, Property

from albert_core.checkpoint import load_classifier
from albert_core.model import AlbertForTokenClassification
from albert_core.tagging import entities, first_pieces, word_pieces
from albert_core.tokenizer import SentencePieceTokenizer

ENTITY = Object([Property("type", "string"), Property("text", "string"), Property("start", "long"),
                 Property("end", "long"), Property("score", "double")])  # fmt: skip
SIGNATURE = ModelSignature(
    inputs=Schema([ColSpec("string", "text")]),
    outputs=Schema([ColSpec(Array(ENTITY), "entities"), ColSpec("boolean", "truncated")]),
)
WORD = re.compile(r"\S+")


def input_example() -> pd.DataFrame:
    return pd.DataFrame({"text": ["Empire State Building = ESB . Pretty bad storm here last evening ."]})


class AlbertTaggerPyfunc(mlflow.pyfunc.PythonModel):
    """Named entities with a fine-tuned ALBERT token classifier folder (artifact `model`)."""

    def load_context(self, context: mlflow.pyfunc.PythonModelContext) -> None:
        folder = Path(context.artifacts["model"])
        self.device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
        model, head = load_classifier(folder, device=self.device)
        if not isinstance(model, AlbertForTokenClassification):
            raise MlflowException(f"{folder} holds a text classifier, not an entity tagger")
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
        if "text" not in model_input:
            raise MlflowException(
                f"input needs a column `text`, got {list(model_input)}", INVALID_PARAMETER_VALUE
            )
        found, truncated = [], []
        for i, text in enumerate(model_input["text"].tolist()):
            if not isinstance(text, str):
                raise MlflowException(f"row {i}: `text` must be a string", INVALID_PARAMETER_VALUE)
            spans, cut = self._tag(text)
            found.append(spans)
            truncated.append(cut)
        return pd.DataFrame(
            {"entities": pd.Series(found, dtype=object, index=model_input.index), "truncated": truncated},
            index=model_input.index,
        )

    @torch.inference_mode()
    def _tag(self, text: str) -> tuple[list[dict[str, Any]], bool]:
        words = list(WORD.finditer(text))
        if not words:
            return [], False
        ids, firsts = first_pieces(
            word_pieces(self.tokenizer, [w.group() for w in words]), self.max_seq_len - 2
        )
        input_ids = torch.tensor([[self.tokenizer.cls_id, *ids, self.tokenizer.sep_id]], device=self.device)
        probs = self.model(input_ids).logits[0, 1:-1].float().softmax(-1)  # (pieces, labels)
        best, label_ids = probs[firsts].max(-1)
        tags = [self.labels[j] for j in label_ids.tolist()]
        scores = best.tolist()
        spans = []
        for e in entities(tags):
            start, end = words[e.start].start(), words[e.end - 1].end()
            score = sum(scores[e.start : e.end]) / (e.end - e.start)
            spans.append(
                {"type": e.type, "text": text[start:end], "start": start, "end": end, "score": score}
            )
        return spans, len(firsts) < len(words)


mlflow.models.set_model(AlbertTaggerPyfunc())
