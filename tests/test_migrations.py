"""Migrations: reversible, reproducible, and never drifting from the SQL definition in sql/."""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import Callable

import psycopg
import pytest

from pyapp import examples, migrate, schema
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


def test_an_install_creates_nothing_outside_its_schema(migrated: Database):
    with psycopg.connect(migrated.conninfo) as conn:
        assert conn.execute("select count(*) from pg_class c join pg_namespace n on n.oid = c.relnamespace"
                            " where n.nspname = 'public' and c.relname not like %s",
                            [migrate.VERSION_TABLE + "%%"]).fetchone() == (0,)


def test_upgrading_a_released_install_gives_the_schema_of_a_fresh_install_with_its_tables_attached(
        new_database: Callable[[], Database]):
    released = new_database()
    migrate.upgrade(released, "0002")  # usersync 0.1, which created public.users and public.contacts itself
    migrate.upgrade(released)
    fresh = new_database()
    migrate.upgrade(fresh)
    with psycopg.connect(fresh.conninfo, autocommit=True) as conn:
        examples.create_and_attach(conn)
        # 0.1 counted its first mapping as two changes (version 3, not 2); the generated code
        # carries the version, so the fresh pair is put on the same one to compare.
        with psycopg.connect(released.conninfo) as old:
            version = old.execute("select version, synced_version from usersync.mapping_state").fetchone()
        conn.execute("update usersync.mapping_state set version = %s, synced_version = %s", version)
        conn.execute("select usersync._generate('contacts')")
    assert _snapshot(released) == _snapshot(fresh)


def test_upgrade_downgrade_upgrade_keeps_the_application_tables_and_rows(migrated: Database):
    database = migrated
    with psycopg.connect(database.conninfo, autocommit=True) as conn:
        examples.create_and_attach(conn)
        conn.execute("insert into users (login, sync_to_contact) values ('kept', true)")
    before = _snapshot(database)
    migrate.downgrade(database, "base")
    assert migrate.current(database) is None
    with psycopg.connect(database.conninfo) as conn:  # the application's tables stay, with their rows
        assert conn.execute("select to_regnamespace('usersync'), (select count(*) from users),"
                            " (select count(*) from contacts),"
                            " (select count(*) from pg_trigger where tgname like 'usersync%%')").fetchone() == (
            None, 1, 1, 0)
    migrate.upgrade(database)
    with psycopg.connect(database.conninfo, autocommit=True) as conn:
        conn.execute("delete from contacts")  # (an uninstall forgets the links: start the pair afresh)
        examples.create_and_attach(conn)
        conn.execute("insert into users (login, sync_to_contact) values ('after-roundtrip', true)")
        assert conn.execute("select count(*) from contacts").fetchone() == (2,)
    assert {k: v for k, v in _snapshot(database).items() if not k.startswith("rows of")} == {
        k: v for k, v in before.items() if not k.startswith("rows of")}


def test_offline_sql_applied_by_a_dba_gives_the_migrated_schema(migrated: Database, new_database):
    empty_database = new_database()
    script = migrate.upgrade_sql()
    assert "public.users" not in script  # a fresh install creates nothing outside its schema
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
