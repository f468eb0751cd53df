-- 00_schema.sql: the usersync schema and the roles the engine relies on.
--
-- usersync_engine  NOLOGIN; owns the engine's functions. Inside them current_user is
--                  usersync_engine, and that (not a session setting any role could forge)
--                  is how the guards recognise the engine's own writes.
-- usersync_admin   NOLOGIN; grant it to the people and scripts that administer the sync
--                  (mapping, settings, sync actions). See docs/sql-api.md.
-- Roles are cluster-wide, so they are created only when missing and never dropped here.
--
-- The installer is a superuser, or (on a managed server: RDS, Cloud SQL, Azure, Supabase, Neon)
-- the database's owner with CREATEROLE. Such an installer makes itself a member of
-- usersync_engine, which it needs to give the engine its functions (ALTER ... OWNER TO); on
-- PostgreSQL 16 and later it may only grant roles it has ADMIN OPTION on, which it has on the
-- roles it created. docs/install.md lists the privileges and the GRANTs.

do $$
declare
    me text := current_user;
    super boolean := (select r.rolsuper from pg_catalog.pg_roles r where r.rolname = current_user);
begin
    if not super and not (select r.rolcreaterole from pg_catalog.pg_roles r where r.rolname = current_user)
       and not (exists (select from pg_catalog.pg_roles where rolname = 'usersync_engine')
                and exists (select from pg_catalog.pg_roles where rolname = 'usersync_admin')) then
        raise exception using errcode = 'insufficient_privilege',
            message = pg_catalog.format('installing usersync needs a superuser or a role with CREATEROLE; %s has neither', me),
            detail = 'The install creates the roles usersync_engine and usersync_admin when they are missing.',
            hint = 'Install as a superuser, or as the database owner with CREATEROLE (docs/install.md).';
    end if;
    if not exists (select from pg_catalog.pg_roles where rolname = 'usersync_engine') then
        create role usersync_engine nologin;
    end if;
    if not exists (select from pg_catalog.pg_roles where rolname = 'usersync_admin') then
        create role usersync_admin nologin;
    end if;
    -- (16+: the creator of a role holds it WITH ADMIN but may not SET ROLE to it until it grants
    -- itself that; 15 has no such option and asks for membership)
    if not super and not pg_catalog.pg_has_role(me, 'usersync_engine',
                                                 case when pg_catalog.current_setting('server_version_num')::integer >= 160000
                                                      then 'SET' else 'MEMBER' end) then
        begin
            execute pg_catalog.format('grant usersync_engine to %I', me);
        exception when insufficient_privilege then
            raise exception using errcode = 'insufficient_privilege',
                message = pg_catalog.format('%s cannot install usersync: it is not a member of usersync_engine and '
                                            'cannot make itself one', me),
                detail = 'The role usersync_engine already exists (another database''s install made it) and this '
                         'role has no ADMIN OPTION on it.',
                hint = pg_catalog.format('Have a superuser or that role''s admin run: GRANT usersync_engine, '
                                         'usersync_admin TO %I WITH ADMIN OPTION', me);
        end;
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
