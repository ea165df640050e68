"""The learning check on real text: a `tiny` model pretrained by the real trainer (2 Ray Train workers, the
default recipe) on English WikiText and Gutenberg books, measured on held-out documents, with the figures that
say what was learned.

The shards balance the SOP labels (no single-sentence negatives, always label 1), so 0.5 is chance; but the
reference's chunking makes segment B longer than A in original order, so the length rule ("swapped when A is
longer") scores well above chance without reading a word. `eval_sop_length_baseline` is that rule on the same
rows; this test recomputes it from the shard files to check the figure a user reads. Whether the model orders
sentences by their content is proven on a corpus made for it (`test_sop_mechanism.py`); at this scale (800 steps
of 32 sequences of 64 tokens, on 2 cores) real text is learned to about the length rule, and the test asserts
that much, with margins from the held-out split's own standard error.
"""

import math
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from mlflow.tracking import MlflowClient

from data_jobs.shards import load_manifest, split_files
from tests.training.conftest import PRETRAIN_STEPS
from training import tracking as m

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("uses_ray")]


def length_rule(home: Path, shards: str) -> tuple[float, int]:
    """The length rule's accuracy on the eval split, from the files: (accuracy, rows)."""
    table = pa.concat_tables(
        pq.read_table(f, columns=["token_type_ids", "attention_mask", "sop_label"])
        for f in split_files(home, shards, "eval")
    )
    types = np.stack(table["token_type_ids"].to_numpy(zero_copy_only=False))
    real = np.stack(table["attention_mask"].to_numpy(zero_copy_only=False)).astype(bool)
    len_b = (types.astype(bool) & real).sum(1) - 1  # B [SEP]
    len_a = real.sum(1) - len_b - 3  # [CLS] A [SEP] B [SEP]
    labels = table["sop_label"].to_numpy()
    return float(((len_a > len_b).astype(int) == labels).mean()), len(labels)


def test_tiny_learns_on_held_out_text(pretrained_en: tuple[Path, dict, str]) -> None:
    home, summary, shards = pretrained_en
    final = summary["metrics"]
    rule, n = length_rule(home, shards)
    assert n >= 1000, n  # enough held-out pairs for the figures to mean something
    assert n == load_manifest(home, shards)["statistics"]["eval"]["instances"]
    assert final[m.EVAL_SOP_LENGTH_BASELINE] == pytest.approx(rule, abs=1e-9)  # the logged figure is the rule
    history = sorted(
        (x.step, x.value)
        for x in MlflowClient(summary["tracking_uri"]).get_metric_history(summary["run_id"], m.EVAL_SOP_ACC)
    )
    assert [step for step, _ in history] == [PRETRAIN_STEPS * k // 4 for k in (1, 2, 3, 4)]
    sop = final[m.EVAL_SOP_ACC]
    se = math.sqrt(0.25 / n)  # of an accuracy near 0.5 on n rows
    assert sop >= 0.5 + 3 * se, history  # above chance (balanced labels)
    assert sop >= rule - 3 * se, (sop, rule, history)  # and at least what length alone gives
    assert final[m.EVAL_MLM_ACC] > 0.08  # and it learns words (chance: 1 / 3000)
