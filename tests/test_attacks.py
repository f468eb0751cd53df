"""Attacks by the unprivileged roles on the engine's SECURITY DEFINER code.

A. Look-alikes in pg_temp. Every role may create objects in its own pg_temp, and PostgreSQL searches
   pg_temp for types and relations first unless the search path lists it explicitly (an empty one
   does not). A role that shadows every type and relation name the engine's code uses (taken from
   sql/) with objects that call its canary, pg_temp.pwned(), must never have the canary run by the
   engine, whatever it asks of the engine as the application, the administrator or the owner of
   the module tables; the operation succeeds and the synchronization is right.

B. Identifiers are data. Column names made to break the code generator (dollar quotes, template
   placeholders, quotes, comment and marker text, the generated code's own variable names) on
   both modules, mapped or not, must not change the generated code, even when the session that
   sets off the generation has check_function_bodies = off: values arrive verbatim and the
   superuser's canary public.pwned(), which the payloads call, never runs.

Both canaries count their calls in a sequence (nextval is not rolled back), so a call that some
exception handler swallowed is caught as well.
"""

from __future__ import annotations

import re
from pathlib import Path

import psycopg
import pytest
from helpers import add_user, contact, contact_id, mismatches, one, raises_sqlstate
from psycopg import sql

SQL_TEXT = "\n".join(p.read_text(encoding="utf-8")
                     for p in sorted((Path(__file__).resolve().parent.parent / "sql").glob("*.sql"))).lower()
SQL_WORDS = sorted(set(re.findall(r"[a-z_][a-z0-9_]*", SQL_TEXT)))

# Type names the grammar turns into a pg_catalog name of another spelling (bigint is int8). The
# keyword spelling cannot be shadowed, the catalog one can: both get a look-alike.
KEYWORD_TYPES = {"bigint": "int8", "integer": "int4", "int": "int4", "smallint": "int2", "boolean": "bool",
                 "real": "float4", "decimal": "numeric", "character": "bpchar", "varchar": "varchar",
                 "timestamp": "timestamp", "interval": "interval", "time": "time"}
# Covered whether or not sql/ spells them today.
ALWAYS_TYPES = ["text", "int8", "int4", "bool", "jsonb", "regclass", "name", "timestamptz", "date", "record",
                "numeric", "oid", "trigger", "void"]
# Relations the engine names without a schema: transition tables and CTEs.
LOCAL_RELATIONS = sorted(set(re.findall(r"\btable as (\w+)", SQL_TEXT))
                         | set(re.findall(r"(?:\bwith|,)\s+(\w+)\s+as\s+(?:materialized\s+)?\(", SQL_TEXT)))

# What the look-alikes must include for the attack to mean anything (checked on every planting).
MUST_SHADOW = {"text", "int8", "bool", "jsonb", "regclass", "name", "timestamptz", "date", "record", "oid",
               "links", "users", "contacts", "field_mapping", "metadata_fields", "pg_attribute", "new_rows"}


def lookalike_targets(conn):
    """(domains: name -> base type, row types: pseudo-type names, relations) to shadow."""
    words = sorted({*SQL_WORDS, *ALWAYS_TYPES, *KEYWORD_TYPES.values()})
    types = dict(conn.execute(
        "select t.typname, t.typtype from pg_catalog.pg_type t"
        " where t.typnamespace = 'pg_catalog'::regnamespace and t.typname = any(%s) and t.typtype in ('b', 'p')",
        [words]).fetchall())
    domains = {name: name for name, kind in types.items() if kind == "b"}
    domains.update({kw: base for kw, base in KEYWORD_TYPES.items() if kw in SQL_WORDS and base in domains})
    pseudo = sorted(name for name, kind in types.items() if kind == "p")
    relations = [r[0] for r in conn.execute(
        "select c.relname from pg_catalog.pg_class c"
        " where c.relkind in ('r', 'v', 'm', 'p', 'f', 'S')"
        "   and (c.relnamespace in ('usersync'::regnamespace, 'public'::regnamespace)"
        "        or (c.relnamespace = 'pg_catalog'::regnamespace and c.relname = any(%s)))"
        " order by 1", [SQL_WORDS])]
    return domains, pseudo, sorted({*relations, *LOCAL_RELATIONS})


def plant_lookalikes(attacker, conn, *, canary=True):
    """As the attacker: in its pg_temp, a look-alike of every type and relation the engine names.

    With the canary, each one calls pg_temp.pwned(what) when used: a domain's CHECK, the fields of a
    row type named like a pseudo-type (record, trigger, ...), a view's only column. Without it, the
    domains are silent (for code generation: does the generated code come to depend on them?).
    """
    domains, pseudo, relations = lookalike_targets(conn)
    shadowed = set()
    if canary:
        attacker.execute("create sequence pg_temp.pwned_calls")
        attacker.execute("grant usage on sequence pg_temp.pwned_calls to public")  # the canary runs as anyone
        attacker.execute("""
            create function pg_temp.pwned(what pg_catalog.text) returns pg_catalog.bool language plpgsql as $$
            begin
                perform pg_catalog.nextval('pg_temp.pwned_calls');
                raise exception 'PWNED: % ran code from the pg_temp of the attacker, through %', current_user, what;
            end $$""")
        attacker.execute("create domain pg_temp.pwned_value as pg_catalog.text"
                         " check (pg_temp.pwned('a field of a look-alike row type'))")
    for name, base in domains.items():
        stmt = sql.SQL("create domain pg_temp.{} as pg_catalog.{}").format(sql.Identifier(name), sql.Identifier(base))
        if canary:
            stmt += sql.SQL(" check (pg_temp.pwned({}))").format(sql.Literal(f"type {name}"))
        shadowed |= _try(attacker, stmt, name)
    if canary:
        for name in pseudo:
            shadowed |= _try(attacker, sql.SQL(
                "create type pg_temp.{} as (user_id pg_temp.pwned_value, contact_id pg_temp.pwned_value,"
                " field pg_temp.pwned_value)").format(sql.Identifier(name)), name)
        for name in relations:
            shadowed |= _try(attacker, sql.SQL("create temp view {} as select pg_temp.pwned({}) as pwned").format(
                sql.Identifier(name), sql.Literal(f"relation {name}")), name)
    missing = (MUST_SHADOW if canary else {n for n in MUST_SHADOW if n in domains}) - shadowed
    assert not missing, f"could not plant look-alikes of {sorted(missing)}"
    if canary:
        # The look-alikes are live in this session: the attacker's own unqualified names hit them.
        for probe in ("select 'x'::text", "select 1::int8", "select * from links", "select null::regclass"):
            with pytest.raises(psycopg.Error, match="PWNED"):
                attacker.execute(probe)
        attacker.execute("select pg_catalog.setval('pg_temp.pwned_calls', 1, false)")


def _try(conn, stmt, name):
    try:
        conn.execute(stmt)
    except psycopg.Error:  # a name PostgreSQL refuses (a domain over a pseudo-type, a taken name)
        return set()
    return {name}


def assert_canary_never_ran(conn, sequence):
    assert one(conn, sql.SQL("select is_called from {}").format(sql.SQL(sequence))) is False, \
        f"the canary ran (counted by {sequence}) and something swallowed its error"


ENGINE_FUNCTIONS = ("select array_agg(p.oid::regprocedure::text order by 1) from pg_proc p"
                    " where p.pronamespace = 'usersync'::regnamespace")
TEMP_DEPENDENCIES = """
    select array_agg(pg_describe_object(d.classid, d.objid, d.objsubid) || ' -> '
                     || pg_describe_object(d.refclassid, d.refobjid, d.refobjsubid))
      from pg_depend d, pg_identify_object(d.refclassid, d.refobjid, d.refobjsubid) r
     where d.classid = 'pg_proc'::regclass
       and d.objid in (select p.oid from pg_proc p where p.pronamespace = 'usersync'::regnamespace)
       and (r.schema like 'pg\\_temp\\_%' or r.schema like 'pg\\_toast\\_temp\\_%')"""


# --- A. scenarios: setup as the superuser, plant(), then the attack as the role -----------------------


def app_inserts_users_with_the_switch_on_and_off(app, conn, plant):
    plant()
    on = one(app, "insert into public.users (login, first_name, sync_to_contact) values ('a', 'A', true) returning id")
    off = one(app, "insert into public.users (login, first_name, sync_to_contact) values ('b', 'B', false)"
                   " returning id")
    assert contact(conn, contact_id(conn, on))["first_name"] == "A"
    assert contact_id(conn, off) is None


def app_updates_a_mapped_and_an_unmapped_field(app, conn, plant):
    uid = add_user(conn, "a", first_name="A")
    plant()
    app.execute("update public.users set first_name = 'A2', login = 'a2' where id = %s", [uid])
    assert contact(conn, contact_id(conn, uid))["first_name"] == "A2"


def app_switches_synchronization_off_and_on(app, conn, plant):
    uid = add_user(conn, "a", first_name="A")
    cid = contact_id(conn, uid)
    plant()
    app.execute("update public.users set sync_to_contact = false where id = %s", [uid])
    assert contact_id(conn, uid) is None
    app.execute("update public.users set first_name = 'A2' where id = %s", [uid])
    assert contact(conn, cid)["first_name"] == "A"
    app.execute("update public.users set sync_to_contact = true where id = %s", [uid])
    assert contact_id(conn, uid) == cid
    assert contact(conn, cid)["first_name"] == "A2"


def app_deletes_a_synchronized_user(app, conn, plant):
    uid = add_user(conn, "a", first_name="A")
    cid = contact_id(conn, uid)
    plant()
    app.execute("delete from public.users where id = %s", [uid])
    assert one(conn, "select count(*) from usersync.links_1") == 0
    assert contact(conn, cid)["first_name"] == "A"


def app_copies_and_updates_users_in_bulk(app, conn, plant):
    plant()  # more rows than BULK_ROWS: the statements on transition tables run through EXECUTE
    with app.cursor().copy("copy public.users (login, first_name, sync_to_contact) from stdin") as copy:
        for i in range(150):
            copy.write_row((f"c{i}", f"C{i}", True))
    app.execute("update public.users set first_name = first_name || '!'")
    assert one(conn, "select count(*) from contacts where first_name like 'C%!'") == 150
    app.execute("update public.users set sync_to_contact = false")
    app.execute("update public.users set sync_to_contact = true")
    assert one(conn, "select count(*) from usersync.synchronized_contacts") == 150


def app_edits_the_contact_of_a_reversed_pair(app, conn, plant):
    uid = add_user(conn, "a", first_name="A")
    cid = contact_id(conn, uid)
    # text -> date has no assignment cast: the generated code casts, naming the type.
    conn.execute("insert into usersync.field_mapping values ('birth_date', 'notes')")
    conn.execute("select usersync.set_sync_source(%s, 'contact')", [uid])
    plant()
    app.execute("update public.contacts set first_name = 'C', notes = '2001-02-03' where id = %s", [cid])
    assert one(conn, "select first_name, birth_date::text from users where id = %s", [uid]) == ("C", "2001-02-03")


def app_is_refused_an_edit_of_the_user_of_a_reversed_pair(app, conn, plant):
    uid = add_user(conn, "a", first_name="A")
    conn.execute("select usersync.set_sync_source(%s, 'contact')", [uid])
    plant()
    with raises_sqlstate("US002", match="is read-only"):
        app.execute("update public.users set first_name = 'A2' where id = %s", [uid])


def app_deletes_the_contact_of_a_reversed_pair(app, conn, plant):
    uid = add_user(conn, "a", first_name="A")
    cid = contact_id(conn, uid)
    conn.execute("select usersync.set_sync_source(%s, 'contact')", [uid])
    plant()
    app.execute("delete from public.contacts where id = %s", [cid])
    assert one(conn, "select sync_to_contact from users where id = %s", [uid]) is False
    assert one(conn, "select count(*) from usersync.links_1") == 0


def app_writes_a_value_that_does_not_fit(app, conn, plant):
    # The failure path: exception blocks, then _explain_failure, _field_fits and _diagnose.
    conn.execute("alter table users add column code text")
    conn.execute("alter table contacts add column code varchar(3)")
    conn.execute("insert into usersync.field_mapping values ('code', 'code')")
    plant()
    with raises_sqlstate("22001", match='user field "code" does not fit contact field "code"'):
        app.execute("insert into public.users (login, code, sync_to_contact) values ('a', 'toolong', true)")


def app_truncates_users_then_contacts(app, conn, plant):
    add_user(conn, "a", first_name="A")
    plant()
    app.execute("truncate public.users")
    assert one(conn, "select count(*) from usersync.links_1") == 0
    app.execute("truncate public.contacts")
    assert one(conn, "select count(*) from contacts") == 0


def admin_previews_and_runs_a_resync(admin, conn, plant):
    uid = add_user(conn, "a", first_name="A", academic_title="Dr.")
    conn.execute("insert into usersync.field_mapping values ('academic_title', 'title')")
    plant()
    pairs, would_change, stale, changes = one(admin, "select pairs, would_change, stale, changes"
                                                     " from usersync.preview_resync()")
    assert (pairs, would_change, stale) == (1, 1, 1)
    assert [(c["field"], c["to"]) for c in changes] == [("title", "Dr.")]
    assert one(admin, "select done from usersync.resync_step(1000)") is False
    assert one(admin, "select done from usersync.resync_step(1000)") is True
    assert contact(conn, contact_id(conn, uid))["title"] == "Dr."


def admin_synchronizes_users(admin, conn, plant):
    uid = add_user(conn, "a", first_name="A", academic_title="Dr.")
    conn.execute("insert into usersync.field_mapping values ('academic_title', 'title')")
    plant()
    assert one(admin, "select usersync.sync_users(%s)", [[uid]]) == 1
    assert one(admin, "select usersync.sync_users()") == 1
    assert contact(conn, contact_id(conn, uid))["title"] == "Dr."


def admin_edits_the_mapping(admin, conn, plant):
    plant()  # the code is generated in the attacker's session
    admin.execute("insert into usersync.field_mapping values ('academic_title', 'title')")
    admin.execute("update usersync.field_mapping set contact_field = 'company' where user_field = 'department'")
    admin.execute("delete from usersync.field_mapping where user_field = 'phone'")
    uid = add_user(conn, "a", academic_title="Dr.", department="R&D", phone="1")
    c = contact(conn, contact_id(conn, uid))
    assert (c["title"], c["company"], c["department"], c["phone"]) == ("Dr.", "R&D", None, None)


def admin_resets_the_mapping(admin, conn, plant):
    conn.execute("delete from usersync.field_mapping")
    plant()
    assert one(admin, "select usersync.reset_field_mapping()") == 7
    uid = add_user(conn, "a", first_name="A")
    assert contact(conn, contact_id(conn, uid))["first_name"] == "A"


def admin_reverses_and_restores_a_pair(admin, conn, plant):
    uid = add_user(conn, "a", first_name="A")
    plant()
    admin.execute("select usersync.set_sync_source(%s, 'contact')", [uid])
    assert one(conn, "select source from usersync.links_1 where user_id = %s", [uid]) == "contact"
    admin.execute("select usersync.set_sync_source(%s, 'user')", [uid])
    assert one(conn, "select source from usersync.links_1 where user_id = %s", [uid]) == "user"


def owner_adds_columns_and_an_index_to_the_modules(owner, conn, plant):
    plant()  # each statement fires the DDL guard, which regenerates the code in this session
    owner.execute("alter table public.users add column x pg_catalog.text")
    owner.execute("alter table public.contacts add column x pg_catalog.text")
    owner.execute("create unique index on public.contacts (x)")
    uid = add_user(conn, "a", first_name="A", x="X")
    c = contact(conn, contact_id(conn, uid))
    assert (c["first_name"], c["x"]) == ("A", None)


SCENARIOS = [
    *[("app", s) for s in (app_inserts_users_with_the_switch_on_and_off, app_updates_a_mapped_and_an_unmapped_field,
                          app_switches_synchronization_off_and_on, app_deletes_a_synchronized_user,
                          app_copies_and_updates_users_in_bulk, app_edits_the_contact_of_a_reversed_pair,
                          app_is_refused_an_edit_of_the_user_of_a_reversed_pair,
                          app_deletes_the_contact_of_a_reversed_pair, app_writes_a_value_that_does_not_fit,
                          app_truncates_users_then_contacts)],
    *[("admin", s) for s in (admin_previews_and_runs_a_resync, admin_synchronizes_users, admin_edits_the_mapping,
                            admin_resets_the_mapping, admin_reverses_and_restores_a_pair)],
    ("owner", owner_adds_columns_and_an_index_to_the_modules),
]


@pytest.mark.parametrize(("role", "scenario"), [pytest.param(r, s, id=s.__name__) for r, s in SCENARIOS])
def test_lookalikes_in_pg_temp_never_run_as_the_engine(request, conn, role, scenario):
    attacker = request.getfixturevalue(f"{role}_conn")
    functions = one(conn, ENGINE_FUNCTIONS)
    scenario(attacker, conn, lambda: plant_lookalikes(attacker, conn))
    assert_canary_never_ran(attacker, "pg_temp.pwned_calls")
    assert one(conn, TEMP_DEPENDENCIES) is None
    assert one(conn, ENGINE_FUNCTIONS) == functions
    assert mismatches(conn) == []


@pytest.mark.parametrize(("role", "statement"), [
    pytest.param("admin", "insert into usersync.field_mapping values ('academic_title', 'title')", id="mapping-edit"),
    pytest.param("admin", "select usersync.reset_field_mapping()", id="mapping-reset"),
    pytest.param("owner", "alter table public.contacts add column x pg_catalog.text", id="ddl"),
])
def test_code_generated_in_a_session_with_lookalikes_neither_uses_nor_outlives_them(request, conn, role, statement):
    # Silent look-alikes (no canary): the generation succeeds, and what it wrote must name only
    # pg_catalog's types. A function depending on a temp type would be a new overload the engine
    # owns (and is dropped with the attacker's session); a type recorded by its look-alike's
    # spelling (pg_catalog.text where text is shadowed) would make every later DDL a "retype".
    attacker = request.getfixturevalue(f"{role}_conn")
    functions = one(conn, ENGINE_FUNCTIONS)
    plant_lookalikes(attacker, conn, canary=False)
    attacker.execute(statement)
    assert one(conn, TEMP_DEPENDENCIES) is None
    assert one(conn, ENGINE_FUNCTIONS) == functions
    conn.execute("alter table contacts add column y text")
    uid = add_user(conn, "a", first_name="A")
    conn.execute("select usersync.set_sync_source(%s, 'contact')", [uid])
    assert mismatches(conn) == []


# --- B. hostile identifiers ---------------------------------------------------------------------------

PAYLOAD = "select public.pwned()"
HOSTILE_NAMES = [
    # Dollar quotes: the generated functions' bodies, the templates, the generator.
    pytest.param(f"a$body$;{PAYLOAD};select $body$b", id="dollar-body"),
    pytest.param(f"a$tpl$;{PAYLOAD};select $tpl$b", id="dollar-tpl"),
    pytest.param(f"a$$;{PAYLOAD};select $$b", id="dollar-dollar"),
    pytest.param(f"a$gen$;{PAYLOAD};select $gen$b", id="dollar-gen"),
    # Template placeholders and the dual-statement markers.
    pytest.param("@HAS_MAP@", id="placeholder-HAS_MAP"),
    pytest.param("@C_COLS@", id="placeholder-C_COLS"),
    pytest.param("@V@", id="placeholder-V"),
    pytest.param(f"/*end*/ {PAYLOAD}; /*dual*/", id="dual-markers"),
    # Quotes, comments, statement ends, escapes, format() specifiers.
    pytest.param(f"a'; {PAYLOAD}; --", id="single-quote"),
    pytest.param(f'a"; {PAYLOAD}; --', id="double-quote"),
    pytest.param(f"a\n; {PAYLOAD};\n", id="newline-code"),
    pytest.param(f"a*/ {PAYLOAD}; /*", id="comment-close"),
    pytest.param(f"a/* {PAYLOAD}", id="comment-open"),
    pytest.param(f"a -- {PAYLOAD}", id="line-comment"),
    pytest.param(f"a; {PAYLOAD}", id="semicolon"),
    pytest.param("a\\'b\\", id="backslash"),
    pytest.param("%s %I %L %1$s", id="format-specifiers"),
    # What the generated code names itself: text the generator rewrites (into r, using
    # switched_on), its variables and parameters, a column of its CTEs, a parameter marker.
    pytest.param("into r", id="into-r"),
    pytest.param("switched_on", id="switched_on"),
    pytest.param("usersync_bulk", id="usersync_bulk"),
    pytest.param("p_user_ids", id="p_user_ids"),
    pytest.param("p_contact_id", id="p_contact_id"),
    pytest.param("usersync_new_contact_id", id="usersync_new_contact_id"),
    pytest.param("$1", id="dollar-1"),
]


@pytest.fixture
def canary(conn):
    """public.pwned(): what the payloads call; counts its calls, then fails the statement."""
    conn.execute("create sequence public.pwned_calls")
    conn.execute("grant usage on sequence public.pwned_calls to public")
    conn.execute("""
        create function public.pwned() returns boolean language plpgsql as $$
        begin
            perform pg_catalog.nextval('public.pwned_calls');
            raise exception 'PWNED: injected code ran as %', current_user;
        end $$""")


def ident(conn, name):
    """The quoted name, safe from psycopg's placeholder parsing too (a name may hold %s)."""
    return sql.SQL(sql.Identifier(name).as_string(conn).replace("%", "%%"))


def add_columns(owner, name, contact_type="text", tables=("users", "contacts")):
    """The owner adds the column; its DDL sets off the generation, in its session."""
    owner.execute("set check_function_bodies = off")
    for table, ctype in (("users", "text"), ("contacts", contact_type)):
        if table in tables:
            owner.execute(sql.SQL("alter table public.{} add column {} {}").format(
                sql.Identifier(table), sql.Identifier(name), sql.SQL(ctype)))


def map_field(admin, name):
    admin.execute("set check_function_bodies = off")
    admin.execute("insert into usersync.field_mapping (user_field, contact_field) values (%s, %s)", [name, name])


def add_hostile_user(conn, login, name, value):
    """A synchronized user with first_name = login upper-cased and the hostile field = value."""
    query = sql.SQL("insert into users (login, sync_to_contact, first_name, {}) values (%s, true, %s, %s)"
                    " returning id").format(ident(conn, name))
    return one(conn, query, [login, login.upper(), value])


def set_field(conn, table, name, value, row_id):
    conn.execute(sql.SQL("update {} set {} = %s where id = %s").format(sql.Identifier(table), ident(conn, name)),
                 [value, row_id])


def copy_users(app, name, prefix, value, n=120):
    query = sql.SQL("copy users (login, sync_to_contact, {}) from stdin").format(sql.Identifier(name))
    with app.cursor().copy(query) as copy:
        for i in range(n):
            copy.write_row((f"{prefix}{i}", True, value))


def assert_no_harm(conn):
    assert_canary_never_ran(conn, "public.pwned_calls")
    assert mismatches(conn) == []


@pytest.mark.usefixtures("canary")
@pytest.mark.parametrize("name", HOSTILE_NAMES)
def test_a_hostile_column_name_in_the_mapping_is_synchronized_verbatim(name, conn, owner_conn, admin_conn, app_conn):
    col = sql.Identifier(name)
    add_columns(owner_conn, name)
    early = add_hostile_user(conn, "early", name, "early value")
    map_field(admin_conn, name)

    changes = one(admin_conn, "select changes from usersync.preview_resync(50)")
    assert [(c["field"], c["to"]) for c in changes if c["user_id"] == early] == [(name, "early value")]
    assert one(admin_conn, "select usersync.sync_users()") == 1
    assert contact(conn, contact_id(conn, early))[name] == "early value"

    uid = add_hostile_user(app_conn, "b", name, name)
    assert contact(conn, contact_id(conn, uid))[name] == name
    set_field(app_conn, "users", name, "second", uid)
    assert contact(conn, contact_id(conn, uid))[name] == "second"

    # A reversed pair: the contact's value goes to the user.
    conn.execute("select usersync.set_sync_source(%s, 'contact')", [early])
    set_field(app_conn, "contacts", name, "from the contact", contact_id(conn, early))
    assert one(conn, sql.SQL("select {} from users where id = %s").format(ident(conn, name)), [early]) \
        == "from the contact"

    # A hostile column added after the mapping: regenerated by the DDL guard, the mapping still in it.
    add_columns(owner_conn, f"{name} (later)", tables=("contacts",))
    set_field(app_conn, "users", name, "third", uid)
    assert contact(conn, contact_id(conn, uid))[name] == "third"

    # Bulk statements (more rows than BULK_ROWS) run the EXECUTE copy of the generated statements.
    copy_users(app_conn, name, "bulk", "copied")
    app_conn.execute(sql.SQL("update users set {} = 'bulk' where login like 'bulk%'").format(col))
    app_conn.execute("update users set sync_to_contact = false where login like 'bulk%'")
    app_conn.execute("update users set sync_to_contact = true where login like 'bulk%'")
    assert one(conn, sql.SQL("select count(*) from contacts where {} = 'bulk'").format(col)) == 120
    assert_no_harm(conn)


@pytest.mark.usefixtures("canary")
@pytest.mark.parametrize("name", HOSTILE_NAMES)
def test_a_hostile_column_name_outside_the_mapping_changes_nothing_and_once_mapped_is_named_in_errors(
        name, conn, owner_conn, admin_conn, app_conn):
    add_columns(owner_conn, name, contact_type="varchar(3)")
    uid = add_hostile_user(app_conn, "a", name, "usr")
    c = contact(conn, contact_id(conn, uid))
    assert (c["first_name"], c[name]) == ("A", None)
    set_field(app_conn, "users", name, "chg", uid)
    app_conn.execute("update users set first_name = 'A2' where id = %s", [uid])
    c = contact(conn, contact_id(conn, uid))
    assert (c["first_name"], c[name]) == ("A2", None)

    conn.execute("select usersync.set_sync_source(%s, 'contact')", [uid])
    cid = contact_id(conn, uid)
    set_field(app_conn, "contacts", name, "ctc", cid)
    app_conn.execute("update contacts set first_name = 'C' where id = %s", [cid])
    assert one(conn, sql.SQL("select first_name, {} from users where id = %s").format(ident(conn, name)),
               [uid]) == ("C", "chg")

    copy_users(app_conn, name, "bulk", "cpy")
    app_conn.execute("update users set first_name = 'bulk' where login like 'bulk%'")
    assert one(conn, "select count(*) from contacts where first_name = 'bulk'") == 120

    # Mapped into a narrower field: the generated code now catches a value that does not fit and
    # explains it (_explain_failure, _field_fits and _diagnose build statements from the name too).
    map_field(admin_conn, name)
    assert one(admin_conn, "select usersync.sync_users()") == 121
    assert one(conn, sql.SQL("select {} from users where id = %s").format(ident(conn, name)), [uid]) == "ctc"
    with raises_sqlstate("22001", match=f'user field "{name}" does not fit contact field "{name}"'):
        add_hostile_user(app_conn, "b", name, "toolong")
    assert_no_harm(conn)
