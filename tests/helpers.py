"""Assertions shared by the engine tests."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import psycopg
import pytest
from psycopg import sql


@contextmanager
def raises_sqlstate(sqlstate: str, match: str | None = None) -> Iterator[pytest.ExceptionInfo[psycopg.Error]]:
    """The statement fails with this SQLSTATE, and (for the engine's own codes) a DETAIL or HINT."""
    with pytest.raises(psycopg.Error) as info:
        yield info
    err = info.value
    assert err.sqlstate == sqlstate, f"expected {sqlstate}, got {err.sqlstate}: {err}"
    if match is not None:
        assert match in str(err.diag.message_primary), err.diag.message_primary
    if sqlstate.startswith("US"):
        assert err.diag.message_hint, f"{sqlstate} without a HINT: {err}"


def one(conn: psycopg.Connection, query: str, params: Any = None) -> Any:
    row = conn.execute(query, params).fetchone()
    assert row is not None
    return row[0] if len(row) == 1 else row


def add_user(conn: psycopg.Connection, login: str, sync: bool = True, **fields: Any) -> int:
    cols = ["login", "sync_to_contact", *fields]
    query = sql.SQL("insert into users ({}) values ({}) returning id").format(
        sql.SQL(", ").join(map(sql.Identifier, cols)), sql.SQL(", ").join(sql.Placeholder() * len(cols)))
    return one(conn, query, [login, sync, *fields.values()])


def contact_id(conn: psycopg.Connection, user_id: int) -> int | None:
    row = conn.execute("select contact_id from usersync.links_1 where user_id = %s and active", [user_id]).fetchone()
    return row[0] if row else None


def contact(conn: psycopg.Connection, cid: int) -> dict[str, Any]:
    with conn.cursor(row_factory=psycopg.rows.dict_row) as cur:
        row = cur.execute("select * from contacts where id = %s", [cid]).fetchone()
    assert row is not None, f"contact {cid} does not exist"
    return row


def mismatches(conn: psycopg.Connection) -> list[tuple[Any, ...]]:
    """Pairs that break the invariant: every linked contact equals its source through the mapping.

    User-sourced: each contact field is the mapped user field (cast to the contact's type) or NULL
    (an unmapped NOT NULL field with a default keeps whatever it holds).
    Contact-sourced: each mapped user field equals the contact field.
    """
    mapping = dict(conn.execute("select contact_field, user_field from usersync.field_mapping").fetchall())
    cfields = conn.execute(
        "select field, data_type from usersync.metadata_fields where module = 'contacts'"
        " and not (not_null and has_default and field not in (select contact_field from usersync.field_mapping))"
        " order by position").fetchall()
    ufields = dict(conn.execute(
        "select field, data_type from usersync.metadata_fields where module = 'users'").fetchall())
    checks = []
    for field, ctype in cfields:
        if field in mapping:
            checks.append(sql.SQL("c.{} is not distinct from cast(u.{} as {})").format(
                sql.Identifier(field), sql.Identifier(mapping[field]), sql.SQL(ctype)))
        else:
            checks.append(sql.SQL("c.{} is null").format(sql.Identifier(field)))
    user_sourced = sql.SQL(
        "select l.user_id, l.contact_id, 'user' from usersync.links_1 l"
        " join users u on u.id = l.user_id left join contacts c on c.id = l.contact_id"
        " where l.active and l.source = 'user' and (c.id is null or not ({}))").format(sql.SQL(" and ").join(checks))
    rows = conn.execute(user_sourced).fetchall()
    back = [sql.SQL("u.{} is not distinct from cast(c.{} as {})").format(
        sql.Identifier(uf), sql.Identifier(cf), sql.SQL(ufields[uf])) for cf, uf in mapping.items()]
    if back:
        reversed_ = sql.SQL(
            "select l.user_id, l.contact_id, 'contact' from usersync.links_1 l"
            " join users u on u.id = l.user_id left join contacts c on c.id = l.contact_id"
            " where l.active and l.source = 'contact' and (c.id is null or not ({}))").format(
                sql.SQL(" and ").join(back))
        rows += conn.execute(reversed_).fetchall()
    return rows


def broken_pairs(conn: psycopg.Connection) -> list[tuple[Any, ...]]:
    """Pairs that break the invariant (mismatches), and links whose user or contact row is gone."""
    dangling = conn.execute(
        "select l.user_id, l.contact_id, 'dangling' from usersync.links_1 l"
        " where l.active and (not exists (select from public.users u where u.id = l.user_id)"
        "                     or not exists (select from public.contacts c where c.id = l.contact_id))").fetchall()
    return mismatches(conn) + dangling


def refused_or_done(conn: psycopg.Connection, statement: str, params: Any = None) -> bool:
    """Runs DDL of an attacker: False when refused (US005, or PostgreSQL's own 55000, or its 0A000
    for retyping a user key, named in the WHEN of the engine's rekey trigger, or for making the
    users table an inheritance child or a partition, which a row trigger with transition tables
    prevents), True when it went through (the test then checks nothing was broken)."""
    try:
        conn.execute(statement, params)
    except psycopg.Error as err:
        assert err.sqlstate in ("US005", "55000") or (
            err.sqlstate == "0A000" and ("used in a trigger definition" in str(err)
                                         or "prevents table" in str(err))), \
            f"expected a refusal (US005), got {err.sqlstate}: {err}"
        return False
    return True
