"""SQLAlchemy 2 models of usersync's own catalog: the pairs, their mapping and settings, and the
synchronized contacts. The application's tables are the application's models (the demo's are in
pyapp.demo_models); writing them through any engine made here raises the engine's errors as the
typed exceptions of pyapp.errors.

    engine = pyapp.orm.create_engine(pyapp.config.resolve())
    with Session(engine) as session:
        session.add(FieldMapping(pair="contacts", user_field="academic_title", contact_field="title"))
        session.get(Settings, "contacts").delete_contact_with_user = True
        session.commit()

Keys of the application's rows are text here (``user_id``, ``contact_id``): pairs may have keys
of any type.
"""

from __future__ import annotations

import datetime as dt
from typing import Any, ClassVar

import sqlalchemy as sa
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from pyapp import errors
from pyapp.config import Database


class Base(DeclarativeBase):
    pass


class Pair(Base):
    """Read-only: the view usersync.pairs (attach and detach with pyapp.admin or the SQL functions)."""

    __tablename__ = "pairs"
    __table_args__: ClassVar[dict[str, str]] = {"schema": "usersync"}

    pair: Mapped[str] = mapped_column(sa.Text, primary_key=True)
    users: Mapped[str] = mapped_column(sa.Text)  # regclass, as its name
    contacts: Mapped[str] = mapped_column(sa.Text)
    user_key: Mapped[str] = mapped_column(sa.Text)
    contact_key: Mapped[str] = mapped_column(sa.Text)
    switch_column: Mapped[str | None] = mapped_column(sa.Text)
    shared_key: Mapped[bool] = mapped_column(sa.Boolean)
    delete_contact_with_user: Mapped[bool] = mapped_column(sa.Boolean)
    delete_user_with_contact: Mapped[bool] = mapped_column(sa.Boolean)
    mapping_version: Mapped[int] = mapped_column(sa.BigInteger)
    all_up_to_date: Mapped[bool] = mapped_column(sa.Boolean)
    attached_at: Mapped[dt.datetime] = mapped_column(sa.DateTime(timezone=True))
    id: Mapped[int] = mapped_column(sa.Integer)


class FieldMapping(Base):
    """A row of usersync.field_mapping; ``pair`` may be left out while the database has one pair."""

    __tablename__ = "field_mapping"
    __table_args__: ClassVar[tuple[Any, ...]] = (
        sa.UniqueConstraint("pair", "contact_field"), {"schema": "usersync"})

    pair: Mapped[str] = mapped_column(sa.Text, primary_key=True, server_default=sa.text("usersync._only_pair()"))
    user_field: Mapped[str] = mapped_column(sa.Text, primary_key=True)
    contact_field: Mapped[str] = mapped_column(sa.Text)


class Settings(Base):
    """The delete toggles of a pair (usersync.settings; its rows come and go with the pairs)."""

    __tablename__ = "settings"
    __table_args__: ClassVar[dict[str, str]] = {"schema": "usersync"}

    pair: Mapped[str] = mapped_column(sa.Text, primary_key=True)
    delete_contact_with_user: Mapped[bool] = mapped_column(sa.Boolean)
    delete_user_with_contact: Mapped[bool] = mapped_column(sa.Boolean)


class SynchronizedContact(Base):
    """Read-only: the view usersync.synchronized_contacts (keys as text)."""

    __tablename__ = "synchronized_contacts"
    __table_args__: ClassVar[dict[str, str]] = {"schema": "usersync"}

    pair: Mapped[str] = mapped_column(sa.Text, primary_key=True)
    contact_id: Mapped[str] = mapped_column(sa.Text, primary_key=True)
    user_id: Mapped[str] = mapped_column(sa.Text)
    source: Mapped[str] = mapped_column(sa.Text)
    synced_at: Mapped[dt.datetime] = mapped_column(sa.DateTime(timezone=True))
    up_to_date: Mapped[bool] = mapped_column(sa.Boolean)


class SyncError(Base):
    """Read-only in practice: usersync.sync_errors, the pairs of rows the last resync could not write."""

    __tablename__ = "sync_errors"
    __table_args__: ClassVar[dict[str, str]] = {"schema": "usersync"}

    pair: Mapped[str] = mapped_column(sa.Text, primary_key=True)
    user_id: Mapped[str] = mapped_column(sa.Text, primary_key=True)
    contact_id: Mapped[str | None] = mapped_column(sa.Text)
    field: Mapped[str | None] = mapped_column(sa.Text)
    sqlstate: Mapped[str] = mapped_column(sa.Text)
    message: Mapped[str] = mapped_column(sa.Text)
    occurred_at: Mapped[dt.datetime] = mapped_column(sa.DateTime(timezone=True))


def _typed_errors(context: Any) -> errors.UsersyncError | None:
    return errors.translate(context.original_exception)


def install_error_translation(engine: sa.Engine) -> sa.Engine:
    """Make ORM and Core calls on ``engine`` raise pyapp.errors types for engine errors."""
    if not sa.event.contains(engine, "handle_error", _typed_errors):
        sa.event.listen(engine, "handle_error", _typed_errors)
    return engine


def create_engine(db: Database, **kwargs: Any) -> sa.Engine:
    return install_error_translation(sa.create_engine(db.sqlalchemy_url, **kwargs))
