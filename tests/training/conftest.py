"""Fixtures shared by the training tests."""

from collections.abc import Iterator
from pathlib import Path

import mlflow
import pytest

from training.registry import configure_mlflow


@pytest.fixture
def mlflow_home(albert_home: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """Embedded MLflow under ALBERT_HOME, run from a scratch working directory (to catch `./mlruns` leaks)."""
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.delenv("MLFLOW_REGISTRY_URI", raising=False)
    workdir = tmp_path / "cwd"
    workdir.mkdir()
    monkeypatch.chdir(workdir)
    configure_mlflow(albert_home)
    yield albert_home
    mlflow.set_tracking_uri(None)
    mlflow.set_registry_uri(None)
    assert not (workdir / "mlruns").exists(), "MLflow wrote artifacts relative to the working directory"
