-- 00_schema.sql: the usersync schema and the roles the engine relies on.
--
-- usersync_engine  NOLOGIN; owns the engine's functions. Inside them current_user is
--                  usersync_engine, and that (not a session setting any role could forge)
--                  is how the guards recognise the engine's own writes.
-- usersync_admin   NOLOGIN; grant it to the people and scripts that administer the sync
--                  (mapping, settings, sync actions). See docs/sql-api.md.
-- Roles are cluster-wide, so they are created only when missing and never dropped here.

do $$
begin
    if not exists (select from pg_catalog.pg_roles where rolname = 'usersync_engine') then
        create role usersync_engine nologin;
    end if;
    if not exists (select from pg_catalog.pg_roles where rolname = 'usersync_admin') then
        create role usersync_admin nologin;
    end if;
end
$$;

create schema if not exists usersync;
comment on schema usersync is 'usersync: keeps the Contacts module synchronized from the Users module';

-- Nothing in usersync is for PUBLIC; grants below and in later files are explicit.
revoke all on schema usersync from public;
grant usage on schema usersync to usersync_admin;
-- The engine regenerates its specialised functions when the mapping changes, so it creates in its schema.
grant usage, create on schema usersync to usersync_engine;
-- 10_modules.sql: the two modules the engine keeps in step, Users and Contacts.
--
-- Every column is a metadata field except the key (id) and the switch (sync_to_contact).
-- Column comments are the labels shown to administrators. A DBA may add custom fields with
-- ALTER TABLE ... ADD COLUMN; the engine reads the catalog, so they appear at once.

create table if not exists public.users (
    id              bigint generated always as identity primary key,
    login           text not null unique,
    first_name      text,
    last_name       text,
    academic_title  text,
    email           text,
    phone           text,
    mobile          text,
    department      text,
    job_title       text,
    birth_date      date,
    sync_to_contact boolean not null default false
);

comment on table public.users is 'Users module';
comment on column public.users.login is 'Login';
comment on column public.users.first_name is 'First name';
comment on column public.users.last_name is 'Last name';
comment on column public.users.academic_title is 'Academic title';
comment on column public.users.email is 'Email';
comment on column public.users.phone is 'Phone';
comment on column public.users.mobile is 'Mobile';
comment on column public.users.department is 'Department';
comment on column public.users.job_title is 'Job title';
comment on column public.users.birth_date is 'Date of birth';
comment on column public.users.sync_to_contact is 'Synchronize user to contact module';

create table if not exists public.contacts (
    id          bigint generated always as identity primary key,
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

comment on table public.contacts is 'Contacts module';
comment on column public.contacts.title is 'Title';
comment on column public.contacts.first_name is 'First name';
comment on column public.contacts.last_name is 'Last name';
comment on column public.contacts.email is 'Email';
comment on column public.contacts.phone is 'Phone';
comment on column public.contacts.mobile is 'Mobile';
comment on column public.contacts.company is 'Company';
comment on column public.contacts.department is 'Department';
comment on column public.contacts.job_title is 'Job title';
comment on column public.contacts.birthday is 'Birthday';
comment on column public.contacts.notes is 'Notes';
