"""Programmatic Alembic: what `usersync db …` runs, and the helpers the revisions use.

Each revision applies a frozen SQL file stored beside it (migrations/versions/NNNN_*.sql) and
checks its SHA-256, so an old revision always creates what it created when it was written,
whatever sql/ holds today.
"""

from __future__ import annotations

import hashlib
import io
from importlib import resources
from pathlib import Path

from alembic import command
from alembic.config import Config

from pyapp.config import Database

VERSION_TABLE = "usersync_alembic_version"


def alembic_config(db: Database | None, *, output_buffer: io.StringIO | None = None) -> Config:
    cfg = Config(output_buffer=output_buffer) if output_buffer is not None else Config()
    cfg.set_main_option("script_location", str(resources.files("pyapp.migrations")))
    if db is not None:
        # '%' is interpolation syntax in Alembic's config parser.
        cfg.set_main_option("sqlalchemy.url", db.sqlalchemy_url.replace("%", "%%"))
    return cfg


def upgrade(db: Database, revision: str = "head") -> None:
    command.upgrade(alembic_config(db), revision)


def downgrade(db: Database, revision: str) -> None:
    command.downgrade(alembic_config(db), revision)


def upgrade_sql(revision: str = "head", start: str | None = None) -> str:
    """The SQL of an upgrade, for a DBA to review and apply with psql (Alembic offline mode)."""
    out = io.StringIO()
    cfg = alembic_config(None, output_buffer=out)
    cfg.set_main_option("sqlalchemy.url", "postgresql+psycopg://")
    command.upgrade(cfg, f"{start}:{revision}" if start else revision, sql=True)
    return out.getvalue()


# What usersync leaves on the application's tables (each pair's triggers, the policy and the grants
# attach gave usersync_engine there) is removed by usersync.detach(), pair by pair; then the schema
# goes. The tables, their columns and rows stay. The roles are cluster-wide and may serve other
# databases: they stay too. (Before 0004 one pair was named in usersync.modules, a table.)
UNINSTALL_PAIRS_SQL = """
do $uninstall$
declare
    t record;
    seq text;
begin
    if pg_catalog.to_regclass('usersync.attachments') is not null then
        for t in select a.pair from usersync.attachments a order by a.id loop
            perform usersync.detach(t.pair);
        end loop;
        drop schema usersync cascade;
        return;
    end if;
    if pg_catalog.to_regclass('usersync.modules') is null then
        drop schema if exists usersync cascade;
        return;
    end if;
    create temporary table usersync_uninstalled on commit drop as
    select m.relation::pg_catalog.oid as relation, m.key_column from usersync.modules m;
    -- The schema first: its event triggers (which guard the policy) go with it.
    drop schema usersync cascade;
    for t in select u.relation::pg_catalog.regclass as relation, u.key_column from usersync_uninstalled u loop
        execute pg_catalog.format('drop policy if exists usersync_engine on %s', t.relation);
        execute pg_catalog.format('revoke all on %s from usersync_engine', t.relation);
        seq := pg_catalog.pg_get_serial_sequence(t.relation::text, t.key_column);
        if seq is not null then
            execute pg_catalog.format('revoke all on sequence %s from usersync_engine', seq);
        end if;
    end loop;
end
$uninstall$;
"""

# Downgrading below these revisions removes the mapping, the settings and the links (below 0004:
# every pair, usersync is uninstalled).
LOSES_CONFIGURATION = frozenset({"0002", "0004"})


def schema_absent() -> bool:
    """No usersync schema (uninstalled by 0004's downgrade): the older downgrades have nothing to
    undo. Offline (SQL for a DBA) it cannot be known; the SQL is written as for an install."""
    from alembic import context

    if context.is_offline_mode():
        return False
    import sqlalchemy as sa
    from alembic import op

    return bool(op.get_bind().execute(sa.text("select to_regnamespace('usersync') is null")).scalar())


def skipped_on_fresh_install() -> bool:
    """True in revisions 0001-0003 when they run on a database without usersync towards 0004 or
    later: they installed usersync 0.1 with two example tables of its own, and 0004 installs the
    engine alone. (An upgrade to 0003 or earlier still installs what those revisions did.)"""
    from alembic import context

    target = context.get_revision_argument()
    if isinstance(target, tuple):
        target = target[0] if target else None
    if target is None or str(target) < "0004":
        return False
    if context.is_offline_mode():
        return context.get_starting_revision_argument() is None
    return schema_absent()


def uninstall(db: Database) -> None:
    """Remove every object of usersync (schema, triggers, policy, grants, version table); keep
    every application table, column and row."""
    import psycopg

    with psycopg.connect(db.conninfo) as conn:
        conn.execute(UNINSTALL_PAIRS_SQL)
        conn.execute(f"drop table if exists public.{VERSION_TABLE}")


def configuration(db: Database) -> dict[str, int]:
    """What an uninstall or a downgrade below 0004 would lose: pairs, links, mapping rows, settings."""
    import psycopg

    with psycopg.connect(db.conninfo) as conn:
        if conn.execute("select to_regclass('usersync.links') is null").fetchone() == (True,):
            return {}
        pairs = "(select count(*) from usersync.attachments)" if conn.execute(
            "select to_regclass('usersync.attachments') is not null").fetchone() == (True,) else "0"
        row = conn.execute(
            f"select {pairs}, (select count(*) from usersync.links), (select count(*) from usersync.field_mapping),"
            " (select count(*) from usersync.settings where delete_contact_with_user or delete_user_with_contact)"
        ).fetchone()
    assert row is not None
    names = ("pairs", "links", "mapping rows", "changed settings")
    return {name: n for name, n in zip(names, row, strict=True) if n}


def downgrade_loses_configuration(db: Database, revision: str) -> bool:
    """Would downgrading from the current revision to ``revision`` pass below a revision in
    LOSES_CONFIGURATION?"""
    from alembic.script import ScriptDirectory

    start = current(db)
    if start is None:
        return False
    script = ScriptDirectory.from_config(alembic_config(db))
    passed = [r.revision for r in script.iterate_revisions(start, revision)]  # relative "-1" works too
    return bool(LOSES_CONFIGURATION.intersection(passed))


def revisions() -> list[str]:
    """The known revisions, oldest first."""
    from alembic.script import ScriptDirectory

    script = ScriptDirectory.from_config(alembic_config(None))
    return [r.revision for r in reversed(list(script.walk_revisions()))]


def current(db: Database) -> str | None:
    import psycopg

    with psycopg.connect(db.conninfo) as conn:
        exists = conn.execute("select to_regclass(%s)", (f"public.{VERSION_TABLE}",)).fetchone()
        if not exists or exists[0] is None:
            return None
        row = conn.execute(f"select version_num from public.{VERSION_TABLE}").fetchone()
        return row[0] if row else None


def frozen_sql(revision_file: str, name: str, sha256: str) -> str:
    """The frozen SQL stored beside a revision, refusing a file that was edited after the fact."""
    text = (Path(revision_file).parent / name).read_text(encoding="utf-8")
    digest = hashlib.sha256(text.encode("utf-8")).hexdigest()
    if digest != sha256:
        raise RuntimeError(
            f"{name} changed after its revision was written (sha256 {digest}, expected {sha256}); "
            "a released migration must not change: put the change in a new revision"
        )
    return text


def earlier_frozen_sql(revision_file: str, earlier_revision: str, name: str) -> str:
    """The frozen SQL of an earlier revision beside this one, checked against that revision's own
    SHA256: a downgrade runs it again to put that revision's code back. (Revision modules' names
    start with a digit, so the module is loaded by its path.)"""
    import importlib.util

    path = Path(revision_file).with_name(earlier_revision)
    spec = importlib.util.spec_from_file_location(f"usersync_revision_{path.stem}", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return frozen_sql(str(path), name, sha256=module.SHA256)


def run_sql(text: str) -> None:
    """Run a multi-statement SQL script inside the migration's transaction."""
    import sqlalchemy as sa
    from alembic import context, op

    if context.is_offline_mode():
        # Colons are bind markers for SQLAlchemy's text(); escape them so the script prints as written.
        op.execute(sa.text(text.replace(":", "\\:")))
        return
    # The raw psycopg connection takes several statements at once; the transaction is Alembic's.
    op.get_bind().connection.driver_connection.execute(text)
