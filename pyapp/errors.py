"""Typed exceptions for the engine's SQLSTATEs, from psycopg and from SQLAlchemy alike.

The database raises; these classes only give the errors names a script can catch. Each carries
the server's message, DETAIL and HINT, and keeps the original driver error as ``__cause__``.

    try:
        session.commit()
    except ContactReadOnly as e:
        print(e.message, e.hint)
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import psycopg


class UsersyncError(Exception):
    """An error raised by the usersync engine (or a data error it explained)."""

    sqlstate: str = ""

    def __init__(self, message: str, *, sqlstate: str = "", detail: str | None = None, hint: str | None = None):
        super().__init__(message)
        self.message = message
        self.sqlstate = sqlstate or type(self).sqlstate
        self.detail = detail
        self.hint = hint

    def __str__(self) -> str:
        parts = [self.message]
        if self.detail:
            parts.append(f"DETAIL: {self.detail}")
        if self.hint:
            parts.append(f"HINT: {self.hint}")
        return "\n".join(parts)


class ContactReadOnly(UsersyncError):
    """US001: the contact's user is the data source; edit the user instead."""

    sqlstate = "US001"


class UserReadOnly(UsersyncError):
    """US002: the pair is reversed; the user's mapped fields follow the contact."""

    sqlstate = "US002"


class InvalidMapping(UsersyncError):
    """US003: a field mapping row that cannot be (unknown field, system column, mapped twice, types)."""

    sqlstate = "US003"


class UnsupportedOperation(UsersyncError):
    """US004: an operation the delete rules cannot apply to (TRUNCATE of reversed contacts)."""

    sqlstate = "US004"


class SchemaDependency(UsersyncError):
    """US005: DDL that would break or bypass the engine."""

    sqlstate = "US005"


class InvalidArgument(UsersyncError):
    """US006: a bad argument to an engine function (unknown user, bad source, batch size)."""

    sqlstate = "US006"


class WriteSwallowed(UsersyncError):
    """US007: a write of the engine touched fewer rows than it asked for (a row-level security
    policy, a BEFORE trigger returning NULL, a row deleted behind the triggers' back)."""

    sqlstate = "US007"


class KeyChangeRefused(UsersyncError):
    """US008: the key of a linked user or contact cannot change."""

    sqlstate = "US008"


class ResyncInProgress(UsersyncError):
    """US009: a resync run is in progress in another live session."""

    sqlstate = "US009"


class AttachRefused(UsersyncError):
    """US010: tables that usersync.attach() cannot attach (no usable key, a view, a switch that is
    not boolean NOT NULL, a table already in a pair, ...); the message names the table and column."""

    sqlstate = "US010"


class UnknownPair(UsersyncError):
    """US011: no pair is attached, or the database has several and none was named, or no pair has
    the given name."""

    sqlstate = "US011"

    @property
    def no_pair_attached(self) -> bool:
        return self.message == "no pair attached"


class RepairNotPermitted(UsersyncError):
    """usersync.repair() runs as its caller, who must be the role that installed usersync (it
    creates triggers on the pairs' tables): another role is refused with 42501."""

    sqlstate = "42501"


class ValueDoesNotFit(UsersyncError):
    """A value its target column cannot hold (class 22/23), with user, contact and field named."""


BY_SQLSTATE: dict[str, type[UsersyncError]] = {
    cls.sqlstate: cls
    for cls in (ContactReadOnly, UserReadOnly, InvalidMapping, UnsupportedOperation, SchemaDependency, InvalidArgument,
                WriteSwallowed, KeyChangeRefused, ResyncInProgress, AttachRefused, UnknownPair)
}


def translate(exc: BaseException) -> UsersyncError | None:
    """The typed error for a psycopg error (or a SQLAlchemy error wrapping one), else None."""
    orig: Any = getattr(exc, "orig", exc)  # sqlalchemy.exc.DBAPIError keeps the driver's error in .orig
    if not isinstance(orig, psycopg.Error) or orig.sqlstate is None:
        return None
    diag = orig.diag
    message = diag.message_primary or str(orig)
    kwargs = {"sqlstate": orig.sqlstate, "detail": diag.message_detail, "hint": diag.message_hint}
    cls = BY_SQLSTATE.get(orig.sqlstate)
    if cls is not None:
        return cls(message, **kwargs)
    if orig.sqlstate[:2] in ("22", "23") and message.startswith("cannot synchronize "):
        return ValueDoesNotFit(message, **kwargs)
    return None


@contextmanager
def translated() -> Iterator[None]:
    """Re-raise engine errors from psycopg calls as their typed exceptions."""
    try:
        yield
    except psycopg.Error as exc:
        typed = translate(exc)
        if typed is None:
            raise
        raise typed from exc
