"""`usersync doctor`, `usersync repair`, and what `usersync status` and `usersync resync` tell about
a damaged install, a resync run that did not finish, stale and failed contacts (issue #11)."""

from __future__ import annotations

import json
import time

import psycopg
import psycopg.conninfo
import pytest
from helpers import add_user, one
from typer.testing import CliRunner

from pyapp import admin, cli, errors

runner = CliRunner()


def invoke(url: str, *args: str, code: int = 0):
    result = runner.invoke(cli.app, list(args), env={"DATABASE_URL": url})
    assert result.exit_code == code, f"exit {result.exit_code}: {result.output}"
    assert "Traceback" not in result.output
    return result


@pytest.fixture
def run(admin_url: str):
    """The CLI as an administrator (usersync_admin, not a superuser)."""
    return lambda *args, code=0: invoke(admin_url, *args, code=code)


@pytest.fixture
def run_su(database):
    """The CLI as the superuser that installed usersync."""
    return lambda *args, code=0: invoke(database.conninfo, *args, code=code)


@pytest.fixture
def damaged(conn):
    """What a superuser can do behind the guard's back: a trigger of the pair and an event trigger
    of the guard disabled, and a user written with the triggers skipped."""
    conn.execute("alter event trigger usersync_guard_alter disable")  # first: that guard refuses the next one
    conn.execute("alter table users disable trigger usersync_1_after_update")
    conn.execute("set session_replication_role = replica")
    conn.execute("insert into users (login, sync_to_contact) values ('behind', true)")
    conn.execute("reset session_replication_role")


# --- doctor and repair ------------------------------------------------------------------------------------

@pytest.mark.guard  # a whole install has the DDL guard's event triggers
def test_doctor_on_a_whole_install_says_no_problem_and_exits_0(run):
    assert run("doctor").stdout == "no problem found\n"
    assert json.loads(run("doctor", "--json").stdout) == []
    assert run("doctor", "--pair", "contacts").stdout == "no problem found\n"


@pytest.mark.guard  # a whole install has the DDL guard's event triggers
def test_doctor_lists_each_problem_with_its_repair_and_exits_3(run, damaged):
    problems = json.loads(run("doctor", "--json", code=cli.EXIT_PROBLEMS).stdout)
    assert {p["pair"] for p in problems} == {None, "contacts"}
    install = [p for p in problems if p["pair"] is None]
    assert len(install) == 1 and "usersync_guard_alter" in install[0]["problem"]
    assert install[0]["repair"].startswith("usersync repair")
    assert any("usersync_1_after_update" in p["problem"] and "disabled" in p["problem"]
               and p["repair"] == "usersync repair" for p in problems)
    assert any("without the contact their switch asks for" in p["problem"] and p["repair"] == "usersync sync"
               for p in problems)
    text = run("doctor", code=3).stdout
    assert text.startswith(f"{len(problems)} problems found:\n")
    assert "  install: event trigger usersync_guard_alter" in text and "  pair contacts: trigger " in text
    assert "    repair: usersync repair" in text and "    repair: usersync sync\n" in text
    assert run("doctor", "--pair", "nope", code=1).stderr.startswith("error US011: no pair named 'nope'")


@pytest.mark.guard  # a whole install has the DDL guard's event triggers
def test_repair_as_the_installer_restores_everything_and_says_all_is_well(run, run_su, conn, damaged):
    result = run_su("repair")
    assert "repaired: the DDL guard's event triggers, created again" in result.stdout
    assert "repaired: pair contacts: triggers, grants, policy and generated code restored" in result.stdout
    assert result.stdout.endswith("no problem found: all is well\n")
    assert run("doctor").stdout == "no problem found\n"
    assert one(conn, "select count(*) from usersync.synchronized_contacts") == 1  # 'behind' got its contact
    assert run_su("repair").stdout == "nothing to repair\nno problem found: all is well\n"


@pytest.mark.guard  # a whole install has the DDL guard's event triggers
def test_repair_as_an_administrator_says_it_needs_the_installer(run, admin_conn, damaged):
    result = run("repair", code=1)
    assert "error 42501: repairing usersync needs the role that installed it" in result.stderr
    assert "hint: Run it as that role" in result.stderr
    admin_conn.row_factory = psycopg.rows.dict_row
    with pytest.raises(errors.RepairNotPermitted) as info:
        admin.repair(admin_conn)
    assert info.value.sqlstate == "42501" and "permission denied" in info.value.detail


def test_with_several_pairs_the_repairs_name_their_pair(run, conn):
    conn.execute("create table public.directory (id bigint generated always as identity primary key,"
                 " first_name text, email text)")
    conn.execute("select usersync.attach('public.users', 'public.directory', 'sync_to_contact')")
    conn.execute("set session_replication_role = replica")
    conn.execute("insert into users (login, sync_to_contact) values ('behind', true)")
    conn.execute("reset session_replication_role")
    text = run("doctor", code=3).stdout
    assert "repair: usersync sync --pair contacts" in text and "repair: usersync sync --pair directory" in text
    text = run("doctor", "--pair", "directory", code=3).stdout
    assert "pair directory" in text and "pair contacts" not in text


# --- status ------------------------------------------------------------------------------------------------

@pytest.mark.guard  # a whole install has the DDL guard's event triggers
def test_status_reports_a_damaged_install_and_no_up_to_date_statement(run, damaged):
    st = json.loads(run("status", "--json").stdout)
    assert len(st["problems"]) >= 3 and st["problems_unchecked"] is None
    text = run("status").stdout
    assert f"damaged install: {len(st['problems'])} problems found" in text
    assert "run `usersync doctor` to see the repairs" in text
    assert "usersync_1_after_update" in text and "usersync_guard_alter" in text
    assert "up to date" not in text


@pytest.mark.guard  # a whole install has the DDL guard's event triggers
def test_status_of_a_whole_install_says_so(run, conn):
    add_user(conn, "a")
    text = run("status").stdout
    assert "no problem found: every synchronized contact is up to date" in text and "damaged" not in text
    assert json.loads(run("status", "--json").stdout)["problems"] == []


def test_status_on_a_read_only_connection_still_checks_the_install(admin_url, conn):
    # doctor compares generated code by generating it again (rolled back): not possible in a
    # read-only transaction, as on a standby, where it checks everything else.
    conn.execute("drop trigger usersync_1_after_update on users")
    read_only = psycopg.conninfo.make_conninfo(admin_url, options="-c default_transaction_read_only=on")
    st = json.loads(invoke(read_only, "status", "--json").stdout)
    assert st["problems_unchecked"] is None
    assert [p["problem"] for p in st["problems"]] == [
        "its generated code could not be compared here (a read-only transaction or a standby)",
        "trigger usersync_1_after_update on public.users is missing"]


@pytest.mark.guard  # adds a column: without the guard, that needs usersync repair first
def test_status_tells_stale_from_failed(run, conn):
    conn.execute("alter table contacts add column short_title varchar(3)")
    for login, title in (("a", "Dr"), ("b", "Dr"), ("c", "Professor")):
        add_user(conn, login, academic_title=title)
    run("mapping", "set", "academic_title", "short_title")
    run("resync", code=3)
    st = json.loads(run("status", "--json").stdout)
    assert (st["pairs"], st["up_to_date"], st["stale"], st["failed"]) == (3, 2, 0, 1)
    assert st["failures"][0]["message"] == "value too long for type character varying(3)"
    run("mapping", "set", "department", "company")  # the two that synced are stale now, the failed one failed
    st = json.loads(run("status", "--json").stdout)
    assert (st["pairs"], st["up_to_date"], st["stale"], st["failed"]) == (3, 0, 2, 1)
    text = run("status").stdout
    assert "2 contacts stale: synced before the mapping last changed; `usersync resync` brings them up to date" \
        in text
    assert "1 contact failed: the last resync could not write it, and will fail again until the value or the " \
           "mapping is fixed" in text
    assert "user 3 → contact 3: academic_title -> short_title 22001 value too long" in text
    assert "no problem found" not in text


def _backend_gone(conn: psycopg.Connection, pid: int) -> None:
    deadline = time.monotonic() + 10
    while one(conn, "select count(*) from pg_stat_activity where pid = %s", [pid]):
        assert time.monotonic() < deadline, "the closed session's backend did not exit"
        time.sleep(0.02)


def test_status_shows_a_running_then_an_interrupted_resync_run(run, conn, admin_url):
    conn.execute("insert into users (login, sync_to_contact) select 'u' || g, true from generate_series(1, 6) g")
    other = psycopg.connect(admin_url, autocommit=True)
    pid = one(other, "select pg_backend_pid()")
    other.execute("select * from usersync.resync_step(2)")
    text = run("status").stdout
    assert f"resync running in session {pid}: 2 of 6 pairs done (0 failed), started " in text
    assert "no problem found" not in text
    other.close()
    _backend_gone(conn, pid)
    text = run("status").stdout
    assert "resync interrupted: 2 of 6 pairs done (0 failed), started " in text
    assert "`usersync resync` continues it" in text and "no problem found" not in text
    run_ = json.loads(run("status", "--json").stdout)["last_resync"]
    assert (run_["state"], run_["synced"], run_["total"], run_["finished_at"]) == ("interrupted", 2, 6, None)
    run("mapping", "set", "academic_title", "title")
    assert "`usersync resync` starts it over (the mapping changed since)" in run("status").stdout
    run("resync")
    assert json.loads(run("status", "--json").stdout)["last_resync"]["state"] == "finished"
    assert "resync interrupted" not in run("status").stdout


# --- resync: exit code 3 and a failure list cut short ------------------------------------------------------

@pytest.mark.guard  # adds a column: without the guard, that needs usersync repair first
def test_resync_with_failed_pairs_exits_3_and_cuts_the_list(run, conn):
    conn.execute("alter table contacts add column short_title varchar(3)")
    conn.execute("insert into users (login, academic_title, sync_to_contact)"
                 " select 'u' || g, case when g <= 25 then 'Professor' else 'Dr' end, true"
                 " from generate_series(1, 30) g")
    run("mapping", "set", "academic_title", "short_title")
    report = json.loads(run("resync", "--json", code=3).stdout)
    assert (report["synced"], report["failed"]) == (5, 25)
    assert len(report["failures"]) == report["failures_shown"] == admin.FAILURES_LISTED == 20
    assert report["failures_truncated"] is True
    result = run("resync", code=3)
    assert result.stdout.count("value too long") == 20 and "  … and 5 more" in result.stdout
    assert "25 pairs failed" in result.stderr
    # The values fixed (each user's contact follows at once), the run succeeds: exit code 0.
    conn.execute("update users set academic_title = 'Dr'")
    report = json.loads(run("resync", "--json").stdout)
    assert (report["failed"], report["failures"], report["failures_truncated"]) == (0, [], False)
