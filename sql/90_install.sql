-- 90_install.sql: ownership, grants, the triggers on the modules, and the first generation.
-- Safe to run again: it changes nothing that is already as it should be, and keeps the
-- administrators' mapping and settings.

-- Attach the engine's triggers to the module tables named in usersync.modules. Existing
-- triggers with the right definition are left alone (the DDL guard refuses to drop them for
-- anyone but a superuser).
create or replace function usersync._attach()
returns void
language plpgsql
set search_path = ''
as $$
declare
    mu usersync.modules;
    mc usersync.modules;
    t record;
    seq text;
    existing text;
    wanted text;
begin
    select * into mu from usersync.modules where module = 'users';
    select * into mc from usersync.modules where module = 'contacts';
    for t in
        select * from (values
            (mu.relation, 'usersync_after_insert',
             'after insert on %s referencing new table as new_rows for each statement when (current_user <> ''usersync_engine'') execute function usersync._g_on_users_insert()'),
            (mu.relation, 'usersync_after_update',
             'after update on %s referencing old table as old_rows new table as new_rows for each statement when (current_user <> ''usersync_engine'') execute function usersync._g_on_users_update()'),
            (mu.relation, 'usersync_after_delete',
             'after delete on %s referencing old table as old_rows for each statement when (current_user <> ''usersync_engine'') execute function usersync._g_on_users_delete()'),
            (mu.relation, 'usersync_before_truncate',
             'before truncate on %s for each statement when (current_user <> ''usersync_engine'') execute function usersync._g_on_users_truncate()'),
            -- Contacts: row triggers that the engine's own writes skip (WHEN is checked before the
            -- function is even called), so syncing a million contacts pays nothing for them.
            (mc.relation, 'usersync_after_update',
             'after update on %s for each row when (current_user <> ''usersync_engine'') execute function usersync._g_on_contact_update()'),
            (mc.relation, 'usersync_before_delete',
             'before delete on %s for each row when (current_user <> ''usersync_engine'') execute function usersync._g_on_contact_delete_before()'),
            (mc.relation, 'usersync_after_delete',
             'after delete on %s for each row when (current_user <> ''usersync_engine'') execute function usersync._g_on_contact_delete_after()'),
            (mc.relation, 'usersync_before_truncate',
             'before truncate on %s for each statement when (current_user <> ''usersync_engine'') execute function usersync._g_on_contacts_truncate()')
        ) v(rel, name, def)
    loop
        wanted := pg_catalog.format('create trigger %I ', t.name) || pg_catalog.format(t.def, t.rel);
        select pg_catalog.pg_get_triggerdef(tg.oid) into existing
          from pg_catalog.pg_trigger tg where tg.tgrelid = t.rel and tg.tgname = t.name;
        if existing is not null and lower(existing) = lower(wanted) then
            continue;
        end if;
        if existing is not null then
            execute pg_catalog.format('drop trigger %I on %s', t.name, t.rel);
        end if;
        execute wanted;
    end loop;

    execute pg_catalog.format('grant select, insert, update, delete on %s, %s to usersync_engine', mu.relation, mc.relation);
    for seq in select pg_catalog.pg_get_serial_sequence(mo.relation::text, mo.key_column) from usersync.modules mo loop
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
alter function usersync._check_dependencies() owner to usersync_engine;
alter function usersync._on_sql_drop() owner to usersync_engine;
alter function usersync._on_ddl_end() owner to usersync_engine;

grant select on usersync.modules, usersync.settings, usersync.field_mapping, usersync.mapping_state to usersync_engine;
grant select, insert, update, delete on usersync.links, usersync.sync_errors, usersync.resync_state to usersync_engine;
grant insert, delete on usersync.field_mapping to usersync_engine;
grant update on usersync.mapping_state to usersync_engine;
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
        perform pg_catalog.pg_advisory_xact_lock(usersync._config_lock_key());
        perform usersync._generate();
        perform usersync._attach();
    end if;
end
$$;
