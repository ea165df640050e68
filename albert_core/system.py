"""How many cores this process may really use: the CPU affinity mask, capped by a cgroup v2 CPU quota (a
container limited to 4 CPUs on a 64-core node reports 64 from `os.cpu_count()`, and sizing threads or Ray by that
oversubscribes it badly)."""

from __future__ import annotations

import math
import os
from pathlib import Path

CGROUP_CPU_MAX = Path("/sys/fs/cgroup/cpu.max")


def available_cores() -> int:
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    try:
        quota, period = CGROUP_CPU_MAX.read_text().split()
    except (OSError, ValueError):
        return cores
    if quota == "max":
        return cores
    return max(1, min(cores, math.ceil(int(quota) / int(period))))
