"""The production-like local stack (`infra/local`) and the whole pipeline through it.

The stack: PostgreSQL + an S3 API (moto) behind an MLflow tracking server, a Prefect server with a process
worker, a two-node Ray cluster, all processes on 127.0.0.1. Through it: the deployments are registered on the
Prefect server, `albert-ingest/scheduled` is run by hand and picked up by the worker, which runs each data step
as a Ray job (Jobs API) whose tasks spread over both nodes and whose rows equal a local run's; its
`albert.corpus.published` event triggers `albert-train/on-corpus`, which trains as a Ray job (Jobs API) on both
nodes and promotes; the new champion's `albert.model.promoted` event triggers `albert-finetune/on-promoted`, which
fine-tunes that version on the worker; metrics land in PostgreSQL, artifacts in S3, and the champion loads in a
fresh process that knows only MLFLOW_TRACKING_URI. Stopping the stack leaves no process behind.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import random
import shutil
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import psutil
import pytest

from infra.local.stack import (
    BUCKET,
    PARTS,
    PORT_SPAN,
    S3_CREDENTIALS,
    WORK_POOL,
    Stack,
    StackConfig,
    StackError,
    _ray_procs,
    http,
    part_processes,
    port_free,
    ray_headers,
    read_state,
    start_stack,
    stop_stack,
)
from tests.corpus_helpers import book_sentences

pytestmark = [pytest.mark.cluster, pytest.mark.timeout(1500), pytest.mark.usefixtures("uses_servers")]

CORPUS = "wiki"
MODEL = "albert-cluster-test"
TOKENIZER = {"vocab_size": 2000}
SHARDS = {"max_seq_len": 64, "eval_share": 0.1}
TRAIN = {"max_steps": 10, "batch_size": 8, "workers": 2}
TRAIN_OPTIONS = {"model_overrides": {"num_hidden_layers": 2}, "eval_every": 10, "checkpoint_every": 10,
                 "eval_sequences": 64, "model_name": MODEL}  # fmt: skip
# Fine-tuning of the new champion: a tiny labelled set, one epoch (seconds; the run's start-up dominates).
FINETUNE = {"epochs": 1, "batch_size": 16, "max_seq_len": 32, "threads": 1}
TERMINAL = {"COMPLETED", "FAILED", "CRASHED", "CANCELLED"}
DATA_JOBS = ("ingest", "tokenizer", "tokenize", "shards")  # ingest_flow's steps, one Ray job each


def _free_base_port() -> int:
    """A base whose whole span is free, below Linux's ephemeral range and above Ray's default worker ports."""
    for _ in range(50):
        base = random.randrange(20100, 32700 - PORT_SPAN, 10)
        if all(port_free(base + i) for i in range(PORT_SPAN)):
            return base
    raise RuntimeError("no free port span for the stack")


def _tail(path: Path, lines: int = 60) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError as e:
        return f"({path}: {e})"


def _logs(stack: Stack, *parts: str) -> str:
    return "\n".join(
        f"--- {part} log (tail) ---\n{_tail(stack.state_dir / 'logs' / f'{part}.log')}" for part in parts
    )


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Stack:
    state_dir = tmp_path_factory.mktemp("stack")
    cfg = StackConfig(state_dir=state_dir, base_port=_free_base_port(), ports={}, home=state_dir / "home",
                      timeout_s=300)  # fmt: skip
    try:
        started = start_stack(cfg)
    except StackError as e:
        logs = "\n".join(
            f"--- {p.name} ---\n{_tail(p, 20)}" for p in sorted((state_dir / "logs").glob("*.log"))
        )
        stop_stack(state_dir)
        pytest.fail(f"the stack did not start: {e}\n{logs}")
    print(
        f"\nstack started in {started.start_seconds} s on ports {started.ports['postgres']}…", file=sys.stderr
    )
    yield started
    stop_stack(state_dir)  # a no-op when test_stop_leaves_nothing_behind ran


@pytest.fixture(scope="module")
def stack_env(stack: Stack) -> dict[str, str]:
    """This process as a client of the stack: the exported variables, and Prefect's settings (read at import,
    so they are overridden in a settings context too)."""
    from prefect.settings import PREFECT_API_URL, temporary_settings

    mp = pytest.MonkeyPatch()
    for key, value in stack.env().items():
        mp.setenv(key, value)
    with temporary_settings(updates={PREFECT_API_URL: stack.urls["prefect_api"]}):
        yield stack.env()
    mp.undo()


def _prefect(path: str, body: dict[str, Any]) -> Any:
    """POST a filter with explicit limit/offset (the 3.8.8 client's readers send nulls its server rejects)."""
    from prefect.client.orchestration import get_client

    with get_client(sync_client=True) as client:
        return client.request("POST", path, json={"limit": 50, "offset": 0, **body}).json()


def _sources(corpora: Path) -> list[str]:
    """Several files (WikiText and four books, ~3.7 MB): enough row groups for several tokenize tasks."""
    return [str(corpora / "wikitext2-valid.raw.txt"), str(corpora / "gutenberg")]


def _ray(stack: Stack, path: str, **query: Any) -> Any:
    status, text = http(f"{stack.urls['ray_dashboard']}{path}?{urlencode(query, doseq=True)}", timeout=30,
                        headers=ray_headers())  # fmt: skip
    assert status == 200, f"Ray dashboard {path}: HTTP {status} {text[:300]}"
    return json.loads(text)


def _wait_for_run(deployment_id: str, what: str, stack: Stack, timeout_s: float) -> dict[str, Any]:
    """The one flow run an event trigger created for `deployment_id`, once it has ended."""
    deadline, runs = time.monotonic() + timeout_s, []
    while time.monotonic() < deadline:
        runs = _prefect("/flow_runs/filter", {"flow_runs": {"deployment_id": {"any_": [deployment_id]}},
                                              "sort": "EXPECTED_START_TIME_DESC"})  # fmt: skip
        if runs and runs[0]["state"]["type"] in TERMINAL:
            break
        time.sleep(3)
    assert runs, f"no {what} run was triggered\n{_logs(stack, 'prefect-server', 'prefect-worker')}"
    (run,) = runs  # exactly one event, one run
    assert run["state"]["type"] == "COMPLETED", (
        f"{what} flow run ended {run['state']['type']}: {run['state'].get('message')}\n"
        f"{_logs(stack, 'prefect-worker')}"
    )
    return run


@pytest.fixture(scope="module")
def pipeline(
    stack: Stack, stack_env: dict[str, str], corpora: Path, tmp_path_factory: pytest.TempPathFactory
) -> dict[str, Any]:
    """Deploy on the server, run ingestion by hand, wait for the event-triggered training (and promotion), then
    for the fine-tuning the new champion triggers."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.actions import DeploymentUpdate
    from prefect.deployments import run_deployment

    from flows.deploy import deploy_to_pool
    from training.config import FinetuneConfig

    started = time.perf_counter()
    train, evaluation = book_sentences(corpora, tmp_path_factory.mktemp("finetune"), train=24, evaluation=8)
    finetune = FinetuneConfig(model_uri=f"models:/{MODEL}@champion", train_path=str(train),
                              eval_path=str(evaluation), **FINETUNE)  # fmt: skip
    deployed = deploy_to_pool(work_pool=WORK_POOL, home=str(stack.home), cron="0 2 * * *",
                              sources=_sources(corpora), corpus=CORPUS, finetune_config=finetune)  # fmt: skip
    # A tiny, quick run on the Ray cluster through the Jobs API: the trigger passes shards, home and promote;
    # the rest comes from the deployment's parameters.
    options = TRAIN_OPTIONS | {"placement_strategy": "STRICT_SPREAD"}  # one DDP worker per node
    train_id = deployed["deployments"]["albert-train/on-corpus"]
    with get_client(sync_client=True) as client:
        deployment = client.read_deployment(train_id)
        client.update_deployment(deployment.id, DeploymentUpdate(parameters={
            **deployment.parameters, "train_config": TRAIN | options, "ray_address": stack.urls["ray_dashboard"],
        }))  # fmt: skip
        train_schema = deployment.parameter_openapi_schema  # what the Prefect UI's run form is built from

    ingest = run_deployment("albert-ingest/scheduled", timeout=600, poll_interval=3,
                            parameters={"tokenizer_config": TOKENIZER, "shards_config": SHARDS,
                                        # units of 0.5 MB: several docs files, so tokenize has tasks to spread
                                        "ingest_config": {"range_mb": 0.5}})  # fmt: skip
    assert ingest.state is not None and ingest.state.type.value == "COMPLETED", (
        f"ingest flow run {ingest.id} ended {ingest.state}\n{_logs(stack, 'prefect-worker')}"
    )

    # The automation on `albert.corpus.published` creates the training run; the worker picks it up. Its promotion
    # makes the first champion, whose `albert.model.promoted` event creates the fine-tuning run.
    train_run = _wait_for_run(train_id, "albert-train/on-corpus", stack, timeout_s=900)
    trained = time.perf_counter()
    finetune_id = deployed["deployments"]["albert-finetune/on-promoted"]
    finetune_run = _wait_for_run(finetune_id, "albert-finetune/on-promoted", stack, timeout_s=300)
    print(f"\npipeline through the servers took {time.perf_counter() - started:.0f} s, of which the "
          f"triggered fine-tuning {time.perf_counter() - trained:.0f} s", file=sys.stderr)  # fmt: skip
    return {
        "deployed": deployed,
        "ingest_run": ingest,
        "train_run": train_run,
        "train_parameters": train_run["parameters"],
        "train_schema": train_schema,
        "finetune_run": finetune_run,
    }


def test_doctor_reports_every_part_reachable(stack: Stack, stack_env: dict[str, str]) -> None:
    from flows.doctor import doctor

    env = {**os.environ, "MLFLOW_S3_ENDPOINT_URL": stack.urls["s3"], **S3_CREDENTIALS}
    report = doctor(stack.home, env=env)
    assert report["ok"], json.dumps(report["services"], indent=2)
    services = report["services"]
    assert (
        services["mlflow"]["configured"] == stack.urls["mlflow"]
        and "HTTP 200" in services["mlflow"]["detail"]
    )
    assert services["prefect"]["configured"] == stack.urls["prefect_api"]
    assert stack.urls["ray_gcs"] in services["ray"]["configured"] and "Jobs API" in services["ray"]["detail"]
    assert services["s3"]["configured"] == stack.urls["s3"] and services["s3"]["reachable"]
    assert services["storage"]["configured"] == str(stack.home)
    assert all(service["reachable"] for service in services.values())


def test_the_event_triggers_training_with_the_deployment_parameters(pipeline: dict[str, Any]) -> None:
    params = pipeline["train_parameters"]
    assert params["promote"] is True and params["home"].endswith("home")
    assert params["shards"] and "{{" not in params["shards"]  # the event's payload, rendered
    assert params["train_config"]["max_steps"] == TRAIN["max_steps"]
    assert params["ray_address"].startswith("http://127.0.0.1:")
    # the run form lists every TrainConfig field, typed, with its default
    import dataclasses

    from training.config import TrainConfig

    fields = pipeline["train_schema"]["definitions"]["TrainConfig"]["properties"]
    assert set(fields) == {f.name for f in dataclasses.fields(TrainConfig)}
    assert fields["optimizer"]["enum"] == ["lamb", "adamw"] and fields["lr"]["default"] == TrainConfig().lr


def test_the_new_champion_triggers_fine_tuning_of_that_version(
    stack: Stack, pipeline: dict[str, Any]
) -> None:
    from mlflow import MlflowClient

    params = pipeline["finetune_run"]["parameters"]
    assert params["model_uri"] == f"models:/{MODEL}/1"  # the event's pinned version, not the alias
    assert params["home"] == str(stack.home) and params["finetune_config"]["epochs"] == FINETUNE["epochs"]
    client = MlflowClient(stack.urls["mlflow"], registry_uri=stack.urls["mlflow"])
    version = client.get_model_version_by_alias(f"{MODEL}-classifier", "candidate")
    assert version.tags["pretrained_model_version"] == "1"
    assert client.get_run(version.run_id).info.status == "FINISHED"


def test_training_ran_as_a_ray_job_on_both_nodes(stack: Stack, pipeline: dict[str, Any]) -> None:
    jobs = [j for j in _ray(stack, "/api/jobs/") if (j.get("metadata") or {}).get("albert") == "train"]
    assert [j["status"] for j in jobs] == ["SUCCEEDED"], jobs
    job_id = jobs[0]["job_id"]
    nodes = {n["node_id"] for n in _ray(stack, "/api/v0/nodes", limit=100)["data"]["result"]["result"]}
    assert len(nodes) == 2
    query = {"detail": "true", "limit": 10000, "filter_keys": "job_id", "filter_predicates": "=",
             "filter_values": job_id}  # fmt: skip
    actors = _ray(stack, "/api/v0/actors", **query)["data"]["result"]["result"]
    tasks = _ray(stack, "/api/v0/tasks", **query)["data"]["result"]["result"]
    workers = [a for a in actors if a["class_name"] == "RayTrainWorker"]
    assert len(workers) == TRAIN["workers"], [a["class_name"] for a in actors]
    used = {a["node_id"] for a in actors} | {t["node_id"] for t in tasks if t.get("node_id")}
    assert used == nodes, f"the training job ran on {len(used & nodes)} of the 2 nodes"
    assert {w["node_id"] for w in workers} == nodes  # STRICT_SPREAD: one DDP worker per node


def _job_query(job_id: str) -> dict[str, Any]:
    return {"detail": "true", "limit": 10000, "filter_keys": "job_id", "filter_predicates": "=",
            "filter_values": job_id}  # fmt: skip


def _contents(home: Path) -> dict[str, Any]:
    """What the data steps made, whatever the file layout: document count and the sha256 of the sorted content
    hashes of the newest corpus version; rows and the sha256 of the sorted row hashes of each shards split."""
    import pyarrow.parquet as pq

    from data_jobs.corpus import resolve_version
    from data_jobs.shards import latest_shards, split_files

    def digest(items: list[str]) -> str:
        return hashlib.sha256("\n".join(sorted(items)).encode()).hexdigest()

    docs = [h for f in resolve_version(home, CORPUS).doc_files()
            for h in pq.read_table(f, columns=["content_hash"])["content_hash"].to_pylist()]  # fmt: skip
    out: dict[str, Any] = {"documents": (len(docs), digest(docs))}
    shards = latest_shards(home, CORPUS)
    for split in ("train", "eval"):
        rows = [hashlib.sha256(json.dumps(row, sort_keys=True).encode()).hexdigest()
                for f in split_files(home, shards, split) for row in pq.read_table(f).to_pylist()]  # fmt: skip
        out[split] = (len(rows), digest(rows))
    return out


def test_data_steps_ran_as_ray_jobs_on_both_nodes_with_the_rows_of_a_local_run(
    stack: Stack, pipeline: dict[str, Any], corpora: Path, tmp_path: Path
) -> None:
    jobs = {(j.get("metadata") or {}).get("albert"): j for j in _ray(stack, "/api/jobs/")}
    assert {kind: jobs[kind]["status"] for kind in DATA_JOBS if kind in jobs} == dict.fromkeys(
        DATA_JOBS, "SUCCEEDED"
    ), sorted(jobs, key=str)
    nodes = {n["node_id"] for n in _ray(stack, "/api/v0/nodes", limit=100)["data"]["result"]["result"]}
    spread = {}
    for kind in DATA_JOBS:  # the nodes each job's tasks (not its driver) ran on
        tasks = _ray(stack, "/api/v0/tasks", **_job_query(jobs[kind]["job_id"]))["data"]["result"]["result"]
        spread[kind] = {t["node_id"] for t in tasks if t.get("type") == "NORMAL_TASK" and t.get("node_id")}
    # tokenize runs one task per ~1 MB of row groups: several here, spread over the nodes by Ray Data
    assert len(spread["tokenize"]) == 2 and spread["tokenize"] == nodes, {
        k: len(v) for k, v in spread.items()
    }

    # The same steps in one local process (no cluster), with the cluster's vocabulary: the same rows.
    started = time.perf_counter()
    local = tmp_path / "home"
    shutil.copytree(stack.home / "tokenizers" / CORPUS, local / "tokenizers" / CORPUS)
    script = textwrap.dedent(f"""
        import json, sys
        from pathlib import Path
        from data_jobs.ingest import ingest
        from data_jobs.shards import ShardsConfig, build_shards
        home = Path(sys.argv[1])
        ingest(json.loads(sys.argv[2]), {CORPUS!r}, home=home)
        build_shards({CORPUS!r}, {CORPUS!r}, home=home, cfg=ShardsConfig(**json.loads(sys.argv[3])))
    """)  # fmt: skip
    env = {
        k: v for k, v in os.environ.items() if not k.startswith(("RAY_", "ALBERT_", "MLFLOW_", "PREFECT_API"))
    }
    proc = subprocess.run([sys.executable, "-c", script, str(local), json.dumps(_sources(corpora)),
                           json.dumps(SHARDS)], env=env, cwd=tmp_path, capture_output=True, text=True,
                          timeout=600)  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    print(f"\nlocal run of the data steps: {time.perf_counter() - started:.0f} s", file=sys.stderr)
    cluster, here = _contents(stack.home), _contents(local)
    assert cluster == here and cluster["train"][0] > 1000


def test_metrics_are_in_the_server_and_in_postgresql(stack: Stack, pipeline: dict[str, Any]) -> None:
    import psycopg2
    from mlflow import MlflowClient

    # both URIs: an earlier configure_mlflow in this process may have pointed the default registry elsewhere
    client = MlflowClient(stack.urls["mlflow"], registry_uri=stack.urls["mlflow"])
    version = client.get_model_version_by_alias(MODEL, "candidate")
    run = client.get_run(version.run_id)
    assert run.info.status == "FINISHED" and run.data.tags["shards"] == pipeline["train_parameters"]["shards"]
    losses = client.get_metric_history(run.info.run_id, "loss")
    assert losses and max(m.step for m in losses) == TRAIN["max_steps"]

    dsn = stack.urls["postgres"].replace("+psycopg2", "")
    with contextlib.closing(psycopg2.connect(dsn, connect_timeout=10)) as conn, conn.cursor() as cur:
        cur.execute("SELECT status FROM runs WHERE run_uuid = %s", (run.info.run_id,))
        assert cur.fetchall() == [("FINISHED",)]
        cur.execute("SELECT count(*) FROM metrics WHERE run_uuid = %s AND key = 'loss'", (run.info.run_id,))
        assert cur.fetchone()[0] == len(losses)
        cur.execute("SELECT alias, version FROM registered_model_aliases WHERE name = %s", (MODEL,))
        assert dict(cur.fetchall()) == {"candidate": 1, "champion": 1}


def test_artifacts_are_in_the_s3_store(stack: Stack, pipeline: dict[str, Any]) -> None:
    import boto3
    from mlflow import MlflowClient

    client = MlflowClient(stack.urls["mlflow"], registry_uri=stack.urls["mlflow"])
    version = client.get_model_version_by_alias(MODEL, "champion")
    s3 = boto3.client("s3", endpoint_url=stack.urls["s3"], region_name=S3_CREDENTIALS["AWS_DEFAULT_REGION"],
                      aws_access_key_id=S3_CREDENTIALS["AWS_ACCESS_KEY_ID"],
                      aws_secret_access_key=S3_CREDENTIALS["AWS_SECRET_ACCESS_KEY"])  # fmt: skip
    keys = [o["Key"] for page in s3.get_paginator("list_objects_v2").paginate(Bucket=BUCKET)
            for o in page.get("Contents", [])]  # fmt: skip
    model_id = version.source.removeprefix("models:/")  # a logged model: <experiment>/models/<id>/artifacts/
    model_keys = [k for k in keys if f"/models/{model_id}/artifacts/" in k]
    assert any(k.endswith("/MLmodel") for k in model_keys), keys[:20]
    assert any(k.endswith("model.safetensors") for k in model_keys)
    assert any(f"/{version.run_id}/artifacts/hf/" in k for k in keys), "the Hugging Face export is in S3 too"


def test_the_champion_loads_in_a_fresh_process_from_the_server_alone(
    stack: Stack, pipeline: dict[str, Any], tmp_path: Path
) -> None:
    script = textwrap.dedent(f"""
        import json, mlflow, pandas as pd
        model = mlflow.pyfunc.load_model("models:/{MODEL}@champion")
        out = model.predict(pd.DataFrame({{"text": ["The [MASK] flows to the sea ."], "text_b": ["It rained ."]}}))
        print(json.dumps({{"columns": list(out.columns), "p": float(out["sop_swapped_probability"][0])}}))
    """)  # fmt: skip
    env = {"MLFLOW_TRACKING_URI": stack.urls["mlflow"], "PATH": "/usr/bin:/bin", "HOME": str(tmp_path)}
    proc = subprocess.run([sys.executable, "-c", script], env=env, cwd=tmp_path, capture_output=True, text=True,
                          timeout=300)  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert out["columns"] == ["fill_mask", "sop_swapped_probability", "truncated"] and 0.0 <= out["p"] <= 1.0


def test_stop_leaves_nothing_behind(stack: Stack, stack_env: dict[str, str]) -> None:
    from flows.doctor import doctor

    state = read_state(stack.state_dir)
    procs = {p.pid: p.create_time() for part in PARTS for p in part_processes(state, part)}
    temp_dirs = list(state["ray_temp_dirs"].values())
    assert len(procs) > 10 and len(temp_dirs) == 2

    result = stop_stack(stack.state_dir)
    assert result["left"] == []
    survivors = []
    for pid, created in procs.items():
        try:
            p = psutil.Process(pid)
            if p.create_time() == created and p.status() != psutil.STATUS_ZOMBIE:
                survivors.append(f"{pid} {' '.join(p.cmdline())[:120]}")
        except psutil.NoSuchProcess:
            pass
    assert survivors == [], survivors
    assert _ray_procs(temp_dirs) == []
    assert not stack.state_dir.exists() and not any(Path(t).exists() for t in temp_dirs)
    assert state["pg_data"] is None or not Path(state["pg_data"]).exists()
    taken = [
        n
        for n in ("postgres", "s3", "mlflow", "prefect", "ray_gcs", "ray_dashboard")
        if not port_free(stack.ports[n])
    ]
    assert taken == [], f"ports still listening after stop: {taken}"

    # What the doctor says now: unreachable is an answer, not an exception.
    report = doctor(stack.home, env=dict(os.environ), timeout=2)
    assert report["ok"] is False
    assert {n for n, s in report["services"].items() if not s["reachable"]} == {"mlflow", "prefect", "ray"}
