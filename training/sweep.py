"""`albert sweep`: a grid over pretraining recipes, run with Ray Tune, one MLflow run per trial.

Each trial is `train_local` (world size 1, in the trial's Ray actor, `cores // concurrent` torch threads) with one
point of the grid; it reports its held-out figures to Tune at every evaluation and writes its whole curve to its
own MLflow run, nested under the sweep's parent run in experiment `albert-sweeps`. Trials register no model.

    sweeps/<name>/results.json            the ranked table and the best config (atomically, when all have run)
    sweeps/<name>/tune/                   Ray Tune's storage: one folder per trial (params, results, error.txt)
    sweeps/<name>/pending_metrics/        metrics a trial could not deliver to MLflow (replayed at the end)

The objective (the default ranking metric), at each trial's final evaluation:

    objective = eval_mlm_acc + (eval_sop_acc - eval_sop_length_baseline)

held-out MLM accuracy plus the SOP accuracy a model gains over the length rule on the same rows ("swapped when
segment A is longer", which predicts part of the label without reading a word). Both terms are fractions of
held-out predictions, so they add in one unit; a recipe that learns only the length cue gains nothing on the
second. Any held-out figure can rank instead (`metric`): losses lower-is-better, the rest higher-is-better.

A trial that fails — its loss turns NaN or infinite (stopped at that step), or it raises (a batch larger than the
training split, a model that does not fit the shards) — is a `failed` row with its reason; the others go on.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import math
import os
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, get_args

from albert_core.config import AlbertConfig
from albert_core.config_base import Config
from albert_core.errors import UserError
from albert_core.storage import validate_name, write_json
from albert_core.system import available_cores
from training import tracking as m
from training.config import Optimizer, TrainConfig
from training.step import Diverged

EXPERIMENT = "albert-sweeps"
OBJECTIVE = "objective"
OBJECTIVE_FORMULA = f"{m.EVAL_MLM_ACC} + {m.EVAL_SOP_ACC} - {m.EVAL_SOP_LENGTH_BASELINE}"
RANKABLE = (OBJECTIVE, m.EVAL_LOSS, m.EVAL_MLM_LOSS, "eval_sop_loss", m.EVAL_MLM_ACC, m.EVAL_SOP_ACC,
            m.EVAL_SOP_BALANCED_ACC)  # fmt: skip
AXES = ("lr", "optimizer", "warmup_steps", "batch_size", "model_overrides")  # the grid, in table order
PENDING = "pending_metrics"


def objective(figures: dict[str, float]) -> float:
    """The default ranking metric of one evaluation (see the module docstring)."""
    return figures[m.EVAL_MLM_ACC] + figures[m.EVAL_SOP_ACC] - figures[m.EVAL_SOP_LENGTH_BASELINE]


@dataclass(frozen=True)
class SweepConfig(Config):
    config_kind: ClassVar[str] = "sweep config"

    shards: str  # shard id under ALBERT_HOME/shards
    preset: str = "tiny"
    # the grid: every combination is one trial
    lr: tuple[float, ...] = (1e-3, 3e-3, 1e-2)
    optimizer: tuple[str, ...] = ("lamb", "adamw")
    warmup_steps: tuple[int | None, ...] = (None,)  # None: TrainConfig's default, 10% of max_steps
    batch_size: tuple[int, ...] = (32,)
    model_overrides: tuple[dict[str, Any], ...] = field(default_factory=lambda: ({},))  # AlbertConfig fields
    # the same for every trial
    max_steps: int = 200
    eval_every: int = 50
    eval_sequences: int | None = None  # held-out sequences per evaluation (the first N); None: all
    seed: int = 0  # one seed for all: every trial starts from the same weights and sees the same batch order
    metric: str = OBJECTIVE  # what ranks the trials, at their final evaluation
    max_concurrent: int | None = None  # default: min(trials, cores)
    name: str | None = None  # the sweep's folder and parent run name; default <preset>-<UTC time>

    def __post_init__(self) -> None:
        for axis in AXES:  # a single value is a grid of one
            value = getattr(self, axis)
            given = value if isinstance(value, list | tuple) else (value,)
            object.__setattr__(self, axis, tuple(given))
            if not given:
                raise UserError(f"sweep: {axis} needs at least one value")
        super().__post_init__()  # field types, then `validate`

    def validate(self) -> None:
        for axis, ok, kind in (
            ("lr", lambda v: isinstance(v, int | float) and not isinstance(v, bool), "a number"),
            ("optimizer", lambda v: v in get_args(Optimizer), f"one of {', '.join(get_args(Optimizer))}"),
            ("warmup_steps", lambda v: v is None or _is_int(v), "an integer (or None: 10% of max_steps)"),
            ("batch_size", _is_int, "an integer"),
            ("model_overrides", lambda v: isinstance(v, dict), "a dict of AlbertConfig fields"),
        ):
            for value in getattr(self, axis):
                if not ok(value):
                    raise UserError(f"sweep: {axis} values must be {kind}, got {value!r}")
            if len({json.dumps(v, sort_keys=True) for v in getattr(self, axis)}) < len(getattr(self, axis)):
                raise UserError(f"sweep: {axis} lists a value twice")
        if self.metric not in RANKABLE:
            raise UserError(f"sweep: metric must be one of {', '.join(RANKABLE)}, got {self.metric!r}")
        if self.max_concurrent is not None and (not _is_int(self.max_concurrent) or self.max_concurrent < 1):
            raise UserError(f"sweep: max_concurrent must be a positive integer, got {self.max_concurrent!r}")
        if self.name is not None:
            validate_name(self.name, "sweep name")
        object.__setattr__(self, "lr", tuple(float(v) for v in self.lr))
        for point in self.points():  # each value's range, as a pretraining run checks it
            try:
                self.train_config(point)
            except UserError as e:
                raise UserError(f"sweep: {e} (trial {_describe(point)})") from None
        for overrides in self.model_overrides:
            try:
                AlbertConfig.from_preset(self.preset, **overrides)
            except UserError as e:
                raise UserError(f"sweep: model_overrides {json.dumps(overrides)}: {e}") from None

    def points(self) -> list[dict[str, Any]]:
        """Every combination of the grid's values, in the order the axes and their values are given."""
        grid = itertools.product(*(getattr(self, axis) for axis in AXES))
        return [dict(zip(AXES, values, strict=True)) for values in grid]

    def train_config(self, point: dict[str, Any]) -> TrainConfig:
        """The trial at `point`, at train_local's world size (one worker)."""
        return TrainConfig(shards=self.shards, preset=self.preset, workers=1, max_steps=self.max_steps,
                           eval_every=self.eval_every, eval_sequences=self.eval_sequences, seed=self.seed,
                           **point)  # fmt: skip

    @property
    def mode(self) -> str:
        return "min" if self.metric.endswith("loss") else "max"

    def concurrency(self) -> tuple[int, int]:
        """(trials at once, torch threads each): the cores shared out, at least one thread per trial."""
        cores = available_cores()
        concurrent = self.max_concurrent or max(1, min(len(self.points()), cores))
        return concurrent, max(1, cores // concurrent)

    def to_dict(self) -> dict[str, Any]:
        return {k: list(v) if k in AXES else v for k, v in super().to_dict().items()}


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _describe(point: dict[str, Any]) -> str:
    return " ".join(f"{k}={json.dumps(v) if isinstance(v, dict) else v}" for k, v in point.items())


def _key(point: dict[str, Any]) -> str:
    """A grid point as a string: how a Tune trial (which sees only its config) finds its MLflow run."""
    return json.dumps({axis: point[axis] for axis in AXES}, sort_keys=True)


def _check_finite(figures: dict[str, float], step: int) -> None:
    loss = figures[m.LOSS]
    if not math.isfinite(loss):
        raise Diverged(f"loss is {loss} at step {step} (lr {figures[m.LR]:.3g})")


def _trial(point: dict[str, Any], context: dict[str, Any]) -> None:
    """One Tune trial (runs in a Ray actor): pretrain the grid point, report held-out figures at each evaluation."""
    import torch
    from mlflow import MlflowClient
    from ray import tune

    from training.local import train_local

    torch.set_num_threads(context["threads"])
    run_id, name = context["runs"][_key(point)]
    cfg = TrainConfig.from_dict({**context["config"], **point})
    client = MlflowClient(context["tracking_uri"])
    _mark(client, run_id, "RUNNING")
    spill = Path(context["sweep_dir"]) / PENDING / f"{name}.jsonl"
    # a non-finite step raises `Diverged` before its update and before the tracker sees it (training.step)
    tracker = m.MlflowTracker(context["tracking_uri"], run_id, spill_path=spill, system_metrics=False)
    started = time.perf_counter()

    def report(figures: dict[str, Any]) -> None:
        _check_finite(figures, figures["step"])  # before Tune sees a NaN figure
        held_out = {k: v for k, v in figures.items() if k.startswith("eval_")}
        tune.report({"step": figures["step"], "seconds": time.perf_counter() - started,
                     m.LOSS: figures[m.LOSS], **held_out, OBJECTIVE: objective(held_out)})  # fmt: skip

    try:
        train_local(cfg, home=Path(context["home"]), tracker=tracker, on_eval=report)
    except BaseException as e:
        tracker.close()  # the curve up to the failure stays in MLflow
        _mark(client, run_id, "FAILED", _reason(e))
        raise
    _mark(client, run_id, "FINISHED")


def _mark(client: Any, run_id: str, status: str, failure: str | None = None) -> None:
    """A trial run's status (and why it failed), as soon as it is known. An unreachable tracking server does not
    fail the trial: the driver sets every trial run's final state again when the grid is done."""
    try:
        if failure is not None:
            client.set_tag(run_id, "failure", failure)
        if status == "RUNNING":
            client.update_run(run_id, status=status)
        else:
            client.set_terminated(run_id, status)
    except Exception as e:
        if not m.is_unavailable(e):
            raise


def _reason(error: BaseException | None) -> str:
    """One line: the trial's own exception (Ray wraps it in a RayTaskError that carries it as `cause`)."""
    cause = getattr(error, "cause", None) or error
    if cause is None:
        return "unknown error (see the trial's error.txt)"
    lines = str(cause).strip().splitlines()
    return f"{type(cause).__name__}: {lines[-1]}" if lines else type(cause).__name__


def sweep(cfg: SweepConfig, *, home: Path, progress: Callable[[str], None] = print) -> dict[str, Any]:
    """Run the grid; return (and write to `sweeps/<name>/results.json`) the ranked table and the best config."""
    from mlflow import MlflowClient

    from data_jobs.ray_runtime import ensure_ray, require_resources
    from data_jobs.shards import load_manifest, split_files
    from data_jobs.tokenizer_job import load_tokenizer
    from training.registry import tracking_uri
    from training.run import _needs_mlflow, _new_run_name
    from training.step import model_config

    started = time.perf_counter()
    home = Path(home).absolute()  # trials run with Tune's trial folder as working directory
    manifest = load_manifest(home, cfg.shards)
    if not split_files(home, cfg.shards, "eval"):
        raise UserError(
            f"shards {cfg.shards} have no held-out split; a sweep ranks trials on held-out figures"
        )
    tokenizer, _ = load_tokenizer(home, manifest["tokenizer"]["name"])
    name = cfg.name or _new_run_name(cfg.preset)
    sweep_dir = home / "sweeps" / name
    if sweep_dir.exists():
        raise UserError(f"sweep {name} exists ({sweep_dir}); choose another name")
    points = cfg.points()
    configs = [cfg.train_config(p) for p in points]
    models = [model_config(c, tokenizer.vocab_size, manifest["parameters"]["max_seq_len"]) for c in configs]
    concurrent, threads = cfg.concurrency()
    ensure_ray()
    require_resources("sweep", 1, {"CPU": threads}, log=progress)  # a trial Ray cannot place would hang

    uri = tracking_uri(home)
    client = MlflowClient(uri)
    tags = {"sweep": name, "shards": cfg.shards, "preset": cfg.preset, "tokenizer_sha256": tokenizer.sha256}
    with _needs_mlflow(uri, "the sweep cannot start"):
        parent, runs = _create_runs(client, cfg, home, tags, configs, models)
    progress(f"sweep {name}: {len(points)} trials of {cfg.max_steps} steps on shards {cfg.shards} "
             f"({concurrent} at a time, {threads} torch thread{'s' * (threads > 1)} each), "
             f"ranked by {cfg.metric}; MLflow run {parent} in {EXPERIMENT}")  # fmt: skip

    context = {"config": configs[0].to_dict(), "home": str(home), "tracking_uri": uri, "runs": runs,
               "threads": threads, "sweep_dir": str(sweep_dir)}  # fmt: skip
    try:
        with _quiet_tune():
            grid = _tuner(cfg, context, concurrent, progress).fit()
    except BaseException:
        with contextlib.suppress(Exception):  # the error that stopped the sweep is the one to see
            for run_id in [parent, *(run_id for run_id, _ in runs.values())]:
                if client.get_run(run_id).info.status in ("SCHEDULED", "RUNNING"):
                    client.set_terminated(run_id, "KILLED")
        raise

    rows = _rank([_row(result, runs, cfg) for result in grid], cfg.mode)
    winner = next((r for r in rows if r["status"] == "ok"), None)
    best = None
    if winner is not None:
        best = {k: winner[k] for k in ("trial", "run_id", "score", "params")}
        best["config"] = configs[winner["index"]].to_dict()  # what `albert train --config-json` takes
    result = {
        "name": name,
        "dir": str(sweep_dir),
        "results_path": str(sweep_dir / "results.json"),
        "tune_path": str(sweep_dir / "tune"),
        "shards": cfg.shards,
        "preset": cfg.preset,
        "metric": cfg.metric,
        "mode": cfg.mode,
        "objective": OBJECTIVE_FORMULA,
        "tracking_uri": uri,
        "experiment": EXPERIMENT,
        "parent_run_id": parent,
        "config": cfg.to_dict(),
        "trials": rows,
        "ok": sum(r["status"] == "ok" for r in rows),
        "failed": sum(r["status"] == "failed" for r in rows),
        "best": best,
        "seconds": round(time.perf_counter() - started, 1),
    }
    write_json(sweep_dir / "results.json", result)
    consequence = f"the trial runs' final states and the parent's winner are not recorded (see {sweep_dir})"
    with _needs_mlflow(uri, consequence):
        _finish_runs(client, uri, result, sweep_dir, progress)
    return result


def _create_runs(
    client: Any, cfg: SweepConfig, home: Path, tags: dict[str, str], configs: list[TrainConfig], models: list
) -> tuple[str, dict[str, tuple[str, str]]]:
    """The parent run (the sweep's settings as params) and one child run per trial (its TrainConfig and model
    config as params, status SCHEDULED until the trial starts): (parent id, {grid point key: (run id, name)})."""
    from training.registry import get_or_create_experiment
    from training.run import _flatten

    experiment_id = get_or_create_experiment(EXPERIMENT, home)
    parent = client.create_run(experiment_id, run_name=tags["sweep"], tags={**tags, "metric": cfg.metric})
    parent_id = parent.info.run_id
    settings = {f"sweep.{k}": json.dumps(v) if k in AXES else str(v) for k, v in cfg.to_dict().items()}
    client.log_batch(parent_id, params=_params(settings))
    width = len(str(len(configs) - 1))
    runs = {}
    for i, (point, train_cfg, model_cfg) in enumerate(zip(cfg.points(), configs, models, strict=True)):
        trial = f"trial-{i:0{width}d}"
        child_tags = {**tags, "trial": trial, "mlflow.parentRunId": parent_id}
        run_id = client.create_run(experiment_id, run_name=trial, tags=child_tags).info.run_id
        params = _flatten("", {"train": train_cfg.to_dict(), "model": model_cfg.to_dict()}, {})
        client.log_batch(run_id, params=_params(params))
        client.update_run(run_id, status="SCHEDULED")
        runs[_key(point)] = (run_id, trial)
    return parent_id, runs


def _tuner(
    cfg: SweepConfig, context: dict[str, Any], concurrent: int, progress: Callable[[str], None]
) -> Any:
    """The Tune grid: one trial per point, `context["threads"]` CPUs each, storage under the sweep's folder."""
    from ray import tune

    runs = context["runs"]
    trainable = tune.with_parameters(_trial, context=context)
    return tune.Tuner(
        tune.with_resources(trainable, {"cpu": context["threads"]}),
        param_space={axis: tune.grid_search(list(getattr(cfg, axis))) for axis in AXES},
        tune_config=tune.TuneConfig(
            metric=cfg.metric,
            mode=cfg.mode,
            max_concurrent_trials=concurrent,
            reuse_actors=True,  # a finished trial's actor (torch and MLflow imported) takes the next one
            trial_name_creator=lambda trial: runs[_key(trial.config)][1],  # as in MLflow and the table
            trial_dirname_creator=lambda trial: runs[_key(trial.config)][1],
        ),
        run_config=tune.RunConfig(
            name="tune",
            storage_path=context["sweep_dir"],  # never ~/ray_results
            verbose=0,
            failure_config=tune.FailureConfig(max_failures=0),  # a diverging recipe diverges again
            callbacks=[_progress_callback(runs, cfg, progress)],
        ),
    )


def _params(flat: dict[str, str]) -> list:
    from mlflow.entities import Param

    return [Param(k, v) for k, v in flat.items()]


def _row(result: Any, runs: dict[str, tuple[str, str]], cfg: SweepConfig) -> dict[str, Any]:
    """One trial's line of the table, from Tune's record of it."""
    point = {axis: result.config[axis] for axis in AXES}
    run_id, trial = runs[_key(point)]
    reported = dict(result.metrics or {})
    figures = {
        k: _finite(v) for k, v in reported.items() if k.startswith("eval_") or k in (OBJECTIVE, m.LOSS)
    }
    step = reported.get("step")
    error = None
    if result.error is not None:
        error = _reason(result.error)
    elif step != cfg.max_steps:
        error = f"stopped at step {step or 0} of {cfg.max_steps}"
    elif figures.get(cfg.metric) is None:
        error = f"{cfg.metric} is not finite at step {step}"
    error_file = Path(result.path) / "error.txt" if result.path else None
    return {
        "rank": None,
        "trial": trial,
        "index": list(runs).index(_key(point)),  # in the grid (SweepConfig.points)
        "status": "failed" if error else "ok",
        "error": error,
        "error_file": str(error_file) if error_file is not None and error_file.is_file() else None,
        "params": point,
        "score": None if error else figures[cfg.metric],
        "step": step,
        "seconds": round(reported["seconds"], 1) if "seconds" in reported else None,
        "metrics": figures,
        "run_id": run_id,
    }


def _finite(value: Any) -> float | None:
    return float(value) if isinstance(value, int | float) and math.isfinite(value) else None


def _rank(rows: list[dict[str, Any]], mode: str) -> list[dict[str, Any]]:
    """Finished trials best first (ties: grid order), then the failed ones in grid order."""
    sign = -1 if mode == "max" else 1
    ok = sorted((r for r in rows if r["status"] == "ok"), key=lambda r: (sign * r["score"], r["index"]))
    failed = sorted((r for r in rows if r["status"] != "ok"), key=lambda r: r["index"])
    for rank, row in enumerate(ok, start=1):
        row["rank"] = rank
    return ok + failed


def _finish_runs(
    client: Any, uri: str, result: dict[str, Any], sweep_dir: Path, progress: Callable[[str], None]
) -> None:
    """Every trial run ends in the state its row says (a trial whose actor died could not say so itself),
    metrics spilled during an MLflow outage are replayed, the parent gets the winner."""
    from training.tracking import replay_spilled

    parent = result["parent_run_id"]
    for row in result["trials"]:
        spill = sweep_dir / PENDING / f"{row['trial']}.jsonl"
        if spill.is_file():
            try:
                replay_spilled(uri, row["run_id"], spill)
            except Exception as e:  # the file stays; `training.tracking.replay_spilled` can log it later
                progress(f"{row['trial']}: metrics left in {spill} ({str(e).splitlines()[0][:160]})")
        status = "FINISHED" if row["status"] == "ok" else "FAILED"
        if row["error"]:
            client.set_tag(row["run_id"], "failure", row["error"])
        if client.get_run(row["run_id"]).info.status != status:
            client.set_terminated(row["run_id"], status)
        if row["rank"] is not None:
            client.set_tag(row["run_id"], "rank", str(row["rank"]))
    best = result["best"]
    if best is not None:
        client.log_metric(parent, f"best_{result['metric']}", best["score"])
        client.set_tag(parent, "best_trial", best["trial"])
        client.set_tag(parent, "best_run_id", best["run_id"])
    client.set_tag(parent, "results_path", result["results_path"])
    client.set_terminated(parent, "FINISHED")


def _progress_callback(runs: dict[str, tuple[str, str]], cfg: SweepConfig, progress: Callable) -> Any:
    """A Tune callback (in this process) that turns trial events into `progress` lines."""
    from ray import cloudpickle, tune

    class Progress(tune.Callback):
        """One line per trial start, evaluation, end and failure, through the sweep's `progress`."""

        def __init__(self, runs: dict[str, tuple[str, str]], cfg: SweepConfig, progress: Callable) -> None:
            self.runs, self.cfg, self.progress = runs, cfg, progress

        def _name(self, trial: Any) -> str:
            return self.runs[_key(trial.config)][1]

        def on_trial_start(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
            self.progress(f"{self._name(trial)} started: {_describe(trial.config)}")

        def on_trial_result(
            self, iteration: int, trials: list, trial: Any, result: dict, **info: Any
        ) -> None:
            self.progress(
                f"{self._name(trial)} step {result['step']}/{self.cfg.max_steps}: {self.cfg.metric} "
                f"{result[self.cfg.metric]:.4f} (mlm_acc {result[m.EVAL_MLM_ACC]:.3f}, sop_acc "
                f"{result[m.EVAL_SOP_ACC]:.3f} vs length rule {result[m.EVAL_SOP_LENGTH_BASELINE]:.3f})"
            )

        def on_trial_complete(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
            self.progress(f"{self._name(trial)} finished")

        def on_trial_error(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
            # the driver's copy: `trial.get_pickled_error()` reads storage, which is synced later
            path = trial.pickled_error_file
            error = cloudpickle.loads(Path(path).read_bytes()) if path and Path(path).is_file() else None
            self.progress(f"{self._name(trial)} failed: {_reason(error)}")

    return Progress(runs, cfg, progress)


# Tune's new console output prints tables to stdout whatever `verbose` says (Ray 2.60), which would break
# `--json`'s last line; its legacy reporter at verbose=0 is silent. A failed trial's traceback is logged whole;
# the sweep says it in one line and Tune keeps it in the trial's error.txt.
QUIET_TUNE = {"RAY_AIR_NEW_OUTPUT": "0", "TUNE_PRINT_ALL_TRIAL_ERRORS": "0"}


@contextlib.contextmanager
def _quiet_tune() -> Iterator[None]:
    """QUIET_TUNE in the environment while Tune runs (both are read when `fit` starts), then as it was."""
    previous = {var: os.environ.get(var) for var in QUIET_TUNE}
    os.environ.update(QUIET_TUNE)
    try:
        yield
    finally:
        for var, value in previous.items():
            if value is None:
                os.environ.pop(var, None)
            else:
                os.environ[var] = value


def table(result: dict[str, Any]) -> str:
    """The ranked table as text: the axes that vary, the ranking metric, the held-out figures behind it."""
    rows = result["trials"]
    varying = [a for a in AXES if len({json.dumps(r["params"][a], sort_keys=True) for r in rows}) > 1]
    varying = varying or ["lr"]
    header = ["rank", "trial", *varying, result["metric"], "mlm_acc", "sop_acc", "length_rule", "steps", "s"]
    lines = []
    for r, overrides in zip(rows, _distinct(r["params"]["model_overrides"] for r in rows), strict=True):
        params = {**r["params"], "model_overrides": overrides}
        cells = [str(r["rank"] or "-"), r["trial"], *(_cell(params[a]) for a in varying)]
        if r["status"] == "ok":
            f = r["metrics"]
            cells += [f"{r['score']:.4f}", f"{f[m.EVAL_MLM_ACC]:.3f}", f"{f[m.EVAL_SOP_ACC]:.3f}",
                      f"{f[m.EVAL_SOP_LENGTH_BASELINE]:.3f}", str(r["step"]), str(r["seconds"])]  # fmt: skip
        else:
            cells.append(f"failed: {r['error']}")  # the rest of the line, not a column
        lines.append(cells)
    measured = [header, *(c if len(c) == len(header) else c[:-1] for c in lines)]  # not the failure text
    widths = [max(len(c[i]) for c in measured if i < len(c)) for i in range(len(header))]
    fmt = lambda cells: "  ".join(c.ljust(w) for c, w in zip(cells, widths, strict=False)).rstrip()  # noqa: E731
    better = "higher" if result["mode"] == "max" else "lower"
    what = f"{OBJECTIVE} = {result['objective']}" if result["metric"] == OBJECTIVE else result["metric"]
    head = f"sweep {result['name']} on shards {result['shards']}: {len(rows)} trials ranked by {what} ({better} is better)"
    return "\n".join([head, fmt(header), *(fmt(c) for c in lines)])


def _distinct(dicts: Iterator[dict[str, Any]]) -> list[dict[str, Any]]:
    """Each dict without the items every one of them has: what tells the trials' model overrides apart."""
    dicts = list(dicts)
    shared = set.intersection(*({(k, json.dumps(v)) for k, v in d.items()} for d in dicts))
    return [{k: v for k, v in d.items() if (k, json.dumps(v)) not in shared} for d in dicts]


def _cell(value: Any) -> str:
    if value is None:
        return "default"
    if isinstance(value, dict):
        return json.dumps(value, separators=(",", ":")) if value else "{}"
    return f"{value:g}" if isinstance(value, float) else str(value)
