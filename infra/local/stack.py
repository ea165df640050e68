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

Code: one module per service under `infra/local/services/` (how to start it, ask whether it is healthy, where
it answers), `infra/local/supervisor.py` (start in dependency order, the pid file and logs, stop), and this
module: which services make the stack, and its Python and command-line interface.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psutil

from infra.local.config import (
    DEFAULT_BASE_PORT,
    PORT_OFFSETS,
    PORT_SPAN,
    REPO,
    WORKER_PORTS,
    Site,
    StackConfig,
    default_state_dir,
    parse_ports,
    ports_in_use,
)
from infra.local.net import http, port_free
from infra.local.services import mlflow_server, postgres, prefect, ray_cluster, s3
from infra.local.services.postgres import pg_bin_dir
from infra.local.services.prefect import WORK_POOL
from infra.local.services.ray_cluster import (
    RAY_START_ATTEMPTS,
    ensure_ray_auth_token,
    ray_auth_token,
    ray_headers,
)
from infra.local.services.ray_cluster import ray_processes as _ray_procs
from infra.local.services.s3 import BUCKET, S3_CREDENTIALS
from infra.local.supervisor import (
    STATE_FILE,
    Service,
    StackError,
    Supervisor,
    processes_of,
    read_state,
    stop_services,
)

__all__ = [
    "BUCKET", "DEFAULT_BASE_PORT", "PARTS", "PORT_OFFSETS", "PORT_SPAN", "RAY_START_ATTEMPTS", "REPO",
    "S3_CREDENTIALS", "SERVICES", "STATE_FILE", "WORKER_PORTS", "WORK_POOL", "Stack", "StackConfig",
    "StackError", "_ray_procs", "default_state_dir", "ensure_ray_auth_token", "health", "http", "main",
    "parse_ports", "part_processes", "pg_bin_dir", "port_free", "ray_auth_token", "ray_headers", "read_state",
    "stack_status", "start_stack", "stop_stack",
]  # fmt: skip

# Parts in start order (each also waits for those it names in `after`); `stop` ends them in reverse.
SERVICES: tuple[Service, ...] = (
    postgres.Postgres(), s3.S3(), ray_cluster.RayHead(), ray_cluster.RayNode2(), mlflow_server.MlflowServer(),
    prefect.PrefectServer(), prefect.PrefectWorker(),
)  # fmt: skip
PARTS = tuple(s.name for s in SERVICES)
_BY_NAME = {s.name: s for s in SERVICES}


def _urls(ports: dict[str, int]) -> dict[str, str]:
    return {**postgres.urls(ports), **s3.urls(ports), **mlflow_server.urls(ports), **prefect.urls(ports),
            **ray_cluster.urls(ports)}  # fmt: skip


def _client_env(home: Path, urls: dict[str, str]) -> dict[str, str]:
    return {"ALBERT_HOME": str(home), **mlflow_server.client_env(urls), **prefect.client_env(urls),
            **ray_cluster.client_env(urls)}  # fmt: skip


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
        return _client_env(self.home, self.urls)

    def s3_env(self) -> dict[str, str]:
        """For direct access to the S3 store (admin, tests): not needed by clients of the MLflow server."""
        return s3.admin_env(self.urls)


def _stack_from_state(state: dict[str, Any], reused: bool = False) -> Stack:
    return Stack(state_dir=Path(state["state_dir"]), home=Path(state["home"]), ports=state["ports"],
                 urls=state["urls"], start_seconds=state.get("start_seconds"), reused=reused,
                 pids={part: [e["pid"] for e in entries] for part, entries in state["processes"].items()})  # fmt: skip


def health(part: str, urls: dict[str, str], timeout: float = 3.0) -> tuple[bool, str]:
    """(healthy, one-line detail) of one part, by asking it."""
    if part not in _BY_NAME:
        raise ValueError(part)
    return _BY_NAME[part].health(urls, timeout)


def part_processes(state: dict[str, Any], part: str) -> list[psutil.Process]:
    """The live processes of `part`: the recorded ones, their process groups and descendants, and for Ray those
    naming its temp dir."""
    service = _BY_NAME.get(part)
    return processes_of(state, part, service.strays(state) if service else [])


# --- start ---------------------------------------------------------------------------------------------------


def _start(cfg: StackConfig) -> Stack:
    started = time.perf_counter()
    state_dir = Path(cfg.state_dir).absolute()
    ports = cfg.resolved_ports()
    home = Path(cfg.home or state_dir / "home").absolute()
    urls = _urls(ports)
    site = Site(cfg=cfg, state_dir=state_dir, home=home, ports=ports, urls=urls,
                client_env=_client_env(home, urls))  # fmt: skip
    state: dict[str, Any] = {
        "state_dir": str(state_dir), "home": str(home), "ports": ports, "urls": urls,
        "processes": {}, "ray_temp_dirs": {}, "pg_data": None, "started_at": time.time(),
        "python": sys.executable,
    }  # fmt: skip
    busy = ports_in_use(ports)
    if busy:
        raise StackError(f"ports in use: {', '.join(f'{n}={ports.get(n, n)}' for n in busy)}; "
                         "choose others with --base-port or --ports")  # fmt: skip
    sv = Supervisor(state_dir, state, timeout_s=cfg.timeout_s)
    sv.logs.mkdir(parents=True, exist_ok=True)
    sv.save()
    ensure_ray_auth_token()
    errors = sv.start_all(SERVICES, site)
    if errors:
        stop_stack(state_dir, keep=True)  # the logs stay for the message to point at
        first = errors[0]
        message = str(first) if isinstance(first, StackError) else f"{type(first).__name__}: {first}"
        raise StackError(f"{message}; `stop --state-dir {state_dir}` removes what is left") from first
    state["start_seconds"] = round(time.perf_counter() - started, 1)
    sv.save()
    return _stack_from_state(state)


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
    return _start(cfg)


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
    ended, left = stop_services(state, SERVICES, timeout)
    if not keep:
        for folder in [f for s in SERVICES for f in s.leftovers(state)]:
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
    parts = {}
    for service in SERVICES:
        pids = sorted(p.pid for p in part_processes(state, service.name))
        healthy, detail = service.health(urls) if pids else (False, "not running")
        parts[service.name] = {"url": service.where(urls), "pids": pids, "healthy": healthy, "detail": detail,
                               "log": str(state_dir / "logs" / f"{service.name}.log")}  # fmt: skip
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
