"""Behaviour 1-5 and 7: the user is the source, its contact follows through the mapping."""

from __future__ import annotations

import psycopg
import pytest
from helpers import add_user, contact, contact_id, mismatches, one

WRITERS = ["conn", "app_conn"]


@pytest.fixture(params=WRITERS)
def writer(request: pytest.FixtureRequest) -> psycopg.Connection:
    """Runs the test as the superuser and as an unprivileged application role."""
    return request.getfixturevalue(request.param)


def test_user_inserted_with_switch_on_gets_a_contact_in_the_same_transaction(writer, conn):
    with writer.transaction():
        uid = add_user(writer, "alice", first_name="Alice", last_name="Liddell", email="a@example.org",
                       academic_title="Dr.", department="R&D")
        # Visible before commit, to the writer itself: same transaction.
        cid = one(writer, "select id from contacts where email = 'a@example.org'")
    c = contact(conn, cid)
    fields = (c["first_name"], c["last_name"], c["email"], c["department"])
    assert fields == ("Alice", "Liddell", "a@example.org", "R&D")
    assert c["title"] is None  # academic_title is not mapped by default
    assert one(conn, "select source, up_to_date from usersync.synchronized_contacts where user_id = %s::text",
               [uid]) == ("user", True)


def test_user_with_switch_off_gets_no_contact_until_switched_on(writer, conn):
    uid = add_user(writer, "bob", sync=False, first_name="Bob")
    assert one(conn, "select count(*) from contacts") == 0
    writer.execute("update users set sync_to_contact = true where id = %s", [uid])
    assert contact(conn, contact_id(conn, uid))["first_name"] == "Bob"


def test_changing_a_mapped_field_updates_the_contact(writer, conn):
    uid = add_user(writer, "carol", first_name="Carol")
    writer.execute("update users set first_name = 'Caroline', phone = '+49 1' where id = %s", [uid])
    c = contact(conn, contact_id(conn, uid))
    assert (c["first_name"], c["phone"]) == ("Caroline", "+49 1")


def test_changing_an_unmapped_field_writes_nothing_to_contacts(writer, conn):
    uid = add_user(writer, "dave", first_name="Dave")
    cid = contact_id(conn, uid)
    before = one(conn, "select xmin::text from contacts where id = %s", [cid])
    writer.execute("update users set login = 'david', birth_date = '1990-01-01' where id = %s", [uid])
    assert one(conn, "select xmin::text from contacts where id = %s", [cid]) == before


def test_contact_fields_outside_the_mapping_are_empty_after_a_sync(writer, conn):
    uid = add_user(writer, "erin", first_name="Erin")
    cid = contact_id(conn, uid)
    writer.execute("update users set sync_to_contact = false where id = %s", [uid])
    writer.execute("update contacts set notes = 'written while unlinked', company = 'ACME' where id = %s", [cid])
    writer.execute("update users set sync_to_contact = true where id = %s", [uid])
    c = contact(conn, cid)
    assert (c["notes"], c["company"], c["first_name"]) == (None, None, "Erin")


def test_switching_off_ends_the_link_and_the_contact_becomes_editable(writer, conn):
    uid = add_user(writer, "frank", first_name="Frank")
    cid = contact_id(conn, uid)
    writer.execute("update users set sync_to_contact = false where id = %s", [uid])
    assert one(conn, "select count(*) from usersync.synchronized_contacts") == 0
    writer.execute("update contacts set first_name = 'edited' where id = %s", [cid])
    writer.execute("update users set first_name = 'Franz' where id = %s", [uid])
    assert contact(conn, cid)["first_name"] == "edited"  # no longer follows the user
    writer.execute("delete from contacts where id = %s", [cid])


def test_re_enabling_relinks_and_refreshes_the_earlier_contact_never_a_duplicate(writer, conn):
    uid = add_user(writer, "gina", first_name="Gina")
    cid = contact_id(conn, uid)
    writer.execute("update users set sync_to_contact = false where id = %s", [uid])
    writer.execute("update contacts set first_name = 'stale' where id = %s", [cid])
    writer.execute("update users set first_name = 'Regina' where id = %s", [uid])
    writer.execute("update users set sync_to_contact = true where id = %s", [uid])
    assert contact_id(conn, uid) == cid
    assert one(conn, "select count(*) from contacts") == 1
    assert contact(conn, cid)["first_name"] == "Regina"


def test_re_enabling_after_the_earlier_contact_was_deleted_creates_a_new_one(writer, conn):
    uid = add_user(writer, "hank")
    cid = contact_id(conn, uid)
    writer.execute("update users set sync_to_contact = false where id = %s", [uid])
    writer.execute("delete from contacts where id = %s", [cid])
    writer.execute("update users set sync_to_contact = true where id = %s", [uid])
    assert contact_id(conn, uid) not in (None, cid)
    assert one(conn, "select count(*) from contacts") == 1


def test_a_mapping_change_rewrites_nothing_until_the_next_sync(conn, admin_conn):
    uid = add_user(conn, "ida", first_name="Ida", academic_title="Prof.")
    other = add_user(conn, "ian", first_name="Ian", academic_title="Dr.")
    cid = contact_id(conn, uid)
    admin_conn.execute("insert into usersync.field_mapping values ('academic_title', 'title')")
    assert contact(conn, cid)["title"] is None
    assert one(conn, "select count(*) from usersync.synchronized_contacts where not up_to_date") == 2
    # A later write uses the new mapping and brings that pair up to date.
    conn.execute("update users set first_name = 'Ida M.' where id = %s", [uid])
    assert contact(conn, cid)["title"] == "Prof."
    assert one(conn, "select up_to_date from usersync.synchronized_contacts where user_id = %s::text", [uid]) is True
    assert one(conn, "select up_to_date from usersync.synchronized_contacts where user_id = %s::text", [other]) is False
    assert one(admin_conn, "select usersync.sync_users()") == 2
    assert contact(conn, contact_id(conn, other))["title"] == "Dr."
    assert one(conn, "select count(*) from usersync.synchronized_contacts where not up_to_date") == 0
    assert mismatches(conn) == []


def test_bulk_insert_select_copy_and_update_sync_every_row(conn):
    conn.execute("insert into users (login, first_name, sync_to_contact)"
                 " select 'bulk' || g, 'First ' || g, g % 4 <> 0 from generate_series(1, 2000) g")
    with conn.cursor().copy("copy users (login, email, sync_to_contact) from stdin") as copy:
        for i in range(500):
            copy.write_row((f"copy{i}", f"c{i}@example.org", True))
    assert one(conn, "select count(*) from contacts") == 1500 + 500
    conn.execute("update users set last_name = 'Bulk' where login like 'bulk%'")
    assert one(conn, "select count(*) from contacts where last_name = 'Bulk'") == 1500
    assert mismatches(conn) == []


@pytest.mark.parametrize("rows", [3, 30], ids=["few rows, one by one", "many rows, set-based"])
def test_one_update_that_edits_switches_on_and_switches_off_syncs_every_row(writer, conn, rows):
    # A statement of up to 8 rows is synced row by row (a row that is not the common case takes
    # the set-based code); a bigger one once, set-based, by the call for its first row, whichever
    # row that is: here the first user, switched off and staying so).
    ids = [add_user(writer, f"mix{i}", sync=i % 3 != 0, first_name=f"M{i}") for i in range(rows)]
    cids = {uid: contact_id(conn, uid) for uid in ids}
    writer.execute("update users set first_name = first_name || '!',"
                   " sync_to_contact = case when id %% 3 = %s then not sync_to_contact else sync_to_contact end"
                   " where id = any(%s)", [ids[2] % 3, ids])
    for i, uid in enumerate(ids):
        was_on = i % 3 != 0
        now_on = was_on != (uid % 3 == ids[2] % 3)
        cid = contact_id(conn, uid)
        if now_on:
            assert contact(conn, cid)["first_name"] == f"M{i}!"
        else:
            assert cid is None
            if was_on:  # the contact stays, as it was when the link ended
                assert contact(conn, cids[uid])["first_name"] in (f"M{i}", f"M{i}!")
    assert mismatches(conn) == []


@pytest.mark.parametrize("rows", [1, 20], ids=["one row", "many rows"])
def test_a_value_equal_in_its_type_but_written_differently_reaches_the_contact(conn, rows):
    # numeric 10.5 = 10.50, but the contact's text is '10.5' or '10.50': the contact must become
    # the image of the user whatever the statement's size (the one-row path compares the images,
    # not the user's old and new values).
    conn.execute("alter table users add column price numeric")
    conn.execute("alter table contacts add column price text")
    conn.execute("insert into usersync.field_mapping values ('price', 'price')")
    ids = [add_user(conn, f"p{i}", price=10.5) for i in range(rows)]
    assert contact(conn, contact_id(conn, ids[0]))["price"] == "10.5"
    conn.execute("update users set price = 10.50 where id = any(%s)", [ids])
    assert {contact(conn, contact_id(conn, uid))["price"] for uid in ids} == {"10.50"}
    assert mismatches(conn) == []


def test_insert_on_conflict_and_merge_on_users_sync_the_contacts(writer, conn):
    uid = add_user(writer, "jack", first_name="Jack")
    writer.execute("insert into users (login, first_name, sync_to_contact) values ('jack', 'Jacques', true),"
                   " ('jill', 'Jill', true) on conflict (login) do update set first_name = excluded.first_name")
    assert contact(conn, contact_id(conn, uid))["first_name"] == "Jacques"
    writer.execute("""merge into users u using (values ('jill', 'Gillian'), ('kate', 'Kate')) v(login, name)
                      on u.login = v.login
                      when matched then update set first_name = v.name
                      when not matched then
                        insert (login, first_name, sync_to_contact) values (v.login, v.name, true)""")
    names = {r[0] for r in conn.execute("select first_name from contacts")}
    assert names == {"Jacques", "Gillian", "Kate"}
    assert mismatches(conn) == []


def test_a_value_the_contact_cannot_hold_fails_the_statement_naming_user_contact_and_field(conn):
    conn.execute("alter table users add column code text")
    conn.execute("alter table contacts add column short_code varchar(3)")
    conn.execute("insert into usersync.field_mapping values ('code', 'short_code')")
    uid = add_user(conn, "kim", code="ok")
    cid = contact_id(conn, uid)
    with pytest.raises(psycopg.Error) as info:
        conn.execute("update users set code = 'too long', first_name = 'x' where id = %s", [uid])
    err = info.value
    assert err.sqlstate == "22001"
    assert f"user {uid}" in err.diag.message_primary and f"contact {cid}" in err.diag.message_primary
    assert '"code"' in err.diag.message_primary and '"short_code"' in err.diag.message_primary
    assert err.diag.message_hint and err.diag.message_detail
    assert one(conn, "select code, first_name from users where id = %s", [uid]) == ("ok", None)
    with pytest.raises(psycopg.Error) as info:
        conn.execute("insert into users (login, code, sync_to_contact) values ('lea', 'far too long', true)")
    assert info.value.sqlstate == "22001" and "(new)" in info.value.diag.message_primary
    assert one(conn, "select count(*) from users where login = 'lea'") == 0
