"""An S3 API (moto's server, in memory) with the bucket `mlflow-artifacts`: the MLflow server's artifact
store.

Only the MLflow server holds S3 credentials (moto accepts any); its clients go through its artifact proxy.
"""

from __future__ import annotations

from infra.local.children import child_env, console_script
from infra.local.config import Site
from infra.local.net import http
from infra.local.supervisor import Service, StackError, Supervisor

BUCKET = "mlflow-artifacts"
S3_CREDENTIALS = {"AWS_ACCESS_KEY_ID": "albert-local", "AWS_SECRET_ACCESS_KEY": "albert-local-secret",
                  "AWS_DEFAULT_REGION": "us-east-1"}  # fmt: skip


def urls(ports: dict[str, int]) -> dict[str, str]:
    return {"s3": f"http://127.0.0.1:{ports['s3']}"}


def admin_env(urls: dict[str, str]) -> dict[str, str]:
    """For direct access to the store (admin, tests, the MLflow server itself)."""
    return {"MLFLOW_S3_ENDPOINT_URL": urls["s3"], **S3_CREDENTIALS}


class S3(Service):
    name = "s3"

    def start(self, sv: Supervisor, site: Site) -> None:
        """`moto_server` on loopback, then the bucket."""
        argv = [console_script("moto_server"), "-H", "127.0.0.1", "-p", str(site.ports["s3"])]
        proc = sv.launch(self.name, argv, child_env(**S3_CREDENTIALS))

        def up() -> tuple[bool, str]:
            try:
                status, _ = http(f"{site.urls['s3']}/", timeout=2)
                return status == 200, f"HTTP {status}"
            except OSError as e:
                return False, str(e)

        sv.wait(self.name, up, proc)
        status, text = http(f"{site.urls['s3']}/{BUCKET}", method="PUT", timeout=10)
        if status not in (200, 409):
            raise StackError(
                f"s3: creating bucket {BUCKET} answered {status} {text[:100]}; log: {sv.log(self.name)}"
            )

    def probe(self, urls: dict[str, str], timeout: float) -> tuple[bool, str]:
        status, _ = http(f"{urls['s3']}/{BUCKET}?list-type=2&max-keys=1", timeout=timeout)
        return status == 200, f"bucket {BUCKET}: HTTP {status}"

    def where(self, urls: dict[str, str]) -> str:
        return urls["s3"]
