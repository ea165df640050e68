"""Shared fixtures: the real corpora beside the repository, and a clean ALBERT_HOME per test.

Prefect gets a throw-away home (its database, results and the temporary API server flows start) before anything
imports it, and sends no analytics.
"""

import logging
import os
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
