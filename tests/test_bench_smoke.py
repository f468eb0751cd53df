"""The benchmarks at tiny sizes, so they never rot. No timing is asserted: figures are only
meaningful as the ratios `make bench` reports."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import harness

ROOT = Path(__file__).resolve().parent.parent


def test_the_benchmarks_run_and_write_their_report(pg_server: harness.Server, tmp_path: Path):
    env = {**os.environ, "USERSYNC_TEST_DSN": pg_server.conninfo()}
    env.pop("DATABASE_URL", None)
    subprocess.run([sys.executable, "-m", "bench", "--smoke", "--out", str(tmp_path)], cwd=ROOT, env=env,
                   check=True, capture_output=True, text=True, timeout=300)
    report = json.loads((tmp_path / "benchmarks.json").read_text())
    scenarios = [r["scenario"] for r in report["rows"]]
    assert any(s.startswith("single-row update latency") for s in scenarios)
    assert sum(s.startswith("bulk") for s in scenarios) == 3
    assert any(s.startswith("resync_all") for s in scenarios) and any(s.startswith("ORM") for s in scenarios)
    # The uuid "profiles" shape (Supabase's auth.users -> public.profiles, shared key, row-level security)
    uuid = [r for r in report["rows"] if r["scenario"].startswith("uuid profiles: ")]
    assert sorted(r["scenario"].removeprefix("uuid profiles: ").split(" ")[0] for r in uuid) == [
        "bulk", "bulk", "bulk", "single-row"]
    assert all(r["shape"] == "uuid profiles" and r["hand"] > 0 and set(r["spreads"]) == {"usersync", "hand", "base"}
               and r["ratios"]["usersync/hand"] > 0 and r["lower_bounds"] == [] for r in uuid)
    assert all(r["usersync"] > 0 and r["base"] > 0 for r in report["rows"])
    assert "| scenario |" in (tmp_path / "benchmarks.md").read_text()
