"""The no-server path: the embedded server starts (as root too) and serves the default database."""

from __future__ import annotations

import json
import os
import shutil
import signal
import tempfile
import time
from pathlib import Path

import psycopg
import pytest

from pyapp import config, server


@pytest.fixture
def data_dir(monkeypatch: pytest.MonkeyPatch):
    base = "/dev/shm" if os.path.isdir("/dev/shm") else None
    path = Path(tempfile.mkdtemp(prefix="usersync-embedded-", dir=base)) / "pgdata"
    monkeypatch.setenv(server.DATA_DIR_ENV, str(path))
    monkeypatch.delenv(config.ENV_VAR, raising=False)
    yield path
    # config.resolve() started it to outlive this process (as the CLI does): stop it here with a
    # fast shutdown signal to the postmaster (pg_ctl refuses to run as root), then remove it.
    pid_file = path / "postmaster.pid"
    if pid_file.exists():
        pid = int(pid_file.read_text().split()[0])
        os.kill(pid, signal.SIGINT)
        deadline = time.monotonic() + 30
        while server.pid_alive(pid) and time.monotonic() < deadline:
            time.sleep(0.1)
    shutil.rmtree(path.parent, ignore_errors=True)


def test_without_database_url_the_embedded_server_is_started_and_reused(data_dir: Path):
    db = config.resolve()
    assert db.origin == "embedded server"
    with psycopg.connect(db.conninfo) as conn:
        assert conn.execute("select current_database()").fetchone() == ("usersync",)
        pid = conn.execute("select pg_backend_pid()").fetchone()
    again = config.resolve()  # reuses the running server, does not init a second one
    assert again.conninfo == db.conninfo
    assert pid is not None


def test_dead_processes_are_pruned_from_the_handle_list(tmp_path: Path):
    handles = tmp_path / ".handle_pids.json"
    handles.write_text(json.dumps([os.getpid(), 2**22 + 12345]))
    server._prune_dead_handles(tmp_path)
    assert json.loads(handles.read_text()) == [os.getpid()]
