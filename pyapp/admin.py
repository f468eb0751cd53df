"""Every admin action, as functions over a psycopg connection. No sync logic lives here: each
function is one or two calls into the engine, which does the work (and the checking).

    from pyapp import admin
    with admin.connect() as conn:            # DATABASE_URL, else the embedded server
        admin.set_mapping(conn, "academic_title", "title")
        report = admin.resync_all(conn, batch_size=1000, progress=print)

Engine errors are raised as the typed exceptions of pyapp.errors.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import psycopg
from psycopg.rows import dict_row

from pyapp import config, errors

SETTINGS = ("delete_contact_with_user", "delete_user_with_contact")
SOURCES = ("user", "contact")


def connect(db: config.Database | str | None = None, *, connect_timeout: int = 5) -> psycopg.Connection[dict[str, Any]]:
    """An autocommit connection (each admin action is its own transaction) returning dict rows."""
    if not isinstance(db, config.Database):
        db = config.resolve(db)
    return psycopg.connect(db.conninfo, autocommit=True, row_factory=dict_row, connect_timeout=connect_timeout,
                           application_name="usersync")


def _rows(conn: psycopg.Connection, query: str, params: Sequence[Any] | None = None) -> list[dict[str, Any]]:
    with errors.translated(), conn.cursor(row_factory=dict_row) as cur:
        return cur.execute(query, params).fetchall()


def _one(conn: psycopg.Connection, query: str, params: Sequence[Any] | None = None) -> dict[str, Any]:
    rows = _rows(conn, query, params)
    assert len(rows) == 1, f"expected one row from {query!r}"
    return rows[0]


# --- the metadata catalog and the mapping ------------------------------------------------------

def fields(conn: psycopg.Connection) -> list[dict[str, Any]]:
    return _rows(conn, "select module, field, data_type, label, not_null, has_default from usersync.metadata_fields"
                       " order by module desc, position")


def mapping(conn: psycopg.Connection) -> list[dict[str, Any]]:
    return _rows(conn, """select m.user_field, u.label as user_label, m.contact_field, c.label as contact_label
                            from usersync.field_mapping m
                            join usersync.metadata_fields u on u.module = 'users' and u.field = m.user_field
                            join usersync.metadata_fields c on c.module = 'contacts' and c.field = m.contact_field
                           order by u.position""")


def mapping_screen(conn: psycopg.Connection) -> dict[str, list[dict[str, Any]]]:
    """The admin screen: mapped pairs, user fields left out, contact fields that stay empty, and
    (among those) the ones that cannot: NOT NULL with a default (they get it) or without one
    (every sync that creates a contact fails until the field is mapped or given a default)."""
    pairs = mapping(conn)
    mapped_users = {p["user_field"] for p in pairs}
    mapped_contacts = {p["contact_field"] for p in pairs}
    all_fields = fields(conn)
    unmapped_contacts = [f for f in all_fields if f["module"] == "contacts" and f["field"] not in mapped_contacts]
    return {
        "mapped": pairs,
        "unmapped_user_fields": [f for f in all_fields if f["module"] == "users" and f["field"] not in mapped_users],
        "empty_contact_fields": [f for f in unmapped_contacts if not f["not_null"]],
        "default_contact_fields": [f for f in unmapped_contacts if f["not_null"] and f["has_default"]],
        "unfillable_contact_fields": [f for f in unmapped_contacts if f["not_null"] and not f["has_default"]],
    }


def set_mapping(conn: psycopg.Connection, user_field: str, contact_field: str) -> None:
    """Map user_field to contact_field (replacing user_field's earlier target, if any)."""
    with errors.translated(), conn.transaction():
        updated = conn.execute("update usersync.field_mapping set contact_field = %s where user_field = %s",
                               [contact_field, user_field]).rowcount
        if not updated:
            conn.execute("insert into usersync.field_mapping (user_field, contact_field) values (%s, %s)",
                         [user_field, contact_field])


def remove_mapping(conn: psycopg.Connection, user_field: str) -> None:
    with errors.translated():
        removed = conn.execute("delete from usersync.field_mapping where user_field = %s", [user_field]).rowcount
    if not removed:
        raise errors.InvalidMapping(f'user field "{user_field}" is not mapped', sqlstate="US003",
                                    hint="See the mapping with: usersync mapping show")


def clear_mapping(conn: psycopg.Connection) -> int:
    with errors.translated():
        return conn.execute("delete from usersync.field_mapping").rowcount


def reset_mapping(conn: psycopg.Connection) -> int:
    return _one(conn, "select usersync.reset_field_mapping() as n")["n"]


# --- settings ------------------------------------------------------------------------------------

def settings(conn: psycopg.Connection) -> dict[str, bool]:
    row = _one(conn, "select delete_contact_with_user, delete_user_with_contact from usersync.settings")
    return {k: bool(v) for k, v in row.items()}


def set_setting(conn: psycopg.Connection, name: str, value: bool) -> None:
    if name not in SETTINGS:
        raise errors.InvalidArgument(f"unknown setting {name!r}", hint=f"One of: {', '.join(SETTINGS)}")
    with errors.translated():
        conn.execute(f"update usersync.settings set {name} = %s", [value])  # name is one of SETTINGS


# --- the actions -----------------------------------------------------------------------------------

def sync_users(conn: psycopg.Connection, user_ids: Sequence[int] | None = None) -> int:
    """"Synchronize users": the given users, or every user whose switch is on."""
    ids = list(user_ids) if user_ids else None
    return _one(conn, "select usersync.sync_users(%s::bigint[]) as n", [ids])["n"]


def set_direction(conn: psycopg.Connection, user_id: int, source: str) -> None:
    _rows(conn, "select usersync.set_sync_source(%s, %s)", [user_id, source])


@dataclass
class ResyncReport:
    total: int = 0
    synced: int = 0
    changed: int = 0
    failed: int = 0
    done: bool = False
    batches: int = 0
    failures: list[dict[str, Any]] = field(default_factory=list)

    @property
    def unchanged(self) -> int:
        return self.synced - self.changed

    def as_dict(self) -> dict[str, Any]:
        return {**asdict(self), "unchanged": self.unchanged}


def resync_all(
    conn: psycopg.Connection,
    batch_size: int = 1000,
    *,
    progress: Callable[[ResyncReport], None] | None = None,
    should_stop: Callable[[], bool] | None = None,
) -> ResyncReport:
    """"Update all synchronized users", a committed batch at a time (resumes an unfinished run).

    ``progress`` is called after each batch; when ``should_stop`` returns true after a batch the
    run stops there, committed, and the next call continues it.
    """
    if conn.info.transaction_status != psycopg.pq.TransactionStatus.IDLE or not conn.autocommit:
        raise errors.InvalidArgument("resync_all needs an autocommit connection: each batch commits on its own",
                                     hint="Use pyapp.admin.connect().")
    report = ResyncReport()
    while True:
        step = _one(conn, "select * from usersync.resync_step(%s)", [batch_size])
        report.total, report.synced, report.changed, report.failed = (
            step["total"], step["synced"], step["changed"], step["failed"])
        report.done = step["done"]
        if report.done:
            break
        report.batches += 1
        if progress:
            progress(report)
        if should_stop and should_stop():
            break
    report.failures = sync_errors(conn)
    return report


def preview_resync(conn: psycopg.Connection, examples: int = 5) -> dict[str, Any]:
    """The dry run of resync_all: ``pairs``, ``would_change`` (pairs whose target would be rewritten),
    ``would_fail`` (pairs holding a value their target field cannot take: the run would record them
    in sync_errors and go on), ``stale``, and ``changes``: up to ``examples`` failing fields, each with
    ``error`` (the message) and ``sqlstate``, then up to ``examples`` changes, each with ``to``. Every
    example has ``user_id``, ``contact_id``, ``field`` and ``from``."""
    return _one(conn, "select pairs, would_change, would_fail, stale, changes from usersync.preview_resync(%s)",
                [examples])


def sync_errors(conn: psycopg.Connection, limit: int = 20) -> list[dict[str, Any]]:
    return _rows(conn, "select user_id, contact_id, field, sqlstate, message, occurred_at"
                       " from usersync.sync_errors order by occurred_at desc, user_id limit %s", [limit])


def status(conn: psycopg.Connection) -> dict[str, Any]:
    counts = _one(conn, """select count(*) as pairs,
                                  count(*) filter (where not up_to_date) as stale,
                                  count(*) filter (where source = 'contact') as reversed
                             from usersync.synchronized_contacts""")
    failed = _one(conn, "select count(*) as n from usersync.sync_errors")["n"]
    state = _rows(conn, "select started_at, finished_at, total, synced, changed, failed from usersync.resync_state")
    server = _one(conn, "select current_setting('server_version') as version, current_database() as database,"
                        " (select version from usersync.mapping_state) as mapping_version")
    return {**counts, "failed": failed, "settings": settings(conn), "last_resync": state[0] if state else None,
            "server": server}
