"""The field mapping: catalog, default, validation (US003), reset and clear."""

from __future__ import annotations

import pytest
from helpers import add_user, contact, contact_id, mismatches, one, raises_sqlstate
from typer.testing import CliRunner

from pyapp import cli

DEFAULT = {("first_name", "first_name"), ("last_name", "last_name"), ("email", "email"), ("phone", "phone"),
           ("mobile", "mobile"), ("department", "department"), ("job_title", "job_title")}


def _mapping(conn) -> set[tuple[str, str]]:
    return set(conn.execute("select user_field, contact_field from usersync.field_mapping").fetchall())


def test_the_install_maps_every_field_both_modules_have(admin_conn):
    assert _mapping(admin_conn) == DEFAULT


def test_metadata_fields_lists_both_modules_with_labels_and_no_system_columns(admin_conn, conn):
    rows = admin_conn.execute("select module, field, data_type, label from usersync.metadata_fields").fetchall()
    fields = {(m, f) for m, f, _, _ in rows}
    assert ("users", "academic_title") in fields and ("contacts", "title") in fields
    assert not {("users", "id"), ("users", "sync_to_contact"), ("contacts", "id")} & fields
    assert ("users", "academic_title", "text", "Academic title") in rows
    conn.execute("alter table contacts add column linkedin text")
    conn.execute("comment on column contacts.linkedin is 'LinkedIn'")
    assert one(admin_conn, "select label from usersync.metadata_fields where field = 'linkedin'") == "LinkedIn"


@pytest.mark.parametrize(("user_field", "contact_field", "needle"), [
    ("nope", "title", 'unknown user field "nope"'),
    ("academic_title", "nope", 'unknown contact field "nope"'),
    ("id", "title", '"id" is a system column'),
    ("sync_to_contact", "notes", '"sync_to_contact" is a system column'),
    ("ctid", "notes", '"ctid" is a system column'),
    ("academic_title", "id", '"id" is a system column'),
    ("first_name", "title", 'user field "first_name" is already mapped'),
    ("academic_title", "email", 'contact field "email" is already mapped'),
    ("login", "birthday", 'user field "login" (text) cannot fill contact field "birthday" (date)'),
])
def test_invalid_mappings_are_refused_with_us003(admin_conn, user_field, contact_field, needle):
    with raises_sqlstate("US003") as info:
        admin_conn.execute("insert into usersync.field_mapping values (%s, %s)", [user_field, contact_field])
    assert needle in info.value.diag.message_primary
    assert info.value.diag.message_detail
    assert _mapping(admin_conn) == DEFAULT


def test_an_update_that_would_map_a_field_twice_is_refused(admin_conn):
    with raises_sqlstate("US003"):
        admin_conn.execute("update usersync.field_mapping set contact_field = 'email' where user_field = 'phone'")
    admin_conn.execute("update usersync.field_mapping set contact_field = 'company' where user_field = 'department'")
    assert ("department", "company") in _mapping(admin_conn)


def test_a_date_can_fill_a_text_field_and_flows_formatted(admin_conn, conn):
    admin_conn.execute("insert into usersync.field_mapping values ('birth_date', 'notes')")
    admin_conn.execute("insert into usersync.field_mapping values ('academic_title', 'title')")
    uid = add_user(conn, "d", birth_date="1990-05-17", academic_title="Dr.")
    c = contact(conn, contact_id(conn, uid))
    assert (c["notes"], c["title"]) == ("1990-05-17", "Dr.")


def test_reset_restores_the_default_and_delete_removes_all(admin_conn, conn):
    admin_conn.execute("delete from usersync.field_mapping where user_field in ('phone', 'mobile')")
    admin_conn.execute("insert into usersync.field_mapping values ('academic_title', 'title')")
    assert one(admin_conn, "select usersync.reset_field_mapping()") == 7
    assert _mapping(admin_conn) == DEFAULT
    admin_conn.execute("delete from usersync.field_mapping")
    uid = add_user(conn, "e", first_name="Eve", email="e@example.org")
    c = contact(conn, contact_id(conn, uid))
    assert all(v is None for k, v in c.items() if k != "id")  # unmapped fields stay empty
    admin_conn.execute("truncate usersync.field_mapping")
    assert _mapping(admin_conn) == set()


def test_every_mapping_change_bumps_the_version(admin_conn):
    before = one(admin_conn, "select version from usersync.mapping_state")
    admin_conn.execute("insert into usersync.field_mapping values ('academic_title', 'title')")
    admin_conn.execute("delete from usersync.field_mapping where user_field = 'academic_title'")
    assert one(admin_conn, "select version from usersync.mapping_state") == before + 2


def test_custom_fields_added_by_a_dba_can_be_mapped(conn, admin_conn):
    conn.execute("alter table users add column linkedin_url text")
    conn.execute("alter table contacts add column linkedin text")
    admin_conn.execute("insert into usersync.field_mapping values ('linkedin_url', 'linkedin')")
    uid = add_user(conn, "f", linkedin_url="https://example.org/f")
    assert contact(conn, contact_id(conn, uid))["linkedin"] == "https://example.org/f"


@pytest.mark.guard  # (its ALTER TABLE regenerates the code)
def test_an_unmapped_not_null_contact_field_gets_its_default_and_keeps_its_value(conn, app_conn):
    conn.execute("alter table contacts add column origin text not null default 'manual'")
    uid = add_user(app_conn, "a", first_name="A")
    cid = contact_id(conn, uid)
    assert contact(conn, cid)["origin"] == "manual"
    conn.execute("alter table contacts alter column origin set default 'changed'")
    app_conn.execute("update users set first_name = 'B' where id = %s", [uid])
    assert (contact(conn, cid)["first_name"], contact(conn, cid)["origin"]) == ("B", "manual")
    assert mismatches(conn) == []


@pytest.mark.guard  # (its ALTER TABLE regenerates the code)
def test_an_unmapped_not_null_contact_field_without_default_fails_with_a_named_error(conn, app_conn, admin_url):
    conn.execute("alter table contacts add column region text not null default 'x'")
    conn.execute("alter table contacts alter column region drop default")
    with raises_sqlstate("23502") as info:
        add_user(app_conn, "a")
    assert 'contact field "region" is NOT NULL' in info.value.diag.message_primary
    assert "usersync mapping set USER_FIELD region" in info.value.diag.message_hint
    assert "insert into public.contacts" not in (info.value.diag.context or "")  # no page of generated SQL
    result = CliRunner().invoke(cli.app, ["mapping", "show", "--database-url", admin_url])
    assert "region" in result.stdout and "no default" in result.stderr


def test_a_mapped_field_of_a_type_without_equality_syncs_both_ways(conn, app_conn, admin_conn):
    # json has no = operator (and json[] one that fails when used): such fields compare by text.
    conn.execute("alter table users add column prefs json, add column tags json[]")
    conn.execute("alter table contacts add column prefs json, add column tags json[]")
    admin_conn.execute("insert into usersync.field_mapping values ('prefs', 'prefs'), ('tags', 'tags')")
    uid = add_user(app_conn, "j", prefs='{"a": 1}')
    cid = contact_id(conn, uid)
    app_conn.execute("""update users set prefs = '{"a": 2}', tags = array['1'::json] where id = %s""", [uid])
    assert (contact(conn, cid)["prefs"], contact(conn, cid)["tags"]) == ({"a": 2}, [1])
    admin_conn.execute("select usersync.set_sync_source(%s, 'contact')", [uid])
    app_conn.execute("update contacts set prefs = '[3]' where id = %s", [cid])
    assert one(conn, "select prefs from users where id = %s", [uid]) == [3]
    admin_conn.execute("call usersync.resync_all()")
    assert one(conn, "select count(*) from usersync.sync_errors") == 0


def test_setting_a_mapping_a_field_already_has_changes_nothing(conn, admin_conn, admin_url):
    add_user(conn, "a")
    version = one(conn, "select version from usersync.mapping_state")
    admin_conn.execute("update usersync.field_mapping set contact_field = 'email' where user_field = 'email'")
    admin_conn.execute("select usersync.reset_field_mapping()")  # it is the default already
    result = CliRunner().invoke(cli.app, ["mapping", "set", "email", "email", "--database-url", admin_url])
    assert result.exit_code == 0, result.output
    assert one(conn, "select version from usersync.mapping_state") == version
    assert one(conn, "select bool_and(up_to_date) from usersync.synchronized_contacts") is True
    admin_conn.execute("insert into usersync.field_mapping values ('academic_title', 'title')")
    assert one(conn, "select version from usersync.mapping_state") == version + 1
