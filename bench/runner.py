"""Running measurements on the harness's server: fresh databases cloned from one template per
variant, wall-clock timing of whole statements (commit included), medians over repeats."""

from __future__ import annotations

import io
import statistics
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import psycopg

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
import harness
from bench import variants
from pyapp import examples, migrate
from pyapp.config import Database


@dataclass
class Sample:
    times: list[float] = field(default_factory=list)

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
            if variant == "usersync":
                migrate.upgrade(Database(self.server.conninfo(name), "bench"))
                with psycopg.connect(self.server.conninfo(name), autocommit=True) as conn:
                    examples.create_and_attach(conn)  # the tables the other variants get, attached
            else:
                with psycopg.connect(self.server.conninfo(name), autocommit=True) as conn:
                    conn.execute(variants.modules_sql())
                    conn.execute(variants.HAND_TRIGGER if variant == "hand" else variants.LINK_TABLE)
            self.templates[variant] = name
        return self.templates[variant]

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


def users_select(n: int, start: int = 1) -> str:
    return (f"select 'user' || g, 'First' || g, 'Last' || g, 'u' || g || '@example.org', '+49 30 ' || g,"
            f" '+49 170 ' || g, 'Dept ' || (g % 20), 'Job ' || (g % 50), true"
            f" from generate_series({start}, {start + n - 1}) g")


INSERT_USERS = ("insert into users (login, first_name, last_name, email, phone, mobile, department, job_title,"
                " sync_to_contact) ")


def copy_data(n: int) -> str:
    """COPY text for n synced users, made before the clock starts."""
    buf = io.StringIO()
    for g in range(1, n + 1):
        buf.write(f"copy{g}\tFirst{g}\tLast{g}\tc{g}@example.org\t+49 30 {g}\t+49 170 {g}\tDept {g % 20}\t"
                  f"Job {g % 50}\tt\n")
    return buf.getvalue()


def copy_users(conn: psycopg.Connection, data: str) -> None:
    with conn.cursor().copy("copy users (login, first_name, last_name, email, phone, mobile, department,"
                            " job_title, sync_to_contact) from stdin") as copy:
        copy.write(data)
