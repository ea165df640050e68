"""Shared fixtures: the real corpora beside the repository, a clean ALBERT_HOME per test, and the test tiers.

Prefect gets a throw-away home (its database, results and the temporary API server flows start) before anything
imports it, and sends no analytics.

Tiers: a test is `unit` (`make test-fast`) unless it uses, directly or through another fixture, one of
`TIER_FIXTURES`, which marks it with that fixture's tier. Unit tests run guarded: starting Ray or a server process
fails the test with the fixture to declare, so a new Ray test cannot slip into the fast tier unmarked.
"""

import logging
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

os.environ["PREFECT_HOME"] = tempfile.mkdtemp(prefix="albert-tests-prefect-")
os.environ["PREFECT_SERVER_ANALYTICS_ENABLED"] = "false"
os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "180")  # as flows/__init__ sets it

REPO = Path(__file__).resolve().parents[1]
CORPORA = REPO.parent / "shared" / "corpora"


@pytest.fixture(scope="session")
def corpora() -> Path:
    """Folder of the shared real-text corpora (read-only; never copied into the project)."""
    if not CORPORA.is_dir():
        pytest.fail(f"shared corpora not found at {CORPORA}: clone the project beside ../shared")
    return CORPORA


# fixture -> the marker a test using it gets (pytest's `fixturenames` holds every fixture a test pulls in)
TIER_FIXTURES = {"uses_ray": "ray", "uses_servers": "servers", "runs_cli": "e2e"}
# programs no unit test starts: the pipeline's console script and the servers it talks to
SERVER_PROGRAMS = frozenset(
    {"albert", "ray", "mlflow", "prefect", "uvicorn", "gunicorn", "postgres", "initdb", "pg_ctl", "minio"}
)


@pytest.fixture(scope="session")
def uses_ray() -> None:
    """Declares that a test (or a fixture) starts a Ray runtime: Ray Data, Ray Train or plain Ray tasks."""


@pytest.fixture(scope="session")
def uses_servers() -> None:
    """Declares that a test starts server processes: MLflow, Prefect, PostgreSQL, an S3 API, a Ray cluster."""


@pytest.fixture(scope="session")
def runs_cli() -> None:
    """Declares that a test runs the `albert` console script as a separate process."""


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        tiers = {TIER_FIXTURES[name] for name in getattr(item, "fixturenames", ()) if name in TIER_FIXTURES}
        for tier in sorted(tiers) or ["unit"]:
            item.add_marker(tier)


class _GuardedPopen(subprocess.Popen):
    def __init__(self, args, *rest, **kwargs):
        argv = [args] if isinstance(args, str | bytes | os.PathLike) else list(args)
        started = {Path(os.fsdecode(a)).name for a in argv} & SERVER_PROGRAMS
        if started:
            self._child_created, self.returncode = False, None  # nothing started: Popen.__del__ has no child
            pytest.fail(
                f"a unit test started {', '.join(sorted(started))}: request the `runs_cli` or `uses_servers` "
                "fixture (tests/conftest.py)",
                pytrace=False,
            )
        super().__init__(args, *rest, **kwargs)


@pytest.hookimpl(wrapper=True)
def pytest_runtest_protocol(item: pytest.Item, nextitem: pytest.Item | None):
    """Guard a unit test's whole protocol, the session and module fixtures it sets up included."""
    if item.get_closest_marker("unit") is None:
        return (yield)
    import ray

    def refuse(*_args, **_kwargs):
        pytest.fail(
            "a unit test started Ray: request the `uses_ray` fixture (tests/conftest.py)", pytrace=False
        )

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(ray, "init", refuse)
        patch.setattr(ray, "is_initialized", refuse)  # Ray left running by an earlier test counts too
        patch.setattr(subprocess, "Popen", _GuardedPopen)
        return (yield)


@pytest.fixture
def albert_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    home = tmp_path / "albert_home"
    monkeypatch.setenv("ALBERT_HOME", str(home))
    return home


@pytest.fixture(autouse=True)
def _no_log_handler_on_a_closed_stream():
    """Ray Data re-creates its console handler during executions, on whatever `sys.stderr` is then: inside a test
    using `capsys`, a stream closed when that test ends, after which every Ray Data log line prints "--- Logging
    error ---" into a later test's stderr. Point such handlers back at the real stderr after each test."""
    yield
    for logger in [logging.getLogger(), *logging.Logger.manager.loggerDict.values()]:
        for handler in getattr(logger, "handlers", []):
            if isinstance(handler, logging.StreamHandler) and getattr(handler.stream, "closed", False):
                handler.stream = sys.__stderr__  # not setStream: it flushes the closed stream first


@pytest.fixture(autouse=True)
def _mlflow_store_variables_restored():
    """`mlflow.set_tracking_uri` / `set_registry_uri` export MLFLOW_TRACKING_URI / MLFLOW_REGISTRY_URI, and setting
    them back to None leaves MLFLOW_REGISTRY_URI behind: a test that points MLflow at its own store would make it
    the registry of every later test, as if a user had chosen it (seen as a model "not found" in its own home).
    Put both back as they were after each test."""
    saved = {var: os.environ.get(var) for var in ("MLFLOW_TRACKING_URI", "MLFLOW_REGISTRY_URI")}
    yield
    for var, value in saved.items():
        if value is None:
            os.environ.pop(var, None)
        else:
            os.environ[var] = value


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    """Prefect stops its temporary API server at interpreter exit and logs that through a handler on a stream
    pytest has closed by then ("--- Logging error ---" after the summary): stop it while the streams are open."""
    server = sys.modules.get("prefect.server.api.server")
    if server is None:
        return
    # Logs and events still queued for that server go out first: drained at exit instead, each would retry a
    # stopped server for over a minute ("--- Error logging to API ---" after the summary).
    from prefect.events.worker import EventsWorker
    from prefect.logging.handlers import APILogWorker

    for service in (APILogWorker, EventsWorker):
        service.drain_all(timeout=10, at_exit=False)
    logging.disable(
        logging.INFO
    )  # its "Stopping temporary server" line would go to that server's own log API
    try:
        for instance in list(server.SubprocessASGIServer._instances.values()):
            instance.stop()
    finally:
        logging.disable(logging.NOTSET)
