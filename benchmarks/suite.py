"""The benchmark suite (issue 9): every benchmark in its own process, then one summary of the goals.

`python -m benchmarks.suite [--quick] [--only P3 P6 ...]` runs the benchmarks that feed the chosen goals (all of
them by default; `learning_curve` is left out of `--quick`), each as `python -m benchmarks.NAME` in a fresh
interpreter so Ray, torch threads and allocator state do not carry over from one to the next, and records each
one's wall time. The training benchmarks share one temporary ALBERT_HOME, so the corpus, tokenizer and shards they
all start from are built once.

It then reads each benchmark's JSON in benchmarks/results/ through one small adapter per goal and writes
- summary.json: one key per goal, each {goal, target, ratio {median, min, max}, met, unit, raw, source, quick,
  load, threads, status};
- summary.md: the goals table with the raw figures, and the wall time of each benchmark of the last run;
- suite.json: that last run (benchmarks, exit codes, seconds);
- README.md's performance figures, between `<!-- bench:start -->` and `<!-- bench:end -->`.
A goal whose benchmark has no JSON is "not run"; one whose benchmark failed in this run is "failed" (its old JSON
is not trusted); a JSON whose shape the adapter does not know is "unreadable". `--summary-only` rebuilds the
summary and the README from the JSON already there.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from albert_core.errors import UserError

REPO = Path(__file__).resolve().parents[1]
START, END = "<!-- bench:start -->", "<!-- bench:end -->"
PLOTS = ("tokenize_scaling.png", "train_curves.png", "learning_curve.png", "scale.png", "time_to_quality.png")


@dataclass(frozen=True)
class Paths:
    """Where results are read and written, and the README to update (injectable for tests)."""

    results: Path = REPO / "benchmarks" / "results"
    readme: Path = REPO / "README.md"


@dataclass(frozen=True)
class Benchmark:
    name: str  # module under benchmarks/, writing results/NAME.json
    goals: tuple[str, ...]  # the goal keys it feeds (none: curves only)
    in_quick: bool = True
    shared_home: bool = False  # takes --home: reuses the training set-up (corpus, tokenizer, shards)
    quick_args: tuple[str, ...] = ()  # extra arguments in a --quick suite run


BENCHMARKS = (
    Benchmark("model_step", ("P3",)),
    Benchmark("train_curves", ()),
    Benchmark("sop_builder", ("P2_speed", "P2_rss")),
    Benchmark("tokenize_job", ("P1_spm", "P1_hf")),
    Benchmark("train_loader", ("P4_static", "P4_dynamic"), shared_home=True),
    Benchmark("train_scaling", ("P6",), shared_home=True),
    # `albert train` vs HF Trainer to the same held-out MLM loss, same wall-clock budget (full ~6 min, quick ~4).
    Benchmark("time_to_quality", ("P8",), shared_home=True),
    # the book classifier fine-tuned from `albert train`'s model and from a random init, several seeds (~10 min)
    Benchmark("transfer", ("P10_transfer",), shared_home=True),
    # WNUT17 entity F1 from the same pretrained model (reused from `transfer` in the shared home) and from a random
    # init, 2 seeds of 10 epochs (~8 min after `transfer`, ~13 alone; quick ~2)
    Benchmark("ner_transfer", ("P10_ner",), shared_home=True),
    # 10 MB to 1 GB through the CLI (--quick: 10 and 100 MB, a few minutes; the full run needs ~20 GB of memory
    # until ingestion and the SentencePiece job are bounded).
    Benchmark("scale", ("P9_rss", "P9_rss_growth", "P9_throughput", "P9_e2e")),
    # Last but one: by then the code, libraries and corpora are loaded and cached, so the quick run skips the
    # demo's own warm-up (about two minutes).
    Benchmark("demo", ("P5_demo", "P5_demo_quick"), quick_args=("--no-warm-up",)),
    Benchmark("learning_curve", (), in_quick=False, shared_home=True),
)

# --- goals and the adapters reading them from each benchmark's JSON -------------------------------------------


@dataclass(frozen=True)
class Reading:
    """One goal's figure as an adapter reads it: the ratio's median, min and max, and the figures behind it."""

    median: float
    low: float
    high: float
    raw: dict[str, Any]
    figures: str  # the measured figures behind the ratio, in words, for the tables
    threads: Any = None  # None: the JSON's env.threads


Adapter = Callable[[dict[str, Any]], Reading]


class NotRun(Exception):
    """The benchmark ran, but not the part a goal reads (e.g. the full demo in a `--quick` run)."""


@dataclass(frozen=True)
class Goal:
    key: str
    text: str
    target: float
    source: str  # the benchmark whose JSON holds it
    read: Adapter
    at_most: bool = False  # met when the ratio is <= target (memory), else >=
    unit: str = "x"

    def met(self, ratio: float) -> bool:
        return ratio <= self.target if self.at_most else ratio >= self.target


def _spread(d: dict[str, float]) -> tuple[float, float, float]:
    return d["median"], d["min"], d["max"]


def _row_spread(row: dict[str, Any]) -> tuple[float, float, float]:
    return row["ratio"], row["ratio_min"], row["ratio_max"]


def _tokenize(ratio_key: str) -> Adapter:
    def read(data: dict[str, Any]) -> Reading:
        mb_per_s = {name: round(v["median"], 3) for name, v in data["mb_per_s"].items()}
        baseline = "spm_x_cores" if ratio_key == "ours_vs_spm_x_cores" else "hf"
        figures = f"{_num(mb_per_s.get('ours', mb_per_s.get('ours_w2')))} vs {_num(mb_per_s[baseline])} MB/s"
        return Reading(
            *_spread(data["ratios"][ratio_key]), raw={"mb_per_s_median": mb_per_s}, figures=figures
        )

    return read


def _sop_speed(data: dict[str, Any]) -> Reading:
    row = data["rows"][0]
    raw = {k: row[k] for k in ("ours_instances_per_s", "port_instances_per_s", "reps") if k in row}
    figures = f"{_num(row['ours_instances_per_s'])} vs {_num(row['port_instances_per_s'])} instances/s"
    return Reading(*_row_spread(row), raw=raw, figures=figures, threads=data["env"].get("builder_threads"))


def _sop_rss(data: dict[str, Any]) -> Reading:
    """Peak RSS growth of a streaming build over its output's Arrow size (one measurement: no spread)."""
    mem = data["memory"]
    ratio = mem["rss_delta_bytes"] / mem["arrow_bytes"]
    raw = {k: mem[k] for k in ("rss_delta_bytes", "arrow_bytes", "parquet_bytes", "rows") if k in mem}
    raw["rss_delta_over_parquet"] = mem["rss_delta_bytes"] / mem["parquet_bytes"]
    figures = f"{mem['rss_delta_bytes'] / 2**20:.1f} MiB for {mem['arrow_bytes'] / 2**20:.1f} MiB"
    return Reading(ratio, ratio, ratio, raw=raw, figures=figures, threads=data["env"].get("builder_threads"))


def _model_step(data: dict[str, Any]) -> Reading:
    """fp32 at task level (the loss training computes) of the largest preset measured; kernel level beside it."""
    rows = [r for r in data["rows"] if r["dtype"] == "fp32"]
    preset = "base" if any(r["preset"] == "base" for r in rows) else rows[0]["preset"]
    by_level = {r["level"]: r for r in rows if r["preset"] == preset}
    task, kernel = by_level["task"], by_level["kernel"]
    raw = {
        "preset": preset, "batch": task["batch"], "seq_len": task["seq_len"], "reps": task["reps"],
        "ours_tokens_per_s": task["ours_tokens_per_s"], "hf_tokens_per_s": task["hf_tokens_per_s"],
        "kernel_level_ratio": kernel["ratio"],
    }  # fmt: skip
    figures = f"{preset}: {_num(task['ours_tokens_per_s'])} vs {_num(task['hf_tokens_per_s'])} tokens/s"
    return Reading(*_row_spread(task), raw=raw, figures=figures)


def _loader(masking: str) -> Adapter:
    def read(data: dict[str, Any]) -> Reading:
        (row,) = (r for r in data["rows"] if r["masking"] == masking)
        raw = {
            k: row[k]
            for k in ("loader_samples_per_s", "trainer_samples_per_s", "loader_first_batch_s", "reps")
        }
        figures = f"{_num(row['loader_samples_per_s'])} vs {_num(row['trainer_samples_per_s'])} samples/s"
        return Reading(*_row_spread(row), raw=raw, figures=figures)

    return read


def _demo(mode: str, target: float) -> Adapter:
    """Target / warm seconds, so that >= 1 is met; the slowest run gives the min."""

    def read(data: dict[str, Any]) -> Reading:
        if mode not in data["runs"]:
            raise NotRun(f"no {mode} demo in {'a --quick' if data.get('quick') else 'this'} run")
        run = data["runs"][mode]
        seconds = run["seconds"]
        raw = {"seconds": seconds, "phases": run.get("phases"), "warmup_seconds": data.get("warmup_seconds")}
        median = statistics.median(seconds)
        return Reading(target / median, target / max(seconds), target / min(seconds), raw=raw,
                       figures=f"{median:.0f} s")  # fmt: skip

    return read


def _scaling(data: dict[str, Any]) -> Reading:
    r = data["result"]
    raw = {k: r[k] for k in ("samples_per_s_1x2", "samples_per_s_2x1", "global_batch", "steps", "reps")}
    figures = f"{_num(r['samples_per_s_2x1'])} vs {_num(r['samples_per_s_1x2'])} samples/s"
    threads = {"1x2": "1 worker x 2 threads", "2x1": "2 workers x 1 thread"}
    return Reading(*_row_spread(r), raw=raw, figures=figures, threads=threads)


def _time_to_quality(data: dict[str, Any]) -> Reading:
    """HF's seconds to its final held-out MLM loss / ours' to the same loss, from command launch (one run: no
    spread). When ours never reached it the ratio is an upper bound, below 1."""
    r = data["result"]
    launch, first = r["seconds"], r["seconds_from_first_step"]
    ours, hf = data["ours"], data["hf"]
    raw = {
        "target_mlm_loss": r["target_mlm_loss"], "hf_s": launch["hf_s"], "ours_s": launch["ours_s"],
        "ours_reached": launch["ours_reached"], "ratio_from_first_step": first["ratio"],
        "budget_s": data["budget"]["seconds"], "ours_first_step_s": ours["first_step_start_s"],
        "ours_sequences": ours["sequences"], "hf_sequences": hf["sequences"],
        "ours_sequences_per_s": ours["sequences_per_s"], "hf_sequences_per_s": hf["sequences_per_s"],
    }  # fmt: skip
    if launch["ours_reached"]:
        ours_text = f"ours {launch['ours_s']:.0f} s"
    else:
        ours_text = f"ours not within its {ours['last_step_s']:.0f} s (upper bound)"
    figures = f"HF loss {r['target_mlm_loss']:.3f} in {launch['hf_s']:.0f} s, {ours_text}"
    ratio = launch["ratio"]
    return Reading(ratio, ratio, ratio, raw=raw, figures=figures)


def _transfer(data: dict[str, Any]) -> Reading:
    """(pretrained - random accuracy) / (3 standard errors of the eval set), over the fine-tuning seeds; the seeds'
    own ratios give the spread. A collapsed pretrained encoder (too little pretraining) is not a measurement."""
    pretraining = data["setup"]["pretraining"]
    if pretraining.get("collapsed"):
        raise NotRun("the pretrained encoder collapsed (too few pretraining steps for this measurement)")
    r = data["result"]
    seeds = [s["difference"] / s["margin"] for s in r["per_seed"]]
    raw = {
        k: r[k]
        for k in ("difference", "standard_error", "z", "seeds", "seed_difference_sd", "majority_baseline")
    }
    raw |= {"pretrained_accuracy": r["pretrained"]["accuracy"], "random_accuracy": r["random"]["accuracy"],
            "pretraining_steps": pretraining.get("steps")}  # fmt: skip
    figures = (f"pretrained {r['pretrained']['accuracy']:.3f} vs random init {r['random']['accuracy']:.3f} "
               f"(z {r['z']:.1f}, {len(seeds)} seeds)")  # fmt: skip
    return Reading(r["ratio"], min(seeds), max(seeds), raw=raw, figures=figures)


def _ner_transfer(data: dict[str, Any]) -> Reading:
    """Pretrained entity F1 / random init's, means over the fine-tuning seeds; the seeds' own ratios give the spread.
    A random init that finds no entity leaves no ratio: both at 0 is a recipe that measures nothing."""
    r = data["result"]
    pretrained, from_random = r["pretrained"]["f1"], r["random"]["f1"]
    if from_random == 0:
        raise NotRun(
            f"random init's entity F1 is 0 (pretrained {pretrained:.3f}): no ratio"
            if pretrained
            else "entity F1 0 for both inits: the recipe found no entity, measures nothing"
        )
    seeds = [s["pretrained"]["f1"] / s["random"]["f1"] for s in r["per_seed"] if s["random"]["f1"]]
    raw = {k: r[k] for k in ("difference", "standard_error", "z", "seeds", "seed_difference_sd")}
    raw |= {"pretrained_f1": pretrained, "random_f1": from_random,
            "pretraining_steps": data["setup"]["pretraining"].get("steps")}  # fmt: skip
    figures = (f"entity F1 pretrained {pretrained:.3f} vs random init {from_random:.3f} ({r['difference']:+.3f}, "
               f"standard error {r['standard_error']:.3f}, {len(r['seeds'])} seeds)")  # fmt: skip
    return Reading(pretrained / from_random, min(seeds), max(seeds), raw=raw, figures=figures)


def _scale(key: str) -> Adapter:
    """The P9 goals as the scale benchmark evaluated them (the largest size measured against the one before)."""

    def read(data: dict[str, Any]) -> Reading:
        goal = data["goals"][key]
        if "not_run" in goal:
            raise NotRun(goal["not_run"])
        value = goal["value"]
        return Reading(value, value, value, raw=goal["raw"], figures=goal["figures"])

    return read


GOALS = (
    Goal("P1_spm", "tokenize job >= 0.8x raw SentencePiece x cores", 0.8, "tokenize_job",
         _tokenize("ours_vs_spm_x_cores")),
    Goal("P1_hf", "tokenize job >= 4x HF datasets.map + AlbertTokenizerFast", 4.0, "tokenize_job",
         _tokenize("ours_vs_hf")),
    Goal("P2_speed", "SOP builder >= 10x the plain-Python port of the reference", 10.0, "sop_builder", _sop_speed),
    Goal("P2_rss", "SOP builder peak RSS growth <= 2x its output (Arrow bytes)", 2.0, "sop_builder", _sop_rss,
         at_most=True, unit="x output"),
    Goal("P3", "training tokens/s >= 1.2x HF AlbertForPreTraining (fp32, task level)", 1.2, "model_step",
         _model_step),
    Goal("P4_static", "loader >= 5x trainer consumption (static masking)", 5.0, "train_loader", _loader("static")),
    Goal("P4_dynamic", "loader >= 5x trainer consumption (dynamic masking)", 5.0, "train_loader",
         _loader("dynamic")),
    Goal("P5_demo", "`albert demo` <= 300 s warm", 1.0, "demo", _demo("full", 300.0), unit="x (300 s / s)"),
    Goal("P5_demo_quick", "`albert demo --quick` <= 90 s warm", 1.0, "demo", _demo("quick", 90.0),
         unit="x (90 s / s)"),
    Goal("P6", "DDP 2 workers x 1 thread >= 0.85x 1 worker x 2 threads", 0.85, "train_scaling", _scaling),
    Goal("P8", "time to HF Trainer's final held-out MLM loss >= 3x faster (tiny, fp32, same budget)", 3.0,
         "time_to_quality", _time_to_quality),
    Goal("P9_rss", "every data stage's peak RSS at 1 GB <= 3 GB (driver + Ray processes)", 3.0, "scale",
         _scale("P9_rss"), at_most=True, unit="GB"),
    Goal("P9_rss_growth", "every data stage's peak RSS at 1 GB <= 1.5x at 100 MB", 1.5, "scale",
         _scale("P9_rss_growth"), at_most=True),
    Goal("P9_throughput", "every data stage's MB/s at 1 GB >= at 100 MB", 1.0, "scale", _scale("P9_throughput")),
    Goal("P9_e2e", "ingest + tokenize + shards >= 2 MB/s per core at 1 GB", 2.0, "scale", _scale("P9_e2e"),
         unit="MB/s per core"),
    Goal("P10_transfer", "fine-tuning from pretraining beats random init by >= 3 standard errors (books)", 1.0,
         "transfer", _transfer, unit="x (gain / 3 SE)"),
    Goal("P10_ner", "WNUT17 entity F1 from pretraining >= from random init (same recipe and steps)", 1.0,
         "ner_transfer", _ner_transfer, unit="x (F1 / random init's)"),
)  # fmt: skip

# --- the summary -------------------------------------------------------------------------------------------------


def _load(env: dict[str, Any]) -> dict[str, float | None]:
    """The 1-minute load average around the measurement (other processes slow every variant alike)."""
    one_minute = {k: (env.get(f"load_avg_{k}") or [None])[0] for k in ("before", "after")}
    return {k: round(v, 2) if v is not None else None for k, v in one_minute.items()}


def goal_entry(goal: Goal, results: Path, failed: set[str]) -> dict[str, Any]:
    entry: dict[str, Any] = {
        "goal": goal.text, "target": goal.target, "at_most": goal.at_most, "unit": goal.unit,
        "source": f"{goal.source}.json", "ratio": None, "met": None,
    }  # fmt: skip
    path = results / f"{goal.source}.json"
    if goal.source in failed:
        return {**entry, "status": "failed"}
    if not path.is_file():
        return {**entry, "status": "not run"}
    data = json.loads(path.read_text())
    try:
        reading = goal.read(data)
    except NotRun as e:
        return {**entry, "status": f"not run: {e}"}
    except (KeyError, IndexError, ValueError, TypeError, ZeroDivisionError) as e:
        return {**entry, "status": f"unreadable ({type(e).__name__}: {e})"}
    env = data.get("env", {})
    return {
        **entry, "status": "measured",
        "ratio": {"median": reading.median, "min": reading.low, "max": reading.high},
        "met": goal.met(reading.median), "figures": reading.figures, "raw": reading.raw,
        "quick": data.get("quick"), "load": _load(env),
        "threads": reading.threads if reading.threads is not None else env.get("threads"),
    }  # fmt: skip


def build_summary(results: Path, failed: set[str] = frozenset()) -> dict[str, dict[str, Any]]:
    return {goal.key: goal_entry(goal, results, failed) for goal in GOALS}


def _num(x: Any) -> str:
    if isinstance(x, float):
        return f"{x:.3g}" if abs(x) < 1000 else f"{x:.0f}"
    return str(x)


def _flat(value: Any) -> str:
    if isinstance(value, dict):
        return ", ".join(f"{k} {_flat(v)}" for k, v in value.items())
    if isinstance(value, list):
        return "[" + ", ".join(_flat(v) for v in value) + "]"
    return _num(value)


def _target(e: dict[str, Any]) -> str:
    return f"{'<=' if e['at_most'] else '>='} {_num(e['target'])}"


def _measured(e: dict[str, Any]) -> str:
    if e["ratio"] is None:
        return e["status"]
    r = e["ratio"]
    return f"{_num(r['median'])} ({_num(r['min'])}-{_num(r['max'])})"


def _met(e: dict[str, Any]) -> str:
    return "-" if e["met"] is None else ("met" if e["met"] else "**missed**")


def goals_table(summary: dict[str, dict[str, Any]]) -> str:
    """The README's table: goal, target, ratio median (min-max), the figures behind it, met."""
    lines = ["| goal | target | ratio, median (min-max) | figures (median) | |", "|---|---|---|---|---|"]
    lines += [
        f"| {key}: {e['goal']} | {_target(e)} | {_measured(e)} | {e.get('figures', '-')} | {_met(e)} |"
        for key, e in summary.items()
    ]
    return "\n".join(lines)


def summary_markdown(summary: dict[str, dict[str, Any]], run: dict[str, Any] | None) -> str:
    lines = [
        "| key | goal | target | ratio median (min-max) | met | raw figures | quick | load 1-min before-after "
        "| threads | source |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for key, e in summary.items():
        load = e.get("load") or {}
        lines.append(
            f"| {key} | {e['goal']} | {_target(e)} {e['unit']} | {_measured(e)} | {_met(e)} "
            f"| {_flat(e.get('raw', '-'))} | {_flat(e.get('quick'))} "
            f"| {_flat(load.get('before'))}-{_flat(load.get('after'))} | {_flat(e.get('threads'))} "
            f"| {e['source']} |"
        )
    if run:
        only = f", only {' '.join(run['only'])}" if run.get("only") else ""
        lines += ["", f"Last run ({'quick' if run['quick'] else 'full'}{only}, {run['cpus']} cores, "
                  f"{run['seconds']:.0f} s in all):", "", "| benchmark | seconds | exit code |", "|---|---|---|"]  # fmt: skip
        lines += [f"| {name} | {b['seconds']:.0f} | {b['rc']} |" for name, b in run["benchmarks"].items()]
    return "\n".join(lines) + "\n"


def readme_block(summary: dict[str, dict[str, Any]], run: dict[str, Any] | None, results: Path) -> str:
    """What goes between the README's markers: the goals table, how it was measured, where the rest is."""
    quick = {e.get("quick") for e in summary.values() if e["status"] == "measured"}
    how = "`make bench QUICK=1`" if quick == {True} else "`make bench`"
    if True in quick and quick != {True}:
        how += " (some figures from `--quick` runs)"
    if run and not run.get("only"):  # a partial run's time is not the suite's
        how += f" on {run['cpus']} cores, {run['seconds'] / 60:.1f} min in all"
    loads = [v for e in summary.values() for v in (e.get("load") or {}).values() if v is not None]
    if loads:  # a busy machine slows both sides of a ratio, but not always alike: say how busy it was
        how += f", 1-minute load {min(loads):g}-{max(loads):g}"
    plots = ", ".join(f"[{p}](benchmarks/results/{p})" for p in PLOTS if (results / p).is_file())
    return (
        f"{START}\n<!-- generated by `python -m benchmarks.suite` from benchmarks/results/summary.json -->\n\n"
        f"{goals_table(summary)}\n\n"
        f"Measured with {how}. Raw figures, machine load and threads per goal: "
        f"[summary.md](benchmarks/results/summary.md)" + (f"; plots: {plots}" if plots else "") + f".\n{END}"
    )


def replace_block(text: str, block: str) -> str:
    start, end = text.find(START), text.find(END)
    if start < 0 or end < start:
        raise UserError(f"README has no {START} ... {END} block for the benchmark figures")
    return text[:start] + block + text[end + len(END) :]


def write_summary(paths: Paths, failed: set[str] = frozenset(), run: dict[str, Any] | None = None) -> dict:
    """summary.json, summary.md (and suite.json when a run is given) from the results, and the README block."""
    summary = build_summary(paths.results, failed)
    if run is None and (paths.results / "suite.json").is_file():
        run = json.loads((paths.results / "suite.json").read_text())
    elif run is not None:
        (paths.results / "suite.json").write_text(json.dumps(run, indent=2) + "\n")
    (paths.results / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    (paths.results / "summary.md").write_text(summary_markdown(summary, run))
    paths.readme.write_text(
        replace_block(paths.readme.read_text(), readme_block(summary, run, paths.results))
    )
    return summary


# --- running the benchmarks --------------------------------------------------------------------------------------


def select(only: list[str] | None, quick: bool) -> list[Benchmark]:
    """Benchmarks feeding the goals named (a key, or its prefix: P1 is P1_spm and P1_hf) or named themselves."""
    chosen = [b for b in BENCHMARKS if b.in_quick or not quick]
    if not only:
        return chosen
    known = {g.key for g in GOALS} | {b.name for b in BENCHMARKS}
    for word in only:
        if not any(k == word or k.startswith(f"{word}_") for k in known):
            raise UserError(f"--only {word}: not a goal or benchmark (known: {', '.join(sorted(known))})")

    def wanted(b: Benchmark) -> bool:
        return any(w == b.name or any(g == w or g.startswith(f"{w}_") for g in b.goals) for w in only)

    return [b for b in BENCHMARKS if wanted(b)]


def run_benchmarks(benchmarks: list[Benchmark], quick: bool, only: list[str] | None) -> dict[str, Any]:
    started, load_before = time.perf_counter(), os.getloadavg()
    done: dict[str, dict[str, Any]] = {}
    with tempfile.TemporaryDirectory(prefix="albert-bench-suite-") as home:
        for b in benchmarks:
            command = [sys.executable, "-m", f"benchmarks.{b.name}"]
            command += ["--quick", *b.quick_args] if quick else []
            command += ["--home", home] if b.shared_home else []
            print(f"\n=== {' '.join(command[1:])}", file=sys.stderr, flush=True)
            t0 = time.perf_counter()
            rc = subprocess.run(command, cwd=REPO).returncode
            done[b.name] = {"seconds": round(time.perf_counter() - t0, 1), "rc": rc, "command": command[1:]}
            print(f"=== {b.name}: {done[b.name]['seconds']} s, exit code {rc}", file=sys.stderr, flush=True)
    return {
        "quick": quick, "only": only, "cpus": os.cpu_count(), "load_avg_before": load_before,
        "load_avg_after": os.getloadavg(),
        "seconds": round(time.perf_counter() - started, 1), "benchmarks": done,
    }  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="every benchmark's --quick; no learning curve")
    parser.add_argument("--only", nargs="+", metavar="GOAL", help="goals (P3, P1_hf, ...) or benchmark names")
    parser.add_argument("--summary-only", action="store_true", help="rebuild the summary from results/ only")
    args = parser.parse_args()
    paths = Paths()
    try:
        run = (
            None
            if args.summary_only
            else run_benchmarks(select(args.only, args.quick), args.quick, args.only)
        )
        failed = {name for name, b in (run or {"benchmarks": {}})["benchmarks"].items() if b["rc"] != 0}
        summary = write_summary(paths, failed, run)
    except UserError as e:
        sys.exit(f"error: {e}")
    print(goals_table(summary))
    if failed:
        sys.exit(f"failed: {', '.join(sorted(failed))}")


if __name__ == "__main__":
    main()
