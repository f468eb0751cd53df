"""Logical replication between two servers that both run usersync with the same pair attached
(#12 §4): what the publisher syncs arrives once on the subscriber, whose triggers stay silent for
the apply worker, and whose read-only guards keep working for its own sessions.

The publication holds the pair's two tables and its links table (docs/install.md, "Replication");
the mapping is configured alike on both sides. Runs on two private servers of the machine's own
binaries (wal_level = logical), so it is skipped where there are none.
"""

from __future__ import annotations

import time
from collections.abc import Iterator

import psycopg
import pytest
from helpers import raises_sqlstate

import harness

STATE = """select (select json_agg(json_build_array(id, login, first_name, sync_to_contact) order by id) from users),
                  (select json_agg(json_build_array(id, first_name) order by id) from contacts),
                  (select json_agg(json_build_array(user_id, contact_id, source, active) order by user_id)
                     from usersync.links_1)"""


@pytest.fixture(scope="module")
def servers() -> Iterator[tuple[harness.Server, harness.Server]]:
    started = []
    for _ in range(2):
        srv = harness.extra_server({"wal_level": "logical", "max_wal_senders": "4", "max_replication_slots": "4"})
        if srv is None:
            pytest.skip("no PostgreSQL binaries of the machine's own to start two servers with")
        started.append(srv)
    yield started[0], started[1]
    for srv in started:
        assert srv.handle is not None
        srv.handle.stop()


def _install(srv: harness.Server) -> str:
    conninfo = harness.install_example(srv)
    with psycopg.connect(conninfo, autocommit=True) as conn:
        conn.execute("update usersync.settings set delete_contact_with_user = true")
    return conninfo


def _caught_up(pub: psycopg.Connection, sub: psycopg.Connection) -> object:
    deadline = time.monotonic() + 20
    while True:
        expected, got = pub.execute(STATE).fetchone(), sub.execute(STATE).fetchone()
        if got == expected or time.monotonic() > deadline:
            assert got == expected
            return got
        time.sleep(0.1)


def test_what_the_publisher_syncs_arrives_once_and_the_subscriber_keeps_its_guards(servers):
    pub_srv, sub_srv = servers
    with psycopg.connect(_install(pub_srv), autocommit=True) as pub, \
         psycopg.connect(_install(sub_srv), autocommit=True) as sub:
        pub.execute("create publication usersync_pub for table public.users, public.contacts, usersync.links_1")
        sub.execute(f"create subscription usersync_sub connection '{pub_srv.conninfo('app')}'"
                    " publication usersync_pub")
        try:
            pub.execute("insert into users (login, first_name, sync_to_contact) values ('a', 'Ann', true),"
                        " ('b', 'Bob', true)")
            state = _caught_up(pub, sub)
            assert len(state[1]) == 2  # one contact per user: the subscriber's triggers did not sync again
            pub.execute("update users set first_name = 'Anna' where login = 'a'")
            pub.execute("select usersync.set_sync_source(id, 'contact') from users where login = 'b'")
            pub.execute("update contacts set first_name = 'Bobby' where id = (select contact_id from usersync.links_1"
                        " where user_id = (select id from users where login = 'b'))")
            state = _caught_up(pub, sub)
            assert sorted(r[2] for r in state[0]) == ["Anna", "Bobby"]
            # The subscriber's own sessions are still refused a user-sourced contact.
            with raises_sqlstate("US001"):
                sub.execute("update contacts set first_name = 'x' where first_name = 'Anna'")
            pub.execute("delete from users where login = 'a'")  # delete_contact_with_user
            state = _caught_up(pub, sub)
            assert [r[1] for r in state[1]] == ["Bobby"]
        finally:
            sub.execute("drop subscription usersync_sub")
