"""An admin script through SQLAlchemy: the ORM writes users, the database does the sync, and the
engine's errors arrive as the typed exceptions of pyapp.errors."""

from __future__ import annotations

import psycopg
import pytest
import sqlalchemy as sa
from helpers import add_user, contact_id, one
from sqlalchemy.orm import Session

from pyapp import admin, errors, orm
from pyapp.config import Database
from pyapp.demo_models import Contact, User


@pytest.fixture
def engine(admin_url: str):
    eng = orm.create_engine(Database(admin_url, "test"))
    yield eng
    eng.dispose()


def test_adding_a_user_through_the_orm_creates_its_contact(engine):
    with Session(engine) as session:
        user = User(login="alice", first_name="Alice", email="a@example.org", sync_to_contact=True)
        session.add(user)
        session.commit()
        link = session.scalars(sa.select(orm.SynchronizedContact)).one()
        assert (link.pair, link.user_id) == ("contacts", str(user.id))  # keys as text: any key type
        contact = session.get(Contact, int(link.contact_id))
        assert contact is not None and (contact.first_name, contact.email) == ("Alice", "a@example.org")
        assert link.source == "user" and link.up_to_date


def test_editing_a_synchronized_contact_raises_contact_read_only(engine, conn):
    cid = contact_id(conn, add_user(conn, "bob", first_name="Bob"))
    with Session(engine) as session:
        session.get(Contact, cid).first_name = "Robert"
        with pytest.raises(errors.ContactReadOnly) as info:
            session.commit()
    assert info.value.sqlstate == "US001" and info.value.hint and "user" in info.value.message
    assert isinstance(info.value.__cause__, psycopg.Error)  # the driver error, kept as the cause


def test_mapping_and_settings_through_the_orm(engine):
    with Session(engine) as session:
        added = orm.FieldMapping(user_field="academic_title", contact_field="title")  # pair: the only one
        session.add(added)
        session.get(orm.Settings, "contacts").delete_contact_with_user = True
        session.commit()
        assert added.pair == "contacts"
        pair = session.get(orm.Pair, "contacts")
        assert pair is not None and (pair.users, pair.contacts, pair.switch_column) == ("users", "contacts",
                                                                                        "sync_to_contact")
        assert pair.delete_contact_with_user
        session.add(orm.FieldMapping(pair="contacts", user_field="nope", contact_field="notes"))
        with pytest.raises(errors.InvalidMapping) as info:
            session.commit()
        assert 'unknown user field "nope"' in info.value.message and info.value.detail


def test_reversed_user_and_bad_values_raise_their_types(engine, conn, admin_conn):
    uid = add_user(conn, "carol", first_name="Carol")
    admin_conn.execute("select usersync.set_sync_source(%s, 'contact')", [uid])
    with Session(engine) as session:
        session.get(User, uid).first_name = "Caroline"
        with pytest.raises(errors.UserReadOnly):
            session.commit()
    conn.execute("alter table contacts add column tiny varchar(2)")
    admin_conn.execute("insert into usersync.field_mapping values ('academic_title', 'tiny')")
    with Session(engine) as session:
        session.add(User(login="dan", academic_title="Professor", sync_to_contact=True))
        with pytest.raises(errors.ValueDoesNotFit) as info:
            session.commit()
    assert info.value.sqlstate == "22001" and '"academic_title"' in info.value.message


def test_psycopg_calls_are_translated_too(admin_conn):
    with pytest.raises(errors.InvalidArgument), errors.translated():
        admin_conn.execute("select usersync.sync_users(array[987654]::bigint[])")
    with pytest.raises(psycopg.errors.UndefinedTable), errors.translated():
        admin_conn.execute("select * from no_such_table")  # not an engine error: left as it is


def test_the_admin_modules_docstring_example_runs(admin_url, conn, monkeypatch, capsys):
    add_user(conn, "erin")
    monkeypatch.setenv("DATABASE_URL", admin_url)
    example = "\n".join(line[4:] for line in admin.__doc__.splitlines() if line.startswith("    "))
    exec(example, {})
    assert "['contacts']" in capsys.readouterr().out
    assert one(conn, "select contact_field from usersync.field_mapping where user_field = 'academic_title'") == "title"
    assert one(conn, "select finished_at is not null from usersync.resync_state")


def test_the_catalog_models_name_no_application_table():
    assert {t.schema for t in orm.Base.metadata.tables.values()} == {"usersync"}
