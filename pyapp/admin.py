"""Every admin action, as functions over a psycopg connection. No sync logic lives here: each
function is one or two calls into the engine, which does the work (and the checking).

    from pyapp import admin
    with admin.connect() as conn:            # DATABASE_URL, else the embedded server
        print([p["pair"] for p in admin.pairs(conn)])
        admin.set_mapping(conn, "academic_title", "title")
        report = admin.resync_all(conn, batch_size=1000, progress=print)

Every function that acts on a pair of tables takes ``pair`` (its name, see ``pairs()``); it may
be left out while the database has exactly one pair. Engine errors are raised as the typed
exceptions of pyapp.errors (UnknownPair, US011, when no pair is attached, when several are and
none was named, or when the named one does not exist).
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


def _rows(conn: psycopg.Connection, query: str, params: Sequence[Any] | dict[str, Any] | None = None
          ) -> list[dict[str, Any]]:
    with errors.translated(), conn.cursor(row_factory=dict_row) as cur:
        return cur.execute(query, params).fetchall()


def _one(conn: psycopg.Connection, query: str, params: Sequence[Any] | dict[str, Any] | None = None
         ) -> dict[str, Any]:
    rows = _rows(conn, query, params)
    assert len(rows) == 1, f"expected one row from {query!r}"
    return rows[0]


def _literal(text: str) -> str:
    return "'" + text.replace("'", "''") + "'"


# --- pairs ----------------------------------------------------------------------------------------

def pairs(conn: psycopg.Connection) -> list[dict[str, Any]]:
    """The attached pairs (the view usersync.pairs), each with its number of synchronized
    contacts (``synchronized``) and of those not up to date with the mapping (``stale``)."""
    return _rows(conn, """select p.pair, p.users::text as users, p.contacts::text as contacts,
                                 p.user_key::text as user_key, p.contact_key::text as contact_key,
                                 p.switch_column::text as switch_column, p.shared_key,
                                 p.delete_contact_with_user, p.delete_user_with_contact,
                                 p.mapping_version, p.all_up_to_date, p.attached_at, p.id,
                                 coalesce(s.synchronized, 0) as synchronized, coalesce(s.stale, 0) as stale
                            from usersync.pairs p
                            left join (select pair, count(*) as synchronized,
                                              count(*) filter (where not up_to_date) as stale
                                         from usersync.synchronized_contacts group by pair) s on s.pair = p.pair
                           order by p.pair""")


def pair_name(conn: psycopg.Connection, pair: str | None = None) -> str:
    """The pair a call acts on: ``pair``, which must be attached, or the database's only pair."""
    if pair is None:
        return str(_one(conn, "select usersync._only_pair() as pair")["pair"])
    names = [r["pair"] for r in _rows(conn, "select pair from usersync.pairs order by pair")]
    if pair not in names:
        raise errors.UnknownPair(f"no pair named {_literal(pair)}",
                                 hint=f"Attached pairs: {', '.join(names) or 'none'}.")
    return pair


def pair_info(conn: psycopg.Connection, pair: str | None = None) -> dict[str, Any]:
    """One row of ``pairs()``."""
    name = pair_name(conn, pair)
    return next(p for p in pairs(conn) if p["pair"] == name)


def _table(conn: psycopg.Connection, name: str) -> str:
    """The table a name means (on the search path unless qualified), or AttachRefused."""
    if _one(conn, "select to_regclass(%s) is null as missing", [name])["missing"]:
        raise errors.AttachRefused(f"cannot attach {name}: there is no such table",
                                   hint="Name an existing table, with its schema when it is not on the search path "
                                        "(e.g. public.users).")
    return name


def _attach_args(users: str, contacts: str, switch_column: str | None, shared_key: bool,
                 pair: str | None) -> dict[str, Any]:
    return {"users": users, "contacts": contacts, "switch": switch_column, "shared": shared_key, "pair": pair}


_ATTACH_ARGS = ("%(users)s::regclass, %(contacts)s::regclass, switch_column => %(switch)s::name,"
                " shared_key => %(shared)s, pair => %(pair)s")


def attach_preview(conn: psycopg.Connection, users: str, contacts: str, switch_column: str | None = None,
                   shared_key: bool = False, pair: str | None = None) -> dict[str, Any]:
    """What ``attach`` would do, writing nothing: ``pair_name``, ``user_key``, ``contact_key``,
    ``users_to_sync``, ``contacts_to_create``, ``contacts_to_link``, ``mapping`` ([user field,
    contact field] pairs, in the users table's column order) and ``warnings``. Raises
    AttachRefused (US010) as attach would."""
    _table(conn, users)
    _table(conn, contacts)
    return _one(conn, "select pair_name, user_key::text as user_key, contact_key::text as contact_key, users_to_sync,"
                      " contacts_to_create, contacts_to_link, mapping, warnings"
                      f" from usersync.attach_preview({_ATTACH_ARGS})",
                _attach_args(users, contacts, switch_column, shared_key, pair))


def attach(conn: psycopg.Connection, users: str, contacts: str, switch_column: str | None = None,
           shared_key: bool = False, pair: str | None = None) -> dict[str, Any]:
    """Attach usersync to a users table and a contacts table (usersync.attach: the caller owns
    both tables and the usersync schema). Returns ``pair`` (the new pair's name) and ``warnings``
    (what the engine warned about: foreign keys between the tables, contact fields no sync can fill)."""
    _table(conn, users)
    _table(conn, contacts)
    warnings: list[str] = []

    def on_notice(diag: psycopg.errors.Diagnostic) -> None:
        if diag.severity_nonlocalized == "WARNING" and diag.message_primary:
            warnings.append(diag.message_primary.removeprefix("usersync: "))

    conn.add_notice_handler(on_notice)
    try:
        row = _one(conn, f"select usersync.attach({_ATTACH_ARGS}) as pair",
                   _attach_args(users, contacts, switch_column, shared_key, pair))
    finally:
        conn.remove_notice_handler(on_notice)
    return {"pair": row["pair"], "warnings": warnings}


def pair_configuration(conn: psycopg.Connection, pair: str) -> dict[str, int]:
    """What detaching the pair would remove: its links and mapping rows (the tables and their rows stay)."""
    name = pair_name(conn, pair)
    return _one(conn, """select (select count(*) from usersync.links where pair = %(pair)s) as links,
                                (select count(*) from usersync.field_mapping where pair = %(pair)s) as "mapping rows"
                      """, {"pair": name})


def detach(conn: psycopg.Connection, pair: str) -> None:
    """Detach a pair (usersync.detach): its triggers, generated code, links and configuration go;
    both tables and every row in them stay."""
    _rows(conn, "select usersync.detach(%s)", [pair])


# --- the metadata catalog and the mapping ------------------------------------------------------

def fields(conn: psycopg.Connection, pair: str | None = None) -> list[dict[str, Any]]:
    return _rows(conn, "select module, field, data_type, label, not_null, has_default from usersync.metadata_fields"
                       " where pair = %s order by module desc, position", [pair_name(conn, pair)])


def mapping(conn: psycopg.Connection, pair: str | None = None) -> list[dict[str, Any]]:
    return _rows(conn, """select m.user_field, u.label as user_label, m.contact_field, c.label as contact_label
                            from usersync.field_mapping m
                            join usersync.metadata_fields u
                              on u.pair = m.pair and u.module = 'users' and u.field = m.user_field
                            join usersync.metadata_fields c
                              on c.pair = m.pair and c.module = 'contacts' and c.field = m.contact_field
                           where m.pair = %s
                           order by u.position""", [pair_name(conn, pair)])


def mapping_screen(conn: psycopg.Connection, pair: str | None = None) -> dict[str, list[dict[str, Any]]]:
    """The admin screen: mapped pairs, user fields left out, contact fields that stay empty, and
    (among those) the ones that cannot: NOT NULL with a default (they get it) or without one
    (every sync that creates a contact fails until the field is mapped or given a default)."""
    pair = pair_name(conn, pair)
    mapped = mapping(conn, pair)
    mapped_users = {p["user_field"] for p in mapped}
    mapped_contacts = {p["contact_field"] for p in mapped}
    all_fields = fields(conn, pair)
    unmapped_contacts = [f for f in all_fields if f["module"] == "contacts" and f["field"] not in mapped_contacts]
    return {
        "mapped": mapped,
        "unmapped_user_fields": [f for f in all_fields if f["module"] == "users" and f["field"] not in mapped_users],
        "empty_contact_fields": [f for f in unmapped_contacts if not f["not_null"]],
        "default_contact_fields": [f for f in unmapped_contacts if f["not_null"] and f["has_default"]],
        "unfillable_contact_fields": [f for f in unmapped_contacts if f["not_null"] and not f["has_default"]],
    }


def set_mapping(conn: psycopg.Connection, user_field: str, contact_field: str, pair: str | None = None) -> None:
    """Map user_field to contact_field (replacing user_field's earlier target, if any)."""
    pair = pair_name(conn, pair)
    with errors.translated(), conn.transaction():
        updated = conn.execute("update usersync.field_mapping set contact_field = %s"
                               " where pair = %s and user_field = %s", [contact_field, pair, user_field]).rowcount
        if not updated:
            conn.execute("insert into usersync.field_mapping (pair, user_field, contact_field) values (%s, %s, %s)",
                         [pair, user_field, contact_field])


def remove_mapping(conn: psycopg.Connection, user_field: str, pair: str | None = None) -> None:
    pair = pair_name(conn, pair)
    with errors.translated():
        removed = conn.execute("delete from usersync.field_mapping where pair = %s and user_field = %s",
                               [pair, user_field]).rowcount
    if not removed:
        raise errors.InvalidMapping(f'user field "{user_field}" is not mapped', sqlstate="US003",
                                    hint="See the mapping with: usersync mapping show")


def clear_mapping(conn: psycopg.Connection, pair: str | None = None) -> int:
    pair = pair_name(conn, pair)
    with errors.translated():
        return conn.execute("delete from usersync.field_mapping where pair = %s", [pair]).rowcount


def reset_mapping(conn: psycopg.Connection, pair: str | None = None) -> int:
    return _one(conn, "select usersync.reset_field_mapping(pair => %s) as n", [pair])["n"]


# --- settings ------------------------------------------------------------------------------------

def settings(conn: psycopg.Connection, pair: str | None = None) -> dict[str, bool]:
    row = _one(conn, "select delete_contact_with_user, delete_user_with_contact from usersync.settings where pair = %s",
               [pair_name(conn, pair)])
    return {k: bool(v) for k, v in row.items()}


def set_setting(conn: psycopg.Connection, name: str, value: bool, pair: str | None = None) -> None:
    if name not in SETTINGS:
        raise errors.InvalidArgument(f"unknown setting {name!r}", hint=f"One of: {', '.join(SETTINGS)}")
    pair = pair_name(conn, pair)
    with errors.translated():  # name is one of SETTINGS
        conn.execute(f"update usersync.settings set {name} = %s where pair = %s", [value, pair])


# --- the actions -----------------------------------------------------------------------------------

def sync_users(conn: psycopg.Connection, user_ids: Sequence[int | str] | None = None, pair: str | None = None) -> int:
    """"Synchronize users": the given users, or every user whose switch is on. Ids are passed as
    text and read by the engine in the type of the pair's user key (a bigint, a uuid, ...)."""
    ids = [str(i) for i in user_ids] if user_ids else None
    return _one(conn, "select usersync.sync_users(%s::text[], pair => %s) as n", [ids, pair])["n"]


def set_direction(conn: psycopg.Connection, user_id: int | str, source: str, pair: str | None = None) -> None:
    _rows(conn, "select usersync.set_sync_source(%s::text, %s, pair => %s)", [str(user_id), source, pair])


FAILURES_LISTED = 20  # failures a resync report (and status) lists; the counts are always complete


@dataclass
class ResyncReport:
    total: int = 0
    synced: int = 0
    changed: int = 0
    failed: int = 0
    done: bool = False
    batches: int = 0
    failures: list[dict[str, Any]] = field(default_factory=list)  # the first FAILURES_LISTED of them

    @property
    def unchanged(self) -> int:
        return self.synced - self.changed

    @property
    def failures_truncated(self) -> bool:
        """The run failed on more pairs than ``failures`` lists (``failed`` counts them all)."""
        return self.failed > len(self.failures)

    def as_dict(self) -> dict[str, Any]:
        return {**asdict(self), "unchanged": self.unchanged, "failures_shown": len(self.failures),
                "failures_truncated": self.failures_truncated}


def resync_all(
    conn: psycopg.Connection,
    batch_size: int = 1000,
    *,
    pair: str | None = None,
    progress: Callable[[ResyncReport], None] | None = None,
    should_stop: Callable[[], bool] | None = None,
) -> ResyncReport:
    """"Update all synchronized users" of a pair, a committed batch at a time (resumes an
    unfinished run).

    ``progress`` is called after each batch; when ``should_stop`` returns true after a batch the
    run stops there, committed, and the next call continues it.
    """
    if conn.info.transaction_status != psycopg.pq.TransactionStatus.IDLE or not conn.autocommit:
        raise errors.InvalidArgument("resync_all needs an autocommit connection: each batch commits on its own",
                                     hint="Use pyapp.admin.connect().")
    report = ResyncReport()
    while True:
        step = _one(conn, "select * from usersync.resync_step(batch_size => %s, pair => %s)", [batch_size, pair])
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
    report.failures = sync_errors(conn, FAILURES_LISTED, pair=pair)
    return report


def preview_resync(conn: psycopg.Connection, examples: int = 5, pair: str | None = None) -> dict[str, Any]:
    """The dry run of resync_all: ``pairs``, ``would_change`` (pairs whose target would be rewritten),
    ``would_fail`` (pairs holding a value their target field cannot take: the run would record them
    in sync_errors and go on), ``stale``, and ``changes``: up to ``examples`` failing fields, each with
    ``error`` (the message) and ``sqlstate``, then up to ``examples`` changes, each with ``to``. Every
    example has ``user_id``, ``contact_id``, ``field`` and ``from``. (Here "pairs" are pairs of rows:
    a user and its synchronized contact.)"""
    return _one(conn, "select pairs, would_change, would_fail, stale, changes"
                      " from usersync.preview_resync(examples => %s, pair => %s)", [examples, pair])


def sync_errors(conn: psycopg.Connection, limit: int = 20, *, pair: str | None = None) -> list[dict[str, Any]]:
    return _rows(conn, "select user_id, contact_id, field, sqlstate, message, occurred_at"
                       " from usersync.sync_errors where pair = %s order by occurred_at desc, user_id limit %s",
                 [pair_name(conn, pair), limit])


def status(conn: psycopg.Connection, pair: str | None = None) -> dict[str, Any]:
    """One pair: its tables; its synchronized contacts (``pairs``: pairs of rows), of which
    ``up_to_date``, ``stale`` (synced before the mapping last changed: a resync brings them up to
    date) and ``failed`` (marked by the last resync, which could not write them, until something
    syncs them; the first ones in ``failures``, from sync_errors) add up to ``pairs``;
    ``reversed``; its delete toggles; its last resync run (``last_resync``, with ``state``:
    finished, running or interrupted); what ``doctor`` finds wrong (``problems``; None, with the
    reason in ``problems_unchecked``, when the check could not run, as on a read-only standby);
    the server."""
    info = pair_info(conn, pair)
    params = {"pair": info["pair"]}
    # A pair a run failed is marked on its link (mapping_version 0) until something syncs it (the
    # upgrade to 0007 marked those failed before). The two views print keys alike, under this
    # session's settings; sync_errors holds them as the run wrote them (a timestamptz key in UTC).
    counts = _one(conn, """select count(*) as pairs,
                                  count(*) filter (where c.up_to_date) as up_to_date,
                                  count(*) filter (where not c.up_to_date and f.user_id is null) as stale,
                                  count(*) filter (where f.user_id is not null) as failed,
                                  count(*) filter (where c.source = 'contact') as reversed
                             from usersync.synchronized_contacts c
                             left join (select l.pair, l.user_id from usersync.links l
                                         where l.active and l.mapping_version = 0) f
                                    on f.pair = c.pair and f.user_id = c.user_id
                            where c.pair = %(pair)s""", params)
    problems, unchecked = _doctor_for_status(conn, info["pair"])
    return {"pair": info["pair"], "users": info["users"], "contacts": info["contacts"], **counts,
            "failures": sync_errors(conn, FAILURES_LISTED, pair=info["pair"]) if counts["failed"] else [],
            "settings": {k: bool(info[k]) for k in SETTINGS}, "last_resync": last_resync(conn, info["pair"]),
            "problems": problems, "problems_unchecked": unchecked,
            "server": _one(conn, "select current_setting('server_version') as version,"
                                 " current_database() as database, (select version from usersync.mapping_state"
                                 " where pair = %(pair)s) as mapping_version", params)}


def last_resync(conn: psycopg.Connection, pair: str | None = None) -> dict[str, Any] | None:
    """The pair's current or last resync run (None when it never ran): ``started_at``,
    ``finished_at``, ``total``, ``synced``, ``changed``, ``failed``, and ``state``: ``finished``;
    ``running`` (in the live session ``session``); or ``interrupted`` (its session is gone: the
    next resync continues it, or starts over when ``mapping_changed`` since it started)."""
    rows = _rows(conn, """select r.started_at, r.finished_at, r.total, r.synced, r.changed, r.failed,
                                 case when r.finished_at is not null then 'finished'
                                      when exists (select from pg_catalog.pg_stat_activity a where a.pid = r.owner_pid)
                                      then 'running' else 'interrupted' end as state,
                                 case when r.finished_at is null then r.owner_pid end as session,
                                 r.mapping_version <> m.version as mapping_changed
                            from usersync.resync_state r join usersync.mapping_state m on m.pair = r.pair
                           where r.pair = %s""", [pair_name(conn, pair)])
    return rows[0] if rows else None


def _doctor_for_status(conn: psycopg.Connection, pair: str) -> tuple[list[dict[str, Any]] | None, str | None]:
    """status never fails for want of a check: an install older than usersync.doctor is a problem,
    another failure (a read-only transaction: the check generates code and rolls it back) is told."""
    try:
        return doctor(conn, pair), None
    except psycopg.errors.UndefinedFunction:
        return [{"pair": None, "problem": "usersync.doctor() is missing: the install is older than this version",
                 "repair": "usersync db upgrade (as the role that installed usersync)"}], None
    except (psycopg.Error, errors.UsersyncError) as exc:
        return None, getattr(getattr(exc, "diag", None), "message_primary", None) or str(exc)


# --- is the install whole ---------------------------------------------------------------------------

def doctor(conn: psycopg.Connection, pair: str | None = None) -> list[dict[str, Any]]:
    """What is missing or out of step (usersync.doctor, which reads only): one dict per problem,
    with ``pair`` (None for the install as a whole, such as the DDL guard's event triggers),
    ``problem`` and ``repair`` (the command that fixes it). Empty when all is well. ``pair``:
    one pair (and the install); None: every pair."""
    return _rows(conn, "select pair_name as pair, problem, repair from usersync.doctor(%s)", [pair])


def repair(conn: psycopg.Connection, pair: str | None = None) -> list[str]:
    """Restore what ``doctor`` finds missing (usersync.repair: triggers, grants, policy, generated
    code and, as a superuser, the DDL guard's event triggers), then sync the rows; returns what it
    did, one line each (empty: nothing was missing). Runs as the caller, who must be the role that
    installed usersync: another role gets RepairNotPermitted."""
    try:
        rows = _rows(conn, "select usersync.repair(%s) as done", [pair])
    except psycopg.errors.InsufficientPrivilege as exc:
        raise errors.RepairNotPermitted(
            "repairing usersync needs the role that installed it: it creates triggers on the pairs' tables "
            "(and, as a superuser, the DDL guard's event triggers)", detail=exc.diag.message_primary,
            hint="Run it as that role, such as postgres.") from exc
    return [r["done"] for r in rows]
