"""A comparable description of everything usersync puts in a database.

pg_dump would do, but its version must match the server's (the embedded server may be newer
than the client tools), so the description is read from the catalog with the server's own
pg_get_*def functions.
"""

from __future__ import annotations

import psycopg

SCHEMAS = ("usersync", "public")

_QUERIES = {
    "relations": """
        select n.nspname, c.relname, c.relkind, c.relpersistence,
               coalesce(array_to_string(c.relacl, ','), ''), coalesce(obj_description(c.oid, 'pg_class'), '')
          from pg_class c join pg_namespace n on n.oid = c.relnamespace
         where n.nspname = any(%(schemas)s) and c.relname not like '%%alembic_version%%'""",
    # (a column's position among the table's live columns: a column dropped by a downgrade and
    # added again by the next upgrade takes a new attnum, and is the same column)
    "columns": """
        select n.nspname, c.relname,
               rank() over (partition by a.attrelid order by a.attnum), a.attname,
               format_type(a.atttypid, a.atttypmod), a.attnotnull,
               a.attidentity, a.attgenerated, coalesce(pg_get_expr(d.adbin, d.adrelid), ''),
               coalesce(col_description(c.oid, a.attnum), ''), coalesce(array_to_string(a.attacl, ','), '')
          from pg_attribute a join pg_class c on c.oid = a.attrelid join pg_namespace n on n.oid = c.relnamespace
          left join pg_attrdef d on d.adrelid = a.attrelid and d.adnum = a.attnum
         where n.nspname = any(%(schemas)s) and a.attnum > 0 and not a.attisdropped
           and c.relname not like '%%alembic_version%%'""",
    "constraints": """
        select n.nspname, c.conrelid::regclass::text, c.conname, pg_get_constraintdef(c.oid)
          from pg_constraint c join pg_namespace n on n.oid = c.connamespace
         where n.nspname = any(%(schemas)s) and c.conrelid::regclass::text not like '%%alembic_version%%'""",
    "indexes": """
        select schemaname, indexname, indexdef from pg_indexes
         where schemaname = any(%(schemas)s) and tablename not like '%%alembic_version%%'""",
    "functions": """
        select n.nspname, p.proname, pg_get_function_identity_arguments(p.oid), pg_get_functiondef(p.oid),
               pg_get_userbyid(p.proowner), coalesce(array_to_string(p.proacl, ','), ''),
               coalesce(obj_description(p.oid, 'pg_proc'), '')
          from pg_proc p join pg_namespace n on n.oid = p.pronamespace
         where n.nspname = any(%(schemas)s)""",
    "triggers": """
        select tgrelid::regclass::text, tgname, pg_get_triggerdef(oid), tgenabled
          from pg_trigger where not tgisinternal
           and tgrelid in (select c.oid from pg_class c join pg_namespace n on n.oid = c.relnamespace
                            where n.nspname = any(%(schemas)s))""",
    "event_triggers": """
        select evtname, evtevent, evtfoid::regproc::text, evtenabled, array_to_string(evttags, ',')
          from pg_event_trigger where evtname like 'usersync%%'""",
    "views": """
        select schemaname, viewname, definition from pg_views where schemaname = any(%(schemas)s)""",
    "schemas": """
        select nspname, pg_get_userbyid(nspowner), coalesce(array_to_string(nspacl, ','), ''),
               coalesce(obj_description(oid, 'pg_namespace'), '')
          from pg_namespace where nspname = any(%(schemas)s)""",
}


def snapshot(conn: psycopg.Connection) -> dict[str, list[tuple[object, ...]]]:
    snap: dict[str, list[tuple[object, ...]]] = {}
    for name, query in _QUERIES.items():
        rows = conn.execute(query, {"schemas": list(SCHEMAS)}).fetchall()
        snap[name] = sorted(rows, key=repr)
    # Configuration rows are part of the install (the default mapping, the settings row).
    tables = conn.execute(
        "select quote_ident(schemaname) || '.' || quote_ident(tablename) from pg_tables where schemaname = 'usersync'"
        " order by 1").fetchall()
    for (table,) in tables:
        if table in ('usersync.sync_errors',):
            continue
        # Timestamps say when, not what: left out.
        rows = conn.execute(
            f"select (select jsonb_object_agg(key, value) from jsonb_each(to_jsonb(t)) where key not like '%_at')::text"
            f" from {table} t").fetchall()
        snap[f"rows of {table}"] = sorted(rows)
    return snap
