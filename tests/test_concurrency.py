"""Concurrency: explicit interleavings of two sessions. Each scenario ends by checking the
invariant: every linked contact equals its source through the mapping."""

from __future__ import annotations

import psycopg
import pytest
from helpers import add_user, contact, contact_id, mismatches, one, raises_sqlstate

import harness


def _reversed_user(conn: psycopg.Connection, **fields: object) -> tuple[int, int]:
    """A synchronized user whose pair is reversed (its contact the source): its key and its contact's."""
    uid = add_user(conn, "a", **fields)
    conn.execute("select usersync.set_sync_source(%s, 'contact')", [uid])
    return uid, contact_id(conn, uid)


def _settle(conn: psycopg.Connection) -> None:
    """After a scenario: every up-to-date pair is the image of its source; a resync fixes the rest."""
    assert mismatches(conn) == [] or one(conn, "select count(*) from usersync.synchronized_contacts"
                                               " where not up_to_date") > 0
    # A scenario's session may own an unfinished run: take it over as the US009 hint says.
    conn.execute("select pg_terminate_backend(owner_pid, 5000) from usersync.resync_state"
                 " where finished_at is null and owner_pid <> pg_backend_pid()")
    conn.execute("call usersync.resync_all()")
    assert mismatches(conn) == []


def test_resync_waits_for_an_open_user_update_and_keeps_the_new_value(sessions, conn):
    uid = add_user(conn, "a", first_name="old")
    it, (app, admin) = sessions("app", "admin")
    it.step(app, "begin")
    it.step(app, "update users set first_name = 'new' where id = %s", [uid])
    batch = it.step(admin, "select * from usersync.resync_step(100)", blocks=True)
    it.step(app, "commit")
    it.result(batch)
    assert contact(conn, contact_id(conn, uid))["first_name"] == "new"
    _settle(conn)


def test_a_new_run_waits_for_a_user_inserted_under_the_mapping_before(sessions, conn):
    it, (app, admin) = sessions("app", "admin")
    it.step(app, "begin")
    it.step(app, "insert into users (login, academic_title, sync_to_contact) values ('late', 'Dr', true)")
    it.step(admin, "insert into usersync.field_mapping values ('academic_title', 'title')")
    # The open insert synced its user with the code of the mapping before: its link, at that
    # version, would be invisible to the run's batches and yet counted as gone past.
    batch = it.step(admin, "select * from usersync.resync_step(100)", blocks=True)
    it.step(app, "commit")
    it.result(batch)
    it.step(admin, "call usersync.resync_all(100)")
    assert mismatches(conn) == []
    assert one(conn, "select bool_and(up_to_date) from usersync.synchronized_contacts") is True
    _settle(conn)


def test_a_waiting_run_holds_no_lock_a_mapping_change_of_the_transaction_it_waits_for_needs(sessions, conn):
    add_user(conn, "a")
    it, (owner, admin) = sessions("owner", "admin")
    it.step(owner, "begin")
    it.step(owner, "insert into users (login, academic_title, sync_to_contact) values ('b', 'Dr', true)")
    batch = it.step(admin, "select * from usersync.resync_step(100)", blocks=True)
    it.step(owner, "insert into usersync.field_mapping values ('academic_title', 'title')")  # (a deploy script)
    it.step(owner, "commit")
    it.result(batch)
    it.step(admin, "call usersync.resync_all(100)")
    assert mismatches(conn) == []
    assert one(conn, "select bool_and(up_to_date) from usersync.synchronized_contacts") is True


def test_a_run_waiting_for_a_transaction_that_waits_for_it_ends_with_a_deadlock_error(sessions, conn):
    uid = add_user(conn, "a")
    it, (owner, app) = sessions("owner", "app")
    it.step(owner, "begin")
    it.step(owner, "select from users where id = %s for update", [uid])
    update = it.step(app, "update users set first_name = 'x' where id = %s", [uid], blocks=True)
    conn.execute("insert into usersync.field_mapping values ('academic_title', 'title')")
    # A new run would wait for the app's open write, which waits for this transaction's row lock.
    with raises_sqlstate("40P01", match="would wait for a transaction that waits for it"):
        it.result(it.step(owner, "select * from usersync.resync_step(100)"))
    it.step(owner, "rollback")
    it.result(update)
    _settle(conn)


def test_a_run_waiting_for_a_transaction_that_waits_for_it_through_another_ends_with_a_deadlock_error(
        sessions, conn):
    a, b, c = (add_user(conn, x) for x in "abc")
    it, (owner, app1, app2) = sessions("owner", "app", "app")
    it.step(owner, "begin")
    it.step(owner, "select from users where id = %s for update", [b])
    it.step(app2, "begin")
    it.step(app2, "select from users where id = %s for update", [c])
    waits_for_owner = it.step(app2, "select from users where id = %s for update", [b], blocks=True)
    it.step(app1, "begin")
    it.step(app1, "update users set first_name = 'x' where id = %s", [a])  # (a writer the run waits for)
    waits_for_app2 = it.step(app1, "select from users where id = %s for update", [c], blocks=True)
    conn.execute("insert into usersync.field_mapping values ('academic_title', 'title')")
    # The run would wait for app1, which waits for app2, which waits for this transaction.
    with raises_sqlstate("40P01", match="would wait for a transaction that waits for it"):
        it.result(it.step(owner, "select * from usersync.resync_step(100)"))
    it.step(owner, "rollback")
    it.result(waits_for_owner)
    it.step(app2, "commit")
    it.result(waits_for_app2)
    it.step(app1, "commit")
    _settle(conn)


def test_a_run_waits_neither_for_a_queued_writer_nor_for_a_writer_in_another_database(
        sessions, conn, pg_server, template_db):
    add_user(conn, "a")
    conn.execute("insert into usersync.field_mapping values ('academic_title', 'title')")
    it, (owner, app) = sessions("owner", "app")
    it.step(owner, "begin")
    it.step(owner, "lock table users in share mode")  # (how an owner freezes writes during a resync)
    queued = it.step(app, "insert into users (login, sync_to_contact) values ('q', true)", blocks=True)
    it.step(owner, "select * from usersync.resync_step(100)")
    it.step(owner, "commit")
    it.result(queued)
    it.step(owner, "call usersync.resync_all(100)")
    with harness.cloned_database(pg_server, template_db) as other, \
            psycopg.connect(pg_server.conninfo(other)) as elsewhere:
        elsewhere.execute("insert into users (login, sync_to_contact) values ('elsewhere', true)")  # left open
        conn.execute("update usersync.field_mapping set contact_field = 'notes' where user_field = 'academic_title'")
        assert one(conn, "select done from usersync.resync_step(100)") is False
        elsewhere.rollback()
    _settle(conn)


def test_a_user_update_waits_for_an_open_resync_batch_and_wins(sessions, conn):
    uid = add_user(conn, "a", first_name="old")
    it, (app, admin) = sessions("app", "admin")
    it.step(admin, "begin")
    it.step(admin, "select * from usersync.resync_step(100)")
    update = it.step(app, "update users set first_name = 'new' where id = %s", [uid], blocks=True)
    it.step(admin, "commit")
    it.result(update)
    assert contact(conn, contact_id(conn, uid))["first_name"] == "new"
    _settle(conn)


def test_two_concurrent_updates_of_one_user_leave_the_last_value(sessions, conn):
    uid = add_user(conn, "a", first_name="zero")
    it, (s1, s2) = sessions("app", "app")
    it.step(s1, "begin")
    it.step(s1, "update users set first_name = 'one' where id = %s", [uid])
    second = it.step(s2, "update users set first_name = 'two' where id = %s", [uid], blocks=True)
    it.step(s1, "commit")
    it.result(second)
    assert contact(conn, contact_id(conn, uid))["first_name"] == "two"
    _settle(conn)


@pytest.mark.parametrize("toggles", [True, False])
def test_deleting_a_user_and_its_contact_at_once_leaves_no_orphan(sessions, conn, toggles):
    conn.execute("update usersync.settings set delete_contact_with_user = %s, delete_user_with_contact = %s",
                 [toggles, toggles])
    uid = add_user(conn, "a")
    cid = contact_id(conn, uid)
    it, (s1, s2) = sessions("app", "app")
    it.step(s1, "begin")
    it.step(s1, "delete from users where id = %s", [uid])
    if toggles:  # s1 deleted the contact too: s2 waits on that row, then finds it gone
        second = it.step(s2, "delete from contacts where id = %s", [cid], blocks=True)
        it.step(s1, "commit")
        it.result(second)
        assert one(conn, "select count(*) from contacts") == 0
    else:  # the contact is still read-only for s2 until s1 commits
        with pytest.raises(psycopg.Error) as info:
            it.result(it.step(s2, "delete from contacts where id = %s", [cid]))
        assert info.value.sqlstate == "US001"
        it.step(s1, "commit")
        it.result(it.step(s2, "delete from contacts where id = %s", [cid]))
    assert one(conn, "select count(*) from users") == 0
    assert one(conn, "select count(*) from usersync.links_1") == 0


@pytest.mark.parametrize("toggles", [True, False])
def test_deleting_both_ends_of_a_reversed_pair_at_once_leaves_no_orphan(sessions, conn, toggles):
    conn.execute("update usersync.settings set delete_contact_with_user = %s, delete_user_with_contact = %s",
                 [toggles, toggles])
    uid, cid = _reversed_user(conn)
    it, (s1, s2) = sessions("app", "app")
    it.step(s1, "begin")
    it.step(s1, "delete from contacts where id = %s", [cid])
    second = it.step(s2, "delete from users where id = %s", [uid], blocks=True)
    it.step(s1, "commit")
    it.result(second)  # the user is gone (toggle on) or unlinked and deletable (toggle off)
    assert one(conn, "select count(*) from users") == 0
    assert one(conn, "select count(*) from contacts") == 0
    assert one(conn, "select count(*) from usersync.links_1") == 0


def test_a_mapping_change_waits_for_a_resync_batch_to_commit(sessions, conn):
    for i in range(3):
        add_user(conn, f"u{i}", academic_title="Dr.")
    it, (admin1, admin2) = sessions("admin", "admin")
    it.step(admin1, "begin")
    it.step(admin1, "select * from usersync.resync_step(2)")
    change = it.step(admin2, "insert into usersync.field_mapping values ('academic_title', 'title')", blocks=True)
    it.step(admin1, "commit")
    it.result(change)
    # The batch ran wholly on the old mapping and is now stale; nothing is half-and-half.
    assert one(conn, "select count(*) from usersync.synchronized_contacts where up_to_date") == 0
    _settle(conn)
    assert one(conn, "select count(*) from contacts where title = 'Dr.'") == 3


def test_switching_off_during_a_resync_batch_waits_then_ends_the_link(sessions, conn):
    uid = add_user(conn, "a")
    it, (app, admin) = sessions("app", "admin")
    it.step(admin, "begin")
    it.step(admin, "select * from usersync.resync_step(10)")
    off = it.step(app, "update users set sync_to_contact = false where id = %s", [uid], blocks=True)
    it.step(admin, "commit")
    it.result(off)
    assert one(conn, "select count(*) from usersync.synchronized_contacts") == 0
    _settle(conn)


def test_reversing_a_pair_while_its_user_is_edited_waits_and_stays_consistent(sessions, conn):
    uid = add_user(conn, "a", first_name="old")
    it, (app, admin) = sessions("app", "admin")
    it.step(app, "begin")
    it.step(app, "update users set first_name = 'edited' where id = %s", [uid])
    reverse = it.step(admin, "select usersync.set_sync_source(%s, 'contact')", [uid], blocks=True)
    it.step(app, "commit")
    it.result(reverse)
    assert one(conn, "select first_name from users where id = %s", [uid]) == "edited"
    assert contact(conn, contact_id(conn, uid))["first_name"] == "edited"
    _settle(conn)


def test_restoring_a_pair_while_its_contact_is_edited_waits_and_stays_consistent(sessions, conn):
    uid, cid = _reversed_user(conn, first_name="old")
    it, (app, admin) = sessions("app", "admin")
    it.step(app, "begin")
    it.step(app, "update contacts set first_name = 'from contact' where id = %s", [cid])
    restore = it.step(admin, "select usersync.set_sync_source(%s, 'user')", [uid], blocks=True)
    it.step(app, "commit")
    it.result(restore)  # no deadlock: both lock the contact (the source) first
    assert one(conn, "select first_name from users where id = %s", [uid]) == "from contact"
    assert contact(conn, cid)["first_name"] == "from contact"
    _settle(conn)


def test_a_reversed_contact_edit_and_a_resync_batch_do_not_deadlock(sessions, conn):
    uid, cid = _reversed_user(conn, first_name="old")
    it, (app, admin) = sessions("app", "admin")
    it.step(app, "begin")
    it.step(app, "update contacts set first_name = 'new' where id = %s", [cid])
    batch = it.step(admin, "select * from usersync.resync_step(10)", blocks=True)
    it.step(app, "commit")
    it.result(batch)
    assert one(conn, "select first_name from users where id = %s", [uid]) == "new"
    _settle(conn)


@pytest.mark.guard  # (its ALTER TABLE regenerates the code)
def test_a_failed_reversed_pairs_contact_fix_and_a_rerun_batch_do_not_deadlock(sessions, conn):
    # The batch stamps the link the last run marked failed, the fix stamps it too: both take the
    # contact (the source) before the link.
    conn.execute("alter table users add column nick varchar(3)")
    uid, cid = _reversed_user(conn)
    conn.execute("update contacts set title = 'Professor' where id = %s", [cid])
    conn.execute("insert into usersync.field_mapping values ('nick', 'title')")
    conn.execute("call usersync.resync_all()")
    assert one(conn, "select count(*) from usersync.sync_errors") == 1
    it, (app, admin) = sessions("app", "admin")
    it.step(app, "begin")
    it.step(app, "select from contacts where id = %s for update", [cid])
    batch = it.step(admin, "select * from usersync.resync_step(10)", blocks=True)  # a rerun
    it.step(app, "update contacts set title = 'Pr' where id = %s", [cid])
    it.step(app, "commit")
    it.result(batch)
    assert one(conn, "select nick from users where id = %s", [uid]) == "Pr"
    assert one(conn, "select count(*) from usersync.sync_errors") == 0
    _settle(conn)


def test_a_reversed_contact_edit_and_sync_users_do_not_deadlock(sessions, conn):
    uid, cid = _reversed_user(conn, first_name="old")
    it, (app, admin) = sessions("app", "admin")
    it.step(app, "begin")
    it.step(app, "select from contacts where id = %s for update", [cid])
    sync = it.step(admin, "select usersync.sync_users(%s::bigint[])", [[uid]], blocks=True)
    it.step(app, "update contacts set first_name = 'new' where id = %s", [cid])
    it.step(app, "commit")
    it.result(sync)
    assert one(conn, "select first_name from users where id = %s", [uid]) == "new"
    _settle(conn)


# A reversed pair's user is its target, yet the application may write it (its switch, unmapped
# fields): such a write locks the user first, then its trigger takes the link. Every engine
# action therefore takes both rows of a pair before its link, and sync_errors last.
# (`SELECT ... FOR UPDATE` stands for the row lock the application's UPDATE or DELETE takes
# before its triggers run.)

def _reversed_and_behind(conn: psycopg.Connection, uid: int) -> int:
    """The user's pair reversed, its contact changed behind the triggers' back: a sync must write
    the user. The contact's key."""
    cid = contact_id(conn, uid)
    conn.execute("select usersync.set_sync_source(%s, 'contact')", [uid])
    conn.execute("set session_replication_role = replica")
    conn.execute("update contacts set first_name = 'from contact' where id = %s", [cid])
    conn.execute("reset session_replication_role")
    return cid


@pytest.mark.parametrize("action", ["select usersync.sync_users(%s::bigint[])",
                                    "select * from usersync.resync_step(100)"])
def test_a_sync_and_a_reversed_user_switched_off_do_not_deadlock(sessions, conn, action):
    uid = add_user(conn, "a", first_name="old")
    _reversed_and_behind(conn, uid)
    it, (app, admin) = sessions("app", "admin")
    it.step(app, "begin")
    it.step(app, "select from users where id = %s for update", [uid])
    sync = it.step(admin, action, [[uid]] if "%s" in action else None, blocks=True)
    it.step(app, "update users set sync_to_contact = false where id = %s", [uid])
    it.step(app, "commit")
    it.result(sync)
    assert one(conn, "select active from usersync.links_1 where user_id = %s", [uid]) is False
    _settle(conn)


def test_deleting_a_reversed_contact_and_switching_its_user_off_do_not_deadlock(sessions, conn):
    uid, cid = _reversed_user(conn, first_name="old")
    it, (app1, app2) = sessions("app", "app")
    it.step(app1, "begin")
    it.step(app1, "select from users where id = %s for update", [uid])
    delete = it.step(app2, "delete from contacts where id = %s", [cid], blocks=True)
    it.step(app1, "update users set sync_to_contact = false where id = %s", [uid])
    it.step(app1, "commit")
    it.result(delete)
    assert one(conn, "select count(*) from usersync.links_1 where user_id = %s", [uid]) == 0
    _settle(conn)


def test_switching_a_user_on_again_and_deleting_its_old_contact_do_not_deadlock(sessions, conn):
    uid = add_user(conn, "a", first_name="old")
    cid = contact_id(conn, uid)
    conn.execute("update users set sync_to_contact = false where id = %s", [uid])
    conn.execute("update contacts set first_name = 'edited' where id = %s", [cid])  # an ordinary contact now
    it, (app1, app2) = sessions("app", "app")
    it.step(app2, "begin")
    it.step(app2, "select from contacts where id = %s for update", [cid])
    switch_on = it.step(app1, "update users set sync_to_contact = true where id = %s", [uid], blocks=True)
    it.step(app2, "delete from contacts where id = %s", [cid])
    it.step(app2, "commit")
    it.result(switch_on)
    assert contact_id(conn, uid) not in (None, cid)  # a new contact, the old one is gone
    _settle(conn)


@pytest.mark.guard  # (its ALTER TABLE regenerates the code)
def test_a_rerun_recording_a_failure_and_the_users_fix_do_not_deadlock(sessions, conn):
    uid = add_user(conn, "a")
    conn.execute("alter table contacts add column short_title varchar(3)")
    conn.execute("update users set academic_title = 'Professor' where id = %s", [uid])
    conn.execute("insert into usersync.field_mapping values ('academic_title', 'short_title')")
    conn.execute("call usersync.resync_all()")
    it, (other, admin, app) = sessions("owner", "admin", "app")
    it.step(other, "begin")
    it.step(other, "select from usersync.sync_errors for update")  # holds the rerun at its record of the failure
    rerun = it.step(admin, "select * from usersync.resync_step(100)", blocks=True)
    fix = it.step(app, "update users set academic_title = 'Pr' where id = %s", [uid], blocks=True)
    it.step(other, "commit")
    it.result(rerun)
    it.result(fix)
    assert contact(conn, contact_id(conn, uid))["short_title"] == "Pr"
    _settle(conn)


# A batch (or sync_users) decides which users are sources with the snapshot its first statement
# took; a reversal committed while it waited for another user made it lock that pair's user (now
# the target) before its contact (now the source): 40P01 against the contact's edit. A reversal
# now waits for the sync instead (and the edit, of a contact not reversed yet, is refused).
@pytest.mark.parametrize("action", ["select usersync.sync_users(%s::bigint[])",
                                    "select * from usersync.resync_step(100)"])
def test_a_reversal_during_a_waiting_sync_and_the_contacts_edit_do_not_deadlock(sessions, conn, action):
    first = add_user(conn, "a", first_name="a")
    uid = add_user(conn, "b", first_name="old")
    cid = contact_id(conn, uid)
    it, (holder, admin, admin2, app) = sessions("app", "admin", "admin", "app")
    it.step(holder, "begin")
    it.step(holder, "select from users where id = %s for update", [first])
    sync = it.step(admin, action, [[first, uid]] if "%s" in action else None, blocks=True)
    reversal = it.start(admin2, "select usersync.set_sync_source(%s, 'contact')", [uid])
    it.step(app, "begin")
    it.step(app, "select from contacts where id = %s for update", [cid])
    it.step(holder, "commit")
    edit = it.start(app, "update contacts set first_name = 'new' where id = %s", [cid])
    it.result(sync)  # (it was 40P01: the sync waiting for the contact, the edit for its user)
    with raises_sqlstate("US001"):  # the reversal waits for the sync: not reversed yet
        it.result(edit)
    it.step(app, "rollback")
    it.result(reversal)
    assert one(conn, "select source from usersync.links_1 where user_id = %s", [uid]) == "contact"
    _settle(conn)


# A configuration change that already holds a table lock (ALTER TABLE, through the DDL guard)
# polls for the configuration lock; a sync holding it in SHARE mode waits for an application
# that waits for the change's table lock: a cycle through a sleeping session, which PostgreSQL
# cannot see (it hung until lock_timeout).
@pytest.mark.guard
def test_an_alter_table_polling_behind_a_sync_that_waits_for_an_app_waiting_for_it(sessions, conn):
    uid = add_user(conn, "a", first_name="old")
    it, (app, admin, owner) = sessions("app", "admin", "owner")
    it.step(owner, "set lock_timeout = '10s'")
    it.step(app, "begin")
    it.step(app, "select from users where id = %s for update", [uid])
    batch = it.step(admin, "select * from usersync.resync_step(100)", blocks=True)
    alter = it.step(owner, "alter table contacts add column zz text", blocks=True)
    # (waits for the ALTER, until the ALTER sees the cycle: before, until its lock_timeout)
    edit = it.start(app, "update users set first_name = 'new' where id = %s", [uid])
    with raises_sqlstate("40P01"):
        it.result(alter)
    it.result(edit)
    it.step(app, "commit")
    it.result(batch)
    assert contact(conn, contact_id(conn, uid))["first_name"] == "new"
    _settle(conn)


# The same through a mapping change in a transaction that wrote a user first (a deploy script).
def test_a_mapping_change_polling_behind_a_sync_that_waits_for_an_app_waiting_for_it(sessions, conn):
    first = add_user(conn, "a", first_name="a")
    second = add_user(conn, "b", first_name="b")
    conn.execute("call usersync.resync_all()")  # (a run on this mapping: the next one waits for no writer)
    it, (app, admin, owner) = sessions("app", "admin", "owner")
    it.step(owner, "set lock_timeout = '10s'")
    it.step(owner, "begin")
    it.step(owner, "update users set first_name = 'deploy' where id = %s", [second])
    it.step(app, "begin")
    it.step(app, "select from users where id = %s for update", [first])
    batch = it.step(admin, "select * from usersync.resync_step(100)", blocks=True)
    edit = it.step(app, "update users set first_name = 'new' where id = %s", [second], blocks=True)
    change = it.start(owner, "insert into usersync.field_mapping values ('academic_title', 'title')")
    with raises_sqlstate("40P01"):
        it.result(change)
    it.step(owner, "rollback")
    it.result(edit)
    it.step(app, "commit")
    it.result(batch)
    _settle(conn)


# set_sync_source locked both rows FOR UPDATE, which a foreign key's KEY SHARE lock blocks: an
# application that logs a note on the contact (a row referencing it) and then edits the user, the
# pair's source, met a reversal in a cycle. FOR NO KEY UPDATE keeps every write out as well.
def test_a_reversal_and_an_edit_after_a_row_referencing_the_contact_do_not_deadlock(sessions, conn):
    conn.execute("create table notes (contact_id bigint references contacts (id))")
    conn.execute("grant insert on notes to usersync_test_app")
    uid = add_user(conn, "a", first_name="old")
    cid = contact_id(conn, uid)
    it, (app, admin) = sessions("app", "admin")
    it.step(app, "begin")
    it.step(app, "insert into notes values (%s)", [cid])  # (KEY SHARE on the contact)
    reversal = it.start(admin, "select usersync.set_sync_source(%s, 'contact')", [uid])
    edit = it.start(app, "update users set last_name = 'new' where id = %s", [uid])
    it.result(reversal)  # (it was 40P01, or the edit's)
    with raises_sqlstate("US002"):  # reversed by now: the user's mapped fields are read-only
        it.result(edit)
    it.step(app, "rollback")
    assert one(conn, "select source from usersync.links_1 where user_id = %s", [uid]) == "contact"
    _settle(conn)


# sync_users ends the link of a user switched off behind the triggers' back. It decided that from
# its snapshot: a user switched on again meanwhile (its link still active, so its own trigger had
# nothing to re-link) lost its link to the repair, and stayed on with no synchronized contact.
def test_a_repair_of_a_switch_turned_off_behind_the_triggers_back_spares_a_user_switched_on_meanwhile(
        sessions, conn):
    uid = add_user(conn, "a", first_name="old")
    conn.execute("set session_replication_role = replica")
    conn.execute("update users set sync_to_contact = false where id = %s", [uid])
    conn.execute("reset session_replication_role")
    it, (app, admin) = sessions("app", "admin")
    it.step(app, "begin")
    it.step(app, "update users set sync_to_contact = true, first_name = 'new' where id = %s", [uid])
    sync = it.start(admin, "select usersync.sync_users()")
    it.step(app, "commit")
    it.result(sync)
    assert one(conn, "select active from usersync.links_1 where user_id = %s", [uid]) is True
    assert contact(conn, contact_id(conn, uid))["first_name"] == "new"
    _settle(conn)


# A shared key links the contact that already has the new user's key. A delete of that contact
# committed while the insert's trigger linked it left a link to no contact (with no foreign key
# to stop it), the user switched on and unsynchronized: the contact is now locked before its link.
def test_a_user_inserted_while_the_contact_with_its_shared_key_is_deleted_gets_a_new_contact(sessions, conn):
    conn.execute("create table u (id int primary key, first_name text, sw boolean not null default true);"
                 " create table p (id int primary key, first_name text);"
                 " select usersync.attach('u', 'p', 'sw', shared_key => true);"
                 " insert into p values (5, 'an ordinary contact')")
    it, (app1, app2) = sessions("owner", "owner")
    it.step(app2, "begin")
    it.step(app2, "delete from p where id = 5")
    insert = it.start(app1, "insert into u values (5, 'Five')")
    it.step(app2, "commit")
    it.result(insert)
    assert one(conn, "select first_name from p where id = 5") == "Five"
    assert conn.execute("select user_id, contact_id, active from usersync.links where pair = 'p'").fetchall() == [
        ("5", "5", True)]


# sync_users decides from its snapshot which users are switched on, then link() re-activates their
# links. A user switched off meanwhile (its link ended by its trigger, committed while link()
# waited for the user's row) had its link re-activated: switched off, yet its contact read-only.
@pytest.mark.parametrize("action", ["select usersync.sync_users(%s::bigint[])", "select usersync.sync_users()"])
def test_sync_users_does_not_relink_a_user_switched_off_while_it_waited(sessions, conn, action):
    uid = add_user(conn, "a", first_name="old")
    cid = contact_id(conn, uid)
    it, (app, admin) = sessions("app", "admin")
    it.step(app, "begin")
    it.step(app, "update users set sync_to_contact = false where id = %s", [uid])
    sync = it.step(admin, action, [[uid]] if "%s" in action else None, blocks=True)
    it.step(app, "commit")
    it.result(sync)
    assert one(conn, "select active from usersync.links_1 where user_id = %s", [uid]) is False
    conn.execute("update contacts set first_name = 'edited' where id = %s", [cid])  # an ordinary contact
    _settle(conn)


# sync_users forgets a link whose user is gone (deleted behind the triggers' back). It decided that
# from its snapshot: a user inserted meanwhile with that key, whose trigger took the link over
# (ON CONFLICT), lost its new link to the repair once it committed, and sync_users then made it a
# second contact (the one its insert made left behind as an ordinary contact, a duplicate).
def test_sync_users_does_not_forget_the_link_of_a_user_inserted_again_with_a_gone_users_key(sessions, conn):
    uid = add_user(conn, "a", first_name="old")
    conn.execute("set session_replication_role = replica")
    conn.execute("delete from users where id = %s", [uid])
    conn.execute("reset session_replication_role")
    it, (owner, admin) = sessions("owner", "admin")
    it.step(owner, "begin")
    it.step(owner, "insert into users (id, login, first_name, sync_to_contact) overriding system value"
                   " values (%s, 'again', 'new', true)", [uid])
    sync = it.step(admin, "select usersync.sync_users()", blocks=True)
    it.step(owner, "commit")
    it.result(sync)
    assert one(conn, "select active from usersync.links_1 where user_id = %s", [uid]) is True
    assert contact(conn, contact_id(conn, uid))["first_name"] == "new"
    assert one(conn, "select count(*) from contacts where first_name = 'new'") == 1  # (it was 2)
    _settle(conn)


# A reversed pair's contact deleted with delete_user_with_contact deletes its user. The contact's
# delete read the link before it waited for the user's row: a user switched off meanwhile (the
# pair ended, the contact an ordinary one by then) was deleted once the switch-off committed.
def test_deleting_a_reversed_contact_spares_a_user_switched_off_while_it_waited(sessions, conn):
    conn.execute("update usersync.settings set delete_user_with_contact = true")
    uid, cid = _reversed_user(conn, first_name="old")
    it, (app1, app2) = sessions("app", "app")
    it.step(app1, "begin")
    it.step(app1, "update users set sync_to_contact = false where id = %s", [uid])
    delete = it.step(app2, "delete from contacts where id = %s", [cid], blocks=True)
    it.step(app1, "commit")
    it.result(delete)
    assert one(conn, "select sync_to_contact from users where id = %s", [uid]) is False  # (it was deleted)
    assert one(conn, "select count(*) from usersync.links_1 where user_id = %s", [uid]) == 0
    _settle(conn)


# detach deleted the pair's catalog rows (sync_errors among them, by cascade) before it waited to
# drop the triggers on the tables: an application's open transaction whose next write ended a
# failure (a user's fix deletes its sync_errors row) waited for detach, detach for its table lock:
# 40P01. detach now locks the tables first.
@pytest.mark.guard  # (its ALTER TABLE regenerates the code)
def test_detaching_waits_for_an_open_transaction_that_fixes_a_failed_pair_and_does_not_deadlock(sessions, conn):
    uid = add_user(conn, "a")
    other = add_user(conn, "b")
    conn.execute("alter table contacts add column short_title varchar(3)")
    conn.execute("update users set academic_title = 'Professor' where id = %s", [uid])
    conn.execute("insert into usersync.field_mapping values ('academic_title', 'short_title')")
    conn.execute("call usersync.resync_all()")
    assert one(conn, "select count(*) from usersync.sync_errors") == 1
    cid = contact_id(conn, uid)
    it, (app, owner) = sessions("app", "owner")
    it.step(app, "begin")
    it.step(app, "update users set first_name = 'x' where id = %s", [other])
    detach = it.step(owner, "select usersync.detach('contacts')", blocks=True)
    it.step(app, "update users set academic_title = 'Pr' where id = %s", [uid])  # (it waited: 40P01)
    it.step(app, "commit")
    it.result(detach)
    assert contact(conn, cid)["short_title"] == "Pr"
    assert one(conn, "select count(*) from usersync.pairs") == 0


# Deleting a remembered contact (its user switched off) forgot its link without locking the user;
# TRUNCATE of the users locks their table, then deletes every link: an application that deleted
# such a contact and then wrote a user met the TRUNCATE in a cycle (40P01). The contact's delete
# now takes its user (KEY SHARE) before the link, as every other writer of a link does.
def test_truncating_the_users_and_deleting_a_remembered_contact_do_not_deadlock(sessions, conn):
    uid = add_user(conn, "a")
    other = add_user(conn, "b")
    cid = contact_id(conn, uid)
    conn.execute("update users set sync_to_contact = false where id = %s", [uid])  # an ordinary contact now
    it, (app, owner) = sessions("app", "owner")
    it.step(app, "begin")
    it.step(app, "delete from contacts where id = %s", [cid])
    truncate = it.step(owner, "truncate users", blocks=True)
    it.step(app, "update users set first_name = 'x' where id = %s", [other])  # (it was 40P01, or the TRUNCATE's)
    it.step(app, "commit")
    it.result(truncate)
    assert one(conn, "select count(*) from users") == 0
    assert one(conn, "select count(*) from usersync.links_1") == 0
    assert one(conn, "select count(*) from contacts") == 1  # (the other's, unlinked: no toggle)
    _settle(conn)


# A mapping change on a pair with no link it can see marks every pair up to date at once
# (synced_version). A user inserted meanwhile by an open transaction, synced with the code of the
# mapping before, is a pair it cannot see: once committed that pair read stale while the pair's
# status said all up to date, and the user's next write, which brings its contact to the new
# mapping, did not stamp it (the set-based path trusts synced_version), so it stayed stale.
def test_a_mapping_change_beside_the_first_users_insert_does_not_report_its_pair_up_to_date(sessions, conn):
    it, (app, admin) = sessions("app", "admin")
    it.step(app, "begin")
    it.step(app, "insert into users (login, academic_title, sync_to_contact) values ('first', 'Dr', true)")
    it.step(admin, "insert into usersync.field_mapping values ('academic_title', 'title')")
    it.step(app, "commit")
    stale = one(conn, "select count(*) from usersync.synchronized_contacts where not up_to_date")
    assert one(conn, "select all_up_to_date from usersync.pairs") is (stale == 0)
    conn.execute("update users set academic_title = 'Prof' where login = 'first'")  # a later write
    assert mismatches(conn) == []
    assert one(conn, "select bool_and(up_to_date) from usersync.synchronized_contacts") is True
    _settle(conn)


# A reversed contact's edit writes its user through the link it read before it waited for that
# user. A user switched off meanwhile (the pair ended), then given its own value by the same
# transaction (an ordinary field again), lost that value to the contact's edit once it committed:
# in either serial order the user keeps it. The link is now read again once the user is locked.
def test_a_reversed_contact_edit_spares_a_user_switched_off_and_edited_while_it_waited(sessions, conn):
    uid, cid = _reversed_user(conn, first_name="old")
    it, (app1, app2) = sessions("app", "app")
    it.step(app1, "begin")
    it.step(app1, "update users set sync_to_contact = false where id = %s", [uid])
    edit = it.step(app2, "update contacts set first_name = 'from contact' where id = %s", [cid], blocks=True)
    it.step(app1, "update users set first_name = 'own' where id = %s", [uid])  # (no longer synchronized)
    it.step(app1, "commit")
    it.result(edit)
    assert one(conn, "select first_name from users where id = %s", [uid]) == "own"
    assert contact(conn, cid)["first_name"] == "from contact"
    assert one(conn, "select active from usersync.links_1 where user_id = %s", [uid]) is False
    _settle(conn)


# doctor took the pair's generation lock, then (to compare the code) the configuration lock in
# SHARE mode; a configuration change holds that lock, EXCLUSIVE, and generates the pair's code
# under it: a transaction that reversed a pair and then changed the mapping met a doctor (a
# `usersync status`) between the two in a cycle, 40P01. doctor now takes them in that order too.
def test_doctor_and_a_configuration_change_that_generates_code_do_not_deadlock(sessions, conn):
    uid = add_user(conn, "a", academic_title="Dr")
    before = one(conn, "select count(*) from usersync.doctor()")  # (without a superuser: no DDL guard)
    it, (admin, monitor) = sessions("admin", "admin")
    it.step(admin, "begin")
    it.step(admin, "select usersync.set_sync_source(%s, 'contact')", [uid])
    doctor = it.step(monitor, "select count(*) from usersync.doctor()", blocks=True)
    it.step(admin, "insert into usersync.field_mapping values ('academic_title', 'title')")
    it.step(admin, "commit")
    assert it.result(doctor) == [(before,)]
    _settle(conn)
