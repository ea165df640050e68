"""Fixtures shared by the training tests."""

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path

import mlflow
import pytest

from training.registry import configure_mlflow


@pytest.fixture
def mlflow_home(albert_home: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """Embedded MLflow under ALBERT_HOME, run from a scratch working directory (to catch `./mlruns` leaks)."""
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.delenv("MLFLOW_REGISTRY_URI", raising=False)
    workdir = tmp_path / "cwd"
    workdir.mkdir()
    monkeypatch.chdir(workdir)
    configure_mlflow(albert_home)
    yield albert_home
    mlflow.set_tracking_uri(None)
    mlflow.set_registry_uri(None)
    assert not (workdir / "mlruns").exists(), "MLflow wrote artifacts relative to the working directory"


@pytest.fixture(scope="module")
def wiki_shards(
    corpora: Path, tmp_path_factory: pytest.TempPathFactory, uses_ray: None
) -> Iterator[tuple[Path, str]]:
    """(home, shard id): the WikiText-2 validation text ingested, a small vocabulary, 64-token shards; the
    embedded MLflow store unless a test points MLFLOW_TRACKING_URI at a server."""
    from data_jobs.ingest import ingest
    from data_jobs.shards import ShardsConfig, build_shards
    from data_jobs.tokenizer_job import TokenizerJobConfig, train_tokenizer

    home = tmp_path_factory.mktemp("home")
    mp = pytest.MonkeyPatch()
    mp.delenv("MLFLOW_TRACKING_URI", raising=False)
    mp.delenv("MLFLOW_REGISTRY_URI", raising=False)
    ingest([str(corpora / "wikitext2-valid.raw.txt")], "wiki", home=home)
    train_tokenizer("wiki", home=home, cfg=TokenizerJobConfig(vocab_size=2000))
    shards = build_shards("wiki", "wiki", home=home, cfg=ShardsConfig(max_seq_len=64, eval_share=0.1))["id"]
    yield home, shards
    mp.undo()


@pytest.fixture(scope="session")
def albert_json(tmp_path_factory: pytest.TempPathFactory) -> Callable[[list[str]], dict]:
    """Runs `albert ARGV --json` in this process, from a scratch working directory, and returns the JSON object it
    prints last (a failing command fails the test)."""
    from flows.cli import main

    def run(argv: list[str]) -> dict:
        mp = pytest.MonkeyPatch()
        mp.chdir(tmp_path_factory.mktemp("cwd"))
        out = tmp_path_factory.mktemp("out") / "stdout"
        try:
            with open(out, "w") as f, contextlib.redirect_stdout(f):
                assert main([*argv, "--json"]) == 0
        finally:
            mp.undo()
        return json.loads(out.read_text().strip().splitlines()[-1])

    return run


PRETRAIN_STEPS = 800


@pytest.fixture(scope="session")
def pretrained_en(
    corpora: Path, tmp_path_factory: pytest.TempPathFactory, uses_ray: None
) -> tuple[Path, dict, str]:
    """(home, summary, shard id): a `tiny` model pretrained by the real trainer (2 Ray Train workers) on English
    WikiText and Gutenberg books, registered in the embedded MLflow; shared by the learning and transfer tests."""
    from data_jobs.ingest import ingest
    from data_jobs.shards import ShardsConfig, build_shards
    from data_jobs.tokenizer_job import TokenizerJobConfig, train_tokenizer
    from training.config import TrainConfig
    from training.run import train

    home = tmp_path_factory.mktemp("home")
    mp = pytest.MonkeyPatch()
    mp.delenv("MLFLOW_TRACKING_URI", raising=False)
    ingest([str(corpora / "wikitext2-valid.raw.txt"), str(corpora / "gutenberg")], "en", home=home)
    train_tokenizer("en", home=home, cfg=TokenizerJobConfig(vocab_size=3000))
    shards = build_shards("en", "en", home=home, cfg=ShardsConfig(
        max_seq_len=64, dupe_factor=2, eval_share=0.25, single_sentence_negatives=False))["id"]  # fmt: skip
    cfg = TrainConfig(shards=shards, preset="tiny", workers=2, batch_size=32, max_steps=PRETRAIN_STEPS,
                      eval_every=PRETRAIN_STEPS // 4, checkpoint_every=PRETRAIN_STEPS, model_name="albert-tiny-learning")  # fmt: skip
    yield home, train(cfg, home=home, progress=lambda _: None), shards
    mp.undo()


class MlflowServer:
    """A real `mlflow server` (SQLite, local artifacts) on a fixed loopback port that can be killed and started
    again on the same port, with the same store: an outage, as a client sees one."""

    def __init__(self, root: Path) -> None:
        import socket

        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = s.getsockname()[1]
        self.root, self.url = root, f"http://127.0.0.1:{self.port}"
        self.proc: subprocess.Popen | None = None

    def start(self, timeout_s: float = 90) -> None:
        mlflow_bin = Path(sys.executable).with_name("mlflow")
        env = {**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}  # no job runner: fewer processes
        env.pop("MLFLOW_TRACKING_URI", None)
        self.proc = subprocess.Popen(
            [str(mlflow_bin), "server", "--backend-store-uri", f"sqlite:///{self.root / 'mlflow.db'}",
             "--artifacts-destination", (self.root / "artifacts").as_uri(), "--serve-artifacts",
             "--host", "127.0.0.1", "--port", str(self.port), "--workers", "1"],
            cwd=self.root, env=env, start_new_session=True,  # its own process group: killed as one
            stdout=(self.root / "server.log").open("ab"), stderr=subprocess.STDOUT,
        )  # fmt: skip
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"mlflow server exited: {(self.root / 'server.log').read_text()[-2000:]}")
            try:
                with urllib.request.urlopen(f"{self.url}/health", timeout=2) as reply:
                    if reply.status == 200:
                        return
            except OSError:
                time.sleep(0.5)
        raise RuntimeError(f"mlflow server not healthy in {timeout_s}s")

    def kill(self) -> None:
        """SIGKILL the server and its workers: no goodbye to any client."""
        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(timeout=30)
        self.proc = None


@pytest.fixture
def mlflow_server(tmp_path: Path, uses_servers: None) -> Iterator[MlflowServer]:
    root = tmp_path / "mlflow-server"
    root.mkdir()
    server = MlflowServer(root)
    server.start()
    yield server
    server.kill()
