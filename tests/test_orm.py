"""An admin script through SQLAlchemy: the ORM writes users, the database does the sync, and the
engine's errors arrive as the typed exceptions of pyapp.errors."""

from __future__ import annotations

import psycopg
import pytest
import sqlalchemy as sa
from helpers import add_user, contact_id
from sqlalchemy.orm import Session

from pyapp import errors, orm
from pyapp.config import Database


@pytest.fixture
def engine(admin_url: str):
    eng = orm.create_engine(Database(admin_url, "test"))
    yield eng
    eng.dispose()


def test_adding_a_user_through_the_orm_creates_its_contact(engine):
    with Session(engine) as session:
        session.add(orm.User(login="alice", first_name="Alice", email="a@example.org", sync_to_contact=True))
        session.commit()
        link = session.scalars(sa.select(orm.SynchronizedContact)).one()
        contact = session.get(orm.Contact, link.contact_id)
        assert contact is not None and (contact.first_name, contact.email) == ("Alice", "a@example.org")
        assert link.source == "user" and link.up_to_date


def test_editing_a_synchronized_contact_raises_contact_read_only(engine, conn):
    cid = contact_id(conn, add_user(conn, "bob", first_name="Bob"))
    with Session(engine) as session:
        session.get(orm.Contact, cid).first_name = "Robert"
        with pytest.raises(errors.ContactReadOnly) as info:
            session.commit()
    assert info.value.sqlstate == "US001" and info.value.hint and "user" in info.value.message
    assert isinstance(info.value.__cause__, psycopg.Error)  # the driver error, kept as the cause


def test_mapping_and_settings_through_the_orm(engine):
    with Session(engine) as session:
        session.add(orm.FieldMapping(user_field="academic_title", contact_field="title"))
        session.get(orm.Settings, True).delete_contact_with_user = True
        session.commit()
        session.add(orm.FieldMapping(user_field="nope", contact_field="notes"))
        with pytest.raises(errors.InvalidMapping) as info:
            session.commit()
        assert 'unknown user field "nope"' in info.value.message and info.value.detail


def test_reversed_user_and_bad_values_raise_their_types(engine, conn, admin_conn):
    uid = add_user(conn, "carol", first_name="Carol")
    admin_conn.execute("select usersync.set_sync_source(%s, 'contact')", [uid])
    with Session(engine) as session:
        session.get(orm.User, uid).first_name = "Caroline"
        with pytest.raises(errors.UserReadOnly):
            session.commit()
    conn.execute("alter table contacts add column tiny varchar(2)")
    admin_conn.execute("insert into usersync.field_mapping values ('academic_title', 'tiny')")
    with Session(engine) as session:
        session.add(orm.User(login="dan", academic_title="Professor", sync_to_contact=True))
        with pytest.raises(errors.ValueDoesNotFit) as info:
            session.commit()
    assert info.value.sqlstate == "22001" and '"academic_title"' in info.value.message


def test_psycopg_calls_are_translated_too(admin_conn):
    with pytest.raises(errors.InvalidArgument), errors.translated():
        admin_conn.execute("select usersync.sync_users(array[987654]::bigint[])")
    with pytest.raises(psycopg.errors.UndefinedTable), errors.translated():
        admin_conn.execute("select * from no_such_table")  # not an engine error: left as it is
