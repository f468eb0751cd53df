"""pg_dump and pg_restore of a database with usersync give a working engine, nothing twice."""

from __future__ import annotations

import subprocess
from collections.abc import Callable

import psycopg
import pytest
from helpers import mismatches, one, raises_sqlstate

import harness
from pyapp import examples, migrate
from pyapp.config import Database


def test_a_dump_restored_into_an_empty_database_keeps_the_pairs_and_the_engine(
        pg_server: harness.Server, new_database: Callable[[], Database], tmp_path):
    pg_dump, pg_restore = harness.client_tool(pg_server, "pg_dump"), harness.client_tool(pg_server, "pg_restore")
    if pg_dump is None or pg_restore is None:
        pytest.skip(f"no pg_dump/pg_restore of PostgreSQL {pg_server.version} on this machine")
    source, target = new_database(), new_database()
    migrate.upgrade(source)
    with psycopg.connect(source.conninfo, autocommit=True) as conn:
        examples.create_and_attach(conn)
        conn.execute("insert into users (login, first_name, sync_to_contact)"
                     " select 'u' || g, 'U' || g, true from generate_series(1, 5) g")
        conn.execute("insert into usersync.field_mapping values ('academic_title', 'title')")
        conn.execute("update usersync.settings set delete_contact_with_user = true")
        conn.execute("select usersync.set_sync_source(2, 'contact')")
    dump = tmp_path / "usersync.dump"
    subprocess.run([str(pg_dump), "-Fc", "-f", str(dump), "-d", source.conninfo], check=True, capture_output=True)
    subprocess.run([str(pg_restore), "-d", target.conninfo, "--exit-on-error", str(dump)],
                   check=True, capture_output=True)
    with psycopg.connect(target.conninfo, autocommit=True) as conn:
        assert one(conn, "select count(*) from usersync.links_1 where active") == 5
        assert one(conn, "select count(*) from usersync.field_mapping") == 8
        assert one(conn, "select delete_contact_with_user from usersync.settings") is True
        assert one(conn, "select count(*) from pg_trigger where tgname like 'usersync%%'") == 9
        assert one(conn, "select count(*) from pg_event_trigger where evtname like 'usersync%%'") == 5
        assert one(conn, "select count(*) from pg_policy where polname = 'usersync_engine'") == 2
        conn.execute("update users set academic_title = 'Dr' where id = 1")
        assert one(conn, "select title from contacts c join usersync.links_1 l on l.contact_id = c.id"
                         " where l.user_id = 1") == "Dr"
        with raises_sqlstate("US002"):
            conn.execute("update users set first_name = 'x' where id = 2")
        with raises_sqlstate("US005"):
            conn.execute("drop table contacts")
        conn.execute("insert into users (login, sync_to_contact) values ('new', true)")
        assert mismatches(conn) == []


def test_a_dump_by_the_non_superuser_installer_restores_as_that_role(
        pg_server: harness.Server, new_database: Callable[[], Database], tmp_path):
    pg_dump, pg_restore = harness.client_tool(pg_server, "pg_dump"), harness.client_tool(pg_server, "pg_restore")
    if pg_dump is None or pg_restore is None:
        pytest.skip(f"no pg_dump/pg_restore of PostgreSQL {pg_server.version} on this machine")
    role = harness.INSTALLER_ROLE
    dbs = []
    with psycopg.connect(pg_server.conninfo(), autocommit=True) as su:
        # (the roles exist on this server: a DBA grants them as docs/install.md says)
        su.execute(f"grant usersync_engine, usersync_admin to {role} with admin option")
        for _ in range(2):
            db = new_database()
            name = psycopg.conninfo.conninfo_to_dict(db.conninfo)["dbname"]
            su.execute(f"alter database {name} owner to {role}")
            dbs.append(pg_server.conninfo(name, user=role, password=harness.ROLE_PASSWORD))
    source, target = dbs
    migrate.upgrade(Database(source, "installer's source"))
    with psycopg.connect(source, autocommit=True) as conn:
        examples.create_and_attach(conn)
        conn.execute("insert into users (login, first_name, sync_to_contact) values ('a', 'Ann', true)")
    dump = tmp_path / "usersync.dump"
    subprocess.run([str(pg_dump), "-Fc", "-f", str(dump), "-d", source], check=True, capture_output=True)
    # As docs/install.md says for a role that is not a superuser: --no-owner (it may not give
    # functions to usersync_engine before the schema's grants are restored), then repair.
    restored = subprocess.run([str(pg_restore), "-d", target, "--no-owner", "--exit-on-error", str(dump)],
                              capture_output=True, text=True)
    assert restored.returncode == 0, restored.stderr
    with psycopg.connect(target, autocommit=True) as conn:
        assert "function usersync._generate(text) is not owned by usersync_engine" in [
            r[1] for r in conn.execute("select * from usersync.doctor()")]
        conn.execute("select usersync.repair()")
        assert one(conn, "select count(*) from usersync.links where active") == 1
        assert [r[1] for r in conn.execute("select * from usersync.doctor()")] == [
            "the DDL guard is off: no event trigger of usersync exists"]
        conn.execute("update users set first_name = 'Anna'")
        assert one(conn, "select first_name from contacts") == "Anna"
        with raises_sqlstate("US001"):
            conn.execute("update contacts set first_name = 'x'")
        conn.execute("insert into users (login, sync_to_contact) values ('new', true)")
        assert mismatches(conn) == []
