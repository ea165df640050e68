"""`albert demo --quick` end to end, as a user runs it: the console script in a fresh process, on embedded defaults
(temporary Prefect API, local Ray, SQLite MLflow, builtin corpus). Run twice on one home: the second run ingests
nothing new, reuses the shards, trains a new candidate and the gate decides. The champion's Hugging Face export
loads in transformers and agrees with our model."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import transformers

from albert_core.checkpoint import load_model
from albert_core.tokenizer import SentencePieceTokenizer
from flows.cli import main
from training.registry import configure_mlflow, download_model

pytestmark = [pytest.mark.e2e, pytest.mark.usefixtures("runs_cli")]
ALBERT = Path(sys.executable).with_name("albert")


def run_demo(home: Path) -> dict:
    env = {
        k: v for k, v in os.environ.items() if not k.startswith(("MLFLOW_", "RAY_ADDRESS", "PREFECT_API_URL"))
    }
    proc = subprocess.run([str(ALBERT), "demo", "--quick", "--json", "--home", str(home)], env=env,
                          capture_output=True, text=True, timeout=900, stdin=subprocess.DEVNULL)  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-4000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


@pytest.fixture(scope="module")
def home(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("demo-home")


@pytest.fixture(scope="module")
def runs(home: Path) -> tuple[dict, dict]:
    return run_demo(home), run_demo(home)


def test_first_run_trains_registers_and_promotes(runs: tuple[dict, dict]) -> None:
    first, _ = runs
    assert first["corpus_version"] == 1 and first["shards_reused"] is False
    assert first["final_step"] > 0 and first["model_uri"] == "models:/albert-demo/1"
    assert first["promotion"] == "promoted" and first["champion_version"] == 1
    top = first["fill_mask"]["top"]
    assert len(top) == 5 and all(0 <= c["score"] <= 1 for c in top)
    assert 0 <= first["sop"]["swapped_probability"] <= 1
    assert first["metrics"]["eval_mlm_acc"] > 0.02  # far above chance (1 / 4000 pieces)
    assert first["mlflow_ui"].startswith("mlflow ui --backend-store-uri sqlite:///")


def test_second_run_reuses_data_and_the_gate_decides(runs: tuple[dict, dict]) -> None:
    first, second = runs
    assert second["corpus_version"] is None and "nothing new" in second["ingest_message"]
    assert second["shards"] == first["shards"] and second["shards_reused"] is True
    assert second["model_uri"] == "models:/albert-demo/2"
    assert second["promotion"] in ("promoted", "rejected") and second["promotion_reason"]
    assert second["champion_version"] == (2 if second["promotion"] == "promoted" else 1)


def test_champion_exports_to_transformers_with_the_same_outputs(
    runs: tuple[dict, dict], home: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    champion = runs[1]["champion_uri"]
    assert main(["export-hf", champion, str(tmp_path / "hf"), "--home", str(home), "--json"]) == 0
    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1])["tokenizer"] is True
    configure_mlflow(home)
    folder = download_model(champion, tmp_path / "champion")
    ours, ours_tok = load_model(folder).eval(), SentencePieceTokenizer.load(folder / "tokenizer")
    hf_model = transformers.AlbertForPreTraining.from_pretrained(tmp_path / "hf").eval()
    hf_tok = transformers.AlbertTokenizer.from_pretrained(tmp_path / "hf")
    text = "Return the number of items in a container. The list is sorted in place."
    ids = hf_tok(text, return_tensors="pt")["input_ids"]
    assert ids[0].tolist() == [ours_tok.cls_id, *ours_tok.encode_one(text), ours_tok.sep_id]
    with torch.no_grad():
        a, b = ours(ids), hf_model(ids)
    assert (a.prediction_logits - b.prediction_logits).abs().max() < 1e-4
    assert (a.sop_logits - b.sop_logits).abs().max() < 1e-4
    # the classic fine-tuning start: our encoder under a new classification head
    classifier = transformers.AlbertForSequenceClassification.from_pretrained(tmp_path / "hf", num_labels=4)
    encoder = dict(classifier.albert.named_parameters())
    for name, weight in hf_model.albert.named_parameters():
        assert torch.equal(encoder[name], weight), name
    assert classifier(ids).logits.shape == (1, 4)


def test_a_corrupted_model_folder_is_refused(runs: tuple[dict, dict], home: Path, tmp_path: Path) -> None:
    from albert_core.errors import UserError

    configure_mlflow(home)
    folder = download_model(runs[0]["model_uri"], tmp_path / "model")
    weights = folder / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:-16] + bytes(16))
    with pytest.raises(UserError, match="does not match its recorded sha256"):
        load_model(folder)
