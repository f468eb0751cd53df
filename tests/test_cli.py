"""The `usersync` CLI through Typer's runner, against the real database, as an administrator."""

from __future__ import annotations

import json
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from helpers import add_user, one
from typer.testing import CliRunner

import pyapp
from pyapp import admin, cli, progress

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
    run("mapping", "clear", "--yes")
    assert as_json(run("mapping", "show", "--json"))["mapped"] == []
    run("mapping", "reset", "--yes")
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
    report = as_json(run("resync", "--batch-size", "3", "--json", code=3))  # 3: pairs failed
    assert (report["synced"], report["failed"], report["done"]) == (6, 1, True)
    assert report["failures"][0]["sqlstate"] == "22001"
    result = run("resync", "--batch-size", "3", code=3)
    assert "batch 1:" in result.stdout and "1 failed" in result.stdout and "value too long" in result.stdout
    assert "1 pair failed" in result.stderr and "exit code 3" in result.stderr


def test_ctrl_c_stops_after_the_current_batch_and_a_rerun_continues(run, conn, monkeypatch):
    conn.execute("insert into users (login, sync_to_contact) select 'u' || g, true from generate_series(1, 10) g")
    run("mapping", "set", "academic_title", "title")
    monkeypatch.setattr(progress, "after_batch", lambda: signal.raise_signal(signal.SIGINT))
    result = run("resync", "--batch-size", "4", code=130)
    assert "run `usersync resync` again" in result.stderr
    assert one(conn, "select synced, finished_at is null from usersync.resync_state") == (4, True)
    monkeypatch.setattr(progress, "after_batch", lambda: None)
    run("resync", "--batch-size", "4")
    assert one(conn, "select synced, finished_at is null from usersync.resync_state") == (10, False)


def test_direction_reverses_and_restores_and_rejects_bad_input(run, conn):
    uid = add_user(conn, "a")
    run("direction", str(uid), "contact")
    assert one(conn, "select source from usersync.links_1 where user_id = %s", [uid]) == "contact"
    run("direction", str(uid), "user")
    assert "US006" in run("direction", str(uid), "sideways", code=1).stderr
    assert "user 999 does not exist" in run("direction", "999", "contact", code=1).stderr


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


def test_db_current_without_access_to_the_version_table_is_a_message(run):
    result = run("db", "current", code=1)
    assert "cannot read the installed revision" in result.stderr and "superuser" in result.stderr
    assert "Traceback" not in result.output


def test_database_url_goes_before_or_after_the_command(admin_url):
    for args in (["--database-url", admin_url, "status", "--json"], ["status", "--json", "--database-url", admin_url],
                 ["--database-url", admin_url, "mapping", "show", "--json"]):
        result = runner.invoke(cli.app, args, env={"DATABASE_URL": None})
        assert result.exit_code == 0, (args, result.output)
        assert json.loads(result.stdout)


def test_version_and_h_for_help_everywhere():
    result = runner.invoke(cli.app, ["--version"])
    assert result.exit_code == 0 and result.stdout == f"usersync {pyapp.__version__}\n"
    for args in (["-h"], ["status", "-h"], ["db", "-h"], ["db", "upgrade", "-h"], ["db", "downgrade", "-h"],
                 ["mapping", "clear", "-h"], ["attach", "-h"], ["detach", "-h"], ["pairs", "-h"]):
        result = runner.invoke(cli.app, args)
        assert result.exit_code == 0 and "Usage:" in result.stdout, (args, result.output)


def test_json_output_is_real_json(run, conn):
    add_user(conn, "a")
    run("resync")
    st = as_json(run("status", "--json"))
    assert st["settings"]["delete_contact_with_user"] is False and isinstance(st["pairs"], int)
    assert "T" in st["last_resync"]["started_at"]  # ISO 8601, as JSON consumers parse dates
    for args in (["status"], ["fields"], ["mapping", "show"], ["settings", "show"], ["sync"], ["resync", "--dry-run"]):
        text = run(*args, "--json").stdout
        assert "<bool>" not in text and json.loads(text) is not None


def _one_line(text: str) -> str:
    return " ".join(text.replace("│", " ").split())  # Typer's error panel wraps at its width


def test_an_empty_or_foreign_database_url_is_a_usage_error():
    for args in (["status", "--database-url", ""], ["--database-url", "", "status"],
                 ["db", "current", "--database-url", " "]):
        result = runner.invoke(cli.app, args, env={"DATABASE_URL": None})
        assert result.exit_code == 2 and "is empty" in _one_line(result.stderr), (args, result.output)
    result = runner.invoke(cli.app, ["status", "--database-url", "mysql://root@db/app"])
    assert result.exit_code == 2 and "unsupported scheme 'mysql://'" in _one_line(result.stderr)
    result = runner.invoke(cli.app, ["status"], env={"DATABASE_URL": "mysql://root@db/app"})
    assert result.exit_code == 2 and "DATABASE_URL: unsupported scheme 'mysql://'" in result.stderr
    assert "Traceback" not in result.output


def test_piped_output_is_not_wrapped_or_cut_at_80_columns(run, conn):
    label = "Department, " + "the organisational unit the person belongs to, " * 3
    conn.execute(f"comment on column users.department is '{label}'")
    assert label.strip() in run("fields").stdout


def test_status_piped_to_head_exits_0_without_a_broken_pipe_error(admin_url):
    usersync = Path(sys.executable).parent / "usersync"
    command = f"{shlex.quote(str(usersync))} status --database-url {shlex.quote(admin_url)} | head -1"
    result = subprocess.run(["bash", "-o", "pipefail", "-c", command], capture_output=True, text=True, timeout=60)
    assert (result.returncode, result.stderr) == (0, "")
    assert "on PostgreSQL" in result.stdout


def test_ctrl_c_anywhere_exits_130_with_a_short_message(run, monkeypatch):
    def interrupted(conn, pair=None):
        raise KeyboardInterrupt

    monkeypatch.setattr(admin, "status", interrupted)
    result = run("status", code=130)
    assert result.stderr.strip() == "interrupted"


def test_messages_count_in_the_singular_and_plural(run, conn):
    uid = add_user(conn, "a")
    assert run("sync", str(uid)).stdout == "synchronized 1 user\n"
    add_user(conn, "b")
    assert run("sync").stdout == "synchronized 2 users\n"
    for m in as_json(run("mapping", "show", "--json"))["mapped"][1:]:
        run("mapping", "remove", m["user_field"])
    assert "removed 1 mapping\n" in run("mapping", "clear", "--yes").stderr


def test_hints_name_the_cli_command_instead_of_sql(run):
    result = run("mapping", "set", "no_such_field", "title", code=1)
    assert "hint: Map one of the fields listed by: usersync fields" in result.stderr and "SELECT" not in result.stderr
    result = run("mapping", "set", "academic_title", "first_name", code=1)
    assert "usersync mapping remove first_name" in result.stderr and "DELETE" not in result.stderr


def test_the_engines_direction_hints_become_direction_commands():
    assert cli.cli_hint("Edit contact 7 instead, or restore the direction: "
                        "SELECT usersync.set_sync_source('5', 'user', pair => 'contacts')") == (
        "Edit contact 7 instead, or restore the direction: usersync direction 5 user")
    assert cli.cli_hint("or reverse the direction: SELECT usersync.set_sync_source('a b', 'contact', pair => 'p')") == (
        "or reverse the direction: usersync direction 'a b' contact")


def test_mapping_clear_and_reset_ask_on_a_terminal_and_need_yes_without_one(run, admin_url, monkeypatch):
    mapped = len(as_json(run("mapping", "show", "--json"))["mapped"])
    for command in ("clear", "reset"):
        result = run("mapping", command, code=2)
        assert "without --yes" in result.stderr and f"{mapped} mapping rows" in result.stderr
    monkeypatch.setattr(cli, "interactive", lambda: True)
    result = runner.invoke(cli.app, ["mapping", "clear"], input="n\n", env={"DATABASE_URL": admin_url})
    assert result.exit_code == 1 and "Continue?" in result.output
    assert len(as_json(run("mapping", "show", "--json"))["mapped"]) == mapped
    result = runner.invoke(cli.app, ["mapping", "clear"], input="y\n", env={"DATABASE_URL": admin_url})
    assert result.exit_code == 0, result.output
    assert as_json(run("mapping", "show", "--json"))["mapped"] == []


def test_a_batch_size_outside_the_integer_range_is_a_usage_error(run):
    result = run("resync", "--batch-size", str(2**31), code=2)
    assert "batch-size" in result.output and "42883" not in result.output



def test_a_second_resync_beside_a_running_one_is_refused_not_restarted(run, conn, admin_conn):
    conn.execute("insert into users (login, sync_to_contact) select 'u' || g, true from generate_series(1, 6) g")
    admin_conn.execute("select * from usersync.resync_step(2)")  # a run in progress in another session
    result = run("resync", code=1)
    assert "US009" in result.stderr and "in progress in session" in result.stderr
    assert one(conn, "select synced from usersync.resync_state") == 2  # not started over


# --- pairs: attach, detach, pairs, --pair -------------------------------------------------------------

@pytest.fixture
def run_owner(database):
    """The CLI as the superuser: attach and detach need the owner of the tables and of usersync."""
    def invoke(*args: str, code: int = 0, input: str | None = None):
        result = runner.invoke(cli.app, list(args), env={"DATABASE_URL": database.conninfo}, input=input)
        assert result.exit_code == code, f"exit {result.exit_code}: {result.output}"
        return result
    return invoke


@pytest.fixture
def people(conn):
    """Two more application tables, not attached: people (switch active) and cards, whose
    foreign key to people deletes a card with its person."""
    conn.execute("create table public.people (id bigint generated always as identity primary key, name text,"
                 " email text, phone text, active boolean not null default false)")
    conn.execute("create table public.cards (id bigint generated always as identity primary key, name text,"
                 " email text, person_id bigint references public.people on delete cascade)")
    conn.execute("insert into public.people (name, email, active) values ('Ann', 'ann@example.org', true),"
                 " ('Bob', 'bob@example.org', true), ('Cy', 'cy@example.org', false)")


@pytest.fixture
def directory(conn):
    """A second pair on the same users table: users → directory."""
    conn.execute("create table public.directory (id bigint generated always as identity primary key,"
                 " first_name text, email text)")
    conn.execute("select usersync.attach('public.users', 'public.directory', 'sync_to_contact')")


def test_attach_dry_run_shows_what_it_would_do_and_changes_nothing(run_owner, conn, people):
    result = run_owner("attach", "public.people", "public.cards", "--switch", "active", "--dry-run")
    text = result.stdout
    assert "would create pair cards" in text and "people.id → public.cards.id" in text
    assert "synchronize 2 users whose active is on: create 2 contacts, link 0 existing" in text
    assert "map 2 fields: name → name, email → email" in text
    assert "warning: foreign key" in text and "ON DELETE CASCADE" in text
    assert "nothing was changed" in text
    preview = as_json(run_owner("attach", "public.people", "public.cards", "--switch", "active", "--dry-run",
                                "--json"))
    assert (preview["pair_name"], preview["users_to_sync"], preview["contacts_to_create"]) == ("cards", 2, 2)
    assert preview["mapping"] == [["name", "name"], ["email", "email"]] and len(preview["warnings"]) == 1
    assert one(conn, "select count(*) from usersync.pairs") == 1
    assert one(conn, "select count(*) from public.cards") == 0


def test_attach_prints_the_pair_and_the_engines_warnings(run_owner, conn, people):
    result = run_owner("attach", "public.people", "public.cards", "--switch", "active", "--pair", "people")
    assert "attached pair people: people → cards, 2 contacts synchronized" in result.stdout
    assert "warning: foreign key" in result.stderr and "ON DELETE CASCADE" in result.stderr
    assert "usersync mapping show --pair people" in result.stderr
    assert one(conn, "select count(*) from public.cards") == 2
    rows = {p["pair"]: p for p in as_json(run_owner("pairs", "--json"))}
    assert set(rows) == {"contacts", "people"}
    assert (rows["people"]["users"], rows["people"]["contacts"], rows["people"]["switch_column"],
            rows["people"]["synchronized"]) == ("people", "cards", "active", 2)
    text = run_owner("pairs").stdout
    assert "people" in text and "cards" in text and "sync_to_contact" in text


def test_attach_json_gives_the_pair_and_its_warnings(run_owner, people):
    attached = as_json(run_owner("attach", "public.people", "public.cards", "--json"))  # no switch: everyone
    assert attached["pair"] == "cards" and attached["synchronized"] == 3
    assert len(attached["warnings"]) == 1 and "foreign key" in attached["warnings"][0]


def test_a_refused_attach_shows_the_engines_reason_and_hint_not_a_traceback(run_owner, conn, people):
    conn.execute("create table public.keyless (name text)")
    result = run_owner("attach", "public.people", "public.keyless", code=1)
    assert "error US010: cannot attach public.keyless: it has no key" in result.stderr
    assert "hint: Give public.keyless a primary key" in result.stderr and "Traceback" not in result.output
    result = run_owner("attach", "public.people", "public.contacts", "--dry-run", code=1)
    assert "US010" in result.stderr and "already the contacts table of pair 'contacts'" in result.stderr
    assert "hint: Detach that pair first (usersync detach contacts)" in result.stderr
    result = run_owner("attach", "public.people", "public.cards", "--switch", "name", code=1)
    assert "must be a boolean NOT NULL column" in result.stderr
    result = run_owner("attach", "public.people", "public.no_such_table", code=1)
    assert "error US010: cannot attach public.no_such_table: there is no such table" in result.stderr
    assert "42P01" not in result.output
    assert one(conn, "select count(*) from usersync.pairs") == 1


def test_attach_as_an_administrator_says_who_may(run, people):
    result = run("attach", "public.people", "public.cards", code=1)
    assert "42501" in result.stderr and "owner of both tables" in result.stderr


def test_detach_asks_first_needs_yes_without_a_terminal_and_keeps_tables_and_rows(run_owner, conn, monkeypatch):
    add_user(conn, "a")
    add_user(conn, "b")
    result = run_owner("detach", "contacts", code=2)
    assert "refusing without --yes" in result.stderr and "2 links, 7 mapping rows" in result.stderr
    assert "users and contacts and their rows are kept" in result.stderr
    monkeypatch.setattr(cli, "interactive", lambda: True)
    result = run_owner("detach", "contacts", input="n\n", code=1)
    assert "Continue?" in result.output and "nothing changed" in result.stderr
    assert one(conn, "select count(*) from usersync.pairs") == 1
    result = run_owner("detach", "contacts", input="y\n")
    assert "detached pair contacts" in result.stderr and "their rows are kept" in result.stderr
    assert one(conn, "select count(*) from usersync.pairs") == 0
    assert one(conn, "select (select count(*) from users), (select count(*) from contacts)") == (2, 2)
    conn.execute("update contacts set first_name = 'free'")  # ordinary contacts now: nothing refuses


def test_detach_with_yes_and_of_an_unknown_pair(run_owner, conn, directory):
    run_owner("detach", "directory", "--yes")
    assert [p["pair"] for p in as_json(run_owner("pairs", "--json"))] == ["contacts"]
    assert one(conn, "select to_regclass('public.directory') is not null")
    result = run_owner("detach", "nope", "--yes", code=1)
    assert "error US011: no pair named 'nope'" in result.stderr and "Attached pairs: contacts" in result.stderr


def test_with_two_pairs_pair_commands_need_pair(run, conn, directory):
    uid = add_user(conn, "a", first_name="Ann")
    for args in (["status"], ["fields"], ["mapping", "show"], ["mapping", "set", "phone", "email"],
                 ["mapping", "remove", "phone"], ["mapping", "clear", "--yes"], ["mapping", "reset", "--yes"],
                 ["settings", "show"], ["settings", "set", "delete-contact-with-user", "on"], ["sync"], ["resync"],
                 ["resync", "--dry-run"], ["direction", str(uid), "contact"]):
        result = run(*args, code=1)
        assert "error US011: this database has 2 pairs: name one (contacts, directory)" in result.stderr, args
        assert "hint: Pass --pair NAME (usersync pairs lists them)." in result.stderr, args
    st = as_json(run("status", "--pair", "directory", "--json"))
    assert (st["pair"], st["users"], st["contacts"], st["pairs"]) == ("directory", "users", "directory", 1)
    assert as_json(run("--pair", "contacts", "status", "--json"))["contacts"] == "contacts"  # before the command too
    mapped = as_json(run("mapping", "show", "--pair", "directory", "--json"))["mapped"]
    assert [(m["user_field"], m["contact_field"]) for m in mapped] == [("first_name", "first_name"), ("email", "email")]
    run("mapping", "set", "login", "email", "--pair", "directory", code=1)  # email is mapped from email
    result = run("mapping", "set", "login", "email", "--pair", "directory", code=1)
    assert "usersync mapping remove email --pair directory" in result.stderr
    run("mapping", "remove", "email", "--pair", "directory")
    run("mapping", "set", "login", "email", "--pair", "directory")
    assert as_json(run("sync", str(uid), "--pair", "directory", "--json")) == {"synced": 1}
    assert one(conn, "select email from directory") == "a"
    run("settings", "set", "delete-contact-with-user", "on", "--pair", "directory")
    assert as_json(run("settings", "show", "--pair", "contacts", "--json"))["delete_contact_with_user"] is False
    assert as_json(run("settings", "show", "--pair", "directory", "--json"))["delete_contact_with_user"] is True
    assert as_json(run("resync", "--pair", "directory", "--json"))["done"] is True
    result = run("status", "--pair", "nope", code=1)
    assert "error US011: no pair named 'nope'" in result.stderr and "contacts, directory" in result.stderr


def test_without_a_pair_the_commands_say_to_attach_one(run, conn):
    conn.execute("select usersync.detach('contacts')")
    for args in (["status"], ["fields"], ["mapping", "show"], ["settings", "show"], ["sync"], ["resync"],
                 ["direction", "1", "user"]):
        result = run(*args, code=1)
        assert "no pair attached: run usersync attach USERS CONTACTS" in result.stderr, args
        assert "Traceback" not in result.output
    assert as_json(run("pairs", "--json")) == []
    assert "no pair attached" in run("pairs").stderr


def test_user_ids_are_text_read_in_the_key_type(run, conn):
    uid = add_user(conn, "a")
    assert as_json(run("sync", str(uid), "--json")) == {"synced": 1}
    result = run("sync", "not-a-number", code=1)
    assert "US006" in result.stderr and "invalid user id(s)" in result.stderr and "not-a-number" in result.stderr
    result = run("direction", "x1", "contact", code=1)
    assert "US006" in result.stderr

