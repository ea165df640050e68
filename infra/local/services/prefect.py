"""A Prefect server on PostgreSQL (its own PREFECT_HOME) and a process worker on the pool `albert-process`,
whose flow runs see the stack as a client does (ALBERT_HOME, MLFLOW_TRACKING_URI, PREFECT_API_URL, Ray)."""

from __future__ import annotations

import json

from infra.local.children import child_env, console_script
from infra.local.config import REPO, Site
from infra.local.net import http
from infra.local.supervisor import Service, Supervisor

WORK_POOL = "albert-process"


def urls(ports: dict[str, int]) -> dict[str, str]:
    return {
        "prefect_api": f"http://127.0.0.1:{ports['prefect']}/api",
        "prefect_ui": f"http://127.0.0.1:{ports['prefect']}",
    }


def client_env(urls: dict[str, str]) -> dict[str, str]:
    return {"PREFECT_API_URL": urls["prefect_api"]}


def _prefect_env(site: Site, **extra: str) -> dict[str, str]:
    return child_env(PREFECT_HOME=str(site.state_dir / "prefect"), PREFECT_SERVER_ANALYTICS_ENABLED="false",
                     DO_NOT_TRACK="1", **extra)  # fmt: skip


class PrefectServer(Service):
    name = "prefect-server"
    after = ("postgres",)

    def start(self, sv: Supervisor, site: Site) -> None:
        ui = site.cfg.prefect_ui
        env = _prefect_env(site, PREFECT_SERVER_DATABASE_CONNECTION_URL=site.urls["prefect_db"],
                           PREFECT_SERVER_UI_ENABLED=str(ui).lower())  # fmt: skip
        proc = sv.launch(self.name, [
            console_script("prefect"), "server", "start", "--host", "127.0.0.1",
            "--port", str(site.ports["prefect"]), "--analytics-off", "--ui" if ui else "--no-ui",
        ], env)  # fmt: skip
        sv.wait(self.name, lambda: self.health(site.urls), proc)

    def probe(self, urls: dict[str, str], timeout: float) -> tuple[bool, str]:
        status, text = http(f"{urls['prefect_api']}/health", timeout=timeout)
        return status == 200 and text.strip() == "true", f"/api/health: HTTP {status} {text.strip()[:40]}"

    def where(self, urls: dict[str, str]) -> str:
        return urls["prefect_ui"]


class PrefectWorker(Service):
    name = "prefect-worker"
    after = ("prefect-server",)
    drain_on_stop = True  # no new flow runs while the servers go down

    def start(self, sv: Supervisor, site: Site) -> None:
        site.home.mkdir(parents=True, exist_ok=True)
        env = _prefect_env(site, **site.client_env, PREFECT_WORKER_QUERY_SECONDS="2")
        proc = sv.launch(self.name, [
            console_script("prefect"), "worker", "start", "--pool", WORK_POOL, "--type", "process",
            "--name", f"albert-local-{site.ports['prefect']}",
        ], env, cwd=REPO)  # fmt: skip
        sv.wait(self.name, lambda: self.health(site.urls), proc)

    def probe(self, urls: dict[str, str], timeout: float) -> tuple[bool, str]:
        status, text = http(f"{urls['prefect_api']}/work_pools/{WORK_POOL}/workers/filter", method="POST",
                            body={"limit": 20, "offset": 0}, timeout=timeout)  # fmt: skip
        if status != 200:
            return False, f"pool {WORK_POOL}: HTTP {status}"
        online = [w["name"] for w in json.loads(text) if w.get("status") == "ONLINE"]
        return bool(online), f"pool {WORK_POOL}: {len(online)} worker(s) online"

    def where(self, urls: dict[str, str]) -> str:
        return f"pool {WORK_POOL}"
