"""A two-node Ray cluster on loopback: `ray start --head` (GCS, dashboard + Jobs API) and a second node on the
same machine (`ray start --address …`, custom resource `node2`), 2 CPUs each.

Ray 2.60 clusters use token authentication: the nodes run with RAY_AUTH_MODE=token and the user's token
(~/.ray/auth_token, created if missing, as `ray start` would); clients export RAY_AUTH_MODE=token too. Each
node gets its own temp dir under /tmp, named in every command line of its processes: that is how they are
found and ended, never with `ray stop`, which would end every Ray runtime on the machine.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import shutil
import subprocess
import tempfile
from pathlib import Path
from typing import Any

import psutil

from infra.local.children import child_env, console_script
from infra.local.config import REPO, WORKER_PORTS, Site
from infra.local.net import http
from infra.local.supervisor import Service, StackError, Supervisor, end_processes, with_descendants

RAY_START_ATTEMPTS = 3


def urls(ports: dict[str, int]) -> dict[str, str]:
    return {
        "ray_gcs": f"127.0.0.1:{ports['ray_gcs']}",
        "ray_dashboard": f"http://127.0.0.1:{ports['ray_dashboard']}",
    }


def client_env(urls: dict[str, str]) -> dict[str, str]:
    return {
        "RAY_ADDRESS": urls["ray_gcs"],  # drivers: ray.init, `albert train`, Ray Data jobs
        "RAY_API_SERVER_ADDRESS": urls["ray_dashboard"],  # Jobs API: `ray job submit`, train_flow
        "RAY_AUTH_MODE": "token",  # clients send the user's token (~/.ray/auth_token)
    }


# --- the user's auth token -----------------------------------------------------------------------------------


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


# --- finding a node's processes ------------------------------------------------------------------------------


def ray_processes(temp_dirs: list[str]) -> list[psutil.Process]:
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


def _startup_timed_out(log: Path) -> bool:
    with contextlib.suppress(OSError):
        return "timed out during startup" in log.read_text(errors="replace")[-5000:]
    return False


def _alive_nodes(dashboard: str) -> int:
    status, text = http(f"{dashboard}/api/v0/nodes?limit=100", timeout=5, headers=ray_headers())
    if status != 200:
        raise RuntimeError(f"/api/v0/nodes answered {status}")
    nodes = json.loads(text)["data"]["result"]["result"]
    return sum(n.get("state") == "ALIVE" for n in nodes)


# --- the nodes -----------------------------------------------------------------------------------------------


class RayNode(Service):
    """`ray start --block` for one node; `port_prefix` picks its ports in the port plan."""

    port_prefix = ""

    def start(self, sv: Supervisor, site: Site) -> None:
        """Ray gives a raylet a fixed 30 s to register with the GCS (ray/_private/node.py); on a busy 2-core
        machine starting everything at once that can pass, so that one failure is retried with a fresh temp
        dir."""
        for attempt in range(1, RAY_START_ATTEMPTS + 1):
            proc, temp = self._launch(sv, site)
            try:
                sv.wait(self.name, lambda: self.health(site.urls), proc)
                return
            except StackError:
                if (
                    attempt == RAY_START_ATTEMPTS
                    or proc.poll() is None
                    or not _startup_timed_out(sv.log(self.name))
                ):
                    raise
            end_processes(with_descendants(ray_processes([temp])), grace=5.0)
            shutil.rmtree(temp, ignore_errors=True)
            sv.forget(self.name)
            with open(sv.log(self.name), "a") as log:
                log.write(
                    f"\n# {self.name}: raylet did not register in time (attempt {attempt}); starting again\n"
                )

    def _launch(self, sv: Supervisor, site: Site) -> tuple[subprocess.Popen, str]:
        prefix = self.port_prefix
        # Short, under /tmp: Ray's socket paths are limited.
        temp = tempfile.mkdtemp(prefix=f"albert-{prefix}-", dir="/tmp")
        sv.update(lambda state: state["ray_temp_dirs"].update({self.name: temp}))
        p, cfg = site.ports, site.cfg
        argv = [console_script("ray"), "start", "--block", "--node-ip-address=127.0.0.1",
                f"--temp-dir={temp}", f"--num-cpus={cfg.cpus_per_node}",
                f"--object-store-memory={cfg.object_store_mb << 20}",
                f"--node-manager-port={p[prefix + '_node_manager']}",
                f"--object-manager-port={p[prefix + '_object_manager']}",
                f"--dashboard-agent-listen-port={p[prefix + '_agent_http']}",
                f"--dashboard-agent-grpc-port={p[prefix + '_agent_grpc']}",
                f"--metrics-export-port={p[prefix + '_metrics']}",
                f"--runtime-env-agent-port={p[prefix + '_runtime_env']}",
                f"--min-worker-port={p[prefix + '_workers']}",
                f"--max-worker-port={p[prefix + '_workers'] + WORKER_PORTS - 1}",
                "--disable-usage-stats", *self.role_args(site)]  # fmt: skip
        # Jobs submitted by hand (`ray job submit -- albert train …`) find the stack's storage and tracking.
        env = child_env(ALBERT_HOME=str(site.home), MLFLOW_TRACKING_URI=site.urls["mlflow"],
                        RAY_USAGE_STATS_ENABLED="0", RAY_AUTH_MODE="token")  # fmt: skip
        return sv.launch(self.name, argv, env, cwd=REPO), temp

    def role_args(self, site: Site) -> list[str]:
        raise NotImplementedError

    def strays(self, state: dict[str, Any]) -> list[psutil.Process]:
        temp = state.get("ray_temp_dirs", {}).get(self.name)
        return ray_processes([temp] if temp else [])

    def leftovers(self, state: dict[str, Any]) -> list[str]:
        temp = state.get("ray_temp_dirs", {}).get(self.name)
        return [temp] if temp else []


class RayHead(RayNode):
    name = "ray-head"
    port_prefix = "head"

    def role_args(self, site: Site) -> list[str]:
        p = site.ports
        return ["--head", f"--port={p['ray_gcs']}", "--dashboard-host=127.0.0.1",
                f"--dashboard-port={p['ray_dashboard']}", "--include-dashboard=true",
                f"--ray-client-server-port={p['ray_client']}"]  # fmt: skip

    def probe(self, urls: dict[str, str], timeout: float) -> tuple[bool, str]:
        status, text = http(f"{urls['ray_dashboard']}/api/version", timeout=timeout, headers=ray_headers())
        if status != 200:
            return False, f"/api/version: HTTP {status}"
        return True, f"Ray {json.loads(text).get('ray_version')}, Jobs API up"

    def where(self, urls: dict[str, str]) -> str:
        return f"{urls['ray_dashboard']} (GCS {urls['ray_gcs']})"


class RayNode2(RayNode):
    name = "ray-node2"
    after = ("ray-head",)
    port_prefix = "node2"

    def role_args(self, site: Site) -> list[str]:
        return [f"--address={site.urls['ray_gcs']}", '--resources={"node2": 1}']

    def probe(self, urls: dict[str, str], timeout: float) -> tuple[bool, str]:
        alive = _alive_nodes(urls["ray_dashboard"])
        return alive >= 2, f"{alive} alive node(s)"

    def where(self, urls: dict[str, str]) -> str:
        return urls["ray_gcs"]
