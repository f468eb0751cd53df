"""The interleavings that matter most, on the uuid profiles shape (shared key, a cascading foreign
key, row-level security, no switch) and the quoted text-key shape (tests/shapes.py). Each ends with
the pair equal to its source and a resync that changes nothing."""

from __future__ import annotations

import psycopg
import pytest
from helpers import one
from psycopg import sql
from shapes import PROFILES, QUOTED, Shape, set_mapping

SHAPES = (PROFILES, QUOTED)


@pytest.fixture(params=SHAPES, ids=[s.name for s in SHAPES])
def shape(request: pytest.FixtureRequest, conn: psycopg.Connection) -> Shape:
    s: Shape = request.param
    s.attach(conn)
    return s


def _first_name(conn: psycopg.Connection, shape: Shape, table: str, key: object) -> object:
    rel, col = (shape.users_sql, shape.user_key) if table == "users" else (shape.contacts_sql, shape.contact_key)
    logical = shape.u("first_name") if table == "users" else shape.c("first_name")
    return one(conn, sql.SQL("select {} from {} where {} = %s").format(logical, rel, sql.Identifier(col)), [key])


def _settle(conn: psycopg.Connection, shape: Shape) -> None:
    # A scenario's session may own an unfinished run: take it over as the US009 hint says.
    conn.execute("select pg_terminate_backend(owner_pid, 5000) from usersync.resync_state"
                 " where finished_at is null and owner_pid <> pg_backend_pid()")
    conn.execute("call usersync.resync_all(100, pair => %s)", [shape.pair])
    assert one(conn, "select would_change from usersync.preview_resync(pair => %s)", [shape.pair]) == 0


def _update_users(shape: Shape) -> str:
    return sql.SQL("update {} set {} = %s where {} = %s").format(
        shape.users_sql, shape.u("first_name"), sql.Identifier(shape.user_key)).as_string(None)


def _update_contacts(shape: Shape) -> str:
    return sql.SQL("update {} set {} = %s where {} = %s").format(
        shape.contacts_sql, shape.c("first_name"), sql.Identifier(shape.contact_key)).as_string(None)


def test_resync_waits_for_an_open_user_update_and_keeps_the_new_value(shape, sessions, conn):
    key = shape.add_user(conn, "a", first_name="old")
    set_mapping(conn, shape, [("first_name", "first_name"), ("academic_title", "title")])  # stale: a real batch
    it, (app, admin) = sessions("app", "admin")
    it.step(app, "begin")
    it.step(app, _update_users(shape), ["new", key])
    batch = it.step(admin, "select * from usersync.resync_step(100, pair => %s)", [shape.pair], blocks=True)
    it.step(app, "commit")
    it.result(batch)
    assert _first_name(conn, shape, "contacts", shape.contact_of(conn, key)) == "new"
    _settle(conn, shape)


def test_two_concurrent_updates_of_one_user_leave_the_last_value(shape, sessions, conn):
    key = shape.add_user(conn, "a", first_name="zero")
    it, (s1, s2) = sessions("app", "app")
    it.step(s1, "begin")
    it.step(s1, _update_users(shape), ["one", key])
    second = it.step(s2, _update_users(shape), ["two", key], blocks=True)
    it.step(s1, "commit")
    it.result(second)
    assert _first_name(conn, shape, "contacts", shape.contact_of(conn, key)) == "two"
    _settle(conn, shape)


def test_deleting_a_user_while_its_contact_is_deleted_leaves_no_orphan(shape, sessions, conn):
    conn.execute("update usersync.settings set delete_contact_with_user = true where pair = %s", [shape.pair])
    key = shape.add_user(conn, "a")
    cid = shape.contact_of(conn, key)
    it, (s1, s2) = sessions("app", "app")
    it.step(s1, "begin")
    it.step(s1, sql.SQL("delete from {} where {} = %s").format(
        shape.users_sql, sql.Identifier(shape.user_key)).as_string(None), [key])
    second = it.step(s2, sql.SQL("delete from {} where {} = %s").format(
        shape.contacts_sql, sql.Identifier(shape.contact_key)).as_string(None), [cid], blocks=True)
    it.step(s1, "commit")
    it.result(second)
    assert one(conn, sql.SQL("select count(*) from {}").format(shape.contacts_sql)) == 0
    assert one(conn, sql.SQL("select count(*) from {}").format(shape.links(conn))) == 0


def test_reversing_a_pair_while_its_user_is_edited_waits_and_stays_consistent(shape, sessions, conn):
    key = shape.add_user(conn, "a", first_name="old")
    it, (app, admin) = sessions("app", "admin")
    it.step(app, "begin")
    it.step(app, _update_users(shape), ["edited", key])
    reverse = it.step(admin, "select usersync.set_sync_source(%s, 'contact', pair => %s)", [key, shape.pair],
                      blocks=True)
    it.step(app, "commit")
    it.result(reverse)
    assert _first_name(conn, shape, "contacts", shape.contact_of(conn, key)) == "edited"
    _settle(conn, shape)


def test_a_reversed_contact_edit_and_a_resync_batch_do_not_deadlock(shape, sessions, conn):
    key = shape.add_user(conn, "a", first_name="old")
    cid = shape.contact_of(conn, key)
    conn.execute("select usersync.set_sync_source(%s, 'contact', pair => %s)", [key, shape.pair])
    set_mapping(conn, shape, [("first_name", "first_name"), ("email", "email")])
    it, (app, admin) = sessions("app", "admin")
    it.step(app, "begin")
    it.step(app, _update_contacts(shape), ["new", cid])
    batch = it.step(admin, "select * from usersync.resync_step(10, pair => %s)", [shape.pair], blocks=True)
    it.step(app, "commit")
    it.result(batch)
    assert _first_name(conn, shape, "users", key) == "new"
    _settle(conn, shape)
