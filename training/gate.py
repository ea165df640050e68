"""The promotion gate: does a candidate's evaluation beat the champion's under a `PromotionPolicy`?

Pure: metrics dicts and a policy in, a `Verdict` (promote or not, and the reason recorded with it) out. No MLflow,
no files, no model: `training.promotion` evaluates both models and records what is decided here.

On every gate metric the candidate must improve on the champion by at least `margin` (accuracies up, losses
down), and on at least one it must be strictly better, so re-registering the same weights never moves the alias.
With several metrics the gate is a partial order: it promotes only a candidate that is at least as good on all of
them, never a trade of one metric for another.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import ClassVar

from albert_core.config_base import Config
from albert_core.errors import UserError
from albert_core.storage import validate_name

# What the gate may compare: the model's held-out figures (`training.evaluation` also reports figures of the
# data, which are the same for every model).
EVAL_METRICS = (
    "eval_loss",
    "eval_mlm_loss",
    "eval_sop_loss",
    "eval_mlm_acc",
    "eval_sop_acc",
    "eval_sop_balanced_acc",
)


def lower_is_better(metric: str) -> bool:
    return metric.endswith("_loss")


def check_max_sequences(value: int | None) -> None:
    """How many eval rows to evaluate: a positive integer, or None for all of them."""
    if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
        raise UserError(f"max_sequences must be a positive integer or None, got {value!r}")


@dataclass(frozen=True)
class PromotionPolicy(Config):
    """When a candidate replaces the champion: on each of `metrics` it improves by at least `margin` (accuracies
    up, losses down; one margin in each metric's own units) and on at least one it is strictly better.

    `eval_shards`: the shard set both are evaluated on (None: the candidate version's `shards` tag, the data it
    was trained on, whose eval split it never saw). `max_sequences`: evaluate only the first N eval rows.
    """

    metrics: tuple[str, ...] = ("eval_sop_acc", "eval_mlm_acc")
    margin: float = 0.0
    eval_shards: str | None = None
    max_sequences: int | None = None

    config_kind: ClassVar[str] = "promotion policy"

    def __post_init__(self) -> None:  # its own checks only: their messages name each field's valid range
        metrics = (self.metrics,) if isinstance(self.metrics, str) else tuple(self.metrics)
        object.__setattr__(self, "metrics", metrics)
        unknown = [m for m in metrics if m not in EVAL_METRICS]
        if not metrics or unknown:
            raise UserError(f"gate metrics must be some of {', '.join(EVAL_METRICS)}, got {list(metrics)}")
        margin = self.margin
        if isinstance(margin, bool) or not isinstance(margin, int | float) or not 0 <= margin < math.inf:
            raise UserError(f"margin must be a number >= 0, got {margin!r}")
        if self.eval_shards is not None:
            validate_name(self.eval_shards, "shard id")
        check_max_sequences(self.max_sequences)

    def judge(self, candidate: dict[str, float], champion: dict[str, float]) -> tuple[bool, str]:
        """(passes, why): the first metric that falls short with both values, or what improved."""
        improved = []
        for metric in self.metrics:
            new, old = candidate[metric], champion[metric]
            gain = old - new if lower_is_better(metric) else new - old
            if not gain >= self.margin:  # also false for NaN
                sign = "-" if lower_is_better(metric) else "+"
                need = "<=" if lower_is_better(metric) else ">="
                return False, (
                    f"{metric}: candidate {new:.4f}, champion {old:.4f}; "
                    f"needs {need} {old:.4f} {sign} margin {self.margin:g}"
                )
            if gain > 0:
                improved.append(f"{metric} {old:.4f} -> {new:.4f}")
        if not improved:
            return False, f"ties the champion on {', '.join(self.metrics)}: nothing improves"
        return True, "improves " + ", ".join(improved)


@dataclass(frozen=True)
class Verdict:
    promote: bool
    reason: str


def decide(
    policy: PromotionPolicy,
    candidate: dict[str, float],
    champion: dict[str, float] | None,
    *,
    champion_version: str | None,
    champion_unmeasurable: str | None = None,
    forced_because: str | None = None,
) -> Verdict:
    """Whether the candidate (its metrics: `candidate`) becomes champion, and why.

    `champion_version` None: there is no champion, the candidate is the first. Otherwise `champion` holds the
    champion's metrics on the same rows, unless `champion_unmeasurable` says why it has none (another tokenizer,
    …): a candidate that cannot be compared is rejected with that reason. `forced_because` (the operator's
    reason) promotes whatever the gate says; the gate's own verdict stays in the reason.
    """
    if champion_version is None:
        passed, why = True, "first champion"
    elif champion_unmeasurable is not None:
        passed, why = False, champion_unmeasurable
    else:
        if champion is None:
            raise ValueError(f"champion v{champion_version} needs its metrics or why it has none")
        passed, why = policy.judge(candidate, champion)
        why = f"against champion v{champion_version}: {why}"
    if forced_because is not None and not passed:
        why = f"forced ({forced_because}); the gate said: {why}"
    return Verdict(promote=passed or forced_because is not None, reason=why)
