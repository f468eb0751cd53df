"""Migrations: reversible, reproducible, and never drifting from the SQL definition in sql/."""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import Callable

import psycopg
import pytest

from pyapp import migrate, schema
from pyapp.config import Database
from schema_snapshot import snapshot


@pytest.fixture
def migrated(new_database: Callable[[], Database]) -> Database:
    db = new_database()
    migrate.upgrade(db)
    return db


def _snapshot(db: Database) -> dict:
    with psycopg.connect(db.conninfo) as conn:
        return snapshot(conn)


def test_migrations_produce_the_same_schema_as_the_sql_definition(migrated: Database, new_database):
    direct = new_database()
    with psycopg.connect(direct.conninfo, autocommit=True) as conn:
        conn.execute(schema.full_schema_sql())
    assert _snapshot(direct) == _snapshot(migrated)


def test_the_sql_definition_installs_idempotently(migrated: Database):
    before = _snapshot(migrated)
    with psycopg.connect(migrated.conninfo, autocommit=True) as conn:
        conn.execute(schema.full_schema_sql())
    assert _snapshot(migrated) == before


def test_upgrade_downgrade_upgrade_leaves_a_working_database(migrated: Database):
    database = migrated
    before = _snapshot(database)
    migrate.downgrade(database, "base")
    assert migrate.current(database) is None
    with psycopg.connect(database.conninfo) as conn:  # the application's tables stay
        assert conn.execute("select to_regnamespace('usersync'), to_regclass('public.users')::text").fetchone() == (
            None, "users")
    migrate.upgrade(database)
    assert _snapshot(database) == before
    with psycopg.connect(database.conninfo, autocommit=True) as conn:
        conn.execute("insert into users (login) values ('after-roundtrip')")
        assert conn.execute("select count(*) from users").fetchone() == (1,)


def test_offline_sql_applied_by_a_dba_gives_the_migrated_schema(migrated: Database, new_database):
    empty_database = new_database()
    script = migrate.upgrade_sql()
    assert "create table if not exists public.users" in script
    psql = shutil.which("psql")
    if psql:
        subprocess.run([psql, "-X", "-q", "-v", "ON_ERROR_STOP=1", "-d", empty_database.conninfo],
                       input=script, text=True, check=True, capture_output=True)
    else:
        with psycopg.connect(empty_database.conninfo, autocommit=True) as conn:
            conn.execute(script)
    assert _snapshot(empty_database) == _snapshot(migrated)
    assert migrate.current(empty_database) == migrate.current(migrated)


def test_a_released_migration_refuses_an_edited_frozen_file(tmp_path):
    frozen = tmp_path / "0001_x.sql"
    frozen.write_text("select 1;")
    with pytest.raises(RuntimeError, match="must not change"):
        migrate.frozen_sql(str(tmp_path / "0001_x.py"), "0001_x.sql", sha256="0" * 64)
