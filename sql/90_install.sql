-- 90_install.sql: ownership, grants, the triggers on the modules, and the first generation.
-- Safe to run again: it changes nothing that is already as it should be, and keeps the
-- administrators' mapping and settings.

-- Attach the engine's triggers (usersync._engine_triggers()) to the module tables named in
-- usersync.modules, with the policy and grants the engine needs there. Existing
-- triggers with the right definition are left alone (the DDL guard refuses to drop them for
-- anyone but a superuser).
create or replace function usersync._attach()
returns void
language plpgsql
set search_path = pg_catalog, pg_temp
as $$
declare
    t record;
    seq text;
    existing text;
    wanted text;
begin
    for t in select et.name, mo.relation,
                    pg_catalog.format(et.def, mo.relation)
                    || ' when (current_user <> ''usersync_engine'') execute function ' || et.fn as def
               from usersync._engine_triggers() et join usersync.modules mo on mo.module = et.module loop
        wanted := pg_catalog.format('create trigger %I ', t.name) || t.def;
        select pg_catalog.pg_get_triggerdef(tg.oid) into existing
          from pg_catalog.pg_trigger tg where tg.tgrelid = t.relation and tg.tgname = t.name;
        if existing is not null and lower(existing) = lower(wanted) then
            continue;
        end if;
        if existing is not null then
            execute pg_catalog.format('drop trigger %I on %s', t.name, t.relation);
        end if;
        execute wanted;
    end loop;

    for t in select mo.relation from usersync.modules mo loop
        execute pg_catalog.format('grant select, insert, update, delete on %s to usersync_engine', t.relation);
        -- Row-level security, when the application enables it (Supabase does on its tables), must
        -- not hide rows from the engine: this permissive policy lets it see and write every row,
        -- and applies to no other role. (A restrictive policy can still hide rows: the engine
        -- then fails with US007 instead of skipping them; see usersync._lost_write.)
        if not exists (select from pg_catalog.pg_policy p where p.polrelid = t.relation and p.polname = 'usersync_engine') then
            execute pg_catalog.format('create policy usersync_engine on %s as permissive for all to usersync_engine'
                                      ' using (true) with check (true)', t.relation);
        end if;
        seq := pg_catalog.pg_get_serial_sequence(t.relation::text,
                                                 (select mo.key_column from usersync.modules mo where mo.relation = t.relation));
        if seq is not null then
            execute pg_catalog.format('grant usage on sequence %s to usersync_engine', seq);
        end if;
    end loop;
end
$$;

-- The engine: owns every function that writes, so that current_user inside them is
-- usersync_engine, which is what the guards recognise.
alter function usersync._check_mapping_row() owner to usersync_engine;
alter function usersync._mapping_changed() owner to usersync_engine;
alter function usersync.default_field_mapping() owner to usersync_engine;
alter function usersync.reset_field_mapping() owner to usersync_engine;
alter function usersync._generate() owner to usersync_engine;
alter function usersync._diagnose(bigint) owner to usersync_engine;
alter function usersync._explain_failure(bigint[]) owner to usersync_engine;
alter function usersync._field_fits(bigint[], text, text) owner to usersync_engine;
alter function usersync.sync_users(bigint[]) owner to usersync_engine;
alter function usersync.resync_step(integer) owner to usersync_engine;
alter function usersync.set_sync_source(bigint, text) owner to usersync_engine;
alter function usersync.preview_resync(integer) owner to usersync_engine;
-- Functions that run as their caller, event-trigger functions above all, belong to the installing
-- role and never to the engine (60_ddl_guard.sql explains why). Named here because an upgrade from
-- 0.1, where the engine owned them, keeps the owner through CREATE OR REPLACE.
alter function usersync._check_dependencies(boolean) owner to current_user;
alter function usersync._on_sql_drop() owner to current_user;
alter function usersync._on_ddl_end() owner to current_user;
alter function usersync._on_ddl_start() owner to current_user;
alter function usersync._on_table_rewrite() owner to current_user;
alter function usersync._on_engine_ddl() owner to current_user;
alter function usersync._check_rewrite() owner to current_user;

grant select on usersync.modules, usersync.settings, usersync.field_mapping, usersync.mapping_state to usersync_engine;
grant select, insert, update, delete on usersync.links, usersync.sync_errors, usersync.resync_state to usersync_engine;
grant insert, delete on usersync.field_mapping to usersync_engine;
grant update on usersync.mapping_state to usersync_engine;
-- LOCK TABLE ... SHARE/EXCLUSIVE needs UPDATE: the engine alone may take the configuration lock.
grant update on usersync.config_lock to usersync_engine;
grant select on usersync.metadata_fields to usersync_engine;

-- Functions are executable by PUBLIC by default: take that away from every one of them,
-- then grant the public API to administrators.
revoke all on all functions in schema usersync from public;
revoke all on all procedures in schema usersync from public;
revoke all on all tables in schema usersync from public;

grant execute on all functions in schema usersync to usersync_engine;

grant select on usersync.modules, usersync.settings, usersync.field_mapping, usersync.mapping_state,
                usersync.links, usersync.sync_errors, usersync.resync_state,
                usersync.metadata_fields, usersync.synchronized_contacts to usersync_admin;
grant insert, update, delete, truncate on usersync.field_mapping to usersync_admin;
grant update (delete_contact_with_user, delete_user_with_contact) on usersync.settings to usersync_admin;
grant execute on function usersync.sync_users(bigint[]), usersync.resync_step(integer),
                          usersync.set_sync_source(bigint, text), usersync.reset_field_mapping(),
                          usersync.default_field_mapping(), usersync.preview_resync(integer) to usersync_admin;
grant execute on procedure usersync.resync_all(integer) to usersync_admin;

-- First install only: the default mapping (which also generates the engine). Later runs keep
-- whatever the administrators configured.
do $$
begin
    if not exists (select from usersync.mapping_state) then
        insert into usersync.mapping_state default values;
        perform usersync._generate();
        perform usersync._attach();
        perform usersync.reset_field_mapping();
    else
        lock table usersync.config_lock in exclusive mode;
        -- Installs from before 0.2 recorded no mapping with the version: it is the current one.
        update usersync.mapping_state
           set mapping = (select coalesce(pg_catalog.jsonb_object_agg(m.user_field, m.contact_field), '{}')
                            from usersync.field_mapping m)
         where mapping is null;
        perform usersync._generate();
        perform usersync._attach();
    end if;
end
$$;
