"""`mlflow server` on PostgreSQL, artifacts proxied to s3://mlflow-artifacts: clients need only its URL (no S3
credentials: only the server has them)."""

from __future__ import annotations

from infra.local.children import child_env, console_script
from infra.local.config import Site
from infra.local.net import http
from infra.local.services.s3 import BUCKET, admin_env
from infra.local.supervisor import Service, Supervisor


def urls(ports: dict[str, int]) -> dict[str, str]:
    return {"mlflow": f"http://127.0.0.1:{ports['mlflow']}"}


def client_env(urls: dict[str, str]) -> dict[str, str]:
    return {"MLFLOW_TRACKING_URI": urls["mlflow"]}


class MlflowServer(Service):
    name = "mlflow"
    after = ("postgres",)

    def start(self, sv: Supervisor, site: Site) -> None:
        env = child_env(
            **admin_env(site.urls), MLFLOW_SERVER_ENABLE_JOB_EXECUTION="false"
        )  # no huey job runner
        (site.state_dir / "mlflow").mkdir(exist_ok=True)
        proc = sv.launch(self.name, [
            console_script("mlflow"), "server", "--backend-store-uri", site.urls["postgres"],
            "--artifacts-destination", f"s3://{BUCKET}", "--serve-artifacts",
            "--host", "127.0.0.1", "--port", str(site.ports["mlflow"]), "--workers", "1",
        ], env, cwd=site.state_dir / "mlflow")  # fmt: skip
        sv.wait(self.name, lambda: self.health(site.urls), proc)

    def probe(self, urls: dict[str, str], timeout: float) -> tuple[bool, str]:
        status, text = http(f"{urls['mlflow']}/health", timeout=timeout)
        return status == 200, f"/health: HTTP {status} {text.strip()[:40]}"

    def where(self, urls: dict[str, str]) -> str:
        return urls["mlflow"]
