"""A production-like stack on one machine, as plain processes bound to 127.0.0.1 (no containers, no Docker):

    postgres        PostgreSQL 15: databases `mlflow` (tracking + registry) and `prefect` (the Prefect server's)
    s3              an S3 API (moto's server, in memory) with the bucket `mlflow-artifacts`
    mlflow          `mlflow server` on PostgreSQL, artifacts proxied to s3://mlflow-artifacts (clients need no S3
                    credentials: only the server has them)
    prefect-server  `prefect server start` on PostgreSQL, its own PREFECT_HOME
    prefect-worker  `prefect worker start --pool albert-process` (a process pool), with ALBERT_HOME,
                    MLFLOW_TRACKING_URI, PREFECT_API_URL and RAY_ADDRESS pointing at the stack
    ray-head        `ray start --head` (GCS, dashboard + Jobs API), 2 CPUs
    ray-node2       `ray start --address …` on the same machine: a second node (2 CPUs, custom resource `node2`)

    python -m infra.local.stack start  [--state-dir DIR] [--base-port N] [--ports mlflow=5001,…] [--home DIR]
    python -m infra.local.stack status [--state-dir DIR] [--json]
    python -m infra.local.stack env    [--state-dir DIR]          # `eval "$(python -m infra.local.stack env)"`
    python -m infra.local.stack stop   [--state-dir DIR] [--keep]

State lives in one folder (`--state-dir`, else $ALBERT_STACK_DIR, else `.albert-stack/` in the repository):
`logs/<part>.log`, `pids.json` (every process with its start time, the Ray temp dirs, URLs and ports),
`postgres/` (the data folder, when the `postgres` user can reach it; else a private folder under /tmp),
`prefect/` (PREFECT_HOME) and `home/` (ALBERT_HOME, unless --home names another).

`start` refuses a state dir whose processes are partly running (run `stop` first), reuses a stack whose parts
are all running (it prints the same URLs), and wipes a stale one (nothing running) before starting afresh:
the stack is ephemeral, S3 objects live in moto's memory. A part that fails to start stops everything started so
far and raises one line naming the part and its log (the logs are kept). `stop` ends each part's processes by PID
(each part runs in its own session: its process group and descendants; Ray's processes also by their temp dir in
the command line, never `ray stop`, which would end every Ray runtime on the machine) and removes the state
(`--keep` keeps it).

Ray 2.60 clusters use token authentication: the nodes run with RAY_AUTH_MODE=token and the user's token
(~/.ray/auth_token, created if missing, as `ray start` would); clients export RAY_AUTH_MODE=token too (see `env`).
PostgreSQL refuses to run as root: as root it runs as the `postgres` user (else `nobody`), trusting loopback
connections; its data folder goes under /tmp when that user cannot reach the state dir (pytest's tmp dirs).

Ports: a base (`--base-port`, $ALBERT_STACK_BASE_PORT, default 25400, below Linux's ephemeral range and away
from Ray's default worker ports 10002-19999) plus fixed offsets (see PORT_OFFSETS; 230 ports in all), each
overridable (`--ports mlflow=5001,prefect=4201`, $ALBERT_STACK_PORTS).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import pwd
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psutil

REPO = Path(__file__).resolve().parents[2]
STATE_FILE = "pids.json"
WORK_POOL = "albert-process"
BUCKET = "mlflow-artifacts"
DEFAULT_BASE_PORT = 25400
WORKER_PORTS = 100  # per Ray node: the range its worker processes bind to
RAY_START_ATTEMPTS = 3
# Parts in start order; `stop` ends them in reverse.
PARTS = ("postgres", "s3", "ray-head", "ray-node2", "mlflow", "prefect-server", "prefect-worker")
PORT_OFFSETS = {
    "postgres": 0, "s3": 1, "mlflow": 2, "prefect": 3, "ray_gcs": 4, "ray_dashboard": 5, "ray_client": 6,
    # per Ray node: node manager, object manager, dashboard agent (http, grpc), metrics, runtime env agent
    "head_node_manager": 10, "head_object_manager": 11, "head_agent_http": 12, "head_agent_grpc": 13,
    "head_metrics": 14, "head_runtime_env": 15,
    "node2_node_manager": 16, "node2_object_manager": 17, "node2_agent_http": 18, "node2_agent_grpc": 19,
    "node2_metrics": 20, "node2_runtime_env": 21,
    "head_workers": 30, "node2_workers": 30 + WORKER_PORTS,  # first of WORKER_PORTS ports each
}  # fmt: skip
PORT_SPAN = 30 + 2 * WORKER_PORTS
# Only the server holds S3 credentials (moto accepts any); clients go through the server's artifact proxy.
S3_CREDENTIALS = {"AWS_ACCESS_KEY_ID": "albert-local", "AWS_SECRET_ACCESS_KEY": "albert-local-secret",
                  "AWS_DEFAULT_REGION": "us-east-1"}  # fmt: skip
# Variables of the caller's shell that must not leak into the stack's processes.
_SCRUB = ("RAY_ADDRESS", "RAY_API_SERVER_ADDRESS", "MLFLOW_TRACKING_URI", "MLFLOW_REGISTRY_URI",
          "MLFLOW_S3_ENDPOINT_URL", "PREFECT_API_URL", "PREFECT_HOME", "PREFECT_PROFILE",
          "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_PROFILE",
          "PREFECT_SERVER_DATABASE_CONNECTION_URL", "PREFECT_API_DATABASE_CONNECTION_URL")  # fmt: skip


class StackError(RuntimeError):
    """A part failed to start, or the state dir is in a state we refuse to touch; one line, names the log."""


class _Aborted(Exception):
    """A part stopped waiting because another one failed."""


# --- configuration -------------------------------------------------------------------------------------------


def default_state_dir() -> Path:
    return Path(os.environ.get("ALBERT_STACK_DIR") or REPO / ".albert-stack").expanduser().absolute()


def parse_ports(text: str | None) -> dict[str, int]:
    """`mlflow=5001,prefect=4201` -> {"mlflow": 5001, "prefect": 4201}."""
    ports: dict[str, int] = {}
    for item in filter(None, (s.strip() for s in (text or "").split(","))):
        name, _, value = item.partition("=")
        if name not in PORT_OFFSETS or not value.isdigit():
            raise StackError(
                f"bad port override {item!r}: use NAME=PORT with NAME one of {', '.join(PORT_OFFSETS)}"
            )
        ports[name] = int(value)
    return ports


@dataclass
class StackConfig:
    state_dir: Path = field(default_factory=default_state_dir)
    base_port: int = field(
        default_factory=lambda: int(os.environ.get("ALBERT_STACK_BASE_PORT", DEFAULT_BASE_PORT))
    )
    ports: dict[str, int] = field(default_factory=lambda: parse_ports(os.environ.get("ALBERT_STACK_PORTS")))
    home: Path | None = None  # ALBERT_HOME of the worker and Ray nodes; default <state_dir>/home
    cpus_per_node: int = 2
    object_store_mb: int = 300  # per Ray node
    prefect_ui: bool = True
    # Seconds each part may take from its launch to healthy: Python servers start slowly on 2 busy cores.
    timeout_s: float = 300.0

    def resolved_ports(self) -> dict[str, int]:
        return {name: self.ports.get(name, self.base_port + offset) for name, offset in PORT_OFFSETS.items()}


@dataclass
class Stack:
    """A running stack: where each part answers, and what to export to use it."""

    state_dir: Path
    home: Path
    ports: dict[str, int]
    urls: dict[str, str]
    pids: dict[str, list[int]]
    start_seconds: float | None = None
    reused: bool = False

    def env(self) -> dict[str, str]:
        """What a client exports: no S3 credentials needed (artifacts go through the MLflow server)."""
        return {
            "ALBERT_HOME": str(self.home),
            "MLFLOW_TRACKING_URI": self.urls["mlflow"],
            "PREFECT_API_URL": self.urls["prefect_api"],
            "RAY_ADDRESS": self.urls["ray_gcs"],  # drivers: ray.init, `albert train`, Ray Data jobs
            "RAY_API_SERVER_ADDRESS": self.urls["ray_dashboard"],  # Jobs API: `ray job submit`, train_flow
            "RAY_AUTH_MODE": "token",  # clients send the user's token (~/.ray/auth_token)
        }

    def s3_env(self) -> dict[str, str]:
        """For direct access to the S3 store (admin, tests): not needed by clients of the MLflow server."""
        return {"MLFLOW_S3_ENDPOINT_URL": self.urls["s3"], **S3_CREDENTIALS}


# --- small helpers -------------------------------------------------------------------------------------------

_NO_PROXY = urllib.request.build_opener(urllib.request.ProxyHandler({}))


def http(url: str, *, method: str = "GET", body: Any = None, timeout: float = 3.0,
         headers: dict[str, str] | None = None) -> tuple[int, str]:  # fmt: skip
    """(status, text) of one request, never through a proxy; HTTP error statuses are returned, not raised."""
    data = None if body is None else json.dumps(body).encode()
    headers = {**({"Content-Type": "application/json"} if data else {}), **(headers or {})}
    req = urllib.request.Request(url, data=data, method=method, headers=headers)
    try:
        with _NO_PROXY.open(req, timeout=timeout) as r:
            return r.status, r.read().decode(errors="replace")
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode(errors="replace")


def port_free(port: int) -> bool:
    """Could a server listen on 127.0.0.1:`port`? (SO_REUSEADDR, as servers bind: a TIME_WAIT left by a closed
    connection does not count as taken.)"""
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def _bin(name: str) -> str:
    """A console script of this interpreter's environment (the venv), so every part runs the same packages."""
    path = Path(sys.executable).parent / name
    if not path.exists():
        found = shutil.which(name)
        if not found:
            raise StackError(f"{name}: not found next to {sys.executable} nor on PATH; install '.[dev]'")
        return found
    return str(path)


def pg_bin_dir() -> Path:
    """Folder with initdb/postgres: $ALBERT_PG_BIN, Debian's /usr/lib/postgresql/<newest>/bin, or PATH."""
    if os.environ.get("ALBERT_PG_BIN"):
        return Path(os.environ["ALBERT_PG_BIN"])
    versions = sorted(Path("/usr/lib/postgresql").glob("*/bin/initdb"), key=lambda p: int(p.parts[-3]))
    if versions:
        return versions[-1].parent
    found = shutil.which("initdb")
    if found:
        return Path(found).resolve().parent
    raise StackError("postgres: initdb not found (apt-get install postgresql, or set ALBERT_PG_BIN)")


def _pg_account() -> tuple[str | None, int, int]:
    """(user to run postgres as, uid, gid): PostgreSQL refuses root, so root runs it as `postgres` (or
    `nobody`); anyone else runs it as themselves."""
    if os.geteuid() != 0:
        return None, os.geteuid(), os.getegid()
    for name in ("postgres", "nobody"):
        with contextlib.suppress(KeyError):
            entry = pwd.getpwnam(name)
            return name, entry.pw_uid, entry.pw_gid
    raise StackError("postgres: running as root and no `postgres` or `nobody` user to run PostgreSQL as")


def _as_user(user: str | None) -> dict[str, Any]:
    """Popen arguments that run a child as `user` (with its group only), or as ourselves."""
    if user is None:
        return {}
    return {"user": user, "group": pwd.getpwnam(user).pw_gid, "extra_groups": []}


def _reachable_by(path: Path, uid: int) -> bool:
    """Can `uid` traverse every existing ancestor of `path`? (pytest's tmp dirs are 0700 root.)"""
    for parent in [path, *path.parents]:
        if not parent.exists():
            continue
        st = parent.stat()
        if not (st.st_uid == uid or st.st_mode & 0o001):
            return False
    return True


def ray_auth_token() -> str | None:
    """The token Ray clients of this user send ($RAY_AUTH_TOKEN, $RAY_AUTH_TOKEN_PATH, ~/.ray/auth_token)."""
    if os.environ.get("RAY_AUTH_TOKEN"):
        return os.environ["RAY_AUTH_TOKEN"].strip()
    path = Path(os.environ.get("RAY_AUTH_TOKEN_PATH") or Path.home() / ".ray" / "auth_token")
    with contextlib.suppress(OSError):
        return path.read_text().strip() or None
    return None


def ensure_ray_auth_token() -> None:
    """Ray 2.60 clusters use token authentication (clients send the user's token): make sure this user has one,
    as `ray start` would create it (~/.ray/auth_token, mode 0600)."""
    if ray_auth_token():
        return
    path = Path(os.environ.get("RAY_AUTH_TOKEN_PATH") or Path.home() / ".ray" / "auth_token")
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(secrets.token_hex(32))


def ray_headers() -> dict[str, str]:
    token = ray_auth_token()
    return {"Authorization": f"Bearer {token}"} if token else {}


def _environment(**extra: str) -> dict[str, str]:
    """The caller's environment without stack variables, this venv's bin first on PATH, plus `extra`."""
    env = {k: v for k, v in os.environ.items() if k not in _SCRUB}
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '/usr/bin:/bin')}"
    env["PYTHONUNBUFFERED"] = "1"
    return env | extra


def _last_line(log: Path) -> str:
    with contextlib.suppress(OSError):
        lines = [ln.strip() for ln in log.read_text(errors="replace").splitlines() if ln.strip()]
        if lines:
            return lines[-1][:300]
    return ""


# --- the state file ------------------------------------------------------------------------------------------


def read_state(state_dir: Path) -> dict[str, Any] | None:
    path = Path(state_dir) / STATE_FILE
    if not path.is_file():
        return None
    return json.loads(path.read_text())


def _proc(entry: dict[str, Any]) -> psutil.Process | None:
    """The recorded process if it is still the same one (pid and start time) and not a zombie."""
    try:
        p = psutil.Process(entry["pid"])
        if abs(p.create_time() - entry["create_time"]) > 1.0 or p.status() == psutil.STATUS_ZOMBIE:
            return None
        return p
    except psutil.Error:
        return None


def _ray_procs(temp_dirs: list[str]) -> list[psutil.Process]:
    """Every process of our Ray nodes: their command lines name the node's temp dir (raylet, GCS, dashboard,
    agents, workers, job drivers); other Ray runtimes on the machine use other temp dirs."""
    if not temp_dirs:
        return []
    found = []
    for p in psutil.process_iter(["cmdline"]):
        with contextlib.suppress(psutil.Error):
            cmd = " ".join(p.info["cmdline"] or [])
            if any(t in cmd for t in temp_dirs):
                found.append(p)
    return found


def _ray_startup_timeout(log: Path) -> bool:
    with contextlib.suppress(OSError):
        return "timed out during startup" in log.read_text(errors="replace")[-5000:]
    return False


def _end(procs: list[psutil.Process], grace: float) -> list[psutil.Process]:
    """SIGTERM, `grace` seconds, SIGKILL; returns what is still alive after that."""
    for p in procs:
        with contextlib.suppress(psutil.Error):
            p.terminate()
    _, alive = psutil.wait_procs(procs, timeout=grace)
    for p in alive:
        with contextlib.suppress(psutil.Error):
            p.kill()
    return psutil.wait_procs(alive, timeout=10)[1]


def _tree(procs: list[psutil.Process]) -> list[psutil.Process]:
    out: dict[int, psutil.Process] = {}
    for p in procs:
        with contextlib.suppress(psutil.Error):
            out.setdefault(p.pid, p)
            for child in p.children(recursive=True):
                out.setdefault(child.pid, child)
    return list(out.values())


def _group(entries: list[dict[str, Any]]) -> list[psutil.Process]:
    """Processes in the process groups of the recorded leaders (each part is launched in its own session),
    including those whose parent, or the leader itself, has exited; only ones born after their leader."""
    born = {e["pid"]: e["create_time"] for e in entries}
    found = []
    for p in psutil.process_iter():
        with contextlib.suppress(psutil.Error, OSError):
            group = os.getpgid(p.pid)
            if p.pid not in born and group in born and p.create_time() >= born[group] - 1.0:
                found.append(p)
    return found


def part_processes(state: dict[str, Any], part: str) -> list[psutil.Process]:
    """The live processes of `part`: the recorded ones, their process groups and descendants, and for Ray those
    naming its temp dir."""
    entries = state.get("processes", {}).get(part, [])
    procs = [p for e in entries if (p := _proc(e))] + _group(entries)
    if part.startswith("ray-"):
        temp = state.get("ray_temp_dirs", {}).get(part)
        procs += _ray_procs([temp] if temp else [])
    return _tree(procs)


# --- health checks -------------------------------------------------------------------------------------------


def _ray_alive_nodes(dashboard: str) -> int:
    status, text = http(f"{dashboard}/api/v0/nodes?limit=100", timeout=5, headers=ray_headers())
    if status != 200:
        raise RuntimeError(f"/api/v0/nodes answered {status}")
    nodes = json.loads(text)["data"]["result"]["result"]
    return sum(n.get("state") == "ALIVE" for n in nodes)


def health(part: str, urls: dict[str, str], timeout: float = 3.0) -> tuple[bool, str]:
    """(healthy, one-line detail) of one part, by asking it."""
    try:
        if part == "postgres":
            import psycopg2

            with (
                contextlib.closing(
                    psycopg2.connect(urls["postgres_admin"], connect_timeout=int(timeout))
                ) as c,
                c.cursor() as cur,
            ):
                cur.execute("SELECT datname FROM pg_database WHERE datname IN ('mlflow', 'prefect')")
                names = sorted(r[0] for r in cur.fetchall())
            return names == ["mlflow", "prefect"], f"databases: {', '.join(names) or 'none'}"
        if part == "s3":
            status, text = http(f"{urls['s3']}/{BUCKET}?list-type=2&max-keys=1", timeout=timeout)
            return status == 200, f"bucket {BUCKET}: HTTP {status}"
        if part == "mlflow":
            status, text = http(f"{urls['mlflow']}/health", timeout=timeout)
            return status == 200, f"/health: HTTP {status} {text.strip()[:40]}"
        if part == "prefect-server":
            status, text = http(f"{urls['prefect_api']}/health", timeout=timeout)
            return status == 200 and text.strip() == "true", f"/api/health: HTTP {status} {text.strip()[:40]}"
        if part == "prefect-worker":
            status, text = http(f"{urls['prefect_api']}/work_pools/{WORK_POOL}/workers/filter", method="POST",
                                body={"limit": 20, "offset": 0}, timeout=timeout)  # fmt: skip
            if status != 200:
                return False, f"pool {WORK_POOL}: HTTP {status}"
            online = [w["name"] for w in json.loads(text) if w.get("status") == "ONLINE"]
            return bool(online), f"pool {WORK_POOL}: {len(online)} worker(s) online"
        if part == "ray-head":
            status, text = http(
                f"{urls['ray_dashboard']}/api/version", timeout=timeout, headers=ray_headers()
            )
            if status != 200:
                return False, f"/api/version: HTTP {status}"
            return True, f"Ray {json.loads(text).get('ray_version')}, Jobs API up"
        if part == "ray-node2":
            alive = _ray_alive_nodes(urls["ray_dashboard"])
            return alive >= 2, f"{alive} alive node(s)"
    except Exception as e:  # unreachable is an answer here, not an error
        return False, f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"[:200]
    raise ValueError(part)


# --- start ---------------------------------------------------------------------------------------------------


class _Starter:
    def __init__(self, cfg: StackConfig) -> None:
        self.cfg = cfg
        self.state_dir = Path(cfg.state_dir).absolute()
        self.logs = self.state_dir / "logs"
        self.ports = cfg.resolved_ports()
        self.home = Path(cfg.home or self.state_dir / "home").absolute()
        self.lock = threading.Lock()
        self.failed = threading.Event()  # another part failed: the others stop waiting
        self.popens: list[subprocess.Popen] = []
        p = self.ports
        self.urls = {
            "postgres": f"postgresql+psycopg2://postgres@127.0.0.1:{p['postgres']}/mlflow",
            "postgres_admin": f"postgresql://postgres@127.0.0.1:{p['postgres']}/postgres",  # libpq form, for psycopg2
            "prefect_db": f"postgresql+asyncpg://postgres@127.0.0.1:{p['postgres']}/prefect",
            "s3": f"http://127.0.0.1:{p['s3']}",
            "mlflow": f"http://127.0.0.1:{p['mlflow']}",
            "prefect_api": f"http://127.0.0.1:{p['prefect']}/api",
            "prefect_ui": f"http://127.0.0.1:{p['prefect']}",
            "ray_gcs": f"127.0.0.1:{p['ray_gcs']}",
            "ray_dashboard": f"http://127.0.0.1:{p['ray_dashboard']}",
        }
        self.state: dict[str, Any] = {
            "state_dir": str(self.state_dir), "home": str(self.home), "ports": self.ports, "urls": self.urls,
            "processes": {}, "ray_temp_dirs": {}, "pg_data": None, "started_at": time.time(),
            "python": sys.executable,
        }  # fmt: skip

    # bookkeeping
    def save(self) -> None:
        with self.lock:
            tmp = self.state_dir / f".{STATE_FILE}.tmp"
            tmp.write_text(json.dumps(self.state, indent=2, sort_keys=True))
            os.replace(tmp, self.state_dir / STATE_FILE)

    def log(self, part: str) -> Path:
        return self.logs / f"{part}.log"

    def launch(self, part: str, argv: list[str], env: dict[str, str], *, cwd: Path | None = None,
               user: str | None = None) -> subprocess.Popen:  # fmt: skip
        with open(self.log(part), "ab") as log:
            log.write(f"\n$ {' '.join(argv)}\n".encode())
            log.flush()
            proc = subprocess.Popen(
                argv,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                env=env,
                cwd=cwd or self.state_dir,
                start_new_session=True,
                **_as_user(user),
            )
        self.popens.append(proc)
        with contextlib.suppress(psutil.Error):
            created = psutil.Process(proc.pid).create_time()
            with self.lock:
                self.state["processes"].setdefault(part, []).append({"pid": proc.pid, "create_time": created})
        self.save()
        return proc

    def wait(self, part: str, check: Callable[[], tuple[bool, str]], proc: subprocess.Popen | None,
             timeout: float | None = None) -> str:  # fmt: skip
        deadline = time.monotonic() + (timeout or self.cfg.timeout_s)
        detail = "no answer yet"
        while True:
            if self.failed.is_set():
                raise _Aborted(part)
            ok, detail = check()
            if ok:
                return detail
            if proc is not None and proc.poll() is not None:
                raise StackError(f"{part}: exited with status {proc.returncode} before it was healthy "
                                 f"({detail}); log: {self.log(part)} (last line: {_last_line(self.log(part))})")  # fmt: skip
            if time.monotonic() > deadline:
                raise StackError(f"{part}: not healthy after {timeout or self.cfg.timeout_s:.0f} s ({detail}); "
                                 f"log: {self.log(part)} (last line: {_last_line(self.log(part))})")  # fmt: skip
            time.sleep(0.5)

    # parts
    def postgres(self) -> None:
        user, uid, gid = _pg_account()
        bindir = pg_bin_dir()
        data = self.state_dir / "postgres"
        if not _reachable_by(
            self.state_dir, uid
        ):  # e.g. under pytest's private tmp dirs: a folder it can reach
            data = Path(tempfile.mkdtemp(prefix="albert-pg-"))
        data.mkdir(mode=0o700, exist_ok=True)
        os.chown(data, uid, gid)
        self.state["pg_data"] = str(data)
        self.save()
        env = _environment(LC_ALL="C", LANG="C")
        with open(self.log("postgres"), "ab") as log:
            initdb = subprocess.run(
                [
                    str(bindir / "initdb"),
                    "-D",
                    str(data),
                    "-U",
                    "postgres",
                    "-A",
                    "trust",
                    "-E",
                    "UTF8",
                    "--no-locale",
                    "--no-sync",
                ],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                env=env,
                cwd=data,
                timeout=self.cfg.timeout_s,
                **_as_user(user),
            )
        if initdb.returncode:
            raise StackError(
                f"postgres: initdb failed (status {initdb.returncode}); log: {self.log('postgres')}"
            )
        proc = self.launch("postgres", [
            str(bindir / "postgres"), "-D", str(data), "-p", str(self.ports["postgres"]),
            "-c", "listen_addresses=127.0.0.1", "-c", "unix_socket_directories=",
            "-c", "fsync=off", "-c", "synchronous_commit=off", "-c", "full_page_writes=off",
            "-c", "max_connections=100", "-c", "shared_buffers=64MB",
        ], env, cwd=data, user=user)  # fmt: skip

        def ready() -> tuple[bool, str]:
            import psycopg2

            try:
                psycopg2.connect(self.urls["postgres_admin"], connect_timeout=2).close()
                return True, "accepting connections"
            except psycopg2.OperationalError as e:
                return False, str(e).strip().splitlines()[0] if str(
                    e
                ).strip() else "not accepting connections"

        self.wait("postgres", ready, proc)
        import psycopg2

        with contextlib.closing(psycopg2.connect(self.urls["postgres_admin"], connect_timeout=5)) as conn:
            conn.autocommit = True
            with conn.cursor() as cur:
                for db in ("mlflow", "prefect"):
                    cur.execute("SELECT 1 FROM pg_database WHERE datname = %s", (db,))
                    if not cur.fetchone():
                        cur.execute(f'CREATE DATABASE "{db}"')

    def s3(self) -> None:
        proc = self.launch("s3", [_bin("moto_server"), "-H", "127.0.0.1", "-p", str(self.ports["s3"])],
                           _environment(**S3_CREDENTIALS))  # fmt: skip

        def up() -> tuple[bool, str]:
            try:
                status, _ = http(f"{self.urls['s3']}/", timeout=2)
                return status == 200, f"HTTP {status}"
            except OSError as e:
                return False, str(e)

        self.wait("s3", up, proc)
        status, text = http(f"{self.urls['s3']}/{BUCKET}", method="PUT", timeout=10)
        if status not in (200, 409):
            raise StackError(
                f"s3: creating bucket {BUCKET} answered {status} {text[:100]}; log: {self.log('s3')}"
            )

    def ray_node(self, part: str) -> None:
        """`ray start --block` for the head or the second node. Ray gives a raylet a fixed 30 s to register with
        the GCS (ray/_private/node.py); on a busy 2-core machine starting everything at once that can pass, so
        that one failure is retried with a fresh temp dir."""
        for attempt in range(1, RAY_START_ATTEMPTS + 1):
            proc, temp = self._ray_start(part)
            try:
                self.wait(part, lambda: health(part, self.urls), proc)
                return
            except StackError:
                if (
                    attempt == RAY_START_ATTEMPTS
                    or proc.poll() is None
                    or not _ray_startup_timeout(self.log(part))
                ):
                    raise
            _end(_tree(_ray_procs([temp])), grace=5.0)
            shutil.rmtree(temp, ignore_errors=True)
            with self.lock:
                self.state["processes"].pop(part, None)
            with open(self.log(part), "a") as log:
                log.write(
                    f"\n# {part}: raylet did not register in time (attempt {attempt}); starting again\n"
                )

    def _ray_start(self, part: str) -> tuple[subprocess.Popen, str]:
        head = part == "ray-head"
        prefix = "head" if head else "node2"
        temp = tempfile.mkdtemp(
            prefix=f"albert-{prefix}-", dir="/tmp"
        )  # short: Ray's socket paths are limited
        with self.lock:
            self.state["ray_temp_dirs"][part] = temp
        self.save()
        p = self.ports
        argv = [_bin("ray"), "start", "--block", "--node-ip-address=127.0.0.1", f"--temp-dir={temp}",
                f"--num-cpus={self.cfg.cpus_per_node}", f"--object-store-memory={self.cfg.object_store_mb << 20}",
                f"--node-manager-port={p[prefix + '_node_manager']}",
                f"--object-manager-port={p[prefix + '_object_manager']}",
                f"--dashboard-agent-listen-port={p[prefix + '_agent_http']}",
                f"--dashboard-agent-grpc-port={p[prefix + '_agent_grpc']}",
                f"--metrics-export-port={p[prefix + '_metrics']}",
                f"--runtime-env-agent-port={p[prefix + '_runtime_env']}",
                f"--min-worker-port={p[prefix + '_workers']}",
                f"--max-worker-port={p[prefix + '_workers'] + WORKER_PORTS - 1}",
                "--disable-usage-stats"]  # fmt: skip
        if head:
            argv += ["--head", f"--port={p['ray_gcs']}", "--dashboard-host=127.0.0.1",
                     f"--dashboard-port={p['ray_dashboard']}", "--include-dashboard=true",
                     f"--ray-client-server-port={p['ray_client']}"]  # fmt: skip
        else:
            argv += [f"--address={self.urls['ray_gcs']}", '--resources={"node2": 1}']
        # Jobs submitted by hand (`ray job submit -- albert train …`) find the stack's storage and tracking.
        env = _environment(ALBERT_HOME=str(self.home), MLFLOW_TRACKING_URI=self.urls["mlflow"],
                           RAY_USAGE_STATS_ENABLED="0", RAY_AUTH_MODE="token")  # fmt: skip
        return self.launch(part, argv, env, cwd=REPO), temp

    def mlflow(self) -> None:
        env = _environment(
            MLFLOW_S3_ENDPOINT_URL=self.urls["s3"],
            **S3_CREDENTIALS,
            MLFLOW_SERVER_ENABLE_JOB_EXECUTION="false",
        )  # no huey job runner: fewer processes
        (self.state_dir / "mlflow").mkdir(exist_ok=True)
        proc = self.launch("mlflow", [
            _bin("mlflow"), "server", "--backend-store-uri", self.urls["postgres"],
            "--artifacts-destination", f"s3://{BUCKET}", "--serve-artifacts",
            "--host", "127.0.0.1", "--port", str(self.ports["mlflow"]), "--workers", "1",
        ], env, cwd=self.state_dir / "mlflow")  # fmt: skip
        self.wait("mlflow", lambda: health("mlflow", self.urls), proc)

    def prefect_env(self, **extra: str) -> dict[str, str]:
        return _environment(PREFECT_HOME=str(self.state_dir / "prefect"), PREFECT_SERVER_ANALYTICS_ENABLED="false",
                            DO_NOT_TRACK="1", **extra)  # fmt: skip

    def prefect_server(self) -> None:
        env = self.prefect_env(PREFECT_SERVER_DATABASE_CONNECTION_URL=self.urls["prefect_db"],
                               PREFECT_SERVER_UI_ENABLED=str(self.cfg.prefect_ui).lower())  # fmt: skip
        proc = self.launch("prefect-server", [
            _bin("prefect"), "server", "start", "--host", "127.0.0.1", "--port", str(self.ports["prefect"]),
            "--analytics-off", "--ui" if self.cfg.prefect_ui else "--no-ui",
        ], env)  # fmt: skip
        self.wait("prefect-server", lambda: health("prefect-server", self.urls), proc)

    def prefect_worker(self) -> None:
        self.home.mkdir(parents=True, exist_ok=True)
        env = self.prefect_env(PREFECT_API_URL=self.urls["prefect_api"], ALBERT_HOME=str(self.home),
                               MLFLOW_TRACKING_URI=self.urls["mlflow"], RAY_ADDRESS=self.urls["ray_gcs"],
                               RAY_API_SERVER_ADDRESS=self.urls["ray_dashboard"],
                               RAY_AUTH_MODE="token", PREFECT_WORKER_QUERY_SECONDS="2")  # fmt: skip
        proc = self.launch("prefect-worker", [
            _bin("prefect"), "worker", "start", "--pool", WORK_POOL, "--type", "process",
            "--name", f"albert-local-{self.ports['prefect']}",
        ], env, cwd=REPO)  # fmt: skip
        self.wait("prefect-worker", lambda: health("prefect-worker", self.urls), proc)

    def run(self) -> Stack:
        started = time.perf_counter()
        busy = [
            name for name, port in self.ports.items() if not name.endswith("_workers") and not port_free(port)
        ]
        busy += [f"{name}+{i}" for name in ("head_workers", "node2_workers")
                 for i in range(WORKER_PORTS) if not port_free(self.ports[name] + i)][:3]  # fmt: skip
        if busy:
            raise StackError(f"ports in use: {', '.join(f'{n}={self.ports.get(n, n)}' for n in busy)}; "
                             "choose others with --base-port or --ports")  # fmt: skip
        self.logs.mkdir(parents=True, exist_ok=True)
        self.save()
        ensure_ray_auth_token()

        def data_chain() -> None:  # postgres -> (mlflow | prefect server -> worker)
            self.postgres()
            with ThreadPoolExecutor(2) as pool:
                mlflow = pool.submit(chain, self.mlflow)
                prefect = pool.submit(chain, lambda: (self.prefect_server(), self.prefect_worker()))
                for f in (prefect, mlflow):
                    f.result()

        def ray_chain() -> None:
            self.ray_node("ray-head")
            self.ray_node("ray-node2")

        errors: list[BaseException] = []

        def chain(fn: Callable[[], None]) -> None:
            try:
                fn()
            except _Aborted:
                pass
            except BaseException as e:
                errors.append(e)
                self.failed.set()

        with ThreadPoolExecutor(3) as pool:
            for f in [pool.submit(chain, fn) for fn in (data_chain, self.s3, ray_chain)]:
                f.result()
        if errors:
            stop_stack(self.state_dir, keep=True)  # the logs stay for the message to point at
            first = errors[0]
            message = str(first) if isinstance(first, StackError) else f"{type(first).__name__}: {first}"
            raise StackError(
                f"{message}; `stop --state-dir {self.state_dir}` removes what is left"
            ) from first
        self.state["start_seconds"] = round(time.perf_counter() - started, 1)
        self.save()
        return _stack_from_state(self.state)


def _stack_from_state(state: dict[str, Any], reused: bool = False) -> Stack:
    return Stack(state_dir=Path(state["state_dir"]), home=Path(state["home"]), ports=state["ports"],
                 urls=state["urls"], start_seconds=state.get("start_seconds"), reused=reused,
                 pids={part: [e["pid"] for e in entries] for part, entries in state["processes"].items()})  # fmt: skip


def start_stack(cfg: StackConfig | None = None) -> Stack:
    """Start every part and wait until each is healthy; return where they answer. An already running stack in
    the same state dir is reused; a stale one is wiped first; a partly running one is refused."""
    cfg = cfg or StackConfig()
    state_dir = Path(cfg.state_dir).absolute()
    state = read_state(state_dir)
    if state is not None:
        alive = {part: bool(part_processes(state, part)) for part in PARTS}
        if all(alive.values()) and all(health(part, state["urls"])[0] for part in PARTS):
            return _stack_from_state(state, reused=True)
        if any(alive.values()):
            running = ", ".join(p for p, a in alive.items() if a)
            raise StackError(f"stack in {state_dir} is partly running ({running}); "
                             f"run `python -m infra.local.stack stop --state-dir {state_dir}` first")  # fmt: skip
        stop_stack(state_dir)  # stale: remove its leftovers (Ray temp dirs, PostgreSQL data)
    elif state_dir.exists() and any(state_dir.iterdir()):
        raise StackError(
            f"{state_dir} exists and holds no {STATE_FILE}: not a stack state dir, choose another"
        )
    state_dir.mkdir(parents=True, exist_ok=True)
    return _Starter(cfg).run()


# --- stop and status -----------------------------------------------------------------------------------------


def stop_stack(
    state_dir: Path | str | None = None, *, keep: bool = False, timeout: float = 10.0
) -> dict[str, Any]:
    """End every process of the stack in `state_dir` by PID (the worker first, PostgreSQL last), then (unless
    `keep`) remove the state dir, the Ray temp dirs (Ray's logs) and the PostgreSQL data.

    Each process gets `timeout` seconds after SIGTERM (SIGINT for PostgreSQL: its fast shutdown), then SIGKILL:
    a Ray node would otherwise drain for 30 s, which an ephemeral stack does not need. Returns
    {"stopped": {part: [pids]}, "left": [pids alive after SIGKILL: should be empty], "message"}."""
    state_dir = Path(state_dir or default_state_dir()).absolute()
    state = read_state(state_dir)
    if state is None:
        return {"stopped": {}, "left": [], "message": f"no stack state in {state_dir}"}
    ended: dict[str, list[int]] = {}
    everything: list[psutil.Process] = []
    for part in reversed(PARTS):
        procs = part_processes(state, part)
        ended[part] = sorted(p.pid for p in procs)
        sig = signal.SIGINT if part == "postgres" else signal.SIGTERM  # SIGINT: PostgreSQL's fast shutdown
        for p in procs:
            with contextlib.suppress(psutil.Error):
                p.send_signal(sig)
        if part == "prefect-worker":  # no new flow runs while the servers go down
            psutil.wait_procs(procs, timeout=timeout)
        everything += procs
    _, alive = psutil.wait_procs(everything, timeout=timeout)
    for p in alive:
        with contextlib.suppress(psutil.Error):
            p.kill()
    _, left = psutil.wait_procs(alive, timeout=10)
    # Anything a dying Ray raylet spawned meanwhile.
    late = _ray_procs(list(state.get("ray_temp_dirs", {}).values()))
    for p in late:
        with contextlib.suppress(psutil.Error):
            p.kill()
    _, left_late = psutil.wait_procs(late, timeout=10)
    left = [p.pid for p in [*left, *left_late] if p.is_running() and p.status() != psutil.STATUS_ZOMBIE]
    if not keep:
        for folder in [*state.get("ray_temp_dirs", {}).values(), state.get("pg_data")]:
            if folder:
                shutil.rmtree(folder, ignore_errors=True)
        shutil.rmtree(state_dir, ignore_errors=True)
    return {"stopped": ended, "left": left, "message": f"stopped the stack in {state_dir}"}


def stack_status(state_dir: Path | str | None = None) -> dict[str, Any]:
    """Each part: URL, live PIDs, health (asked, with a short timeout), log."""
    state_dir = Path(state_dir or default_state_dir()).absolute()
    state = read_state(state_dir)
    if state is None:
        return {"running": False, "parts": {}, "message": f"no stack state in {state_dir}"}
    urls = state["urls"]
    where = {"postgres": urls["postgres"], "s3": urls["s3"], "mlflow": urls["mlflow"],
             "prefect-server": urls["prefect_ui"], "prefect-worker": f"pool {WORK_POOL}",
             "ray-head": f"{urls['ray_dashboard']} (GCS {urls['ray_gcs']})", "ray-node2": urls["ray_gcs"]}  # fmt: skip
    parts = {}
    for part in PARTS:
        pids = sorted(p.pid for p in part_processes(state, part))
        healthy, detail = health(part, urls) if pids else (False, "not running")
        parts[part] = {"url": where[part], "pids": pids, "healthy": healthy, "detail": detail,
                       "log": str(state_dir / "logs" / f"{part}.log")}  # fmt: skip
    stack = _stack_from_state(state)
    return {"running": all(p["healthy"] for p in parts.values()), "parts": parts, "env": stack.env(),
            "state_dir": str(state_dir), "start_seconds": state.get("start_seconds")}  # fmt: skip


# --- command line --------------------------------------------------------------------------------------------


def _exports(env: dict[str, str]) -> str:
    return "\n".join(f"export {k}={v}" for k, v in env.items())


def _table(parts: dict[str, Any]) -> str:
    return "\n".join(f"{'ok  ' if p['healthy'] else 'DOWN'}  {name:<15} {p['url']:<52} {p['detail']}"
                     for name, p in parts.items())  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m infra.local.stack", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    commands = {name: sub.add_parser(name) for name in ("start", "stop", "status", "env")}
    for p in commands.values():
        p.add_argument(
            "--state-dir", type=Path, default=None, help="default: $ALBERT_STACK_DIR or ./.albert-stack"
        )
    start = commands["start"]
    start.add_argument(
        "--base-port", type=int, default=None, help=f"default: $ALBERT_STACK_BASE_PORT or {DEFAULT_BASE_PORT}"
    )
    start.add_argument(
        "--ports", default=None, help="overrides, e.g. mlflow=5001,prefect=4201 ($ALBERT_STACK_PORTS)"
    )
    start.add_argument(
        "--home", type=Path, default=None, help="ALBERT_HOME for the worker (default: STATE_DIR/home)"
    )
    start.add_argument(
        "--timeout", type=float, default=300.0, help="seconds each part may take to be healthy"
    )
    start.add_argument("--no-ui", action="store_true", help="start the Prefect server without its UI")
    for name in ("start", "status"):
        commands[name].add_argument("--json", action="store_true")
    commands["stop"].add_argument("--keep", action="store_true", help="keep the state dir (logs, data)")
    args = parser.parse_args(argv)
    state_dir = (args.state_dir or default_state_dir()).absolute()
    try:
        if args.command == "start":
            cfg = StackConfig(
                state_dir=state_dir, home=args.home, timeout_s=args.timeout, prefect_ui=not args.no_ui
            )
            if args.base_port is not None:
                cfg.base_port = args.base_port
            if args.ports is not None:
                cfg.ports = parse_ports(args.ports)
            print(f"starting the stack in {state_dir} …", file=sys.stderr)
            stack = start_stack(cfg)
            status = stack_status(state_dir)
            if args.json:
                print(json.dumps(status, sort_keys=True))
                return 0
            print(_table(status["parts"]))
            took = "already running: reused" if stack.reused else f"started in {stack.start_seconds} s"
            print(f"\n# {took}; stop with: python -m infra.local.stack stop --state-dir {state_dir}")
            print(f"# Prefect UI {stack.urls['prefect_ui']}  MLflow UI {stack.urls['mlflow']}  "
                  f"Ray dashboard {stack.urls['ray_dashboard']}")  # fmt: skip
            print(_exports(stack.env()))
            return 0
        if args.command == "stop":
            result = stop_stack(state_dir, keep=args.keep)
            print(result["message"] + ("" if not result["left"] else f"; still alive: {result['left']}"))
            return 1 if result["left"] else 0
        if args.command == "env":
            state = read_state(state_dir)
            if state is None:
                raise StackError(f"no stack state in {state_dir}; start one first")
            print(_exports(_stack_from_state(state).env()))
            return 0
        status = stack_status(state_dir)
        if args.json:
            print(json.dumps(status, sort_keys=True))
        elif not status["parts"]:
            print(status["message"])
        else:
            print(_table(status["parts"]))
            print(_exports(status["env"]))
        return 0 if status["running"] else 1
    except StackError as e:
        print(f"stack: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("stack: interrupted; run `stop` to end what was started", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
