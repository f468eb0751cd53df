"""Behaviour 5-8: read-only contacts, delete toggles, reversed pairs."""

from __future__ import annotations

import psycopg
import pytest
from helpers import add_user, contact, contact_id, mismatches, one, raises_sqlstate

WRITERS = ["conn", "app_conn"]


@pytest.fixture(params=WRITERS)
def writer(request: pytest.FixtureRequest) -> psycopg.Connection:
    return request.getfixturevalue(request.param)


@pytest.fixture
def pair(conn) -> tuple[int, int]:
    uid = add_user(conn, "alice", first_name="Alice", email="a@example.org")
    return uid, contact_id(conn, uid)


def _unchanged(conn, cid: int, before: dict) -> None:
    assert contact(conn, cid) == before


STATEMENTS = {
    "update": "update contacts set first_name = 'x' where id = {cid}",
    "update no-op": "update contacts set first_name = first_name where id = {cid}",
    "delete": "delete from contacts where id = {cid}",
    "upsert": "insert into contacts (id, first_name) overriding system value values ({cid}, 'x')"
              " on conflict (id) do update set first_name = excluded.first_name",
    "merge update": "merge into contacts c using (values ({cid})) v(id) on c.id = v.id"
                    " when matched then update set first_name = 'x'",
    "merge delete": "merge into contacts c using (values ({cid})) v(id) on c.id = v.id when matched then delete",
    "truncate": "truncate contacts",
    "truncate cascade": "truncate contacts cascade",
}


@pytest.mark.parametrize("statement", STATEMENTS)
def test_a_user_sourced_contact_cannot_be_changed_or_deleted(writer, conn, pair, statement):
    uid, cid = pair
    before = contact(conn, cid)
    with raises_sqlstate("US001") as info:
        writer.execute(STATEMENTS[statement].format(cid=cid))
    assert f"user {uid}" in info.value.diag.message_primary
    _unchanged(conn, cid, before)


def test_session_settings_do_not_make_an_application_the_engine(app_conn, conn, pair):
    _uid, cid = pair
    for name in ("usersync.engine", "usersync.bypass", "usersync.role", "usersync.in_sync"):
        app_conn.execute("select set_config(%s, 'on', false)", [name])
    app_conn.execute("set application_name = 'usersync_engine'")
    with raises_sqlstate("US001"):
        app_conn.execute("update contacts set first_name = 'x' where id = %s", [cid])
    with pytest.raises(psycopg.errors.InsufficientPrivilege):
        app_conn.execute("set role usersync_engine")


def test_ordinary_contacts_stay_editable(writer, pair):
    cid = one(writer, "insert into contacts (first_name) values ('Plain') returning id")
    writer.execute("update contacts set first_name = 'Edited' where id = %s", [cid])
    writer.execute("delete from contacts where id = %s", [cid])


def test_deleting_a_user_keeps_its_contact_unlinked_by_default(writer, conn, pair):
    uid, cid = pair
    writer.execute("delete from users where id = %s", [uid])
    assert contact(conn, cid)["first_name"] == "Alice"
    assert one(conn, "select count(*) from usersync.links_1") == 0
    writer.execute("update contacts set first_name = 'now editable' where id = %s", [cid])


def test_deleting_a_user_deletes_its_contact_when_the_toggle_is_on(writer, conn, admin_conn, pair):
    uid, _cid = pair
    plain = one(conn, "insert into contacts (first_name) values ('Plain') returning id")
    admin_conn.execute("update usersync.settings set delete_contact_with_user = true")
    writer.execute("delete from users where id = %s", [uid])
    assert one(conn, "select array_agg(id) from contacts") == [plain]
    assert one(conn, "select count(*) from usersync.links_1") == 0


def test_truncating_users_applies_the_delete_rule_to_every_pair(conn, admin_conn):
    a = add_user(conn, "a")
    add_user(conn, "b")
    keep = contact_id(conn, a)
    conn.execute("truncate users")
    assert one(conn, "select count(*) from contacts") == 2 and one(conn, "select count(*) from usersync.links_1") == 0
    conn.execute("update contacts set first_name = 'editable' where id = %s", [keep])
    add_user(conn, "c")
    admin_conn.execute("update usersync.settings set delete_contact_with_user = true")
    conn.execute("truncate users")
    assert one(conn, "select count(*) from contacts") == 2  # c's contact went with it


class TestReversedPair:
    @pytest.fixture
    def reversed_pair(self, conn, admin_conn, pair) -> tuple[int, int]:
        uid, cid = pair
        admin_conn.execute("select usersync.set_sync_source(%s, 'contact')", [uid])
        return uid, cid

    def test_the_contact_is_editable_and_its_mapped_fields_flow_to_the_user(self, writer, conn, reversed_pair):
        uid, cid = reversed_pair
        writer.execute("update contacts set first_name = 'Alicia', notes = 'contact only' where id = %s", [cid])
        assert one(conn, "select first_name from users where id = %s", [uid]) == "Alicia"
        assert mismatches(conn) == []

    def test_no_ping_pong_between_the_two_triggers(self, writer, conn, reversed_pair):
        uid, cid = reversed_pair
        with writer.transaction():
            writer.execute("update contacts set email = 'new@example.org' where id = %s", [cid])
            # One write each way: the contact by the statement, the user by the engine, no more.
            counts = dict(writer.execute("select relname, n_tup_upd from pg_stat_xact_user_tables"
                                         " where relname in ('users', 'contacts')").fetchall())
        assert counts == {"users": 1, "contacts": 1}
        assert one(conn, "select email from users where id = %s", [uid]) == "new@example.org"

    def test_the_users_mapped_fields_are_read_only(self, writer, conn, reversed_pair):
        uid, cid = reversed_pair
        with raises_sqlstate("US002") as info:
            writer.execute("update users set email = 'x@example.org' where id = %s", [uid])
        assert '"email"' in info.value.diag.message_primary and f"contact {cid}" in info.value.diag.message_primary
        writer.execute("update users set login = 'alice2', birth_date = '2000-01-01' where id = %s", [uid])

    def test_the_user_cannot_be_deleted(self, writer, conn, reversed_pair):
        uid, _ = reversed_pair
        with raises_sqlstate("US002"):
            writer.execute("delete from users where id = %s", [uid])
        with raises_sqlstate("US002"):
            writer.execute("truncate users")
        assert one(conn, "select count(*) from users") == 1

    def test_deleting_the_contact_unlinks_the_user_by_default(self, writer, conn, reversed_pair):
        uid, cid = reversed_pair
        writer.execute("delete from contacts where id = %s", [cid])
        assert one(conn, "select sync_to_contact from users where id = %s", [uid]) is False
        assert one(conn, "select count(*) from usersync.links_1") == 0

    def test_deleting_the_contact_deletes_the_user_when_the_toggle_is_on(self, writer, conn, admin_conn, reversed_pair):
        _uid, cid = reversed_pair
        admin_conn.execute("update usersync.settings set delete_user_with_contact = true")
        writer.execute("delete from contacts where id = %s", [cid])
        assert one(conn, "select count(*) from users") == 0

    def test_truncating_contacts_of_reversed_pairs_is_refused(self, writer, reversed_pair):
        with raises_sqlstate("US004"):
            writer.execute("truncate contacts")

    def test_restoring_the_direction_refreshes_the_contact_from_the_user(self, conn, admin_conn, reversed_pair):
        uid, cid = reversed_pair
        conn.execute("update contacts set notes = 'only on the contact' where id = %s", [cid])
        admin_conn.execute("select usersync.set_sync_source(%s, 'user')", [uid])
        assert contact(conn, cid)["notes"] is None
        with raises_sqlstate("US001"):
            conn.execute("update contacts set notes = 'x' where id = %s", [cid])
        assert mismatches(conn) == []

    def test_re_enabling_the_switch_makes_the_user_the_source_again(self, conn, reversed_pair):
        uid, _cid = reversed_pair
        conn.execute("update users set sync_to_contact = false where id = %s", [uid])
        conn.execute("update users set sync_to_contact = true where id = %s", [uid])
        assert one(conn, "select source from usersync.synchronized_contacts where user_id = %s::text", [uid]) == "user"


def test_set_sync_source_rejects_bad_input(admin_conn, conn, pair):
    uid, _ = pair
    with raises_sqlstate("US006"):
        admin_conn.execute("select usersync.set_sync_source(%s, 'sideways')", [uid])
    with raises_sqlstate("US006", match=f"user {uid + 1000} does not exist"):
        admin_conn.execute("select usersync.set_sync_source(%s, 'contact')", [uid + 1000])
    with raises_sqlstate("US006", match="the user id is NULL"):
        admin_conn.execute("select usersync.set_sync_source(null, 'contact')")
    off = add_user(conn, "off", sync=False)
    with raises_sqlstate("US006", match=f"user {off} has no synchronized contact"):
        admin_conn.execute("select usersync.set_sync_source(%s, 'contact')", [off])


def test_sync_users_names_a_null_id_among_the_unknown(admin_conn, pair):
    with raises_sqlstate("US006", match="unknown user id(s): NULL"):
        admin_conn.execute("select usersync.sync_users(array[null, %s]::bigint[])", [pair[0]])


def test_a_reversed_pair_casts_text_into_a_date_field_and_names_a_bad_value(conn, admin_conn):
    admin_conn.execute("insert into usersync.field_mapping values ('birth_date', 'notes')")
    uid = add_user(conn, "d", birth_date="1990-01-02")
    cid = contact_id(conn, uid)
    admin_conn.execute("select usersync.set_sync_source(%s, 'contact')", [uid])
    conn.execute("update contacts set notes = '2001-02-03' where id = %s", [cid])
    assert str(one(conn, "select birth_date from users where id = %s", [uid])) == "2001-02-03"
    with pytest.raises(psycopg.Error) as info:
        conn.execute("update contacts set notes = 'not a date' where id = %s", [cid])
    assert info.value.sqlstate == "22007"
    assert f"contact {cid} to user {uid}" in info.value.diag.message_primary
    assert contact(conn, cid)["notes"] == "2001-02-03"  # nothing half-written
