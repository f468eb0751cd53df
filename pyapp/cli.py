"""The `usersync` command line: a thin shell over pyapp.admin (the engine does the work).

Exit codes: 0 success; 1 a failure the user can fix (the server's message and hint are printed,
never a traceback); 2 a usage error; 130 interrupted (Ctrl-C).
"""

from __future__ import annotations

import contextlib
import datetime
import json
import os
import re
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Annotated, Any, NoReturn

import psycopg
import sqlalchemy.exc
import typer
from alembic.script.revision import ResolutionError, RevisionError
from alembic.util import CommandError
from rich.console import Console
from rich.table import Table
from rich.text import Text
from typer.core import TyperGroup

from pyapp import __version__, admin, config, errors, migrate, progress, server
from pyapp.progress import count


class UsersyncGroup(TyperGroup):
    """Ctrl-C and a reader that went away (`| head`) end a command quietly, never in a traceback."""

    def invoke(self, ctx: typer.Context) -> Any:
        try:
            return super().invoke(ctx)
        except KeyboardInterrupt:
            err.print("interrupted")
            raise typer.Exit(130) from None
        except BrokenPipeError:
            silence_stdout()
            raise typer.Exit(0) from None


def silence_stdout() -> None:
    """Send what is left of the output to /dev/null: the reader (head, less) has gone."""
    with contextlib.suppress(OSError, ValueError):  # not a real file (a test runner's buffer)
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())


app = typer.Typer(
    cls=UsersyncGroup,
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    context_settings={"help_option_names": ["-h", "--help"]},
    help="usersync: keeps the Contacts module synchronized from the Users module, inside PostgreSQL.",
)
db_app = typer.Typer(no_args_is_help=True, help="Schema migrations (Alembic).")
mapping_app = typer.Typer(no_args_is_help=True, help="The field mapping (which user field fills which contact field).")
settings_app = typer.Typer(no_args_is_help=True, help="Delete behaviour.")
app.add_typer(db_app, name="db")
app.add_typer(mapping_app, name="mapping")
app.add_typer(settings_app, name="settings")

PIPED_WIDTH = 100_000


class Output(Console):
    """Standard output. Piped or redirected, it has no width to fit: lines and table cells are never
    wrapped or cut. A reader that stops reading (`usersync status | head -1`) is not an error."""

    def __init__(self) -> None:
        super().__init__()
        if not self.is_terminal:
            self.width = PIPED_WIDTH

    def on_broken_pipe(self) -> None:  # Rich's default exits 1
        self.quiet = True
        silence_stdout()
        raise typer.Exit(0)


out = Output()  # made again for each invocation (main_options): stdout may have changed
err = Console(stderr=True, soft_wrap=True)  # messages stay on one line, for grep and logs


def check_database_url(value: str | None) -> str | None:
    if value is None:
        return None
    if not value.strip():
        raise typer.BadParameter("is empty: give a postgresql:// URL, or leave the option out "
                                 f"to use ${config.ENV_VAR} or the embedded server")
    try:
        config.to_conninfo(value)
    except (config.UnsupportedDatabaseUrl, psycopg.ProgrammingError) as exc:
        raise typer.BadParameter(str(exc)) from exc
    return value


DatabaseUrl = Annotated[
    str | None,
    typer.Option("--database-url", callback=check_database_url,
                 help="postgresql://… (default: $DATABASE_URL, else the embedded local server)"),
]
Json = Annotated[bool, typer.Option("--json", help="machine-readable output")]
Yes = Annotated[bool, typer.Option("--yes", help="do not ask for confirmation (for scripts)")]


root_database_url: str | None = None  # `usersync --database-url URL COMMAND`, set by main_options


def show_version(value: bool) -> None:
    if value:
        sys.stdout.write(f"usersync {__version__}\n")
        raise typer.Exit()


@app.callback()
def main_options(
    database_url: DatabaseUrl = None,
    version: Annotated[bool, typer.Option("--version", callback=show_version, is_eager=True,
                                          help="print the version and exit")] = False,
) -> None:
    global out, root_database_url
    out = Output()
    root_database_url = database_url


def resolve(database_url: str | None) -> config.Database:
    """The command's --database-url, else the one given before the command, else the default."""
    return config.resolve(database_url or root_database_url)


# The engine's hints name SQL; where the CLI has a command for it, the CLI names the command.
CLI_HINTS = [
    (r"SELECT field FROM usersync\.metadata_fields WHERE module = '[^']*'", "usersync fields"),
    (r"UPDATE usersync\.field_mapping SET contact_field = \.\.\. WHERE user_field = '([^']*)'",
     r"usersync mapping set \1 CONTACT_FIELD"),
    (r"DELETE FROM usersync\.field_mapping WHERE user_field = '([^']*)'", r"usersync mapping remove \1"),
    (r"(?:SELECT )?usersync\.set_sync_source\((\w+), 'user'\)", r"usersync direction \1 user"),
    (r"\(usersync\.field_mapping\)", "(usersync mapping set)"),
    (r"DROP SCHEMA usersync CASCADE", "usersync uninstall"),
]


def cli_hint(hint: str) -> str:
    for pattern, replacement in CLI_HINTS:
        hint = re.sub(pattern, replacement, hint)
    return hint


def fail(message: str, *, sqlstate: str | None = None, detail: str | None = None, hint: str | None = None,
         code: int = 1) -> NoReturn:
    err.print(f"[red]error{f' {sqlstate}' if sqlstate else ''}:[/red] {message}", highlight=False)
    if detail:
        err.print(f"[dim]detail:[/dim] {detail}", highlight=False)
    if hint:
        err.print(f"[yellow]hint:[/yellow] {cli_hint(hint)}", highlight=False)
    raise typer.Exit(code)


def driver_error(exc: BaseException) -> psycopg.Error | None:
    """The psycopg error, also from inside SQLAlchemy's wrapper (Alembic's connection)."""
    error = exc.orig if isinstance(exc, sqlalchemy.exc.DBAPIError) else exc
    return error if isinstance(error, psycopg.Error) else None


NOT_UP_TO_DATE = ("usersync is missing objects this CLI uses: see `usersync db current`, "
                  "then install or upgrade with `usersync db upgrade`")


@contextmanager
def failures() -> Iterator[None]:
    """Turn the errors a user can act on into a message and exit code 1 (2 for a DATABASE_URL that is
    not PostgreSQL's)."""
    try:
        yield
    except typer.Exit:
        raise
    except errors.UsersyncError as exc:
        fail(exc.message, sqlstate=exc.sqlstate, detail=exc.detail, hint=exc.hint)
    except config.UnsupportedDatabaseUrl as exc:
        fail(f"{config.ENV_VAR}: {exc}", code=2)
    except psycopg.OperationalError as exc:
        err.print(f"[red]cannot reach the database:[/red] {str(exc).strip()}", highlight=False)
        raise typer.Exit(1) from exc
    except (psycopg.Error, sqlalchemy.exc.DBAPIError) as exc:
        error = driver_error(exc)
        if error is None:
            raise
        hint = error.diag.message_hint
        if error.sqlstate in ("42P01", "42883") and not hint:  # undefined table or function
            hint = NOT_UP_TO_DATE
        fail(error.diag.message_primary or str(error), sqlstate=error.sqlstate, hint=hint)
    except (CommandError, RevisionError) as exc:
        unknown = exc if isinstance(exc, ResolutionError) else exc.__cause__
        fail(f"unknown revision {unknown.argument!r}" if isinstance(unknown, ResolutionError) else str(exc),
             hint=f"the known revisions are {', '.join(migrate.revisions())} (oldest first); "
                  "head, base and relative steps such as -1 work too")
    except (LookupError, server.EmbeddedServerUnavailable) as exc:
        fail(str(exc))


def require_installed(conn: psycopg.Connection, db: config.Database) -> None:
    row = conn.execute("select to_regnamespace('usersync') is not null as installed").fetchone()
    if not (row and row["installed"]):
        raise errors.UsersyncError(f"usersync is not installed in {db.describe()}",
                                   hint="install it with: usersync db upgrade (as a superuser)")


@contextmanager
def connection(database_url: str | None) -> Iterator[psycopg.Connection]:
    with failures():
        db = resolve(database_url)
        with admin.connect(db) as conn:
            require_installed(conn, db)
            yield conn


def interactive() -> bool:
    return sys.stdin.isatty()


def confirm(action: str, loses: dict[str, int], yes: bool) -> None:
    """A destructive action asks on a terminal; without one it needs --yes (exit 2)."""
    if yes:
        return
    what = ", ".join(count(n, name.removesuffix("s"), name) for name, n in loses.items()) or "the engine"
    if not interactive():
        err.print(f"[red]refusing to {action} without --yes:[/red] it would remove {what}", highlight=False)
        raise typer.Exit(2)
    try:
        agreed = typer.confirm(f"{action} removes {what}. Continue?", default=False)
    except typer.Abort as exc:  # Ctrl-C or end of input at the prompt
        err.print("nothing changed")
        raise typer.Exit(130 if isinstance(exc.__context__, KeyboardInterrupt) else 1) from None
    if not agreed:
        err.print("nothing changed")
        raise typer.Exit(1)


def json_value(value: Any) -> Any:
    if isinstance(value, (datetime.date, datetime.time)):
        return value.isoformat()
    return str(value)


def emit_json(data: Any) -> None:
    sys.stdout.write(json.dumps(data, default=json_value, indent=2) + "\n")


def table(title: str | None, rows: list[dict[str, Any]], columns: list[str] | None = None) -> Table:
    columns = columns or (list(rows[0]) if rows else [])
    t = Table(title=title, title_justify="left")
    for c in columns:
        t.add_column(c)
    for r in rows:
        # Cells are data (a contact's value may hold "[/b]"), never Rich markup.
        t.add_row(*(Text("" if r.get(c) is None else str(r.get(c))) for c in columns))
    return t


# --- db -----------------------------------------------------------------------------------------

@db_app.command("upgrade")
def db_upgrade(
    revision: Annotated[str, typer.Argument(help="target revision")] = "head",
    sql: Annotated[bool, typer.Option("--sql", help="print the SQL instead of running it (for psql)")] = False,
    database_url: DatabaseUrl = None,
) -> None:
    """Apply migrations up to REVISION (default: head). Installing and upgrading need a superuser."""
    with failures():
        if sql:
            sys.stdout.write(migrate.upgrade_sql(revision))
            return
        db = resolve(database_url)
        try:
            migrate.upgrade(db, revision)
        except (psycopg.Error, sqlalchemy.exc.DBAPIError) as exc:
            error = driver_error(exc)
            if error is not None and error.sqlstate == "42501" and not is_superuser(db):
                fail("installing or upgrading usersync needs a superuser: it creates the roles usersync_engine "
                     "and usersync_admin and event triggers", detail=error.diag.message_primary,
                     hint="connect as a superuser (such as postgres), or print the script with "
                          "`usersync db upgrade --sql` for a superuser to run with psql")
            raise
        err.print(f"upgraded {db.describe()} to {migrate.current(db)}")


def is_superuser(db: config.Database) -> bool:
    with psycopg.connect(db.conninfo) as conn:
        return conn.execute("select rolsuper from pg_roles where rolname = current_user").fetchone() == (True,)


# ignore_unknown_options: a relative revision such as -1 is an argument, not an option.
@db_app.command("downgrade", context_settings={"ignore_unknown_options": True})
def db_downgrade(
    revision: Annotated[str, typer.Argument(help="target revision, e.g. -1 or base")],
    database_url: DatabaseUrl = None,
    yes: Yes = False,
) -> None:
    """Revert migrations down to REVISION. Application tables and rows are never removed; a
    downgrade that removes usersync's configuration asks first."""
    with failures():
        db = resolve(database_url)
        if migrate.current(db) is None:
            fail(f"usersync is not installed in {db.describe()}: nothing to downgrade",
                 hint="install it with: usersync db upgrade (as a superuser)")
        if migrate.downgrade_loses_configuration(db, revision):
            confirm(f"downgrading to {revision}", migrate.configuration(db), yes)
        migrate.downgrade(db, revision)
        err.print(f"downgraded {db.describe()} to {migrate.current(db) or 'base'}")


@db_app.command("current")
def db_current(database_url: DatabaseUrl = None) -> None:
    """Print the revision the database is at ('base' when none)."""
    with failures():
        try:
            revision = migrate.current(resolve(database_url))
        except psycopg.errors.InsufficientPrivilege as exc:
            fail(f"cannot read the installed revision: {exc.diag.message_primary}", sqlstate=exc.sqlstate,
                 hint=f"the revision is in public.{migrate.VERSION_TABLE}, which the role that installed usersync "
                      "(a superuser) can read: run `usersync db current` as that role")
        out.print(revision or "base")


@app.command("uninstall")
def uninstall(database_url: DatabaseUrl = None, yes: Yes = False) -> None:
    """Remove usersync from the database: its schema, triggers, policy, grants and version table.
    Every application table, column and row stays."""
    with failures():
        db = resolve(database_url)
        with psycopg.connect(db.conninfo) as conn:
            installed = conn.execute("select to_regnamespace('usersync') is not null"
                                     f" or to_regclass('public.{migrate.VERSION_TABLE}') is not null").fetchone()
        if installed != (True,):
            fail(f"usersync is not installed in {db.describe()}: nothing to remove")
        confirm("uninstalling usersync", migrate.configuration(db), yes)
        migrate.uninstall(db)
        err.print(f"usersync removed from {db.describe()}; reinstall with: usersync db upgrade")


# --- read commands ------------------------------------------------------------------------------

@app.command("status")
def status(database_url: DatabaseUrl = None, as_json: Json = False) -> None:
    """Pairs synced, stale, failed, reversed; the delete toggles; the server."""
    with connection(database_url) as conn:
        st = admin.status(conn)
    if as_json:
        emit_json(st)
        return
    s = st["server"]
    out.print(f"[bold]{s['database']}[/bold] on PostgreSQL {s['version']} (mapping version {s['mapping_version']})")
    out.print(table(None, [{"pairs": st["pairs"], "up to date": st["pairs"] - st["stale"], "stale": st["stale"],
                            "failed": st["failed"], "reversed": st["reversed"]}]))
    for name, value in st["settings"].items():
        out.print(f"{name.replace('_', ' ')}: {'on' if value else 'off'}")
    if st["stale"]:
        out.print("[yellow]The mapping changed since some pairs were synced: run `usersync resync`.[/yellow]")


@app.command("fields")
def fields(database_url: DatabaseUrl = None, as_json: Json = False) -> None:
    """The metadata fields of both modules, with labels and types."""
    with connection(database_url) as conn:
        rows = admin.fields(conn)
    if as_json:
        emit_json(rows)
        return
    out.print(table("Metadata fields", rows, ["module", "field", "label", "data_type"]))


# --- mapping --------------------------------------------------------------------------------------

@mapping_app.command("show")
def mapping_show(database_url: DatabaseUrl = None, as_json: Json = False) -> None:
    """The two columns side by side, as on the admin screen."""
    with connection(database_url) as conn:
        screen = admin.mapping_screen(conn)
    if as_json:
        emit_json(screen)
        return
    t = Table(title="Field mapping", title_justify="left")
    t.add_column("Users module")
    t.add_column("")
    t.add_column("Contacts module")
    for p in screen["mapped"]:
        t.add_row(f"{p['user_label']} ({p['user_field']})", "→", f"{p['contact_label']} ({p['contact_field']})")
    for f in screen["empty_contact_fields"]:
        t.add_row("", "", Text(f"{f['label']} ({f['field']}): stays empty", style="dim"))
    for f in screen["default_contact_fields"]:
        t.add_row("", "", Text(f"{f['label']} ({f['field']}): gets its default (NOT NULL)", style="dim"))
    for f in screen["unfillable_contact_fields"]:
        t.add_row("", "", Text(f"{f['label']} ({f['field']}): NOT NULL, no default: map a field to it",
                               style="red"))
    out.print(t)
    for f in screen["unfillable_contact_fields"]:
        err.print(f"[red]warning:[/red] contact field {f['field']} cannot be NULL and has no default: creating a "
                  f"contact fails until a user field is mapped to it (usersync mapping set USER_FIELD {f['field']})",
                  highlight=False)
    if screen["unmapped_user_fields"]:
        names = ", ".join(f["field"] for f in screen["unmapped_user_fields"])
        out.print(f"[dim]User fields not transferred: {names}[/dim]")


@mapping_app.command("set")
def mapping_set(user_field: str, contact_field: str, database_url: DatabaseUrl = None) -> None:
    """Map USER_FIELD to CONTACT_FIELD (replaces USER_FIELD's earlier target)."""
    with connection(database_url) as conn:
        admin.set_mapping(conn, user_field, contact_field)
    err.print(f"mapped {user_field} → {contact_field}; existing contacts change on the next `usersync resync`")


@mapping_app.command("remove")
def mapping_remove(user_field: str, database_url: DatabaseUrl = None) -> None:
    """Delete the mapping of USER_FIELD (its contact field stays empty from the next sync)."""
    with connection(database_url) as conn:
        admin.remove_mapping(conn, user_field)
    err.print(f"removed the mapping of {user_field}")


@mapping_app.command("clear")
def mapping_clear(database_url: DatabaseUrl = None, yes: Yes = False) -> None:
    """Delete every mapping (asks first)."""
    with connection(database_url) as conn:
        if mapped := len(admin.mapping(conn)):
            confirm("clearing the mapping", {"mapping rows": mapped}, yes)
        n = admin.clear_mapping(conn)
    err.print(f"removed {count(n, 'mapping')}")


@mapping_app.command("reset")
def mapping_reset(database_url: DatabaseUrl = None, yes: Yes = False) -> None:
    """Restore the default: every field both modules have (asks first)."""
    with connection(database_url) as conn:
        if mapped := len(admin.mapping(conn)):
            confirm("resetting the mapping to the default", {"mapping rows": mapped}, yes)
        n = admin.reset_mapping(conn)
    err.print(f"restored the default mapping ({count(n, 'field')})")


# --- settings ---------------------------------------------------------------------------------------

@settings_app.command("show")
def settings_show(database_url: DatabaseUrl = None, as_json: Json = False) -> None:
    """The delete toggles."""
    with connection(database_url) as conn:
        st = admin.settings(conn)
    if as_json:
        emit_json(st)
        return
    for name, value in st.items():
        out.print(f"{name.replace('_', '-')}: {'on' if value else 'off'}")


@settings_app.command("set")
def settings_set(
    name: Annotated[str, typer.Argument(help="delete-contact-with-user or delete-user-with-contact")],
    value: Annotated[str, typer.Argument(help="on or off")],
    database_url: DatabaseUrl = None,
) -> None:
    """Switch a delete toggle on or off."""
    key = name.replace("-", "_")
    if key not in admin.SETTINGS:
        raise typer.BadParameter(
            f"unknown setting {name!r}; one of: delete-contact-with-user, delete-user-with-contact")
    if value.lower() not in ("on", "off", "true", "false"):
        raise typer.BadParameter("the value is on or off")
    with connection(database_url) as conn:
        admin.set_setting(conn, key, value.lower() in ("on", "true"))
    err.print(f"{name}: {value.lower()}")


# --- actions -------------------------------------------------------------------------------------------

@app.command("sync")
def sync(
    user_ids: Annotated[
        list[int] | None, typer.Argument(help="user ids (default: every user whose switch is on)")
    ] = None,
    database_url: DatabaseUrl = None,
    as_json: Json = False,
) -> None:
    """"Synchronize users": sync (and repair) the given users' contacts."""
    with connection(database_url) as conn:
        n = admin.sync_users(conn, user_ids)
    if as_json:
        emit_json({"synced": n})
    else:
        out.print(f"synchronized {count(n, 'user')}")


@app.command("resync")
def resync(
    batch_size: Annotated[int, typer.Option("--batch-size", min=1, max=2**31 - 1,  # the SQL takes an integer
                                            help="pairs per committed batch")] = 1000,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="change nothing; show what would change")] = False,
    database_url: DatabaseUrl = None,
    as_json: Json = False,
) -> None:
    """"Update all synchronized users": re-apply the mapping to every pair. Ctrl-C stops after the
    current batch; running it again continues."""
    with connection(database_url) as conn:
        if dry_run:
            preview = admin.preview_resync(conn)
            if as_json:
                emit_json(preview)
                return
            out.print(f"{preview['would_change']} of {count(preview['pairs'], 'synchronized contact')} would change, "
                      f"{preview['would_fail']} would fail ({preview['stale']} stale); nothing was changed.")
            failing = [c for c in preview["changes"] if "error" in c]
            changing = [c for c in preview["changes"] if "error" not in c]
            if failing:
                out.print("would fail (the run records these in sync_errors and goes on):")
            for f in failing:
                out.print(f"  user {f['user_id']} → contact {f['contact_id']}: {f['field']} "
                          f"{f['sqlstate']} {f['error']}", markup=False, highlight=False)
            if changing:
                out.print(table("Examples", changing, ["user_id", "contact_id", "field", "from", "to"]))
            return
        report = progress.run_resync(conn, batch_size, out, err, quiet=as_json)
    if as_json:
        emit_json(report.as_dict())
    else:
        out.print(f"synced {report.synced} of {count(report.total, 'pair')}: {report.changed} changed, "
                  f"{report.unchanged} unchanged, {report.failed} failed")
        for f in report.failures:
            out.print(f"  user {f['user_id']} → contact {f['contact_id']}: {f['field'] or ''} "
                      f"{f['sqlstate']} {f['message']}", markup=False, highlight=False)
    if not report.done:  # Ctrl-C: the batch in flight committed, the run stopped there
        err.print("[yellow]stopped after the current batch: run `usersync resync` again to continue[/yellow]")
        raise typer.Exit(130)


@app.command("direction")
def direction(
    user_id: int,
    source: Annotated[str, typer.Argument(help="user (the default direction) or contact (reversed)")],
    database_url: DatabaseUrl = None,
) -> None:
    """Reverse a pair (contact) or restore it (user)."""
    with connection(database_url) as conn:
        admin.set_direction(conn, user_id, source)
    err.print(f"user {user_id}: the {source} is now the data source")


@app.command("demo")
def demo(database_url: DatabaseUrl = None) -> None:
    """Tell the help article's story against a real database."""
    from pyapp import demo as demo_module

    with failures():
        demo_module.run(database_url or root_database_url, out)


def main() -> None:
    app()
