"""What a stack is configured with: its state dir, its ports (a base plus fixed offsets, each overridable),
its ALBERT_HOME and per-node sizes; and `Site`, the layout one start hands to every service."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

from infra.local.net import port_free
from infra.local.supervisor import StackError

REPO = Path(__file__).resolve().parents[2]
DEFAULT_BASE_PORT = 25400
WORKER_PORTS = 100  # per Ray node: the range its worker processes bind to
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


def ports_in_use(ports: dict[str, int]) -> list[str]:
    """Names of the ports something already listens on (of each Ray node's worker range: the first 3
    taken)."""
    busy = [name for name, port in ports.items() if not name.endswith("_workers") and not port_free(port)]
    busy += [f"{name}+{i}" for name in ("head_workers", "node2_workers")
             for i in range(WORKER_PORTS) if not port_free(ports[name] + i)][:3]  # fmt: skip
    return busy


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


@dataclass(frozen=True)
class Site:
    """Where one starting stack lives, as its services need it."""

    cfg: StackConfig
    state_dir: Path
    home: Path  # ALBERT_HOME of the worker and Ray nodes
    ports: dict[str, int]
    urls: dict[str, str]
    client_env: dict[str, str]  # what a client of the stack exports (the Prefect worker is one)
