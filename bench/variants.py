"""The three ways to keep contacts in step that the benchmarks compare, as SQL.

- plain:    the two modules and nothing else (the floor writes contacts itself, set-based)
- hand:     the common hand-written pattern: a row-level PL/pgSQL trigger with a hard-coded
            column list and a link table
- usersync: the migrated schema and the same two tables attached as a pair, default mapping
            (the same 7 text fields)

Every variant uses the example tables of pyapp/examples.sql, so they compare like with like.
"""

from __future__ import annotations

from pyapp import examples

FIELDS = ("first_name", "last_name", "email", "phone", "mobile", "department", "job_title")


def modules_sql() -> str:
    """The Users and Contacts tables (public.users, public.contacts), as the demo and the tests have them."""
    return examples.example_tables_sql()


LINK_TABLE = "create table user_contact (user_id bigint primary key, contact_id bigint not null unique);"

_cols = ", ".join(FIELDS)
_new = ", ".join(f"new.{f}" for f in FIELDS)
_set = ", ".join(f"{f} = new.{f}" for f in FIELDS)

HAND_TRIGGER = f"""
{LINK_TABLE}
create function sync_contact() returns trigger language plpgsql as $$
declare
    cid bigint;
begin
    if tg_op = 'INSERT' then
        if new.sync_to_contact then
            insert into contacts ({_cols}) values ({_new}) returning id into cid;
            insert into user_contact values (new.id, cid);
        end if;
    elsif new.sync_to_contact then
        update contacts c set {_set} from user_contact l where l.user_id = new.id and c.id = l.contact_id;
    end if;
    return null;
end
$$;
create trigger sync_contact after insert or update on users for each row execute function sync_contact();
"""

# The floor: after writing users, one set-based statement writes the contacts (ids shared, no link table).
FLOOR_INSERT = (f"insert into contacts (id, {_cols}) overriding system value"
                f" select id, {_cols} from users where sync_to_contact")
FLOOR_UPDATE = (f"update contacts c set ({_cols}) = ({', '.join('u.' + f for f in FIELDS)})"
                f" from users u where u.id = c.id")
