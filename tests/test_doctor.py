"""usersync.doctor() finds what is missing or out of step; usersync.repair() restores it (#11 §3)."""

from __future__ import annotations

import pytest
from helpers import add_user, contact, contact_id, mismatches, one, raises_sqlstate


def _problems(conn) -> list[tuple[str | None, str]]:
    return [(r[0], r[1]) for r in conn.execute("select pair_name, problem from usersync.doctor()")]


@pytest.mark.guard
def test_a_healthy_install_has_no_problem(admin_conn):
    assert _problems(admin_conn) == []


@pytest.mark.guard
def test_a_dropped_engine_trigger_is_found_and_repaired(conn, admin_conn):
    uid = add_user(conn, "a", first_name="Ann")
    conn.execute("drop trigger usersync_1_after_update on users")  # a superuser may
    conn.execute("update users set first_name = 'Anna' where id = %s", [uid])  # ... and syncing stopped
    assert contact(conn, contact_id(conn, uid))["first_name"] == "Ann"
    assert _problems(admin_conn) == [("contacts", "trigger usersync_1_after_update on public.users is missing")]
    assert one(conn, "select count(*) from usersync.repair()") == 1
    assert _problems(admin_conn) == []
    conn.execute("update users set first_name = 'Anne' where id = %s", [uid])
    assert contact(conn, contact_id(conn, uid))["first_name"] == "Anne"


@pytest.mark.guard
def test_rows_written_behind_the_triggers_are_found_and_synced(conn, admin_conn):
    conn.execute("set session_replication_role = replica")
    conn.execute("insert into users (login, sync_to_contact) values ('behind', true)")
    conn.execute("reset session_replication_role")
    assert [p for _, p in _problems(admin_conn)] == [
        "1 user(s) without the contact their switch asks for, or links to rows that are gone (written behind the"
        " triggers)"]
    conn.execute("select usersync.repair()")
    assert _problems(admin_conn) == [] and mismatches(conn) == []


@pytest.mark.guard
def test_a_schema_change_made_while_the_guard_was_off_is_found_and_regenerated(conn, admin_conn):
    conn.execute("alter event trigger usersync_guard_alter disable")
    conn.execute("alter table contacts add column nickname text")  # the generated code does not know it
    conn.execute("alter table users add column nickname text")
    assert [p for _, p in _problems(admin_conn)] == [
        "event trigger usersync_guard_alter of the DDL guard is missing or disabled",
        "its generated code does not match its tables and mapping as they are now"]
    conn.execute("select usersync.repair()")
    assert _problems(admin_conn) == []
    admin_conn.execute("insert into usersync.field_mapping values ('nickname', 'nickname')")
    uid = add_user(conn, "n", nickname="Nick")
    assert contact(conn, contact_id(conn, uid))["nickname"] == "Nick"


@pytest.mark.guard
def test_only_a_superuser_can_restore_the_guards_event_triggers(conn, owner_conn):
    conn.execute("alter event trigger usersync_guard_drop disable")
    # (the owner of the tables, given what an installer that is not a superuser has in usersync)
    conn.execute("grant usage on schema usersync to usersync_test_owner;"
                 " grant all on all tables in schema usersync to usersync_test_owner;"
                 " grant execute on all functions in schema usersync to usersync_test_owner")
    assert one(owner_conn, "select usersync.repair() limit 1") == (
        "the DDL guard stays off: creating its event triggers needs a superuser")
    assert one(conn, "select evtenabled from pg_event_trigger where evtname = 'usersync_guard_drop'") == "D"


def test_with_the_guard_off_a_write_after_a_column_change_fails_instead_of_writing_wrong_columns(conn, admin_conn):
    uid = add_user(conn, "a", first_name="Ann")
    # As an install without a superuser has it: no event trigger; the code generated then checks
    # the tables' columns on every write.
    for (name,) in conn.execute("select evtname from pg_event_trigger where evtname like 'usersync%%'").fetchall():
        conn.execute(f"alter event trigger {name} disable")
    conn.execute("select usersync._generate('contacts')")
    conn.execute("alter table contacts rename column first_name to given_name")
    conn.execute("alter table contacts add column first_name text")  # same name, another column
    with raises_sqlstate("US005", match="changed since usersync generated its code"):
        conn.execute("update users set first_name = 'Anna' where id = %s", [uid])
    assert "its generated code does not match its tables and mapping as they are now" in [
        p for _, p in _problems(admin_conn)]
    conn.execute("select usersync.repair()")
    conn.execute("update users set first_name = 'Anna' where id = %s", [uid])
    assert contact(conn, contact_id(conn, uid))["first_name"] == "Anna"


def test_doctor_reads_only(conn, admin_conn):
    conn.execute("alter table contacts add column nickname text")
    version = one(conn, "select version from usersync.mapping_state")
    functions = one(conn, "select md5(string_agg(prosrc, '' order by proname)) from pg_proc"
                          " where pronamespace = 'usersync'::regnamespace")
    admin_conn.execute("select * from usersync.doctor()")
    assert one(conn, "select version from usersync.mapping_state") == version
    assert one(conn, "select md5(string_agg(prosrc, '' order by proname)) from pg_proc"
                     " where pronamespace = 'usersync'::regnamespace") == functions


def test_an_install_without_a_superuser_is_reported_as_guard_off(conn, admin_conn):
    for (name,) in conn.execute("select evtname from pg_event_trigger where evtname like 'usersync%%'").fetchall():
        conn.execute(f"drop event trigger {name}")
    assert _problems(admin_conn)[0] == (None, "the DDL guard is off: no event trigger of usersync exists")
