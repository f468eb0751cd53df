"""The lifecycle never touches application data: downgrade, uninstall and reinstall keep every
application table, column and row; destructive commands ask first."""

from __future__ import annotations

from collections.abc import Callable

import psycopg
import pytest
from typer.testing import CliRunner

from pyapp import cli, examples, migrate
from pyapp.config import Database

runner = CliRunner()


@pytest.fixture
def installed(new_database: Callable[[], Database]) -> Database:
    """A database with usersync installed, a mapping, two pairs and a plain contact."""
    db = new_database()
    migrate.upgrade(db)
    with psycopg.connect(db.conninfo, autocommit=True) as conn:
        examples.create_and_attach(conn)
        conn.execute("insert into users (login, first_name, sync_to_contact) values ('a', 'A', true), ('b', 'B', true)")
        conn.execute("insert into contacts (first_name) values ('plain')")
    return db


def _application_data(db: Database) -> tuple:
    with psycopg.connect(db.conninfo) as conn:
        return (conn.execute("select id, login, first_name, sync_to_contact from users order by id").fetchall(),
                conn.execute("select id, first_name from contacts order by id").fetchall())


def _usersync_objects(db: Database) -> tuple:
    with psycopg.connect(db.conninfo) as conn:
        return conn.execute("""
            select (select count(*) from pg_namespace where nspname = 'usersync'),
                   (select count(*) from pg_trigger where tgname like 'usersync%%'),
                   (select count(*) from pg_event_trigger where evtname like 'usersync%%'),
                   (select count(*) from pg_policy where polname = 'usersync_engine'),
                   (select count(*) from information_schema.role_table_grants where grantee = 'usersync_engine'),
                   (select count(*) from pg_class where relname = 'usersync_alembic_version')""").fetchone()


def test_downgrade_to_base_keeps_the_application_tables_and_rows(installed: Database):
    data = _application_data(installed)
    migrate.downgrade(installed, "base")
    assert _application_data(installed) == data
    assert _usersync_objects(installed)[:4] == (0, 0, 0, 0)
    migrate.upgrade(installed)
    assert _application_data(installed) == data


def test_uninstall_removes_every_object_of_usersync_and_no_application_data(installed: Database):
    data = _application_data(installed)
    result = runner.invoke(cli.app, ["uninstall", "--yes", "--database-url", installed.conninfo])
    assert result.exit_code == 0, result.output
    assert _usersync_objects(installed) == (0, 0, 0, 0, 0, 0)
    assert _application_data(installed) == data
    with psycopg.connect(installed.conninfo, autocommit=True) as conn:  # plain tables again
        conn.execute("update contacts set first_name = 'edited'")
        conn.execute("delete from users")
    # A reinstall after an uninstall works, and attaches the same tables again.
    result = runner.invoke(cli.app, ["db", "upgrade", "--database-url", installed.conninfo])
    assert result.exit_code == 0, result.output
    with psycopg.connect(installed.conninfo, autocommit=True) as conn:
        examples.create_and_attach(conn)
        conn.execute("insert into users (login, sync_to_contact) values ('c', true)")
        assert conn.execute("select count(*) from usersync.synchronized_contacts").fetchone() == (1,)


def test_destructive_commands_refuse_without_a_terminal_or_yes(installed: Database):
    # (below 0004 usersync is uninstalled: the pairs of 0004 have no shape in 0001-0003)
    for args in (["uninstall"], ["db", "downgrade", "base"], ["db", "downgrade", "0003"], ["db", "downgrade", "-4"]):
        result = runner.invoke(cli.app, [*args, "--database-url", installed.conninfo])
        assert result.exit_code == 2, (args, result.output)
        assert "without --yes" in result.stderr and "2 links" in result.stderr and "1 pair" in result.stderr
    assert _usersync_objects(installed)[0] == 1
    with psycopg.connect(installed.conninfo) as conn:
        assert conn.execute("select count(*) from usersync.links").fetchone() == (2,)


def test_a_confirmation_on_a_terminal_can_say_no(installed: Database, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setattr(cli, "interactive", lambda: True)
    result = runner.invoke(cli.app, ["uninstall", "--database-url", installed.conninfo], input="n\n")
    assert result.exit_code == 1 and "Continue?" in result.output
    assert _usersync_objects(installed)[0] == 1


def test_upgrade_after_drop_schema_cascade_installs_again(installed: Database):
    data = _application_data(installed)
    with psycopg.connect(installed.conninfo, autocommit=True) as conn:
        conn.execute("drop schema usersync cascade")
        conn.execute("insert into users (login, sync_to_contact) values ('during', true)")  # no trigger left
    migrate.upgrade(installed)
    assert _usersync_objects(installed)[:3] == (1, 0, 5)  # installed, nothing attached yet
    with psycopg.connect(installed.conninfo, autocommit=True) as conn:
        conn.execute("delete from contacts")  # (the links went with the schema: start the pair afresh)
        examples.create_and_attach(conn)
    assert _usersync_objects(installed)[:3] == (1, 9, 5)
    assert _application_data(installed)[0] == data[0] + [(3, 'during', None, True)]
