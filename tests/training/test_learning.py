"""The learning check: a `tiny` model pretrained by the real trainer (2 Ray Train workers, LAMB) on real English text
learns sentence order, measured on held-out documents.

The shards balance the SOP labels (no single-sentence negatives, which are always label 1 and make the majority
class 0.6-0.7), so 0.5 is chance; about 1,800 held-out sequences put chance's standard error near 0.012.
"""

from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest
from mlflow.tracking import MlflowClient

from data_jobs.shards import load_manifest, split_files
from training import tracking as m

pytestmark = pytest.mark.slow


def test_tiny_learns_sentence_order_on_held_out_text(pretrained_en: tuple[Path, dict, str]) -> None:
    home, summary, shards = pretrained_en
    eval_stats = load_manifest(home, shards)["statistics"]["eval"]
    assert eval_stats["instances"] >= 1000, (
        eval_stats
    )  # enough held-out pairs for the figure to mean something
    labels = pa.concat_tables(
        pq.read_table(f, columns=["sop_label"]) for f in split_files(home, shards, "eval")
    )
    assert 0.45 < pc.mean(labels["sop_label"]).as_py() < 0.55  # balanced: chance is 0.5
    history = sorted(
        (x.step, x.value)
        for x in MlflowClient(summary["tracking_uri"]).get_metric_history(summary["run_id"], m.EVAL_SOP_ACC)
    )
    assert [step for step, _ in history] == [200, 400, 600, 800]
    # chance is 0.5 (balanced labels): 0.54 is over 3 standard errors above it, 0.55 over 4
    assert summary["metrics"][m.EVAL_SOP_ACC] >= 0.54, history
    assert max(acc for _, acc in history) >= 0.55, history
    assert summary["metrics"][m.EVAL_MLM_ACC] > 0.08  # and it learns words too (chance: 1 / 3000)
