"""Upgrading a database of a released version that holds data keeps all of it: 0.1 (revision
0002), and 0.4 (revision 0004, pairs attached to the application's tables)."""

from __future__ import annotations

from collections.abc import Callable

import psycopg
import pytest
from helpers import contact, mismatches, one, raises_sqlstate

from pyapp import admin, examples, migrate
from pyapp.config import Database
from schema_snapshot import snapshot

# Read the same way before (0.1: one pair, bigint keys) and after (pairs, keys shown as text).
STATE = """
    select (select json_agg(json_build_array(m.user_field, m.contact_field) order by m.user_field)
              from usersync.field_mapping m),
           (select json_build_array(s.delete_contact_with_user, s.delete_user_with_contact) from usersync.settings s),
           (select json_agg(json_build_array(l.user_id::bigint, l.contact_id::bigint, l.source, l.active,
                                             l.mapping_version) order by l.user_id::bigint) from usersync.links l),
           (select version from usersync.mapping_state),
           (select json_agg(json_build_array(u.id, u.first_name, u.sync_to_contact) order by u.id) from users u),
           (select json_agg(json_build_array(c.id, c.first_name, c.title) order by c.id) from contacts c)"""


def _pairs_in_every_state(conn: psycopg.Connection) -> None:
    """Six users of the example pair: synced, reversed, remembered, not synced, stale, up to date."""
    conn.execute("insert into users (login, first_name, academic_title, sync_to_contact)"
                 " select 'u' || g, 'U' || g, 'Dr', g <> 5 from generate_series(1, 6) g")
    conn.execute("update usersync.settings set delete_contact_with_user = true, delete_user_with_contact = true")
    conn.execute("select usersync.set_sync_source(2, 'contact')")                # a reversed pair
    conn.execute("update users set sync_to_contact = false where id = 3")      # a remembered contact
    conn.execute("insert into contacts (first_name) values ('plain')")          # an ordinary contact
    conn.execute("insert into usersync.field_mapping values ('academic_title', 'title')")  # all stale
    conn.execute("update users set first_name = 'U1b' where id = 1")           # one brought up to date


@pytest.fixture
def released(new_database: Callable[[], Database]) -> Database:
    db = new_database()
    migrate.upgrade(db, "0002")
    with psycopg.connect(db.conninfo, autocommit=True) as conn:
        _pairs_in_every_state(conn)
    return db


def test_upgrading_the_released_version_keeps_mapping_settings_links_and_behaviour(released: Database):
    """The tables of 0.1 become pair 'contacts', switch sync_to_contact, behaviour unchanged."""
    with psycopg.connect(released.conninfo) as conn:
        before = conn.execute(STATE).fetchone()
        stale_before = conn.execute("select user_id::bigint, up_to_date from usersync.synchronized_contacts"
                                    " order by 1").fetchall()
    migrate.upgrade(released)
    assert migrate.current(released) == migrate.revisions()[-1]
    with psycopg.connect(released.conninfo, autocommit=True) as conn:
        assert conn.execute(STATE).fetchone() == before
        assert conn.execute("select user_id::bigint, up_to_date from usersync.synchronized_contacts"
                            " order by 1").fetchall() == stale_before
        # Behaviour, unchanged: reads-only contacts, reversed pairs, the toggles, resync.
        cid1 = one(conn, "select contact_id from usersync.links_1 where user_id = 1")
        with raises_sqlstate("US001"):
            conn.execute("update contacts set first_name = 'x' where id = %s", [cid1])
        with raises_sqlstate("US002"):
            conn.execute("update users set first_name = 'x' where id = 2")
        cid2 = one(conn, "select contact_id from usersync.links_1 where user_id = 2")
        conn.execute("update contacts set first_name = 'from contact' where id = %s", [cid2])
        assert one(conn, "select first_name from users where id = 2") == "from contact"
        conn.execute("update users set sync_to_contact = true where id = 3")  # re-links, no duplicate
        assert one(conn, "select count(*) from contacts") == 6
        conn.execute("call usersync.resync_all()")
        assert contact(conn, cid1)["title"] == "Dr"
        assert mismatches(conn) == []
        conn.execute("delete from users where id = 4")  # delete_contact_with_user
        assert one(conn, "select count(*) from contacts") == 5
        conn.execute("delete from contacts where id = %s", [cid2])  # delete_user_with_contact
        assert one(conn, "select count(*) from users where id = 2") == 0
        conn.execute("insert into users (login, sync_to_contact) values ('new', true)")
        assert mismatches(conn) == []


def _released(new_database: Callable[[], Database], revision: str) -> Database:
    """A released revision with the example tables attached and a pair in every state."""
    db = new_database()
    migrate.upgrade(db, revision)
    with psycopg.connect(db.conninfo, autocommit=True) as conn:
        examples.create_and_attach(conn)
        _pairs_in_every_state(conn)
    return db


@pytest.fixture(params=["0004", "0005", "0006"])
def release_with_pairs(new_database: Callable[[], Database], request: pytest.FixtureRequest) -> tuple[Database, str]:
    return _released(new_database, request.param), request.param


def test_upgrading_a_release_keeps_pairs_links_and_state_with_the_rekey_and_row_level_update_triggers(
        release_with_pairs: tuple[Database, str]):
    db, revision = release_with_pairs
    level = "select tgtype & 1 from pg_trigger where tgname = 'usersync_1_after_update'"  # 1: FOR EACH ROW
    with psycopg.connect(db.conninfo) as conn:
        before = conn.execute(STATE).fetchone()
        stale_before = conn.execute("select user_id::bigint, up_to_date from usersync.synchronized_contacts"
                                    " order by 1").fetchall()
        assert one(conn, level) == (1 if revision >= "0006" else 0)
    migrate.upgrade(db)
    with psycopg.connect(db.conninfo, autocommit=True) as conn:
        assert conn.execute(STATE).fetchone() == before
        assert conn.execute("select user_id::bigint, up_to_date from usersync.synchronized_contacts"
                            " order by 1").fetchall() == stale_before
        assert one(conn, "select count(*) from pg_trigger where tgname = 'usersync_1_after_rekey'") == 1
        assert one(conn, level) == 1
        with raises_sqlstate("US002"):
            conn.execute("update users set first_name = 'x' where id = 2")
        conn.execute("update users set first_name = 'U4b' where id = 4")
        cid4 = one(conn, "select contact_id from usersync.links_1 where user_id = 4")
        assert contact(conn, cid4)["first_name"] == "U4b"
        conn.execute("call usersync.resync_all()")
        assert mismatches(conn) == []
        assert one(conn, "select count(*) from usersync.doctor()") == 0
        conn.execute("delete from users where id = 4")  # delete_contact_with_user
        assert one(conn, "select count(*) from contacts where first_name = 'U4b'") == 0


def test_downgrading_to_a_release_and_upgrading_again_gives_the_same_schema(release_with_pairs: tuple[Database, str]):
    db, revision = release_with_pairs

    def state() -> dict:
        with psycopg.connect(db.conninfo) as conn:
            return snapshot(conn)

    at_release = state()
    migrate.upgrade(db)
    upgraded = state()
    migrate.downgrade(db, revision)
    assert state() == at_release
    migrate.upgrade(db)
    assert state() == upgraded


def test_downgrading_to_0006_stamps_the_pairs_a_resync_run_went_past(new_database: Callable[[], Database]):
    db = _released(new_database, "0007")
    up_to_date = "select user_id::bigint, up_to_date from usersync.synchronized_contacts order by 1"
    with psycopg.connect(db.conninfo, autocommit=True) as conn:
        conn.execute("select * from usersync.resync_step(2)")  # a run in progress, past two pairs
        partly = conn.execute(up_to_date).fetchall()
    # (1: brought up to date by its own update, and the first pair of the run; 2: the second)
    assert partly == [(1, True), (2, True), (4, False), (6, False)]
    migrate.downgrade(db, "0006")
    with psycopg.connect(db.conninfo, autocommit=True) as conn:
        assert conn.execute(up_to_date).fetchall() == partly
    migrate.upgrade(db)
    with psycopg.connect(db.conninfo, autocommit=True) as conn:
        assert conn.execute(up_to_date).fetchall() == partly
        conn.execute("call usersync.resync_all()")
    migrate.downgrade(db, "0006")
    with psycopg.connect(db.conninfo, autocommit=True) as conn:
        assert all(ok for _, ok in conn.execute(up_to_date).fetchall())
        assert one(conn, "select count(*) from usersync.doctor()") == 0


def _0006_with_titles_too_long_for(conn: psycopg.Connection, failing: list[int]) -> None:
    """Six synced users of the example pair in 0006, and a mapping change whose resync fails for
    the users in `failing` (a title too long for its contact field)."""
    examples.create_and_attach(conn)
    conn.execute("alter table contacts add column short_title varchar(3)")
    conn.execute("insert into users (login, academic_title, sync_to_contact)"
                 " select 'u' || g, case when g = any(%s) then 'Professor' else 'Dr' end, true"
                 " from generate_series(1, 6) g", [failing])
    conn.execute("insert into usersync.field_mapping values ('academic_title', 'short_title')")


def test_upgrading_0006_during_a_run_keeps_the_pairs_it_failed_or_did_not_see_stale(
        new_database: Callable[[], Database]):
    db = new_database()
    migrate.upgrade(db, "0006")
    with psycopg.connect(db.conninfo, autocommit=True) as conn:
        _0006_with_titles_too_long_for(conn, [2])
        assert one(conn, "select batch_failed from usersync.resync_step(4)") == 1  # a run in progress
        # A link the run could not see (made by a transaction still open under the mapping before,
        # which 0006 did not wait for): past the cursor, not stamped, and stale in 0006.
        conn.execute("update usersync.links_1 set mapping_version = mapping_version - 1 where user_id = 3")
    migrate.upgrade(db)
    with psycopg.connect(db.conninfo, autocommit=True) as conn:
        stale = conn.execute("select user_id::bigint from usersync.synchronized_contacts where not up_to_date"
                             " order by 1").fetchall()
        assert stale == [(2,), (3,), (5,), (6,)]


def test_upgrading_0006_after_a_run_with_failures_marks_them_and_drops_those_synced_or_ended_since(
        new_database: Callable[[], Database]):
    db = new_database()
    migrate.upgrade(db, "0006")
    with psycopg.connect(db.conninfo, autocommit=True) as conn:
        _0006_with_titles_too_long_for(conn, [2, 4, 5])
        conn.execute("call usersync.resync_all()")  # finished, three pairs failed
        conn.execute("update users set academic_title = 'Pr' where id = 4")  # synced since: 0006 kept its row
        conn.execute("update users set sync_to_contact = false where id = 5")  # ended: 0006 kept its row
        assert one(conn, "select count(*) from usersync.sync_errors") == 3
    migrate.upgrade(db)
    with psycopg.connect(db.conninfo, autocommit=True) as conn:
        assert one(conn, "select array_agg(user_id order by user_id) from usersync.sync_errors") == ["2"]
        counts = admin.status(conn)
        assert (counts["failed"], counts["stale"], counts["up_to_date"]) == (1, 0, 4)


def test_upgrading_0006_during_a_run_keeps_stale_a_pair_an_open_transaction_wrote_under_the_mapping_before(
        new_database: Callable[[], Database]):
    """A transaction open across a mapping change, a run's batch and the upgrade: its user, synced
    with the code of the mapping before, is committed after the upgrade, behind the run's cursor.
    Its pair must not read up to date (0006 said so by its stamp; 0007 would by the cursor)."""
    db = new_database()
    migrate.upgrade(db, "0006")
    with psycopg.connect(db.conninfo, autocommit=True) as conn, \
            psycopg.connect(db.conninfo, autocommit=True) as app:
        examples.create_and_attach(conn)
        conn.execute("insert into users (login, academic_title, sync_to_contact)"
                     " select 'u' || g, 'Dr', true from generate_series(1, 2) g")
        app.execute("begin")
        app.execute("insert into users (login, academic_title, sync_to_contact) values ('late', 'Dr', true)")
        conn.execute("insert into users (login, academic_title, sync_to_contact) values ('u4', 'Dr', true)")
        conn.execute("insert into usersync.field_mapping values ('academic_title', 'title')")
        assert one(conn, "select done from usersync.resync_step(100)") is False  # went past 1, 2 and 4
        migrate.upgrade(db)
        app.execute("commit")  # user 3, synced without its title
        read = "select user_id::bigint, up_to_date from usersync.synchronized_contacts where user_id::bigint = any(%s)"
        assert conn.execute(read, [[uid for uid, _, _ in mismatches(conn)]]).fetchall() == [(3, False)]
        conn.execute("call usersync.resync_all()")  # (the run starts over: the upgrade restarts it)
        assert mismatches(conn) == []
