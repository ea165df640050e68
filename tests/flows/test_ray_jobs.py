"""The one helper that runs a pipeline step as a Ray job, against a stand-in for Ray's JobSubmissionClient: the
entrypoint is the CLI with --json, the summary is the log's last JSON line, a user's mistake is a UserError."""

import json
import shlex
from pathlib import Path
from typing import Any

import pytest
from ray.job_submission import JobStatus

from albert_core.errors import UserError
from flows import ray_jobs


class FakeClient:
    """Answers like a JobSubmissionClient whose job ends with `status` after printing `logs`."""

    def __init__(self, status: JobStatus, logs: str) -> None:
        self.status, self.logs = status, logs
        self.jobs: list[dict[str, Any]] = []

    def __call__(self, address: str) -> "FakeClient":
        return self

    def submit_job(self, **job: Any) -> str:
        self.jobs.append(job)
        return "raysubmit_test"

    def get_job_status(self, job_id: str) -> JobStatus:
        return self.status

    def get_job_logs(self, job_id: str) -> str:
        return self.logs

    def get_job_info(self, job_id: str) -> Any:
        return type("Info", (), {"message": "Job entrypoint command failed with exit code 1"})()


def run(monkeypatch: pytest.MonkeyPatch, tmp_path: Path, status: JobStatus, logs: str) -> dict[str, Any]:
    client = FakeClient(status, logs)
    monkeypatch.setattr("ray.job_submission.JobSubmissionClient", client)
    monkeypatch.setenv("ALBERT_AUTOSCALER", "1")
    said: list[str] = []
    try:
        return ray_jobs.run_cli_job("http://head:8265", ["tokenize", "--corpus", "wiki"], home=str(tmp_path),
                                    kind="tokenize", upload_project=False, log=said.append)  # fmt: skip
    finally:
        (job,) = client.jobs
        assert shlex.split(job["entrypoint"]) == ["python", "-m", "flows.cli", "tokenize", "--corpus", "wiki",
                                                  "--json"]  # fmt: skip
        assert job["metadata"] == {"albert": "tokenize"} and "working_dir" not in job["runtime_env"]
        env = job["runtime_env"]["env_vars"]
        assert env["ALBERT_HOME"] == str(tmp_path) and env["ALBERT_AUTOSCALER"] == "1"
        assert said[0].startswith("submitted Ray job raysubmit_test (tokenize)")
        assert "[raysubmit_test] progress" in said


def test_the_summary_is_the_last_json_line(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    logs = f"progress\n{json.dumps({'id': 'abc', 'reused': False})}\n"
    assert run(monkeypatch, tmp_path, JobStatus.SUCCEEDED, logs) == {
        "id": "abc",
        "reused": False,
        "ray_job_id": "raysubmit_test",
    }


def test_a_user_mistake_in_the_job_is_a_user_error(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    logs = "progress\nalbert: error: corpus 'wiki' has no versions\n"
    with pytest.raises(UserError, match=r"^corpus 'wiki' has no versions \(Ray job raysubmit_test\)$"):
        run(monkeypatch, tmp_path, JobStatus.FAILED, logs)


def test_any_other_failure_is_a_runtime_error_with_the_tail(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    logs = "progress\nTraceback (most recent call last):\nOSError: disk full\n"
    with pytest.raises(RuntimeError, match=r"Ray job raysubmit_test FAILED: .*exit code 1\n(.|\n)*disk full"):
        run(monkeypatch, tmp_path, JobStatus.FAILED, logs)
