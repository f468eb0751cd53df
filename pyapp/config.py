"""Where the database is: one URL, accepted in the forms people already use.

Accepted: ``postgresql://…``, ``postgres://…``, ``postgresql+psycopg://…`` (SQLAlchemy),
a libpq keyword string (``host=/run/postgresql dbname=app``) and a bare socket directory
(``/run/postgresql``). With none given, the persistent embedded server is used.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from urllib.parse import quote

import psycopg.conninfo

ENV_VAR = "DATABASE_URL"
SCHEMES = ("postgresql", "postgres")


class UnsupportedDatabaseUrl(ValueError):
    """A URL for another database system (mysql://, sqlite://, …): usersync needs PostgreSQL."""


@dataclass(frozen=True)
class Database:
    """A resolved database: a libpq conninfo for psycopg and a URL for SQLAlchemy/Alembic."""

    conninfo: str
    origin: str  # where the setting came from, for messages ("DATABASE_URL", "embedded server", …)

    @property
    def sqlalchemy_url(self) -> str:
        return to_sqlalchemy_url(self.conninfo)

    def shareable_conninfo(self) -> str:
        """The conninfo without its password, for printing (psql asks for it, or reads ~/.pgpass)."""
        params = {k: v for k, v in psycopg.conninfo.conninfo_to_dict(self.conninfo).items() if k != "password"}
        return psycopg.conninfo.make_conninfo(**params)

    def describe(self) -> str:
        params = psycopg.conninfo.conninfo_to_dict(self.conninfo)
        host = params.get("host") or "local socket"
        port = params.get("port") or "5432"
        return f"{params.get('dbname') or params.get('user') or ''} on {host}:{port} ({self.origin})"


def to_conninfo(url: str) -> str:
    """Normalize any accepted form to something psycopg.connect() takes."""
    url = url.strip()
    if url.startswith("/"):  # a socket directory
        return psycopg.conninfo.make_conninfo(host=url)
    scheme, sep, rest = url.partition("://")
    if sep and "+" in scheme:  # SQLAlchemy dialect+driver form
        scheme = scheme.split("+", 1)[0]
        url = f"{scheme}://{rest}"
    if sep and scheme.isalnum() and scheme not in SCHEMES:
        raise UnsupportedDatabaseUrl(
            f"unsupported scheme {scheme + '://'!r}: usersync runs on PostgreSQL (postgresql://…)")
    if sep and scheme == "postgres":
        url = f"postgresql://{rest}"
    # Validates the string and raises psycopg.ProgrammingError with libpq's message when it is not one.
    psycopg.conninfo.conninfo_to_dict(url)
    return url


def to_sqlalchemy_url(conninfo: str) -> str:
    """A postgresql+psycopg:// URL that connects exactly where ``conninfo`` does."""
    if conninfo.startswith("postgresql://"):
        return "postgresql+psycopg://" + conninfo.removeprefix("postgresql://")
    # Keyword form: every parameter goes into the query string, which SQLAlchemy hands to libpq.
    params = psycopg.conninfo.conninfo_to_dict(conninfo)
    dbname = params.pop("dbname", "") or ""
    query = "&".join(f"{quote(str(k))}={quote(str(v), safe='')}" for k, v in params.items())
    return f"postgresql+psycopg:///{quote(str(dbname))}" + (f"?{query}" if query else "")


def resolve(database_url: str | None = None, *, start_embedded: bool = True) -> Database:
    """The database to use: the explicit URL, else $DATABASE_URL, else the embedded server."""
    if database_url:
        return Database(to_conninfo(database_url), "--database-url")
    env = os.environ.get(ENV_VAR)
    if env:
        return Database(to_conninfo(env), ENV_VAR)
    if not start_embedded:
        raise LookupError(f"no database given: pass --database-url or set {ENV_VAR}")
    from pyapp import server

    return Database(server.default_local_server().conninfo(dbname="usersync"), "embedded server")
