"""The three shapes of application tables the behaviour tests run on (issue #10, section 7).

- example:  the help article's tables (pyapp/examples.sql): bigint identity keys, a switch.
- profiles: Supabase's pattern: auth.users (uuid key, gen_random_uuid()) feeding public.profiles,
            whose key is the user's (shared key) and references it ON DELETE CASCADE; row-level
            security on both tables; no switch (every user is synchronized).
- quoted:   mixed-case, quoted names with spaces in two schemas, text keys: "HR"."Employee" feeding
            crm."Contact Card", whose varchar key has a default.

A shape names its tables and columns by the logical names the tests use (first_name, email,
academic_title on users; title, first_name, email, notes on contacts), so one test runs on all.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from typing import Any

import psycopg
from psycopg import sql

import harness


@dataclass(frozen=True)
class Shape:
    name: str
    users: str            # qualified, quoted: ready for SQL
    contacts: str
    user_key: str         # column names, unquoted
    contact_key: str
    switch: str | None
    shared_key: bool
    user_cols: dict[str, str] = field(default_factory=dict)     # logical -> column
    contact_cols: dict[str, str] = field(default_factory=dict)
    ddl: str = ""
    rls: bool = False

    # -- names -----------------------------------------------------------------------------------
    def u(self, logical: str) -> sql.Identifier:
        return sql.Identifier(self.user_cols.get(logical, logical))

    def c(self, logical: str) -> sql.Identifier:
        return sql.Identifier(self.contact_cols.get(logical, logical))

    @property
    def users_sql(self) -> sql.Composable:
        return sql.SQL(self.users)

    @property
    def contacts_sql(self) -> sql.Composable:
        return sql.SQL(self.contacts)

    @property
    def pair(self) -> str:
        return "contacts" if self.name == "example" else self.name

    def links(self, conn: psycopg.Connection) -> sql.Composable:
        row = conn.execute("select id from usersync.attachments where pair = %s", [self.pair]).fetchone()
        assert row, f"pair {self.pair} is not attached"
        return sql.SQL("usersync.{}").format(sql.Identifier(f"links_{row[0]}"))

    # -- set-up ------------------------------------------------------------------------------------
    def attach(self, conn: psycopg.Connection) -> None:
        """Create the tables (as their owner would) and attach them, in the test's database."""
        if self.name == "example":
            return  # the template database has them attached already
        conn.execute(self.ddl)
        conn.execute("select usersync.attach(%s::regclass, %s::regclass, %s, %s, %s)",
                     [self.users, self.contacts, self.switch, self.shared_key, self.pair])
        for table in (self.users, self.contacts):
            conn.execute(sql.SQL("grant select, insert, update, delete, truncate on {} to {}, {}").format(
                sql.SQL(table), sql.Identifier(harness.APP_ROLE), sql.Identifier(harness.ADMIN_ROLE)))
        conn.execute(sql.SQL("grant usage on schema {} to {}, {}").format(
            sql.SQL(", ").join(sql.Identifier(s) for s in self.schemas),
            sql.Identifier(harness.APP_ROLE), sql.Identifier(harness.ADMIN_ROLE)))

    @property
    def schemas(self) -> list[str]:
        return {"profiles": ["auth", "public"], "quoted": ["HR", "crm"]}.get(self.name, ["public"])

    # -- rows ----------------------------------------------------------------------------------------
    def new_key(self) -> Any:
        return f"E-{uuid.uuid4().hex[:8]} ü" if self.name == "quoted" else None

    def add_user(self, conn: psycopg.Connection, login: str, sync: bool = True, **fields: Any) -> Any:
        cols: list[sql.Composable] = [self.u("login")]
        vals: list[Any] = [login]
        if self.switch:
            cols.append(sql.Identifier(self.switch))
            vals.append(sync)
        key = self.new_key()
        if key is not None:
            cols.append(sql.Identifier(self.user_key))
            vals.append(key)
        for logical, value in fields.items():
            cols.append(self.u(logical))
            vals.append(value)
        row = conn.execute(sql.SQL("insert into {} ({}) values ({}) returning {}").format(
            self.users_sql, sql.SQL(", ").join(cols), sql.SQL(", ").join(sql.Placeholder() * len(cols)),
            sql.Identifier(self.user_key)), vals).fetchone()
        assert row is not None
        return row[0]

    def contact_of(self, conn: psycopg.Connection, user_key: Any) -> Any:
        row = conn.execute(sql.SQL("select contact_id from {} where user_id = %s and active").format(self.links(conn)),
                           [user_key]).fetchone()
        return row[0] if row else None

    def contact(self, conn: psycopg.Connection, contact_key: Any) -> dict[str, Any]:
        logical = ("title", "first_name", "email", "notes")
        row = conn.execute(sql.SQL("select {} from {} where {} = %s").format(
            sql.SQL(", ").join(self.c(f) for f in logical), self.contacts_sql, sql.Identifier(self.contact_key)),
            [contact_key]).fetchone()
        assert row is not None, f"contact {contact_key} does not exist"
        return dict(zip(logical, row, strict=True))


EXAMPLE = Shape("example", "public.users", "public.contacts", "id", "id", "sync_to_contact", False)

PROFILES = Shape(
    "profiles", "auth.users", "public.profiles", "id", "id", None, True, rls=True,
    ddl="""
        create schema if not exists auth;
        create table auth.users (
            id uuid primary key default gen_random_uuid(),
            login text not null unique,
            first_name text, email text, academic_title text);
        create table public.profiles (
            id uuid primary key references auth.users (id) on delete cascade,
            title text, first_name text, email text, notes text,
            updated_at timestamptz not null default now());
        -- Supabase enables row-level security on its tables; the application sees its own rows.
        alter table auth.users enable row level security;
        alter table public.profiles enable row level security;
        create policy app on auth.users using (true) with check (true);
        create policy app on public.profiles using (true) with check (true);
    """)

QUOTED = Shape(
    "quoted", '"HR"."Employee"', 'crm."Contact Card"', "Emp Key", "Card-ID", "Sync?", False,
    user_cols={"login": "Login", "first_name": "First Name", "email": "E-mail", "academic_title": "Title"},
    contact_cols={"title": "Salutation", "first_name": "First Name", "email": "E-mail", "notes": "Notes"},
    ddl="""
        create schema "HR";
        create schema crm;
        create table "HR"."Employee" (
            "Emp Key" text primary key,
            "Login" text not null unique,
            "First Name" text, "E-mail" text, "Title" text,
            "Sync?" boolean not null default false);
        create table crm."Contact Card" (
            "Card-ID" varchar(60) primary key default ('c-' || gen_random_uuid()),
            "Salutation" text, "First Name" text, "E-mail" text, "Notes" text);
    """)

SHAPES = (EXAMPLE, PROFILES, QUOTED)


def mapping_of(shape: Shape, pairs: list[tuple[str, str]]) -> list[tuple[str, str]]:
    """Logical (user field, contact field) pairs as the shape's column names."""
    return [(shape.user_cols.get(u, u), shape.contact_cols.get(c, c)) for u, c in pairs]


def set_mapping(conn: psycopg.Connection, shape: Shape, pairs: list[tuple[str, str]]) -> None:
    conn.execute("delete from usersync.field_mapping where pair = %s", [shape.pair])
    for uf, cf in mapping_of(shape, pairs):
        conn.execute("insert into usersync.field_mapping (pair, user_field, contact_field) values (%s, %s, %s)",
                     [shape.pair, uf, cf])
