"""`usersync db …` and `usersync demo` against the real server."""

from __future__ import annotations

import json

import psycopg
import psycopg.conninfo
from typer.testing import CliRunner

import harness
from pyapp import cli, migrate
from pyapp.config import Database

runner = CliRunner()


def _fresh(pg_server: harness.Server) -> tuple[Database, object]:
    name = pg_server.next_dbname("t")
    janitor = pg_server.janitor(name)
    janitor.init()
    return Database(pg_server.conninfo(name), "cli test"), janitor


def test_db_upgrade_current_downgrade_through_the_cli(pg_server: harness.Server):
    db, janitor = _fresh(pg_server)
    try:
        url = db.sqlalchemy_url  # the SQLAlchemy form is accepted as well as libpq's
        result = runner.invoke(cli.app, ["db", "current", "--database-url", url])
        assert result.exit_code == 0 and result.stdout.strip() == "base"
        result = runner.invoke(cli.app, ["db", "upgrade", "--database-url", url])
        assert result.exit_code == 0, result.output
        result = runner.invoke(cli.app, ["db", "current"], env={"DATABASE_URL": db.conninfo})
        assert result.stdout.strip() == migrate.current(db) != "base"
        result = runner.invoke(cli.app, ["db", "downgrade", "base", "--yes", "--database-url", url])
        assert result.exit_code == 0, result.output
        assert migrate.current(db) is None
    finally:
        janitor.drop()


def test_db_upgrade_sql_prints_the_script_without_a_database():
    result = runner.invoke(cli.app, ["db", "upgrade", "--sql"], env={"DATABASE_URL": ""})
    assert result.exit_code == 0
    assert "create schema if not exists usersync" in result.stdout
    assert result.stdout.rstrip().endswith("COMMIT;")


def test_demo_runs_to_the_end_on_a_given_database(pg_server: harness.Server):
    db, janitor = _fresh(pg_server)
    try:
        with_password = psycopg.conninfo.make_conninfo(db.conninfo, password="s3cret-demo")  # trust ignores it
        result = runner.invoke(cli.app, ["demo", "--database-url", with_password])
        assert result.exit_code == 0, result.output
        story = result.stdout
        for line in ("usersync.attach('public.users', 'public.contacts'", "refused, US001", "refused, US002",
                     "resync: 2 pairs synced", "Explore the same database"):
            assert line in story
        assert "s3cret-demo" not in result.output  # the demo prints no password
        # A second run refuses: the database now holds data.
        again = runner.invoke(cli.app, ["demo", "--database-url", db.conninfo])
        assert again.exit_code == 1 and "already holds data" in again.stderr
        with psycopg.connect(db.conninfo) as conn:
            assert conn.execute("select to_regnamespace('usersync') is not null").fetchone() == (True,)
            # The demo created the example tables and attached them as the pair "contacts".
            assert conn.execute("select pair, users::text, contacts::text, switch_column::text"
                                " from usersync.pairs").fetchall() == [("contacts", "users", "contacts",
                                                                        "sync_to_contact")]
    finally:
        janitor.drop()


def test_a_freshly_installed_database_has_no_pair_until_one_is_attached(new_database):
    url = new_database().conninfo
    assert runner.invoke(cli.app, ["db", "upgrade", "--database-url", url]).exit_code == 0
    result = runner.invoke(cli.app, ["status", "--database-url", url])
    assert result.exit_code == 1 and "no pair attached: run usersync attach USERS CONTACTS" in result.stderr
    with psycopg.connect(url, autocommit=True) as conn:
        assert conn.execute("select to_regclass('public.users')").fetchone() == (None,)  # the install made none
        conn.execute("create table public.users (id bigint generated always as identity primary key, name text)")
        conn.execute("create table public.contacts (id uuid primary key default gen_random_uuid(), name text)")
        conn.execute("insert into public.users (name) values ('Ann')")
    result = runner.invoke(cli.app, ["attach", "users", "contacts", "--database-url", url])
    assert result.exit_code == 0 and "attached pair contacts: users → contacts, 1 contact synchronized" in result.stdout
    result = runner.invoke(cli.app, ["status", "--json", "--database-url", url])
    assert result.exit_code == 0 and json.loads(result.stdout)["pairs"] == 1
    result = runner.invoke(cli.app, ["sync", "1", "--database-url", url])  # an integer-looking id, a bigint key
    assert result.exit_code == 0 and result.stdout == "synchronized 1 user\n", result.output


def test_the_demo_refuses_a_database_with_other_pairs_attached(new_database):
    db = new_database()
    migrate.upgrade(db)
    with psycopg.connect(db.conninfo, autocommit=True) as conn:
        conn.execute("create table staff (id bigint generated always as identity primary key, name text)")
        conn.execute("create table cards (id bigint generated always as identity primary key, name text)")
        conn.execute("select usersync.attach('staff', 'cards')")
    result = runner.invoke(cli.app, ["demo", "--database-url", db.conninfo])
    assert result.exit_code == 1 and "already has pairs attached (cards)" in result.stderr, result.output
    with psycopg.connect(db.conninfo) as conn:
        assert conn.execute("select to_regclass('public.users')").fetchone() == (None,)


def test_alembic_upgrade_head_works_from_the_repository_root(pg_server: harness.Server):
    import os
    import subprocess
    import sys
    from pathlib import Path

    db, janitor = _fresh(pg_server)
    try:
        alembic = Path(sys.executable).parent / "alembic"
        root = Path(__file__).resolve().parent.parent
        env = {**os.environ, "DATABASE_URL": db.conninfo}
        subprocess.run([str(alembic), "upgrade", "head"], cwd=root, env=env, check=True, capture_output=True)
        assert migrate.current(db) is not None
    finally:
        janitor.drop()


def test_every_command_on_a_database_without_usersync_says_it_is_not_installed(new_database):
    url = new_database().conninfo
    for args in (["status"], ["fields"], ["mapping", "show"], ["mapping", "clear", "--yes"], ["settings", "show"],
                 ["sync"], ["resync"], ["direction", "1", "user"], ["pairs"], ["attach", "users", "contacts"],
                 ["attach", "users", "contacts", "--dry-run"], ["detach", "contacts", "--yes"],
                 ["status", "--pair", "contacts"]):
        result = runner.invoke(cli.app, [*args, "--database-url", url])
        assert result.exit_code == 1, (args, result.output)
        assert "usersync is not installed" in result.stderr and "usersync db upgrade" in result.stderr
        assert "42P01" not in result.output and "does not exist" not in result.output
    for args in (["uninstall", "--yes"], ["db", "downgrade", "base", "--yes"]):
        result = runner.invoke(cli.app, [*args, "--database-url", url])
        assert result.exit_code == 1 and "usersync is not installed" in result.stderr, (args, result.output)


def test_db_upgrade_as_a_role_without_createrole_says_what_is_needed(pg_server: harness.Server, new_database):
    dbname = psycopg.conninfo.conninfo_to_dict(new_database().conninfo)["dbname"]
    url = pg_server.conninfo(dbname, user=harness.OWNER_ROLE, password=harness.ROLE_PASSWORD)
    result = runner.invoke(cli.app, ["db", "upgrade", "--database-url", url])
    assert result.exit_code == 1, result.output
    assert "needs a superuser, or the database owner with CREATEROLE" in result.stderr and "roles" in result.stderr
    assert "Traceback" not in result.output


def test_db_upgrade_as_the_database_owner_with_createrole_installs_and_says_the_guard_is_off(
        pg_server: harness.Server, new_database):
    dbname = psycopg.conninfo.conninfo_to_dict(new_database().conninfo)["dbname"]
    with psycopg.connect(pg_server.conninfo(), autocommit=True) as su:
        su.execute(f"alter database {dbname} owner to {harness.INSTALLER_ROLE}")
        su.execute(f"grant usersync_engine, usersync_admin to {harness.INSTALLER_ROLE} with admin option")
    url = pg_server.conninfo(dbname, user=harness.INSTALLER_ROLE, password=harness.ROLE_PASSWORD)
    result = runner.invoke(cli.app, ["db", "upgrade", "--database-url", url])
    assert result.exit_code == 0, result.output
    assert "installed without the DDL guard" in result.stderr


def test_an_unknown_revision_is_named_and_the_known_ones_listed(new_database):
    url = new_database().conninfo
    for args in (["db", "upgrade", "0099", "--database-url", url], ["db", "upgrade", "0099", "--sql"]):
        result = runner.invoke(cli.app, args)
        assert result.exit_code == 1, (args, result.output)
        assert "unknown revision '0099'" in result.stderr and ", ".join(migrate.revisions()) in result.stderr
        assert "Traceback" not in result.output
    runner.invoke(cli.app, ["db", "upgrade", "--database-url", url])
    result = runner.invoke(cli.app, ["db", "downgrade", "0099", "--database-url", url])
    assert result.exit_code == 1 and "unknown revision '0099'" in result.stderr, result.output
