"""Test harness: a real PostgreSQL (chosen in tests/harness.py), one template database with
the migrations applied, and a fresh clone of it for every test."""

from __future__ import annotations

import shutil
from collections.abc import Callable, Iterator

import psycopg
import pytest
from interleave import Interleaving, Session

import harness
from pyapp.config import Database

_server: harness.Server | None = None


def _get_server() -> harness.Server:
    global _server
    if _server is None:
        _server = harness.choose_server()
        harness.drop_stale_databases(_server)
        harness.ensure_test_roles(_server)
    return _server


def pytest_report_header(config: pytest.Config) -> str:
    installer = (f"; installed by {harness.INSTALLER_ROLE} (database owner with CREATEROLE, no DDL guard)"
                 if harness.installer_is_owner() else "")
    return f"usersync test server: {_get_server().describe()}{installer}"


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if harness.installer_is_owner():
        skip = pytest.mark.skip(reason="installed without a superuser: no DDL guard")
        for item in items:
            if "guard" in item.keywords:
                item.add_marker(skip)


def pytest_unconfigure(config: pytest.Config) -> None:
    if _server is not None and _server.handle is not None:
        _server.handle.stop()
        shutil.rmtree(_server.handle.datadir.parent, ignore_errors=True)  # the private server's temp dir


@pytest.fixture(scope="session")
def pg_server() -> harness.Server:
    return _get_server()


@pytest.fixture(scope="session")
def template_db(pg_server: harness.Server) -> Iterator[str]:
    name = harness.build_template(pg_server)
    yield name
    pg_server.janitor(name, as_template=True).drop()


@pytest.fixture
def dbname(pg_server: harness.Server, template_db: str) -> Iterator[str]:
    with harness.cloned_database(pg_server, template_db) as name:
        yield name


@pytest.fixture
def database(pg_server: harness.Server, dbname: str) -> Database:
    """The test's database as the superuser, in the form the CLI and the migrations take."""
    return Database(pg_server.conninfo(dbname), "test database")


def _connect(pg_server: harness.Server, dbname: str, **params: str) -> psycopg.Connection:
    return psycopg.connect(pg_server.conninfo(dbname, **params), autocommit=True)


@pytest.fixture
def conn(pg_server: harness.Server, dbname: str) -> Iterator[psycopg.Connection]:
    """A superuser connection (autocommit) to the test's own database."""
    with _connect(pg_server, dbname) as c:
        yield c


@pytest.fixture
def app_conn(pg_server: harness.Server, dbname: str) -> Iterator[psycopg.Connection]:
    """An application's connection: plain DML on users and contacts, nothing else."""
    with _connect(pg_server, dbname, user=harness.APP_ROLE, password=harness.ROLE_PASSWORD) as c:
        yield c


@pytest.fixture
def admin_conn(pg_server: harness.Server, dbname: str) -> Iterator[psycopg.Connection]:
    """An administrator's connection: a member of usersync_admin, not a superuser."""
    with _connect(pg_server, dbname, user=harness.ADMIN_ROLE, password=harness.ROLE_PASSWORD) as c:
        yield c


@pytest.fixture
def owner_conn(pg_server: harness.Server, dbname: str) -> Iterator[psycopg.Connection]:
    """The owner of users and contacts: may change their DDL, is not a superuser."""
    with _connect(pg_server, dbname, user=harness.OWNER_ROLE, password=harness.ROLE_PASSWORD) as c:
        yield c


@pytest.fixture
def admin_url(pg_server: harness.Server, dbname: str) -> str:
    """The test database as the administrator role, in libpq form (what DATABASE_URL takes)."""
    return pg_server.conninfo(dbname, user=harness.ADMIN_ROLE, password=harness.ROLE_PASSWORD)


@pytest.fixture
def new_database(pg_server: harness.Server) -> Iterator[Callable[[], Database]]:
    """Makes empty databases (no template, no test grants), dropped after the test."""
    janitors = []

    def make() -> Database:
        name = pg_server.next_dbname("t")
        janitors.append(pg_server.janitor(name))
        janitors[-1].init()
        return Database(pg_server.conninfo(name), "empty test database")

    yield make
    for janitor in janitors:
        janitor.drop()


@pytest.fixture
def sessions(pg_server: harness.Server, dbname: str, conn: psycopg.Connection):
    """Opens sessions as the application ('app'), an administrator ('admin') or the tables' owner, a
    superuser ('owner'), for explicit interleavings."""
    opened: list[Session] = []

    def open_sessions(*roles: str) -> tuple[Interleaving, list[Session]]:
        for i, role in enumerate(roles):
            user = {"app": harness.APP_ROLE, "admin": harness.ADMIN_ROLE, "owner": None}[role]
            info = (pg_server.conninfo(dbname) if user is None
                    else pg_server.conninfo(dbname, user=user, password=harness.ROLE_PASSWORD))
            opened.append(Session(info, f"s{i + 1}-{role}"))
        return Interleaving(conn, opened), opened

    yield open_sessions
    for s in opened:
        s.close()
