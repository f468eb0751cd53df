"""Behaviour 9: DDL that would break the sync is refused (US005); other DDL regenerates the engine."""

from __future__ import annotations

import pytest
from helpers import add_user, contact, contact_id, mismatches, one, raises_sqlstate


@pytest.mark.parametrize("ddl", [
    "alter table users drop column email",
    "alter table contacts drop column email",
    "alter table users alter column email type varchar(200)",
    "alter table contacts alter column first_name type varchar(50)",
    "alter table users rename column email to e_mail",
    "alter table contacts rename column last_name to surname",
])
def test_dropping_retyping_or_renaming_a_mapped_column_is_refused(conn, ddl):
    with raises_sqlstate("US005") as info:
        conn.execute(ddl)
    assert "field mapping" in info.value.diag.message_primary
    assert "DELETE FROM usersync.field_mapping" in info.value.diag.message_hint


@pytest.mark.parametrize("ddl", [
    "alter table users drop column sync_to_contact",
    "alter table users rename column id to user_id",
    "alter table contacts disable trigger all",
    "alter table users disable trigger usersync_after_update",
    "alter table users enable replica trigger usersync_after_insert",
    "drop table contacts",
    "drop table users cascade",
])
def test_ddl_that_would_bypass_or_break_the_engine_is_refused(conn, ddl):
    with raises_sqlstate("US005"):
        conn.execute(ddl)


def test_a_mapped_column_can_be_dropped_once_unmapped(conn, admin_conn):
    admin_conn.execute("delete from usersync.field_mapping where user_field = 'email'")
    conn.execute("alter table users drop column email")
    conn.execute("alter table contacts drop column email")
    uid = add_user(conn, "a", first_name="A")
    conn.execute("update users set first_name = 'B' where id = %s", [uid])
    assert contact(conn, contact_id(conn, uid))["first_name"] == "B"


def test_unmapped_columns_can_change_and_the_engine_follows(conn):
    uid = add_user(conn, "a", first_name="A")
    conn.execute("alter table contacts drop column notes")
    conn.execute("alter table contacts add column pronouns text default 'n/a'")
    conn.execute("alter table users alter column birth_date type timestamp")
    conn.execute("update users set first_name = 'Anna' where id = %s", [uid])
    c = contact(conn, contact_id(conn, uid))
    assert c["first_name"] == "Anna" and c["pronouns"] is None  # unmapped: empty after a sync
    add_user(conn, "b")
    assert mismatches(conn) == []


def test_uninstalling_with_drop_schema_is_allowed_and_leaves_plain_tables(conn):
    uid = add_user(conn, "a")
    cid = contact_id(conn, uid)
    conn.execute("drop schema usersync cascade")
    conn.execute("update contacts set first_name = 'free' where id = %s", [cid])
    assert one(conn, "select count(*) from pg_trigger where tgname like 'usersync%%'") == 0
