"""The Prefect flows on a real temporary Prefect API, with real Ray, MLflow (SQLite) and the shared corpora:
ingestion publishes an artifact and an event and is cached on rerun; training registers a candidate; promotion
gates it; a failing task fails the flow with the user's reason."""

import os
import time
from pathlib import Path

import pytest
from mlflow import MlflowClient
from prefect.client.orchestration import get_client
from prefect.events.filters import EventFilter, EventNameFilter

from albert_core.errors import UserError
from flows.pipeline import CORPUS_PUBLISHED, ingest_flow, promote_flow, train_flow

pytestmark = pytest.mark.usefixtures("uses_ray", "uses_servers")

SHARDS = {"max_seq_len": 64, "eval_share": 0.1}
TOKENIZER = {"vocab_size": 2000}


@pytest.fixture(scope="module")
def home(tmp_path_factory: pytest.TempPathFactory) -> Path:
    mp = pytest.MonkeyPatch()
    mp.delenv("MLFLOW_TRACKING_URI", raising=False)
    yield tmp_path_factory.mktemp("home")
    mp.undo()


@pytest.fixture(scope="module")
def ingested(home: Path, corpora: Path) -> dict:
    return ingest_flow([str(corpora / "wikitext2-valid.raw.txt")], "wiki", home=str(home),
                       tokenizer_config=TOKENIZER, shards_config=SHARDS)  # fmt: skip


def api(path: str, body: dict) -> list[dict]:
    """POST a filter to the Prefect API. (The 3.8.8 sync client's read_artifacts / read_task_runs /
    read_flow_runs send nulls for limit and sort that its own server rejects with 422.)"""
    with get_client(sync_client=True) as client:
        return client.request("POST", path, json={"limit": 50, "offset": 0, **body}).json()


def task_states(flow_run_id) -> dict[str, str]:
    runs = api(
        "/task_runs/filter", {"task_runs": {"flow_run_id": {"any_": [str(flow_run_id)]}}, "sort": "ID_DESC"}
    )
    return {run["name"].rsplit("-", 1)[0]: run["state"]["name"] for run in runs}


def test_ingest_flow_publishes_then_reruns_from_cache(home: Path, corpora: Path, ingested: dict) -> None:
    assert ingested["ingest"]["version"] == 1 and ingested["ingest"]["quarantined"]["total"] == 0
    assert ingested["tokenizer"]["reused"] is False and ingested["shards"]["reused"] is False
    assert ingested["shards"]["instances"]["train"] > 1000

    (artifact,) = api(
        "/artifacts/filter", {"artifacts": {"key": {"any_": ["albert-ingest-wiki"]}}, "sort": "CREATED_DESC"}
    )
    assert ingested["shards"]["id"] in artifact["data"] and "quarantined" in artifact["data"]
    with get_client(sync_client=True) as client:
        deadline, events = time.monotonic() + 60, []
        while not events and time.monotonic() < deadline:  # the API persists events asynchronously
            events = client.read_events(
                EventFilter(event=EventNameFilter(name=[CORPUS_PUBLISHED])), limit=50
            ).events
            # (other test processes sharing this PREFECT_HOME publish other corpora)
            events = [e for e in events if e.resource.id == "albert.corpus.wiki"]
            time.sleep(1)
    assert [e.payload["shards"] for e in events] == [ingested["shards"]["id"]]
    assert events[0].resource.id == "albert.corpus.wiki"

    # The same sources again: nothing new is ingested, the vocabulary is kept, the shards come from Prefect's cache,
    # and no event is emitted (no new version).
    state = ingest_flow([str(corpora / "wikitext2-valid.raw.txt")], "wiki", home=str(home),
                        tokenizer_config=TOKENIZER, shards_config=SHARDS, return_state=True)  # fmt: skip
    again = state.result()
    assert again["ingest"]["version"] is None and "nothing new" in again["ingest"]["message"]
    assert again["tokenizer"]["reused"] is True
    assert again["shards"]["id"] == ingested["shards"]["id"]
    assert task_states(state.state_details.flow_run_id)["shards_task"] == "Cached"


def test_train_then_promote_flows(home: Path, ingested: dict) -> None:
    config = {"model_overrides": {"num_hidden_layers": 2}, "eval_every": 20, "checkpoint_every": 20,
              "model_name": "albert-flows-test", "max_steps": 20}  # fmt: skip
    trained = train_flow(corpus="wiki", home=str(home), train_config=config)  # newest shards of "wiki"
    assert trained["final_step"] == 20 and trained["model_version"] == 1
    client = MlflowClient(f"sqlite:///{home}/mlflow.db")
    assert client.get_model_version_by_alias("albert-flows-test", "candidate").version in (1, "1")

    decision = promote_flow("albert-flows-test", home=str(home))
    assert decision["promoted"] is True and decision["champion_version"] == 1
    assert client.get_model_version_by_alias("albert-flows-test", "champion").version in (1, "1")


def test_a_failing_task_fails_the_flow_with_the_reason(home: Path) -> None:
    state = train_flow(
        shards="0000000000000000", train_config={"max_steps": 5}, home=str(home), return_state=True
    )
    assert state.is_failed()
    with pytest.raises(UserError, match="unknown shards '0000000000000000'"):
        state.result()
    (run,) = api("/flow_runs/filter", {"flow_runs": {"id": {"any_": [str(state.state_details.flow_run_id)]}},
                                       "sort": "ID_DESC"})  # fmt: skip
    assert run["state"]["name"] == "Failed" and "unknown shards" in run["state"]["message"]


@pytest.fixture(scope="module")
def ray_cluster(tmp_path_factory: pytest.TempPathFactory) -> str:
    """A separate Ray head node on loopback (its own GCS, dashboard and Jobs API), stopped by PID afterwards
    so the local Ray runtime of this test process survives."""
    import socket
    import subprocess
    import sys
    import tempfile

    import psutil

    def free_port() -> int:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            return s.getsockname()[1]

    temp_dir = tempfile.mkdtemp(prefix="ray-", dir="/tmp")  # short: Ray's socket paths have a length limit
    gcs, dashboard, agent, agent_grpc, runtime_env, metrics = (free_port() for _ in range(6))
    ray = Path(sys.executable).with_name("ray")
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    env["PATH"] = f"{ray.parent}{os.pathsep}{env['PATH']}"  # a node whose `python` has the project installed
    subprocess.run([str(ray), "start", "--head", "--node-ip-address=127.0.0.1", f"--port={gcs}",
                    f"--dashboard-port={dashboard}", "--dashboard-host=127.0.0.1", "--num-cpus=4",
                    # fixed by default (52365 …): taken by this process's own local Ray runtime
                    f"--dashboard-agent-listen-port={agent}", f"--dashboard-agent-grpc-port={agent_grpc}",
                    f"--runtime-env-agent-port={runtime_env}", f"--metrics-export-port={metrics}",
                    f"--temp-dir={temp_dir}", "--disable-usage-stats"],
                   check=True, env=env, capture_output=True, timeout=180)  # fmt: skip
    yield f"http://127.0.0.1:{dashboard}"
    mine = [
        p for p in psutil.process_iter(["cmdline"]) if any(temp_dir in a for a in (p.info["cmdline"] or []))
    ]
    procs = {c for p in mine for c in [p, *p.children(recursive=True)]}
    for p in procs:
        p.kill()
    psutil.wait_procs(list(procs), timeout=30)


def test_train_flow_submits_a_ray_job_to_a_cluster(home: Path, ingested: dict, ray_cluster: str) -> None:
    config = {"model_overrides": {"num_hidden_layers": 2}, "eval_every": 10, "checkpoint_every": 10,
              "model_name": "albert-flows-job", "max_steps": 10}  # fmt: skip
    trained = train_flow(shards=ingested["shards"]["id"], home=str(home), ray_address=ray_cluster,
                         train_config=config)  # fmt: skip
    assert trained["ray_job_id"].startswith("raysubmit_")
    assert trained["final_step"] == 10 and trained["model_uri"] == "models:/albert-flows-job/1"
    assert MlflowClient(f"sqlite:///{home}/mlflow.db").get_run(trained["run_id"]).info.status == "FINISHED"

    state = train_flow(shards="0000000000000000", train_config={"max_steps": 5}, home=str(home),
                       ray_address=ray_cluster, return_state=True)  # fmt: skip
    assert state.is_failed()  # the CLI's one line, as a UserError: not retried
    with pytest.raises(UserError, match=r"^unknown shards '0000000000000000'.* \(Ray job raysubmit_\w+\)$"):
        state.result()


def test_a_data_job_with_a_user_mistake_fails_once_with_its_line(home: Path, ray_cluster: str) -> None:
    state = ingest_flow([str(home / "missing.txt")], "nothing", home=str(home), ray_address=ray_cluster,
                        return_state=True)  # fmt: skip
    assert state.is_failed()
    with pytest.raises(UserError, match=r"missing\.txt.* \(Ray job raysubmit_\w+\)$"):
        state.result()
    runs = api("/task_runs/filter", {"task_runs": {"flow_run_id": {"any_": [str(state.state_details.flow_run_id)]}},
                                     "sort": "ID_DESC"})  # fmt: skip
    assert [(r["name"].rsplit("-", 1)[0], r["run_count"]) for r in runs] == [("ingest_task", 1)]
