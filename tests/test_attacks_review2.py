"""Second independent review: bypasses of the defensive code added after the first review.

Each test states a promise of docs/reliability.md ("Trust model") or sql/60_ddl_guard.sql and fails
on the code it was written against. A test passes when the attack is refused (US005 and the like)
or when, going through, it leaves the synchronization right; so any fix that keeps the promise
passes, whichever way it is made.
"""

from __future__ import annotations

import threading
import time

import psycopg
import pytest
from helpers import add_user, broken_pairs, contact, contact_id, one, refused_or_done

import harness


@pytest.fixture
def pair(conn) -> tuple[int, int]:
    uid = add_user(conn, "alice", first_name="Alice")
    return uid, contact_id(conn, uid)


# --- usersync.rewritten: cleared by the rewrite it is meant to catch ---------------------------------

@pytest.mark.parametrize("ddl", [
    pytest.param("alter table users alter column id type bigint using public.unflag(id::text)::bigint + 100",
                 id="user-key"),
    pytest.param("alter table contacts alter column id type bigint using public.unflag(id::text)::bigint + 100",
                 id="contact-key"),
    pytest.param("alter table users alter column first_name type text using public.unflag('Mallory')",
                 id="mapped-field"),
])
def test_a_rewrite_cannot_clear_the_flag_that_reports_it(ddl, owner_conn, conn, pair):
    # The USING expression runs after the table_rewrite event and before ddl_command_end, as the
    # owner, in the owner's session: it can reset the session setting usersync.rewritten, and
    # _on_ddl_end then neither checks the links nor resyncs the pairs.
    owner_conn.execute("""
        create function public.unflag(v text) returns text language sql volatile as $$
            select pg_catalog.set_config('usersync.rewritten', '', false);
            select v
        $$""")
    refused_or_done(owner_conn, ddl)
    assert broken_pairs(conn) == []


# --- The key's uniqueness, dropped by a command the guard does not watch -----------------------------

def test_dropping_a_spare_unique_index_cannot_drop_the_keys_uniqueness(owner_conn, app_conn, conn, pair):
    # The guard checks uniqueness on ALTER TABLE; DROP INDEX is neither watched at ddl_command_end
    # nor at sql_drop (which looks at tables, policies and triggers only).
    uid, cid = pair
    done = refused_or_done(owner_conn, "create unique index spare on users (id)")
    done = done and refused_or_done(owner_conn, "alter table users drop constraint users_pkey")
    done = done and refused_or_done(owner_conn, "drop index spare")
    if done:
        try:
            app_conn.execute("insert into users (id, login, first_name, sync_to_contact) overriding system value"
                             " values (%s, 'mallory', 'Mallory', true)", [uid])
        except psycopg.Error as err:  # a uniqueness error, or the engine refusing: fine
            assert err.sqlstate is not None
    assert contact_id(conn, uid) == cid
    assert contact(conn, cid)["first_name"] == "Alice"


# --- Column renames through ALTER VIEW / MATERIALIZED VIEW / FOREIGN TABLE ---------------------------

@pytest.mark.parametrize("form", ["view", "materialized view", "foreign table"])
@pytest.mark.parametrize(("table", "column"), [
    pytest.param("users", "first_name", id="mapped-user-field"),
    pytest.param("contacts", "first_name", id="mapped-contact-field"),
    pytest.param("users", "sync_to_contact", id="switch"),
    pytest.param("users", "id", id="user-key"),
])
def test_a_column_used_by_usersync_cannot_be_renamed_with_another_alter(form, table, column, owner_conn, conn,
                                                                       pair):
    # PostgreSQL lets ALTER VIEW, ALTER MATERIALIZED VIEW and ALTER FOREIGN TABLE rename a column of
    # a plain table; their command tags are not in usersync_guard_alter's list. With the mapped
    # field renamed and a new empty column of the same name and type added, the mapping silently
    # follows the new column: the next sync wipes the contacts' first names.
    position = "select attnum from pg_attribute where attrelid = %s::regclass and attname = %s and not attisdropped"
    before = one(conn, position, [f"public.{table}", column])
    done = refused_or_done(owner_conn, f"alter {form} {table} rename column {column} to renamed")
    if done:
        refused_or_done(owner_conn, f"alter table {table} add column {column} text")
    assert one(conn, position, [f"public.{table}", column]) == before, "the column was renamed away"


# --- ALTER ... USING that permutes keys --------------------------------------------------------------

def test_keys_swapped_with_alter_using_take_their_pairs_with_them(owner_conn, app_conn, conn, pair):
    # A pair is its keys (decided in #9): swapping two linked keys, with UPDATE or here with
    # ALTER ... USING, re-assigns the pairs, and the full sync after the rewrite leaves each
    # contact the image of the user that now has its key, never a stale pair.
    uid, cid = pair
    bob = add_user(app_conn, "bob", first_name="Bob")
    refused_or_done(owner_conn, "alter table users alter column id type bigint using"
                                f" case id when {uid} then {bob} when {bob} then {uid} else id end")
    assert contact(conn, cid)["first_name"] == one(conn, "select first_name from users where id = %s", [uid])
    assert broken_pairs(conn) == []


# --- The engine's policy, renamed or altered away ----------------------------------------------------

@pytest.mark.parametrize("ddl", [
    pytest.param(["alter policy usersync_engine on users rename to mine", "drop policy mine on users"],
                 id="rename-then-drop"),
    pytest.param(["alter policy usersync_engine on users to usersync_test_owner"], id="alter-roles"),
    pytest.param(["alter policy usersync_engine on users using (false) with check (false)"], id="alter-using"),
])
def test_the_engines_policy_cannot_be_renamed_or_altered_away(ddl, owner_conn, conn, pair):
    # "drop the engine's policy" is refused (US005) only under its name, and ALTER POLICY is not
    # checked at all: with row-level security on, every write of the application then fails.
    for statement in ddl:
        if not refused_or_done(owner_conn, statement):
            break
    assert one(conn, "select count(*) from pg_policy p where p.polrelid = 'public.users'::regclass"
                     " and p.polpermissive and p.polroles = array['usersync_engine'::regrole::oid]"
                     " and pg_get_expr(p.polqual, p.polrelid) = 'true'"
                     " and pg_get_expr(p.polwithcheck, p.polrelid) = 'true'") == 1


# --- Values changed behind the triggers without a rewrite --------------------------------------------

def test_renaming_an_enum_value_of_a_mapped_field_does_not_leave_pairs_wrong_and_up_to_date(
        owner_conn, admin_conn, app_conn, conn, pair):
    uid, _cid = pair
    owner_conn.execute("create type public.level as enum ('junior', 'senior')")
    owner_conn.execute("alter table users add column level public.level")
    owner_conn.execute("alter table contacts add column level text")
    admin_conn.execute("insert into usersync.field_mapping values ('level', 'level')")
    app_conn.execute("update users set level = 'junior' where id = %s", [uid])
    refused_or_done(owner_conn, "alter type public.level rename value 'junior' to 'intern'")
    wrong = [p for p in broken_pairs(conn) if p[0] == uid]
    up_to_date = one(conn, "select up_to_date from usersync.synchronized_contacts where user_id = %s::text", [uid])
    assert wrong == [] or up_to_date is False


# --- A restrictive SELECT policy hides the engine's new contact from its own value check -------------

def test_a_contact_hidden_from_the_engine_cannot_hide_a_changed_value(owner_conn, app_conn, conn):
    owner_conn.execute("alter table contacts enable row level security")
    owner_conn.execute("create policy app on contacts to usersync_test_app, usersync_test_admin"
                       " using (true) with check (true)")
    owner_conn.execute("create policy hide on contacts as restrictive for select to usersync_engine"
                       " using (first_name is distinct from 'Mallory')")
    owner_conn.execute("""
        create function public.mallory() returns trigger language plpgsql as $$
        begin new.first_name := 'Mallory'; return new; end $$""")
    owner_conn.execute("create trigger mallory before insert on contacts for each row execute function mallory()")
    try:
        uid = add_user(app_conn, "alice", first_name="Alice")
    except psycopg.Error as err:
        assert err.sqlstate == "US007"
        return
    cid = contact_id(conn, uid)
    up_to_date = one(conn, "select up_to_date from usersync.synchronized_contacts where user_id = %s::text", [uid])
    assert contact(conn, cid)["first_name"] == "Alice" or up_to_date is False


# --- The polled configuration lock hides a deadlock from PostgreSQL ----------------------------------

def test_a_deadlock_with_the_polled_configuration_lock_is_broken_not_a_hang(conn, pg_server, dbname, pair):
    # An administrator's transaction holds the configuration lock in SHARE mode (sync_users); the
    # owner's CREATE INDEX on users takes a SHARE lock on users and, at ddl_command_end, polls for
    # the EXCLUSIVE configuration lock; the administrator then writes users and waits for the
    # owner. A real lock wait would be a deadlock that PostgreSQL breaks within deadlock_timeout;
    # with pg_sleep polling both wait forever (lock_timeout is 0 by default), and every writer of
    # users queues behind the owner's lock meanwhile.
    uid, _cid = pair
    results: dict[str, str] = {}

    def connect(role: str) -> psycopg.Connection:
        return psycopg.connect(pg_server.conninfo(dbname, user=role, password=harness.ROLE_PASSWORD),
                               autocommit=True)

    with connect(harness.ADMIN_ROLE) as admin, connect(harness.OWNER_ROLE) as owner:
        admin_pid = one(admin, "select pg_backend_pid()")
        owner_pid = one(owner, "select pg_backend_pid()")
        admin.execute("begin")
        admin.execute("select usersync.sync_users(%s)", [[uid]])

        def run(name: str, c: psycopg.Connection, statement: str, params=None) -> None:
            try:
                c.execute(statement, params)
                results[name] = "ok"
            except psycopg.Error as err:
                results[name] = err.sqlstate or "error"

        ddl = threading.Thread(target=run, args=("owner", owner, "create index on users (first_name)"))
        ddl.start()
        time.sleep(1.0)
        write = threading.Thread(target=run, args=("admin", admin, "update users set last_name = 'X' where id = %s",
                                                   [uid]))
        write.start()
        deadline = time.monotonic() + 10.0
        while time.monotonic() < deadline and not results:
            time.sleep(0.1)
        settled = dict(results)
        for pid in (admin_pid, owner_pid):
            conn.execute("select pg_cancel_backend(%s)", [pid])
        ddl.join(10)
        write.join(10)
        admin.execute("rollback")
    assert settled, "both sessions still waiting after 10 s: an undetected deadlock"
