"""Requests Ray can never place fail fast with one line (instead of a run that stays pending forever), or wait
with a message where an autoscaler may add the nodes."""

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from albert_core.errors import UserError
from data_jobs import ray_runtime
from data_jobs.ray_runtime import missing_resources

GiB = 2**30
CPU_NODE = {"CPU": 2.0, "memory": 8 * GiB, "node:127.0.0.1": 1.0}
GPU_NODE = {"CPU": 8.0, "GPU": 1.0, "memory": 64 * GiB}
WHERE = "the Ray cluster at 10.0.0.1:6379"


def test_gpus_missing_from_the_cluster_are_named() -> None:
    line = missing_resources("train", 2, {"CPU": 1, "GPU": 1}, [CPU_NODE, CPU_NODE], where=WHERE)
    assert line == "train asks for 2 workers with 1 GPU each; the Ray cluster at 10.0.0.1:6379 has 0 GPUs"


def test_a_request_that_fits_passes() -> None:
    assert missing_resources("train", 4, {"CPU": 1, "GPU": 0}, [CPU_NODE, CPU_NODE], where=WHERE) is None
    assert missing_resources("train", 2, {"CPU": 1, "GPU": 1}, [GPU_NODE, GPU_NODE], where=WHERE) is None
    assert missing_resources("train", 2, {"CPU": 1}, [CPU_NODE, CPU_NODE], where=WHERE, spread=True) is None


def test_too_few_cpus_in_total() -> None:
    line = missing_resources("train", 5, {"CPU": 1}, [CPU_NODE, CPU_NODE], where=WHERE)
    assert line == "train asks for 5 workers with 1 CPU each; the Ray cluster at 10.0.0.1:6379 has 4 CPUs"


def test_enough_in_total_but_no_node_holds_a_whole_worker() -> None:
    # 2 GPUs and 16 CPUs in total, but a worker needs 1 GPU and 10 CPUs on one node
    line = missing_resources("tokenizer", 1, {"CPU": 10, "GPU": 1}, [GPU_NODE, GPU_NODE], where=WHERE)
    assert (
        line
        == "tokenizer asks for 1 worker with 10 CPUs and 1 GPU each; the Ray cluster at 10.0.0.1:6379 has room for 0"
    )
    line = missing_resources("job", 1, {"memory": 16 * GiB}, [CPU_NODE, CPU_NODE], where=WHERE)
    assert (
        line
        == "job asks for 1 worker with 16.0 GiB of memory each; the Ray cluster at 10.0.0.1:6379 has room for 0"
    )


def test_strict_spread_needs_one_node_per_worker() -> None:
    line = missing_resources("train", 3, {"CPU": 1}, [CPU_NODE, CPU_NODE], where=WHERE, spread=True)
    assert (
        line
        == "train asks for 3 workers with 1 CPU each on separate nodes; the Ray cluster at 10.0.0.1:6379 has room for 2"
    )


def test_with_an_autoscaler_it_waits_with_a_message(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(ray_runtime.ray, "nodes", lambda: [{"Alive": True, "Resources": CPU_NODE},
                                                           {"Alive": False, "Resources": GPU_NODE}])  # fmt: skip
    monkeypatch.setenv("RAY_ADDRESS", "10.0.0.1:6379")
    monkeypatch.delenv(ray_runtime.AUTOSCALER_ENV, raising=False)
    with pytest.raises(UserError, match=r"^train asks for 1 worker with 1 GPU each; .* has 0 GPUs$"):
        ray_runtime.require_resources("train", 1, {"CPU": 1, "GPU": 1})  # the dead node's GPU does not count

    monkeypatch.setenv(ray_runtime.AUTOSCALER_ENV, "1")
    said: list[str] = []
    ray_runtime.require_resources("train", 1, {"CPU": 1, "GPU": 1}, log=said.append)
    assert said == ["train asks for 1 worker with 1 GPU each; the Ray cluster at 10.0.0.1:6379 has 0 GPUs now; "
                    "waiting for the autoscaler to add it (ALBERT_AUTOSCALER=1)"]  # fmt: skip


@pytest.mark.usefixtures("uses_ray")
def test_train_gpu_on_a_cpu_only_runtime_exits_2_with_one_line_quickly(
    wiki_shards: tuple[Path, str], tmp_path: Path
) -> None:
    home, shards = wiki_shards
    env = {k: v for k, v in os.environ.items() if k not in ("RAY_ADDRESS", "MLFLOW_TRACKING_URI")}
    env.pop(ray_runtime.AUTOSCALER_ENV, None)
    started = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "flows.cli", "train", "--shards", shards, "--home", str(home),
                           "--gpu", "--workers", "2", "--batch-size", "8", "--json"],
                          env=env, cwd=tmp_path, capture_output=True, text=True, timeout=120)  # fmt: skip
    seconds = time.perf_counter() - started
    assert proc.returncode == 2, proc.stderr[-2000:]
    errors = [line for line in proc.stderr.splitlines() if line.startswith("albert: error:")]
    assert errors == [
        "albert: error: train asks for 2 workers with 1 GPU each; the local Ray runtime has 0 GPUs"
    ]
    assert "Traceback" not in proc.stderr and proc.stdout == ""
    assert seconds < 60, f"took {seconds:.0f} s"
    assert not (home / "runs").exists() or not any((home / "runs").iterdir())  # failed before a run was made
