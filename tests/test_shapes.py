"""The article's rules on the three shapes of application tables (tests/shapes.py): bigint keys and a
switch; uuid keys shared by a profiles table with a cascading foreign key, row-level security and no
switch; quoted mixed-case names with text keys across two schemas. Applications write as
usersync_test_app, administrators act as usersync_test_admin."""

from __future__ import annotations

import psycopg
import pytest
from helpers import one, raises_sqlstate
from psycopg import sql
from shapes import SHAPES, Shape, set_mapping


@pytest.fixture(params=SHAPES, ids=[s.name for s in SHAPES])
def shape(request: pytest.FixtureRequest, conn: psycopg.Connection) -> Shape:
    s: Shape = request.param
    s.attach(conn)
    if s.name != "example":  # one pair per test: the 0.1 calls that name no pair keep working
        conn.execute("select usersync.detach('contacts')")
    return s


def _update_user(conn: psycopg.Connection, shape: Shape, key: object, logical: str, value: object) -> None:
    conn.execute(sql.SQL("update {} set {} = %s where {} = %s").format(
        shape.users_sql, shape.u(logical), sql.Identifier(shape.user_key)), [value, key])


def _update_contact(conn: psycopg.Connection, shape: Shape, key: object, logical: str, value: object) -> None:
    conn.execute(sql.SQL("update {} set {} = %s where {} = %s").format(
        shape.contacts_sql, shape.c(logical), sql.Identifier(shape.contact_key)), [value, key])


def _delete(conn: psycopg.Connection, table: sql.Composable, key_col: str, key: object) -> None:
    conn.execute(sql.SQL("delete from {} where {} = %s").format(table, sql.Identifier(key_col)), [key])


def _exists(conn: psycopg.Connection, table: sql.Composable, key_col: str, key: object) -> bool:
    return one(conn, sql.SQL("select exists (select from {} where {} = %s)").format(
        table, sql.Identifier(key_col)), [key])


def test_a_synchronized_user_gets_a_contact_that_follows_it_and_is_read_only(shape, app_conn, conn):
    key = shape.add_user(app_conn, "ann", first_name="Ann", email="ann@example.org")
    cid = shape.contact_of(conn, key)
    assert cid is not None
    if shape.shared_key:
        assert cid == key
    assert shape.contact(conn, cid) == {"title": None, "first_name": "Ann", "email": "ann@example.org", "notes": None}
    _update_user(app_conn, shape, key, "first_name", "Anna")
    assert shape.contact(conn, cid)["first_name"] == "Anna"
    with raises_sqlstate("US001"):
        _update_contact(app_conn, shape, cid, "first_name", "x")
    with raises_sqlstate("US001"):
        _delete(app_conn, shape.contacts_sql, shape.contact_key, cid)


def test_a_reversed_pair_takes_its_values_from_the_contact(shape, app_conn, admin_conn, conn):
    key = shape.add_user(app_conn, "bob", first_name="Bob")
    cid = shape.contact_of(conn, key)
    # The key in its own type, or as text: both name the user.
    admin_conn.execute("select usersync.set_sync_source(%s, 'contact', pair => %s)", [key, shape.pair])
    _update_contact(app_conn, shape, cid, "first_name", "Robert")
    assert one(conn, sql.SQL("select {} from {} where {} = %s").format(
        shape.u("first_name"), shape.users_sql, sql.Identifier(shape.user_key)), [key]) == "Robert"
    with raises_sqlstate("US002"):
        _update_user(app_conn, shape, key, "first_name", "x")
    admin_conn.execute("select usersync.set_sync_source(%s::text, 'user', pair => %s)", [str(key), shape.pair])
    _update_user(app_conn, shape, key, "first_name", "Bobby")
    assert shape.contact(conn, cid)["first_name"] == "Bobby"


def test_a_deleted_reversed_contact_comes_back_only_through_sync_users(shape, app_conn, admin_conn, conn):
    key = shape.add_user(app_conn, "eve", first_name="Eve")
    cid = shape.contact_of(conn, key)
    admin_conn.execute("select usersync.set_sync_source(%s, 'contact', pair => %s)", [key, shape.pair])
    _delete(app_conn, shape.contacts_sql, shape.contact_key, cid)
    # The user stays (delete_user_with_contact is off): switched off, or, in a pair without a
    # switch, without a contact. Writing the user, a mapped field or not, brings none back.
    _update_user(app_conn, shape, key, "first_name", "Eva")
    _update_user(app_conn, shape, key, "email", None)
    assert shape.contact_of(conn, key) is None
    # "Synchronize users" makes one where every user is synchronized.
    synced = one(admin_conn, "select usersync.sync_users(array[%s], pair => %s)", [str(key), shape.pair])
    assert synced == (0 if shape.switch else 1)
    if not shape.switch:
        assert shape.contact(conn, shape.contact_of(conn, key))["first_name"] == "Eva"


@pytest.mark.parametrize("toggle", [False, True])
def test_deleting_a_user_applies_the_toggle_or_the_foreign_key(shape, app_conn, admin_conn, conn, toggle):
    admin_conn.execute("update usersync.settings set delete_contact_with_user = %s", [toggle])
    key = shape.add_user(app_conn, "carl", first_name="Carl")
    cid = shape.contact_of(conn, key)
    _delete(app_conn, shape.users_sql, shape.user_key, key)
    # profiles.id references auth.users on delete cascade: the foreign key deletes the contact
    # whatever the toggle says (attach warned about it).
    kept = not toggle and not shape.shared_key
    assert _exists(conn, shape.contacts_sql, shape.contact_key, cid) is kept
    assert one(conn, sql.SQL("select count(*) from {}").format(shape.links(conn))) == 0
    if kept:  # an ordinary contact again
        _update_contact(app_conn, shape, cid, "first_name", "edited")


def test_a_mapping_change_reaches_existing_contacts_on_resync(shape, app_conn, admin_conn, conn):
    keys = [shape.add_user(app_conn, f"u{i}", first_name=f"U{i}", academic_title="Dr") for i in range(3)]
    set_mapping(admin_conn, shape, [("first_name", "first_name"), ("academic_title", "title")])
    assert one(conn, "select count(*) from usersync.synchronized_contacts where pair = %s and not up_to_date",
               [shape.pair]) == 3
    admin_conn.execute("call usersync.resync_all(2, pair => %s)", [shape.pair])
    assert [shape.contact(conn, shape.contact_of(conn, k))["title"] for k in keys] == ["Dr"] * 3
    assert one(conn, "select bool_and(up_to_date) from usersync.synchronized_contacts where pair = %s",
               [shape.pair]) is True
    preview = one(admin_conn, "select would_change from usersync.preview_resync(pair => %s)", [shape.pair])
    assert preview == 0


def test_sync_users_repairs_a_contact_deleted_behind_the_triggers(shape, app_conn, admin_conn, conn):
    key = shape.add_user(app_conn, "dora", first_name="Dora")
    cid = shape.contact_of(conn, key)
    conn.execute("set session_replication_role = replica")
    _delete(conn, shape.contacts_sql, shape.contact_key, cid)
    conn.execute("reset session_replication_role")
    assert one(admin_conn, "select usersync.sync_users(array[%s], pair => %s)", [str(key), shape.pair]) == 1
    new_cid = shape.contact_of(conn, key)
    assert shape.contact(conn, new_cid)["first_name"] == "Dora"
    assert (new_cid == key) if shape.shared_key else (new_cid != cid)


def test_a_user_inserted_again_under_a_key_whose_link_was_left_behind_gets_a_fresh_pair(shape, app_conn, conn):
    # A delete that bypassed the triggers leaves the user's link behind; a new user with the same
    # key replaces it (the insert trigger's ON CONFLICT on the links).
    if shape.new_key() is None or shape.shared_key:
        pytest.skip("keys made by the table are never reused; a shared key links the contact it finds")
    key = shape.add_user(app_conn, "erin", first_name="Erin")
    old_cid = shape.contact_of(conn, key)
    conn.execute("set session_replication_role = replica")
    _delete(conn, shape.users_sql, shape.user_key, key)
    conn.execute("reset session_replication_role")
    cols = [shape.u("login"), sql.Identifier(shape.user_key), shape.u("first_name"), sql.Identifier(shape.switch)]
    app_conn.execute(sql.SQL("insert into {} ({}) values (%s, %s, %s, true)").format(
        shape.users_sql, sql.SQL(", ").join(cols)), ["erin again", key, "Erin II"])
    new_cid = shape.contact_of(conn, key)
    assert new_cid != old_cid
    assert shape.contact(conn, new_cid)["first_name"] == "Erin II"
    assert shape.contact(conn, old_cid)["first_name"] == "Erin"  # (an ordinary contact now)
    assert one(conn, sql.SQL("select count(*) from {} where user_id = %s").format(shape.links(conn)), [key]) == 1


def test_a_key_that_is_not_of_the_pairs_type_is_refused_with_a_hint(shape, admin_conn):
    if shape.name == "quoted":
        pytest.skip("any text is a valid text key")
    with raises_sqlstate("US006", match="invalid user id"):
        admin_conn.execute("select usersync.sync_users(array['not a key'], pair => %s)", [shape.pair])


def test_a_text_key_of_a_linked_user_cannot_change(shape, app_conn):
    if shape.name != "quoted":
        pytest.skip("identity and foreign-keyed keys: tests/test_boundary.py")
    key = shape.add_user(app_conn, "eve", first_name="Eve")
    with raises_sqlstate("US008"):
        app_conn.execute(sql.SQL("update {} set {} = %s where {} = %s").format(
            shape.users_sql, sql.Identifier(shape.user_key), sql.Identifier(shape.user_key)), [shape.new_key(), key])
