"""What PostgreSQL 17 and 18 add on the paths the engine guards (#12 §2): MERGE's
WHEN NOT MATCHED BY SOURCE and RETURNING (17), virtual generated columns and OLD/NEW in
RETURNING (18). Each test runs where the server has the feature (make test PG=18 runs all)."""

from __future__ import annotations

import pytest
from helpers import add_user, contact, contact_id, mismatches, one, raises_sqlstate


def _needs(conn, version_num: int) -> None:
    have = int(one(conn, "select current_setting('server_version_num')"))
    if have < version_num:
        pytest.skip(f"PostgreSQL {version_num // 10000}+ (this server: {have // 10000})")


def test_merge_not_matched_by_source_delete_cannot_remove_a_user_sourced_contact(conn, app_conn):
    _needs(conn, 170000)
    uid = add_user(conn, "a", first_name="Ann")
    with raises_sqlstate("US001"):
        app_conn.execute("merge into contacts c using (select 0 as id) s on c.id = s.id"
                         " when not matched by source then delete")
    assert contact_id(conn, uid) is not None and mismatches(conn) == []


def test_merge_not_matched_by_source_update_of_users_flows_to_their_contacts(conn, app_conn):
    _needs(conn, 170000)
    uid = add_user(conn, "a", first_name="Ann")
    app_conn.execute("merge into users u using (select 0 as id) s on u.id = s.id"
                     " when not matched by source then update set first_name = 'Merged'")
    assert contact(conn, contact_id(conn, uid))["first_name"] == "Merged"


def test_merge_returning_syncs_what_it_inserts_and_updates(conn, app_conn):
    _needs(conn, 170000)
    uid = add_user(conn, "a", first_name="Ann")
    rows = app_conn.execute(
        "merge into users u using (values (%s::bigint, 'Anna'), (null, 'Bob')) s(id, name) on u.id = s.id"
        " when matched then update set first_name = s.name"
        " when not matched then insert (login, first_name, sync_to_contact) values ('b', s.name, true)"
        " returning merge_action(), u.first_name", [uid]).fetchall()
    assert sorted(rows) == [("INSERT", "Bob"), ("UPDATE", "Anna")]
    assert one(conn, "select count(*) from contacts") == 2 and mismatches(conn) == []


def test_update_returning_old_and_new_syncs_as_any_update(conn, app_conn):
    _needs(conn, 180000)
    uid = add_user(conn, "a", first_name="Ann")
    assert app_conn.execute("update users set first_name = 'Anna' where id = %s"
                            " returning old.first_name, new.first_name", [uid]).fetchone() == ("Ann", "Anna")
    assert contact(conn, contact_id(conn, uid))["first_name"] == "Anna"


@pytest.mark.guard  # (the ALTER TABLE regenerates the engine)
def test_a_virtual_generated_column_is_no_metadata_field_and_cannot_be_mapped(conn, admin_conn):
    _needs(conn, 180000)
    conn.execute("alter table users add column display text generated always as (login || '!') virtual")
    conn.execute("alter table contacts add column display text")
    assert one(conn, "select count(*) from usersync.metadata_fields where module = 'users' and field = 'display'") == 0
    with raises_sqlstate("US003", match="not a metadata field"):
        admin_conn.execute("insert into usersync.field_mapping values ('display', 'display')")
    uid = add_user(conn, "v", first_name="V")
    assert contact(conn, contact_id(conn, uid))["display"] is None and mismatches(conn) == []
