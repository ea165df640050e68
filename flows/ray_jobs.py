"""A pipeline step as a Ray job: how `train_flow` and `ingest_flow` run their steps on a Ray cluster.

Each step is the `albert` CLI with `--json` (run as `python -m flows.cli`, so an uploaded working directory is the
code that runs), submitted through the Jobs API of a head node (its dashboard URL, http://HOST:8265). Its log is
streamed into the flow's log while it runs; its result is the JSON object on the last line of that log. A user's
mistake inside the job (the CLI exits 2 with `albert: error: …`) comes back as a `UserError` with that line, so
Prefect does not retry it; any other failure is a `RuntimeError` with Ray's reason and the log's tail.
"""

from __future__ import annotations

import json
import os
import shlex
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from albert_core.errors import UserError

# Where the flows find the Jobs API when no ray_address is given: ours, then Ray's own (`ray job submit` reads it).
# Not RAY_ADDRESS: that one names the cluster `ray.init` joins (GCS host:port) and refuses http URLs.
RAY_JOBS_ADDRESS = ("ALBERT_RAY_ADDRESS", "RAY_API_SERVER_ADDRESS")
PROJECT_ROOT = Path(__file__).resolve().parents[1]
UPLOAD_EXCLUDES = [".venv", ".git", "*.egg-info", ".albert", ".albert-stack", "results"]
PASSED_ON = ("ALBERT_AUTOSCALER",)  # settings of this process the job's driver must see too
CLI_ERROR = "albert: error: "


def jobs_address(given: str | None = None) -> str | None:
    """`given`, else the first of $ALBERT_RAY_ADDRESS, $RAY_API_SERVER_ADDRESS that is set; None: run locally."""
    return given or next((os.environ[v] for v in RAY_JOBS_ADDRESS if os.environ.get(v)), None)


def run_cli_job(
    address: str,
    argv: Sequence[str],
    *,
    home: str,
    kind: str,
    upload_project: bool,
    log: Callable[[str], None],
    poll_s: float = 2.0,
) -> dict[str, Any]:
    """Run `albert <argv> --json` as a Ray job at `address`; return its JSON summary plus `ray_job_id`.

    `kind` goes into the job's metadata (`{"albert": kind}`) so jobs can be told apart in the dashboard.
    ALBERT_HOME and the tracking URI are passed on: they must name storage the cluster can reach.
    `upload_project` ships this source tree as the job's working directory (a cluster whose image has the
    project installed does not need it).
    """
    from ray.job_submission import JobStatus, JobSubmissionClient

    from training.registry import tracking_uri

    client = JobSubmissionClient(address)
    entrypoint = shlex.join(["python", "-m", "flows.cli", *argv, "--json"])
    env = {"ALBERT_HOME": home, "MLFLOW_TRACKING_URI": tracking_uri(Path(home))}
    env |= {k: os.environ[k] for k in PASSED_ON if k in os.environ}
    runtime_env: dict[str, Any] = {"env_vars": env}
    if upload_project:
        runtime_env |= {"working_dir": str(PROJECT_ROOT), "excludes": UPLOAD_EXCLUDES}
    job_id = _submit(client, entrypoint=entrypoint, runtime_env=runtime_env, metadata={"albert": kind})
    log(f"submitted Ray job {job_id} ({kind}) to {address}")
    shown = 0
    while True:
        status = client.get_job_status(job_id)
        logs = client.get_job_logs(job_id)
        for line in logs[shown:].splitlines():
            log(f"[{job_id}] {line}")
        shown = len(logs)
        if status.is_terminal():
            break
        time.sleep(poll_s)
    lines = logs.splitlines()
    if status != JobStatus.SUCCEEDED:
        mistake = next((line for line in reversed(lines) if line.startswith(CLI_ERROR)), None)
        if mistake is not None:
            raise UserError(f"{mistake.removeprefix(CLI_ERROR)} (Ray job {job_id})")
        tail = "\n".join(lines[-20:])
        raise RuntimeError(f"Ray job {job_id} {status.value}: {client.get_job_info(job_id).message}\n{tail}")
    for line in reversed(lines):
        if line.startswith("{"):
            return {**json.loads(line), "ray_job_id": job_id}
    raise RuntimeError(f"Ray job {job_id} succeeded but printed no JSON summary")


def _submit(client: Any, wait_s: float = 120.0, **job: Any) -> str:
    """`submit_job`, retried while a freshly started head node has no job agent yet (Ray answers HTTP 500
    "No available agent"); any other error is raised at once."""
    deadline = time.monotonic() + wait_s
    while True:
        try:
            return client.submit_job(**job)
        except RuntimeError as e:
            if "No available agent" not in str(e) or time.monotonic() > deadline:
                raise
            time.sleep(2)
