"""Model-based test: random sequences of what applications and administrators do, checked after
every step against a plain-Python model of the help article's rules (including the refusals).

Bounded for CI; USERSYNC_MODEL_EXAMPLES / USERSYNC_MODEL_STEPS run it longer.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any

import psycopg
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule, run_state_machine_as_test

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
    contact: int
    source: str = "user"
    active: bool = True


@dataclass
class Model:
    users: dict[int, dict[str, Any]] = field(default_factory=dict)
    contacts: dict[int, dict[str, Any]] = field(default_factory=dict)
    links: dict[int, Link] = field(default_factory=dict)
    mapping: dict[str, str] = field(default_factory=dict)   # user field -> contact field
    delete_contact_with_user: bool = False
    delete_user_with_contact: bool = False

    def image(self, uid: int) -> dict[str, Any]:
        back = {cf: uf for uf, cf in self.mapping.items()}
        return {cf: (self.users[uid][back[cf]] if cf in back else None) for cf in C_FIELDS}

    def refresh(self, uid: int) -> None:
        link = self.links[uid]
        if link.source == "user":
            self.contacts[link.contact] = self.image(uid)
        else:
            for uf, cf in self.mapping.items():
                self.users[uid][uf] = self.contacts[link.contact][cf]

    def active(self, uid: int) -> Link | None:
        link = self.links.get(uid)
        return link if link and link.active else None

    def link_of_contact(self, cid: int) -> tuple[int, Link] | None:
        return next(((u, lk) for u, lk in self.links.items() if lk.contact == cid), None)


def make_machine(app: psycopg.Connection, admin: psycopg.Connection, su: psycopg.Connection) -> type:
    class UserContactSync(RuleBasedStateMachine):
        def __init__(self) -> None:
            super().__init__()
            self.m = Model()
            su.execute("set session_replication_role = replica")
            su.execute("delete from contacts; delete from users")
            su.execute("set session_replication_role = origin")
            su.execute("delete from usersync.links_1; delete from usersync.sync_errors;"
                       " delete from usersync.resync_state")
            su.execute("update usersync.settings"
                       " set delete_contact_with_user = false, delete_user_with_contact = false")
            su.execute("delete from usersync.field_mapping")
            su.execute("insert into usersync.field_mapping values ('first_name', 'first_name'), ('email', 'email')")
            self.m.mapping = {"first_name": "first_name", "email": "email"}

        # -- helpers -----------------------------------------------------------------------------
        def expect(self, sqlstate: str | None, conn: psycopg.Connection, query: str, params: Any = None) -> Any:
            try:
                cur = conn.execute(query, params)
            except psycopg.Error as exc:
                assert exc.sqlstate == sqlstate, f"{query} {params}: got {exc.sqlstate} {exc}, expected {sqlstate}"
                return None
            assert sqlstate is None, f"{query} {params}: succeeded, expected {sqlstate}"
            return cur.fetchone() if cur.description else None

        def new_link(self, uid: int) -> None:
            row = su.execute("select contact_id from usersync.links_1 where user_id = %s and active", [uid]).fetchone()
            assert row, f"user {uid} got no contact"
            self.m.links[uid] = Link(row[0])
            self.m.contacts[row[0]] = self.m.image(uid)

        @staticmethod
        def pick(ids: Any, i: int) -> int:
            ordered = sorted(ids)
            return ordered[i % len(ordered)]

        # -- applications on the Users module ----------------------------------------------------------
        @rule(sw=st.booleans(), first=VALUES, email=VALUES, title=VALUES)
        def create_user(self, sw: bool, first: Any, email: Any, title: Any) -> None:
            login = f"u{len(self.m.users)}-{os.urandom(3).hex()}"
            (uid,) = self.expect(
                None, app, "insert into users (login, first_name, email, academic_title, sync_to_contact)"
                           " values (%s, %s, %s, %s, %s) returning id", [login, first, email, title, sw])
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
            if link and link.source == "contact" and changed:
                self.expect("US002", app, f"update users set {fld} = %s where id = %s", [value, uid])
                return
            self.expect(None, app, f"update users set {fld} = %s where id = %s", [value, uid])
            user[fld] = value
            if link and link.source == "user" and changed:
                self.m.contacts[link.contact] = self.m.image(uid)

        @precondition(lambda self: self.m.users)
        @rule(i=PICK)
        def toggle_switch(self, i: int) -> None:
            uid = self.pick(self.m.users, i)
            user = self.m.users[uid]
            self.expect(None, app, "update users set sync_to_contact = not sync_to_contact where id = %s", [uid])
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
                self.expect("US002", app, "delete from users where id = %s", [uid])
                return
            self.expect(None, app, "delete from users where id = %s", [uid])
            if link and self.m.delete_contact_with_user:
                del self.m.contacts[link.contact]
            self.m.links.pop(uid, None)
            del self.m.users[uid]

        # -- applications on the Contacts module ---------------------------------------------------------
        @rule(first=VALUES, notes=VALUES)
        def create_contact(self, first: Any, notes: Any) -> None:
            (cid,) = self.expect(None, app, "insert into contacts (first_name, notes) values (%s, %s) returning id",
                                 [first, notes])
            self.m.contacts[cid] = {"title": None, "first_name": first, "email": None, "notes": notes}

        @precondition(lambda self: self.m.contacts)
        @rule(i=PICK, fld=st.sampled_from(C_FIELDS), value=VALUES)
        def update_contact(self, i: int, fld: str, value: Any) -> None:
            cid = self.pick(self.m.contacts, i)
            found = self.m.link_of_contact(cid)
            link = found[1] if found and found[1].active else None
            if link and link.source == "user":
                self.expect("US001", app, f"update contacts set {fld} = %s where id = %s", [value, cid])
                return
            old = self.m.contacts[cid][fld]
            self.expect(None, app, f"update contacts set {fld} = %s where id = %s", [value, cid])
            self.m.contacts[cid][fld] = value
            if link and fld in self.m.mapping.values() and old != value:
                self.m.refresh(found[0])

        @precondition(lambda self: self.m.contacts)
        @rule(i=PICK)
        def delete_contact(self, i: int) -> None:
            cid = self.pick(self.m.contacts, i)
            found = self.m.link_of_contact(cid)
            if found and found[1].active and found[1].source == "user":
                self.expect("US001", app, "delete from contacts where id = %s", [cid])
                return
            self.expect(None, app, "delete from contacts where id = %s", [cid])
            del self.m.contacts[cid]
            if found:
                uid, link = found
                del self.m.links[uid]
                if link.active:  # reversed
                    if self.m.delete_user_with_contact:
                        del self.m.users[uid]
                    else:
                        self.m.users[uid]["sw"] = False

        # -- administrators ---------------------------------------------------------------------------
        @rule(pair=st.sampled_from(CANDIDATE_MAPPINGS))
        def map_field(self, pair: tuple[str, str]) -> None:
            uf, cf = pair
            if uf in self.m.mapping or cf in self.m.mapping.values():
                self.expect("US003", admin, "insert into usersync.field_mapping values (%s, %s)", [uf, cf])
                return
            self.expect(None, admin, "insert into usersync.field_mapping values (%s, %s)", [uf, cf])
            self.m.mapping[uf] = cf

        @rule(uf=st.sampled_from(U_FIELDS))
        def unmap_field(self, uf: str) -> None:
            self.expect(None, admin, "delete from usersync.field_mapping where user_field = %s", [uf])
            self.m.mapping.pop(uf, None)

        @precondition(lambda self: self.m.users)
        @rule(i=PICK, source=st.sampled_from(("user", "contact")))
        def set_direction(self, i: int, source: str) -> None:
            uid = self.pick(self.m.users, i)
            link = self.m.active(uid)
            if not link:
                self.expect("US006", admin, "select usersync.set_sync_source(%s, %s)", [uid, source])
                return
            self.expect(None, admin, "select usersync.set_sync_source(%s, %s)", [uid, source])
            link.source = source
            self.m.refresh(uid)

        @rule(contact_with_user=st.booleans(), user_with_contact=st.booleans())
        def set_toggles(self, contact_with_user: bool, user_with_contact: bool) -> None:
            self.expect(None, admin, "update usersync.settings set delete_contact_with_user = %s,"
                                     " delete_user_with_contact = %s", [contact_with_user, user_with_contact])
            self.m.delete_contact_with_user, self.m.delete_user_with_contact = contact_with_user, user_with_contact

        @rule(batch=st.sampled_from((None, 1, 3)))
        def sync(self, batch: int | None) -> None:
            if batch is None:
                self.expect(None, admin, "select usersync.sync_users()")
            else:
                self.expect(None, admin, "call usersync.resync_all(%s)", [batch])
            for uid in list(self.m.links):
                if self.m.links[uid].active:
                    self.m.refresh(uid)

        # -- the database equals the model, after every step --------------------------------------------
        @invariant()
        def database_equals_model(self) -> None:
            users = {r[0]: {"login": r[1], "first_name": r[2], "email": r[3], "academic_title": r[4], "sw": r[5]}
                     for r in su.execute("select id, login, first_name, email, academic_title, sync_to_contact"
                                         " from users")}
            assert users == self.m.users
            contacts = {r[0]: dict(zip(C_FIELDS, r[1:], strict=True))
                        for r in su.execute("select id, title, first_name, email, notes from contacts")}
            assert contacts == self.m.contacts
            links = {r[0]: (r[1], r[2]) for r in su.execute(
                "select user_id, contact_id, source from usersync.links_1 where active")}
            assert links == {u: (lk.contact, lk.source) for u, lk in self.m.links.items() if lk.active}
            mapping = dict(su.execute("select user_field, contact_field from usersync.field_mapping").fetchall())
            assert mapping == self.m.mapping

    return UserContactSync


def test_the_database_behaves_like_the_model(app_conn, admin_conn, conn):
    machine = make_machine(app_conn, admin_conn, conn)
    run_state_machine_as_test(machine, settings=settings(
        max_examples=EXAMPLES, stateful_step_count=STEPS, deadline=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much]))
