"""Pretraining end to end on real text: ingest -> tokenizer -> shards -> Ray Train DDP on 2 CPU workers ->
MLflow (SQLite) -> registered pyfunc model. Then a resumed run continues the same MLflow run."""

import re
from pathlib import Path

import mlflow
import pandas as pd
import pytest
from mlflow.tracking import MlflowClient

from albert_core.storage import read_json
from data_jobs.ingest import ingest
from data_jobs.shards import ShardsConfig, build_shards
from data_jobs.tokenizer_job import TokenizerJobConfig, train_tokenizer
from flows.cli import main
from training.config import TrainConfig
from training.run import train

pytestmark = pytest.mark.usefixtures("uses_ray")

SMALL_MODEL = {"num_hidden_layers": 2}


@pytest.fixture(scope="module")
def home(corpora: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    home = tmp_path_factory.mktemp("home")
    mp = pytest.MonkeyPatch()
    mp.delenv("MLFLOW_TRACKING_URI", raising=False)
    ingest([str(corpora / "wikitext2-valid.raw.txt"), str(corpora / "gutenberg")], "en", home=home)
    train_tokenizer("en", home=home, cfg=TokenizerJobConfig(vocab_size=3000))
    yield home
    mp.undo()


@pytest.fixture(scope="module")
def shards(home: Path) -> str:
    return build_shards("en", "en", home=home, cfg=ShardsConfig(max_seq_len=64, eval_share=0.1))["id"]


@pytest.fixture(scope="module")
def first_run(home: Path, shards: str) -> dict:
    cfg = TrainConfig(shards=shards, model_overrides=SMALL_MODEL, workers=2, batch_size=32, max_steps=40,
                      eval_every=20, checkpoint_every=20, log_every=10)  # fmt: skip
    return train(cfg, home=home, progress=lambda _: None)


def history(home: Path, run_id: str, key: str) -> list[tuple[int, float]]:
    client = MlflowClient(f"sqlite:///{home}/mlflow.db")
    return sorted((m.step, m.value) for m in client.get_metric_history(run_id, key))


def test_two_worker_ddp_run_learns_tracks_and_registers(home: Path, first_run: dict) -> None:
    assert first_run["final_step"] == 40 and first_run["ranks_in_sync"] is True
    losses = [v for _, v in history(home, first_run["run_id"], "loss")]
    assert [s for s, _ in history(home, first_run["run_id"], "loss")] == list(range(1, 41))
    assert sum(losses[-5:]) / 5 < sum(losses[:5]) / 5 - 0.5
    assert [s for s, _ in history(home, first_run["run_id"], "eval_sop_acc")] == [20, 40]
    for key in ("lr", "grad_norm", "tokens_per_s", "samples_per_s", "mlm_acc", "sop_acc"):
        assert len(history(home, first_run["run_id"], key)) == 40, key
    assert first_run["model_version"] == 1 and first_run["alias_uri"] == "models:/albert-tiny@candidate"

    mlflow.set_tracking_uri(first_run["tracking_uri"])
    model = mlflow.pyfunc.load_model(first_run["alias_uri"])
    out = model.predict(pd.DataFrame({"text": ["The [MASK] of the river ."], "text_b": ["It was long ."]}))
    assert 0.0 <= out["sop_swapped_probability"][0] <= 1.0 and "token" in out["fill_mask"][0][0][0]
    run = MlflowClient(first_run["tracking_uri"]).get_run(first_run["run_id"])
    assert run.data.params["train.workers"] == "2" and run.data.tags["preset"] == "tiny"
    assert {i.dataset.name for i in run.inputs.dataset_inputs} == {
        f"shards/{read_json(Path(first_run['model_dir']).parent / 'run.json')['config']['shards']}/{s}"
        for s in ("train", "eval")
    }


def test_resume_continues_the_same_mlflow_run_without_duplicate_steps(
    home: Path, first_run: dict, capsys: pytest.CaptureFixture
) -> None:
    argv = ["train", "--resume", first_run["run_name"], "--max-steps", "50", "--home", str(home), "--json"]
    assert main(argv) == 0
    import json

    resumed = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert resumed["run_id"] == first_run["run_id"] and resumed["final_step"] == 50
    assert [s for s, _ in history(home, first_run["run_id"], "loss")] == list(range(1, 51))
    assert resumed["model_version"] == 2
    record = read_json(Path(first_run["model_dir"]).parent / "run.json")
    assert record["attempts"] == ["attempt-1", "attempt-2"] and record["final_step"] == 50


def test_train_errors_are_one_line(home: Path, shards: str, capsys: pytest.CaptureFixture) -> None:
    assert main(["train", "--shards", "nope", "--home", str(home)]) == 2
    assert "unknown shards 'nope'" in capsys.readouterr().err
    assert main(["train", "--shards", "x", "--batch-size", "33", "--home", str(home)]) == 2
    assert "divisible" in capsys.readouterr().err
    # a rate that blows up: the workers stop before the update that would spread NaN into the weights
    diverging = [
        "--lr",
        "5000",
        "--max-steps",
        "20",
        "--workers",
        "1",
        "--batch-size",
        "8",
        "--eval-every",
        "20",
        "--max-failures",
        "0",
    ]  # no restart: from a checkpoint it would diverge again
    assert main(["train", "--shards", shards, *diverging, "--home", str(home)]) == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert re.search(
        r"diverged: (loss|gradient norm) is (nan|-?inf) at step \d+ .+stopped before the update", err
    )
