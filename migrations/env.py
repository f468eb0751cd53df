"""Alembic environment for usersync.

The URL comes from the Config (set by `usersync db …`), else from -x url=…, else from
DATABASE_URL, else the embedded local server: the same rules as the CLI.
"""

from __future__ import annotations

from alembic import context
from sqlalchemy import Connection, create_engine, pool, text

from pyapp import config as usersync_config
from pyapp.migrate import VERSION_TABLE

cfg = context.config


def _url() -> str:
    url = cfg.get_main_option("sqlalchemy.url")
    if url:
        return url
    x_url = context.get_x_argument(as_dictionary=True).get("url")
    return usersync_config.resolve(x_url).sqlalchemy_url


def run_offline() -> None:
    context.configure(
        url=cfg.get_main_option("sqlalchemy.url") or "postgresql+psycopg://",
        literal_binds=True,
        # "named" keeps % signs as written (pyformat would double them in format() calls).
        dialect_opts={"paramstyle": "named"},
        version_table=VERSION_TABLE,
        transaction_per_migration=True,
    )
    with context.begin_transaction():
        context.run_migrations()


def _forget_a_dropped_install(connection: Connection) -> None:
    """After DROP SCHEMA usersync CASCADE the version table still names a revision, and an upgrade
    would install nothing: start from base again (the application's tables are kept by every
    revision, so reapplying them is safe)."""
    dropped = connection.execute(text(
        f"select to_regclass('public.{VERSION_TABLE}') is not null and to_regnamespace('usersync') is null"
    )).scalar()
    if dropped:
        connection.execute(text(f"delete from public.{VERSION_TABLE}"))
    connection.commit()  # end this transaction: Alembic must begin its own, per migration


def run_online() -> None:
    engine = create_engine(_url(), poolclass=pool.NullPool)
    with engine.connect() as connection:
        _forget_a_dropped_install(connection)
        context.configure(
            connection=connection,
            version_table=VERSION_TABLE,
            transaction_per_migration=True,
        )
        with context.begin_transaction():
            context.run_migrations()


if context.is_offline_mode():
    run_offline()
else:
    run_online()
