"""P5: how long `albert demo` takes, warm, as a user runs it (goal: <= 300 s, `--quick` <= 90 s).

Every run is `albert demo [--quick] --json --home FRESH` in its own process, timed from launch to exit: the
interpreter, the imports, Ray and Prefect's temporary server all start as they do for a user. "Warm" means after
a first run on this machine: one untimed `--quick` run first fills the page cache and Python's bytecode cache,
and creates the Prefect database that every later run then finds (one temporary PREFECT_HOME for the whole
benchmark). Each run gets its own empty ALBERT_HOME, so nothing of the pipeline's own is reused.

Per-phase seconds come from Prefect's log lines (the time each task finished), so they cover the whole process:
start-up (imports, Prefect's server) until the pipeline flow begins, ingest (Ray's start included), tokenizer,
shards, train, promote, then the predictions and shutdown. The demo's own `phases` (from its JSON line) are kept
beside them when it reports them.

`--quick`: the warm-up and one timed quick demo. Otherwise: the warm-up, then REPS timed runs of each mode.

Run: `python -m benchmarks.demo [--quick] [--reps N]`. Writes benchmarks/results/demo.{json,md}.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

RESULTS = Path(__file__).parent / "results"
TARGETS = {"quick": 90.0, "full": 300.0}  # seconds
SERVER_VARS = ("PREFECT_API_URL", "RAY_ADDRESS", "ALBERT_RAY_ADDRESS", "MLFLOW_TRACKING_URI", "MLFLOW_REGISTRY_URI",
               "ALBERT_HOME")  # fmt: skip
# Prefect's console lines: "18:18:13.484 | INFO    | Task run 'ingest_task-05f' - Finished in state Completed()"
LOG_LINE = re.compile(r"^(\d\d:\d\d:\d\d\.\d+) \| \w+\s*\| (?:Task|Flow) run '([^']+)' - (.*)$")
# (phase, what ends it): a task's name without Prefect's suffix, or the pipeline flow's start.
PHASE_ENDS = (
    ("start-up", "albert-pipeline"),
    ("ingest", "ingest_task"),
    ("tokenizer", "tokenizer_task"),
    ("shards", "shards_task"),
    ("train", "train_task"),
    ("promote", "promote_task"),
)


def load_avg() -> list[float]:
    return [round(x, 2) for x in os.getloadavg()]


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def phase_marks(stderr: str, launched: dt.datetime) -> dict[str, dt.datetime]:
    """When the pipeline flow began and when each task finished (the last time, should Prefect retry one)."""
    marks: dict[str, dt.datetime] = {}
    for line in stderr.splitlines():
        match = LOG_LINE.match(line)
        if not match:
            continue
        clock, name, message = match.groups()
        at = dt.datetime.combine(launched.date(), dt.time.fromisoformat(clock))
        if at < launched - dt.timedelta(hours=1):  # the run crossed midnight
            at += dt.timedelta(days=1)
        if message.startswith("Beginning flow run") and "'albert-pipeline'" in message:
            marks["albert-pipeline"] = at
        elif message.startswith("Finished in state"):
            marks[name.rsplit("-", 1)[0]] = at
    return marks


def phases_from_log(stderr: str, launched: dt.datetime, exited: dt.datetime) -> dict[str, float]:
    """Seconds of each phase found in the log, each from the end of the previous one; the rest is the tail."""
    marks = phase_marks(stderr, launched)
    phases, previous = {}, launched
    for phase, end in PHASE_ENDS:
        if end in marks:
            phases[phase] = round((marks[end] - previous).total_seconds(), 1)
            previous = marks[end]
    phases["predict + shutdown"] = round((exited - previous).total_seconds(), 1)
    return phases


def demo_command() -> list[str]:
    script = Path(sys.executable).with_name("albert")  # the console script a user runs
    return [str(script)] if script.is_file() else [sys.executable, "-m", "flows.cli"]


def run_demo(quick: bool, workdir: Path, env: dict[str, str], label: str) -> dict[str, Any]:
    home = Path(tempfile.mkdtemp(prefix="home-", dir=workdir))
    command = demo_command() + ["demo", "--json", "--home", str(home)] + (["--quick"] if quick else [])
    load_before = load_avg()
    launched = dt.datetime.now()
    started = time.perf_counter()
    done = subprocess.run(command, env=env, capture_output=True, text=True)
    seconds = time.perf_counter() - started
    exited = dt.datetime.now()
    if done.returncode != 0:
        log(done.stderr[-4000:])
        raise SystemExit(f"{label}: `albert demo` exited with {done.returncode}")
    summary = json.loads(done.stdout.strip().splitlines()[-1])
    run = {
        "seconds": round(seconds, 1),
        "demo_seconds": summary.get("seconds"),  # its own clock, from the flow's start
        "phases": phases_from_log(done.stderr, launched, exited),
        "demo_phases": summary.get("phases"),
        "final_step": summary.get("final_step"),
        "promotion": summary.get("promotion"),
        "load_avg_before": load_before,
        "load_avg_after": load_avg(),
    }
    log(f"{label}: {run['seconds']} s ({', '.join(f'{k} {v}' for k, v in run['phases'].items())})")
    return run


def demo_env(prefect_home: Path) -> dict[str, str]:
    """The user's environment minus what would point the demo at servers or a home other than its defaults."""
    env = {k: v for k, v in os.environ.items() if k not in SERVER_VARS}
    return {**env, "PREFECT_HOME": str(prefect_home)}


def bench(modes: tuple[str, ...], reps: int, warm_up: bool = True) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="albert-bench-demo-") as tmp:
        workdir = Path(tmp)
        env = demo_env(workdir / "prefect")
        warmup = run_demo(True, workdir, env, "warm-up (quick, untimed)") if warm_up else {"seconds": 0.0}
        runs: dict[str, list[dict[str, Any]]] = {mode: [] for mode in modes}
        for rep in range(reps):
            for mode in modes:
                runs[mode].append(run_demo(mode == "quick", workdir, env, f"{mode} {rep}"))
    out: dict[str, Any] = {"warmup_seconds": warmup["seconds"], "runs": {}}
    for mode, timed in runs.items():
        seconds = [r["seconds"] for r in timed]
        out["runs"][mode] = {
            "target_seconds": TARGETS[mode],
            "seconds": seconds,
            "median_seconds": statistics.median(seconds),
            "ratio": TARGETS[mode] / statistics.median(seconds),
            "phases": {
                k: statistics.median(r["phases"].get(k, 0.0) for r in timed) for k in timed[0]["phases"]
            },
            "runs": timed,
        }
    return out


def write_results(result: dict[str, Any], env: dict[str, Any], quick: bool) -> str:
    RESULTS.mkdir(exist_ok=True)
    goal = "seconds <= 300 (full), <= 90 (--quick), warm"
    (RESULTS / "demo.json").write_text(
        json.dumps({"goal": goal, "quick": quick, "env": env, **result}, indent=2)
    )
    lines = [
        "| demo | warm seconds (median, runs) | target | ratio target / s | met | phases (median s) |",
        "|---|---|---|---|---|---|",
    ]
    for mode, r in result["runs"].items():
        phases = ", ".join(f"{k} {v:.0f}" for k, v in r["phases"].items())
        met = "met" if r["ratio"] >= 1 else "missed"
        lines.append(
            f"| {mode} | {r['median_seconds']:.0f} ({', '.join(f'{s:.0f}' for s in r['seconds'])}) "
            f"| {r['target_seconds']:.0f} | {r['ratio']:.2f} | {met} | {phases} |"
        )
    lines.append(
        "\n`albert demo --json --home FRESH` as a subprocess, "
        + (
            f"after an untimed warm-up run ({result['warmup_seconds']:.0f} s)"
            if result["warmup_seconds"]
            else "warm from the benchmarks run before it (no warm-up run)"
        )
        + f"; {env['cpus']} cores, load {env['load_avg_before']} before, "
        f"{env['load_avg_after']} after"
    )
    text = "\n".join(lines) + "\n"
    (RESULTS / "demo.md").write_text(text)
    return text


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument(
        "--quick", action="store_true", help="the quick demo only, timed once after the warm-up"
    )
    parser.add_argument(
        "--reps", type=int, default=None, help="timed runs of each mode (default 1 quick, 2 full)"
    )
    parser.add_argument(
        "--no-warm-up",
        action="store_true",
        help="skip the untimed warm-up (when earlier benchmarks in the same run already loaded the code)",
    )
    args = parser.parse_args()
    modes = ("quick",) if args.quick else ("quick", "full")
    reps = args.reps or (1 if args.quick else 2)
    env = {
        "python": platform.python_version(), "machine": platform.machine(), "cpus": os.cpu_count(),
        "threads": "the demo's defaults (2 Ray Train workers, cores // workers torch threads each)",
        "load_avg_before": load_avg(),
    }  # fmt: skip
    result = bench(modes, reps, warm_up=not args.no_warm_up)
    env["load_avg_after"] = load_avg()
    print(write_results(result, env, args.quick))


if __name__ == "__main__":
    main()
