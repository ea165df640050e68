"""`albert doctor`: which services this environment points at, and whether each one answers.

    mlflow    MLFLOW_TRACKING_URI (a server: GET /health), else the embedded SQLite under ALBERT_HOME
    prefect   PREFECT_API_URL (GET /health), else a temporary local API each flow run starts
    ray       RAY_ADDRESS (a GCS host:port: TCP connect; an http(s) dashboard: GET /api/version) and
              RAY_API_SERVER_ADDRESS (the Jobs API), else a local runtime each process starts
    storage   ALBERT_HOME: exists (or can be created) and is writable
    s3        MLFLOW_S3_ENDPOINT_URL (any HTTP answer counts) and whether AWS credentials are set

Every check has a short timeout and reports a one-line detail; an unreachable service is a result
(`"reachable": false`), never an exception. Only the standard library is used, so the command answers in a
moment even when MLflow, Prefect or Ray would take seconds to import.
"""

from __future__ import annotations

import json
import os
import socket
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Mapping
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

TIMEOUT_S = 3.0
SERVICES = ("mlflow", "prefect", "ray", "storage", "s3")
_NO_PROXY = urllib.request.build_opener(urllib.request.ProxyHandler({}))


def _get(url: str, timeout: float, headers: dict[str, str] | None = None) -> tuple[int, str, float]:
    """(status, first 200 characters of the body, seconds); HTTP error statuses are answers too."""
    started = time.perf_counter()
    req = urllib.request.Request(url, headers=headers or {})
    try:
        with _NO_PROXY.open(req, timeout=timeout) as r:
            body = r.read(4096).decode(errors="replace")
            status = r.status
    except urllib.error.HTTPError as e:
        body, status = e.read(4096).decode(errors="replace"), e.code
    return status, " ".join(body.split())[:200], time.perf_counter() - started


def _why(e: BaseException) -> str:
    """One line for a failure: the reason inside a URLError, else the exception's first line."""
    reason = getattr(e, "reason", None) or e
    if isinstance(reason, str):
        return reason[:200]
    text = str(reason).strip().splitlines()[0] if str(reason).strip() else ""
    return f"{type(reason).__name__}: {text}".rstrip(": ")[:200]


def _tcp(host: str, port: int, timeout: float) -> tuple[bool, str]:
    started = time.perf_counter()
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True, f"TCP {host}:{port} accepts connections ({time.perf_counter() - started:.2f} s)"
    except OSError as e:
        return False, f"TCP {host}:{port}: {_why(e)}"


def _ray_token(env: Mapping[str, str]) -> str | None:
    if env.get("RAY_AUTH_TOKEN"):
        return env["RAY_AUTH_TOKEN"].strip()
    path = Path(env.get("RAY_AUTH_TOKEN_PATH") or Path.home() / ".ray" / "auth_token")
    try:
        return path.read_text().strip() or None
    except OSError:
        return None


def _mask(uri: str) -> str:
    """The URI without its password, if it has one."""
    password = urlsplit(uri).password
    return uri.replace(f":{password}@", ":***@") if password else uri


def _entry(configured: str, source: str, reachable: bool, detail: str) -> dict[str, Any]:
    return {
        "configured": configured,
        "source": source,
        "reachable": reachable,
        "ok": reachable,
        "detail": detail,
    }


# --- the checks ----------------------------------------------------------------------------------------------


def check_mlflow(home: Path, env: Mapping[str, str], timeout: float) -> dict[str, Any]:
    uri = env.get("MLFLOW_TRACKING_URI")
    if not uri:
        db = home / "mlflow.db"
        ok, detail = _writable(home)
        return _entry(f"sqlite:///{db}", "default (embedded SQLite under ALBERT_HOME)", ok,
                      f"embedded store {'exists' if db.exists() else 'is created on first use'}; {detail}")  # fmt: skip
    scheme = urlsplit(uri).scheme
    if scheme in ("http", "https"):
        shown = _mask(uri)
        try:
            status, body, took = _get(f"{uri.rstrip('/')}/health", timeout)
        except Exception as e:
            return _entry(shown, "MLFLOW_TRACKING_URI", False, f"tracking server unreachable: {_why(e)}")
        detail = f"GET /health: HTTP {status} {body[:40]!r} ({took:.2f} s)"
        return _entry(shown, "MLFLOW_TRACKING_URI", status == 200, detail)
    if scheme == "sqlite" or scheme in ("", "file"):
        path = Path(
            uri.removeprefix("sqlite:///") if scheme == "sqlite" else urlsplit(uri).path if scheme else uri
        )
        ok, detail = _writable(path.absolute().parent if scheme == "sqlite" else path)
        return _entry(uri, "MLFLOW_TRACKING_URI", ok, f"local store; {detail}")
    parts = urlsplit(uri)
    if parts.hostname and parts.port:  # a database URI (postgresql://…): is anything listening?
        ok, detail = _tcp(parts.hostname, parts.port, timeout)
        return _entry(_mask(uri), "MLFLOW_TRACKING_URI", ok, detail)
    return _entry(uri, "MLFLOW_TRACKING_URI", False, f"cannot check a {scheme!r} tracking URI here")


def check_prefect(env: Mapping[str, str], timeout: float) -> dict[str, Any]:
    url = env.get("PREFECT_API_URL")
    if not url:
        prefect_home = env.get("PREFECT_HOME") or str(Path.home() / ".prefect")
        return _entry("temporary local API", "default", True,
                      f"each flow run starts a temporary API (database under {prefect_home}); "
                      "deployments, schedules and triggers need PREFECT_API_URL")  # fmt: skip
    try:
        status, body, took = _get(f"{url.rstrip('/')}/health", timeout)
    except Exception as e:
        return _entry(url, "PREFECT_API_URL", False, f"Prefect API unreachable: {_why(e)}")
    ok = status == 200 and body.strip() == "true"
    return _entry(url, "PREFECT_API_URL", ok, f"GET /health: HTTP {status} {body[:40]!r} ({took:.2f} s)")


def _ray_http(url: str, env: Mapping[str, str], timeout: float) -> tuple[bool, str]:
    token = _ray_token(env)
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    try:
        status, body, took = _get(f"{url.rstrip('/')}/api/version", timeout, headers)
    except Exception as e:
        return False, f"dashboard {url} unreachable: {_why(e)}"
    if status == 200:
        try:
            version = json.loads(body).get("ray_version", "?")
        except ValueError:
            version = "?"
        return True, f"Jobs API at {url}: Ray {version} ({took:.2f} s)"
    if status == 401:
        return False, (f"dashboard {url} wants a token: set RAY_AUTH_MODE=token and have ~/.ray/auth_token "
                       "(or RAY_AUTH_TOKEN)")  # fmt: skip
    return False, f"dashboard {url}: GET /api/version HTTP {status} {body[:60]!r}"


def check_ray(env: Mapping[str, str], timeout: float) -> dict[str, Any]:
    address = env.get("RAY_ADDRESS")
    jobs = env.get("RAY_API_SERVER_ADDRESS")
    if not address and not jobs:
        return _entry("local runtime", "default", True, "each process starts a local Ray runtime")
    results, configured = [], []
    if address:
        configured.append(address)
        if address.startswith(("http://", "https://")):
            results.append(_ray_http(address, env, timeout))
        elif address in ("auto", "local"):
            results.append((True, f"RAY_ADDRESS={address}: resolved by ray.init at run time"))
        else:
            hostport = address.removeprefix("ray://")
            host, _, port = hostport.rpartition(":")
            if not port.isdigit():
                results.append(
                    (False, f"RAY_ADDRESS={address!r} is not host:port, ray://host:port or http(s)://")
                )
            else:
                ok, detail = _tcp(host or "127.0.0.1", int(port), timeout)
                results.append((ok, ("client server " if address.startswith("ray://") else "GCS ") + detail))
    if jobs:
        configured.append(f"Jobs API {jobs}")
        results.append(_ray_http(jobs, env, timeout))
    source = " + ".join(v for v in ("RAY_ADDRESS", "RAY_API_SERVER_ADDRESS") if env.get(v))
    return _entry(
        ", ".join(configured), source, all(ok for ok, _ in results), "; ".join(d for _, d in results)
    )


def _writable(folder: Path) -> tuple[bool, str]:
    """Is `folder` (or its nearest existing ancestor, where it would be created) writable? Leaves nothing."""
    target = folder
    while not target.exists() and target != target.parent:
        target = target.parent
    if not target.is_dir():
        return False, f"{target} is not a folder"
    try:
        with tempfile.NamedTemporaryFile(dir=target, prefix=".albert-doctor-"):
            pass
    except OSError as e:
        return False, f"{target} is not writable ({_why(e)})"
    free = os.statvfs(target)
    gib = free.f_bavail * free.f_frsize / 2**30
    where = "exists" if target == folder else f"would be created under {target}"
    return True, f"{folder} {where}, writable, {gib:.1f} GiB free"


def check_storage(home: Path, env: Mapping[str, str]) -> dict[str, Any]:
    ok, detail = _writable(home)
    source = "ALBERT_HOME" if env.get("ALBERT_HOME") else "default or --home"
    return _entry(str(home), source, ok, detail)


def check_s3(env: Mapping[str, str], timeout: float) -> dict[str, Any]:
    endpoint = env.get("MLFLOW_S3_ENDPOINT_URL")
    if not endpoint:
        return _entry("not set", "default", True,
                      "no S3 endpoint configured: artifacts go through the tracking server or to local files")  # fmt: skip
    creds = "AWS credentials set" if env.get("AWS_ACCESS_KEY_ID") and env.get("AWS_SECRET_ACCESS_KEY") else (
        "no AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY in the environment (a profile or role may still apply)")  # fmt: skip
    try:
        status, _, took = _get(endpoint, timeout)
    except Exception as e:
        return _entry(
            endpoint, "MLFLOW_S3_ENDPOINT_URL", False, f"S3 endpoint unreachable: {_why(e)}; {creds}"
        )
    return _entry(endpoint, "MLFLOW_S3_ENDPOINT_URL", True, f"answers HTTP {status} ({took:.2f} s); {creds}")


def doctor(home: Path | str | None = None, *, env: Mapping[str, str] | None = None,
           timeout: float = TIMEOUT_S) -> dict[str, Any]:  # fmt: skip
    """What each service is configured as, and whether it answers. `ok` is true when every configured service
    is reachable. Top-level `<service>` keys hold one line each (for the human output); `services` holds the
    details."""
    env = os.environ if env is None else env
    home = Path(home or env.get("ALBERT_HOME") or ".albert").expanduser().absolute()
    services = {
        "mlflow": check_mlflow(home, env, timeout),
        "prefect": check_prefect(env, timeout),
        "ray": check_ray(env, timeout),
        "storage": check_storage(home, env),
        "s3": check_s3(env, timeout),
    }
    ok = all(s["ok"] for s in services.values())
    lines = {name: f"{'ok' if s['ok'] else 'UNREACHABLE'}  {s['configured']}  ({s['detail']})"
             for name, s in services.items()}  # fmt: skip
    return {"ok": ok, "home": str(home), **lines, "services": services}


def format_report(result: dict[str, Any]) -> str:
    """The human report: one line per service, then the verdict."""
    rows = [f"{name:<8} {'ok' if s['ok'] else 'FAIL':<5} {s['configured']}\n{'':<14} {s['detail']}"
            for name, s in result["services"].items()]  # fmt: skip
    verdict = "all services reachable" if result["ok"] else "some services are unreachable"
    return "\n".join([*rows, verdict])
