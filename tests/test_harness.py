"""The harness itself: real server, fresh clones, the roles tests rely on."""

from __future__ import annotations

import os

import psycopg
import pytest

import harness


def test_each_test_gets_a_fresh_clone_with_the_schema(conn: psycopg.Connection):
    assert conn.execute("select count(*) from users").fetchone() == (0,)
    conn.execute("insert into users (login) values ('alice')")


def test_clones_do_not_share_rows(conn: psycopg.Connection):
    assert conn.execute("select count(*) from users where login = 'alice'").fetchone() == (0,)


def test_app_role_is_not_a_superuser_and_has_no_admin_rights(app_conn: psycopg.Connection):
    row = app_conn.execute(
        "select current_user, rolsuper, pg_has_role(current_user, 'usersync_admin', 'member')"
        "  from pg_roles where rolname = current_user").fetchone()
    assert row == (harness.APP_ROLE, False, False)


def test_admin_role_is_a_member_of_usersync_admin(admin_conn: psycopg.Connection):
    row = admin_conn.execute(
        "select rolsuper, pg_has_role(current_user, 'usersync_admin', 'member')"
        "  from pg_roles where rolname = current_user").fetchone()
    assert row == (False, True)


def test_the_server_is_the_postgresql_version_asked_for(pg_server: harness.Server):
    asked = os.environ.get("USERSYNC_TEST_PG")
    if not asked:
        pytest.skip("no version asked for (make test PG=N sets USERSYNC_TEST_PG)")
    assert pg_server.version.split(".")[0] == asked
