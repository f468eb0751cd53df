"""The example tables of the help article (a Users and a Contacts module), for the demo and the
tests. They are the application's tables, not usersync's: usersync attaches to them like to any
other pair of tables, and never creates, alters or drops them."""

from __future__ import annotations

from importlib import resources

import psycopg
from psycopg.rows import tuple_row

PAIR = "contacts"


def example_tables_sql() -> str:
    return resources.files("pyapp").joinpath("examples.sql").read_text(encoding="utf-8")


def create_and_attach(conn: psycopg.Connection) -> str:
    """Create public.users and public.contacts (when missing) and attach them as a pair."""
    with conn.cursor(row_factory=tuple_row) as cur:  # (whatever rows the connection makes)
        cur.execute(example_tables_sql())
        attached = cur.execute("select pair from usersync.attachments"
                               " where contacts = 'public.contacts'::regclass").fetchone()
        if attached:
            return str(attached[0])
        row = cur.execute(
            "select usersync.attach('public.users', 'public.contacts', switch_column => 'sync_to_contact')").fetchone()
    assert row is not None
    return str(row[0])
