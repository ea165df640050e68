"""Where MLflow lives, and how a finished model folder becomes a registered, loadable model version.

Embedded by default: `sqlite:///<ALBERT_HOME>/mlflow.db` with artifacts under `<ALBERT_HOME>/mlartifacts`; a
server when MLFLOW_TRACKING_URI is set (the server then decides where artifacts go). MLflow 3.17 behaviour this
module works around:

- `mlflow.set_tracking_uri` exports MLFLOW_TRACKING_URI, after which "is the variable set?" no longer tells a
  user's choice from our own earlier call; `configure_mlflow` restores the environment it found.
- A SQL store gives an experiment created without `artifact_location` the root `./mlruns`, resolved against the
  working directory of whichever process opened the store, so artifacts would land wherever a command happened to
  run. `get_or_create_experiment` passes `<home>/mlartifacts/<name>`. (The `Default` experiment 0 is created with
  the database and keeps `./mlruns/0`: never log to it.)
- A `python_model` object is cloudpickled *by reference* to `training.pyfunc_model`, so it fails to load where
  this project is not installed. We log the file itself ("models from code") and `albert_core` as code paths:
  the model loads from its own copy of the code, and no pickle is involved.
- Registry stages are deprecated: a new version gets the alias `candidate`; promotion moves `champion`.
"""

from __future__ import annotations

import contextlib
import importlib.metadata
import os
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import albert_core
from albert_core.checkpoint import load_model, verify_any_folder, verify_model_folder
from albert_core.errors import UserError
from albert_core.storage import validate_name
from training.config import parse_model_uri  # noqa: F401  (re-exported: callers import it from here)

CANDIDATE = "candidate"
HF_EXPORT_TAG = "hf_export"  # where the Hugging Face export was logged (`runs:/<id>/hf`), or "skipped: <why>"
# What loading the pyfunc imports (besides mlflow, which MLflow pins itself).
RUNTIME_PACKAGES = ("torch", "sentencepiece", "safetensors", "numpy", "pandas", "protobuf", "pyarrow")
# Application-level errors a registry server reports for a momentary condition. HTTP 429/5xx are already
# retried inside MLflow's REST client (MLFLOW_HTTP_REQUEST_MAX_RETRIES).
TRANSIENT_ERRORS = frozenset({"TEMPORARILY_UNAVAILABLE", "REQUEST_LIMIT_EXCEEDED", "DEADLINE_EXCEEDED"})

T = TypeVar("T")


def tracking_uri(home: Path) -> str:
    """$MLFLOW_TRACKING_URI if set, else the embedded SQLite database under `home`."""
    return os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{Path(home).absolute() / 'mlflow.db'}"


def _is_server(uri: str) -> bool:
    """A tracking server picks artifact locations itself; any other store leaves it to this process."""
    return uri.startswith(("http://", "https://", "databricks"))


def configure_mlflow(home: Path) -> None:
    """Point this process at our tracking store, and the registry at the same store unless
    $MLFLOW_REGISTRY_URI names another.

    MLflow's setters also export MLFLOW_TRACKING_URI / MLFLOW_REGISTRY_URI into `os.environ`; that is undone, so
    the variables keep meaning "the user chose a store" and a second call for another home (tests, a long-lived
    process) is not captured by the first. Subprocesses find the store as this one did: from ALBERT_HOME.
    """
    import mlflow

    uri = tracking_uri(home)
    if not _is_server(uri):
        Path(home).mkdir(parents=True, exist_ok=True)  # SQLite creates the database file, not its folder
    user_env = {var: os.environ.get(var) for var in ("MLFLOW_TRACKING_URI", "MLFLOW_REGISTRY_URI")}
    mlflow.set_tracking_uri(uri)
    mlflow.set_registry_uri(user_env["MLFLOW_REGISTRY_URI"] or uri)
    for var, value in user_env.items():
        if value is None:
            os.environ.pop(var, None)
        else:
            os.environ[var] = value


def get_or_create_experiment(name: str, home: Path) -> str:
    """Id of experiment `name`; a new one on an embedded store keeps its artifacts in `<home>/mlartifacts/<name>`."""
    from mlflow import MlflowClient
    from mlflow.exceptions import MlflowException

    uri = tracking_uri(home)
    client = MlflowClient(uri)
    experiment = client.get_experiment_by_name(name)
    if experiment is None:
        location = None
        if not _is_server(uri):
            location = (
                Path(home).absolute() / "mlartifacts" / validate_name(name, "experiment name")
            ).as_uri()
        try:
            return client.create_experiment(name, artifact_location=location)
        except MlflowException as e:
            if e.error_code != "RESOURCE_ALREADY_EXISTS":
                raise
            experiment = client.get_experiment_by_name(name)  # another process created it meanwhile
    if experiment.lifecycle_stage != "active":
        raise UserError(f"MLflow experiment {name!r} is deleted; restore it or remove it for good")
    return experiment.experiment_id


def log_and_register(
    model_dir: Path,
    *,
    run_id: str,
    model_name: str,
    tags: dict[str, str] | None = None,
    hf_export: bool = True,
) -> dict[str, Any]:
    """Log `model_dir` (a `save_model` folder with `tokenizer/`) as a pyfunc model of run `run_id`, with its
    Hugging Face export under the run's `hf/`, and register it as a new version of `model_name` aliased
    `candidate`. Version tags: `tags` (lineage), `run_id`, `model_sha256`, `hf_export`.

    Uses the tracking and registry URIs set by `configure_mlflow`.
    """
    import mlflow

    from training import pyfunc_model

    model_dir = Path(model_dir)
    manifest = verify_model_folder(model_dir)  # a corrupt folder fails here, before anything is uploaded
    if not (model_dir / "tokenizer").is_dir():
        raise UserError(f"{model_dir} has no tokenizer/ folder: the served model needs it to read text")

    def log_hf_export() -> dict[str, str]:
        where = _log_hf_export(model_dir, run_id) if hf_export else "skipped: not requested"
        mlflow.set_tag(HF_EXPORT_TAG, where)
        return {HF_EXPORT_TAG: where}

    registered = register_pyfunc(
        model_dir,
        run_id=run_id,
        model_name=model_name,
        code_file=pyfunc_model.__file__,
        signature=pyfunc_model.SIGNATURE,
        input_example=(pyfunc_model.input_example(), {"top_k": pyfunc_model.DEFAULT_TOP_K}),
        weights_sha256=manifest["files"]["model.safetensors"],
        tags=tags or {},
        also_log=log_hf_export,
    )
    return {**registered, "run_id": run_id}


def register_pyfunc(
    model_dir: Path,
    *,
    run_id: str,
    model_name: str,
    code_file: str,
    signature: Any,
    input_example: Any,
    weights_sha256: str,
    tags: dict[str, str],
    also_log: Callable[[], dict[str, str]] | None = None,
) -> dict[str, Any]:
    """Log a verified model folder as the `model` pyfunc of run `run_id` and register it as a new version of
    `model_name` aliased `candidate`: how every model this project trains (pretraining, fine-tuning) reaches
    the registry. What differs between them is the arguments.

    `code_file`: the pyfunc's source file, logged as the model's code ("models from code"), with `signature`
    and `input_example`; `albert_core` goes along as code paths and this environment's `pip_requirements`, so
    the model loads without this project. The folder is the artifact `model`. `also_log` runs inside the run
    after the model is logged and returns more version tags. Version tags: `tags`, `run_id`, `model_sha256`
    (`weights_sha256`, which `download_model` checks), then `also_log`'s.

    Uses the tracking and registry URIs set by `configure_mlflow`.
    """
    import mlflow

    version_tags = {**tags, "run_id": run_id, "model_sha256": weights_sha256}
    with _in_run(run_id):
        info = mlflow.pyfunc.log_model(
            name="model",
            python_model=code_file,
            artifacts={"model": str(model_dir)},
            code_paths=[str(Path(albert_core.__file__).parent)],
            signature=signature,
            input_example=input_example,
            pip_requirements=pip_requirements(),
        )
        if also_log is not None:
            version_tags.update(also_log())
    # Not retried: creating a version is not idempotent, and a retry after a lost reply would add a second one.
    # register_model creates the registered model when missing and tolerates a concurrent creation.
    version = int(mlflow.register_model(info.model_uri, model_name, tags=version_tags).version)
    client = mlflow.MlflowClient()
    retry_transient(lambda: client.set_registered_model_alias(model_name, CANDIDATE, str(version)))
    return {
        "model_uri": f"models:/{model_name}/{version}",
        "alias_uri": f"models:/{model_name}@{CANDIDATE}",
        "model_version": version,
    }


def download_model(model_uri: str, dst: Path | None = None) -> Path:
    """The model folder of `model_uri` (`models:/NAME@alias`, `models:/NAME/V`, `runs:/ID/model` or a local model
    folder), downloaded and checked against its sha256 manifest; a registered version's `model_sha256` tag must
    match too, so what was registered is what gets loaded.

    Uses the tracking and registry URIs set by `configure_mlflow`.
    """
    import mlflow
    from mlflow.exceptions import MlflowException

    local = Path(model_uri)
    if "://" not in model_uri and not model_uri.startswith(("models:", "runs:")):
        if not local.is_dir():
            raise UserError(
                f"{model_uri} is neither a model URI (models:/NAME@ALIAS, models:/NAME/V) nor a folder"
            )
        verify_any_folder(local)
        return local
    try:
        root = Path(
            mlflow.artifacts.download_artifacts(artifact_uri=model_uri, dst_path=str(dst) if dst else None)
        )
    except MlflowException as e:
        raise UserError(f"cannot load {model_uri}: {str(e).splitlines()[0]}") from None
    # the `model` artifact keeps the name of the folder that was logged (`model/` for training runs)
    folders = sorted(p.parent for p in (root / "artifacts").glob("*/manifest.json"))
    if len(folders) != 1:
        raise UserError(
            f"{model_uri} is not an ALBERT model logged by this project (no model folder artifact)"
        )
    folder = folders[0]
    manifest = verify_any_folder(folder)
    expected = _registered_sha256(model_uri)
    if expected is not None and expected != manifest["files"]["model.safetensors"]:
        raise UserError(
            f"{model_uri}: weights differ from the sha256 recorded when the version was registered"
        )
    return folder


def _registered_sha256(model_uri: str) -> str | None:
    if not model_uri.startswith("models:/"):
        return None
    from mlflow import MlflowClient

    name, alias, version = parse_model_uri(model_uri)
    client = MlflowClient()
    mv = (
        client.get_model_version_by_alias(name, alias)
        if alias
        else client.get_model_version(name, str(version))
    )
    return mv.tags.get("model_sha256")


def predict(
    model_uri: str, texts: list[str], texts_b: list[str | None], top_k: int = 5
) -> list[dict[str, Any]]:
    """Rows of the registered pyfunc's output for `texts` (and optional second segments `texts_b`): `fill_mask`
    (per [MASK], its top-k candidates), `sop_swapped_probability` (None without a second segment) and
    `truncated`."""
    import mlflow
    import pandas as pd
    from mlflow.exceptions import MlflowException

    try:
        model = mlflow.pyfunc.load_model(model_uri)
    except MlflowException as e:
        raise UserError(f"cannot load {model_uri}: {str(e).splitlines()[0]}") from None
    out = model.predict(pd.DataFrame({"text": texts, "text_b": texts_b}), params={"top_k": top_k})
    return out.to_dict(orient="records")


@contextlib.contextmanager
def _in_run(run_id: str) -> Iterator[None]:
    """Make `run_id` the active run (reopening it if it was ended), or use it as is when it already is."""
    import mlflow

    active = mlflow.active_run()
    if active is not None and active.info.run_id == run_id:
        yield
        return
    with mlflow.start_run(run_id=run_id):
        yield


def pip_requirements() -> list[str]:
    """This environment's versions of what the pyfunc imports, so `load_model` sees no mismatch. Local version
    labels are dropped (`2.13.0+cpu` -> `2.13.0`): pip cannot resolve them from an index."""
    from packaging.version import Version

    return [f"{name}=={Version(importlib.metadata.version(name)).public}" for name in RUNTIME_PACKAGES]


def _log_hf_export(model_dir: Path, run_id: str) -> str:
    """Log `export_hf`'s folder under the active run's `hf/`; return the `hf_export` tag value."""
    import mlflow

    from albert_core.hf import export_hf, to_hf_config

    model = load_model(model_dir)
    try:
        # Sharing "attention"/"ffn" has no transformers equivalent (and nothing has one without transformers
        # installed); the pyfunc still serves such a model, so this is a skip, not an error.
        to_hf_config(model.config)
    except UserError as e:
        return f"skipped: {e}"
    with tempfile.TemporaryDirectory() as tmp:
        export_hf(model, tmp, model_dir / "tokenizer")
        mlflow.log_artifacts(tmp, artifact_path="hf")
    return f"runs:/{run_id}/hf"


def retry_transient(call: Callable[[], T], attempts: int = 4, delay_s: float = 0.5) -> T:
    """`call()`, retried with exponential backoff on transient registry errors; only for idempotent calls."""
    from mlflow.exceptions import MlflowException

    for attempt in range(attempts - 1):
        try:
            return call()
        except MlflowException as e:
            if e.error_code not in TRANSIENT_ERRORS:
                raise
            time.sleep(delay_s * 2**attempt)
    return call()
