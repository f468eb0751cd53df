"""DATABASE_URL in the forms people already use: each one reaches the same place."""

from __future__ import annotations

import psycopg.conninfo
import pytest
import sqlalchemy as sa

from pyapp import config


@pytest.mark.parametrize(("given", "expected"), [
    ("postgresql://alice@db.example:6543/app",
     {"user": "alice", "host": "db.example", "port": "6543", "dbname": "app"}),
    ("postgres://alice@db.example/app", {"user": "alice", "host": "db.example", "dbname": "app"}),
    ("postgresql+psycopg://alice@db.example/app", {"user": "alice", "host": "db.example", "dbname": "app"}),
    ("host=/run/postgresql dbname=app user=alice", {"host": "/run/postgresql", "dbname": "app", "user": "alice"}),
    ("/run/postgresql", {"host": "/run/postgresql"}),
])
def test_every_accepted_form_gives_the_same_libpq_and_sqlalchemy_target(given, expected):
    conninfo = config.to_conninfo(given)
    assert psycopg.conninfo.conninfo_to_dict(conninfo) == expected
    url = sa.engine.make_url(config.to_sqlalchemy_url(conninfo))
    assert url.drivername == "postgresql+psycopg"
    params = {"user": url.username, "host": url.host, "port": url.port and str(url.port), "dbname": url.database,
              **url.query}
    assert {k: v for k, v in params.items() if v} == expected


def test_a_malformed_url_is_an_error_not_a_guess():
    with pytest.raises(psycopg.ProgrammingError):
        config.to_conninfo("host=x port")


def test_explicit_url_wins_over_the_environment(monkeypatch):
    monkeypatch.setenv(config.ENV_VAR, "postgresql://env@h/envdb")
    assert config.resolve("postgresql://cli@h/clidb").origin == "--database-url"
    assert config.resolve().origin == config.ENV_VAR
