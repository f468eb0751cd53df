"""SQLAlchemy 2 models of the two modules and of the engine's configuration.

    engine = pyapp.orm.create_engine(pyapp.config.resolve())
    with Session(engine) as session:
        session.add(User(login="alice", first_name="Alice", sync_to_contact=True))
        session.commit()   # the contact now exists: the database did it

Engine errors raised by ORM calls arrive as the typed exceptions of pyapp.errors.
Custom fields that a DBA adds are not in these classes; they are still synchronized.
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


class User(Base):
    __tablename__ = "users"
    __table_args__: ClassVar[dict[str, str]] = {"schema": "public"}

    id: Mapped[int] = mapped_column(sa.BigInteger, sa.Identity(always=True), primary_key=True)
    login: Mapped[str] = mapped_column(sa.Text, unique=True)
    first_name: Mapped[str | None] = mapped_column(sa.Text)
    last_name: Mapped[str | None] = mapped_column(sa.Text)
    academic_title: Mapped[str | None] = mapped_column(sa.Text)
    email: Mapped[str | None] = mapped_column(sa.Text)
    phone: Mapped[str | None] = mapped_column(sa.Text)
    mobile: Mapped[str | None] = mapped_column(sa.Text)
    department: Mapped[str | None] = mapped_column(sa.Text)
    job_title: Mapped[str | None] = mapped_column(sa.Text)
    birth_date: Mapped[dt.date | None] = mapped_column(sa.Date)
    sync_to_contact: Mapped[bool] = mapped_column(sa.Boolean, server_default=sa.false(), default=False)


class Contact(Base):
    __tablename__ = "contacts"
    __table_args__: ClassVar[dict[str, str]] = {"schema": "public"}

    id: Mapped[int] = mapped_column(sa.BigInteger, sa.Identity(always=True), primary_key=True)
    title: Mapped[str | None] = mapped_column(sa.Text)
    first_name: Mapped[str | None] = mapped_column(sa.Text)
    last_name: Mapped[str | None] = mapped_column(sa.Text)
    email: Mapped[str | None] = mapped_column(sa.Text)
    phone: Mapped[str | None] = mapped_column(sa.Text)
    mobile: Mapped[str | None] = mapped_column(sa.Text)
    company: Mapped[str | None] = mapped_column(sa.Text)
    department: Mapped[str | None] = mapped_column(sa.Text)
    job_title: Mapped[str | None] = mapped_column(sa.Text)
    birthday: Mapped[dt.date | None] = mapped_column(sa.Date)
    notes: Mapped[str | None] = mapped_column(sa.Text)


class FieldMapping(Base):
    __tablename__ = "field_mapping"
    __table_args__: ClassVar[dict[str, str]] = {"schema": "usersync"}

    user_field: Mapped[str] = mapped_column(sa.Text, primary_key=True)
    contact_field: Mapped[str] = mapped_column(sa.Text, unique=True)


class Settings(Base):
    __tablename__ = "settings"
    __table_args__: ClassVar[dict[str, str]] = {"schema": "usersync"}

    singleton: Mapped[bool] = mapped_column(sa.Boolean, primary_key=True, default=True)
    delete_contact_with_user: Mapped[bool] = mapped_column(sa.Boolean)
    delete_user_with_contact: Mapped[bool] = mapped_column(sa.Boolean)


class SynchronizedContact(Base):
    """Read-only: the view usersync.synchronized_contacts."""

    __tablename__ = "synchronized_contacts"
    __table_args__: ClassVar[dict[str, str]] = {"schema": "usersync"}

    contact_id: Mapped[int] = mapped_column(sa.BigInteger, primary_key=True)
    user_id: Mapped[int] = mapped_column(sa.BigInteger)
    source: Mapped[str] = mapped_column(sa.Text)
    synced_at: Mapped[dt.datetime] = mapped_column(sa.DateTime(timezone=True))
    up_to_date: Mapped[bool] = mapped_column(sa.Boolean)


def _typed_errors(context: Any) -> errors.UsersyncError | None:
    return errors.translate(context.original_exception)


def install_error_translation(engine: sa.Engine) -> sa.Engine:
    """Make ORM and Core calls on ``engine`` raise pyapp.errors types for engine errors."""
    if not sa.event.contains(engine, "handle_error", _typed_errors):
        sa.event.listen(engine, "handle_error", _typed_errors)
    return engine


def create_engine(db: Database, **kwargs: Any) -> sa.Engine:
    return install_error_translation(sa.create_engine(db.sqlalchemy_url, **kwargs))
