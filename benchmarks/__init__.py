"""Side-by-side benchmarks (`make bench`, `python -m benchmarks.suite`); each module also runs alone."""

import os
import platform


def torch_env() -> dict:
    """What a training figure depends on besides the code: library versions, threads, cores and machine load
    (record `load_avg_after` when done)."""
    import torch
    import transformers

    return {
        "torch": torch.__version__, "transformers": transformers.__version__, "threads": torch.get_num_threads(),
        "cpus": os.cpu_count(), "machine": platform.machine(), "load_avg_before": os.getloadavg(),
    }  # fmt: skip
