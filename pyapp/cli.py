"""The `usersync` command line: migrations, the demo, and (later) the admin actions."""

from __future__ import annotations

import sys
from typing import Annotated

import psycopg
import typer
from rich.console import Console

from pyapp import config, migrate

app = typer.Typer(
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    help="usersync: Users → Contacts sync in PostgreSQL",
)
db_app = typer.Typer(no_args_is_help=True, help="Schema migrations (Alembic).")
app.add_typer(db_app, name="db")

err = Console(stderr=True)
out = Console()

DatabaseUrl = Annotated[
    str | None,
    typer.Option("--database-url", help="postgresql://… (default: $DATABASE_URL, else the embedded local server)"),
]


class Failure(Exception):
    """A failure the user can fix: printed as a message, exit code 1, never a traceback."""


def _resolve(database_url: str | None) -> config.Database:
    try:
        return config.resolve(database_url)
    except (psycopg.Error, RuntimeError, LookupError) as exc:
        raise Failure(str(exc)) from exc


@db_app.command("upgrade")
def db_upgrade(
    revision: Annotated[str, typer.Argument(help="target revision")] = "head",
    sql: Annotated[bool, typer.Option("--sql", help="print the SQL instead of running it (for psql)")] = False,
    database_url: DatabaseUrl = None,
) -> None:
    """Apply migrations up to REVISION (default: head)."""
    if sql:
        sys.stdout.write(migrate.upgrade_sql(revision))
        return
    db = _resolve(database_url)
    migrate.upgrade(db, revision)
    err.print(f"upgraded {db.describe()} to {migrate.current(db)}")


@db_app.command("downgrade")
def db_downgrade(
    revision: Annotated[str, typer.Argument(help="target revision, e.g. -1 or base")],
    database_url: DatabaseUrl = None,
) -> None:
    """Revert migrations down to REVISION."""
    db = _resolve(database_url)
    migrate.downgrade(db, revision)
    err.print(f"downgraded {db.describe()} to {migrate.current(db) or 'base'}")


@db_app.command("current")
def db_current(database_url: DatabaseUrl = None) -> None:
    """Print the revision the database is at ('base' when none)."""
    db = _resolve(database_url)
    out.print(migrate.current(db) or "base")


@app.command("demo")
def demo(database_url: DatabaseUrl = None) -> None:
    """Tell the help article's story against a real database."""
    from pyapp import demo as demo_module

    demo_module.run(database_url, out)


def main() -> None:
    try:
        app()
    except Failure as exc:
        err.print(f"[red]error:[/red] {exc}")
        sys.exit(1)
    except psycopg.OperationalError as exc:
        err.print(f"[red]cannot reach the database:[/red] {exc}".rstrip())
        sys.exit(1)
