"""The dry run of "Update all synchronized users" (preview_resync, `usersync resync --dry-run`):
a value that the run cannot write is a pair that would fail, shown with its reason, never an
error of the dry run itself, and never a change."""

from __future__ import annotations

import json

import pytest
from helpers import add_user, contact, contact_id, one
from typer.testing import CliRunner

from pyapp import admin, cli


def preview(conn, examples: int = 5) -> dict:
    with conn.cursor() as cur:
        row = cur.execute("select pairs, would_change, would_fail, stale, changes"
                          " from usersync.preview_resync(%s)", [examples]).fetchone()
        return dict(zip([d.name for d in cur.description], row, strict=True))


def errors_recorded(conn) -> list[tuple]:
    return conn.execute("select user_id::bigint, contact_id::bigint, field, sqlstate, message from usersync.sync_errors"
                        " order by user_id").fetchall()


@pytest.fixture
def reversed_bad_date(conn, admin_conn) -> dict[str, int]:
    """A reversed pair whose contact holds 'not a date' in notes, then mapped from birth_date
    (a mapping change rewrites nothing), beside a user-sourced pair that would simply change."""
    bad = add_user(conn, "reversed", birth_date="1990-01-02")
    admin_conn.execute("select usersync.set_sync_source(%s, 'contact')", [bad])
    conn.execute("update contacts set notes = 'not a date' where id = %s", [contact_id(conn, bad)])
    good = add_user(conn, "plain", birth_date="1985-05-06")
    admin_conn.execute("insert into usersync.field_mapping values ('birth_date', 'notes')")
    return {"bad": bad, "good": good}


@pytest.fixture
def too_long(conn, admin_conn) -> dict[str, int]:
    """A varchar(5) contact field mapped from academic_title; one user's title does not fit."""
    conn.execute("alter table contacts add column short_title varchar(5)")
    ids = {"dr": add_user(conn, "a", academic_title="Dr"), "prof": add_user(conn, "b", academic_title="Professor")}
    admin_conn.execute("insert into usersync.field_mapping values ('academic_title', 'short_title')")
    return ids


def test_a_reversed_pair_whose_contact_value_cannot_be_cast_would_fail_and_the_run_records_it(
        conn, admin_conn, reversed_bad_date):
    bad, good = reversed_bad_date["bad"], reversed_bad_date["good"]
    p = preview(admin_conn)  # does not raise (it used to: 22007)
    assert (p["pairs"], p["would_change"], p["would_fail"], p["stale"]) == (2, 1, 1, 2)
    failing = [c for c in p["changes"] if "error" in c]
    assert failing == [{"user_id": bad, "contact_id": contact_id(conn, bad), "field": "birth_date",
                        "from": "1990-01-02", "sqlstate": "22007",
                        "error": 'invalid input syntax for type date: "not a date"'}]
    assert [c for c in p["changes"] if "error" not in c] == [
        {"user_id": good, "contact_id": contact_id(conn, good), "field": "notes", "from": None, "to": "1985-05-06"}]

    # The run: exactly the pair the preview named fails, with the same reason; the other syncs.
    admin_conn.execute("call usersync.resync_all()")
    assert errors_recorded(conn) == [(bad, contact_id(conn, bad), "birth_date -> notes", "22007", failing[0]["error"])]
    assert one(conn, "select synced, failed from usersync.resync_state") == (1, 1)
    assert contact(conn, contact_id(conn, good))["notes"] == "1985-05-06"
    assert str(one(conn, "select birth_date from users where id = %s", [bad])) == "1990-01-02"
    # Still predicted after the run (nothing fixed it); nothing else left to change.
    p = preview(admin_conn)
    assert (p["would_change"], p["would_fail"]) == (0, 1)


def test_a_user_value_too_long_for_its_contact_field_would_fail_and_is_not_a_change(conn, admin_conn, too_long):
    p = preview(admin_conn)
    assert (p["pairs"], p["would_change"], p["would_fail"]) == (2, 1, 1)
    prof = [c for c in p["changes"] if c["user_id"] == too_long["prof"]]
    # Not a change to 'Profe' (what a CAST would truncate it to): the run's INSERT/UPDATE fails.
    assert prof == [{"user_id": too_long["prof"], "contact_id": contact_id(conn, too_long["prof"]),
                     "field": "short_title", "from": None, "sqlstate": "22001",
                     "error": "value too long for type character varying(5)"}]
    assert {"user_id": too_long["dr"], "field": "short_title", "to": "Dr"}.items() <= p["changes"][1].items()

    admin_conn.execute("call usersync.resync_all()")
    assert [(e[0], e[2], e[3], e[4]) for e in errors_recorded(conn)] == [
        (too_long["prof"], "academic_title -> short_title", "22001", prof[0]["error"])]
    assert contact(conn, contact_id(conn, too_long["dr"]))["short_title"] == "Dr"


def test_examples_list_failures_first_and_zero_examples_still_counts(admin_conn, too_long, reversed_bad_date):
    p = preview(admin_conn, examples=1)
    assert (p["would_change"], p["would_fail"]) == (2, 2)
    assert ["error" in c for c in p["changes"]] == [True, False]  # one of each kind at most
    p = preview(admin_conn, examples=0)
    assert (p["would_change"], p["would_fail"], p["changes"]) == (2, 2, [])


def test_the_admin_api_returns_would_fail(admin_url, too_long):
    with admin.connect(admin_url) as c:
        p = admin.preview_resync(c)
    assert (p["pairs"], p["would_change"], p["would_fail"]) == (2, 1, 1)


def test_the_cli_dry_run_shows_what_would_fail_and_changes_nothing(conn, admin_url, too_long):
    runner = CliRunner()
    env = {"DATABASE_URL": admin_url}
    result = runner.invoke(cli.app, ["resync", "--dry-run"], env=env)
    assert result.exit_code == 0, result.output
    assert "1 of 2 synchronized contacts would change, 1 would fail" in result.stdout
    assert f"user {too_long['prof']} → contact" in result.stdout and "22001 value too long" in result.stdout
    result = runner.invoke(cli.app, ["resync", "--dry-run", "--json"], env=env)
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    assert (data["would_change"], data["would_fail"]) == (1, 1)
    assert one(conn, "select count(*) from contacts where short_title is not null") == 0
    assert one(conn, "select count(*) from usersync.sync_errors") == 0


def test_the_value_by_value_path_runs_only_when_a_value_does_not_fit(conn, admin_conn):
    if one(conn, "select current_setting('server_version_num')::int") < 150000:
        pytest.skip("pg_stat_force_next_flush() needs PostgreSQL 15")
    conn.execute("set track_functions = 'all'")

    def tries() -> int:
        conn.execute("select pg_stat_force_next_flush()")
        return one(conn, "select coalesce(sum(calls), 0)::int from pg_stat_user_functions"
                         " where schemaname = 'usersync' and funcname = '_preview_error'")

    conn.execute("alter table contacts add column short_title varchar(5)")
    add_user(conn, "a", academic_title="Dr")
    admin_conn.execute("insert into usersync.field_mapping values ('academic_title', 'short_title')")
    conn.execute("select * from usersync.preview_resync()")
    assert tries() == 0
    admin_conn.execute("delete from usersync.field_mapping where user_field = 'academic_title'")
    add_user(conn, "b", academic_title="Professor")
    admin_conn.execute("insert into usersync.field_mapping values ('academic_title', 'short_title')")
    assert one(conn, "select would_fail from usersync.preview_resync()") == 1
    assert tries() > 0


def test_the_preview_does_not_depend_on_the_sessions_settings(conn, admin_conn, reversed_bad_date):
    admin_conn.execute("set datestyle = 'SQL, DMY'")
    admin_conn.execute("set timezone = 'Asia/Kathmandu'")
    p = preview(admin_conn)
    assert {(c["field"], c["from"], c.get("to")) for c in p["changes"]} == {
        ("birth_date", "1990-01-02", None), ("notes", None, "1985-05-06")}
