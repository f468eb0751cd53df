"""`usersync demo`: the help article's story, told with real SQL against a real server."""

from __future__ import annotations

import psycopg
from rich.console import Console
from rich.table import Table

from pyapp import config, migrate, server

DEMO_DB = "usersync_demo"


def _demo_database(database_url: str | None) -> config.Database:
    if database_url or config.os.environ.get(config.ENV_VAR):
        return config.resolve(database_url)
    # The embedded server's demo database is ours: start each run from a clean one.
    local = server.start(server.default_datadir(), keep=True)
    with psycopg.connect(local.conninfo(), autocommit=True) as conn:
        conn.execute(f'drop database if exists "{DEMO_DB}" with (force)')
        conn.execute(f'create database "{DEMO_DB}"')
    return config.Database(local.conninfo(dbname=DEMO_DB), "embedded server")


def show(console: Console, title: str, cur: psycopg.Cursor) -> None:
    table = Table(title=title, title_justify="left")
    for col in cur.description or []:
        table.add_column(col.name)
    for row in cur.fetchall():
        table.add_row(*("" if v is None else str(v) for v in row))
    console.print(table)


def run(database_url: str | None, console: Console) -> None:
    db = _demo_database(database_url)
    console.rule(f"usersync demo on {db.describe()}")
    migrate.upgrade(db)
    with psycopg.connect(db.conninfo, autocommit=True) as conn:
        version = conn.execute("show server_version").fetchone()
        console.print(f"PostgreSQL {version[0] if version else '?'}; schema at revision {migrate.current(db)}")
        show(console, "The two modules and their metadata fields", conn.execute(
            """select c.relname as module, a.attname as field, format_type(a.atttypid, a.atttypmod) as type,
                      col_description(c.oid, a.attnum) as label
                 from pg_class c join pg_attribute a on a.attrelid = c.oid
                where c.oid in ('public.users'::regclass, 'public.contacts'::regclass)
                  and a.attnum > 0 and not a.attisdropped
                order by c.relname desc, a.attnum"""))
    console.print(f"\nExplore the same database with: [bold]psql '{db.conninfo}'[/bold]")
