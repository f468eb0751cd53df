"""Model-based test: random sequences of what applications and administrators do, checked after
every step against a plain-Python model of the help article's rules (including the refusals), on
each shape of tables (tests/shapes.py): bigint keys and a switch; uuid keys shared by a profiles
table with a cascading foreign key and no switch; quoted names with text keys.

Bounded for CI; USERSYNC_MODEL_EXAMPLES / USERSYNC_MODEL_STEPS run it longer.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any

import psycopg
import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule, run_state_machine_as_test
from psycopg import sql
from shapes import SHAPES, Shape, set_mapping

U_FIELDS = ("first_name", "email", "academic_title")   # user fields the model writes (login too)
C_FIELDS = ("title", "first_name", "email", "notes")   # contact fields the model writes and reads
CANDIDATE_MAPPINGS = [("first_name", "first_name"), ("email", "email"), ("academic_title", "title"),
                      ("email", "notes"), ("first_name", "notes"), ("academic_title", "first_name")]
VALUES = st.sampled_from([None, "a", "b", "Dr."])
PICK = st.integers(min_value=0, max_value=1000)

EXAMPLES = int(os.environ.get("USERSYNC_MODEL_EXAMPLES", "15"))
STEPS = int(os.environ.get("USERSYNC_MODEL_STEPS", "25"))


@dataclass
class Link:
    contact: Any
    source: str = "user"
    active: bool = True


@dataclass
class Model:
    users: dict[Any, dict[str, Any]] = field(default_factory=dict)
    contacts: dict[Any, dict[str, Any]] = field(default_factory=dict)
    links: dict[Any, Link] = field(default_factory=dict)
    mapping: dict[str, str] = field(default_factory=dict)   # user field -> contact field
    delete_contact_with_user: bool = False
    delete_user_with_contact: bool = False

    def image(self, uid: Any) -> dict[str, Any]:
        back = {cf: uf for uf, cf in self.mapping.items()}
        return {cf: (self.users[uid][back[cf]] if cf in back else None) for cf in C_FIELDS}

    def refresh(self, uid: Any) -> None:
        link = self.links[uid]
        if link.source == "user":
            self.contacts[link.contact] = self.image(uid)
        else:
            for uf, cf in self.mapping.items():
                self.users[uid][uf] = self.contacts[link.contact][cf]

    def active(self, uid: Any) -> Link | None:
        link = self.links.get(uid)
        return link if link and link.active else None

    def link_of_contact(self, cid: Any) -> tuple[Any, Link] | None:
        return next(((u, lk) for u, lk in self.links.items() if lk.contact == cid), None)


def make_machine(shape: Shape, app: psycopg.Connection, admin: psycopg.Connection, su: psycopg.Connection) -> type:
    users, contacts = shape.users_sql, shape.contacts_sql
    uk, ck = sql.Identifier(shape.user_key), sql.Identifier(shape.contact_key)
    links = shape.links(su)
    switch = sql.Identifier(shape.switch) if shape.switch else None
    by_pair = {"pair": shape.pair}

    def q(template: str, **parts: sql.Composable) -> sql.Composed:
        return sql.SQL(template).format(users=users, contacts=contacts, uk=uk, ck=ck, links=links, **parts)

    def mapped(pairs: list[tuple[str, str]]) -> list[tuple[str, str]]:
        return [(shape.user_cols.get(u, u), shape.contact_cols.get(c, c)) for u, c in pairs]

    class UserContactSync(RuleBasedStateMachine):
        def __init__(self) -> None:
            super().__init__()
            self.m = Model()
            su.execute("set session_replication_role = replica")
            su.execute(q("delete from {contacts}; delete from {users}"))
            su.execute("set session_replication_role = origin")
            su.execute(q("delete from {links}"))
            su.execute("delete from usersync.sync_errors; delete from usersync.resync_state")
            su.execute("update usersync.settings"
                       " set delete_contact_with_user = false, delete_user_with_contact = false")
            set_mapping(su, shape, [("first_name", "first_name"), ("email", "email")])
            self.m.mapping = {"first_name": "first_name", "email": "email"}

        # -- helpers -----------------------------------------------------------------------------
        def expect(self, sqlstate: str | None, conn: psycopg.Connection, query: Any, params: Any = None) -> Any:
            try:
                cur = conn.execute(query, params)
            except psycopg.Error as exc:
                assert exc.sqlstate == sqlstate, f"{query} {params}: got {exc.sqlstate} {exc}, expected {sqlstate}"
                return None
            assert sqlstate is None, f"{query} {params}: succeeded, expected {sqlstate}"
            return cur.fetchone() if cur.description else None

        def new_link(self, uid: Any) -> None:
            row = su.execute(q("select contact_id from {links} where user_id = %s and active"), [uid]).fetchone()
            assert row, f"user {uid} got no contact"
            self.m.links[uid] = Link(row[0])
            self.m.contacts[row[0]] = self.m.image(uid)

        @staticmethod
        def pick(ids: Any, i: int) -> Any:
            # In the model's order (the order rows were made), not the keys' (random uuids and
            # text keys differ from run to run, which would make Hypothesis's replays differ).
            ordered = list(ids)
            return ordered[i % len(ordered)]

        # -- applications on the Users module ----------------------------------------------------------
        @rule(sw=st.booleans(), first=VALUES, email=VALUES, title=VALUES)
        def create_user(self, sw: bool, first: Any, email: Any, title: Any) -> None:
            sw = sw or switch is None  # without a switch every user is synchronized
            login = f"u{len(self.m.users)}-{os.urandom(3).hex()}"
            uid = shape.add_user(app, login, sync=sw, first_name=first, email=email, academic_title=title)
            self.m.users[uid] = {"login": login, "first_name": first, "email": email, "academic_title": title, "sw": sw}
            if sw:
                self.new_link(uid)

        @precondition(lambda self: self.m.users)
        @rule(i=PICK, fld=st.sampled_from((*U_FIELDS, "login")), value=VALUES)
        def update_user(self, i: int, fld: str, value: Any) -> None:
            uid = self.pick(self.m.users, i)
            if fld == "login":
                value = f"{value}-{os.urandom(3).hex()}"
            user, link = self.m.users[uid], self.m.active(uid)
            changed = fld in self.m.mapping and user[fld] != value
            update = q("update {users} set {f} = %s where {uk} = %s", f=shape.u(fld))
            if link and link.source == "contact" and changed:
                self.expect("US002", app, update, [value, uid])
                return
            self.expect(None, app, update, [value, uid])
            user[fld] = value
            if link and link.source == "user" and changed:
                self.m.contacts[link.contact] = self.m.image(uid)

        @precondition(lambda self: self.m.users and switch is not None)
        @rule(i=PICK)
        def toggle_switch(self, i: int) -> None:
            uid = self.pick(self.m.users, i)
            user = self.m.users[uid]
            assert switch is not None
            self.expect(None, app, q("update {users} set {sw} = not {sw} where {uk} = %s", sw=switch), [uid])
            user["sw"] = not user["sw"]
            link = self.m.links.get(uid)
            if not user["sw"]:
                if link:
                    link.active = False
            elif link and link.contact in self.m.contacts:
                link.active, link.source = True, "user"
                self.m.refresh(uid)
            else:
                self.m.links.pop(uid, None)
                self.new_link(uid)

        @precondition(lambda self: self.m.users)
        @rule(i=PICK)
        def delete_user(self, i: int) -> None:
            uid = self.pick(self.m.users, i)
            link = self.m.active(uid)
            if link and link.source == "contact":
                self.expect("US002", app, q("delete from {users} where {uk} = %s"), [uid])
                return
            self.expect(None, app, q("delete from {users} where {uk} = %s"), [uid])
            # (profiles: the foreign key's ON DELETE CASCADE deletes the contact whatever the toggle)
            if link and (self.m.delete_contact_with_user or shape.shared_key):
                del self.m.contacts[link.contact]
            if shape.shared_key:
                self.m.contacts.pop(uid, None)
            self.m.links.pop(uid, None)
            del self.m.users[uid]

        # -- applications on the Contacts module ---------------------------------------------------------
        @precondition(lambda self: not shape.shared_key)  # a profile's key is its user's
        @rule(first=VALUES, notes=VALUES)
        def create_contact(self, first: Any, notes: Any) -> None:
            (cid,) = self.expect(None, app, q("insert into {contacts} ({f}, {n}) values (%s, %s) returning {ck}",
                                              f=shape.c("first_name"), n=shape.c("notes")), [first, notes])
            self.m.contacts[cid] = {"title": None, "first_name": first, "email": None, "notes": notes}

        @precondition(lambda self: self.m.contacts)
        @rule(i=PICK, fld=st.sampled_from(C_FIELDS), value=VALUES)
        def update_contact(self, i: int, fld: str, value: Any) -> None:
            cid = self.pick(self.m.contacts, i)
            found = self.m.link_of_contact(cid)
            link = found[1] if found and found[1].active else None
            update = q("update {contacts} set {f} = %s where {ck} = %s", f=shape.c(fld))
            if link and link.source == "user":
                self.expect("US001", app, update, [value, cid])
                return
            old = self.m.contacts[cid][fld]
            self.expect(None, app, update, [value, cid])
            self.m.contacts[cid][fld] = value
            if link and found and fld in self.m.mapping.values() and old != value:
                self.m.refresh(found[0])

        @precondition(lambda self: self.m.contacts)
        @rule(i=PICK)
        def delete_contact(self, i: int) -> None:
            cid = self.pick(self.m.contacts, i)
            found = self.m.link_of_contact(cid)
            if found and found[1].active and found[1].source == "user":
                self.expect("US001", app, q("delete from {contacts} where {ck} = %s"), [cid])
                return
            self.expect(None, app, q("delete from {contacts} where {ck} = %s"), [cid])
            del self.m.contacts[cid]
            if found:
                uid, link = found
                del self.m.links[uid]
                if link.active:  # reversed
                    if self.m.delete_user_with_contact:
                        del self.m.users[uid]
                    elif switch is not None:
                        self.m.users[uid]["sw"] = False
                    # (without a switch the user stays, without a contact until sync_users)

        # -- administrators ---------------------------------------------------------------------------
        @rule(pair=st.sampled_from(CANDIDATE_MAPPINGS))
        def map_field(self, pair: tuple[str, str]) -> None:
            uf, cf = pair
            insert = "insert into usersync.field_mapping (pair, user_field, contact_field) values (%s, %s, %s)"
            if uf in self.m.mapping or cf in self.m.mapping.values():
                self.expect("US003", admin, insert, [shape.pair, *mapped([pair])[0]])
                return
            self.expect(None, admin, insert, [shape.pair, *mapped([pair])[0]])
            self.m.mapping[uf] = cf

        @rule(uf=st.sampled_from(U_FIELDS))
        def unmap_field(self, uf: str) -> None:
            self.expect(None, admin, "delete from usersync.field_mapping where pair = %s and user_field = %s",
                        [shape.pair, shape.user_cols.get(uf, uf)])
            self.m.mapping.pop(uf, None)

        @precondition(lambda self: self.m.users)
        @rule(i=PICK, source=st.sampled_from(("user", "contact")))
        def set_direction(self, i: int, source: str) -> None:
            uid = self.pick(self.m.users, i)
            link = self.m.active(uid)
            call = "select usersync.set_sync_source(%s, %s, pair => %s)"
            if not link:
                self.expect("US006", admin, call, [uid, source, shape.pair])
                return
            self.expect(None, admin, call, [uid, source, shape.pair])
            link.source = source
            self.m.refresh(uid)

        @rule(contact_with_user=st.booleans(), user_with_contact=st.booleans())
        def set_toggles(self, contact_with_user: bool, user_with_contact: bool) -> None:
            self.expect(None, admin, "update usersync.settings set delete_contact_with_user = %s,"
                                     " delete_user_with_contact = %s where pair = %s",
                        [contact_with_user, user_with_contact, shape.pair])
            self.m.delete_contact_with_user, self.m.delete_user_with_contact = contact_with_user, user_with_contact

        @rule(batch=st.sampled_from((None, 1, 3)))
        def sync(self, batch: int | None) -> None:
            if batch is None:
                self.expect(None, admin, "select usersync.sync_users(pair => %s)", [shape.pair])
                if switch is None:  # every user is synchronized: the ones without a contact get one
                    for uid in self.m.users:
                        if uid not in self.m.links:
                            self.new_link(uid)
            else:
                self.expect(None, admin, "call usersync.resync_all(%s, pair => %s)", [batch, shape.pair])
            for uid in list(self.m.links):
                if self.m.links[uid].active:
                    self.m.refresh(uid)

        # -- the database equals the model, after every step --------------------------------------------
        @invariant()
        def database_equals_model(self) -> None:
            ucols = sql.SQL(", ").join([uk, *(shape.u(f) for f in ("login", *U_FIELDS)),
                                        switch or sql.SQL("true")])
            users = {r[0]: {"login": r[1], "first_name": r[2], "email": r[3], "academic_title": r[4], "sw": r[5]}
                     for r in su.execute(q("select {cols} from {users}", cols=ucols))}
            assert users == self.m.users
            ccols = sql.SQL(", ").join([ck, *(shape.c(f) for f in C_FIELDS)])
            contacts = {r[0]: dict(zip(C_FIELDS, r[1:], strict=True))
                        for r in su.execute(q("select {cols} from {contacts}", cols=ccols))}
            assert contacts == self.m.contacts
            found = {r[0]: (r[1], r[2]) for r in su.execute(q("select user_id, contact_id, source from {links}"
                                                                 " where active"))}
            assert found == {u: (lk.contact, lk.source) for u, lk in self.m.links.items() if lk.active}
            mapping = dict(su.execute("select user_field, contact_field from usersync.field_mapping"
                                      " where pair = %(pair)s", by_pair).fetchall())
            assert mapping == dict(mapped(list(self.m.mapping.items())))

    return UserContactSync


@pytest.mark.parametrize("shape", SHAPES, ids=[s.name for s in SHAPES])
def test_the_database_behaves_like_the_model(shape: Shape, app_conn, admin_conn, conn):
    shape.attach(conn)
    machine = make_machine(shape, app_conn, admin_conn, conn)
    run_state_machine_as_test(machine, settings=settings(
        max_examples=EXAMPLES, stateful_step_count=STEPS, deadline=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much]))
