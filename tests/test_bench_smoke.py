"""The benchmarks at tiny sizes, so they never rot. No timing is asserted: figures are only
meaningful as the ratios `make bench` reports. What is asserted is the report's structure, and
that pgbench's concurrent runs saw no failed transaction, no deadlock and no contact out of step."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import harness

ROOT = Path(__file__).resolve().parent.parent
VARIANTS = {"usersync", "hand", "plain"}
PGBENCH_SCENARIOS = ["single-row UPDATE of a mapped field, 1 client", "single-row UPDATE of a mapped field, 4 clients",
                     "concurrent UPDATEs of random users, 8 clients",
                     "concurrent mix: 80% UPDATEs of random users, 20% INSERTs of new users, 8 clients"]


def run_bench(pg_server: harness.Server, out: Path, *args: str) -> dict:
    env = {**os.environ, "USERSYNC_TEST_DSN": pg_server.conninfo()}
    env.pop("DATABASE_URL", None)
    subprocess.run([sys.executable, "-m", "bench", "--smoke", "--out", str(out), *args], cwd=ROOT, env=env,
                   check=True, capture_output=True, text=True, timeout=300)
    return json.loads((out / "benchmarks.json").read_text())


def check_pgbench_row(r: dict) -> None:
    assert set(r["variants"]) == VARIANTS
    for v in r["variants"].values():
        assert v["median_latency_ms"] > 0 and v["median_tps"] > 0 and v["spread"] >= 0
        assert len(v["runs"]) == r["runs"] >= 1
        assert "pgbench" in v["command"] and "-M prepared" in v["command"] and f"-c {r['clients']}" in v["command"]
    assert r["ratio"]["usersync/hand latency"] > 0
    assert r["goal"] and isinstance(r["met"], bool)
    assert set(r["errors"]) == VARIANTS
    for variant, e in r["errors"].items():
        assert e["failed_transactions"] == e["aborted_clients"] == e["out_of_sync"] == 0, (r["scenario"], variant, e)
        assert e["deadlock_failures"] == e["server_deadlocks"] == 0, (r["scenario"], variant, e)
    assert r["deadlocks"] == 0


def test_the_benchmarks_run_and_write_their_report(pg_server: harness.Server, tmp_path: Path):
    report = run_bench(pg_server, tmp_path)
    rows = report["rows"]
    scenarios = [r["scenario"] for r in rows]
    # pgbench replaced the Python loop of the single-row latency
    assert not any("single-row update latency" in s for s in scenarios)
    pg = [r for r in rows if r["part"] == "pgbench"]
    assert [r["scenario"] for r in pg] == PGBENCH_SCENARIOS + [f"uuid profiles: {s}" for s in PGBENCH_SCENARIOS]
    assert [r["clients"] for r in pg] == [1, 4, 8, 8] * 2
    assert {r["shape"] for r in pg} == {"bigint example", "uuid profiles"}
    for r in pg:
        check_pgbench_row(r)
        assert r["size"] == report["sizes"]["pgbench_users"]
    assert all(r["as_role"] == harness.APP_ROLE for r in pg if r["shape"] == "uuid profiles")
    assert sum(s.startswith("bulk") for s in scenarios) == 3
    assert any(s.startswith("resync_all") for s in scenarios) and any(s.startswith("ORM") for s in scenarios)
    # The uuid "profiles" shape (Supabase's auth.users -> public.profiles, shared key, row-level security)
    uuid = [r for r in rows if r["scenario"].startswith("uuid profiles: ") and r["part"] != "pgbench"]
    assert sorted(r["scenario"].removeprefix("uuid profiles: ").split(" ")[0] for r in uuid) == ["bulk"] * 3
    assert all(r["shape"] == "uuid profiles" and r["hand"] > 0 and set(r["spreads"]) == {"usersync", "hand", "base"}
               and r["ratios"]["usersync/hand"] > 0 and r["lower_bounds"] == [] for r in uuid)
    assert all(r["usersync"] > 0 and r["base"] > 0 for r in rows if r["part"] != "pgbench")
    md = (tmp_path / "benchmarks.md").read_text()
    assert "| scenario | rows |" in md and "| scenario | users | clients |" in md
    assert all(s in md for s in scenarios)

    # --only measures one part and keeps the others' rows, marked as earlier
    again = run_bench(pg_server, tmp_path, "--only", "orm")
    assert [r["scenario"] for r in again["rows"]] == scenarios
    assert [r for r in again["rows"] if r["part"] == "pgbench"] == pg
    assert set(again["parts"]) == {"pgbench", "bulk", "resync", "orm"}
    assert again["parts"]["orm"]["date"] == again["date"]
