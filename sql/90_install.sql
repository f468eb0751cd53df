-- 90_install.sql: the views over every pair, ownership, grants, and regeneration of each pair.
-- Safe to run again: it changes nothing that is already as it should be, and keeps the pairs,
-- their mapping, settings and links. It creates nothing outside the usersync schema (the pairs'
-- triggers and policies are usersync.attach's, 25_pairs.sql).

do $$ begin perform usersync._rebuild_views(); end $$;

comment on view usersync.synchronized_contacts is
    'User contacts (the "profile icon"), keys as text; up_to_date is false when the mapping changed since the pair was last synced';

create or replace view usersync.pairs as
select a.pair,
       a.users,
       a.contacts,
       a.user_key,
       a.contact_key,
       a.switch_column,
       a.shared_key,
       s.delete_contact_with_user,
       s.delete_user_with_contact,
       m.version as mapping_version,
       m.synced_version = m.version as all_up_to_date,
       a.attached_at,
       a.id
  from usersync.attachments a
  join usersync.settings s on s.pair = a.pair
  join usersync.mapping_state m on m.pair = a.pair;
comment on view usersync.pairs is 'The attached pairs of tables, with their keys, switch and delete settings';

-- The static functions the engine owns (besides each pair's generated ones).
create or replace function usersync._engine_functions()
returns pg_catalog.regprocedure[]
language sql stable set search_path = pg_catalog, pg_temp as $$
    select array['usersync._check_mapping_row()',
           'usersync._mapping_changed()',
           'usersync.default_field_mapping(text)',
           'usersync.reset_field_mapping(text)',
           'usersync._generate(text)',
           'usersync._diagnose(text, text)',
           'usersync._explain_failure(text, text[])',
           'usersync._field_fits(text, text[], text, text)',
           'usersync._sync_users(text, text[])',
           'usersync.sync_users(anycompatiblearray, text)',
           'usersync.sync_users(text)',
           'usersync.resync_step(integer, text)',
           'usersync._set_sync_source(text, text, text)',
           'usersync.set_sync_source(anycompatible, text, text)',
           'usersync.preview_resync(integer, text)',
           'usersync.doctor(text)',
           'usersync._check_rewrite(text)']::pg_catalog.regprocedure[]
$$;

-- Who owns what (docs/sql-api.md, "Ownership"), set by the install and again by usersync.repair()
-- (a restore with --no-owner, by a role that is not a superuser, leaves every function to the
-- restoring role: docs/install.md).
create or replace function usersync._set_owners()
returns void
language plpgsql
set search_path = pg_catalog, pg_temp
as $$
declare
    f record;
begin
    -- The engine: owns every function that writes, so that current_user inside them is
    -- usersync_engine, which is what the guards recognise; the generated ones included.
    for f in select p.oid::pg_catalog.regprocedure as fn, p.proowner = 'usersync_engine'::pg_catalog.regrole as owned
               from pg_catalog.pg_proc p
              where p.pronamespace = 'usersync'::pg_catalog.regnamespace
                and (p.proname ~ '^_g[0-9]+_' or p.oid = any(usersync._engine_functions()))
                and (p.proowner <> 'usersync_engine'::pg_catalog.regrole or not p.prosecdef
                     or not coalesce('search_path=pg_catalog, pg_temp' = any(p.proconfig), false)) loop
        -- (and SECURITY DEFINER with the pinned path: code running as the engine could have
        -- changed that where the DDL guard is off, and repair may run as a superuser)
        execute pg_catalog.format('alter function %s security definer set search_path = pg_catalog, pg_temp', f.fn);
        if not f.owned then
            execute pg_catalog.format('alter function %s owner to usersync_engine', f.fn);
        end if;
    end loop;
    -- Functions that run as their caller, event-trigger functions above all, belong to the
    -- installing role and never to the engine (60_ddl_guard.sql explains why). Named here because
    -- an upgrade from 0.1, where the engine owned them, keeps the owner through CREATE OR REPLACE.
    for f in select p.oid::pg_catalog.regprocedure as fn
               from pg_catalog.pg_proc p
              where p.proowner = 'usersync_engine'::pg_catalog.regrole
                and p.oid in ('usersync._check_dependencies(boolean, text[])'::pg_catalog.regprocedure,
                              'usersync._on_sql_drop()'::pg_catalog.regprocedure,
                              'usersync._on_ddl_end()'::pg_catalog.regprocedure,
                              'usersync._on_ddl_start()'::pg_catalog.regprocedure,
                              'usersync._on_table_rewrite()'::pg_catalog.regprocedure,
                              'usersync._on_engine_ddl()'::pg_catalog.regprocedure) loop
        execute pg_catalog.format('alter function %s owner to %I', f.fn, current_user);
    end loop;
end
$$;
do $$ begin perform usersync._set_owners(); end $$;

grant select on usersync.attachments, usersync.settings, usersync.field_mapping, usersync.mapping_state,
                usersync.modules to usersync_engine;
grant select, insert, update, delete on usersync.sync_errors, usersync.resync_state to usersync_engine;
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

grant select on usersync.attachments, usersync.pairs, usersync.modules, usersync.settings, usersync.field_mapping,
                usersync.mapping_state, usersync.links, usersync.sync_errors, usersync.resync_state,
                usersync.metadata_fields, usersync.synchronized_contacts to usersync_admin;
grant insert, update, delete, truncate on usersync.field_mapping to usersync_admin;
-- (after the administrators' grant, as an upgrade from 0006 orders the view's privileges)
grant select on usersync.synchronized_contacts to usersync_engine;  -- (preview_resync counts the stale pairs)
-- Read by synchronized_contacts for whoever may read it; it only reads a key from text.
grant execute on function usersync._resync_cursor(text, text, anyelement) to public;
grant update (delete_contact_with_user, delete_user_with_contact) on usersync.settings to usersync_admin;
grant execute on function usersync.sync_users(anycompatiblearray, text), usersync.sync_users(text),
                          usersync.resync_step(integer, text), usersync.set_sync_source(anycompatible, text, text),
                          usersync.reset_field_mapping(text), usersync.default_field_mapping(text),
                          usersync.preview_resync(integer, text), usersync.doctor(text),
                          usersync._only_pair(),  -- (the default of field_mapping.pair)
                          usersync._table_fields(regclass, name, name)  -- (read by metadata_fields)
                       to usersync_admin;
grant execute on procedure usersync.resync_all(integer, text) to usersync_admin;

-- Every pair's generated code and triggers, as this version writes them (an upgrade changes them).
do $$
declare
    p text;
begin
    lock table usersync.config_lock in exclusive mode;
    for p in select a.pair from usersync.attachments a order by a.id loop
        perform usersync._attach_grants(p);
        perform usersync._generate(p);
        perform usersync._attach_triggers(p);
    end loop;
end
$$;
