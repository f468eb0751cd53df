"""Security: nothing for PUBLIC, pinned search paths, and what each role may do."""

from __future__ import annotations

import psycopg
import pytest
from helpers import add_user, one, raises_sqlstate


def test_nothing_in_usersync_is_granted_to_public_but_the_key_reader_of_the_profile_view(conn):
    rows = conn.execute("""
        select 'schema', nspname from pg_namespace, aclexplode(nspacl) a
         where nspname = 'usersync' and a.grantee = 0
        union all
        select 'relation', c.relname from pg_class c, aclexplode(c.relacl) a
         where c.relnamespace = 'usersync'::regnamespace and a.grantee = 0
        union all
        select 'function', p.proname from pg_proc p, aclexplode(coalesce(p.proacl, acldefault('f', p.proowner))) a
         where p.pronamespace = 'usersync'::regnamespace and a.grantee = 0""").fetchall()
    # synchronized_contacts calls it for whoever reads the view (PostgreSQL checks a view's
    # functions against its reader); it runs as its caller and reads nothing.
    assert rows == [("function", "_resync_cursor")]
    assert one(conn, "select prosecdef from pg_proc where proname = '_resync_cursor'") is False


def test_every_function_of_usersync_pins_pg_catalog_then_pg_temp(conn):
    # An empty search_path still searches pg_temp first for types and relations.
    rows = conn.execute("""
        select p.proname, p.proconfig from pg_proc p
         where p.pronamespace = 'usersync'::regnamespace
           and not coalesce('search_path=pg_catalog, pg_temp' = any(p.proconfig), false)
           and p.prokind <> 'p'""").fetchall()
    assert rows == []
    assert one(conn, "select count(*) from pg_proc where pronamespace = 'usersync'::regnamespace and prosecdef") > 20


def test_everything_the_engine_owns_runs_as_the_engine(conn):
    # Owned by usersync_engine means SECURITY DEFINER: whoever calls it, it runs as the engine.
    rows = conn.execute("""
        select p.oid::regprocedure from pg_proc p
         where p.proowner = 'usersync_engine'::regrole and not p.prosecdef""").fetchall()
    assert rows == []
    assert one(conn, "select count(*) from pg_proc where proowner = 'usersync_engine'::regrole") > 20


@pytest.mark.guard
def test_code_that_runs_as_its_caller_is_not_owned_by_the_engine(conn):
    # Event-trigger functions run for whoever issues DDL (a superuser, say); resync_all and the
    # generator's helpers run as their caller: the engine must not be able to replace them.
    rows = conn.execute("""
        select p.oid::regprocedure, pg_get_userbyid(p.proowner) from pg_proc p
         where p.pronamespace = 'usersync'::regnamespace and p.proowner = 'usersync_engine'::regrole
           and (p.prorettype = 'event_trigger'::regtype or not p.prosecdef)
        union all
        select e.evtfoid::regprocedure, pg_get_userbyid(p.proowner) from pg_event_trigger e
          join pg_proc p on p.oid = e.evtfoid
         where e.evtname like 'usersync%%' and p.proowner = 'usersync_engine'::regrole""").fetchall()
    assert rows == []
    assert one(conn, "select count(*) from pg_event_trigger where evtname like 'usersync%%'") == 5


@pytest.mark.parametrize("statement", [
    "alter function usersync._generate(text) security invoker",
    "alter function usersync.sync_users(anycompatiblearray, text) reset search_path",
    "create function usersync.sync_users(integer[]) returns bigint language sql as 'select 0::bigint'",
    "create or replace function usersync._g1_lock_pair(p_user_id bigint, p_contact_id bigint, p_source text)"
    " returns void"
    " language plpgsql security definer as $$ begin end $$",
    "create aggregate usersync.agg(bigint) (sfunc = pg_catalog.int8pl, stype = bigint)",
])
@pytest.mark.guard  # (usersync_guard_engine)
def test_the_engine_cannot_make_its_code_run_as_its_caller(conn, statement):
    # As if an attacker had become usersync_engine: nothing it owns may run with another role's
    # privileges, so every way to own invoker code is refused (by a guard the engine does not own).
    conn.execute("begin")
    conn.execute("set local role usersync_engine")
    with raises_sqlstate("US005"):
        conn.execute(statement)
    conn.execute("rollback")


@pytest.mark.parametrize("function", ["usersync._on_ddl_end()", "usersync._on_sql_drop()",
                                      "usersync._on_engine_ddl()", "usersync._check_dependencies(boolean, text[])"])
def test_the_engine_cannot_replace_what_runs_as_another_role(conn, function):
    conn.execute("begin")
    conn.execute("set local role usersync_engine")
    with pytest.raises(psycopg.errors.InsufficientPrivilege):
        conn.execute(f"alter function {function} security invoker")
    conn.execute("rollback")


@pytest.mark.parametrize("statement", [
    "select * from usersync.field_mapping",
    "insert into usersync.field_mapping values ('academic_title', 'title')",
    "update usersync.settings set delete_contact_with_user = true",
    "delete from usersync.links_1",
    "insert into usersync.links_1 values (1, 1, 'user', true, 1)",
    "delete from usersync.sync_errors",
    "select usersync.sync_users()",
    "call usersync.resync_all()",
    "select usersync.set_sync_source(1, 'contact')",
    "select usersync.reset_field_mapping()",
    "select usersync._generate('contacts')",
    "select usersync._g1_refresh(array[1::bigint])",
])
def test_an_application_role_cannot_touch_the_engine(app_conn, conn, statement):
    add_user(conn, "a")
    with pytest.raises(psycopg.errors.InsufficientPrivilege):
        app_conn.execute(statement)


def test_an_administrator_configures_and_runs_the_sync_but_cannot_forge_links(admin_conn, conn):
    add_user(conn, "a")
    admin_conn.execute("insert into usersync.field_mapping values ('academic_title', 'title')")
    admin_conn.execute("update usersync.settings set delete_contact_with_user = true")
    assert one(admin_conn, "select usersync.sync_users()") == 1
    admin_conn.execute("call usersync.resync_all()")
    for statement in ("delete from usersync.links_1", "update usersync.mapping_state set version = 0",
                      "delete from usersync.settings", "select usersync._generate('contacts')"):
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            admin_conn.execute(statement)


def test_objects_in_pg_temp_or_public_named_like_the_engines_are_ignored(app_conn, conn):
    # A role that can create objects shadows what an unqualified engine would resolve.
    conn.execute("grant create on schema public to usersync_test_app")
    app_conn.execute("create temp table links (user_id bigint, contact_id bigint)")
    app_conn.execute("create temp table contacts (id bigint, first_name text)")
    app_conn.execute("create function public.nextval(regclass) returns bigint language sql as 'select 0::bigint'")
    app_conn.execute("set search_path = pg_temp, public")
    uid = add_user(app_conn, "a", first_name="A")
    assert one(conn, "select first_name from public.contacts c join usersync.links_1 l on l.contact_id = c.id"
                     " where l.user_id = %s", [uid]) == "A"
    assert one(app_conn, "select count(*) from pg_temp.contacts") == 0


@pytest.mark.parametrize("statement", [
    "set session_replication_role = replica",
    "alter table contacts disable trigger all",
    "alter table users disable trigger usersync_1_after_update",
    "drop trigger usersync_1_after_update on contacts",
    pytest.param("alter event trigger usersync_guard_alter disable", marks=pytest.mark.guard),
    "create or replace function usersync._g1_on_contact_update() returns trigger language plpgsql"
    " as $$ begin return null; end $$",
])
def test_an_application_cannot_switch_the_engine_off(app_conn, conn, statement):
    uid = add_user(conn, "a")
    with pytest.raises(psycopg.errors.InsufficientPrivilege):
        app_conn.execute(statement)
    with pytest.raises(psycopg.Error) as info:
        app_conn.execute("update contacts set first_name = 'x' where id = (select max(id) from contacts)")
    assert info.value.sqlstate == "US001"
    assert uid


def test_copy_into_users_as_the_application_creates_the_contacts(app_conn, conn):
    with app_conn.cursor().copy("copy users (login, first_name, sync_to_contact) from stdin") as copy:
        for i in range(50):
            copy.write_row((f"c{i}", f"C{i}", i % 2 == 0))
    assert one(conn, "select count(*) from usersync.synchronized_contacts") == 25
    assert one(conn, "select count(*) from contacts where first_name like 'C%%'") == 25


def test_a_shadowing_operator_earlier_on_the_search_path_is_ignored(app_conn, conn):
    conn.execute("grant create on schema public to usersync_test_app")
    app_conn.execute("create function public.always(bigint, bigint) returns boolean language sql as 'select true'")
    app_conn.execute("create operator public.= (leftarg = bigint, rightarg = bigint, function = public.always)")
    app_conn.execute("set search_path = public, pg_catalog")
    a = add_user(app_conn, "a", first_name="A")
    b = add_user(app_conn, "b", first_name="B")
    app_conn.execute("update users set first_name = 'A2' where login = 'a'")
    names = dict(conn.execute("select l.user_id, c.first_name from usersync.links_1 l"
                              " join contacts c on c.id = l.contact_id").fetchall())
    assert names == {a: "A2", b: "B"}


def test_an_administrators_own_cast_never_runs_as_the_engine(conn, admin_conn):
    # A type of the administrator's with a cast to text of its own: passed as user ids, the cast
    # would run inside the engine's SECURITY DEFINER functions, as usersync_engine.
    conn.execute("create schema adm authorization usersync_test_admin")
    admin_conn.execute("create type adm.k as (v bigint)")
    admin_conn.execute("create function adm.k_text(adm.k) returns text language sql"
                       " as $$ select current_user::text $$")
    admin_conn.execute("create cast (adm.k as text) with function adm.k_text(adm.k)")
    for statement in ("select usersync.sync_users(array[row(1)::adm.k])",
                      "select usersync.set_sync_source(row(1)::adm.k, 'contact')"):
        with raises_sqlstate("US006", match="are not accepted"):
            admin_conn.execute(statement)
