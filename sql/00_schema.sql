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
