"""A task failing in the middle of the real ingest flow (temporary Prefect API, real files): Prefect retries it,
the flow fails with the reason while the fault lasts, and once it is gone a rerun — or a retry still pending —
finishes, reusing what the earlier steps made.

The fault is in the storage, not in the code: a plain file sits where the shards folder must be created, so the
shards task fails after tokenizing (an OSError: transient as far as the task can tell, hence retried)."""

import threading
import time
from pathlib import Path

import pytest
from prefect.client.orchestration import get_client

from flows.pipeline import ingest_flow

pytestmark = pytest.mark.usefixtures("uses_ray", "uses_servers")

SHARDS = {"max_seq_len": 64, "eval_share": 0.1}
TOKENIZER = {"vocab_size": 1000}


def api(path: str, body: dict) -> list[dict]:
    with get_client(sync_client=True) as client:
        return client.request("POST", path, json={"limit": 50, "offset": 0, **body}).json()


def task_runs(flow_run_id) -> dict[str, dict]:
    runs = api(
        "/task_runs/filter", {"task_runs": {"flow_run_id": {"any_": [str(flow_run_id)]}}, "sort": "ID_DESC"}
    )
    return {run["name"].rsplit("-", 1)[0]: run for run in runs}


def remove_when_retry_is_pending(blocker: Path, removed: dict) -> None:
    """Clear the fault while the shards task waits for its retry: the retry then succeeds."""
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        waiting = api("/task_runs/filter", {"task_runs": {"name": {"like_": "shards_task"},
                                                          "state": {"name": {"any_": ["AwaitingRetry"]}}}})  # fmt: skip
        if waiting:
            blocker.unlink()
            removed["at"] = time.time()
            return
        time.sleep(0.5)


@pytest.fixture
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    return tmp_path / "home"


def test_a_failing_middle_task_is_retried_fails_the_flow_and_a_rerun_resumes(
    home: Path, corpora: Path
) -> None:
    sources = [str(corpora / "gutenberg" / "carroll-alice.txt")]
    blocker = home / "shards"
    blocker.parent.mkdir(parents=True)
    blocker.write_text("not a folder")

    failed = ingest_flow(sources, "alice", home=str(home), tokenizer_config=TOKENIZER, shards_config=SHARDS,
                         return_state=True)  # fmt: skip
    assert failed.is_failed()
    flow_run_id = failed.state_details.flow_run_id
    runs = task_runs(flow_run_id)
    assert runs["ingest_task"]["state"]["name"] == "Completed" and runs["ingest_task"]["run_count"] == 1
    assert runs["tokenizer_task"]["state"]["name"] == "Completed"
    assert (
        runs["shards_task"]["state"]["name"] == "Failed" and runs["shards_task"]["run_count"] == 3
    )  # 2 retries
    (flow_run,) = api("/flow_runs/filter", {"flow_runs": {"id": {"any_": [str(flow_run_id)]}}})
    assert flow_run["state"]["name"] == "Failed" and str(blocker) in flow_run["state"]["message"]
    with pytest.raises(OSError):
        failed.result()

    # The fault lasts into the rerun's first shards attempt and is cleared while its retry waits.
    removed: dict = {}
    clearer = threading.Thread(target=remove_when_retry_is_pending, args=(blocker, removed), daemon=True)
    clearer.start()
    rerun = ingest_flow(sources, "alice", home=str(home), tokenizer_config=TOKENIZER, shards_config=SHARDS,
                        return_state=True)  # fmt: skip
    clearer.join()
    assert removed and rerun.is_completed()
    result = rerun.result()
    assert result["ingest"]["version"] is None and "nothing new" in result["ingest"]["message"]
    assert result["tokenizer"]["reused"] is True  # not retrained
    assert result["shards"]["reused"] is False and result["shards"]["instances"]["train"] > 0
    runs = task_runs(rerun.state_details.flow_run_id)
    assert runs["shards_task"]["state"]["name"] == "Completed" and runs["shards_task"]["run_count"] == 2
