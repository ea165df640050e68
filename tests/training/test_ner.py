"""`albert finetune --task ner` on real data (WNUT17 tweets) from the pretrained test model: it trains, scores
entities on the held-out part, logs and registers a pyfunc that answers with character offsets, and exports a
folder that `transformers.AlbertForTokenClassification` and `pipeline("token-classification")` load."""

import json
import math
from collections import Counter
from pathlib import Path

import mlflow
import pandas as pd
import pytest
import torch
from mlflow import MlflowClient

from albert_core.checkpoint import load_classifier
from albert_core.model import AlbertForTokenClassification
from flows.cli import main
from tests.serving import mlflow_models_serve, post
from training.ner import held_out, read_tagged

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("uses_ray")]  # the pretrained model: Ray Train

EPOCHS, LR = 6, 3e-4


@pytest.fixture(scope="module")
def tagged(pretrained_en: tuple[Path, dict, str], corpora: Path, albert_json):
    """(home, --json result) of one `albert finetune --task ner` on WNUT17."""
    home, summary, _ = pretrained_en
    wnut = corpora / "downstream" / "wnut17-train.conll"
    yield home, albert_json(["finetune", "--task", "ner", "--model", summary["model_uri"], "--train", str(wnut),
                             "--epochs", str(EPOCHS), "--lr", str(LR), "--max-seq-len", "64", "--batch-size", "32",
                             "--threads", "2", "--model-name", "albert-ner-test", "--home", str(home)])  # fmt: skip
    mlflow.set_tracking_uri(None)
    mlflow.set_registry_uri(None)


def test_ner_trains_scores_entities_and_registers(tagged, corpora: Path) -> None:
    home, result = tagged
    sentences = read_tagged(corpora / "downstream" / "wnut17-train.conll")
    assert result["eval_sentences"] == sum(held_out(s, 0.1) for s in sentences)
    assert result["train_sentences"] + result["eval_sentences"] == len(sentences)
    assert set(result["per_type"]) <= {
        "person",
        "location",
        "group",
        "corporation",
        "product",
        "creative-work",
    }
    assert 0 <= result["entity_f1"] <= 1 and result["model_version"] == 1

    client = MlflowClient(result["tracking_uri"], registry_uri=result["tracking_uri"])
    run = client.get_run(result["run_id"])
    assert run.data.params["task"] == "ner" and run.data.tags["task"] == "ner"
    losses = [m.value for m in client.get_metric_history(result["run_id"], "train_loss")]
    # It learns more than how often each tag occurs: the cross-entropy of always answering the training tags'
    # frequencies is their entropy, and the last epoch's mean loss must fall clearly below it.
    train = [s for s in sentences if not held_out(s, 0.1)]
    counts = Counter(tag for s in train for tag in s.tags)
    prior = -sum(c / counts.total() * math.log(c / counts.total()) for c in counts.values())
    assert len(losses) == EPOCHS and losses[-1] < 0.9 * prior, (losses, prior)
    f1 = client.get_metric_history(result["run_id"], "eval_entity_f1")
    assert [m.step for m in f1] == list(range(1, EPOCHS + 1)) and f1[-1].value == pytest.approx(
        result["entity_f1"]
    )
    scores = json.loads(Path(mlflow.artifacts.download_artifacts(run_id=result["run_id"],
                                                                 artifact_path="entity_scores.json",
                                                                 tracking_uri=result["tracking_uri"])).read_text())  # fmt: skip
    assert scores["micro"]["f1"] == pytest.approx(result["entity_f1"])
    assert client.get_model_version_by_alias("albert-ner-test", "candidate").tags["task"] == "ner"


def test_the_registered_tagger_answers_with_character_offsets(tagged) -> None:
    home, result = tagged
    mlflow.set_tracking_uri(result["tracking_uri"])
    mlflow.set_registry_uri(result["tracking_uri"])
    served = mlflow.pyfunc.load_model("models:/albert-ner-test@candidate")
    texts = ["Empire State Building = ESB .  Pretty bad storm here last evening .", "", "word " * 200]
    out = served.predict(pd.DataFrame({"text": texts}))
    assert list(out.columns) == ["entities", "truncated"] and out["truncated"].tolist() == [
        False,
        False,
        True,
    ]
    for text, found in zip(texts, out["entities"], strict=True):
        for entity in found:
            assert text[entity["start"] : entity["end"]] == entity["text"] and 0 < entity["score"] <= 1
            assert entity["type"] in result["per_type"] or entity["type"] in {"person", "location", "group",
                                                                             "corporation", "product",
                                                                             "creative-work"}  # fmt: skip


def test_the_tagger_exports_to_transformers_and_its_pipeline(
    tagged, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    import transformers

    home, result = tagged
    model, head = load_classifier(result["model_dir"])
    assert isinstance(model, AlbertForTokenClassification) and head["labels"] == result["labels"]
    outdir = tmp_path / "hf"
    assert (
        main(["export-hf", "models:/albert-ner-test@candidate", str(outdir), "--home", str(home), "--json"])
        == 0
    )
    exported = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert exported["class"] == "AlbertForTokenClassification" and exported["tokenizer"] is True
    hf, info = transformers.AlbertForTokenClassification.from_pretrained(outdir, output_loading_info=True)
    assert not any(info.values()), info  # no missing, unexpected or mismatched keys
    tokenizer = transformers.AlbertTokenizer.from_pretrained(outdir)
    encoded = tokenizer("Empire State Building is in New York", return_tensors="pt")
    with torch.no_grad():
        torch.testing.assert_close(hf.eval()(**encoded).logits, model.eval()(encoded["input_ids"]).logits)
    tag = transformers.pipeline("token-classification", model=hf, tokenizer=tokenizer)
    for found in tag("Empire State Building is in New York"):
        assert found["entity"] in head["labels"] and 0 <= found["score"] <= 1


def test_the_tagger_answers_over_http(tagged, tmp_path: Path, uses_servers: None) -> None:
    """`mlflow models serve` on the registered tagger: entities as plain JSON objects with offsets."""
    home, result = tagged
    text = "Empire State Building = ESB .  Pretty bad storm here last evening ."
    with mlflow_models_serve("models:/albert-ner-test@candidate", result["tracking_uri"],
                             tmp_path / "serve.log") as url:  # fmt: skip
        status, body = post(url, {"dataframe_records": [{"text": text}]})
        assert status == 200, body
        (row,) = body["predictions"]
        assert row["truncated"] is False and isinstance(row["entities"], list)
        for entity in row["entities"]:
            assert text[entity["start"] : entity["end"]] == entity["text"]
        status, body = post(url, {"dataframe_records": [{"txt": text}]})
        assert status == 400 and "text" in body["message"] and "stack_trace" not in body, body
