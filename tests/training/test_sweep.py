"""`albert sweep` on real text: a 4-trial Ray Tune grid (2 learning rates x 2 optimizers) of a 2-layer model, one
of whose learning rates diverges. Run once through the console entry point (`flows.cli.main`, in this process, on
the Ray runtime the shards fixture started: `ensure_ray` joins it, so no second runtime), then checked against
its results.json, Tune's storage and the MLflow store.
"""

import contextlib
import io
import json
import math
import re
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from albert_core.errors import UserError
from flows.cli import main
from training import tracking as m
from training.sweep import EXPERIMENT, SweepConfig, objective, table

pytestmark = pytest.mark.usefixtures("uses_ray")

TINY = {"num_hidden_layers": 2, "hidden_size": 64, "intermediate_size": 128, "num_attention_heads": 2}
GOOD_LR, DIVERGING_LR = 3e-3, 1e4  # 1e4: the loss is NaN by step 4 with either optimizer
STEPS, EVAL_EVERY = 40, 20
RAY_RESULTS = Path.home() / "ray_results"


@pytest.fixture(scope="module")
def swept(wiki_shards: tuple[Path, str]) -> tuple[Path, dict, list[str]]:
    """(home, the --json result, stdout lines) of one sweep."""
    home, shards = wiki_shards
    had_ray_results = RAY_RESULTS.exists()
    stdout = io.StringIO()
    with contextlib.redirect_stdout(stdout):
        code = main(["sweep", "--shards", shards, "--home", str(home), "--name", "grid",
                     "--lr", f"{GOOD_LR},{DIVERGING_LR}", "--optimizer", "adamw,lamb", "--batch-size", "16",
                     "--model-overrides", json.dumps(TINY), "--max-steps", str(STEPS),
                     "--eval-every", str(EVAL_EVERY), "--json"])  # fmt: skip
    assert code == 0
    assert had_ray_results or not RAY_RESULTS.exists(), "Ray Tune wrote to ~/ray_results"
    lines = stdout.getvalue().splitlines()
    return home, json.loads(lines[-1]), lines


def test_sweep_ranks_finished_trials_by_the_objective_and_keeps_failures(swept) -> None:
    home, result, stdout = swept
    assert len(stdout) == 1, stdout  # Tune printed nothing: --json's line is the only one
    rows = result["trials"]
    assert (len(rows), result["ok"], result["failed"]) == (4, 2, 2)
    ok = [r for r in rows if r["status"] == "ok"]
    assert rows[:2] == ok and [r["rank"] for r in ok] == [1, 2]
    assert {r["params"]["optimizer"] for r in ok} == {"adamw", "lamb"}
    assert all(r["params"]["lr"] == GOOD_LR and r["step"] == STEPS for r in ok)
    for r in ok:  # the score is the documented objective of the final evaluation
        assert result["metric"] == "objective" and r["score"] == pytest.approx(objective(r["metrics"]))
        f = r["metrics"]
        assert r["score"] == pytest.approx(
            f[m.EVAL_MLM_ACC] + f[m.EVAL_SOP_ACC] - f[m.EVAL_SOP_LENGTH_BASELINE]
        )
    assert ok[0]["score"] >= ok[1]["score"]
    best = result["best"]
    assert best["trial"] == ok[0]["trial"] and best["run_id"] == ok[0]["run_id"]
    assert best["config"]["lr"] == GOOD_LR and best["config"]["model_overrides"] == TINY
    assert best["config"]["optimizer"] == ok[0]["params"]["optimizer"]

    failed = rows[2:]  # after the finished ones, unranked, each with its reason
    assert all(r["params"]["lr"] == DIVERGING_LR and r["rank"] is None and r["score"] is None for r in failed)
    for r in failed:
        # the step stops before the update: at the first non-finite gradient norm, or loss
        pattern = r"Diverged: (loss|gradient norm) is (nan|-?inf) at step \d+ \(lr .+\): stopped before the update .+"
        assert re.fullmatch(pattern, r["error"]), r["error"]
        assert Path(r["error_file"]).is_file()  # Tune's traceback, in the sweep's own storage

    sweep_dir = home / "sweeps" / "grid"
    assert json.loads((sweep_dir / "results.json").read_text()) == result
    assert not [p.name for p in sweep_dir.iterdir() if p.name.startswith(".")]  # no temporary file left
    assert {p.name for p in (sweep_dir / "tune").iterdir() if p.is_dir()} == {r["trial"] for r in rows}
    text = table(result)
    assert text.splitlines()[2].split()[:2] == ["1", ok[0]["trial"]]
    assert text.count("failed: Diverged") == 2


def test_each_trial_is_an_mlflow_run_nested_under_the_sweep(swept) -> None:
    home, result, _ = swept
    client = MlflowClient(
        result["tracking_uri"], registry_uri=result["tracking_uri"]
    )  # not an earlier test's
    assert result["tracking_uri"] == f"sqlite:///{home}/mlflow.db"
    experiment = client.get_experiment_by_name(EXPERIMENT)
    runs = client.search_runs([experiment.experiment_id], filter_string="tags.sweep = 'grid'")
    parent = next(r for r in runs if r.info.run_id == result["parent_run_id"])
    assert parent.info.status == "FINISHED" and parent.data.tags["best_run_id"] == result["best"]["run_id"]
    assert parent.data.metrics["best_objective"] == pytest.approx(result["best"]["score"])
    assert json.loads(parent.data.params["sweep.lr"]) == [GOOD_LR, DIVERGING_LR]
    children = {r.info.run_id: r for r in runs if r.data.tags.get("mlflow.parentRunId") == parent.info.run_id}
    assert set(children) == {row["run_id"] for row in result["trials"]}  # one run per trial, no other

    for row in result["trials"]:
        run = children[row["run_id"]]
        assert run.info.run_name == row["trial"]
        params = run.data.params  # the trial's whole TrainConfig and model config
        assert float(params["train.lr"]) == row["params"]["lr"]
        assert params["train.optimizer"] == row["params"]["optimizer"]
        assert (params["train.batch_size"], params["train.max_steps"], params["model.hidden_size"]) == ("16", "40", "64")  # fmt: skip
        losses = client.get_metric_history(run.info.run_id, m.LOSS)
        if row["status"] == "ok":
            assert run.info.status == "FINISHED" and run.data.tags["rank"] == str(row["rank"])
            assert sorted(x.step for x in losses) == list(range(1, STEPS + 1))  # the whole curve
            for key in (m.EVAL_MLM_ACC, m.EVAL_SOP_ACC, m.EVAL_SOP_LENGTH_BASELINE):
                curve = sorted((x.step, x.value) for x in client.get_metric_history(run.info.run_id, key))
                assert [s for s, _ in curve] == [EVAL_EVERY, STEPS]
                assert curve[-1][1] == pytest.approx(row["metrics"][key])  # the table's figures are MLflow's
        else:
            assert run.info.status == "FAILED" and run.data.tags["failure"] == row["error"]
            steps = sorted(x.step for x in losses)  # the finite steps before the divergence are kept
            assert steps and steps == list(range(1, len(steps) + 1)) and len(steps) < 10
            assert all(math.isfinite(x.value) for x in losses)
    assert client.search_registered_models() == []  # trials register no model


def _one_line_error(capsys: pytest.CaptureFixture, argv: list[str]) -> str:
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("albert: error: "), err
    return err[0]


def test_a_bad_search_space_value_is_one_line_before_anything_runs(
    wiki_shards: tuple[Path, str], capsys: pytest.CaptureFixture
) -> None:
    home, shards = wiki_shards
    base = ["sweep", "--shards", shards, "--home", str(home), "--name", "never"]
    assert "--lr: 'fast'" in _one_line_error(capsys, [*base, "--lr", "1e-3,fast"])
    assert "lr must be positive" in _one_line_error(capsys, [*base, "--lr", "1e-3,-1"])
    assert "optimizer values must be one of" in _one_line_error(capsys, [*base, "--optimizer", "adamw,sgd"])
    assert "warmup_steps" in _one_line_error(capsys, [*base, "--warmup-steps", "0,100000"])
    bad_model = json.dumps([TINY, {**TINY, "hidden_size": 65}])
    assert "not divisible" in _one_line_error(capsys, [*base, "--model-overrides", bad_model])
    assert "metric must be one of" in _one_line_error(capsys, [*base, "--metric", "loss"])
    assert not (home / "sweeps" / "never").exists()
    with pytest.raises(UserError, match="batch_size values must be an integer"):
        SweepConfig(shards=shards, batch_size=(16, 8.5))
    with pytest.raises(UserError, match="lists a value twice"):
        SweepConfig(shards=shards, lr=(1e-3, 0.001))


def test_a_sweep_name_is_never_reused(swept, capsys: pytest.CaptureFixture) -> None:
    home, result, _ = swept
    argv = ["sweep", "--shards", result["shards"], "--home", str(home), "--name", "grid", "--lr", "1e-3"]
    assert "sweep grid exists" in _one_line_error(capsys, argv)
