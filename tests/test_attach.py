"""usersync.attach / attach_preview / detach, and several pairs in one database (issue #10, 2-4).
The template database has the example tables attached as pair 'contacts'."""

from __future__ import annotations

import psycopg
import pytest
from helpers import add_user, contact_id, one, raises_sqlstate

DIRECTORY = """create table public.directory (
    id bigint generated always as identity primary key, first_name text, email text, notes text)"""


def _warnings(conn: psycopg.Connection, statement: str, params: object = None) -> list[str]:
    seen: list[str] = []
    conn.add_notice_handler(lambda d: seen.append(d.message_primary or "") if d.severity_nonlocalized == "WARNING"
                            else None)
    conn.execute(statement, params)
    return seen


# --- refusals: each names the table (and column) and has a hint --------------------------------

@pytest.mark.parametrize("ddl, args, match", [
    ("create table t_u (a int, b int, primary key (a, b)); create table t_c (id serial primary key)",
     "'t_u', 't_c'", "primary key has 2 columns"),
    ("create table t_u (a int); create table t_c (id serial primary key)", "'t_u', 't_c'", "no key"),
    ("create table t_u (id int primary key); create table t_c (id int primary key)", "'t_u', 't_c'",
     "neither generated nor shared"),
    ("create table t_u (id int primary key, sw text not null); create table t_c (id serial primary key)",
     "'t_u', 't_c', 'sw'", "boolean NOT NULL"),
    ("create table t_u (id int primary key, sw boolean); create table t_c (id serial primary key)",
     "'t_u', 't_c', 'sw'", "boolean NOT NULL"),
    ("create table t_u (id int primary key); create table t_c (id serial primary key)",
     "'t_u', 't_c', 'nope'", "no column nope"),
    ("create table t_u (id int primary key); create view t_c as select 1 as id", "'t_u', 't_c'", "a view"),
    ("create table t_u (id int primary key); create table t_c (id serial primary key) partition by range (id)",
     "'t_u', 't_c'", "partitioned"),
    ("create table t_u (id int primary key); create table t_c (id uuid primary key)", "'t_u', 't_c', null, true",
     "cannot fill"),
    ("create table t_u (id int primary key)", "'t_u', 'public.contacts'", "already the contacts table"),
    ("create table t_c (id serial primary key)", "'public.contacts', 't_c'", "already the contacts table"),
    ("create table t_c (id serial primary key)", "'t_c', 'public.users'", "already the users table"),
    ("create table t_c (id serial primary key)", "'public.users', 't_c', null, false, 'contacts'", "already exists"),
    ("", "'public.users', 'public.users'", "to itself"),
])
def test_attach_refuses_tables_it_cannot_serve_with_a_message_and_a_hint(conn, ddl, args, match):
    if ddl:
        conn.execute(ddl)
    for fn in ("attach", "attach_preview"):
        with raises_sqlstate("US010", match=match):
            conn.execute(f"select * from usersync.{fn}({args})")
    assert one(conn, "select count(*) from usersync.attachments") == 1


def test_attach_and_detach_need_the_tables_owner_and_the_installer(admin_conn, app_conn, conn):
    conn.execute(DIRECTORY)
    for c in (admin_conn, app_conn):
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            c.execute("select usersync.attach('public.users', 'public.directory', 'sync_to_contact')")
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            c.execute("select usersync.detach('contacts')")


# --- attaching tables that hold data -----------------------------------------------------------

def test_attach_syncs_the_users_whose_switch_is_on_and_its_preview_says_so_first(conn):
    add_user(conn, "on1", first_name="A")
    add_user(conn, "on2", first_name="B")
    add_user(conn, "off", sync=False)
    conn.execute(DIRECTORY)
    conn.execute("insert into public.directory (first_name) values ('unlinked')")
    preview = one(conn, "select users_to_sync, contacts_to_create, contacts_to_link, mapping from"
                        " usersync.attach_preview('public.users', 'public.directory', 'sync_to_contact')")
    assert preview == (2, 2, 0, [["first_name", "first_name"], ["email", "email"]])
    assert one(conn, "select count(*) from public.directory") == 1  # the preview wrote nothing
    assert one(conn, "select count(*) from usersync.attachments") == 1
    assert one(conn, "select usersync.attach('public.users', 'public.directory', 'sync_to_contact')") == "directory"
    assert sorted(r[0] for r in conn.execute("select first_name from public.directory")) == ["A", "B", "unlinked"]
    assert one(conn, "select count(*) from usersync.links where pair = 'directory'") == 2


def test_a_shared_key_links_the_existing_contact_instead_of_duplicating_it(conn):
    conn.execute("create table u (id int primary key, first_name text, sw boolean not null default true);"
                 " create table p (id int primary key, first_name text);"
                 " insert into u values (1, 'One'), (2, 'Two'); insert into p values (1, 'old one')")
    assert one(conn, "select contacts_to_create, contacts_to_link from"
                     " usersync.attach_preview('u', 'p', 'sw', shared_key => true)") == (1, 1)
    conn.execute("select usersync.attach('u', 'p', 'sw', shared_key => true)")
    assert conn.execute("select id, first_name from p order by id").fetchall() == [(1, "One"), (2, "Two")]
    assert conn.execute("select user_id, contact_id from usersync.links where pair = 'p' order by 1").fetchall() == [
        ("1", "1"), ("2", "2")]


def test_a_shared_key_never_empties_values_the_mapping_would_not_fill(conn):
    conn.execute("create table u (id int primary key, first_name text);"
                 " create table p (id int primary key, first_name text, avatar text);"
                 " insert into u values (1, 'One'); insert into p values (1, 'old', 'cat.png')")
    with raises_sqlstate("US010", match="have values in fields no user field is mapped to"):
        conn.execute("select usersync.attach('u', 'p', shared_key => true)")
    assert one(conn, "select avatar from p") == "cat.png"
    assert one(conn, "select count(*) from usersync.attachments") == 1


def test_attach_warns_where_a_foreign_key_decides_deletes_or_a_field_cannot_be_filled(conn):
    conn.execute("create table u (id int primary key, first_name text);"
                 " create table p (id int primary key references u on delete cascade, first_name text,"
                 "                 status text not null)")
    warnings = _warnings(conn, "select usersync.attach('u', 'p', shared_key => true)")
    assert any("ON DELETE CASCADE" in w for w in warnings), warnings
    assert any('contact field status' in w and "NOT NULL" in w for w in warnings), warnings


def test_an_unmapped_not_null_field_with_a_default_gets_its_default(conn):
    conn.execute("create table u (id int primary key, first_name text);"
                 " create table c (id int generated always as identity primary key, first_name text,"
                 "                 origin text not null default 'manual')")
    conn.execute("select usersync.attach('u', 'c')")
    conn.execute("insert into u values (1, 'One')")
    assert conn.execute("select first_name, origin from c").fetchall() == [("One", "manual")]


# --- several pairs -----------------------------------------------------------------------------

@pytest.fixture
def two_pairs(conn: psycopg.Connection) -> None:
    """users feeds contacts (pair 'contacts') and directory (pair 'directory')."""
    conn.execute(DIRECTORY)
    conn.execute("select usersync.attach('public.users', 'public.directory', 'sync_to_contact')")
    conn.execute("grant select, insert, update, delete on public.directory to usersync_test_app, usersync_test_admin")


def test_one_users_table_feeds_two_contact_tables_each_with_its_own_mapping(two_pairs, conn, app_conn, admin_conn):
    admin_conn.execute("delete from usersync.field_mapping where pair = 'directory' and user_field = 'email'")
    admin_conn.execute("insert into usersync.field_mapping (pair, user_field, contact_field)"
                       " values ('directory', 'email', 'notes')")
    uid = add_user(app_conn, "a", first_name="Ann", email="ann@x")
    assert one(conn, "select first_name, email from contacts c join usersync.links_1 l on l.contact_id = c.id"
                     " where l.user_id = %s", [uid]) == ("Ann", "ann@x")
    assert one(conn, "select first_name, email, notes from public.directory d join usersync.links l"
                     " on l.pair = 'directory' and l.contact_id = d.id::text where l.user_id = %s::text",
               [uid]) == ("Ann", None, "ann@x")
    app_conn.execute("update users set first_name = 'Anna' where id = %s", [uid])
    assert sorted(r[0] for r in conn.execute(
        "select first_name from contacts union all select first_name from public.directory")) == ["Anna", "Anna"]
    with raises_sqlstate("US001"):
        app_conn.execute("update public.directory set first_name = 'x'")


def test_writes_to_one_pair_never_touch_another_pairs_rows_links_or_state(two_pairs, conn, app_conn, admin_conn):
    uid = add_user(app_conn, "a", first_name="Ann")
    state = "select pair, version, synced_version from usersync.mapping_state order by pair"
    before = conn.execute(state).fetchall()
    admin_conn.execute("insert into usersync.field_mapping (pair, user_field, contact_field)"
                       " values ('directory', 'academic_title', 'notes')")
    after = conn.execute(state).fetchall()
    assert after[0] == before[0] and after[1][1] == before[1][1] + 1  # only directory's mapping changed
    assert one(conn, "select count(*) from usersync.synchronized_contacts where not up_to_date") == 1
    admin_conn.execute("call usersync.resync_all(10, pair => 'directory')")
    assert one(conn, "select count(*) from usersync.resync_state") == 1
    conn.execute("set session_replication_role = replica")
    conn.execute("delete from public.directory")
    conn.execute("reset session_replication_role")
    assert one(admin_conn, "select usersync.sync_users(pair => 'directory')") == 1  # repaired
    assert contact_id(conn, uid) is not None
    assert one(conn, "select count(*) from contacts") == 1  # the other pair's contact, untouched


def test_a_pair_must_be_named_where_there_are_several(two_pairs, admin_conn):
    for statement in ("select usersync.sync_users()", "call usersync.resync_all()",
                      "select usersync.set_sync_source(1, 'contact')",
                      "insert into usersync.field_mapping values ('login', 'notes')",
                      "select * from usersync.preview_resync()", "select usersync.reset_field_mapping()"):
        with raises_sqlstate("US011", match="2 pairs: name one (contacts, directory)"):
            admin_conn.execute(statement)
    with raises_sqlstate("US011", match="no pair named"):
        admin_conn.execute("select usersync.sync_users(pair => 'nope')")


def test_a_users_table_that_feeds_two_pairs_cannot_reverse_either(two_pairs, app_conn, admin_conn):
    uid = add_user(app_conn, "a")
    with raises_sqlstate("US006", match="cannot be reversed"):
        admin_conn.execute("select usersync.set_sync_source(%s, 'contact', pair => 'contacts')", [uid])


def test_a_users_table_with_a_reversed_pair_cannot_feed_a_second_pair(conn, app_conn, admin_conn):
    uid = add_user(app_conn, "a")
    admin_conn.execute("select usersync.set_sync_source(%s, 'contact')", [uid])
    conn.execute(DIRECTORY)
    with raises_sqlstate("US010", match="has reversed pairs"):
        conn.execute("select usersync.attach('public.users', 'public.directory', 'sync_to_contact')")


# --- detach and the empty database ---------------------------------------------------------------

# detach locks both tables before it drops their triggers; a table dropped while the DDL guard was
# off (a superuser disabled its event triggers) is no table to lock: detach still removes the pair
# (it was 42601, "lock table 12345, public.contacts": a dropped table's regclass is its number).
def test_detach_removes_a_pair_whose_users_table_was_dropped_while_the_guard_was_off(conn):
    for (name,) in conn.execute("select evtname from pg_event_trigger where evtname like 'usersync%'").fetchall():
        conn.execute(f'alter event trigger "{name}" disable')
    conn.execute("drop table users cascade")
    conn.execute("select usersync.detach('contacts')")
    assert one(conn, "select count(*) from usersync.attachments") == 0
    assert one(conn, "select count(*) from pg_trigger where tgrelid = 'public.contacts'::regclass"
                     " and tgname like 'usersync%%'") == 0


def test_detach_keeps_both_tables_and_every_row_and_a_reattach_works(conn, app_conn):
    uid = add_user(app_conn, "a", first_name="Ann")
    rows = (conn.execute("select * from users order by id").fetchall(),
            conn.execute("select * from contacts order by id").fetchall())
    conn.execute("select usersync.detach('contacts')")
    assert (conn.execute("select * from users order by id").fetchall(),
            conn.execute("select * from contacts order by id").fetchall()) == rows
    assert one(conn, "select count(*) from pg_trigger where tgname like 'usersync%%'") == 0
    assert one(conn, "select count(*) from pg_policy where polname = 'usersync_engine'") == 0
    assert one(conn, "select count(*) from information_schema.role_table_grants"
                     " where grantee = 'usersync_engine' and table_schema = 'public'") == 0
    assert one(conn, "select count(*) from pg_proc where proname like '\\_g1\\_%%'") == 0
    app_conn.execute("update contacts set first_name = 'free'")  # an ordinary contact now
    with raises_sqlstate("US011", match="no pair attached"):
        conn.execute("select usersync.sync_users()")
    conn.execute("select usersync.attach('public.users', 'public.contacts', 'sync_to_contact')")
    assert one(conn, "select count(*) from contacts") == 2  # (links went with the pair: a new contact)
    app_conn.execute("update users set first_name = 'Anna' where id = %s", [uid])
    assert one(conn, "select count(*) from contacts where first_name = 'Anna'") == 1


@pytest.mark.guard
def test_dropping_a_pairs_links_table_alone_is_refused(conn):
    with raises_sqlstate("US005", match="holds the links of pair"):
        conn.execute("drop table usersync.links_1 cascade")  # (without CASCADE the usersync.links view keeps it)


# --- foreign keys between the two tables and the delete toggles -------------------------------------

FK_TABLES = """create table u (id int primary key, first_name text, sw boolean not null default true);
               create table c (id int generated always as identity primary key, first_name text,
                               user_ref int references u on delete {action})"""


def _set_reference(conn: psycopg.Connection, statement: str) -> None:
    """The contacts' own reference to their user, written behind the engine (they are read-only)."""
    conn.execute("set session_replication_role = replica")
    conn.execute(statement)
    conn.execute("reset session_replication_role")


@pytest.mark.parametrize("action", ["restrict", "no action"])
def test_a_restricting_foreign_key_lets_the_toggle_delete_the_contact_first(conn, action):
    conn.execute(FK_TABLES.format(action=action))
    conn.execute("select usersync.attach('u', 'c', 'sw')")
    conn.execute("insert into u values (1, 'One'), (2, 'Two')")
    _set_reference(conn, "update c set user_ref = id")
    conn.execute("update usersync.settings set delete_contact_with_user = true where pair = 'c'")
    conn.execute("delete from u where id = 1")
    assert one(conn, "select count(*) from c") == 1
    conn.execute("update usersync.settings set delete_contact_with_user = false where pair = 'c'")
    with pytest.raises(psycopg.errors.IntegrityError) as info:  # the key's own rule: documented
        conn.execute("delete from u where id = 2")
    assert info.value.sqlstate in ("23503", "23001")  # (18 reports RESTRICT as restrict_violation)


@pytest.mark.guard
def test_a_foreign_key_added_after_attach_gets_the_trigger_it_needs(conn):
    conn.execute(FK_TABLES.format(action="cascade").replace("references u on delete cascade", ""))
    conn.execute("select usersync.attach('u', 'c', 'sw')")
    assert one(conn, "select count(*) from pg_trigger where tgname like 'usersync\\_%%\\_before\\_delete'"
                     " and tgrelid = 'u'::regclass") == 0
    conn.execute("alter table c add foreign key (user_ref) references u")
    assert one(conn, "select count(*) from pg_trigger where tgname like 'usersync\\_%%\\_before\\_delete'"
                     " and tgrelid = 'u'::regclass") == 1
    conn.execute("insert into u values (1, 'One')")
    _set_reference(conn, "update c set user_ref = 1")
    conn.execute("update usersync.settings set delete_contact_with_user = true where pair = 'c'")
    conn.execute("delete from u")
    assert one(conn, "select count(*) from c") == 0


@pytest.mark.parametrize("toggle", [False, True])
def test_a_set_null_foreign_key_updates_the_contact_then_the_toggle_decides(conn, toggle):
    conn.execute(FK_TABLES.format(action="set null"))
    conn.execute("select usersync.attach('u', 'c', 'sw')")
    conn.execute("insert into u values (1, 'One')")
    _set_reference(conn, "update c set user_ref = 1")
    conn.execute("update usersync.settings set delete_contact_with_user = %s where pair = 'c'", [toggle])
    conn.execute("delete from u")
    assert conn.execute("select first_name, user_ref from c").fetchall() == ([] if toggle else [("One", None)])


def test_attach_refuses_when_the_first_sync_would_fail_on_a_field_nothing_fills(conn):
    conn.execute("create table u (id int primary key, first_name text, sw boolean not null default true);"
                 " create table c (id int generated always as identity primary key, first_name text,"
                 "                 code text not null); insert into u values (1, 'One')")
    with raises_sqlstate("US010", match="contact field code is NOT NULL"):
        conn.execute("select usersync.attach('u', 'c', 'sw')")
    conn.execute("update u set sw = false")  # nobody to sync: attach, then map a field to it
    conn.execute("select usersync.attach('u', 'c', 'sw')")
    conn.execute("alter table u add column code text not null default 'X'")
    conn.execute("insert into usersync.field_mapping values ('code', 'code', 'c')")
    conn.execute("update u set sw = true")
    assert conn.execute("select first_name, code from c").fetchall() == [("One", "X")]


def test_a_uuid_user_key_feeds_contacts_with_a_bigint_key_of_their_own(conn):
    conn.execute("create table pu (id uuid primary key default gen_random_uuid(), first_name text,"
                 " sw boolean not null default true)")
    conn.execute("create table pc (id bigint generated always as identity primary key, first_name text)")
    conn.execute("select usersync.attach('pu', 'pc', 'sw', pair => 'p')")
    conn.execute("insert into pu (first_name) values ('a'), ('b')")
    conn.execute("update pu set first_name = 'c' where first_name = 'b'")
    assert conn.execute("select first_name from pc order by id").fetchall() == [("a",), ("c",)]


def test_a_text_key_of_another_collation_is_attached_and_listed(conn):
    conn.execute('create table tu (id text collate "C" primary key, first_name text, sw boolean not null default true)')
    conn.execute("create table tc (id bigint generated always as identity primary key, first_name text)")
    conn.execute("select usersync.attach('tu', 'tc', 'sw', pair => 't')")
    conn.execute("insert into tu (id, first_name) values ('B', 'b'), ('a', 'a')")
    rows = conn.execute("select user_id, up_to_date from usersync.synchronized_contacts where pair = 't' order by 1")
    assert sorted(rows.fetchall()) == [("B", True), ("a", True)]
