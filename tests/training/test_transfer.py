"""Transfer: pretraining must help downstream.

The same classifier is fine-tuned twice on which of four Gutenberg books a sentence comes from, with `albert
finetune`'s own recipe (3 epochs, lr 1e-4): once from the `pretrained_en` model, once from a random
initialisation (`init="random"`: the pretrained model's config and tokenizer, the same seed, head, data, steps and
schedule; only the encoder's starting weights differ). Both are evaluated on the same 1,600 held-out sentences,
and pretrained must beat random by more than chance allows.

The margin is not a fixed number (the fixture's pretraining recipe changes): it is Z = 3 standard errors of the
difference of two accuracies on n sentences, pooled, sqrt(2 p (1 - p) / n) with p their mean (the two-proportion
test's; about 0.018 here). That covers the luck of which sentences were held out, not the luck of the fine-tuning
seed, which is larger: benchmarks/transfer.py measures it over several seeds.
"""

from __future__ import annotations

import math
from pathlib import Path

import mlflow
import pytest
from mlflow import MlflowClient

# One recipe: the benchmark measures it (figures, several seeds), this test asserts it on the shared fixture.
from benchmarks.transfer import (
    BATCH,
    EPOCHS,
    EVAL_PER_BOOK,
    LR,
    MAX_SEQ_LEN,
    TRAIN_PER_BOOK,
    Z,
    standard_error,
    write_book_splits,
)
from training.finetune import EVAL_ACCURACY, FinetuneConfig, finetune

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("uses_ray")]


def test_pretrained_beats_random_init_on_held_out_sentences(
    pretrained_en: tuple[Path, dict, str], corpora: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    home, summary, _ = pretrained_en
    monkeypatch.chdir(tmp_path)
    train_path, eval_path = write_book_splits(corpora, tmp_path / "books")
    results, lines = {}, []
    try:
        for init in ("pretrained", "random"):
            cfg = FinetuneConfig(
                model_uri=summary["model_uri"],
                train_path=train_path,
                eval_path=eval_path,
                epochs=EPOCHS,
                lr=LR,
                batch_size=BATCH,
                max_seq_len=MAX_SEQ_LEN,
                threads=1,  # 2 busy cores (DESIGN pitfalls); and the same float sums for both
                init=init,
                model_name=f"albert-transfer-{init}",
            )
            results[init] = finetune(cfg, home=home, progress=lines.append)
        client = MlflowClient()
        runs = {init: client.get_run(r["run_id"]).data for init, r in results.items()}
        versions = {
            init: client.get_model_version(r["model_name"], str(r["model_version"])).tags
            for init, r in results.items()
        }
        curves = {
            init: [round(m.value, 4) for m in client.get_metric_history(r["run_id"], EVAL_ACCURACY)]
            for init, r in results.items()
        }
    finally:
        mlflow.set_tracking_uri(None)
        mlflow.set_registry_uri(None)

    # Two runs told apart by their params and tags, and otherwise configured alike (same steps, same data).
    assert {init: data.params["init"] for init, data in runs.items()} == {"pretrained": "pretrained",
                                                                          "random": "random"}  # fmt: skip
    assert {init: data.tags["init"] for init, data in runs.items()} == {"pretrained": "pretrained",
                                                                        "random": "random"}  # fmt: skip
    assert {init: tags["init"] for init, tags in versions.items()} == {"pretrained": "pretrained",
                                                                       "random": "random"}  # fmt: skip
    same = ("init", "model_name")
    assert {k: v for k, v in runs["pretrained"].params.items() if k not in same} == {
        k: v for k, v in runs["random"].params.items() if k not in same
    }
    assert runs["pretrained"].params["total_steps"] == str(EPOCHS * math.ceil(4 * TRAIN_PER_BOOK / BATCH))
    n = results["pretrained"]["eval_examples"]
    assert n == results["random"]["eval_examples"] == 4 * EVAL_PER_BOOK

    pretrained, scratch = results["pretrained"]["accuracy"], results["random"]["accuracy"]
    se = standard_error((pretrained, scratch), n)
    margin = Z * se
    report = (
        f"pretrained {pretrained:.4f} (macro-F1 {results['pretrained']['f1_macro']:.4f}) vs random {scratch:.4f} "
        f"(macro-F1 {results['random']['f1_macro']:.4f}) on {n} held-out sentences: difference "
        f"{pretrained - scratch:+.4f}, needs > {margin:.4f} = {Z:g} x standard error {se:.4f} "
        f"(z = {(pretrained - scratch) / se:.2f}); eval accuracy by epoch {curves}; pretrained from "
        f"{summary['model_uri']} ({summary['final_step']} steps, eval MLM acc "
        f"{summary['metrics'].get('eval_mlm_acc', float('nan')):.3f}); fine-tuning took "
        f"{results['pretrained']['seconds']} + {results['random']['seconds']} s"
    )
    print(report)
    assert pretrained - scratch > margin, report
