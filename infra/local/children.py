"""How the stack's processes are set up: this venv's console scripts, and an environment without the caller's
stack variables."""

from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path

from infra.local.supervisor import StackError

# Variables of the caller's shell that must not leak into the stack's processes.
_SCRUB = ("RAY_ADDRESS", "RAY_API_SERVER_ADDRESS", "MLFLOW_TRACKING_URI", "MLFLOW_REGISTRY_URI",
          "MLFLOW_S3_ENDPOINT_URL", "PREFECT_API_URL", "PREFECT_HOME", "PREFECT_PROFILE",
          "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_PROFILE",
          "PREFECT_SERVER_DATABASE_CONNECTION_URL", "PREFECT_API_DATABASE_CONNECTION_URL")  # fmt: skip


def console_script(name: str) -> str:
    """A console script of this interpreter's environment (the venv), so every part runs the same packages."""
    path = Path(sys.executable).parent / name
    if not path.exists():
        found = shutil.which(name)
        if not found:
            raise StackError(f"{name}: not found next to {sys.executable} nor on PATH; install '.[dev]'")
        return found
    return str(path)


def child_env(**extra: str) -> dict[str, str]:
    """The caller's environment without stack variables, this venv's bin first on PATH, plus `extra`."""
    env = {k: v for k, v in os.environ.items() if k not in _SCRUB}
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '/usr/bin:/bin')}"
    env["PYTHONUNBUFFERED"] = "1"
    return env | extra
