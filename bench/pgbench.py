"""The single-row paths measured with pgbench, PostgreSQL's own benchmark client (#13).

Per shape (the bigint example tables and the uuid profiles), one database per variant (usersync,
the hand-written row trigger, no trigger) is filled with the same users, then:

- single-row UPDATE of a mapped field (first_name), one statement per transaction, at 1 and at 4
  clients;
- 8 clients UPDATEing random users;
- 8 clients, 80% UPDATEs of random users and 20% INSERTs of new users (each insert creates a
  synced contact where something syncs).

Each scenario runs `runs` times per variant, the variants' runs interleaved (round robin: run 1 of
each variant, then run 2 of each, the order rotated every round so no variant always goes first),
all on the same server, with its own settings (synchronous_commit as configured). Before every
run: VACUUM ANALYZE of the variant's database and a CHECKPOINT. Per variant: the median of
pgbench's "latency average" (ms per transaction) and of its tps, and the spread
((max - min) / median of the latencies); errors (failed transactions, deadlocks, aborted clients,
contacts left out of step) are counted per run.
"""

from __future__ import annotations

import os
import re
import shlex
import statistics
import subprocess
import tempfile
import time
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psycopg

from bench.runner import Bench, Shape, harness

LATENCY_GOAL = "usersync ≤ 1.15 × hand-written"
LATENCY_LIMIT = 1.15
CONCURRENCY_GOAL = "no deadlocks, no failed transactions"
VARIANTS = ("usersync", "hand", "plain")
VALUE_RANGE = 1_000_000_000  # the new first_name is 'n' || random(1, VALUE_RANGE): it changes every time


@dataclass(frozen=True)
class Scenario:
    name: str
    clients: int
    mix: bool  # 80% updates, 20% inserts of new users
    goal: str

    def met(self, ratio: float | None, errors: int) -> bool:
        """The latency goal: the ratio of the medians; every goal: no error of any kind."""
        if errors:
            return False
        return self.goal != LATENCY_GOAL or (ratio is not None and ratio <= LATENCY_LIMIT)


SCENARIOS = (
    Scenario("single-row UPDATE of a mapped field, 1 client", 1, False, LATENCY_GOAL),
    Scenario("single-row UPDATE of a mapped field, 4 clients", 4, False, LATENCY_GOAL),
    Scenario("concurrent UPDATEs of random users, 8 clients", 8, False, CONCURRENCY_GOAL),
    Scenario("concurrent mix: 80% UPDATEs of random users, 20% INSERTs of new users, 8 clients", 8, True,
             CONCURRENCY_GOAL),
)


def update_script(shape: Shape, users: int) -> str:
    return (f"\\set n random(1, {users})\n"
            f"\\set v random(1, {VALUE_RANGE})\n"
            f"update {shape.users} set first_name = 'n' || :v where id = (select id from bench_keys where n = :n);\n")


# What an inserted user's columns get; s is the next value of bench_login_seq (unique logins and emails).
_INSERT_VALUES = {
    "login": "'pgb' || s", "first_name": "'n' || :v", "last_name": "'Last' || s",
    "email": "'pgb' || s || '@example.org'", "phone": "'+49 30 ' || s", "mobile": "'+49 170 ' || s",
    "department": "'Dept ' || (s % 20)", "job_title": "'Job ' || (s % 50)", "sync_to_contact": "true",
}


def insert_script(shape: Shape) -> str:
    cols = [c.strip() for c in shape.columns.split(",")]
    values = ", ".join(_INSERT_VALUES[c] for c in cols)
    return (f"\\set v random(1, {VALUE_RANGE})\n"
            f"insert into {shape.users} ({', '.join(cols)}) select {values} from nextval('bench_login_seq') s;\n")


def prepare(conn: psycopg.Connection, shape: Shape, users: int) -> None:
    """Fill the variant's database and add what the scripts need: bench_keys (n = 1..users in the
    order the users were made -> their key) and the sequence for new logins."""
    shape.fill(conn, users)
    conn.execute(f"create table bench_keys as select (row_number() over (order by length(login), login))::int as n,"
                 f" id from {shape.users}")
    conn.execute("alter table bench_keys add primary key (n)")
    conn.execute("grant select on bench_keys to public")
    conn.execute("create sequence bench_login_seq")
    conn.execute("grant usage on sequence bench_login_seq to public")
    assert conn.execute("select count(*) from bench_keys").fetchone() == (users,)


def settle(conn: psycopg.Connection) -> None:
    conn.execute("vacuum analyze")
    conn.execute("checkpoint")


def out_of_sync(conn: psycopg.Connection, shape: Shape) -> int:
    """Users whose contact is missing or has another first_name (the emails are unique per user)."""
    row = conn.execute(f"select count(*) from {shape.users} u left join {shape.contacts} c on c.email = u.email"
                       " where c.email is null or c.first_name is distinct from u.first_name").fetchone()
    assert row is not None
    return int(row[0])


def server_deadlocks(conn: psycopg.Connection) -> int:
    row = conn.execute("select deadlocks from pg_stat_database where datname = current_database()").fetchone()
    assert row is not None
    return int(row[0])


def wait_for_clients_gone(conn: psycopg.Connection, timeout: float = 10.0) -> None:
    """pgbench's backends have exited (and so reported their statistics) before anything is read."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        row = conn.execute("select count(*) from pg_stat_activity where datname = current_database()"
                           " and pid <> pg_backend_pid()").fetchone()
        if row == (0,):
            return
        time.sleep(0.05)


def _number(pattern: str, text: str, cast: type = float) -> Any:
    m = re.search(pattern, text, re.MULTILINE)
    return cast(m.group(1)) if m else None


def parse(stdout: str, stderr: str, returncode: int) -> dict[str, Any]:
    """The figures of one pgbench run (PostgreSQL 15's output, with --failures-detailed)."""
    # The totals come before the per-script sections ("SQL script N: file" and " - ..." lines).
    total, *sections = stdout.split("\nSQL script ")
    aborted = re.findall(r"client \d+ script \d+ aborted in command \d+ query \d+: (.*)", stderr)
    other = [line for line in stderr.splitlines()
             if "error" in line.lower() and "aborted in command" not in line and "Run was aborted" not in line]
    scripts = {}
    for section in sections:
        name = Path(section.split("\n", 1)[0].split(": ", 1)[-1].strip()).stem
        scripts[name] = {"transactions": _number(r"^ - (\d+) transactions", section, int),
                         "tps": _number(r"^ - \d+ transactions \(.*tps = ([\d.]+)\)", section),
                         "latency_ms": _number(r"^ - latency average = ([\d.]+) ms", section)}
    return {
        "latency_ms": _number(r"^latency average = ([\d.]+) ms", total),
        "tps": _number(r"^tps = ([\d.]+)", total),
        "transactions": _number(r"^number of transactions actually processed: (\d+)", total, int),
        "failed_transactions": _number(r"^number of failed transactions: (\d+)", total, int),
        "serialization_failures": _number(r"^number of serialization failures: (\d+)", total, int),
        "deadlock_failures": _number(r"^number of deadlock failures: (\d+)", total, int),
        "aborted_clients": len(aborted),
        "exit_code": returncode,
        "messages": sorted(set(aborted + other))[:5],
        **({"scripts": scripts} if scripts else {}),
    }


def _threads(clients: int) -> int:
    cores = os.cpu_count() or 1
    return max(j for j in range(1, min(clients, cores) + 1) if clients % j == 0)


class Runner:
    """pgbench of the server's version, pointed at one database per variant."""

    def __init__(self, b: Bench) -> None:
        tool = harness.client_tool(b.server, "pgbench")
        if tool is None:
            raise RuntimeError(f"pgbench of PostgreSQL {b.server.version} not found (install its client programs),"
                               " or leave pgbench out: --only bulk,resync,orm")
        self.tool = tool
        self.version = subprocess.run([str(tool), "--version"], capture_output=True, text=True).stdout.strip()
        self.server = b.server

    def target(self, dbname: str, role: str | None) -> tuple[str, dict[str, str]]:
        """The connection string (no password in it: the command line goes into the report) and the environment."""
        params = {k: v for k, v in self.server.params.items() if k != "password"}
        params["dbname"] = dbname
        password = self.server.params.get("password")
        if role is not None:
            params["user"] = role
            password = harness.ROLE_PASSWORD
        env = dict(os.environ)
        if password:
            env["PGPASSWORD"] = str(password)
        return psycopg.conninfo.make_conninfo(**params), env

    def command(self, scripts: list[tuple[Path, int]], clients: int, seconds: int, conninfo: str) -> list[str]:
        files = [f"{path}@{weight}" if len(scripts) > 1 else str(path) for path, weight in scripts]
        return [str(self.tool), "-n", "-M", "prepared", "-T", str(seconds), "-c", str(clients),
                "-j", str(_threads(clients)), "--failures-detailed",
                *[a for f in files for a in ("-f", f)], conninfo]

    def run(self, cmd: list[str], env: dict[str, str], seconds: int) -> dict[str, Any]:
        proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=seconds + 300)
        # 1: bad options, a script that does not parse, no connection: the benchmark's fault. 2: a
        # client aborted on an error (the figures so far are printed): counted in the report.
        if proc.returncode != 0 and not (proc.returncode == 2 and "transactions actually processed" in proc.stdout):
            raise RuntimeError(f"pgbench failed ({proc.returncode}): {shlex.join(cmd)}\n{proc.stderr}{proc.stdout}")
        return parse(proc.stdout, proc.stderr, proc.returncode)


def _median(xs: list[float | None]) -> float | None:
    vals = [x for x in xs if x is not None]
    return statistics.median(vals) if vals else None


def _spread(xs: list[float | None]) -> float | None:
    vals = [x for x in xs if x is not None]
    if not vals:
        return None
    m = statistics.median(vals)
    return (max(vals) - min(vals)) / m if m else 0.0


def _ratio(a: float | None, b: float | None) -> float | None:
    return a / b if a is not None and b else None


ERROR_KEYS = ("failed_transactions", "deadlock_failures", "serialization_failures", "aborted_clients",
              "server_deadlocks", "out_of_sync")


def summarize(shape: Shape, scenario: Scenario, users: int, seconds: int, runs: dict[str, list[dict[str, Any]]],
              commands: dict[str, str], scripts: dict[str, str], order: list[list[str]]) -> dict[str, Any]:
    variants: dict[str, Any] = {}
    errors: dict[str, Any] = {}
    for v in VARIANTS:
        rs = runs[v]
        lat = [r["latency_ms"] for r in rs]
        tps = [r["tps"] for r in rs]
        variants[v] = {"median_latency_ms": _median(lat), "median_tps": _median(tps), "spread": _spread(lat),
                       "tps_spread": _spread(tps), "runs": rs, "command": commands[v]}
        errors[v] = {k: sum(r.get(k) or 0 for r in rs) for k in ERROR_KEYS}
        errors[v]["messages"] = sorted({m for r in rs for m in r["messages"]})[:5]
    u, h, p = (variants[v] for v in VARIANTS)
    rounds = [_ratio(a["latency_ms"], b["latency_ms"]) for a, b in zip(runs["usersync"], runs["hand"], strict=True)]
    ratio = {
        "usersync/hand latency": _ratio(u["median_latency_ms"], h["median_latency_ms"]),
        "usersync/hand latency, median of the rounds' ratios": _median(rounds),
        "usersync/hand tps": _ratio(u["median_tps"], h["median_tps"]),
        "usersync/no trigger latency": _ratio(u["median_latency_ms"], p["median_latency_ms"]),
        "hand/no trigger latency": _ratio(h["median_latency_ms"], p["median_latency_ms"]),
    }
    n_errors = sum(errors[v][k] for v in VARIANTS for k in ERROR_KEYS)
    spreads = [x["spread"] for x in variants.values() if x["spread"] is not None]
    return {
        "part": "pgbench", "scenario": shape.name(scenario.name), "shape": shape.label or "bigint example",
        "size": users, "clients": scenario.clients, "seconds": seconds, "runs": len(runs["usersync"]),
        "mix": "80% update / 20% insert" if scenario.mix else "100% update",
        "as_role": shape.role, "variants": variants, "ratio": ratio,
        "spread": max(spreads) if spreads else None,
        "goal": scenario.goal, "met": scenario.met(ratio["usersync/hand latency"], n_errors),
        # pgbench's deadlock failures are among the server's count of the same runs: the larger of the two
        "errors": errors, "deadlocks": sum(max(errors[v]["deadlock_failures"], errors[v]["server_deadlocks"])
                                           for v in VARIANTS),
        "order": order, "scripts": scripts,
    }


def shape_rows(b: Bench, shape: Shape, users: int, seconds: int, repeats: int) -> list[dict[str, Any]]:
    """Every pgbench scenario on one shape: the three variants' databases live side by side."""
    with tempfile.TemporaryDirectory(prefix="usersync-pgbench-") as tmp, ExitStack() as stack:
        runner = Runner(b)
        update_file = Path(tmp) / "update.sql"
        insert_file = Path(tmp) / "insert.sql"
        update_file.write_text(update_script(shape, users))
        insert_file.write_text(insert_script(shape))
        conns: dict[str, psycopg.Connection] = {}
        for v in VARIANTS:
            conns[v] = stack.enter_context(b.database(shape.variants[v]))
            prepare(conns[v], shape, users)
        targets = {v: runner.target(conns[v].info.dbname, shape.role) for v in VARIANTS}
        rows = []
        for scenario in SCENARIOS:
            files = [(update_file, 8), (insert_file, 2)] if scenario.mix else [(update_file, 1)]
            scripts = {f.name: f.read_text() for f, _ in files}
            commands = {v: runner.command(files, scenario.clients, seconds, targets[v][0]) for v in VARIANTS}
            runs: dict[str, list[dict[str, Any]]] = {v: [] for v in VARIANTS}
            order = []
            for r in range(repeats):
                rotated = list(VARIANTS[r % 3:] + VARIANTS[:r % 3])  # round robin, no variant always first
                order.append(rotated)
                for v in rotated:
                    conn = conns[v]
                    settle(conn)
                    before = server_deadlocks(conn)
                    result = runner.run(commands[v], targets[v][1], seconds)
                    wait_for_clients_gone(conn)
                    result["server_deadlocks"] = server_deadlocks(conn) - before
                    result["out_of_sync"] = out_of_sync(conn, shape) if v != "plain" else 0
                    runs[v].append(result)
            rows.append(summarize(shape, scenario, users, seconds, runs,
                                  {v: shlex.join(c) for v, c in commands.items()}, scripts, order)
                        | {"pgbench": runner.version})
            print(f"  pgbench {shape.name(scenario.name)} done", flush=True)
        return rows


def rows(b: Bench, shapes: list[Shape], users: int, seconds: int, repeats: int) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    for shape in shapes:
        out += shape_rows(b, shape, users, seconds, repeats)
    return out


# -- the report ---------------------------------------------------------------------------------


def _ms(x: float | None) -> str:
    if x is None:
        return "–"
    return f"{x:.3f} ms" if x < 1 else f"{x:,.2f} ms"


def _cell(v: dict[str, Any]) -> str:
    tps = "–" if v["median_tps"] is None else f"{v['median_tps']:,.0f} tps"
    return f"{_ms(v['median_latency_ms'])} · {tps}"


def _errors_cell(r: dict[str, Any]) -> str:
    parts = []
    for v, e in r["errors"].items():
        bits = [f"{e[k]} {label}" for k, label in (
            ("failed_transactions", "failed"), ("deadlock_failures", "deadlocks"),
            ("server_deadlocks", "deadlocks (server)"), ("aborted_clients", "clients aborted"),
            ("out_of_sync", "contacts out of step")) if e.get(k)]
        if bits:
            parts.append(f"{v}: {', '.join(bits)}")
    return "; ".join(parts) if parts else "0"


def _fmt(x: float | None, spec: str) -> str:
    return "–" if x is None else format(x, spec)


def report_table(rows: list[dict[str, Any]]) -> str:
    lines = ["| scenario | users | clients | usersync | hand-written row trigger | no trigger | usersync ÷ hand"
             " (latency) | spread | errors | goal | met |", "|" + " --- |" * 11]
    for r in rows:
        v = r["variants"]
        lines.append(f"| {r['scenario']} | {r['size']:,} | {r['clients']} | {_cell(v['usersync'])} | "
                     f"{_cell(v['hand'])} | {_cell(v['plain'])} | {_fmt(r['ratio']['usersync/hand latency'], '.2f')} | "
                     f"{_fmt(r['spread'], '.0%')} | {_errors_cell(r)} | {r['goal']} | {'yes' if r['met'] else 'no'} |")
    return "\n".join(lines)


def report_notes(rows: list[dict[str, Any]]) -> str:
    """Error messages, if any, and an example command line with its scripts."""
    notes = []
    for r in rows:
        for v, e in r["errors"].items():
            for m in e["messages"]:
                notes.append(f"- {r['scenario']}, {v}: `{m}`")
    example = next((r for r in rows if r["mix"] != "100% update"), rows[0])
    # (indented, not fenced: the documentation's fenced blocks are commands tests/test_docs.py runs)
    scripts = "\n".join(f"{name}:\n\n{_indented(text)}\n" for name, text in example["scripts"].items())
    out = ""
    if notes:
        out += "Errors reported by pgbench:\n\n" + "\n".join(notes) + "\n\n"
    out += (f"The command line of each run is in benchmarks.json; for example ({example['scenario']}, usersync):\n\n"
            f"{_indented(example['variants']['usersync']['command'])}\n\n{scripts}")
    return out


def _indented(text: str) -> str:
    return "\n".join("    " + line for line in text.rstrip().splitlines())
