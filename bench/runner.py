"""Running measurements on the harness's server: fresh databases cloned from one template per
variant, wall-clock timing of whole statements (commit included), medians over repeats."""

from __future__ import annotations

import statistics
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import psycopg
import psycopg.sql

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
import harness
from bench import variants
from pyapp import examples, migrate
from pyapp.config import Database

# The role the uuid shape's application writes as: not a superuser and not the tables' owner, so
# row-level security applies to it, through the permissive policy Supabase gives `authenticated`.
UUID_ROLE = harness.APP_ROLE


@dataclass
class Sample:
    times: list[float] = field(default_factory=list)
    timed_out: bool = False  # a repeat hit the cap: times hold what was measured before, a lower bound

    @property
    def median(self) -> float:
        return statistics.median(self.times)

    @property
    def spread(self) -> float:
        """(max - min) / median: how much the repeats disagree."""
        return (max(self.times) - min(self.times)) / self.median if self.median else 0.0


class Bench:
    def __init__(self, server: harness.Server) -> None:
        self.server = server
        self.templates: dict[str, str] = {}

    def template(self, variant: str) -> str:
        if variant not in self.templates:
            name = self.server.next_dbname("tmpl")
            janitor = self.server.janitor(name, as_template=True)
            janitor.init()
            if variant.startswith("uuid-"):
                self._uuid_template(name, variant)
            elif variant == "usersync":
                migrate.upgrade(Database(self.server.conninfo(name), "bench"))
                with psycopg.connect(self.server.conninfo(name), autocommit=True) as conn:
                    examples.create_and_attach(conn)  # the tables the other variants get, attached
            else:
                with psycopg.connect(self.server.conninfo(name), autocommit=True) as conn:
                    conn.execute(variants.modules_sql())
                    conn.execute(variants.HAND_TRIGGER if variant == "hand" else variants.LINK_TABLE)
            self.templates[variant] = name
        return self.templates[variant]

    def _uuid_template(self, name: str, variant: str) -> None:
        """Supabase's tables, with the application's role and its policies; attached, with the
        hand-written trigger, or bare."""
        harness.ensure_test_roles(self.server)
        if variant == "uuid-usersync":
            migrate.upgrade(Database(self.server.conninfo(name), "bench"))
        with psycopg.connect(self.server.conninfo(name), autocommit=True) as conn:
            conn.execute(variants.UUID_TABLES)
            conn.execute(variants.uuid_access_sql(UUID_ROLE))
            if variant == "uuid-usersync":
                conn.execute("select usersync.attach('auth.users', 'public.profiles', shared_key => true)")
                mapped = conn.execute("select count(*) from usersync.field_mapping where pair = 'profiles'").fetchone()
                assert mapped == (len(variants.FIELDS),), mapped
            elif variant == "uuid-hand":
                conn.execute(variants.UUID_HAND_TRIGGER)

    @contextmanager
    def database(self, variant: str) -> Iterator[psycopg.Connection]:
        with harness.cloned_database(self.server, self.template(variant)) as name, \
                psycopg.connect(self.server.conninfo(name), autocommit=True) as conn:
            yield conn

    def close(self) -> None:
        for name in self.templates.values():
            self.server.janitor(name, as_template=True).drop()
        if self.server.handle is not None:
            self.server.handle.stop()


def timed(fn: Callable[[], object]) -> float:
    started = time.perf_counter()
    fn()
    return time.perf_counter() - started


def timed_capped(conn: psycopg.Connection, fn: Callable[[], object], cap: float | None) -> tuple[float, bool]:
    """(seconds, timed out): fn's statements are cancelled after `cap` seconds each, if a cap is set."""
    if cap is None:
        return timed(fn), False
    conn.execute(f"set statement_timeout = {int(cap * 1000)}")
    started = time.perf_counter()
    try:
        fn()
    except psycopg.errors.QueryCanceled:
        return time.perf_counter() - started, True
    finally:
        conn.execute("reset statement_timeout")
    return time.perf_counter() - started, False


@contextmanager
def as_role(conn: psycopg.Connection, role: str | None) -> Iterator[None]:
    """Run the measured statements as the application's role (row-level security applies to it)."""
    if role is None:
        yield
        return
    conn.execute(psycopg.sql.SQL("set role {}").format(psycopg.sql.Identifier(role)))
    try:
        yield
    finally:
        conn.execute("reset role")


def users_select(n: int, start: int = 1) -> str:
    return (f"select 'user' || g, 'First' || g, 'Last' || g, 'u' || g || '@example.org', '+49 30 ' || g,"
            f" '+49 170 ' || g, 'Dept ' || (g % 20), 'Job ' || (g % 50), true"
            f" from generate_series({start}, {start + n - 1}) g")


INSERT_USERS = ("insert into users (login, first_name, last_name, email, phone, mobile, department, job_title,"
                " sync_to_contact) ")




@dataclass(frozen=True)
class Shape:
    """A pair of application tables the bulk and latency scenarios run on."""

    label: str                  # "" for the example tables; else the prefix of the scenario names
    users: str
    contacts: str
    variants: dict[str, str]    # usersync / hand / plain -> the Bench template
    columns: str                # the users' columns INSERT and COPY write
    select: Callable[[int, int], str]
    copy_line: Callable[[int], str]
    floor_insert: str
    floor_update: str
    role: str | None = None     # the role the measured statements run as; None: the connecting superuser
    fill_batch: int | None = None  # set-up (outside the clock) inserts users this many per statement

    def insert_users(self, n: int, start: int = 1) -> str:
        return f"insert into {self.users} ({self.columns}) " + self.select(n, start)

    def copy_data(self, n: int) -> str:
        """COPY text for n users, made before the clock starts."""
        return "".join(self.copy_line(g) for g in range(1, n + 1))

    def copy_users(self, conn: psycopg.Connection, data: str) -> None:
        with conn.cursor().copy(f"copy {self.users} ({self.columns}) from stdin") as copy:
            copy.write(data)

    def fill(self, conn: psycopg.Connection, n: int) -> None:
        """n users (and, where something syncs, their contacts), outside the clock."""
        step = self.fill_batch or n
        for start in range(1, n + 1, step):
            conn.execute(self.insert_users(min(step, n - start + 1), start))

    def name(self, scenario: str) -> str:
        return f"{self.label}: {scenario}" if self.label else scenario


def _uuid_select(n: int, start: int = 1) -> str:
    return (f"select 'user' || g, 'First' || g, 'Last' || g, 'u' || g || '@example.org', '+49 30 ' || g,"
            f" '+49 170 ' || g, 'Dept ' || (g % 20), 'Job ' || (g % 50)"
            f" from generate_series({start}, {start + n - 1}) g")


def _copy_line(g: int) -> str:
    return f"copy{g}\tFirst{g}\tLast{g}\tc{g}@example.org\t+49 30 {g}\t+49 170 {g}\tDept {g % 20}\tJob {g % 50}"


EXAMPLE = Shape(
    "", "users", "contacts", {"usersync": "usersync", "hand": "hand", "plain": "plain"},
    ", ".join(("login", *variants.FIELDS, "sync_to_contact")), users_select, lambda g: _copy_line(g) + "\tt\n",
    variants.FLOOR_INSERT, variants.FLOOR_UPDATE)

UUID_PROFILES = Shape(
    "uuid profiles", "auth.users", "public.profiles",
    {"usersync": "uuid-usersync", "hand": "uuid-hand", "plain": "uuid-plain"},
    ", ".join(("login", *variants.FIELDS)), _uuid_select, lambda g: _copy_line(g) + "\n",
    variants.UUID_FLOOR_INSERT, variants.UUID_FLOOR_UPDATE, role=UUID_ROLE, fill_batch=1000)
