"""SQLAlchemy 2 models of the example tables (pyapp/examples.sql): the demo's Users and Contacts
modules. They are application tables, not usersync's; an application keeps such models of its
own tables, and usersync synchronizes them once attached (pyapp.examples.create_and_attach).

    engine = pyapp.orm.create_engine(pyapp.config.resolve())   # the engine's errors, typed
    with Session(engine) as session:
        session.add(User(login="alice", first_name="Alice", sync_to_contact=True))
        session.commit()   # the contact now exists: the database did it

Custom fields that a DBA adds are not in these classes; they are still synchronized.
"""

from __future__ import annotations

import datetime as dt
from typing import ClassVar

import sqlalchemy as sa
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column


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
