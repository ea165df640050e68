"""A small process supervisor: knows services only through `Service`, nothing of PostgreSQL or Ray.

It starts each service once those it comes after are healthy (independent ones side by side), records every
process in a state file (`pids.json`: pid and start time, so a reused pid is never mistaken for ours), writes
each service's output to `logs/<name>.log`, and stops services in reverse order: by recorded pid, by process
group (each service runs in its own session) and descendants, and by whatever else a service names as its
own (`Service.strays`), SIGKILL after a grace period. Folders a service leaves outside the state dir it names
in `Service.leftovers`, for the caller to remove.
"""

from __future__ import annotations

import contextlib
import json
import os
import pwd
import signal
import subprocess
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import psutil

STATE_FILE = "pids.json"


class StackError(RuntimeError):
    """A part failed to start, or the state dir is in a state we refuse to touch; one line, names the log."""


class Aborted(Exception):
    """A part stopped waiting because another one failed."""


class Service:
    """One supervised part of the stack. Subclasses say how to start it and how to ask whether it is up."""

    name: str = ""
    after: tuple[str, ...] = ()  # started once these are healthy
    stop_signal: signal.Signals = signal.SIGTERM
    drain_on_stop: bool = False  # wait for it to end before the services it came after are signalled

    def start(self, sv: Supervisor, site: Any) -> None:
        """Launch the service through `sv` and return once it is healthy; `site` is the stack's layout."""
        raise NotImplementedError

    def probe(self, urls: dict[str, str], timeout: float) -> tuple[bool, str]:
        """(healthy, one-line detail), by asking the service; may raise when it does not answer."""
        raise NotImplementedError

    def health(self, urls: dict[str, str], timeout: float = 3.0) -> tuple[bool, str]:
        try:
            return self.probe(urls, timeout)
        except Exception as e:  # unreachable is an answer here, not an error
            return False, f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"[:200]

    def where(self, urls: dict[str, str]) -> str:
        """Where it answers, for `status`."""
        raise NotImplementedError

    def strays(self, state: dict[str, Any]) -> list[psutil.Process]:
        """Its processes that neither the pid file nor its process group finds (Ray's, by temp dir)."""
        return []

    def leftovers(self, state: dict[str, Any]) -> list[str]:
        """Folders outside the state dir to remove when the stack is stopped for good."""
        return []


# --- the state file and the logs ------------------------------------------------------------------------------


def read_state(state_dir: Path) -> dict[str, Any] | None:
    path = Path(state_dir) / STATE_FILE
    if not path.is_file():
        return None
    return json.loads(path.read_text())


def last_line(log: Path) -> str:
    with contextlib.suppress(OSError):
        lines = [ln.strip() for ln in log.read_text(errors="replace").splitlines() if ln.strip()]
        if lines:
            return lines[-1][:300]
    return ""


# --- finding and ending processes ----------------------------------------------------------------------------


def run_as(user: str | None) -> dict[str, Any]:
    """Popen arguments that run a child as `user` (with its group only), or as ourselves."""
    if user is None:
        return {}
    return {"user": user, "group": pwd.getpwnam(user).pw_gid, "extra_groups": []}


def recorded_process(entry: dict[str, Any]) -> psutil.Process | None:
    """The recorded process if it is still the same one (pid and start time) and not a zombie."""
    try:
        p = psutil.Process(entry["pid"])
        if abs(p.create_time() - entry["create_time"]) > 1.0 or p.status() == psutil.STATUS_ZOMBIE:
            return None
        return p
    except psutil.Error:
        return None


def with_descendants(procs: list[psutil.Process]) -> list[psutil.Process]:
    out: dict[int, psutil.Process] = {}
    for p in procs:
        with contextlib.suppress(psutil.Error):
            out.setdefault(p.pid, p)
            for child in p.children(recursive=True):
                out.setdefault(child.pid, child)
    return list(out.values())


def group_members(entries: list[dict[str, Any]]) -> list[psutil.Process]:
    """Processes in the process groups of the recorded leaders (each part is launched in its own session),
    including those whose parent, or the leader itself, has exited; only ones born after their leader."""
    born = {e["pid"]: e["create_time"] for e in entries}
    found = []
    for p in psutil.process_iter():
        with contextlib.suppress(psutil.Error, OSError):
            group = os.getpgid(p.pid)
            if p.pid not in born and group in born and p.create_time() >= born[group] - 1.0:
                found.append(p)
    return found


def processes_of(
    state: dict[str, Any], name: str, strays: Sequence[psutil.Process] = ()
) -> list[psutil.Process]:
    """The live processes of one part: the recorded ones, their process groups, `strays`, and descendants."""
    entries = state.get("processes", {}).get(name, [])
    procs = [p for e in entries if (p := recorded_process(e))] + group_members(entries) + list(strays)
    return with_descendants(procs)


def end_processes(procs: list[psutil.Process], grace: float) -> list[psutil.Process]:
    """SIGTERM, `grace` seconds, SIGKILL; returns what is still alive after that."""
    for p in procs:
        with contextlib.suppress(psutil.Error):
            p.terminate()
    _, alive = psutil.wait_procs(procs, timeout=grace)
    for p in alive:
        with contextlib.suppress(psutil.Error):
            p.kill()
    return psutil.wait_procs(alive, timeout=10)[1]


# --- stop ----------------------------------------------------------------------------------------------------


def stop_services(
    state: dict[str, Any], services: Sequence[Service], timeout: float
) -> tuple[dict[str, list[int]], list[int]]:
    """Signal each service's processes, last started first, give them `timeout` seconds, then SIGKILL; then
    kill what a dying process spawned meanwhile (strays found afresh). Returns ({name: pids signalled}, pids
    still alive: should be empty)."""
    ended: dict[str, list[int]] = {}
    everything: list[psutil.Process] = []
    for service in reversed(services):
        procs = processes_of(state, service.name, service.strays(state))
        ended[service.name] = sorted(p.pid for p in procs)
        for p in procs:
            with contextlib.suppress(psutil.Error):
                p.send_signal(service.stop_signal)
        if service.drain_on_stop:
            psutil.wait_procs(procs, timeout=timeout)
        everything += procs
    _, alive = psutil.wait_procs(everything, timeout=timeout)
    for p in alive:
        with contextlib.suppress(psutil.Error):
            p.kill()
    _, left = psutil.wait_procs(alive, timeout=10)
    late = [p for service in services for p in service.strays(state)]  # e.g. what a dying Ray raylet spawned
    for p in late:
        with contextlib.suppress(psutil.Error):
            p.kill()
    _, left_late = psutil.wait_procs(late, timeout=10)
    still = [p.pid for p in [*left, *left_late] if p.is_running() and p.status() != psutil.STATUS_ZOMBIE]
    return ended, still


# --- start ---------------------------------------------------------------------------------------------------


class Supervisor:
    """Starts services in one state dir and keeps its state file current; one per start."""

    def __init__(self, state_dir: Path, state: dict[str, Any], timeout_s: float) -> None:
        self.state_dir = state_dir
        self.logs = state_dir / "logs"
        self.state = state  # saved as STATE_FILE; "processes" maps each part to its recorded leaders
        self.timeout_s = timeout_s  # default seconds a part may take from its launch to healthy
        self.lock = threading.Lock()
        self.failed = threading.Event()  # another part failed: the others stop waiting
        self.popens: list[subprocess.Popen] = []

    def save(self) -> None:
        with self.lock:
            tmp = self.state_dir / f".{STATE_FILE}.tmp"
            tmp.write_text(json.dumps(self.state, indent=2, sort_keys=True))
            os.replace(tmp, self.state_dir / STATE_FILE)

    def update(self, change: Callable[[dict[str, Any]], Any]) -> None:
        """Apply `change` to the state under the lock, then save it."""
        with self.lock:
            change(self.state)
        self.save()

    def log(self, part: str) -> Path:
        return self.logs / f"{part}.log"

    def launch(self, part: str, argv: list[str], env: dict[str, str], *, cwd: Path | None = None,
               user: str | None = None) -> subprocess.Popen:  # fmt: skip
        """Start one process of `part` in its own session (so stopping finds its whole group), output appended
        to its log, and record it."""
        with open(self.log(part), "ab") as log:
            log.write(f"\n$ {' '.join(argv)}\n".encode())
            log.flush()
            proc = subprocess.Popen(
                argv,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                env=env,
                cwd=cwd or self.state_dir,
                start_new_session=True,
                **run_as(user),
            )
        self.popens.append(proc)
        with contextlib.suppress(psutil.Error):
            created = psutil.Process(proc.pid).create_time()
            with self.lock:
                self.state["processes"].setdefault(part, []).append({"pid": proc.pid, "create_time": created})
        self.save()
        return proc

    def forget(self, part: str) -> None:
        """Drop the recorded processes of `part` (after ending them, before launching it again)."""
        with self.lock:
            self.state["processes"].pop(part, None)

    def wait(self, part: str, check: Callable[[], tuple[bool, str]], proc: subprocess.Popen | None,
             timeout: float | None = None) -> str:  # fmt: skip
        """Poll `check` until it says healthy; raise StackError if `proc` exits first or time runs out, and
        Aborted once another part has failed."""
        deadline = time.monotonic() + (timeout or self.timeout_s)
        detail = "no answer yet"
        while True:
            if self.failed.is_set():
                raise Aborted(part)
            ok, detail = check()
            if ok:
                return detail
            if proc is not None and proc.poll() is not None:
                raise StackError(f"{part}: exited with status {proc.returncode} before it was healthy "
                                 f"({detail}); log: {self.log(part)} (last line: {last_line(self.log(part))})")  # fmt: skip
            if time.monotonic() > deadline:
                raise StackError(f"{part}: not healthy after {timeout or self.timeout_s:.0f} s ({detail}); "
                                 f"log: {self.log(part)} (last line: {last_line(self.log(part))})")  # fmt: skip
            time.sleep(0.5)

    def start_all(self, services: Sequence[Service], site: Any) -> list[BaseException]:
        """Start every service, each once all it comes after are healthy, independent ones side by side.
        On the first failure the others stop waiting and those after a failed one are not started; returns
        the failures, earliest first (the caller stops what was started)."""
        done = {s.name: threading.Event() for s in services}
        healthy: set[str] = set()
        errors: list[BaseException] = []

        def start(service: Service) -> None:
            try:
                for name in service.after:
                    done[name].wait()
                if all(name in healthy for name in service.after):
                    service.start(self, site)
                    healthy.add(service.name)
            except Aborted:
                pass
            except BaseException as e:
                errors.append(e)
                self.failed.set()
            finally:
                done[service.name].set()

        with ThreadPoolExecutor(len(services)) as pool:
            for f in [pool.submit(start, s) for s in services]:
                f.result()
        return errors
