"""PostgreSQL 15 with the databases `mlflow` (tracking + registry) and `prefect` (the Prefect server's).

PostgreSQL refuses to run as root: as root it runs as the `postgres` user (else `nobody`), trusting loopback
connections; its data folder goes under /tmp when that user cannot reach the state dir (pytest's tmp dirs).
"""

from __future__ import annotations

import contextlib
import os
import pwd
import shutil
import signal
import subprocess
import tempfile
from pathlib import Path
from typing import Any

from infra.local.children import child_env
from infra.local.config import Site
from infra.local.supervisor import Service, StackError, Supervisor, run_as

DATABASES = ("mlflow", "prefect")


def urls(ports: dict[str, int]) -> dict[str, str]:
    """Its databases: MLflow's (SQLAlchemy), the admin one (libpq form, for psycopg2), Prefect's (asyncpg)."""
    port = ports["postgres"]
    return {
        "postgres": f"postgresql+psycopg2://postgres@127.0.0.1:{port}/mlflow",
        "postgres_admin": f"postgresql://postgres@127.0.0.1:{port}/postgres",  # libpq form, for psycopg2
        "prefect_db": f"postgresql+asyncpg://postgres@127.0.0.1:{port}/prefect",
    }


def pg_bin_dir() -> Path:
    """Folder with initdb/postgres: $ALBERT_PG_BIN, Debian's /usr/lib/postgresql/<newest>/bin, or PATH."""
    if os.environ.get("ALBERT_PG_BIN"):
        return Path(os.environ["ALBERT_PG_BIN"])
    versions = sorted(Path("/usr/lib/postgresql").glob("*/bin/initdb"), key=lambda p: int(p.parts[-3]))
    if versions:
        return versions[-1].parent
    found = shutil.which("initdb")
    if found:
        return Path(found).resolve().parent
    raise StackError("postgres: initdb not found (apt-get install postgresql, or set ALBERT_PG_BIN)")


def _pg_account() -> tuple[str | None, int, int]:
    """(user to run postgres as, uid, gid): PostgreSQL refuses root, so root runs it as `postgres` (or
    `nobody`); anyone else runs it as themselves."""
    if os.geteuid() != 0:
        return None, os.geteuid(), os.getegid()
    for name in ("postgres", "nobody"):
        with contextlib.suppress(KeyError):
            entry = pwd.getpwnam(name)
            return name, entry.pw_uid, entry.pw_gid
    raise StackError("postgres: running as root and no `postgres` or `nobody` user to run PostgreSQL as")


def _reachable_by(path: Path, uid: int) -> bool:
    """Can `uid` traverse every existing ancestor of `path`? (pytest's tmp dirs are 0700 root.)"""
    for parent in [path, *path.parents]:
        if not parent.exists():
            continue
        st = parent.stat()
        if not (st.st_uid == uid or st.st_mode & 0o001):
            return False
    return True


class Postgres(Service):
    name = "postgres"
    stop_signal = signal.SIGINT  # PostgreSQL's fast shutdown

    def start(self, sv: Supervisor, site: Site) -> None:
        """initdb into a fresh data folder, run `postgres` on loopback only, create the databases."""
        user, uid, gid = _pg_account()
        bindir = pg_bin_dir()
        data = site.state_dir / "postgres"
        if not _reachable_by(site.state_dir, uid):  # e.g. under pytest's private tmp dirs: one it can reach
            data = Path(tempfile.mkdtemp(prefix="albert-pg-"))
        data.mkdir(mode=0o700, exist_ok=True)
        os.chown(data, uid, gid)
        sv.update(lambda state: state.update(pg_data=str(data)))
        env = child_env(LC_ALL="C", LANG="C")
        with open(sv.log(self.name), "ab") as log:
            initdb = subprocess.run(
                [str(bindir / "initdb"), "-D", str(data), "-U", "postgres", "-A", "trust", "-E", "UTF8",
                 "--no-locale", "--no-sync"],
                stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, env=env, cwd=data,
                timeout=site.cfg.timeout_s, **run_as(user),
            )  # fmt: skip
        if initdb.returncode:
            raise StackError(
                f"postgres: initdb failed (status {initdb.returncode}); log: {sv.log(self.name)}"
            )
        proc = sv.launch(self.name, [
            str(bindir / "postgres"), "-D", str(data), "-p", str(site.ports["postgres"]),
            "-c", "listen_addresses=127.0.0.1", "-c", "unix_socket_directories=",
            "-c", "fsync=off", "-c", "synchronous_commit=off", "-c", "full_page_writes=off",
            "-c", "max_connections=100", "-c", "shared_buffers=64MB",
        ], env, cwd=data, user=user)  # fmt: skip
        sv.wait(self.name, lambda: _accepting(site.urls["postgres_admin"]), proc)
        _create_databases(site.urls["postgres_admin"])

    def probe(self, urls: dict[str, str], timeout: float) -> tuple[bool, str]:
        import psycopg2

        with (
            contextlib.closing(psycopg2.connect(urls["postgres_admin"], connect_timeout=int(timeout))) as c,
            c.cursor() as cur,
        ):
            cur.execute("SELECT datname FROM pg_database WHERE datname IN ('mlflow', 'prefect')")
            names = sorted(r[0] for r in cur.fetchall())
        return names == list(DATABASES), f"databases: {', '.join(names) or 'none'}"

    def where(self, urls: dict[str, str]) -> str:
        return urls["postgres"]

    def leftovers(self, state: dict[str, Any]) -> list[str]:
        return [state["pg_data"]] if state.get("pg_data") else []


def _accepting(admin_url: str) -> tuple[bool, str]:
    import psycopg2

    try:
        psycopg2.connect(admin_url, connect_timeout=2).close()
        return True, "accepting connections"
    except psycopg2.OperationalError as e:
        return False, str(e).strip().splitlines()[0] if str(e).strip() else "not accepting connections"


def _create_databases(admin_url: str) -> None:
    import psycopg2

    with contextlib.closing(psycopg2.connect(admin_url, connect_timeout=5)) as conn:
        conn.autocommit = True
        with conn.cursor() as cur:
            for db in DATABASES:
                cur.execute("SELECT 1 FROM pg_database WHERE datname = %s", (db,))
                if not cur.fetchone():
                    cur.execute(f'CREATE DATABASE "{db}"')
