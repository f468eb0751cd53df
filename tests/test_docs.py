"""The docs cannot drift: every code block of README.md and docs/*.md is run here, as written.

- ```sh: each `usersync …` line runs through the CLI (Typer's runner) with DATABASE_URL set to a
  test database, as a person at a terminal would run it (a question is answered yes), and must
  exit 0; `VAR=value usersync …` and `usersync … > FILE` work as in a shell, a DATABASE_URL a line
  sets must be one of DATABASE_URLS (the test's database stands for it). Any other line must be in
  NOT_RUN, with the reason or the test that covers it.
- ```sql: each statement runs as the superuser, with the block's PLACEHOLDERS filled in; one whose
  comment says `ERROR USnnn` must fail with that SQLSTATE, every other must succeed.
- ```python: the block is executed with DATABASE_URL set (as an administrator).

A block runs on the test's database (a clone of the template: usersync installed, the example
tables attached as the pair "contacts") unless SETUP, keyed by "path: the start of its first
line", says otherwise; CHECKS then asks the database whether the block did what it says. Besides:
every command and option of docs/admin.md's CLI table exists, every CLI command is in it, and the
result columns docs/sql-api.md gives for the SQL functions are the real ones.
"""

from __future__ import annotations

import re
import shlex
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psycopg
import pytest
import typer.main
from helpers import one
from typer.testing import CliRunner

from pyapp import cli
from pyapp.config import Database

ROOT = Path(__file__).resolve().parent.parent
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
RUN_LANGUAGES = ("sh", "sql", "python")

# Lines of sh blocks that no test here runs, each with the reason or the test that covers it.
NOT_RUN = {
    "make demo": "sets up a venv and runs `usersync demo` on the embedded server: the demo is "
                 "test_cli_db.py::test_demo_runs_to_the_end_on_a_given_database",
    "make test": "the test suite itself",
    "export DATABASE_URL=postgresql://postgres@127.0.0.1:5432/app": "the test sets DATABASE_URL to its own database",
    "alembic upgrade head": "test_cli_db.py::test_alembic_upgrade_head_works_from_the_repository_root",
}

DETACHED = "select usersync.detach('contacts');"  # the example tables, not attached yet
SQL_API_TABLES = """
create schema auth;
create table auth.users (id uuid primary key default gen_random_uuid(), email text);
create table public.profiles (id uuid primary key, email text);
create schema "HR";
create table "HR"."Employee" (id bigint generated always as identity primary key, name text,
                              "Sync?" boolean not null default false);
create schema crm;
create table crm."Contact Card" (id bigint generated always as identity primary key, name text);
"""
APP_SCHEMA = """
create schema app;
create table app.users (id bigint generated always as identity primary key, login text not null,
                        email text, sync_to_contact boolean not null default false);
create table app.contacts (id bigint generated always as identity primary key, email text);
"""


DOCS_ROLE = "usersync_docs_installer"  # a role the test makes, for docs/install.md's "installer"


@dataclass(frozen=True)
class Setup:
    sql: str = ""        # run as the superuser before the block
    fresh: bool = False  # on an empty database (no usersync, no example tables) instead of the clone
    teardown: str = ""   # run as the superuser after it (cluster-wide objects)


# Keys: "path: the start of the block's first line".
SETUP = {
    "README.md: select usersync.attach('users', 'contacts'": Setup(DETACHED),
    "README.md: usersync attach users contacts --switch sync_to_contact --dry-run": Setup(DETACHED),
    "README.md: export DATABASE_URL=": Setup(APP_SCHEMA, fresh=True),  # installing, then the app's own tables
    "docs/sql-api.md: select usersync.attach('public.users', 'public.contacts'": Setup(DETACHED + SQL_API_TABLES),
    "docs/install.md: usersync db upgrade ": Setup(DETACHED),  # installed already: the upgrade is a no-op
    "docs/install.md: GRANT usersync_engine, usersync_admin TO installer": Setup(
        f"drop role if exists {DOCS_ROLE}; create role {DOCS_ROLE};", teardown=f"drop role {DOCS_ROLE};"),
    "docs/install.md: DATABASE_URL=postgresql://owner@host/db usersync db upgrade": Setup(DETACHED),
}

# Placeholders, by block: what the test puts in their place.
PLACEHOLDERS = {
    "docs/install.md: GRANT usersync_engine, usersync_admin TO installer": {"installer": DOCS_ROLE},
}
# A DATABASE_URL a command line sets: the test's database stands for it (the install by a database
# owner, which docs/install.md's managed-services block shows, is the harness's
# USERSYNC_TEST_INSTALLER=owner run: tests/harness.py::_install_as_database_owner).
DATABASE_URLS = ("postgresql://owner@host/db",)

# After a block: a query and the value it must give (the block did what it says).
CHECKS = {
    # alice's contact exists, and the write to it was refused (ContactReadOnly).
    "docs/admin.md: from pyapp import admin": (
        "select c.first_name from contacts c join usersync.synchronized_contacts s on s.contact_id = c.id::text"
        " join users u on u.id::text = s.user_id where u.login = 'alice'", "Alice"),
    "README.md: select usersync.attach('users', 'contacts'": (
        "select source from usersync.synchronized_contacts", "contact"),
    "README.md: usersync attach users contacts --switch sync_to_contact --dry-run": (
        "select count(*) from usersync.pairs", 0),  # its last line detaches the pair
    "README.md: export DATABASE_URL=": (
        "select to_regnamespace('usersync') is null and to_regclass('app.users') is not null", True),
    "docs/install.md: GRANT usersync_engine, usersync_admin TO installer": (
        f"select count(*) from pg_auth_members m join pg_roles r on r.oid = m.member"
        f" where r.rolname = '{DOCS_ROLE}' and m.admin_option", 2),
    "docs/install.md: DATABASE_URL=postgresql://owner@host/db usersync db upgrade": (
        "select count(*) from usersync.pairs", 1),
}


@dataclass(frozen=True)
class Block:
    path: Path
    line: int
    language: str
    text: str

    @property
    def name(self) -> str:
        return f"{self.path.relative_to(ROOT)}:{self.line}"

    @property
    def first_line(self) -> str:
        return next((line.strip() for line in self.text.splitlines() if line.strip()), "")

    def keyed(self, table: dict[str, Any]) -> Any:
        where = f"{self.path.relative_to(ROOT)}: {self.first_line}"
        return next((value for key, value in table.items() if where.startswith(key)), None)


def code_blocks() -> list[Block]:
    blocks = []
    for path in DOCS:
        lines = path.read_text(encoding="utf-8").splitlines()
        i = 0
        while i < len(lines):
            fence = re.match(r"^\s*```(\S*)\s*$", lines[i])
            if fence:
                end = next(j for j in range(i + 1, len(lines)) if lines[j].strip().startswith("```"))
                blocks.append(Block(path, i + 1, fence.group(1), "\n".join(lines[i + 1:end]) + "\n"))
                i = end
            i += 1
    return blocks


BLOCKS = code_blocks()


def test_every_code_block_is_in_a_language_this_test_runs():
    assert BLOCKS, "no code block found"
    assert [b.name for b in BLOCKS if b.language not in RUN_LANGUAGES] == []


def test_setup_and_checks_still_match_blocks():
    firsts = [f"{b.path.relative_to(ROOT)}: {b.first_line}" for b in BLOCKS]
    for key in (*SETUP, *CHECKS, *PLACEHOLDERS):
        assert any(f.startswith(key) for f in firsts), f"no block starts with {key!r} any more"
    commands = {" ".join(shlex.split(line, comments=True)) for b in BLOCKS if b.language == "sh"
                for line in shell_lines(b.text)}
    assert sorted(set(NOT_RUN) - commands) == [], "no longer in the docs"


# --- running a block -----------------------------------------------------------------------------------------

@pytest.fixture
def block_database(database: Database, new_database: Callable[[], Database], request) -> Iterator[Database]:
    setup: Setup = request.node.callspec.params["block"].keyed(SETUP) or Setup()
    db = new_database() if setup.fresh else database
    if setup.sql:
        with psycopg.connect(db.conninfo, autocommit=True) as conn:
            for statement in statements(setup.sql):
                conn.execute(statement.sql)
    try:
        yield db
    finally:
        if setup.teardown:
            with psycopg.connect(db.conninfo, autocommit=True) as conn:
                for statement in statements(setup.teardown):
                    conn.execute(statement.sql)


@dataclass(frozen=True)
class Statement:
    sql: str
    comment: str  # the comment on the line where the statement ends


def statements(text: str) -> list[Statement]:
    """The statements of an SQL text, each with the comment that follows it on its last line."""
    out, current, i, quote = [], [], 0, None
    while i < len(text):
        ch = text[i]
        if quote:
            current.append(ch)
            if ch == quote:
                quote = None
        elif ch in "'\"":
            quote = ch
            current.append(ch)
        elif text.startswith("--", i):  # a comment (one after a ';' on its line is taken below)
            end = text.find("\n", i)
            i = len(text) if end < 0 else end
            continue
        elif ch == ";":
            if "".join(current).strip():
                out.append(Statement("".join(current).strip(), ""))
            current = []
            i += 1
            # the rest of this line: a comment belongs to this statement
            end = text.find("\n", i)
            rest = text[i:len(text) if end < 0 else end]
            if rest.strip().startswith("--"):
                out[-1] = Statement(out[-1].sql, rest.strip()[2:].strip())
                i = len(text) if end < 0 else end
            continue
        else:
            current.append(ch)
        i += 1
    assert not "".join(current).strip(), f"a statement without its ';': {''.join(current).strip()!r}"
    return out


def test_the_statement_splitter_keeps_strings_and_trailing_comments():
    got = statements("select ';' as x;  -- ERROR US001: a\n-- a whole line\nselect 2; select 3;\n")
    assert got == [Statement("select ';' as x", "ERROR US001: a"), Statement("select 2", ""),
                   Statement("select 3", "")]


def shell_lines(text: str) -> list[str]:
    return [line.strip() for line in text.replace("\\\n", " ").splitlines()
            if line.strip() and not line.strip().startswith("#")]


def run_sh(block: Block, db: Database, monkeypatch: pytest.MonkeyPatch, workdir: Path) -> None:
    monkeypatch.setattr(cli, "interactive", lambda: True)  # as at a terminal: a question is answered yes
    runner = CliRunner()
    for line in shell_lines(block.text):
        words = shlex.split(line, comments=True)
        if " ".join(words) in NOT_RUN:
            continue
        env = {"DATABASE_URL": db.conninfo}
        while words and re.match(r"^[A-Za-z_]\w*=", words[0]):  # VAR=value usersync …
            name, _, value = words.pop(0).partition("=")
            assert name != "DATABASE_URL" or value in DATABASE_URLS, f"{block.name}: add {value!r} to DATABASE_URLS"
            env[name] = db.conninfo if name == "DATABASE_URL" else value
        redirect = None
        if len(words) > 2 and words[-2] == ">":  # usersync … > FILE
            redirect, words = workdir / words[-1], words[:-2]
        assert words[0] == "usersync", f"{block.name}: {line!r} is run by no test: run it here or add it to NOT_RUN"
        result = runner.invoke(cli.app, words[1:], env=env, input="y\n" * 3)
        assert result.exit_code == 0, f"{block.name}: {line!r} exited {result.exit_code}: {result.output}"
        assert "Traceback" not in result.output
        if redirect:
            redirect.write_text(result.stdout)
            assert result.stdout, f"{block.name}: {line!r} wrote nothing"


def run_sql(block: Block, db: Database) -> None:
    text = block.text
    for placeholder, value in (block.keyed(PLACEHOLDERS) or {}).items():
        text = re.sub(rf"\b{re.escape(placeholder)}\b", value, text)
    with psycopg.connect(db.conninfo, autocommit=True) as conn:
        for statement in statements(text):
            expected = re.search(r"\bERROR (\w{5})\b", statement.comment)
            if expected:
                with pytest.raises(psycopg.Error) as info:
                    conn.execute(statement.sql)
                assert info.value.sqlstate == expected.group(1), f"{block.name}: {statement.sql}"
            else:
                try:
                    conn.execute(statement.sql)
                except psycopg.Error as exc:
                    pytest.fail(f"{block.name}: {statement.sql!r} failed: {exc.sqlstate} {exc}")


def run_python(block: Block, admin_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DATABASE_URL", admin_url)
    exec(compile(block.text, block.name, "exec"), {"__name__": "__docs__"})


@pytest.mark.guard  # `usersync doctor` in the docs finds nothing wrong: an install with the DDL guard
@pytest.mark.parametrize("block", [b for b in BLOCKS if b.language in RUN_LANGUAGES], ids=lambda b: b.name)
def test_code_block_runs_as_written(block: Block, block_database: Database, database: Database, admin_url: str,
                                    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, capsys):
    monkeypatch.setenv("USERSYNC_DATA_DIR", str(tmp_path / "pgdata"))  # `usersync server …` touches no real one
    if block.language == "sh":
        run_sh(block, block_database, monkeypatch, tmp_path)
    elif block.language == "sql":
        run_sql(block, block_database)
    else:
        assert block_database == database, "python blocks run on the test's database, as an administrator"
        run_python(block, admin_url, monkeypatch)
    check = block.keyed(CHECKS)
    if check:
        with psycopg.connect(block_database.conninfo) as conn:
            assert one(conn, check[0]) == check[1], f"{block.name}: {check[0]}"


# --- what the docs say about the CLI and the SQL API ---------------------------------------------------------

def _admin_cli_table() -> list[str]:
    """The command cells of the CLI table in docs/admin.md, one `usersync …` synopsis each."""
    text = (ROOT / "docs" / "admin.md").read_text(encoding="utf-8")
    section = text[text.index("## CLI"):text.index("## Python API")]
    synopses = []
    for row in re.findall(r"^\| (`usersync .*?) \| ", section, re.M):
        parent: list[str] = []
        in_row: list[str] = []
        for part in re.findall(r"`([^`]+)`", row):
            words = part.split()
            if words[0].startswith(("[", "-")):  # `(each with `[--pair NAME]`)`: options of the row's commands
                in_row = [f"{synopsis} {part}" for synopsis in in_row]
                continue
            if words[0] == "usersync":
                words = words[1:]
            elif words[0] not in _commands(CLI):  # `clear [--yes]` after `usersync mapping remove …`
                words = parent + words
            in_row.append(" ".join(["usersync", *words]))
            parent = words[:1]
        synopses += in_row
    return synopses


CLI = typer.main.get_command(cli.app)


def _commands(group: Any) -> dict[str, Any]:
    """A group's subcommands (Typer vendors Click: duck typing, no import of its private module)."""
    return getattr(group, "commands", None) or {}


def _resolve(words: list[str]) -> tuple[list[str], Any, list[str]]:
    """The command a synopsis names: its path, itself, and the words left (arguments and options)."""
    path: list[str] = []
    command: Any = CLI
    while words and words[0] in _commands(command):
        path.append(words[0])
        command, words = _commands(command)[words[0]], words[1:]
    return path, command, words


def test_every_command_and_option_of_the_cli_table_exists():
    synopses = _admin_cli_table()
    assert len(synopses) > 20
    root_options = {o for p in CLI.params for o in p.opts}
    for synopsis in synopses:
        _, command, rest = _resolve(synopsis.split()[1:])
        assert not _commands(command), f"{synopsis!r} names no command"
        options = {o for p in command.params for o in p.opts} | root_options | {"-h", "--help"}
        for option in re.findall(r"(?<![\w-])--?[a-z][a-z-]*", " ".join(rest)):
            assert option in options, f"{synopsis!r}: {command.name} has no option {option}"


def test_every_cli_command_is_in_the_table():
    documented = {" ".join(_resolve(s.split()[1:])[0]) for s in _admin_cli_table()}

    def walk(group: Any, prefix: list[str]) -> Iterator[str]:
        for name, command in _commands(group).items():
            yield from walk(command, [*prefix, name]) if _commands(command) else [" ".join([*prefix, name])]

    assert sorted(set(walk(CLI, [])) - documented) == []


def _function_result(conn: psycopg.Connection, name: str) -> str:
    return one(conn, "select pg_get_function_result(p.oid) from pg_proc p"
                     " where p.pronamespace = 'usersync'::regnamespace and p.proname = %s"
                     " order by p.pronargs desc limit 1", [name])


def test_documented_results_of_sql_functions_are_the_real_ones(conn: psycopg.Connection):
    text = (ROOT / "docs" / "sql-api.md").read_text(encoding="utf-8")
    documented = re.findall(r"`usersync\.(\w+)\([^`]*\)` → `([^`]+)`", text)
    assert {"resync_step", "doctor", "repair", "preview_resync"} <= {name for name, _ in documented}
    for name, result in documented:
        real = _function_result(conn, name)
        if result.startswith("("):
            columns = [c.split()[0] for c in result.strip("()").split(",")]
            real_columns = [c.strip().split()[0] for c in real.removeprefix("TABLE(").removesuffix(")").split(",")]
            assert columns == real_columns, f"usersync.{name}: documented {result}, is {real}"
        else:
            assert result.lower() == real.lower(), f"usersync.{name}: documented {result}, is {real}"
