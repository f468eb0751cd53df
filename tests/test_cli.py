"""The `usersync` CLI through Typer's runner, against the real database, as an administrator."""

from __future__ import annotations

import json
import signal
import time

import pytest
from helpers import add_user, one
from typer.testing import CliRunner

from pyapp import cli, progress

runner = CliRunner()


@pytest.fixture
def run(admin_url: str):
    def invoke(*args: str, code: int = 0):
        result = runner.invoke(cli.app, list(args), env={"DATABASE_URL": admin_url})
        assert result.exit_code == code, f"exit {result.exit_code}: {result.output}"
        return result
    return invoke


def as_json(result) -> object:
    return json.loads(result.stdout)


def test_status_reports_pairs_stale_failed_reversed_toggles_and_server(run, conn, admin_conn):
    add_user(conn, "a")
    uid = add_user(conn, "b")
    admin_conn.execute("select usersync.set_sync_source(%s, 'contact')", [uid])
    admin_conn.execute("insert into usersync.field_mapping values ('academic_title', 'title')")
    st = as_json(run("status", "--json"))
    assert (st["pairs"], st["reversed"], st["failed"]) == (2, 1, 0)
    assert st["stale"] == 2 and st["settings"]["delete_contact_with_user"] is False
    assert st["server"]["version"]
    assert "stale" in run("status").stdout


def test_fields_lists_both_modules_with_labels(run):
    rows = as_json(run("fields", "--json"))
    assert {"module": "users", "field": "academic_title", "data_type": "text", "label": "Academic title",
            "not_null": False, "has_default": False} in rows
    assert "Academic title" in run("fields").stdout


def test_mapping_show_set_remove_clear_reset(run):
    screen = as_json(run("mapping", "show", "--json"))
    assert len(screen["mapped"]) == 7
    assert {f["field"] for f in screen["empty_contact_fields"]} == {"title", "company", "birthday", "notes"}
    assert "stays empty" in run("mapping", "show").stdout
    run("mapping", "set", "academic_title", "title")
    run("mapping", "set", "department", "company")  # re-targets department
    mapped = {(m["user_field"], m["contact_field"]) for m in as_json(run("mapping", "show", "--json"))["mapped"]}
    assert {("academic_title", "title"), ("department", "company")} <= mapped
    assert ("department", "department") not in mapped
    run("mapping", "remove", "phone")
    run("mapping", "clear")
    assert as_json(run("mapping", "show", "--json"))["mapped"] == []
    run("mapping", "reset")
    assert len(as_json(run("mapping", "show", "--json"))["mapped"]) == 7


def test_bad_mapping_input_exits_1_with_the_servers_message_and_hint(run):
    result = run("mapping", "set", "no_such_field", "title", code=1)
    assert "US003" in result.stderr and 'unknown user field "no_such_field"' in result.stderr
    assert "hint:" in result.stderr and "Traceback" not in result.output
    result = run("mapping", "set", "login", "birthday", code=1)
    assert "cannot fill" in result.stderr
    result = run("mapping", "remove", "academic_title", code=1)
    assert "is not mapped" in result.stderr


def test_settings_show_and_set(run):
    assert as_json(run("settings", "show", "--json")) == {"delete_contact_with_user": False,
                                                          "delete_user_with_contact": False}
    run("settings", "set", "delete-contact-with-user", "on")
    assert as_json(run("settings", "show", "--json"))["delete_contact_with_user"] is True
    run("settings", "set", "delete-user-with-contact", "sideways", code=2)
    run("settings", "set", "delete-everything", "on", code=2)


def test_sync_all_given_and_unknown_users(run, conn):
    a = add_user(conn, "a")
    add_user(conn, "b")
    assert as_json(run("sync", "--json")) == {"synced": 2}
    assert as_json(run("sync", str(a), "--json")) == {"synced": 1}
    result = run("sync", "424242", code=1)
    assert "unknown user id(s): 424242" in result.stderr


def test_resync_reports_synced_unchanged_failed_and_dry_run_changes_nothing(run, conn):
    conn.execute("alter table contacts add column short_title varchar(3)")
    conn.execute("insert into users (login, academic_title, sync_to_contact)"
                 " select 'u' || g, case when g = 3 then 'Professor' else 'Dr' end, true from generate_series(1, 7) g")
    run("mapping", "set", "academic_title", "short_title")
    preview = as_json(run("resync", "--dry-run", "--json"))
    assert (preview["pairs"], preview["would_change"], preview["would_fail"], preview["stale"]) == (7, 6, 1, 7)
    assert preview["changes"][0]["error"] == "value too long for type character varying(3)"  # failures first
    assert {"field": "short_title", "to": "Dr"}.items() <= preview["changes"][1].items()
    assert one(conn, "select count(*) from contacts where short_title is not null") == 0
    assert "would change" in run("resync", "--dry-run").stdout
    report = as_json(run("resync", "--batch-size", "3", "--json"))
    assert (report["synced"], report["failed"], report["done"]) == (6, 1, True)
    assert report["failures"][0]["sqlstate"] == "22001"
    text = run("resync", "--batch-size", "3").stdout
    assert "batch 1:" in text and "1 failed" in text and "value too long" in text


def test_ctrl_c_stops_after_the_current_batch_and_a_rerun_continues(run, conn, monkeypatch):
    conn.execute("insert into users (login, sync_to_contact) select 'u' || g, true from generate_series(1, 10) g")
    run("mapping", "set", "academic_title", "title")
    monkeypatch.setattr(progress, "after_batch", lambda: signal.raise_signal(signal.SIGINT))
    result = run("resync", "--batch-size", "4", code=1)
    assert "run `usersync resync` again" in result.stderr
    assert one(conn, "select synced, finished_at is null from usersync.resync_state") == (4, True)
    monkeypatch.setattr(progress, "after_batch", lambda: None)
    run("resync", "--batch-size", "4")
    assert one(conn, "select synced, finished_at is null from usersync.resync_state") == (10, False)


def test_direction_reverses_and_restores_and_rejects_bad_input(run, conn):
    uid = add_user(conn, "a")
    run("direction", str(uid), "contact")
    assert one(conn, "select source from usersync.links where user_id = %s", [uid]) == "contact"
    run("direction", str(uid), "user")
    assert "US006" in run("direction", str(uid), "sideways", code=1).stderr
    assert "has no synchronized contact" in run("direction", "999", "contact", code=1).stderr


def test_an_unreachable_server_is_a_clear_error_not_a_traceback():
    started = time.monotonic()
    result = runner.invoke(cli.app, ["status", "--database-url", "postgresql://postgres@127.0.0.1:1/nothing"])
    assert result.exit_code == 1
    assert "cannot reach the database" in result.stderr and "Traceback" not in result.output
    assert time.monotonic() - started < 10


def test_usage_errors_exit_2():
    assert runner.invoke(cli.app, ["mapping", "set", "only_one_arg"]).exit_code == 2
    assert runner.invoke(cli.app, ["resync", "--batch-size", "0"]).exit_code == 2
    assert runner.invoke(cli.app, ["no-such-command"]).exit_code == 2
