"""The actions: "Synchronize users" (sync_users) and "Update all synchronized users" (resync_all)."""

from __future__ import annotations

import psycopg
import pytest
from helpers import add_user, contact, contact_id, mismatches, one, raises_sqlstate

from pyapp import admin


@pytest.fixture
def users(conn) -> list[int]:
    conn.execute("insert into users (login, first_name, academic_title, sync_to_contact)"
                 " select 'u' || g, 'First ' || g, 'T' || g, true from generate_series(1, 25) g")
    return [r[0] for r in conn.execute("select id from users order by id")]


def test_resync_all_brings_every_pair_up_to_date_in_committed_batches(conn, admin_conn, users):
    admin_conn.execute("insert into usersync.field_mapping values ('academic_title', 'title')")
    assert one(conn, "select count(*) from usersync.synchronized_contacts where not up_to_date") == 25
    admin_conn.execute("call usersync.resync_all(10)")
    assert one(conn, "select count(*) from usersync.synchronized_contacts where not up_to_date") == 0
    assert one(conn, "select count(*) from contacts where title like 'T%%'") == 25
    state = one(conn, "select total, synced, failed, finished_at is not null from usersync.resync_state")
    assert state == (25, 25, 0, True)
    assert mismatches(conn) == []


def test_resync_steps_commit_and_an_interrupted_run_resumes(conn, admin_conn, users):
    admin_conn.execute("insert into usersync.field_mapping values ('academic_title', 'title')")
    first = one(admin_conn, "select done, batch_synced, synced, total from usersync.resync_step(10)")
    assert first == (False, 10, 10, 25)
    # The run is interrupted here; its first batch stays committed.
    assert one(conn, "select count(*) from usersync.synchronized_contacts where up_to_date") == 10
    admin_conn.execute("call usersync.resync_all(10)")
    assert one(conn, "select synced, failed from usersync.resync_state") == (25, 0)
    assert one(conn, "select count(*) from usersync.synchronized_contacts where not up_to_date") == 0


@pytest.mark.guard  # (its ALTER TABLE regenerates the code)
def test_a_pair_that_fails_is_recorded_and_does_not_stop_the_run(conn, admin_conn, users):
    conn.execute("alter table contacts add column short_title varchar(3)")
    conn.execute("update users set academic_title = 'Professor' where id = %s", [users[5]])
    admin_conn.execute("insert into usersync.field_mapping values ('academic_title', 'short_title')")
    admin_conn.execute("call usersync.resync_all(10)")
    assert one(conn, "select synced, failed from usersync.resync_state") == (24, 1)
    err = one(conn, "select user_id::bigint, contact_id::bigint, field, sqlstate from usersync.sync_errors")
    assert err == (users[5], contact_id(conn, users[5]), "academic_title -> short_title", "22001")
    # The run went past every pair; the one it marked failed is the one that is not up to date.
    stale = conn.execute("select user_id::bigint from usersync.synchronized_contacts where not up_to_date").fetchall()
    assert stale == [(users[5],)]
    assert one(conn, "select all_up_to_date from usersync.pairs") is False
    # Fixed at the source: the next sync of that pair clears the error.
    conn.execute("update users set academic_title = 'Pr' where id = %s", [users[5]])
    assert one(admin_conn, "select usersync.sync_users(%s)", [[users[5]]]) == 1
    assert one(conn, "select count(*) from usersync.sync_errors") == 0


def test_a_failed_pair_is_over_when_its_user_is_fixed_or_deleted_in_any_time_zone(conn, admin_conn):
    # The run records a failure under the key as text in UTC (a timestamptz key); the user's own
    # fix syncs the pair and clears it, from a session in another time zone, as a delete does.
    conn.execute("create table tu (id timestamptz primary key, academic_title text,"
                 " sync boolean not null default true)")
    conn.execute("create table tc (id bigint generated always as identity primary key, short_title varchar(3))")
    conn.execute("select usersync.attach('tu', 'tc', 'sync', pair => 'times')")
    conn.execute("insert into tu values ('2020-01-01 10:00+00', 'Professor'), ('2020-01-02 10:00+00', 'Professor'),"
                 " ('2020-01-03 10:00+00', 'Dr')")
    admin_conn.execute("insert into usersync.field_mapping values ('academic_title', 'short_title', 'times')")
    admin_conn.execute("call usersync.resync_all(10, 'times')")
    assert one(conn, "select failed from usersync.resync_state where pair = 'times'") == 2
    conn.execute("set timezone = 'Pacific/Kiritimati'")
    counts = admin.status(conn, "times")
    assert (counts["failed"], counts["stale"], counts["up_to_date"]) == (2, 0, 1)
    conn.execute("update tu set academic_title = 'Pr' where id = '2020-01-01 10:00+00'")
    conn.execute("delete from tu where id = '2020-01-02 10:00+00'")
    assert one(conn, "select count(*) from usersync.sync_errors where pair = 'times'") == 0
    assert conn.execute("select short_title from tc order by short_title").fetchall() == [("Dr",), ("Pr",), (None,)]
    assert one(conn, "select bool_and(up_to_date) from usersync.synchronized_contacts where pair = 'times'")


@pytest.mark.guard  # (its ALTER TABLE regenerates the code)
def test_a_pair_failed_after_a_clean_run_is_over_when_its_user_fixes_the_value(conn, admin_conn, users):
    conn.execute("alter table contacts add column short_title varchar(3)")
    admin_conn.execute("insert into usersync.field_mapping values ('academic_title', 'short_title')")
    admin_conn.execute("call usersync.resync_all(10)")  # clean: every pair is synced to the mapping
    conn.execute("set session_replication_role = replica")  # a value the triggers did not see
    conn.execute("update users set academic_title = 'Professor' where id = %s", [users[2]])
    conn.execute("reset session_replication_role")
    admin_conn.execute("call usersync.resync_all(10)")
    assert admin.status(conn)["failed"] == 1
    conn.execute("update users set academic_title = 'Pr' where id = %s", [users[2]])
    counts = admin.status(conn)
    assert (counts["failed"], counts["stale"], counts["up_to_date"]) == (0, 0, 25)
    assert one(conn, "select count(*) from usersync.sync_errors") == 0
    assert contact(conn, contact_id(conn, users[2]))["short_title"] == "Pr"


def _a_failed_reversed_pair(conn, admin_conn, uid: int) -> int:
    """The user's pair reversed, and a run that fails it: its contact's title is too long for the
    user field it is now mapped to. The contact's key."""
    conn.execute("alter table users add column nick varchar(3)")
    admin_conn.execute("select usersync.set_sync_source(%s, 'contact')", [uid])
    cid = contact_id(conn, uid)
    conn.execute("update contacts set title = 'Professor' where id = %s", [cid])
    admin_conn.execute("insert into usersync.field_mapping values ('nick', 'title')")
    admin_conn.execute("call usersync.resync_all(10)")
    return cid


@pytest.mark.guard  # (its ALTER TABLE regenerates the code)
def test_a_reversed_pair_failed_by_a_run_is_over_when_its_contact_fixes_the_value(conn, admin_conn, users):
    cid = _a_failed_reversed_pair(conn, admin_conn, users[4])
    assert one(conn, "select user_id::bigint, field from usersync.sync_errors") == (users[4], "nick -> title")
    assert admin.status(conn)["failed"] == 1
    # The contact is this pair's source: its own fix writes the user's whole image, so the pair is
    # synced to the mapping and its failure is over, as a user's fix ends a user-sourced pair's.
    conn.execute("update contacts set title = 'Pr' where id = %s", [cid])
    assert one(conn, "select nick from users where id = %s", [users[4]]) == "Pr"
    counts = admin.status(conn)
    assert (counts["failed"], counts["stale"], counts["up_to_date"]) == (0, 0, 25)
    assert one(conn, "select count(*) from usersync.sync_errors") == 0


@pytest.mark.guard  # (its ALTER TABLE regenerates the code)
def test_a_reversed_pair_failed_by_a_run_stays_failed_when_its_contact_is_edited_without_its_user(
        conn, admin_conn, users):
    cid = _a_failed_reversed_pair(conn, admin_conn, users[4])
    conn.execute("set session_replication_role = replica")
    conn.execute("delete from users where id = %s", [users[4]])
    conn.execute("reset session_replication_role")
    # The edit writes no user: the pair is broken, not synced.
    conn.execute("update contacts set title = 'Pr' where id = %s", [cid])
    assert one(conn, "select up_to_date from usersync.synchronized_contacts where contact_id = %s", [str(cid)]) is False
    assert one(conn, "select count(*) from usersync.sync_errors") == 1


def _failing(conn, admin_conn, failing: list[int]) -> None:
    """A run that fails the pairs of these users (a title too long for its contact field)."""
    conn.execute("alter table contacts add column short_title varchar(3)")
    conn.execute("update users set academic_title = 'Professor' where id = any(%s)", [failing])
    admin_conn.execute("insert into usersync.field_mapping values ('academic_title', 'short_title')")
    admin_conn.execute("call usersync.resync_all(10)")
    assert one(conn, "select count(*) from usersync.sync_errors") == len(failing)


@pytest.mark.guard  # (its ALTER TABLE regenerates the code)
def test_a_failure_is_over_when_its_user_is_switched_off(conn, admin_conn, users):
    _failing(conn, admin_conn, [users[3], users[8]])
    conn.execute("update users set sync_to_contact = false where id = %s", [users[3]])
    assert one(conn, "select array_agg(user_id::bigint) from usersync.sync_errors") == [users[8]]
    assert admin.status(conn)["failed"] == 1


@pytest.mark.guard  # (its ALTER TABLE regenerates the code)
def test_sync_users_forgets_the_failures_of_pairs_ended_behind_the_triggers_back(conn, admin_conn, users):
    _failing(conn, admin_conn, [users[6], users[7]])
    conn.execute("set session_replication_role = replica")
    conn.execute("delete from users where id = %s", [users[7]])
    conn.execute("update users set sync_to_contact = false where id = %s", [users[6]])
    conn.execute("reset session_replication_role")
    # The repairs that forget the link of a user who is gone, and end the link of a user switched
    # off, end those pairs' failures too.
    admin_conn.execute("select usersync.sync_users(null::bigint[])")
    assert one(conn, "select count(*) from usersync.sync_errors") == 0
    assert admin.status(conn)["failed"] == 0


LINK_VERSIONS = "select json_agg(json_build_array(l.user_id, l.xmin::text) order by l.user_id) from usersync.links_1 l"


def test_a_resync_run_rewrites_the_contacts_without_writing_a_link(conn, admin_conn, users):
    admin_conn.execute("insert into usersync.field_mapping values ('academic_title', 'title')")
    links_before = one(conn, LINK_VERSIONS)
    admin_conn.execute("call usersync.resync_all(10)")
    # Every pair is up to date through the run's record (mapping_state.covered_version), not
    # through a stamp on each link: no link was written.
    assert one(conn, LINK_VERSIONS) == links_before
    assert one(conn, "select count(*) from usersync.synchronized_contacts where not up_to_date") == 0
    assert one(conn, "select count(*) from contacts where title like 'T%%'") == 25
    assert one(conn, "select covered_version = version and synced_version = version from usersync.mapping_state")
    assert one(admin_conn, "select stale from usersync.preview_resync()") == 0


def test_after_a_finished_run_an_update_of_one_user_takes_the_single_row_path(conn, admin_conn, users):
    admin_conn.execute("insert into usersync.field_mapping values ('academic_title', 'title')")
    admin_conn.execute("call usersync.resync_all(10)")
    links_before = one(conn, LINK_VERSIONS)
    conn.execute("update users set academic_title = 'Prof' where id = %s", [users[0]])
    assert contact(conn, contact_id(conn, users[0]))["title"] == "Prof"
    # The set-based code would have stamped the pair's link: the single-row path writes the contact only.
    assert one(conn, LINK_VERSIONS) == links_before


def test_a_second_run_on_the_same_mapping_leaves_every_pair_up_to_date_while_it_runs(conn, admin_conn, users):
    admin_conn.execute("insert into usersync.field_mapping values ('academic_title', 'title')")
    admin_conn.execute("call usersync.resync_all(10)")
    assert one(admin_conn, "select done, synced from usersync.resync_step(10)") == (False, 10)
    assert one(conn, "select count(*) from usersync.synchronized_contacts where not up_to_date") == 0
    # A mapping change makes every pair stale again, whatever the runs went past.
    admin_conn.execute("delete from usersync.field_mapping where user_field = 'academic_title'")
    assert one(conn, "select count(*) from usersync.synchronized_contacts where not up_to_date") == 25


def test_the_cursor_is_read_under_the_settings_resync_step_writes_it_with(conn):
    config = ("select array(select c from unnest(proconfig) c where c not like 'search_path=%%'"
              " and c not like 'enable_seqscan=%%' order by c) from pg_proc where oid = %s::regprocedure")
    assert one(conn, config, ["usersync._resync_cursor(text, text, anyelement)"]) == \
        one(conn, config, ["usersync.resync_step(integer, text)"])


def test_an_application_granted_the_profile_view_reads_it_before_during_and_after_a_run(conn, app_conn, admin_conn,
                                                                                          users):
    conn.execute("grant usage on schema usersync to usersync_test_app")
    conn.execute("grant select on usersync.synchronized_contacts to usersync_test_app")
    stale = "select count(*) from usersync.synchronized_contacts where not up_to_date"
    admin_conn.execute("insert into usersync.field_mapping values ('academic_title', 'title')")
    assert one(app_conn, stale) == 25
    admin_conn.execute("select * from usersync.resync_step(10)")
    assert one(app_conn, stale) == 15
    admin_conn.execute("call usersync.resync_all(10)")
    assert one(app_conn, stale) == 0


def test_a_pair_a_run_failed_is_up_to_date_after_a_later_run_succeeds_on_the_same_mapping(conn, admin_conn, users):
    conn.execute("alter table contacts add constraint no_bad_title check (title is distinct from 'BAD')")
    conn.execute("update users set academic_title = 'BAD' where id = %s", [users[3]])
    admin_conn.execute("insert into usersync.field_mapping values ('academic_title', 'title')")
    admin_conn.execute("call usersync.resync_all(10)")
    assert one(conn, "select synced, failed from usersync.resync_state") == (24, 1)
    conn.execute("alter table contacts drop constraint no_bad_title")  # the cause goes; the mapping stays
    admin_conn.execute("call usersync.resync_all(10)")
    assert one(conn, "select synced, failed from usersync.resync_state") == (25, 0)
    assert one(conn, "select count(*) from usersync.synchronized_contacts where not up_to_date") == 0
    assert mismatches(conn) == []


def test_a_run_counts_a_char_key_it_went_past_at_its_full_length(conn, admin_conn):
    conn.execute("create table cu (code char(5) primary key, first_name text, academic_title text,"
                 " sync boolean not null default true)")
    conn.execute("create table cc (id bigint generated always as identity primary key, first_name text, title text)")
    conn.execute("select usersync.attach('cu', 'cc', 'sync', pair => 'codes')")
    conn.execute("insert into cu (code, first_name, academic_title) values ('aaaaa', 'A', 'x'), ('bbbbb', 'B', 'x'),"
                 " ('ccccc', 'C', 'x'), ('ddddd', 'D', 'x')")
    admin_conn.execute("insert into usersync.field_mapping values ('academic_title', 'title', 'codes')")
    admin_conn.execute("select * from usersync.resync_step(2, 'codes')")
    rows = conn.execute("select user_id, up_to_date from usersync.synchronized_contacts where pair = 'codes'"
                        " order by 1").fetchall()
    assert rows == [("aaaaa", True), ("bbbbb", True), ("ccccc", False), ("ddddd", False)]


def test_resync_rejects_a_bad_batch_size(admin_conn):
    with raises_sqlstate("US006"):
        admin_conn.execute("call usersync.resync_all(0)")


def test_resync_all_inside_a_transaction_block_explains_itself(admin_conn, users):
    with pytest.raises(psycopg.errors.InvalidTransactionTermination), admin_conn.transaction():
        admin_conn.execute("call usersync.resync_all(10)")


def test_sync_users_repairs_a_missing_contact_and_a_missing_link(conn, admin_conn):
    a = add_user(conn, "a", first_name="A")
    gone = contact_id(conn, a)
    # Writes that bypass triggers (a superuser in replica mode): a contact vanishes, a user
    # appears switched on without a contact.
    conn.execute("set session_replication_role = replica")
    conn.execute("delete from contacts where id = %s", [gone])
    b = one(conn, "insert into users (login, first_name, sync_to_contact) values ('b', 'B', true) returning id")
    conn.execute("set session_replication_role = origin")
    assert one(admin_conn, "select usersync.sync_users()") == 2
    assert contact_id(conn, a) not in (None, gone)
    assert contact(conn, contact_id(conn, b))["first_name"] == "B"
    assert mismatches(conn) == []


def test_sync_users_of_given_ids_and_unknown_ids(conn, admin_conn):
    a = add_user(conn, "a")
    off = add_user(conn, "off", sync=False)
    assert one(admin_conn, "select usersync.sync_users(%s)", [[a, off]]) == 1
    with raises_sqlstate("US006", match="unknown user id(s): 999999"):
        admin_conn.execute("select usersync.sync_users(array[%s, 999999]::bigint[])", [a])


def test_a_mapping_change_between_batches_restarts_the_run(conn, admin_conn, users):
    admin_conn.execute("select * from usersync.resync_step(10)")
    admin_conn.execute("insert into usersync.field_mapping values ('academic_title', 'title')")
    admin_conn.execute("call usersync.resync_all(10)")
    assert one(conn, "select synced, total from usersync.resync_state") == (25, 25)
    assert one(conn, "select count(*) from usersync.synchronized_contacts where not up_to_date") == 0
    assert mismatches(conn) == []


def test_a_second_run_beside_a_run_in_progress_is_refused_and_an_orphaned_run_is_resumed(
        conn, admin_conn, users, pg_server, dbname):
    admin_conn.execute("select * from usersync.resync_step(2)")  # a run in progress, in this session
    with psycopg.connect(pg_server.conninfo(dbname, user="usersync_test_admin", password="usersync-test"),
                         autocommit=True) as other:
        with raises_sqlstate("US009") as info:
            other.execute("select * from usersync.resync_step(2)")
        assert "in progress in session" in info.value.diag.message_primary
        # The session that ran it goes away: the next run picks it up where it stopped.
        synced = one(conn, "select synced from usersync.resync_state")
        pid = admin_conn.info.backend_pid
        conn.execute("select pg_terminate_backend(%s, 5000)", [pid])  # waits until it is gone
        assert one(conn, "select count(*) from pg_stat_activity where pid = %s", [pid]) == 0
        row = other.execute("select batch_synced, synced from usersync.resync_step(2)").fetchone()
        assert row[1] == synced + row[0]
        other.execute("call usersync.resync_all(2)")
    assert one(conn, "select finished_at is not null and failed = 0 from usersync.resync_state") is True


def test_a_mapped_field_of_another_type_is_rewritten_only_where_its_value_differs(conn, admin_conn):
    conn.execute("alter table contacts add column short_code varchar(5)")
    admin_conn.execute("insert into usersync.field_mapping values ('login', 'short_code')")
    uids = [add_user(conn, f"b{i}") for i in range(4)]
    admin_conn.execute("call usersync.resync_all()")
    admin_conn.execute("call usersync.resync_all()")  # a second run: nothing differs, nothing is rewritten
    assert one(conn, "select synced, changed, failed from usersync.resync_state") == (4, 0, 0)
    # Behind the triggers: one contact differs, one user's login no longer fits varchar(5).
    conn.execute("set session_replication_role = replica")
    conn.execute("update contacts set short_code = 'x' where id = %s", [contact_id(conn, uids[0])])
    conn.execute("update users set login = 'toolong' where id = %s", [uids[1]])
    conn.execute("reset session_replication_role")
    preview = one(admin_conn, "select would_change, would_fail from usersync.preview_resync()")
    admin_conn.execute("call usersync.resync_all()")
    assert preview == (1, 1)
    assert one(conn, "select changed, failed from usersync.resync_state") == preview
    assert one(conn, "select short_code from contacts where id = %s", [contact_id(conn, uids[0])]) == "b0"


def test_a_run_starts_only_in_read_committed_and_not_where_the_mapping_just_changed(conn, admin_conn, users):
    admin_conn.execute("insert into usersync.field_mapping values ('academic_title', 'title')")
    with admin_conn.transaction():
        admin_conn.execute("set transaction isolation level repeatable read")
        with raises_sqlstate("25000", match="READ COMMITTED"):
            admin_conn.execute("select * from usersync.resync_step(10)")
    with admin_conn.transaction():
        admin_conn.execute("update usersync.field_mapping set contact_field = 'notes'"
                           " where user_field = 'academic_title'")
        with raises_sqlstate("25000", match="changed in this transaction"):
            admin_conn.execute("select * from usersync.resync_step(10)")
    with admin_conn.transaction():
        admin_conn.execute("select usersync.set_sync_source(%s, 'contact')", [users[0]])
        with raises_sqlstate("25000", match="a pair's direction"):
            admin_conn.execute("select * from usersync.resync_step(10)")
    admin_conn.execute("call usersync.resync_all(10)")
    assert mismatches(conn) == []


def test_doctor_waits_for_a_run_that_finishes_and_generates_the_code_again(sessions, conn, users):
    conn.execute("insert into usersync.field_mapping values ('academic_title', 'title')")
    # (what it finds before: an install without a superuser has no DDL guard to find)
    before = one(conn, "select count(*) from usersync.doctor()")
    it, (a1, a2) = sessions("admin", "admin")
    it.step(a1, "begin")
    it.step(a1, "select * from usersync.resync_step(100)")
    it.step(a1, "select * from usersync.resync_step(100)")  # finishes: the pair's code is generated again
    doctor = it.step(a2, "select count(*) from usersync.doctor()", blocks=True)
    it.step(a1, "commit")
    assert it.result(doctor) == [(before,)]  # no failure, no mismatch of the generated code
