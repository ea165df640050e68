"""Faults, for real: a Ray Train worker SIGKILLed mid-run, the MLflow server killed while metrics are being
logged and while a run trains, and tampered checkpoints and downloaded models. Each test counts what MLflow holds
afterwards: every step of every metric exactly once."""

import logging
import os
import signal
import threading
import time
from collections import Counter
from pathlib import Path

import psutil
import pytest
from mlflow import MlflowClient

from albert_core.checkpoint import load_model
from albert_core.errors import UserError
from albert_core.storage import read_json
from training import tracking as m
from training.config import TrainConfig
from training.registry import configure_mlflow, download_model
from training.run import METRICS_SPILL, train
from training.tracking import FAST_FAIL_ENV, MlflowTracker, replay_spilled

SMALL_MODEL = {"num_hidden_layers": 2}
KEYS = ("loss", "lr", "grad_norm")


def step_counts(client: MlflowClient, run_id: str, key: str) -> Counter:
    return Counter(metric.step for metric in client.get_metric_history(run_id, key))


def assert_each_step_once(client: MlflowClient, run_id: str, keys, steps: int) -> None:
    for key in keys:
        counts = step_counts(client, run_id, key)
        assert sorted(counts) == list(range(1, steps + 1)), f"{key}: steps missing"
        assert set(counts.values()) == {1}, (
            f"{key}: duplicate steps {[s for s, n in counts.items() if n > 1]}"
        )


def fake_metrics(step: int) -> dict[str, float]:
    return {"loss": 10.0 / step, "lr": step * 1e-4, "grad_norm": float(step % 7)}


def test_tracker_buffers_through_an_outage_spills_what_it_cannot_deliver_and_replays_it(
    mlflow_server, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    for var, value in FAST_FAIL_ENV.items():
        monkeypatch.setenv(var, value)
    client = MlflowClient(mlflow_server.url)
    run_id = client.create_run(client.create_experiment("outage")).info.run_id
    spill = tmp_path / "runs" / "r" / METRICS_SPILL
    tracker = MlflowTracker(mlflow_server.url, run_id, spill_path=spill, flush_every=5, max_pending=45,
                            retry_max_s=0.2, system_metrics=False)  # fmt: skip
    caplog.set_level(logging.WARNING, logger=m.__name__)

    for step in range(1, 11):
        tracker.log(fake_metrics(step), step)
    assert tracker.delivered == 30 and tracker.pending == 0

    mlflow_server.kill()  # down for steps 11..30: buffered, then (over the bound) spilled
    started = time.perf_counter()
    for step in range(11, 31):
        tracker.log(fake_metrics(step), step)
    outage_overhead_s = time.perf_counter() - started
    unreachable = [r.getMessage() for r in caplog.records if "unreachable" in r.getMessage()]
    assert len(unreachable) == 1 and mlflow_server.url in unreachable[0] and "pending" in unreachable[0]
    assert any("more than 45 metrics are pending" in r.getMessage() for r in caplog.records)
    assert tracker.spilled == 48 and tracker.pending == 12 and spill.is_file()

    mlflow_server.start()
    time.sleep(0.3)  # past the backoff
    tracker.log(fake_metrics(31), 31)  # the next flush delivers the buffer and replays the spill file
    assert tracker.pending == 0 and not spill.exists()
    assert_each_step_once(client, run_id, KEYS, 31)
    assert any("reachable again" in r.getMessage() for r in caplog.records)

    mlflow_server.kill()  # down at the end: close() spills instead of crashing
    for step in range(32, 41):
        tracker.log(fake_metrics(step), step)
    tracker.close()
    assert any(str(spill) in r.getMessage() for r in caplog.records)
    assert len(spill.read_text().splitlines()) == 27  # steps 32..40

    mlflow_server.start()
    assert replay_spilled(mlflow_server.url, run_id, spill) == 27 and not spill.exists()
    assert_each_step_once(client, run_id, KEYS, 40)
    print(f"\noutage: 20 steps logged while down in {outage_overhead_s:.2f}s; "
          f"{tracker.delivered} metrics delivered live, {tracker.spilled} spilled and replayed")  # fmt: skip


TRAIN_KEYS = ("loss", "mlm_loss", "sop_loss", "mlm_acc", "sop_acc", "lr", "grad_norm", "tokens_per_s",
              "samples_per_s")  # fmt: skip


def checkpoint_steps(home: Path, ignore: set[Path]) -> list[int]:
    """Steps of the checkpoints of the runs under `home` that are not in `ignore` (earlier tests' runs). Ray
    copies a checkpoint into the run's storage file by file: one still being copied (or already rotated out) is
    skipped, not read half-written (which would end the watching thread, and the kill with it)."""
    runs = [run for run in home.glob("runs/*") if run not in ignore]
    steps = []
    for path in (p for run in runs for p in run.glob("ray/**/checkpoint.json")):
        try:
            steps.append(read_json(path)["step"])
        except (UserError, KeyError):
            continue
    return sorted(steps)


def ray_train_workers(since: float) -> list[psutil.Process]:
    """This test process's own Ray Train workers started after `since` (other Ray sessions may share the
    machine, and an earlier run's workers may still be exiting)."""
    return [
        p
        for p in psutil.Process().children(recursive=True)
        if "RayTrainWorker" in " ".join(_cmdline(p)) and _started(p) >= since
    ]


def _started(process: psutil.Process) -> float:
    try:
        return process.create_time()
    except psutil.Error:
        return 0.0


def _cmdline(process: psutil.Process) -> list[str]:
    try:
        return process.cmdline()
    except psutil.Error:
        return []


def kill_a_worker_after_checkpoint(home: Path, step: int, last: int, killed: dict) -> None:
    """SIGKILL one worker once a checkpoint at `step` or later is on disk, but only while the run is still short
    of `last` (a kill after the final step would test nothing). Ray Train registers a checkpoint a little after
    its files land, so `step` should be a later checkpoint than the one the restart is expected to use."""
    earlier, since = set(home.glob("runs/*")), time.time()
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline:
        reached = [s for s in checkpoint_steps(home, earlier) if s >= step]
        if reached and max(reached) >= last:
            killed["too_late"] = max(reached)
            return
        workers = ray_train_workers(since)
        if reached and len(workers) == 2:
            victim = min(workers, key=lambda p: p.pid)
            killed.update(pid=victim.pid, checkpoint=reached[0], at=time.time())
            os.kill(victim.pid, signal.SIGKILL)
            return
        time.sleep(0.2)


@pytest.mark.slow
@pytest.mark.usefixtures("uses_ray")
def test_a_killed_worker_resumes_from_the_checkpoint_without_losing_or_repeating_a_step(
    wiki_shards: tuple[Path, str], tmp_path: Path
) -> None:
    home, shards = wiki_shards
    cfg = TrainConfig(shards=shards, model_overrides=SMALL_MODEL, workers=2, batch_size=16, max_steps=40,
                      eval_every=20, eval_sequences=64, checkpoint_every=4, log_every=4, max_failures=2,
                      model_name="albert-faults")  # fmt: skip
    killed: dict = {}
    killer = threading.Thread(target=kill_a_worker_after_checkpoint, args=(home, 12, 32, killed), daemon=True)
    killer.start()
    summary = train(cfg, home=home, progress=lambda _: None)
    killer.join()

    assert "pid" in killed, f"no Ray Train worker was killed in time: {killed}"
    assert summary["final_step"] == 40 and summary["restarts"] == 1 and summary["ranks_in_sync"]
    record = read_json(home / "runs" / summary["run_name"] / "run.json")
    assert record["attempts"] == ["attempt-1"] and record["registered"] is True
    client = MlflowClient(summary["tracking_uri"])
    (run,) = client.search_runs(
        [client.get_experiment_by_name("albert-pretraining").experiment_id],
        f"attributes.run_name = '{summary['run_name']}'",
    )
    assert run.info.run_id == summary["run_id"]
    assert_each_step_once(client, run.info.run_id, TRAIN_KEYS, 40)
    for key in ("eval_loss", "eval_mlm_acc", "eval_sop_acc"):
        assert step_counts(client, run.info.run_id, key) == Counter({20: 1, 40: 1}), key
    resumed_at = min(
        metric.timestamp
        for metric in client.get_metric_history(run.info.run_id, "loss")
        if metric.timestamp > killed["at"] * 1000
    )
    print(f"\nworker {killed['pid']} killed after checkpoint {killed['checkpoint']}; first step after the "
          f"restart {resumed_at / 1000 - killed['at']:.1f}s later; run took {summary['seconds']}s")  # fmt: skip

    configure_mlflow(home)
    folder = download_model(
        summary["model_uri"], tmp_path / "model"
    )  # verified against the registered sha256
    assert load_model(folder).config.num_hidden_layers == 2

    # Tampered copies are refused with one clear line: a checkpoint's weights, a registered model's artifact.
    weights = next((home / "mlartifacts").rglob("artifacts/model/model.safetensors"))
    weights.write_bytes(weights.read_bytes()[:-8] + bytes(8))
    with pytest.raises(UserError, match="does not match its recorded sha256"):
        download_model(summary["model_uri"], tmp_path / "tampered")


def kill_the_server_after_checkpoint(home: Path, step: int, server, killed: dict) -> None:
    earlier = set(home.glob("runs/*"))
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline:
        if any(s >= step for s in checkpoint_steps(home, earlier)):
            server.kill()
            killed["at"] = time.time()
            return
        time.sleep(0.2)


@pytest.mark.slow
def test_training_outlives_an_mlflow_outage_and_registers_once_the_server_is_back(
    wiki_shards: tuple[Path, str], mlflow_server, monkeypatch: pytest.MonkeyPatch
) -> None:
    home, shards = wiki_shards
    monkeypatch.setenv("MLFLOW_TRACKING_URI", mlflow_server.url)
    for var, value in FAST_FAIL_ENV.items():  # the driver's own requests too: fail in seconds, not minutes
        monkeypatch.setenv(var, value)
    cfg = TrainConfig(shards=shards, model_overrides=SMALL_MODEL, workers=2, batch_size=16, max_steps=16,
                      eval_every=8, eval_sequences=64, checkpoint_every=4, log_every=4,
                      model_name="albert-outage")  # fmt: skip
    killed: dict = {}
    killer = threading.Thread(
        target=kill_the_server_after_checkpoint, args=(home, 4, mlflow_server, killed), daemon=True
    )
    killer.start()
    with pytest.raises(
        UserError, match=f"MLflow at {mlflow_server.url} is unreachable, so run .* is not registered"
    ):
        train(cfg, home=home, progress=lambda _: None)
    killer.join()
    assert killed, "the server outlived the training"

    (run_dir,) = [p.parent for p in home.glob("runs/*/run.json") if read_json(p)["config"]["model_name"] == cfg.model_name]  # fmt: skip
    record = read_json(run_dir / "run.json")
    assert record["final_step"] == 16 and record["registered"] is False
    spilled = len((run_dir / METRICS_SPILL).read_text().splitlines())

    mlflow_server.start()  # same port, same store
    summary = train(cfg, home=home, resume=record["run_name"], progress=lambda _: None)
    assert summary["model_uri"] == "models:/albert-outage/1" and summary["final_step"] == 16
    assert not (run_dir / METRICS_SPILL).exists() and read_json(run_dir / "run.json")["registered"] is True
    client = MlflowClient(mlflow_server.url)
    assert_each_step_once(client, record["mlflow_run_id"], TRAIN_KEYS, 16)
    print(
        f"\nMLflow down from step >= 4 to the end: {spilled} metrics spilled, all replayed after the restart"
    )
