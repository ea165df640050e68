"""The promotion gate on its own: metrics dicts and a policy in, a verdict and its reason out.

No Ray, no MLflow, no files, no model: `training.gate` is pure, and these tests say so by importing it in a
fresh interpreter and by never touching anything but dicts.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from albert_core.errors import UserError
from training.gate import EVAL_METRICS, PromotionPolicy, Verdict, decide, lower_is_better

REPO = Path(__file__).resolve().parents[2]
CHAMPION = {"eval_sop_acc": 0.60, "eval_mlm_acc": 0.20, "eval_loss": 5.0}


def test_the_gate_imports_no_heavy_or_io_library() -> None:
    probe = "import json, sys, training.gate; print(json.dumps(sorted(sys.modules)))"
    out = subprocess.run(
        [sys.executable, "-c", probe], cwd=REPO, capture_output=True, text=True, check=True, timeout=60
    )
    loaded = {name.partition(".")[0] for name in json.loads(out.stdout)}
    assert not loaded & {"mlflow", "ray", "torch", "pyarrow", "data_jobs"}


def test_policy_judges_direction_margin_and_ties() -> None:
    policy = PromotionPolicy(metrics=("eval_mlm_acc", "eval_loss"), margin=0.1)
    champion = {"eval_mlm_acc": 0.30, "eval_loss": 5.0}
    assert policy.judge({"eval_mlm_acc": 0.45, "eval_loss": 4.8}, champion)[0]
    passed, why = policy.judge({"eval_mlm_acc": 0.45, "eval_loss": 4.95}, champion)  # loss: lower is better
    assert not passed and why == "eval_loss: candidate 4.9500, champion 5.0000; needs <= 5.0000 - margin 0.1"
    passed, why = policy.judge({"eval_mlm_acc": 0.35, "eval_loss": 4.0}, champion)
    assert not passed and why.startswith("eval_mlm_acc: candidate 0.3500, champion 0.3000; needs >=")
    assert not PromotionPolicy().judge(
        {"eval_sop_acc": 0.5, "eval_mlm_acc": 0.2}, {"eval_sop_acc": 0.5, "eval_mlm_acc": 0.2}
    )[0]
    assert PromotionPolicy().judge(
        {"eval_sop_acc": 0.5, "eval_mlm_acc": 0.3}, {"eval_sop_acc": 0.5, "eval_mlm_acc": 0.2}
    )[0]
    assert not PromotionPolicy().judge(
        {"eval_sop_acc": float("nan"), "eval_mlm_acc": 0.3}, {"eval_sop_acc": 0.5, "eval_mlm_acc": 0.2}
    )[0]
    for bad in (
        {"metrics": ("accuracy",)},
        {"metrics": ()},
        {"margin": -0.1},
        {"max_sequences": 0},
        {"eval_shards": "../x"},
    ):
        with pytest.raises(UserError):
            PromotionPolicy(**bad)


def test_losses_go_down_accuracies_go_up() -> None:
    assert [m for m in EVAL_METRICS if lower_is_better(m)] == ["eval_loss", "eval_mlm_loss", "eval_sop_loss"]
    policy = PromotionPolicy(metrics=("eval_loss",))
    assert policy.judge({"eval_loss": 4.9}, CHAMPION) == (True, "improves eval_loss 5.0000 -> 4.9000")
    assert not policy.judge({"eval_loss": 5.1}, CHAMPION)[0]


def test_every_metric_must_clear_the_margin_and_one_must_improve() -> None:
    policy = PromotionPolicy(metrics=("eval_mlm_acc", "eval_loss"), margin=0.1)
    passed, why = policy.judge({"eval_mlm_acc": 0.35, "eval_loss": 4.8}, CHAMPION)
    assert passed and why == "improves eval_mlm_acc 0.2000 -> 0.3500, eval_loss 5.0000 -> 4.8000"
    passed, why = policy.judge(
        {"eval_mlm_acc": 0.35, "eval_loss": 4.95}, CHAMPION
    )  # the first that falls short
    assert not passed and why == "eval_loss: candidate 4.9500, champion 5.0000; needs <= 5.0000 - margin 0.1"
    passed, why = policy.judge({"eval_mlm_acc": 0.25, "eval_loss": 4.0}, CHAMPION)
    assert (
        not passed and why == "eval_mlm_acc: candidate 0.2500, champion 0.2000; needs >= 0.2000 + margin 0.1"
    )


def test_a_tie_or_nan_never_promotes() -> None:
    policy = PromotionPolicy()  # SOP and MLM accuracy, no margin
    passed, why = policy.judge(dict(CHAMPION), CHAMPION)
    assert not passed and why == "ties the champion on eval_sop_acc, eval_mlm_acc: nothing improves"
    assert policy.judge({**CHAMPION, "eval_mlm_acc": 0.21}, CHAMPION)[0]  # equal SOP, better MLM: promoted
    assert not policy.judge({**CHAMPION, "eval_sop_acc": float("nan"), "eval_mlm_acc": 0.3}, CHAMPION)[0]
    assert not policy.judge({**CHAMPION, "eval_sop_acc": 0.7, "eval_mlm_acc": 0.19}, CHAMPION)[0]  # no trades


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"metrics": ("accuracy",)}, "gate metrics must be some of"),
        ({"metrics": ()}, "gate metrics must be some of"),
        ({"margin": -0.1}, "margin must be a number >= 0"),
        ({"margin": float("inf")}, "margin must be a number >= 0"),
        ({"margin": True}, "margin must be a number >= 0"),
        ({"max_sequences": 0}, "max_sequences must be a positive integer or None"),
        ({"max_sequences": 2.5}, "max_sequences must be a positive integer or None"),
        ({"eval_shards": "../x"}, "invalid shard id"),
    ],
)
def test_policy_nonsense_is_rejected(kwargs: dict, message: str) -> None:
    with pytest.raises(UserError, match=message):
        PromotionPolicy(**kwargs)


def test_a_single_metric_name_is_a_tuple_of_one() -> None:
    assert PromotionPolicy(metrics="eval_loss").metrics == ("eval_loss",)


def test_decide_first_champion_comparison_and_unmeasurable_champion() -> None:
    policy = PromotionPolicy()
    better = {**CHAMPION, "eval_mlm_acc": 0.3}
    assert decide(policy, better, None, champion_version=None) == Verdict(True, "first champion")
    verdict = decide(policy, better, CHAMPION, champion_version="3")
    assert verdict.promote and verdict.reason == "against champion v3: improves eval_mlm_acc 0.2000 -> 0.3000"
    verdict = decide(policy, CHAMPION, better, champion_version="3")
    assert not verdict.promote and verdict.reason.startswith(
        "against champion v3: eval_mlm_acc: candidate 0.2000"
    )
    why = "champion v3 cannot be evaluated on shards abc: another tokenizer"
    assert decide(policy, better, {}, champion_version="3", champion_unmeasurable=why) == Verdict(False, why)
    with pytest.raises(ValueError, match="needs its metrics"):
        decide(policy, better, None, champion_version="3")


def test_force_promotes_and_keeps_what_the_gate_said() -> None:
    policy = PromotionPolicy()
    verdict = decide(policy, CHAMPION, {**CHAMPION, "eval_mlm_acc": 0.3}, champion_version="2",
                     forced_because="hotfix")  # fmt: skip
    assert verdict.promote
    assert verdict.reason.startswith(
        "forced (hotfix); the gate said: against champion v2: eval_mlm_acc: candidate"
    )
    why = "champion v2 cannot be evaluated on shards abc: another tokenizer"
    forced = decide(
        policy, CHAMPION, {}, champion_version="2", champion_unmeasurable=why, forced_because="new"
    )
    assert forced == Verdict(True, f"forced (new); the gate said: {why}")
    # A candidate that passes anyway is promoted on its merits: the reason does not mention the override.
    passing = decide(
        policy, {**CHAMPION, "eval_mlm_acc": 0.3}, CHAMPION, champion_version="2", forced_because="x"
    )
    assert passing == Verdict(True, "against champion v2: improves eval_mlm_acc 0.2000 -> 0.3000")
