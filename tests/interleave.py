"""Explicit interleavings of concurrent sessions, in the manner of PostgreSQL's isolation tester.

Each Session runs its statements on its own connection in a worker thread. ``step`` starts a
statement and returns once it has either finished or is blocked on a lock held by another of
the sessions (asked of the server with pg_isolation_test_session_is_blocked, as isolationtester
does), so a test states exactly which step waits for which.
"""

from __future__ import annotations

import time
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

import psycopg

TIMEOUT = 20.0


class Session:
    def __init__(self, conninfo: str, name: str) -> None:
        self.name = name
        self.conn = psycopg.connect(conninfo, autocommit=True)
        self.pid = self.conn.info.backend_pid
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix=name)

    def submit(self, query: str, params: Any = None) -> Future:
        def run() -> list[tuple[Any, ...]] | None:
            cur = self.conn.execute(query, params)
            return cur.fetchall() if cur.description else None
        return self._pool.submit(run)

    def close(self) -> None:
        self._pool.shutdown(wait=True, cancel_futures=True)
        self.conn.close()


class Interleaving:
    def __init__(self, monitor: psycopg.Connection, sessions: list[Session]) -> None:
        self.monitor = monitor
        self.sessions = sessions

    def _blocked(self, session: Session) -> bool:
        others = [s.pid for s in self.sessions if s is not session]
        # A configuration change polls for its lock (usersync._lock_config_exclusive) instead of
        # queueing: a session sleeping there waits as surely as one queued on a lock.
        row = self.monitor.execute(
            "select pg_isolation_test_session_is_blocked(%s, %s)"
            " or exists (select from pg_stat_activity where pid = %s and wait_event = 'PgSleep')",
            [session.pid, others, session.pid]).fetchone()
        return bool(row and row[0])

    def step(self, session: Session, query: str, params: Any = None, *, blocks: bool = False) -> Future:
        """Run a step; assert it finishes, or (blocks=True) that it waits on another session."""
        future = session.submit(query, params)
        deadline = time.monotonic() + TIMEOUT
        while time.monotonic() < deadline:
            if future.done():
                assert not blocks, f"{session.name}: expected to block, finished: {query}"
                return future
            if self._blocked(session):
                assert blocks, f"{session.name}: blocked unexpectedly: {query}"
                return future
            time.sleep(0.005)
        raise AssertionError(f"{session.name}: neither finished nor blocked within {TIMEOUT}s: {query}")

    def start(self, session: Session, query: str, params: Any = None) -> Future:
        """Run a step that may finish or wait, where either order is correct and only a
        deadlock would not be (its result says which)."""
        future = session.submit(query, params)
        deadline = time.monotonic() + TIMEOUT
        while not (future.done() or self._blocked(session)):
            assert time.monotonic() < deadline, \
                f"{session.name}: neither finished nor blocked within {TIMEOUT}s: {query}"
            time.sleep(0.005)
        return future

    @staticmethod
    def result(future: Future) -> Any:
        return future.result(timeout=TIMEOUT)
