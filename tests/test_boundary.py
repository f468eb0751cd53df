"""The engine's boundary against the tables' owner, keys, session settings and lock holders.

The owner of users and contacts (`owner_conn`, not a superuser) may put its own code on them:
triggers, defaults, row-level security. That code runs as the engine when the engine writes, so
the engine counts what its writes did and fails loudly (US007) rather than report a pair as
synced when a write was swallowed. See docs/reliability.md, "Trust model".
"""

from __future__ import annotations

import threading

import psycopg
import pytest
from helpers import add_user, contact, contact_id, mismatches, one, raises_sqlstate


@pytest.fixture
def pair(conn) -> tuple[int, int]:
    uid = add_user(conn, "alice", first_name="Alice", email="a@example.org")
    return uid, contact_id(conn, uid)


@pytest.fixture
def reversed_pair(conn, admin_conn, pair) -> tuple[int, int]:
    admin_conn.execute("select usersync.set_sync_source(%s, 'contact')", [pair[0]])
    return pair


# --- 4. The owner's code inside the engine's writes -------------------------------------------

def test_row_level_security_on_both_tables_does_not_stop_syncing(owner_conn, app_conn, conn, admin_conn, pair):
    # As Supabase does: RLS on, a policy for the application's role only.
    for table in ("users", "contacts"):
        owner_conn.execute(f"alter table {table} enable row level security")
        owner_conn.execute(f"create policy app on {table} to usersync_test_app using (true) with check (true)")
    uid, cid = pair
    app_conn.execute("update users set first_name = 'Alicia' where id = %s", [uid])
    new = add_user(app_conn, "bob", first_name="Bob")
    assert contact(conn, cid)["first_name"] == "Alicia"
    assert contact(conn, contact_id(conn, new))["first_name"] == "Bob"
    admin_conn.execute("select usersync.set_sync_source(%s, 'contact')", [uid])
    app_conn.execute("update contacts set first_name = 'Ali' where id = %s", [cid])
    assert one(conn, "select first_name from users where id = %s", [uid]) == "Ali"
    admin_conn.execute("call usersync.resync_all()")
    assert mismatches(conn) == []


def test_a_restrictive_policy_hiding_contacts_makes_syncing_fail_loudly(owner_conn, app_conn, conn, admin_conn, pair):
    uid, cid = pair
    owner_conn.execute("alter table contacts enable row level security")
    owner_conn.execute("create policy everyone on contacts using (true) with check (true)")
    owner_conn.execute("create policy hide_from_all on contacts as restrictive for update using (false)")
    with raises_sqlstate("US007") as info:
        app_conn.execute("update users set first_name = 'Alicia' where id = %s", [uid])
    assert "public.contacts" in info.value.diag.message_primary
    assert contact(conn, cid)["first_name"] == "Alice"
    # A mapping change, then a resync: the hidden pair is reported failed, never up to date.
    admin_conn.execute("insert into usersync.field_mapping values ('academic_title', 'title')")
    owner_conn.execute("drop policy hide_from_all on contacts")
    owner_conn.execute("create policy hide_from_all on contacts as restrictive using (false)")
    admin_conn.execute("call usersync.resync_all()")
    assert one(conn, "select sqlstate from usersync.sync_errors where user_id = %s::text", [uid]) == "US007"
    assert one(conn, "select up_to_date from usersync.synchronized_contacts where user_id = %s::text", [uid]) is False


def test_a_restrictive_policy_for_another_role_still_counts_the_engines_writes(owner_conn, app_conn, conn, pair):
    # Granting that role to the engine later fires no event trigger, and would make the policy
    # hide the contact from the engine: so any restrictive policy keeps the writes counted.
    uid, cid = pair
    role = "usersync_test_hidden"
    conn.execute(f"drop role if exists {role}")
    conn.execute(f"create role {role}")
    try:
        owner_conn.execute("alter table contacts enable row level security")
        owner_conn.execute("create policy everyone on contacts using (true) with check (true)")
        owner_conn.execute(f"create policy hide on contacts as restrictive for update to {role} using (false)")
        conn.execute(f"grant {role} to usersync_engine")
        with raises_sqlstate("US007"):
            app_conn.execute("update users set first_name = 'Alicia' where id = %s", [uid])
        assert contact(conn, cid)["first_name"] == "Alice"
    finally:
        conn.execute(f"revoke {role} from usersync_engine")
        owner_conn.execute("drop policy if exists hide on contacts")
        conn.execute(f"drop role {role}")


def test_a_before_trigger_that_skips_the_engines_write_makes_it_fail_loudly(owner_conn, app_conn, conn, pair):
    uid, cid = pair
    owner_conn.execute("create function public.skip() returns trigger language plpgsql"
                       " as $$ begin return null; end $$")
    owner_conn.execute("create trigger a_skip before update or insert on contacts for each row execute function skip()")
    with raises_sqlstate("US007"):
        app_conn.execute("update users set first_name = 'Alicia' where id = %s", [uid])
    with raises_sqlstate("US007"):
        add_user(app_conn, "bob")
    assert contact(conn, cid)["first_name"] == "Alice"
    assert one(conn, "select count(*) from usersync.links_1") == 1


def test_the_owners_updated_at_trigger_and_defaults_keep_working(owner_conn, app_conn, conn, pair):
    uid, cid = pair
    owner_conn.execute("alter table contacts add column updated_at timestamptz")
    owner_conn.execute("create function public.touch() returns trigger language plpgsql"
                       " as $$ begin new.updated_at := now(); return new; end $$")
    owner_conn.execute("create trigger touch before update on contacts for each row execute function touch()")
    app_conn.execute("update users set first_name = 'Alicia' where id = %s", [uid])
    c = contact(conn, cid)
    assert c["first_name"] == "Alicia" and c["updated_at"] is not None


def test_a_rule_on_a_module_table_is_refused(owner_conn, conn):
    for table in ("users", "contacts"):
        with raises_sqlstate("US005"):
            owner_conn.execute(f"create rule swallow as on update to {table} do instead nothing")
    assert one(conn, "select count(*) from pg_rewrite where rulename = 'swallow'") == 0


# --- 5. Keys --------------------------------------------------------------------------------

@pytest.fixture(autouse=True)
def keys_by_default(request, conn):
    """The example tables' keys are GENERATED ALWAYS, which no UPDATE may change; many
    applications' keys are plain or BY DEFAULT, so the key tests use that."""
    if "key" in request.node.name:
        conn.execute("alter table users alter column id set generated by default")
        conn.execute("alter table contacts alter column id set generated by default")


@pytest.mark.parametrize("writer", ["conn", "app_conn"])
def test_the_key_of_a_synchronized_user_cannot_change(request, writer, conn, pair):
    w = request.getfixturevalue(writer)
    uid, _cid = pair
    with raises_sqlstate("US008"):
        w.execute("update users set id = id + 1000 where id = %s", [uid])
    with raises_sqlstate("US008"):
        w.execute("update users set id = id + 1000, first_name = 'Z' where id = %s", [uid])
    assert one(conn, "select count(*) from contacts") == 1
    assert mismatches(conn) == []


def test_the_key_of_a_remembered_user_or_contact_cannot_change(app_conn, conn, pair):
    uid, cid = pair
    app_conn.execute("update users set sync_to_contact = false where id = %s", [uid])
    with raises_sqlstate("US008"):
        app_conn.execute("update users set id = id + 1000 where id = %s", [uid])
    with raises_sqlstate("US008"):
        conn.execute("update contacts set id = id + 1000 where id = %s", [cid])
    app_conn.execute("update users set sync_to_contact = true where id = %s", [uid])
    assert contact_id(conn, uid) == cid  # re-linked, no duplicate
    assert one(conn, "select count(*) from contacts") == 1


def test_the_key_of_a_reversed_pair_cannot_change_on_either_side(app_conn, conn, reversed_pair):
    uid, cid = reversed_pair
    with raises_sqlstate("US008"):
        app_conn.execute("update contacts set id = id + 1000 where id = %s", [cid])
    with raises_sqlstate("US008"):
        app_conn.execute("update users set id = id + 1000, first_name = 'Z' where id = %s", [uid])
    assert one(conn, "select first_name from users where id = %s", [uid]) == "Alice"
    assert mismatches(conn) == []


def test_keys_of_unlinked_rows_change_freely(app_conn, conn):
    uid = add_user(app_conn, "x", sync=False)
    app_conn.execute("update users set id = id + 1000 where id = %s", [uid])
    cid = one(conn, "insert into contacts (first_name) values ('plain') returning id")
    conn.execute("update contacts set id = id + 1000 where id = %s", [cid])
    assert one(conn, "select count(*) from usersync.links_1") == 0


def test_moving_an_unlinked_user_onto_a_freed_key_and_switching_it_on_is_refused_in_one_statement(app_conn, conn):
    # A documented limit (docs/sql-api.md, behaviour 11): an earlier row of the statement that
    # switches on runs the set-based code, which links the user now holding the freed key before
    # the key check of the row that left it, which then sees a link under its old key. Refused,
    # never half-done; in two statements it works.
    c, a, b = (add_user(app_conn, login, sync=False) for login in ("c", "a", "b"))  # scanned in this order
    with raises_sqlstate("US008"):
        app_conn.execute(f"update users set id = case id when {a} then {a} + 1000 when {b} then {a} else id end,"
                         f" sync_to_contact = (id in ({c}, {b})) where id in ({c}, {a}, {b})")
    assert one(conn, "select count(*) from usersync.links_1") == 0
    app_conn.execute("update users set id = id + 1000 where id = %s", [a])
    app_conn.execute(f"update users set id = case id when {b} then {a} else id end, sync_to_contact = true"
                     f" where id in ({c}, {b})")
    assert one(conn, "select count(*) from usersync.links_1") == 2 and contact_id(conn, a) is not None
    assert mismatches(conn) == []


# --- 6. Session settings --------------------------------------------------------------------

SESSIONS = [
    {"datestyle": "SQL, DMY", "timezone": "Pacific/Kiritimati", "intervalstyle": "sql_standard"},
    {"datestyle": "German", "timezone": "America/Los_Angeles", "intervalstyle": "iso_8601"},
]


def _session(conn: psycopg.Connection, settings: dict[str, str]) -> None:
    for name, value in settings.items():
        conn.execute(f"set {name} = '{value}'")


def test_conversions_do_not_depend_on_the_session(conn, admin_conn, app_conn):
    conn.execute("alter table users add column seen_at timestamptz")
    conn.execute("alter table contacts add column seen text")
    admin_conn.execute("insert into usersync.field_mapping values ('birth_date', 'notes'), ('seen_at', 'seen')")
    _session(app_conn, SESSIONS[0])
    uid = add_user(app_conn, "d", birth_date="2001-02-03", seen_at="2020-05-06 07:08:09+00")
    cid = contact_id(conn, uid)
    c = contact(conn, cid)
    assert (c["notes"], c["seen"]) == ("2001-02-03", "2020-05-06 07:08:09+00")
    # Reversed, resynced under another session's settings: the user's values do not move.
    admin_conn.execute("select usersync.set_sync_source(%s, 'contact')", [uid])
    _session(admin_conn, SESSIONS[1])
    admin_conn.execute("insert into usersync.field_mapping values ('academic_title', 'title')")
    admin_conn.execute("call usersync.resync_all()")
    _session(app_conn, SESSIONS[1])
    app_conn.execute("update contacts set title = 'Dr.' where id = %s", [cid])
    row = conn.execute("select birth_date::text, seen_at = '2020-05-06 07:08:09+00' from users where id = %s",
                       [uid]).fetchone()
    assert row == ("2001-02-03", True)


def test_every_function_that_converts_pins_the_same_settings(conn, admin_conn):
    admin_conn.execute("insert into usersync.field_mapping values ('birth_date', 'notes')")  # date -> text
    configs = conn.execute("""
        select p.proname, p.proconfig from pg_proc p
         where p.pronamespace = 'usersync'::regnamespace
           and exists (select from unnest(p.proconfig) c where c like 'DateStyle=%%')""").fetchall()
    names = {name for name, _ in configs}
    assert {"_g1_refresh", "_g1_on_users_update", "_g1_on_contact_update", "_diagnose", "_field_fits",
            "preview_resync"} <= names
    # (planner settings such as _g_refresh's enable_seqscan are not conversions)
    assert len({tuple(c for c in config if not c.startswith("enable_")) for _, config in configs}) == 1, configs


def test_a_key_passed_in_its_own_type_is_the_same_key_whatever_the_callers_settings(conn, admin_conn):
    # With extra_float_digits = -3, 0.1 + 0.2 prints as 0.3: read back from that text, the key
    # would be another user's. Both actions that take keys in their own type get the right user.
    conn.execute("create table fu (id float8 primary key, first_name text)")
    conn.execute("create table fc (id bigint generated always as identity primary key, first_name text)")
    conn.execute("select usersync.attach('fu', 'fc', pair => 'f')")
    conn.execute("insert into fu values (0.3, 'near'), (0.1::float8 + 0.2::float8, 'exact')")
    conn.execute("set session_replication_role = replica")  # a change the triggers did not see
    conn.execute("update fu set first_name = 'changed' where first_name = 'exact'")
    conn.execute("reset session_replication_role")
    admin_conn.execute("set extra_float_digits = -3")
    admin_conn.execute("select usersync.sync_users(array[0.1::float8 + 0.2::float8], 'f')")
    assert conn.execute("select first_name from fc order by first_name").fetchall() == [("changed",), ("near",)]
    admin_conn.execute("select usersync.set_sync_source(0.1::float8 + 0.2::float8, 'contact', 'f')")
    assert conn.execute("select u.first_name from usersync.links l join fu u on u.id = l.user_id::float8"
                        " where l.pair = 'f' and l.source = 'contact'").fetchall() == [("changed",)]


def test_a_timestamptz_key_is_the_same_key_whatever_the_callers_date_style_and_time_zone(conn, admin_conn):
    # DateStyle Postgres in India prints a time as "... IST", which the default abbreviations
    # read back as Israel's: the key would be another, or no user's.
    conn.execute("create table tzu (id timestamptz primary key, first_name text)")
    conn.execute("create table tzc (id bigint generated always as identity primary key, first_name text)")
    conn.execute("select usersync.attach('tzu', 'tzc', pair => 'tz')")
    conn.execute("insert into tzu values ('2001-02-03 04:05:06+00', 'one')")
    _session(admin_conn, {"datestyle": "Postgres, MDY", "timezone": "Asia/Kolkata"})
    admin_conn.execute("select usersync.set_sync_source('2001-02-03 04:05:06+00'::timestamptz, 'contact', 'tz')")
    assert one(conn, "select count(*) from usersync.links where pair = 'tz' and source = 'contact'") == 1
    assert one(admin_conn, "select usersync.sync_users(array['2001-02-03 04:05:06+00'::timestamptz], 'tz')") == 1


# --- 7. The configuration lock --------------------------------------------------------------

def test_no_unprivileged_role_can_hold_the_configuration_lock(app_conn, admin_conn, conn, pair, pg_server, dbname):
    # The 0.1 advisory key, and any lock an admin can take on usersync's tables, held open.
    app_conn.execute("select pg_advisory_lock(7311046471950211001)")
    for c in (app_conn, admin_conn):
        with pytest.raises(psycopg.errors.InsufficientPrivilege), c.transaction():
            c.execute("lock table usersync.config_lock in access share mode")
    admin_conn.execute("begin")
    admin_conn.execute("lock table usersync.field_mapping in access share mode")
    done = threading.Event()

    def administer() -> None:
        with psycopg.connect(pg_server.conninfo(dbname), autocommit=True) as other:
            other.execute("set lock_timeout = '5s'")
            other.execute("select usersync.sync_users()")
            other.execute("select usersync.set_sync_source(%s, 'contact')", [pair[0]])
            other.execute("call usersync.resync_all()")
            done.set()

    worker = threading.Thread(target=administer)
    worker.start()
    worker.join(30)
    admin_conn.execute("rollback")
    assert done.is_set()


# --- 8. Engine triggers are recognised by what they are ----------------------------------------

@pytest.mark.parametrize("who", ["owner_conn", "conn"])
def test_an_engine_trigger_cannot_be_renamed(request, who, conn):
    with raises_sqlstate("US005"):
        request.getfixturevalue(who).execute("alter trigger usersync_1_after_update on contacts rename to plain")
    assert one(conn, "select count(*) from pg_trigger where tgname = 'usersync_1_after_update'") == 2


def test_the_owner_cannot_drop_an_engine_trigger_whatever_it_is_called(owner_conn, conn, pair):
    with raises_sqlstate("US005"):
        owner_conn.execute("drop trigger usersync_1_after_update on contacts")
    with raises_sqlstate("US005"):
        owner_conn.execute("drop trigger usersync_1_after_insert on users")
    with raises_sqlstate("US001"):  # the contact is still guarded
        owner_conn.execute("update contacts set first_name = 'x' where id = %s", [pair[1]])
