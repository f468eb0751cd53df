"""`usersync demo`: the help article's story, told with real SQL against a real server.

It installs usersync, creates the example tables public.users and public.contacts
(pyapp/examples.sql: the application's tables, not usersync's) and attaches them as the pair
"contacts", then writes to them as any application would."""

from __future__ import annotations

import os
from typing import Any

import psycopg
from psycopg.rows import dict_row
from rich.console import Console
from rich.syntax import Syntax
from rich.table import Table

from pyapp import admin, config, errors, examples, migrate, progress, server

DEMO_DB = "usersync_demo"


class DemoRefused(errors.UsersyncError):
    """The given database already holds data; the demo does not touch it."""


def _demo_database(database_url: str | None) -> config.Database:
    if database_url or os.environ.get(config.ENV_VAR):
        db = config.resolve(database_url)
        _refuse_if_in_use(db)
        return db
    # The embedded server's demo database is the demo's own: every run starts from a clean one.
    local = server.start(server.default_datadir(), keep=True)
    with psycopg.connect(local.conninfo(), autocommit=True) as conn:
        conn.execute(f'drop database if exists "{DEMO_DB}" with (force)')
        conn.execute(f'create database "{DEMO_DB}"')
    return config.Database(local.conninfo(dbname=DEMO_DB), "embedded server")


def _refuse_if_in_use(db: config.Database) -> None:
    with psycopg.connect(db.conninfo, connect_timeout=5) as conn:
        if conn.execute("select to_regclass('usersync.attachments') is not null").fetchone() == (True,):
            attached = [r[0] for r in conn.execute("select pair from usersync.attachments order by pair")]
            if attached and attached != [examples.PAIR]:
                raise DemoRefused(
                    f"{db.describe()} already has pairs attached ({', '.join(attached)}); the demo only runs on an "
                    "empty database",
                    hint="Point --database-url at a new, empty database, or run without DATABASE_URL "
                         "to use the embedded server.")
        for table in ("public.users", "public.contacts"):
            exists = conn.execute("select to_regclass(%s) is not null", [table]).fetchone()
            if exists and exists[0] and conn.execute(f"select exists (select from {table})").fetchone() != (False,):
                raise DemoRefused(
                    f"{db.describe()} already holds data in {table}; the demo only runs on an empty database",
                    hint="Point --database-url at a new, empty database, or run without DATABASE_URL "
                         "to use the embedded server.")


def heading(console: Console, title: str) -> None:
    """A rule across a terminal; piped (no width to fill), a plain line."""
    if console.is_terminal:
        console.rule(title, align="left")
    else:
        console.print(f"── {title}", highlight=False)


class Story:
    def __init__(self, conn: psycopg.Connection, console: Console) -> None:
        self.conn = conn
        self.console = console
        self.step_no = 0

    def step(self, title: str, text: str = "") -> None:
        self.step_no += 1
        self.console.print()
        heading(self.console, f"[bold]{self.step_no}. {title}[/bold]")
        if text:
            self.console.print(text)

    def sql(self, statement: str, params: Any = None) -> list[dict[str, Any]]:
        self.console.print(Syntax(statement.strip(), "sql", theme="ansi_dark", word_wrap=True))
        with self.conn.cursor(row_factory=dict_row) as cur:
            cur.execute(statement, params)
            return cur.fetchall() if cur.description else []

    def show(self, statement: str, title: str | None = None) -> None:
        rows = self.sql(statement)
        table = Table(title=title, title_justify="left")
        for col in rows[0] if rows else []:
            table.add_column(col)
        for row in rows:
            table.add_row(*("" if v is None else str(v) for v in row.values()))
        self.console.print(table if rows else "[dim](no rows)[/dim]")

    def refused(self, statement: str) -> None:
        try:
            with errors.translated():
                self.sql(statement)
        except errors.UsersyncError as exc:
            self.console.print(f"[red]refused, {exc.sqlstate}:[/red] {exc.message}", highlight=False)
            self.console.print(f"[yellow]hint:[/yellow] {exc.hint}", highlight=False)
        else:
            raise AssertionError(f"the engine accepted: {statement}")


ATTACH = "select usersync.attach('public.users', 'public.contacts', switch_column => 'sync_to_contact')"

CONTACTS = "select c.id, c.title, c.first_name, c.last_name, c.email, c.phone,\n" \
           "       s.user_id is not null as user_contact\n" \
           "  from contacts c left join usersync.synchronized_contacts s on s.contact_id = c.id::text order by c.id"


def run(database_url: str | None, console: Console) -> None:
    db = _demo_database(database_url)
    heading(console, f"usersync demo on {db.describe()}")
    migrate.upgrade(db)
    with admin.connect(db) as conn:
        version = conn.execute("show server_version").fetchone()
        console.print(f"PostgreSQL {version['server_version'] if version else '?'}, "
                      f"usersync schema at revision {migrate.current(db)}")
        s = Story(conn, console)

        s.step("Attach usersync to the application's tables",
               "public.users and public.contacts are the example tables of pyapp/examples.sql; usersync "
               "attaches to them,\nmaps their same-named fields, and never alters their columns or rows.")
        console.print(Syntax(ATTACH, "sql", theme="ansi_dark", word_wrap=True))
        with psycopg.connect(db.conninfo, autocommit=True) as plain:
            examples.create_and_attach(plain)
        s.show("select pair, users, contacts, user_key, contact_key, switch_column from usersync.pairs")

        s.step("Create users with \"Synchronize user to contact module\" switched on",
               "Any application writing to the database gets the behaviour: these are plain INSERTs.")
        s.sql("""insert into users (login, first_name, last_name, academic_title, email, phone, sync_to_contact)
values ('ada', 'Ada', 'Lovelace', 'Countess', 'ada@example.org', '+44 1', true),
       ('alan', 'Alan', 'Turing', 'Dr.', 'alan@example.org', '+44 2', true),
       ('grace', 'Grace', 'Hopper', 'Rear Admiral', 'grace@example.org', '+1 3', false)""")
        s.show("select id, login, first_name, last_name, academic_title, email, sync_to_contact from users order by id")

        s.step("The contacts appeared, in the same transaction",
               "user_contact marks the \"profile icon\". Grace's switch is off: no contact for her.")
        s.show(CONTACTS)

        s.step("Edit a user: the contact follows")
        s.sql("update users set email = 'ada.lovelace@example.org' where login = 'ada'")
        s.show(CONTACTS)

        s.step("Try to edit the synchronized contact in the Contacts module")
        s.refused("update contacts set email = 'hacked@example.org' where first_name = 'Ada'")

        s.step("Map \"Academic title\" (Users) to \"Title\" (Contacts)",
               "A mapping change reaches existing contacts only when the sync runs again.")
        s.sql("insert into usersync.field_mapping (user_field, contact_field) values ('academic_title', 'title')")
        s.show("select count(*) filter (where not up_to_date) as stale, count(*) as pairs"
               " from usersync.synchronized_contacts")

        s.step("\"Update all synchronized users\"")
        report = progress.run_resync(conn, 1, console, console)
        console.print(f"resync: {progress.count(report.synced, 'pair')} synced in "
                      f"{progress.count(report.batches, 'batch', 'batches')}, {report.changed} changed, "
                      f"{report.failed} failed")
        s.show(CONTACTS)

        s.step("Reverse the direction for Alan: the contact becomes the data source")
        s.sql("select usersync.set_sync_source((select id from users where login = 'alan'), 'contact')")
        s.sql("update contacts set phone = '+44 20 7946 0000' where first_name = 'Alan'")
        s.show("select id, login, first_name, phone from users where login = 'alan'")
        s.refused("update users set phone = '+44 0' where login = 'alan'")

        s.step("Delete a user with \"Delete contact when user is deleted\" off (the default)")
        s.sql("delete from users where login = 'ada'")
        s.show(CONTACTS, "Ada's contact stays, unlinked and editable")

        s.step("Switch Grace on, then delete her with the toggle on")
        s.sql("update users set sync_to_contact = true where login = 'grace'")
        s.sql("update usersync.settings set delete_contact_with_user = true")
        s.sql("delete from users where login = 'grace'")
        s.show(CONTACTS, "Grace's contact went with her")

    console.print()
    console.print(f"Explore the same database with: [bold]psql '{db.shareable_conninfo()}'[/bold]", highlight=False)
