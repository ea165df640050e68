"""The Prefect flows on a real temporary Prefect API, with real Ray, MLflow (SQLite) and the shared corpora:
ingestion publishes an artifact and an event and is cached on rerun; training registers a candidate; promotion
gates it and announces a new champion with an event; fine-tuning starts from the version that event names; a
failing task fails the flow with the user's reason."""

import os
import time
from pathlib import Path

import pytest
from mlflow import MlflowClient
from prefect.client.orchestration import get_client
from prefect.events.filters import EventFilter, EventNameFilter

from albert_core.errors import UserError
from flows.pipeline import (
    CORPUS_PUBLISHED,
    MODEL_PROMOTED,
    finetune_flow,
    ingest_flow,
    promote_flow,
    train_flow,
)
from tests.corpus_helpers import book_sentences

pytestmark = pytest.mark.usefixtures("uses_ray", "uses_servers")

SHARDS = {"max_seq_len": 64, "eval_share": 0.1}
TOKENIZER = {"vocab_size": 2000}
MODEL = "albert-flows-test"


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


def read_events(name: str, resource_id: str, count: int) -> list:
    """The events `name` about `resource_id`, oldest first, once `count` are stored (the API persists events
    asynchronously; other test processes sharing this PREFECT_HOME emit about other resources)."""
    with get_client(sync_client=True) as client:
        deadline, events = time.monotonic() + 60, []
        while len(events) < count and time.monotonic() < deadline:
            found = client.read_events(EventFilter(event=EventNameFilter(name=[name])), limit=50).events
            events = sorted((e for e in found if e.resource.id == resource_id), key=lambda e: e.occurred)
            time.sleep(1)
    return events


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
    events = read_events(CORPUS_PUBLISHED, "albert.corpus.wiki", count=1)
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


@pytest.fixture(scope="module")
def champion(home: Path, ingested: dict) -> dict:
    """MODEL v1, trained by train_flow on the newest shards of "wiki", then promoted by promote_flow: the first
    champion. (train_flow's summary and the promotion decision.)"""
    config = {"model_overrides": {"num_hidden_layers": 2}, "eval_every": 20, "checkpoint_every": 20,
              "model_name": MODEL, "max_steps": 20}  # fmt: skip
    trained = train_flow(corpus="wiki", home=str(home), train_config=config)
    return {"trained": trained, "decision": promote_flow(MODEL, home=str(home))}


def test_train_then_promote_flows(home: Path, champion: dict) -> None:
    trained, decision = champion["trained"], champion["decision"]
    assert trained["final_step"] == 20 and trained["model_version"] == 1
    client = MlflowClient(f"sqlite:///{home}/mlflow.db")
    assert client.get_model_version_by_alias(MODEL, "candidate").version in (1, "1")
    assert decision["promoted"] is True and decision["champion_version"] == 1
    assert client.get_model_version_by_alias(MODEL, "champion").version in (1, "1")


def test_only_a_new_champion_is_announced(home: Path, ingested: dict, champion: dict) -> None:
    uri = f"sqlite:///{home}/mlflow.db"
    client = MlflowClient(uri, registry_uri=uri)
    # v2: v1's logged model registered again. The same figures are not better: the gate rejects it.
    v1 = client.get_model_version(MODEL, "1")
    client.create_model_version(MODEL, v1.source, v1.run_id, tags=v1.tags)
    quick = {"home": str(home), "max_sequences": 64}
    assert promote_flow(MODEL, version=2, **quick)["decision"] == "rejected"
    assert "already the champion" in promote_flow(MODEL, version=1, **quick)["reason"]  # nothing changed
    forced = promote_flow(MODEL, version=2, force=True, reason="flow test", **quick)
    assert forced["champion_version"] == 2

    # One event per champion: v1 (the fixture's promotion) and the forced v2, none for the two calls between.
    read_events(MODEL_PROMOTED, f"albert.model.{MODEL}", count=2)
    time.sleep(2)  # an event of the calls between, stored out of order, would be there by now
    events = read_events(MODEL_PROMOTED, f"albert.model.{MODEL}", count=2)
    assert [e.payload["version"] for e in events] == [1, 2]
    assert events[0].payload == {
        "model_name": MODEL, "version": 1, "model_uri": f"models:/{MODEL}/1", "previous_champion": None,
        "forced": False, "eval_shards": ingested["shards"]["id"], "home": str(home),
    }  # fmt: skip
    assert events[1].payload["previous_champion"] == 1 and events[1].payload["forced"] is True
    assert events[1].resource["prefect.resource.name"] == MODEL


def test_finetune_flow_fine_tunes_the_version_it_is_given(
    home: Path, champion: dict, corpora: Path, tmp_path: Path
) -> None:
    train, evaluation = book_sentences(corpora, tmp_path, train=24, evaluation=8)
    config = {"model_uri": f"models:/{MODEL}/99",  # replaced by model_uri, as the trigger does
              "train_path": str(train), "eval_path": str(evaluation), "epochs": 1, "batch_size": 16,
              "max_seq_len": 32, "threads": 1}  # fmt: skip
    summary = finetune_flow(finetune_config=config, model_uri=f"models:/{MODEL}/1", home=str(home))
    assert (
        summary["pretrained_model_uri"] == f"models:/{MODEL}/1" and summary["pretrained_model_version"] == "1"
    )
    assert summary["model_uri"] == f"models:/{MODEL}-classifier/1"
    assert summary["labels"] == ["carroll-alice", "chesterton-thursday"] and summary["train_examples"] == 48
    uri = f"sqlite:///{home}/mlflow.db"
    version = MlflowClient(uri, registry_uri=uri).get_model_version_by_alias(
        f"{MODEL}-classifier", "candidate"
    )
    assert version.tags["pretrained_model_version"] == "1"
    (artifact,) = api("/artifacts/filter", {"artifacts": {"key": {"any_": [f"albert-finetune-{MODEL}-classifier"]}},
                                            "sort": "CREATED_DESC"})  # fmt: skip
    assert summary["run_name"] in artifact["data"] and "| accuracy |" in artifact["data"]


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
