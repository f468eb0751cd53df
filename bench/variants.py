"""The three ways to keep contacts in step that the benchmarks compare, as SQL.

- plain:    the two modules and nothing else (the floor writes contacts itself, set-based)
- hand:     the common hand-written pattern: a row-level PL/pgSQL trigger with a hard-coded
            column list and a link table
- usersync: the migrated schema and the same two tables attached as a pair, default mapping
            (the same 7 text fields)

Every variant uses the example tables of pyapp/examples.sql, so they compare like with like; the
uuid "profiles" shape (below) has the same columns on Supabase's tables, in the same three
variants.
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


# -- The uuid "profiles" shape (Supabase's pattern) ---------------------------------------------
#
# auth.users (uuid key from gen_random_uuid()) feeds public.profiles, whose key is the user's and
# references it ON DELETE CASCADE; no switch (every user has a profile); row-level security on
# both tables, with a permissive policy for the role the application writes as. The columns are
# the example tables' (the same 7 mapped text fields, the same unmapped ones), so the shapes
# differ only in keys, foreign key, row-level security and switch.

UUID_TABLES = """
create schema if not exists auth;
create table auth.users (
    id              uuid primary key default gen_random_uuid(),
    login           text not null unique,
    first_name      text,
    last_name       text,
    academic_title  text,
    email           text,
    phone           text,
    mobile          text,
    department      text,
    job_title       text,
    birth_date      date
);
create table public.profiles (
    id          uuid primary key references auth.users (id) on delete cascade,
    title       text,
    first_name  text,
    last_name   text,
    email       text,
    phone       text,
    mobile      text,
    company     text,
    department  text,
    job_title   text,
    birthday    date,
    notes       text
);
alter table auth.users enable row level security;
alter table public.profiles enable row level security;
"""


def uuid_access_sql(role: str) -> str:
    """What Supabase gives the application's role: privileges and a permissive policy per table."""
    r = '"' + role.replace('"', '""') + '"'
    return f"""
grant usage on schema auth to {r};
grant select, insert, update, delete on auth.users, public.profiles to {r};
create policy bench_app on auth.users for all to {r} using (true) with check (true);
create policy bench_app on public.profiles for all to {r} using (true) with check (true);
"""


# The hand-written version: a row trigger that writes the profile with the user's key (no link
# table: the key is shared), as Supabase's handle_new_user does, plus the update.
UUID_HAND_TRIGGER = f"""
create function public.sync_profile() returns trigger language plpgsql as $$
begin
    if tg_op = 'INSERT' then
        insert into public.profiles (id, {_cols}) values (new.id, {_new});
    else
        update public.profiles set {_set} where id = new.id;
    end if;
    return null;
end
$$;
create trigger sync_profile after insert or update on auth.users for each row execute function public.sync_profile();
"""

UUID_FLOOR_INSERT = f"insert into public.profiles (id, {_cols}) select id, {_cols} from auth.users"
UUID_FLOOR_UPDATE = (f"update public.profiles p set ({_cols}) = ({', '.join('u.' + f for f in FIELDS)})"
                     f" from auth.users u where u.id = p.id")
