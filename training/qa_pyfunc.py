"""A fine-tuned extractive reader's serving face: an MLflow `pyfunc` that answers a question from a context.

It wraps a folder written by `albert_core.checkpoint.save_classifier` for an `AlbertForQuestionAnswering`, whose
config keeps the question length, document stride, answer length and whether the model may answer "nothing"
(trained on SQuAD 2.0 data). Input is a DataFrame with `question` and `context` columns; the context is cut into
windows and the best span of all windows is chosen exactly as in training's evaluation (`albert_core.extractive`).
Output, one row per question: `answer` (the context's own characters, "" for no answer), `score` (its
probability: p(start) * p(end) within its window; for no answer, that of [CLS]), `start` and `end` (character
offsets into the context; null for no answer) and `truncated` (the question was cut to its first pieces).

Loading needs only `albert_core` (shipped with the model as code) and its dependencies, not this project. The
file is logged as the model's code ("models from code"): `set_model` at the bottom names the object MLflow serves.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import mlflow
import pandas as pd
import torch
from mlflow.exceptions import MlflowException
from mlflow.models import ModelSignature
from mlflow.protos.databricks_pb2 import INVALID_PARAMETER_VALUE
from mlflow.types import ColSpec, Schema

from albert_core.checkpoint import load_classifier
from albert_core.extractive import answer_spans, question_pieces, windows
from albert_core.model import AlbertForQuestionAnswering
from albert_core.tokenizer import SentencePieceTokenizer

SIGNATURE = ModelSignature(
    inputs=Schema([ColSpec("string", "question"), ColSpec("string", "context")]),
    outputs=Schema(
        [
            ColSpec("string", "answer"),
            ColSpec("double", "score"),
            ColSpec("long", "start"),
            ColSpec("long", "end"),
            ColSpec("boolean", "truncated"),
        ]
    ),  # fmt: skip
)


def input_example() -> pd.DataFrame:
    return pd.DataFrame({
        "question": ["In what year did the ship sink?"],
        "context": ["The ship was launched in 1911 and sank on her first voyage in 1912, with 1,500 lost."],
    })  # fmt: skip


class AlbertReaderPyfunc(mlflow.pyfunc.PythonModel):
    """Answer spans with a fine-tuned ALBERT question-answering folder (artifact `model`)."""

    def load_context(self, context: mlflow.pyfunc.PythonModelContext) -> None:
        folder = Path(context.artifacts["model"])
        device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
        model, head = load_classifier(folder, device=device)
        if not isinstance(model, AlbertForQuestionAnswering):
            raise MlflowException(f"{folder} holds a {type(model).__name__}, not a question-answering model")
        self.model = model.eval()
        self.max_seq_len: int = head["max_seq_len"]
        self.settings: dict[str, Any] = head["inference"]
        self.tokenizer = SentencePieceTokenizer.load(folder / "tokenizer")

    def predict(
        self,
        context: mlflow.pyfunc.PythonModelContext,
        model_input: pd.DataFrame,
        params: dict[str, Any] | None = None,
    ) -> pd.DataFrame:
        missing = [c for c in ("question", "context") if c not in model_input]
        if missing:
            raise MlflowException(
                f"input needs columns `question` and `context`, got {list(model_input)}",
                INVALID_PARAMETER_VALUE,
            )
        rows = list(zip(model_input["question"].tolist(), model_input["context"].tolist(), strict=True))
        all_windows, owner, offsets, cut = [], [], [], []
        for i, (question, text) in enumerate(rows):
            if not isinstance(question, str) or not isinstance(text, str):
                raise MlflowException(
                    f"row {i}: `question` and `context` must be strings", INVALID_PARAMETER_VALUE
                )
            ids, was_cut = question_pieces(self.tokenizer, question, self.settings["max_query_len"])
            context_ids, spans = self.tokenizer.encode_with_offsets(text)
            for window in windows(
                self.tokenizer, ids, context_ids, self.max_seq_len, self.settings["doc_stride"]
            ):
                all_windows.append(window)
                owner.append(i)
            offsets.append(spans)
            cut.append(was_cut)
        found = answer_spans(self.model, all_windows, owner, len(rows), pad_id=self.tokenizer.pad_id,
                             max_answer_len=self.settings["max_answer_len"],
                             allow_no_answer=self.settings["no_answer"])  # fmt: skip
        answers, scores, starts, ends = [], [], [], []
        for (_, text), spans, span in zip(rows, offsets, found, strict=True):
            if span.start is None:
                answers.append("")
                starts.append(None)
                ends.append(None)
            else:
                start, end = spans[span.start][0], spans[span.end][1]
                answers.append(text[start:end])
                starts.append(start)
                ends.append(end)
            scores.append(span.probability)
        return pd.DataFrame(
            {
                "answer": answers,
                "score": scores,
                "start": pd.Series(starts, dtype=object),
                "end": pd.Series(ends, dtype=object),
                "truncated": cut,
            },  # fmt: skip
        ).set_axis(model_input.index)


mlflow.models.set_model(AlbertReaderPyfunc())
