"""The current SQL definition of usersync: the files of sql/, in name order.

Migrations freeze a copy of what they apply (see migrations/); this is the live definition
that the drift test compares them with, and what a DBA may apply directly with psql.
"""

from __future__ import annotations

from importlib import resources


def sql_files() -> list[tuple[str, str]]:
    """(name, text) of every file of sql/, in the order they must run."""
    root = resources.files("pyapp.sql")
    files = sorted((p for p in root.iterdir() if p.name.endswith(".sql")), key=lambda p: p.name)
    return [(p.name, p.read_text(encoding="utf-8")) for p in files]


def full_schema_sql() -> str:
    return "\n".join(f"-- >>> {name}\n{text}" for name, text in sql_files())
