"""Many pairs in one database: one schema per tenant, one pair per schema (docs/scaling.md).

    python -m bench.pairs [--pairs 1000] [--out docs/scaling.json]

Measures, on the server the benchmarks use (tests/harness.py's choice), in one fresh database:
the time to attach a pair as the number of pairs grows, a single-row UPDATE of a mapped field on
one tenant with 1 pair attached and with all of them, an ALTER TABLE on one tenant's table (the
DDL guard's cost), usersync.doctor() for one pair and for all, and the catalog's size.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import psycopg

from bench.runner import harness
from pyapp import migrate
from pyapp.config import Database

TENANT = """create schema {s};
create table {s}.users (id bigint generated always as identity primary key, login text not null unique,
                        first_name text, email text, sw boolean not null default true);
create table {s}.contacts (id bigint generated always as identity primary key, first_name text, email text);"""


def _update_latency(conn: psycopg.Connection, schema: str, n: int = 2000) -> float:
    """Median µs of one-row UPDATEs of a mapped field, each its own transaction."""
    uid = conn.execute(f"insert into {schema}.users (login, first_name) values ('probe', 'x') returning id").fetchone()
    assert uid is not None
    samples = []
    for i in range(n):
        t = time.perf_counter()
        conn.execute(f"update {schema}.users set first_name = %s where id = %s", [f"n{i}", uid[0]])
        samples.append(time.perf_counter() - t)
    return statistics.median(samples) * 1e6


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--pairs", type=int, default=1000)
    ap.add_argument("--out", default="docs/scaling.json")
    args = ap.parse_args()
    srv = harness.choose_server()
    name = srv.next_dbname("pairs")
    janitor = srv.janitor(name)
    janitor.init()
    try:
        db = Database(srv.conninfo(name), "pairs benchmark")
        migrate.upgrade(db)
        result: dict[str, object] = {"server": srv.describe(), "pairs": args.pairs}
        with psycopg.connect(db.conninfo, autocommit=True) as conn:
            attach_ms = []
            for i in range(args.pairs):
                s = f"t{i}"
                conn.execute(TENANT.format(s=s))
                t = time.perf_counter()
                conn.execute("select usersync.attach(%s, %s, 'sw', pair => %s)", [f"{s}.users", f"{s}.contacts", s])
                attach_ms.append((time.perf_counter() - t) * 1e3)
                if i == 0:
                    result["update_us_with_1_pair"] = round(_update_latency(conn, "t0"))
                if (i + 1) % 100 == 0:
                    print(f"{i + 1} pairs attached; last attach {attach_ms[-1]:.0f} ms", flush=True)
            result["attach_ms_first_10"] = round(statistics.median(attach_ms[:10]), 1)
            result["attach_ms_last_10"] = round(statistics.median(attach_ms[-10:]), 1)
            result["update_us_with_all_pairs"] = round(_update_latency(conn, f"t{args.pairs - 1}"))
            t = time.perf_counter()
            conn.execute(f"alter table t{args.pairs // 2}.contacts add column note text")
            result["alter_table_ms"] = round((time.perf_counter() - t) * 1e3, 1)
            t = time.perf_counter()
            conn.execute("select * from usersync.doctor('t0')").fetchall()
            result["doctor_one_pair_ms"] = round((time.perf_counter() - t) * 1e3, 1)
            t = time.perf_counter()
            problems = conn.execute("select * from usersync.doctor()").fetchall()
            result["doctor_all_pairs_s"] = round(time.perf_counter() - t, 2)
            result["doctor_problems"] = len(problems)
            row = conn.execute("select count(*), pg_size_pretty(sum(pg_column_size(prosrc))::bigint)"
                               " from pg_proc where pronamespace = 'usersync'::regnamespace").fetchone()
            assert row is not None
            result["functions"], result["generated_code_size"] = row[0], row[1]
            result["database_size"] = conn.execute("select pg_size_pretty(pg_database_size(current_database()))"
                                                   ).fetchone()[0]  # type: ignore[index]
        Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
        print(json.dumps(result, indent=2))
    finally:
        janitor.drop()


if __name__ == "__main__":
    main()
