"""Many pairs in one database, one schema per tenant (docs/scaling.md): each tenant's writes,
mapping and DDL concern its own pair only. bench/pairs.py measures 1,000 of them."""

from __future__ import annotations

import psycopg
import pytest
from helpers import one

TENANTS = 20
TENANT = """create schema {s};
create table {s}.users (id bigint generated always as identity primary key, login text not null unique,
                        first_name text, email text, sw boolean not null default true);
create table {s}.contacts (id bigint generated always as identity primary key, first_name text, email text);
select usersync.attach('{s}.users', '{s}.contacts', 'sw', pair => '{s}');"""


@pytest.fixture
def tenants(conn: psycopg.Connection) -> list[str]:
    names = [f"tenant{i}" for i in range(TENANTS)]
    for s in names:
        conn.execute(TENANT.format(s=s))
        conn.execute(f"insert into {s}.users (login, first_name) values ('a', %s), ('b', %s)", [s, s])
    return names


def _code_versions(conn: psycopg.Connection) -> dict[str, str]:
    """Each generated function's row version: unchanged unless the function was written."""
    return dict(conn.execute("select proname, xmin::text from pg_proc where pronamespace = 'usersync'::regnamespace"
                             " and proname ~ '^_g[0-9]+_'").fetchall())


def test_each_tenants_pair_keeps_its_own_rows_and_mapping(tenants, conn, admin_conn):
    for s in tenants:
        assert conn.execute(f"select first_name from {s}.contacts").fetchall() == [(s,), (s,)]
    admin_conn.execute("update usersync.field_mapping set user_field = 'login'"
                       " where pair = 'tenant3' and contact_field = 'email'")
    assert conn.execute("select pair, count(*) from usersync.synchronized_contacts where not up_to_date"
                        " group by pair").fetchall() == [("tenant3", 2)]
    admin_conn.execute("call usersync.resync_all(pair => 'tenant3')")
    assert one(conn, "select count(*) from tenant3.contacts where email in ('a', 'b')") == 2
    assert one(conn, "select count(*) from tenant4.contacts where email is not null") == 0
    assert admin_conn.execute("select * from usersync.doctor()").fetchall() == []


@pytest.mark.guard  # (the DDL guard regenerates)
def test_ddl_on_one_tenants_table_regenerates_that_pair_only(tenants, conn):
    before = _code_versions(conn)
    conn.execute("alter table tenant7.contacts add column note text")
    after = _code_versions(conn)
    pid = one(conn, "select id from usersync.attachments where pair = 'tenant7'")
    changed = {name for name in after if after[name] != before.get(name)}
    assert changed and all(name.startswith(f"_g{pid}_") for name in changed)
