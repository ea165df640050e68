"""Pure ALBERT core: config, model, tokenizer, SOP data, LAMB, HF interop. No Ray, Prefect or MLflow.

The names below load on first use, so a Ray Data task that needs only `albert_core.text` does not import torch.
"""

from importlib import import_module
from typing import TYPE_CHECKING, Any

_EXPORTS = {
    "PRESETS": "albert_core.config",
    "AlbertConfig": "albert_core.config",
    "UserError": "albert_core.errors",
    "AlbertForPreTraining": "albert_core.model",
    "AlbertForPreTrainingOutput": "albert_core.model",
    "AlbertForSequenceClassification": "albert_core.model",
    "AlbertForTokenClassification": "albert_core.model",
    "AlbertModel": "albert_core.model",
    "count_parameters": "albert_core.model",
}

if TYPE_CHECKING:
    from albert_core.config import PRESETS, AlbertConfig
    from albert_core.errors import UserError
    from albert_core.model import (
        AlbertForPreTraining,
        AlbertForPreTrainingOutput,
        AlbertForSequenceClassification,
        AlbertForTokenClassification,
        AlbertModel,
        count_parameters,
    )

__all__ = [
    "PRESETS",
    "AlbertConfig",
    "AlbertForPreTraining",
    "AlbertForPreTrainingOutput",
    "AlbertForSequenceClassification",
    "AlbertForTokenClassification",
    "AlbertModel",
    "UserError",
    "count_parameters",
]


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module 'albert_core' has no attribute {name!r}")
    return getattr(import_module(_EXPORTS[name]), name)
