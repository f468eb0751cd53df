"""Faults: a resync killed or timed out mid-run keeps its committed batches and a rerun finishes
with the same result as an uninterrupted run; a statement that fails half-way changes nothing."""

from __future__ import annotations

import threading
import time

import psycopg
import pytest
from helpers import mismatches, one

import harness

PAIRS = 600
BATCH = 50


@pytest.fixture
def stale_pairs(conn) -> None:
    conn.execute("insert into users (login, academic_title, sync_to_contact)"
                 " select 'u' || g, 'T' || g, true from generate_series(1, %s) g", [PAIRS])
    conn.execute("insert into usersync.field_mapping values ('academic_title', 'title')")


def _admin(pg_server: harness.Server, dbname: str) -> psycopg.Connection:
    return psycopg.connect(pg_server.conninfo(dbname, user=harness.ADMIN_ROLE, password=harness.ROLE_PASSWORD),
                           autocommit=True)


def _up_to_date(conn) -> int:
    return one(conn, "select count(*) from usersync.synchronized_contacts where up_to_date")


def _wait_until(predicate, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.01)


def _hold_row_lock(pg_server, dbname, user_id: int) -> psycopg.Connection:
    """Another transaction holds a user row, so the resync stops at that batch."""
    blocker = psycopg.connect(pg_server.conninfo(dbname))
    blocker.execute("update users set login = login where id = %s", [user_id])  # open transaction
    return blocker


def _start_run(pg_server, dbname) -> None:
    """A run's first batch, before the blocker: a new run would wait for the blocker's open
    write to end before it starts (see the test below)."""
    with _admin(pg_server, dbname) as runner:
        runner.execute("select * from usersync.resync_step(%s)", [BATCH])


def test_a_new_run_waits_for_an_open_write_and_lock_timeout_bounds_the_wait(pg_server, dbname, conn, stale_pairs):
    blocker = _hold_row_lock(pg_server, dbname, one(conn, "select max(id) from users"))
    with _admin(pg_server, dbname) as runner:
        runner.execute("set lock_timeout = '200ms'")
        with pytest.raises(psycopg.errors.LockNotAvailable, match="waits for transactions that wrote"):
            runner.execute("call usersync.resync_all(%s)", [BATCH])
    assert _up_to_date(conn) == 0
    blocker.rollback()
    blocker.close()
    with _admin(pg_server, dbname) as runner:
        runner.execute("call usersync.resync_all(%s)", [BATCH])
    assert _up_to_date(conn) == PAIRS and mismatches(conn) == []


def test_a_resync_killed_mid_run_keeps_committed_batches_and_a_rerun_finishes(pg_server, dbname, conn, stale_pairs):
    middle = one(conn, "select id from users order by id offset %s limit 1", [PAIRS // 2])
    _start_run(pg_server, dbname)
    blocker = _hold_row_lock(pg_server, dbname, middle)
    runner = _admin(pg_server, dbname)
    pid = runner.info.backend_pid
    failure: list[BaseException] = []

    def run() -> None:
        try:
            runner.execute("call usersync.resync_all(%s)", [BATCH])
        except psycopg.Error as exc:
            failure.append(exc)

    thread = threading.Thread(target=run)
    thread.start()
    _wait_until(lambda: one(conn, "select wait_event_type = 'Lock' from pg_stat_activity where pid = %s", [pid]))
    conn.execute("select pg_terminate_backend(%s)", [pid])
    thread.join(10)
    assert failure, "the resync should have been terminated"
    blocker.rollback()
    blocker.close()
    done_before = _up_to_date(conn)
    assert 0 < done_before < PAIRS  # committed batches stayed
    with _admin(pg_server, dbname) as again:
        again.execute("call usersync.resync_all(%s)", [BATCH])
    assert _up_to_date(conn) == PAIRS
    assert one(conn, "select synced, failed, finished_at is not null from usersync.resync_state") == (PAIRS, 0, True)
    assert mismatches(conn) == []


def test_a_resync_hitting_lock_timeout_stops_cleanly_and_resumes(pg_server, dbname, conn, stale_pairs):
    middle = one(conn, "select id from users order by id offset %s limit 1", [PAIRS // 2])
    _start_run(pg_server, dbname)
    blocker = _hold_row_lock(pg_server, dbname, middle)
    with _admin(pg_server, dbname) as runner:
        runner.execute("set lock_timeout = '200ms'")
        with pytest.raises(psycopg.errors.LockNotAvailable):
            runner.execute("call usersync.resync_all(%s)", [BATCH])
    assert 0 < _up_to_date(conn) < PAIRS
    blocker.rollback()
    blocker.close()
    with _admin(pg_server, dbname) as runner:
        runner.execute("call usersync.resync_all(%s)", [BATCH])
    assert _up_to_date(conn) == PAIRS and mismatches(conn) == []


def test_a_bulk_insert_failing_at_its_last_row_changes_nothing(conn):
    conn.execute("alter table contacts add column code varchar(5)")
    conn.execute("alter table users add column code text")
    conn.execute("insert into usersync.field_mapping values ('code', 'code')")
    with pytest.raises(psycopg.errors.StringDataRightTruncation) as info:
        conn.execute("insert into users (login, code, sync_to_contact)"
                     " select 'bulk' || g, case when g = 50000 then 'far too long' else 'ok' end, true"
                     " from generate_series(1, 50000) g")
    assert "contact (new)" in info.value.diag.message_primary and '"code"' in info.value.diag.message_primary
    assert one(conn, "select (select count(*) from users) + (select count(*) from contacts)"
                     " + (select count(*) from usersync.links_1)") == 0


@pytest.mark.parametrize("contacts", [0, 3])
def test_naming_the_culprit_of_a_failed_bulk_insert_takes_no_contact_ids(conn, contacts):
    conn.execute("alter table contacts add column code varchar(5)")
    conn.execute("alter table users add column code text")
    conn.execute("insert into usersync.field_mapping values ('code', 'code')")
    for i in range(contacts):
        conn.execute("insert into contacts (first_name) values (%s)", [f"plain {i}"])
    before = one(conn, "select last_value from contacts_id_seq")
    with pytest.raises(psycopg.errors.StringDataRightTruncation) as info:
        conn.execute("insert into users (login, code, sync_to_contact)"
                     " select 'bulk' || g, case when g = 5000 then 'far too long' else 'ok' end, true"
                     " from generate_series(1, 5000) g")
    assert '"code"' in info.value.diag.message_primary
    # The failed statement itself drew one id per new contact; the diagnosis draws none.
    assert one(conn, "select last_value from contacts_id_seq") - before <= 5000


def test_a_new_run_waits_for_a_prepared_transaction_that_wrote_under_the_mapping_before():
    # A prepared transaction (two-phase commit) has no session: it holds its locks until COMMIT
    # PREPARED. Its new user was synced with the code of the mapping before; a run that did not
    # wait for it would count that pair as gone past once it commits. (A server of its own:
    # max_prepared_transactions is 0 by default.)
    srv = harness.extra_server({"max_prepared_transactions": "2"})
    if srv is None:
        pytest.skip("no PostgreSQL binaries of the machine's own to start a server with prepared transactions")
    assert srv.handle is not None
    try:
        conninfo = harness.install_example(srv)
        with psycopg.connect(conninfo, autocommit=True) as owner, psycopg.connect(conninfo, autocommit=True) as app:
            owner.execute("insert into users (login, academic_title, sync_to_contact)"
                          " select 'u' || g, 'T' || g, true from generate_series(1, 20) g")
            app.execute("begin")
            app.execute("insert into users (login, academic_title, sync_to_contact) values ('late', 'Dr', true)")
            app.execute("prepare transaction 'late_user'")
            owner.execute("insert into usersync.field_mapping values ('academic_title', 'title')")
            owner.execute("set lock_timeout = '300ms'")
            with pytest.raises(psycopg.errors.LockNotAvailable, match="waits for transactions that wrote") as caught:
                owner.execute("call usersync.resync_all(10)")
            assert "prepared transactions 'late_user'" in (caught.value.diag.message_detail or "")
            assert "pg_prepared_xacts" in (caught.value.diag.message_hint or "")
            owner.execute("commit prepared 'late_user'")
            owner.execute("call usersync.resync_all(10)")
            assert one(owner, "select count(*) from usersync.synchronized_contacts where up_to_date") == 21
            assert mismatches(owner) == []
    finally:
        srv.handle.stop()
