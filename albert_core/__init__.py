"""Pure ALBERT core: config, model, tokenizer, SOP data, LAMB, HF interop. No Ray, Prefect or MLflow."""

from albert_core.config import PRESETS, AlbertConfig
from albert_core.errors import UserError
from albert_core.model import (
    AlbertForPreTraining,
    AlbertForPreTrainingOutput,
    AlbertForSequenceClassification,
    AlbertModel,
    count_parameters,
)

__all__ = [
    "PRESETS",
    "AlbertConfig",
    "AlbertForPreTraining",
    "AlbertForPreTrainingOutput",
    "AlbertForSequenceClassification",
    "AlbertModel",
    "UserError",
    "count_parameters",
]
