"""The real console script through a shell pipe whose reader stops early: usersync exits 0 and
prints no BrokenPipe traceback (`set -o pipefail`: the pipeline's status is usersync's)."""

from __future__ import annotations

import shlex
import subprocess
import sys
from pathlib import Path

import pytest

USERSYNC = shlex.quote(str(Path(sys.executable).parent / "usersync"))


def piped(command: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["bash", "-o", "pipefail", "-c", command], capture_output=True, text=True, timeout=60,
                          env=env)


@pytest.mark.parametrize("args", ["--help", "status --help", "server -h"])
def test_help_piped_to_head_exits_0(args: str):
    result = piped(f"{USERSYNC} {args} | head -1")
    assert (result.returncode, result.stderr) == (0, "")


def test_a_reader_that_reads_nothing_is_no_error_either():
    for args in ("--help", "--version", "db upgrade --sql"):
        result = piped(f"{USERSYNC} {args} | head -c 0")
        assert (result.returncode, result.stderr) == (0, ""), args


def test_long_output_piped_to_head_exits_0():
    result = piped(f"{USERSYNC} db upgrade --sql | head -1")
    assert (result.returncode, result.stderr, result.stdout) == (0, "", "BEGIN;\n")


@pytest.mark.guard  # doctor finds nothing wrong (exit code 0) on an install with the DDL guard
def test_commands_on_the_database_piped_to_head_exit_0(admin_url: str):
    url = shlex.quote(admin_url)
    for args in ("doctor", "fields", "mapping show", "status --json"):
        result = piped(f"{USERSYNC} {args} --database-url {url} | head -1")
        assert (result.returncode, result.stderr) == (0, ""), args


def test_a_real_failure_keeps_its_exit_code_through_the_pipe():
    result = piped(f"{USERSYNC} no-such-command | head -1")
    assert result.returncode == 2 and "No such command" in result.stderr
    result = piped(f"{USERSYNC} status --database-url postgresql://postgres@127.0.0.1:1/x | head -1")
    assert result.returncode == 1 and "cannot reach the database" in result.stderr


@pytest.mark.guard  # adds a column: without the guard, that needs usersync repair first
def test_a_resync_whose_reader_went_away_runs_to_the_end_and_keeps_its_exit_code(admin_url: str, conn):
    conn.execute("alter table contacts add column short_title varchar(3)")
    conn.execute("insert into users (login, academic_title, sync_to_contact)"
                 " select 'u' || g, case when g = 1 then 'Professor' else 'Dr' end, true from generate_series(1, 40) g")
    conn.execute("insert into usersync.field_mapping values ('academic_title', 'short_title')")
    result = piped(f"{USERSYNC} resync --batch-size 1 --database-url {shlex.quote(admin_url)} | head -c 0")
    assert (result.returncode, result.stdout) == (3, "")  # 3: a pair failed; not cut short by the pipe
    assert "Traceback" not in result.stderr and "1 pair failed" in result.stderr
    assert conn.execute("select synced, failed, finished_at is not null from usersync.resync_state").fetchone() == (
        39, 1, True)
