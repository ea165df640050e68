"""Fixtures for the reliability tests: a small real shard set built once per session, and the `albert` console
script run as a separate process (to freeze and kill it mid-write, or to read exactly what a user sees)."""

import contextlib
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import psutil
import pytest

from data_jobs.shards import ShardsConfig, build_shards
from data_jobs.tokenizer_job import TokenizerJobConfig, train_tokenizer
from tests.corpus_helpers import publish, wikitext_documents

ALBERT = str(Path(sys.executable).with_name("albert"))
SMALL = ShardsConfig(max_seq_len=64, eval_share=0.1)


@dataclass(frozen=True)
class SmallShards:
    home: Path
    shard_id: str  # built with SMALL from corpus "wiki" and tokenizer "wiki"

    def copy(self, new_id: str) -> Path:
        """A copy of the shard folder under another id, to damage without touching the original."""
        folder = self.home / "shards" / new_id
        shutil.copytree(self.home / "shards" / self.shard_id, folder)
        return folder


@pytest.fixture(scope="session")
def small_shards(tmp_path_factory: pytest.TempPathFactory, corpora: Path, uses_ray: None) -> SmallShards:
    """20 WikiText articles, a 2000-piece tokenizer and 64-token static shards (about 15 s on 2 cores)."""
    home = tmp_path_factory.mktemp("small_shards_home")
    articles = wikitext_documents(corpora / "wikitext2-valid.raw.txt")
    publish(home, "wiki", dict(sorted(articles.items())[:20]), files=2)
    train_tokenizer("wiki", home=home, cfg=TokenizerJobConfig(vocab_size=2000))
    return SmallShards(home, build_shards("wiki", "wiki", home=home, workers=1, cfg=SMALL)["id"])


def albert_env(home: Path) -> dict[str, str]:
    """The environment of a user's shell: this home, a local Ray of its own."""
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    env["ALBERT_HOME"] = str(home)
    return env


def run_albert(*args: str, home: Path, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run(
        [ALBERT, *args], env=albert_env(home), capture_output=True, text=True, timeout=timeout
    )


class Killable:
    """`albert ARGS` in a session of its own, so the whole process group (Ray's processes too) can be frozen
    at a chosen moment with SIGSTOP, inspected, then SIGKILLed."""

    def __init__(self, *args: str, home: Path) -> None:
        self.proc = subprocess.Popen(
            [ALBERT, *args],
            env=albert_env(home),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            start_new_session=True,
        )
        self.family: list[psutil.Process] = []

    def freeze_when(self, found: Callable[[], Path | None], timeout: float = 300) -> Path:
        """Poll `found` every few ms; when it returns a path, SIGSTOP the group and return that path."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            path = found()
            if path is not None:
                os.killpg(self.proc.pid, signal.SIGSTOP)
                self.family = psutil.Process(self.proc.pid).children(recursive=True)
                for process in self.family:  # Ray's workers run in process groups of their own
                    with contextlib.suppress(psutil.NoSuchProcess):
                        process.suspend()
                return path
            if self.proc.poll() is not None:
                out, err = self.proc.communicate()
                pytest.fail(
                    f"albert exited ({self.proc.returncode}) before the moment to kill it:\n{err[-3000:]}"
                )
            time.sleep(0.005)
        pytest.fail(f"no moment to kill at within {timeout} s")

    def kill(self) -> None:
        """SIGKILL the group, and any descendant that left it; wait until all of them are gone."""
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, signal.SIGKILL)
        for process in self.family:
            with contextlib.suppress(psutil.NoSuchProcess):
                process.kill()
        self.proc.communicate(timeout=60)
        psutil.wait_procs(self.family, timeout=60)


@pytest.fixture
def killable(runs_cli: None) -> Iterator[Callable[..., Killable]]:
    """Start `albert` processes that are killed at the end of the test whatever happens."""
    started: list[Killable] = []

    def start(*args: str, home: Path) -> Killable:
        started.append(Killable(*args, home=home))
        return started[-1]

    yield start
    for k in started:
        if k.proc.poll() is None:
            k.family = k.family or psutil.Process(k.proc.pid).children(recursive=True)
            k.kill()
