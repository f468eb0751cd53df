"""`make bench`: usersync against a hand-written trigger, application-side sync and the floor.

    python -m bench            full run (minutes): sizes up to 1,000,000
    python -m bench --quick    smaller sizes
    python -m bench --smoke --out DIR   tiny sizes; what `make test` runs so the benchmarks never rot
    python -m bench --only pgbench      some parts only (pgbench, bulk, resync, orm; comma-separated);
                               the other parts' rows are kept from the benchmarks.json in --out

The single-row paths (one UPDATE per transaction, concurrent updates and inserts) are measured
with pgbench (bench/pgbench.py); bulk statements, resync and the ORM comparison in Python.

Every figure is a ratio against a baseline measured in the same run on the same server;
medians over repeats, with the spread. Results: a table on stdout, docs/benchmarks.md and
docs/benchmarks.json (or DIR with --out).
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
from collections.abc import Callable
from pathlib import Path
from typing import Any

import psycopg
import sqlalchemy as sa
from sqlalchemy.orm import Session

from bench import pgbench, variants
from bench.runner import (
    EXAMPLE,
    INSERT_USERS,
    UUID_PROFILES,
    Bench,
    Sample,
    Shape,
    as_role,
    harness,
    timed,
    timed_capped,
    users_select,
)
from pyapp import orm
from pyapp.config import Database
from pyapp.demo_models import User

# pgbench_users: users per database; pgbench_seconds: -T of every run; pgbench_runs: runs per variant
SIZES = {
    "full": {"bulk": [10_000, 100_000, 1_000_000], "repeats": 3,
             "pgbench_users": 100_000, "pgbench_seconds": 15, "pgbench_runs": 3,
             "resync": 1_000_000, "batch": 10_000, "orm": 10_000},
    "quick": {"bulk": [10_000, 100_000], "repeats": 3,
              "pgbench_users": 10_000, "pgbench_seconds": 5, "pgbench_runs": 3,
              "resync": 100_000, "batch": 5_000, "orm": 5_000},
    "smoke": {"bulk": [300], "repeats": 1,
              "pgbench_users": 200, "pgbench_seconds": 1, "pgbench_runs": 1,
              "resync": 300, "batch": 100, "orm": 50},
}
PARTS = ("pgbench", "bulk", "resync", "orm")


def settle(conn: psycopg.Connection, *, vacuum: bool = False) -> None:
    """Start each measurement from the same state: fresh statistics, no pending checkpoint work."""
    if vacuum:
        conn.execute("vacuum analyze")
    conn.execute("checkpoint")


def measure(conn: psycopg.Connection, role: str | None, sample: Sample, fn: Callable[[], object],
            cap: float | None) -> None:
    """One timed repeat, as `role`; a repeat cut off at the cap leaves a lower bound in the sample."""
    with as_role(conn, role):
        seconds, cut = timed_capped(conn, fn, cap)
    sample.times.append(seconds)
    sample.timed_out |= cut


def bulk(b: Bench, n: int, repeats: int, shape: Shape = EXAMPLE,
         cap: float | None = None) -> dict[str, dict[str, Sample]]:
    """INSERT ... SELECT, UPDATE of a mapped field, COPY: usersync, hand-written trigger, floor.

    With a cap, a statement running longer is cancelled and its time kept as a lower bound; a
    variant that was cut off is not repeated for that operation (a lower bound does not improve),
    and where its INSERT was, the users the UPDATE needs are inserted in batches, off the clock.
    COPY runs as the connecting role: PostgreSQL refuses COPY FROM where row-level security
    applies, so a bulk import is the tables' owner's job."""
    ops: dict[str, dict[str, Sample]] = {op: {} for op in ("insert", "update", "copy")}
    data = shape.copy_data(n)
    order = ["usersync", "hand", "floor"]
    for r in range(repeats):
        for v in order[r % 3:] + order[:r % 3]:  # rotate, so no variant always runs first
            db = shape.variants["plain" if v == "floor" else v]
            ins, upd, cp = (ops[op].setdefault(v, Sample()) for op in ("insert", "update", "copy"))

            def insert(conn: psycopg.Connection, v: str = v) -> None:
                conn.execute(shape.insert_users(n))
                if v == "floor":
                    conn.execute(shape.floor_insert)

            def update(conn: psycopg.Connection, v: str = v) -> None:
                conn.execute(f"update {shape.users} set first_name = first_name || 'x'")
                if v == "floor":
                    conn.execute(shape.floor_update)

            def copy(conn: psycopg.Connection, v: str = v) -> None:
                shape.copy_users(conn, data)
                if v == "floor":
                    conn.execute(shape.floor_insert)

            if not (ins.timed_out and upd.timed_out):
                with b.database(db) as conn:
                    if not ins.timed_out:
                        settle(conn)
                        measure(conn, shape.role, ins, lambda: insert(conn), cap)
                    if ins.timed_out:  # (rolled back) the same rows, in batches the engine handles
                        shape.fill(conn, n)
                        if v == "floor":
                            conn.execute(shape.floor_insert)
                    assert conn.execute(f"select count(*) from {shape.contacts}").fetchone() == (n,)
                    if not upd.timed_out:
                        settle(conn, vacuum=True)
                        measure(conn, shape.role, upd, lambda: update(conn), cap)
            if not cp.timed_out:
                with b.database(db) as conn:
                    settle(conn)
                    measure(conn, None, cp, lambda: copy(conn), cap)
                    if not cp.timed_out:
                        assert conn.execute(f"select count(*) from {shape.contacts}").fetchone() == (n,)
    return ops


def measured(shape: Shape, scenario: str, size: int, s: dict[str, Sample], base: str, base_name: str,
             goal: str, met: Callable[[float, float, float], bool]) -> dict[str, Any]:
    """One row of the report: each variant's median and spread, the ratios, and which figures
    are lower bounds (cut off at the cap)."""
    u, h, f = s["usersync"], s["hand"], s[base]
    bounds = [k for k, x in (("usersync", u), ("hand", h), ("base", f)) if x.timed_out]
    return {"part": "bulk", "scenario": shape.name(scenario), "shape": shape.label or "bigint example", "size": size,
            "usersync": u.median, "hand": h.median, "base": f.median, "base_name": base_name,
            "spread": max(x.spread for x in s.values()), "goal": goal,
            "met": not u.timed_out and met(u.median, h.median, f.median),
            "spreads": {"usersync": u.spread, "hand": h.spread, "base": f.spread},
            "ratios": {"usersync/hand": u.median / h.median, "usersync/base": u.median / f.median},
            "lower_bounds": bounds}


BULK_GOAL = "< hand-written, ≤ 1.3 × floor"
BULK_OPS = (("insert", "INSERT … SELECT"), ("update", "UPDATE of a mapped field"), ("copy", "COPY"))
# The uuid shape's bulk statements are cut off after max(1 minute, 200 µs per row), 6 to 10 times
# what the hand-written trigger takes per row: with a shared key, usersync's INSERT path syncs the
# statement's users through the generated refresh function, whose plan is quadratic in their number
# (10,000 users: ~15 s), so an uncapped run would take hours at 100,000 and days at 1,000,000.
UUID_CAP_MIN_S = 60.0
UUID_CAP_PER_ROW_S = 200e-6


def shape_rows(b: Bench, shape: Shape, size: dict[str, Any],
               cap: Callable[[int], float | None]) -> list[dict[str, Any]]:
    """The bulk rows of one shape."""
    rows = []
    for n in size["bulk"]:
        reps = size["repeats"] if n < 1_000_000 else 1
        ops = bulk(b, n, reps, shape, cap(n))
        for op, label in BULK_OPS:
            rows.append(measured(shape, f"bulk {label}", n, ops[op], "floor", "floor", BULK_GOAL,
                                 lambda u, h, f: u < h and u <= 1.3 * f))
        print(f"  {shape.name('bulk')} {n:,} done", flush=True)
    return rows


def resync(b: Bench, n: int, batch: int) -> dict[str, Any]:
    """resync_all after a mapping change vs one set-based UPDATE of the same rows."""
    with b.database("usersync") as conn:
        conn.execute(INSERT_USERS + users_select(n))
        settle(conn, vacuum=True)
        conn.execute("delete from usersync.field_mapping where user_field = 'department'")
        conn.execute("insert into usersync.field_mapping values ('department', 'company')")  # still 7 fields
        settle(conn)
        batches = []
        while True:
            started = dt.datetime.now()
            step = conn.execute("select done, synced from usersync.resync_step(%s)", [batch]).fetchone()
            batches.append((dt.datetime.now() - started).total_seconds())
            if step is None or step[0]:
                break
        assert conn.execute("select count(*) from usersync.synchronized_contacts where up_to_date").fetchone() == (n,)
    with b.database("plain") as conn:
        conn.execute(INSERT_USERS + users_select(n))
        conn.execute(variants.FLOOR_INSERT)
        settle(conn, vacuum=True)
        fields = list(variants.FIELDS)
        fields[fields.index("department")] = "company"
        sets = ", ".join(fields) + ", department"
        vals = ", ".join(f"u.{f}" for f in variants.FIELDS) + ", null"
        baseline = timed(lambda: conn.execute(
            f"update contacts c set ({sets}) = ({vals}) from users u where u.id = c.id"))
    return {"total": sum(batches), "baseline": baseline, "batches": len(batches), "longest_batch": max(batches)}


def orm_updates(b: Bench, n: int) -> dict[str, float]:
    """The same n updates through the SQLAlchemy ORM: an app-side event hook vs usersync."""
    out: dict[str, float] = {}
    cols = ", ".join(f"{f} = :{f}" for f in variants.FIELDS)
    hook_sql = sa.text(f"update contacts c set {cols} from user_contact l"
                       " where l.user_id = :id and c.id = l.contact_id")

    def hook(mapper: Any, connection: sa.Connection, target: User) -> None:
        connection.execute(hook_sql, {"id": target.id, **{f: getattr(target, f) for f in variants.FIELDS}})

    for v in ("usersync", "plain"):
        with b.database(v) as conn:
            conn.execute(INSERT_USERS + users_select(n))
            if v == "plain":
                conn.execute(variants.FLOOR_INSERT)
                conn.execute("insert into user_contact select id, id from users")
            conn.execute("vacuum analyze")
            info = conn.info
            db = Database(psycopg.conninfo.make_conninfo(host=info.host, port=str(info.port), user=info.user,
                                                         dbname=info.dbname, password=info.password or None), "b")
            engine = orm.create_engine(db)
            if v == "plain":
                sa.event.listen(User, "after_update", hook)
            try:
                with Session(engine) as session:
                    users = session.scalars(sa.select(User).order_by(User.id)).all()
                    for u in users:
                        u.first_name = (u.first_name or "") + "x"
                    out["app-side hook" if v == "plain" else "usersync"] = timed(session.commit)
            finally:
                if v == "plain":
                    sa.event.remove(User, "after_update", hook)
                engine.dispose()
            first = conn.execute("select first_name from contacts order by id limit 1").fetchone()
            assert first is not None and first[0].endswith("x")
    return out


def fmt_s(seconds: float) -> str:
    if seconds < 0.01:
        return f"{seconds * 1e6:,.0f} µs"
    return f"{seconds * 1e3:,.1f} ms" if seconds < 1 else f"{seconds:,.2f} s"


def part_of(row: dict[str, Any]) -> str | None:
    """Which part measured a row; rows of older reports carry no "part" (their single-row latency
    rows, measured by a Python loop, belong to none: pgbench replaced them)."""
    if row.get("part"):
        return str(row["part"])
    scenario = row["scenario"].removeprefix("uuid profiles: ")
    return ("bulk" if scenario.startswith("bulk") else "resync" if scenario.startswith("resync_all")
            else "orm" if scenario.startswith("ORM") else None)


def parse_parts(parser: argparse.ArgumentParser, values: list[str] | None) -> list[str]:
    if not values:
        return list(PARTS)
    chosen = {p.strip() for v in values for p in v.split(",") if p.strip()}
    if unknown := chosen - set(PARTS):
        parser.error(f"--only: unknown part(s) {', '.join(sorted(unknown))}; choose from {', '.join(PARTS)}")
    return [p for p in PARTS if p in chosen]


def carried_over(previous: Path, parts: list[str]) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """The rows of the parts not measured now, from the report in --out, and when they were measured."""
    if not previous.exists():
        return [], {}
    old = json.loads(previous.read_text())
    old_parts = old.get("parts") or {p: {"mode": old["mode"], "date": old["date"], "sizes": old.get("sizes", {})}
                                     for p in PARTS}
    kept = []
    for r in old["rows"]:
        p = part_of(r)
        if p is not None and p not in parts and p in old_parts:
            kept.append({"part": p, **r})
    return kept, {p: old_parts[p] for p in PARTS if any(r["part"] == p for r in kept)}


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench")
    parser.add_argument("--smoke", action="store_true")
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--out", type=Path, default=Path("docs"))
    parser.add_argument("--only", action="append", metavar="PART[,PART...]",
                        help=f"measure only these parts ({', '.join(PARTS)}; default: all); the other parts' rows "
                             "are kept from the benchmarks.json in --out, marked with their date")
    parser.add_argument("--report-only", action="store_true",
                        help="rewrite benchmarks.md from the benchmarks.json in --out, measuring nothing")
    args = parser.parse_args()
    if args.report_only:
        write_report(args.out, json.loads((args.out / "benchmarks.json").read_text()))
        return
    mode = "smoke" if args.smoke else "quick" if args.quick else "full"
    size = SIZES[mode]
    parts = parse_parts(parser, args.only)

    if os.environ.get("DATABASE_URL") and not os.environ.get("USERSYNC_TEST_DSN"):
        os.environ["USERSYNC_TEST_DSN"] = os.environ["DATABASE_URL"]
    server = harness.choose_server()
    harness.drop_stale_databases(server)
    b = Bench(server)
    rows: list[dict[str, Any]] = []
    try:
        print(f"usersync benchmarks ({mode}; {', '.join(parts)}) on {server.describe()}", flush=True)
        if "pgbench" in parts:
            rows += pgbench.rows(b, [EXAMPLE, UUID_PROFILES], size["pgbench_users"], size["pgbench_seconds"],
                                 size["pgbench_runs"])
        if "bulk" in parts:
            rows += shape_rows(b, EXAMPLE, size, lambda n: None)
        if "resync" in parts:
            rs = resync(b, size["resync"], size["batch"])
            rows.append({"part": "resync",
                         "scenario": f"resync_all after a mapping change (batches of {size['batch']:,}; "
                                     f"longest batch {fmt_s(rs['longest_batch'])})",
                         "size": size["resync"], "usersync": rs["total"], "hand": None, "base": rs["baseline"],
                         "base_name": "one UPDATE … FROM", "spread": 0.0, "goal": "≤ 1.5 × one set-based UPDATE",
                         "met": rs["total"] <= 1.5 * rs["baseline"]})
        if "orm" in parts:
            ormr = orm_updates(b, size["orm"])
            rows.append({"part": "orm", "scenario": "ORM: same updates, app-side event hook vs usersync",
                         "size": size["orm"], "usersync": ormr["usersync"], "hand": None,
                         "base": ormr["app-side hook"], "base_name": "app-side hook", "spread": 0.0,
                         "goal": "usersync faster", "met": ormr["usersync"] < ormr["app-side hook"]})
        if "bulk" in parts:
            rows += shape_rows(b, UUID_PROFILES, size, lambda n: max(UUID_CAP_MIN_S, n * UUID_CAP_PER_ROW_S))
        with psycopg.connect(server.conninfo()) as conn:
            version = conn.execute("show server_version").fetchone()[0]
    finally:
        b.close()

    mem = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    when = dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    measured_now = {p: {"mode": mode, "date": when, "sizes": size} for p in parts}
    kept, kept_parts = carried_over(args.out / "benchmarks.json", parts) if parts != list(PARTS) else ([], {})
    rows = sorted(rows + kept, key=lambda r: PARTS.index(r["part"]))  # stable: each part's own order
    result = {"mode": mode, "date": when,
              "machine": f"{platform.machine()}, {os.cpu_count()} cores, {mem:.0f} GiB, "
                         f"{platform.system()} {platform.release()}",
              "postgresql": version, "server": server.describe(), "sizes": size,
              "parts": {p: (measured_now | kept_parts)[p] for p in PARTS if p in measured_now or p in kept_parts},
              "rows": rows}
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "benchmarks.json").write_text(json.dumps(result, indent=2, default=str) + "\n")
    write_report(args.out, result)


def fmt_ratio(r: dict[str, Any], divisor: str) -> str:
    """usersync ÷ hand or ÷ base; '>' where usersync's figure is a lower bound, '<' where the divisor's is."""
    bounds = r.get("lower_bounds", [])
    top, bottom = "usersync" in bounds, divisor in bounds
    value = r["usersync"] / r[divisor]
    return "?" if top and bottom else f"> {value:.2f}" if top else f"< {value:.2f}" if bottom else f"{value:.2f}"


def pgbench_section(rows: list[dict[str, Any]]) -> str:
    if not rows:
        return ""
    table = pgbench.report_table(rows)
    print(table)
    first = rows[0]
    runs = "once" if first["runs"] == 1 else f"{first['runs']} times"
    return f"""## Single-row paths, measured with pgbench

PostgreSQL's own benchmark client, of the server's version (`bench/pgbench.py`). Per shape, one
database per variant holds the same {first['size']:,} users; every scenario runs {runs} per
variant for {first['seconds']} s (`pgbench -n -M prepared -T {first['seconds']} --failures-detailed`), the
variants' runs interleaved round robin (run 1 of each, then run 2 of each, the order rotated
every round), all on the same server with its own settings (`synchronous_commit` as configured:
each commit waits for its WAL flush). Before every run: `VACUUM ANALYZE` of the variant's
database and `CHECKPOINT`. A user is picked at random by key through a lookup table
(`bench_keys`: n → id, in the order the users were made) and gets a new `first_name` every time,
so its contact is really rewritten; the mix also inserts new users (each creates a synced
contact where something syncs). The uuid profiles rows connect as the application's role
(row-level security applies), the others as the connecting superuser.

A cell is the median of pgbench's *latency average* (ms per transaction) · the median tps.
*spread*: (max − min) ÷ median of the latencies across one variant's runs, the largest of the
three. *errors*: failed transactions, deadlocks (pgbench's deadlock failures and the run's
`pg_stat_database.deadlocks`), clients aborted by an error, and contacts out of step after a run
(a user whose contact is missing or has another first name); every count is in benchmarks.json,
with each run's figures and command line. The latency goal is met when the ratio of the medians
is at most 1.15 and nothing failed; the concurrency goal when nothing failed.

{table}

{pgbench.report_notes(rows)}
"""


def write_report(out: Path, result: dict[str, Any]) -> None:
    mode, when, machine = result["mode"], result["date"], result["machine"]
    server = result["server"]
    parts = result.get("parts", {})
    all_rows = result["rows"]
    rows = [r for r in all_rows if r.get("part") != "pgbench"]
    size = parts.get("bulk", {}).get("sizes") or result["sizes"]

    def fig(r: dict[str, Any], key: str) -> str:
        return ("> " if key in r.get("lower_bounds", []) else "") + fmt_s(r[key])

    header = ("| scenario | rows | usersync | hand-written row trigger | baseline | usersync ÷ hand"
              " | usersync ÷ baseline | spread | goal | met |")
    lines = [header, "|" + " --- |" * 10]
    for r in rows:
        hand = fig(r, "hand") if r["hand"] is not None else "–"
        vs_hand = fmt_ratio(r, "hand") if r["hand"] else "–"
        lines.append(f"| {r['scenario']} | {r['size']:,} | {fig(r, 'usersync')} | {hand} | "
                     f"{fig(r, 'base')} ({r['base_name']}) | {vs_hand} | {fmt_ratio(r, 'base')} | "
                     f"{r['spread']:.0%} | {r['goal']} | {'yes' if r['met'] else 'no'} |")
    per_row = [f"| {r['scenario']} | {r['size']:,} | "
               f"{'≥ ' if 'usersync' in r.get('lower_bounds', []) else ''}{r['usersync'] / r['size'] * 1e6:.1f} µs |"
               for r in rows if "bulk" in r["scenario"]]
    pgbench_text = pgbench_section([r for r in all_rows if r.get("part") == "pgbench"])
    table = "\n".join(lines)
    if rows:
        print(table)
    cut = [r for r in rows if r.get("lower_bounds")]
    cut_note = "" if not cut else (
        "\n\nA figure marked `>` was cut off: " + "; ".join(
            f"{r['scenario']} at {r['size']:,} rows ({', '.join(r['lower_bounds'])})" for r in cut)
        + f". Each such statement was cancelled at the cap (max({UUID_CAP_MIN_S:.0f} s, "
          f"{UUID_CAP_PER_ROW_S * 1e6:.0f} µs per row)), so its time is a lower bound, as are the ratios "
          "computed from it; a variant cut off is not repeated at that size.")
    earlier = [f"{p} ({info['mode']} mode, {info['date']})" for p, info in parts.items()
               if (info["mode"], info["date"]) != (mode, when)]
    measured = ", ".join(p for p, info in parts.items() if (info["mode"], info["date"]) == (mode, when))
    provenance = "" if not earlier else (
        f" Measured in this run: {measured}; kept from earlier runs (`--only`): {'; '.join(earlier)}.")
    bulk = "" if not rows else f"""## Bulk statements, resync, ORM

Every figure is a median over repeats ({size.get('repeats', 1)} per size below 1,000,000, 1 at 1,000,000);
*spread* is (max − min) ÷ median across the repeats of the scenario's variants (each variant's
own spread is in benchmarks.json).

{table}{cut_note}

Where a goal is not met, [performance.md](performance.md) says why, with the profile.

"""
    cost = "" if not per_row else f"""## Cost per row, bulk (usersync)

| scenario | rows | per row |
| --- | --- | --- |
{chr(10).join(per_row)}

"""
    (out / "benchmarks.md").write_text(f"""# Benchmarks

Written by `make bench` ({mode} mode) on {when}: {machine};
server: {server}.{provenance} Ratios compare measurements of the same run on the same server.
All variants map the same 7 text fields.

- **hand-written row trigger**: the common pattern, an `AFTER INSERT OR UPDATE … FOR EACH ROW`
  PL/pgSQL trigger with a hard-coded column list and a link table (`bench/variants.py`).
- **no trigger** (*no sync* in older reports): the same statements with nothing attached to
  the table (the contacts are not written).
- **floor**: no trigger; the users are written, then one set-based `INSERT … SELECT` /
  `UPDATE … FROM` writes the contacts.

Two shapes of tables. The rows without a prefix use the example tables (`pyapp/examples.sql`:
bigint identity keys, a switch, every user switched on). The rows marked **uuid profiles** use
Supabase's pattern: `auth.users` (uuid key from `gen_random_uuid()`) feeding `public.profiles`,
whose key is the user's and references it `ON DELETE CASCADE`, with the same columns, row-level
security enabled on both tables and a permissive policy for the application's role, attached with
`usersync.attach('auth.users', 'public.profiles', shared_key => true)` (no switch). There the
hand-written trigger writes the profile with the user's key (no link table), the floor is
`INSERT INTO profiles … SELECT … FROM auth.users` / `UPDATE profiles … FROM auth.users`, and the
bulk INSERT and UPDATE and the pgbench statements run as the application's role (not the tables'
owner), so row-level security applies to them; COPY runs as the tables' owner, since PostgreSQL
refuses `COPY FROM` where row-level security applies.

{pgbench_text}{bulk}{cost}## Memory

No step materializes all rows: the triggers work on PostgreSQL's transition tables (tuplestores
that spill to disk past `work_mem`) inside set-based statements. The users' update trigger is a
row trigger, so an UPDATE also queues one trigger event per row and pair until the statement
ends, in memory (a few dozen bytes each), as any row trigger does. `resync_all` holds one batch of
ids at a time (`batch_size` bigints) and commits after each; the Python resync only reads
counters. One exception, by design: `usersync.sync_users(NULL)` collects the ids of every user
whose switch is on into one array (8 bytes per user: 8 MB for a million) and syncs them in one
transaction; use `resync_all` for batches.
""")


if __name__ == "__main__":
    main()
