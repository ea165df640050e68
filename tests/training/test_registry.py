"""Registering the final model on a real embedded MLflow (SQLite under a temporary ALBERT_HOME): versions, the
`candidate` alias, lineage tags, a pyfunc that loads in a fresh process from its own copy of the code, and the
Hugging Face export."""

from __future__ import annotations

import itertools
import json
import os
import subprocess
import sys
from pathlib import Path

import mlflow
import pandas as pd
import pytest
import torch
from mlflow import MlflowClient

from albert_core import AlbertConfig, AlbertForPreTraining
from albert_core.checkpoint import load_model, save_model
from albert_core.errors import UserError
from albert_core.tokenizer import SentencePieceTokenizer
from tests.serving import mlflow_models_serve, post
from training.registry import (
    HF_EXPORT_TAG,
    configure_mlflow,
    download_model,
    get_or_create_experiment,
    log_and_register,
    tracking_uri,
)

REPO = Path(__file__).resolve().parents[2]
MODEL_NAME = "albert-tiny-test"
MASKED = "The game was [MASK] in the United States ."
PAIR = ("The album was released in 1990 .", "It sold over a million copies .")
TOP_K = 3

# Runs in a fresh interpreter: the project's packages are made unimportable, so the model must load from the code
# it carries; starting a process while loading (as a pip install would) fails loudly.
LOAD_AND_PREDICT = """
import importlib.abc, json, subprocess, sys

class NoProject(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.partition(".")[0] in {"training", "data_jobs", "flows"}:
            raise ModuleNotFoundError(f"loading the model imported {name}")

def no_subprocess(*args, **kwargs):
    raise AssertionError(f"subprocess at load time: {args}")

sys.meta_path.insert(0, NoProject())
import mlflow, pandas as pd
subprocess.Popen.__init__ = no_subprocess
model = mlflow.pyfunc.load_model(sys.argv[1])
frame = pd.DataFrame({"text": [sys.argv[2], sys.argv[3]], "text_b": [None, sys.argv[4]]})
out = model.predict(frame, params={"top_k": int(sys.argv[5])})
print(json.dumps({"albert_core": sys.modules["albert_core"].__file__, "columns": list(out.columns),
                  "rows": out.to_dict(orient="records")}, allow_nan=False))
"""


@pytest.fixture(scope="module")
def tokenizer_dir(corpora: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    with open(corpora / "wikitext2-valid.raw.txt", encoding="utf-8") as f:
        lines = [line for line in itertools.islice(f, 2000) if line.strip()]
    tokenizer = SentencePieceTokenizer.train(lines, vocab_size=1000)
    return tokenizer.save(tmp_path_factory.mktemp("tokenizer") / "tokenizer")


def make_model_dir(folder: Path, tokenizer_dir: Path, sharing: str = "all") -> Path:
    torch.manual_seed(0)
    vocab_size = SentencePieceTokenizer.load(tokenizer_dir).vocab_size
    model = AlbertForPreTraining(AlbertConfig.from_preset("tiny", vocab_size=vocab_size, sharing=sharing))
    return save_model(model, folder, tokenizer_dir=tokenizer_dir)


def test_tracking_uri_prefers_the_environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    assert tracking_uri(tmp_path) == f"sqlite:///{tmp_path / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://127.0.0.1:5000")
    assert tracking_uri(tmp_path) == "http://127.0.0.1:5000"


def test_configure_mlflow_follows_the_home_and_leaves_the_environment_alone(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.delenv("MLFLOW_REGISTRY_URI", raising=False)
    try:
        for home in (tmp_path / "a", tmp_path / "b"):  # the second call is not captured by the first
            configure_mlflow(home)
            assert mlflow.get_tracking_uri() == mlflow.get_registry_uri() == tracking_uri(home)
            assert "MLFLOW_TRACKING_URI" not in os.environ and "MLFLOW_REGISTRY_URI" not in os.environ
    finally:
        mlflow.set_tracking_uri(None)
        mlflow.set_registry_uri(None)


def test_register_twice_then_load_candidate_in_a_fresh_process(
    mlflow_home: Path, tokenizer_dir: Path, tmp_path: Path
) -> None:
    model_dir = make_model_dir(tmp_path / "model", tokenizer_dir)
    experiment_id = get_or_create_experiment("albert-test", mlflow_home)
    assert get_or_create_experiment("albert-test", mlflow_home) == experiment_id
    artifact_root = (mlflow_home / "mlartifacts" / "albert-test").as_uri()
    assert MlflowClient().get_experiment(experiment_id).artifact_location == artifact_root

    lineage = {"shards": "abc123", "final_step": "7"}
    with mlflow.start_run(experiment_id=experiment_id) as run:
        first = log_and_register(model_dir, run_id=run.info.run_id, model_name=MODEL_NAME, tags=lineage)
    run_id = run.info.run_id
    # The run has ended: log_and_register reopens it, as the training driver's call does.
    second = log_and_register(model_dir, run_id=run_id, model_name=MODEL_NAME, tags=lineage)

    assert (first["model_version"], second["model_version"]) == (1, 2)
    assert second == {
        "model_uri": f"models:/{MODEL_NAME}/2",
        "alias_uri": f"models:/{MODEL_NAME}@candidate",
        "model_version": 2,
        "run_id": run_id,
    }
    client = MlflowClient()
    version = client.get_model_version_by_alias(MODEL_NAME, "candidate")
    assert int(version.version) == 2  # an int on the SQL store in 3.17, a str in older releases
    manifest = json.loads((model_dir / "manifest.json").read_text())
    assert version.tags == {
        **lineage,
        "run_id": run_id,
        "model_sha256": manifest["files"]["model.safetensors"],
        HF_EXPORT_TAG: f"runs:/{run_id}/hf",
    }
    assert client.get_run(run_id).info.status == "FINISHED"
    assert list((mlflow_home / "mlartifacts" / "albert-test").rglob("MLmodel")), "model artifacts under home"
    for uri in (second["alias_uri"], first["model_uri"]):
        fetched = download_model(uri, tmp_path / "fetched" / uri.replace("/", "_").replace(":", ""))
        assert json.loads((fetched / "manifest.json").read_text()) == manifest
    client.set_model_version_tag(MODEL_NAME, "1", "model_sha256", "0" * 64)  # the registry no longer vouches
    with pytest.raises(UserError, match="differ from the sha256 recorded"):
        download_model(first["model_uri"], tmp_path / "tampered")
    with pytest.raises(UserError, match="cannot load"):
        download_model(f"models:/{MODEL_NAME}@nosuchalias", tmp_path / "missing")

    env = {**os.environ, "MLFLOW_TRACKING_URI": tracking_uri(mlflow_home)}
    args = [second["alias_uri"], MASKED, PAIR[0], PAIR[1], str(TOP_K)]
    proc = subprocess.run(
        [sys.executable, "-c", LOAD_AND_PREDICT, *args], env=env, capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "mismatch" not in proc.stderr, proc.stderr[-3000:]  # pinned requirements match this environment
    served = json.loads(proc.stdout.strip().splitlines()[-1])
    assert "/code/albert_core/" in served["albert_core"] and not served["albert_core"].startswith(str(REPO))
    assert served["columns"] == ["fill_mask", "sop_swapped_probability", "truncated"]
    masked_row, pair_row = served["rows"]

    (candidates,) = masked_row["fill_mask"]  # one [MASK]
    scores = [c["score"] for c in candidates]
    assert len(candidates) == TOP_K and scores == sorted(scores, reverse=True) and sum(scores) <= 1
    assert all(0 <= s <= 1 for s in scores)
    assert masked_row["sop_swapped_probability"] is None  # no text_b
    assert pair_row["fill_mask"] == [] and not masked_row["truncated"] and not pair_row["truncated"]
    assert 0 <= pair_row["sop_swapped_probability"] <= 1

    # The served numbers are our model's, computed here directly on the same ids.
    tokenizer = SentencePieceTokenizer.load(tokenizer_dir)
    model = load_model(model_dir).eval()
    left, right = MASKED.split("[MASK]")
    ids = [tokenizer.cls_id, *tokenizer.encode_one(left), tokenizer.mask_id, *tokenizer.encode_one(right)]
    ids.append(tokenizer.sep_id)
    a, b = (tokenizer.encode_one(text) for text in PAIR)
    pair_ids = [tokenizer.cls_id, *a, tokenizer.sep_id, *b, tokenizer.sep_id]
    pair_types = [0] * (len(a) + 2) + [1] * (len(b) + 1)
    with torch.no_grad():
        logits = model(torch.tensor([ids])).prediction_logits[0, ids.index(tokenizer.mask_id)]
        sop = model(torch.tensor([pair_ids]), torch.tensor([pair_types])).sop_logits[0].softmax(-1)
    probs = logits.softmax(-1)
    assert candidates[0]["token"] == tokenizer.id_to_piece(int(probs.argmax()))
    assert candidates[0]["score"] == pytest.approx(float(probs.max()), rel=1e-4)
    assert pair_row["sop_swapped_probability"] == pytest.approx(float(sop[1]), abs=1e-5)

    # The Hugging Face export: transformers loads model and tokenizer offline, and agrees with our logits.
    import transformers

    hf_dir = mlflow.artifacts.download_artifacts(
        artifact_uri=version.tags[HF_EXPORT_TAG], dst_path=str(tmp_path)
    )
    hf_model = transformers.AlbertForPreTraining.from_pretrained(hf_dir).eval()
    hf_tokenizer = transformers.AlbertTokenizer.from_pretrained(hf_dir)
    assert hf_tokenizer(*PAIR)["input_ids"] == pair_ids
    with torch.no_grad():
        hf_logits = hf_model(torch.tensor([ids])).prediction_logits[0, ids.index(tokenizer.mask_id)]
    torch.testing.assert_close(hf_logits, logits, atol=1e-4, rtol=1e-4)


def test_partially_shared_model_registers_without_hf_export(
    mlflow_home: Path, tokenizer_dir: Path, tmp_path: Path
) -> None:
    model_dir = make_model_dir(tmp_path / "model", tokenizer_dir, sharing="attention")
    experiment_id = get_or_create_experiment("albert-test", mlflow_home)
    with mlflow.start_run(experiment_id=experiment_id) as run:
        registered = log_and_register(model_dir, run_id=run.info.run_id, model_name=MODEL_NAME)
    client = MlflowClient()
    assert registered["model_version"] == 1
    assert client.list_artifacts(run.info.run_id, "hf") == []
    reason = client.get_model_version(MODEL_NAME, "1").tags[HF_EXPORT_TAG]
    assert reason.startswith("skipped:") and "attention" in reason
    assert client.get_run(run.info.run_id).data.tags[HF_EXPORT_TAG] == reason

    # The pyfunc serves it anyway: two masks give two candidate lists of the default top_k.
    served = mlflow.pyfunc.load_model(registered["alias_uri"])
    out = served.predict(pd.DataFrame({"text": ["The [MASK] was [MASK] in 1990 ."]}))
    assert [len(candidates) for candidates in out["fill_mask"][0]] == [5, 5]


def test_served_model_answers_plain_json_over_http(
    mlflow_home: Path, tokenizer_dir: Path, tmp_path: Path, uses_servers: None
) -> None:
    """`mlflow models serve` on a registered version, asked as any HTTP client would: lists and objects (no JSON
    inside JSON), null (never NaN) without a pair, a one-line 400 for a bad field, over-long input truncated by
    default and refused on request."""
    model_dir = make_model_dir(tmp_path / "model", tokenizer_dir)
    experiment_id = get_or_create_experiment("albert-test", mlflow_home)
    with mlflow.start_run(experiment_id=experiment_id) as run:
        registered = log_and_register(model_dir, run_id=run.info.run_id, model_name=MODEL_NAME)
    with mlflow_models_serve(
        registered["alias_uri"], tracking_uri(mlflow_home), tmp_path / "serve.log"
    ) as url:
        status, body = post(url, {"dataframe_records": [{"text": MASKED}, {"text": PAIR[0], "text_b": PAIR[1]}],
                                   "params": {"top_k": 3}})  # fmt: skip
        assert status == 200, body
        masked, pair = body["predictions"]
        assert [len(candidates) for candidates in masked["fill_mask"]] == [3]
        assert set(masked["fill_mask"][0][0]) == {"token", "score"}
        assert masked["sop_swapped_probability"] is None and masked["truncated"] is False
        assert pair["fill_mask"] == [] and 0 <= pair["sop_swapped_probability"] <= 1

        status, body = post(url, {"dataframe_records": [{"txt": MASKED}]})
        assert status == 400 and "text" in body["message"], body
        assert "stack_trace" not in body and "Traceback" not in json.dumps(body)

        long_text = " ".join(["word"] * 5000) + " [MASK] ."
        status, body = post(
            url, {"dataframe_records": [{"text": long_text}, {"text": PAIR[0], "text_b": long_text}]}
        )
        assert status == 200, body
        assert [row["truncated"] for row in body["predictions"]] == [True, True]
        assert [len(row["fill_mask"]) for row in body["predictions"]] == [
            0,
            0,
        ]  # the mask was in the cut tail
        status, body = post(url, {"dataframe_records": [{"text": long_text}], "params": {"truncate": False}})
        assert status == 400 and "exceeds the model's" in body["message"], body
        assert "stack_trace" not in body and len(body["message"]) < 2000
