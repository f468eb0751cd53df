"""Plans stay right for the statement at hand, whatever the session ran before.

PL/pgSQL plans a static statement once per session, from the transition tables' sizes at its
first call. Measured on this engine before the fix: after two one-row UPDATEs, an UPDATE of
20,000 users took 113 s instead of 0.3 s (nested loops rescanning a tuplestore per row). These
tests read the executed plans (auto_explain, row counts only) instead of timing anything.
"""

from __future__ import annotations

import re

import psycopg
import pytest

BULK = 500  # above the engine's threshold of 100 rows


@pytest.fixture
def explained(conn: psycopg.Connection):
    conn.execute("insert into users (login, first_name, sync_to_contact)"
                 " select 'u' || g, 'F' || g, true from generate_series(1, %s) g", [BULK * 2])
    plans: list[str] = []
    conn.add_notice_handler(lambda d: plans.append(d.message_primary or ""))
    conn.execute("load 'auto_explain'")
    for setting in ("log_min_duration = 0", "log_analyze = on", "log_timing = off", "log_nested_statements = on"):
        conn.execute(f"set auto_explain.{setting}")

    def run(statement: str) -> list[str]:
        conn.execute("set client_min_messages = log")
        plans.clear()
        conn.execute(statement)
        conn.execute("set client_min_messages = notice")
        return list(plans)
    return run


def _rescanned_tuplestores(plans: list[str]) -> list[str]:
    return [line for plan in plans for line in plan.splitlines()
            if "Named Tuplestore Scan" in line and not re.search(r"loops=1\)", line)]


def test_a_bulk_update_after_one_row_updates_scans_each_transition_table_once(explained):
    explained("update users set first_name = 'a' where id = 1")
    explained("update users set first_name = 'b' where id = 2")
    plans = explained("update users set first_name = first_name || 'x' where id > 10")
    assert plans, "auto_explain reported nothing"
    assert _rescanned_tuplestores(plans) == []


def test_a_bulk_delete_after_one_row_deletes_scans_each_transition_table_once(explained, conn):
    conn.execute("update usersync.settings set delete_contact_with_user = true")
    explained("delete from users where id = 1")
    plans = explained("delete from users where id > 10")
    assert _rescanned_tuplestores(plans) == []


def test_one_row_updates_after_a_bulk_update_do_not_read_all_links(explained):
    explained("update users set first_name = first_name || 'x'")
    plans = explained("update users set first_name = 'one' where id = 3")
    assert not [p for p in plans if "Seq Scan on links" in p or "Seq Scan on contacts" in p]
