-- 60_ddl_guard.sql: event triggers that protect what the engine depends on.
--
-- Refused with US005: dropping a module table; dropping, renaming or retyping a column that the
-- mapping, the key or the switch uses; disabling, renaming or (unless superuser) dropping the
-- engine's triggers; rules on a module table; any function owned by usersync_engine that is not
-- SECURITY DEFINER with the pinned search_path. Any other ALTER TABLE of a module (a new custom
-- field, say), a new trigger, index or policy on one, regenerates the engine's functions so they
-- match the table. DROP SCHEMA usersync CASCADE uninstalls and is allowed.
--
-- Ownership (docs/sql-api.md, "Ownership"): these functions run as the role that issued the DDL
-- (often a superuser), so they are owned by the installing role, never by usersync_engine: a
-- role that could replace them would run its code as whoever next runs DDL.

-- The types of the mapped fields when the engine was last generated: a retype is seen by
-- comparing against them.
create or replace function usersync._mapped_field_types()
returns jsonb language sql stable set search_path = pg_catalog, pg_temp as $$
    select coalesce(pg_catalog.jsonb_object_agg(f.module || '.' || f.field, f.data_type), '{}')
      from usersync.field_mapping m
      join usersync.metadata_fields f
        on (f.module = 'users' and f.field = m.user_field) or (f.module = 'contacts' and f.field = m.contact_field)
$$;

-- Runs as the installing role, inside the DDL guard's event triggers.
create or replace function usersync._check_dependencies(p_missing_triggers_allowed boolean default false)
returns void
language plpgsql
set search_path = pg_catalog, pg_temp
as $$
declare
    m record;
    recorded jsonb := (select s.field_types from usersync.mapping_state s);
    t record;
begin
    for m in select mo.module, mo.relation, mo.key_column, mo.switch_column from usersync.modules mo loop
        for t in select c.col from (values (m.key_column), (m.switch_column)) c(col)
                  where c.col is not null
                    and not exists (select from pg_catalog.pg_attribute a
                                     where a.attrelid = m.relation and a.attname = c.col and not a.attisdropped) loop
            raise exception using errcode = 'US005',
                message = pg_catalog.format('column %I of %s is used by usersync and cannot be dropped or renamed',
                                            t.col, m.relation),
                hint = 'It is the module''s key or synchronization switch.';
        end loop;
        -- Rules rewrite the engine's own writes (DO INSTEAD NOTHING would silently drop them).
        for t in select r.rulename from pg_catalog.pg_rewrite r
                  where r.ev_class = m.relation and r.rulename <> '_RETURN' loop
            raise exception using errcode = 'US005',
                message = pg_catalog.format('rule %I on %s is not allowed: the table is synchronized by usersync',
                                            t.rulename, m.relation),
                detail = 'A rule rewrites the engine''s own writes, which could then silently not happen.',
                hint = 'Use a trigger instead of a rule.';
        end loop;
        for t in select et.name, et.fn, tg.tgname, tg.tgenabled
                   from usersync._engine_triggers() et
                   left join pg_catalog.pg_trigger tg
                     on tg.tgrelid = m.relation and tg.tgfoid = pg_catalog.to_regprocedure(et.fn)
                  where et.module = m.module
                    and (tg.tgname is distinct from et.name::name or tg.tgenabled not in ('O', 'A')) loop
            if t.tgname is null and p_missing_triggers_allowed then
                continue;
            end if;
            raise exception using errcode = 'US005',
                message = pg_catalog.format('trigger %I on %s belongs to usersync and must stay %s', t.name, m.relation,
                                            case when t.tgname is null then 'in place'
                                                 when t.tgname <> t.name::name then 'as it is named'
                                                 else 'enabled' end),
                detail = 'Without it, writes to the module would bypass the synchronization.',
                hint = 'To stop synchronizing a user, switch it off; to uninstall usersync: DROP SCHEMA usersync CASCADE.';
        end loop;
    end loop;
    for m in select fm.user_field, fm.contact_field from usersync.field_mapping fm order by 1 loop
        for t in select x.module, x.field from (values ('users', m.user_field), ('contacts', m.contact_field)) x(module, field)
                  where usersync._field_type(x.module, x.field) is distinct from recorded ->> (x.module || '.' || x.field) loop
            raise exception using errcode = 'US005',
                message = pg_catalog.format('%s field "%s" is used by the field mapping (%s -> %s) and cannot be %s',
                                            rtrim(t.module, 's'), t.field, m.user_field, m.contact_field,
                                            case when usersync._field_type(t.module, t.field) is null then 'dropped or renamed'
                                                 else 'retyped' end),
                hint = pg_catalog.format('Unmap it first: DELETE FROM usersync.field_mapping WHERE user_field = %L',
                                         m.user_field);
        end loop;
    end loop;
end
$$;

create or replace function usersync._on_sql_drop()
returns event_trigger
language plpgsql
security definer
set search_path = pg_catalog, pg_temp
as $$
declare
    o record;
begin
    if exists (select from pg_catalog.pg_event_trigger_dropped_objects() d
                where d.object_type = 'schema' and d.object_name = 'usersync') then
        return;  -- uninstalling
    end if;
    for o in select d.* , mo.module, mo.relation from pg_catalog.pg_event_trigger_dropped_objects() d
               join usersync.modules mo on mo.relation = d.objid and d.classid = 'pg_catalog.pg_class'::pg_catalog.regclass loop
        if o.object_type = 'table' then
            raise exception using errcode = 'US005',
                message = pg_catalog.format('table %s is the %s module synchronized by usersync and cannot be dropped',
                                            o.object_identity, o.module),
                hint = 'Uninstall usersync first: DROP SCHEMA usersync CASCADE.';
        end if;
    end loop;
    -- Columns: the mapping check at ddl_command_end names the mapping; nothing else to do here.
    -- Triggers are recognised by the function they call, whatever their name. A superuser may
    -- drop one (session_user, not current_user, tells who asked; it changes only through SET
    -- SESSION AUTHORIZATION, which only a superuser may run).
    if exists (select from pg_catalog.pg_event_trigger_dropped_objects() d where d.object_type = 'trigger') then
        perform usersync._check_dependencies(
            p_missing_triggers_allowed => (select r.rolsuper from pg_catalog.pg_roles r where r.rolname = session_user));
    end if;
end
$$;

create or replace function usersync._on_ddl_end()
returns event_trigger
language plpgsql
security definer
set search_path = pg_catalog, pg_temp
as $$
begin
    -- A command on a module table, or on an index, trigger, rule or policy of one.
    if not exists (select from pg_catalog.pg_event_trigger_ddl_commands() c
                     join usersync.modules mo
                       on mo.relation = case c.classid
                            when 'pg_catalog.pg_class'::pg_catalog.regclass then
                                coalesce((select i.indrelid from pg_catalog.pg_index i where i.indexrelid = c.objid), c.objid)
                            when 'pg_catalog.pg_trigger'::pg_catalog.regclass then
                                (select t.tgrelid from pg_catalog.pg_trigger t where t.oid = c.objid)
                            when 'pg_catalog.pg_rewrite'::pg_catalog.regclass then
                                (select r.ev_class from pg_catalog.pg_rewrite r where r.oid = c.objid)
                            when 'pg_catalog.pg_policy'::pg_catalog.regclass then
                                (select p.polrelid from pg_catalog.pg_policy p where p.oid = c.objid)
                          end) then
        return;
    end if;
    -- A missing engine trigger is the drop guard's business (a superuser may drop one); here
    -- triggers are being created, possibly one by one by usersync._attach().
    perform usersync._check_dependencies(p_missing_triggers_allowed => true);
    lock table usersync.config_lock in exclusive mode;
    perform usersync._generate();
end
$$;

-- Every function usersync_engine owns runs as usersync_engine, whoever calls it: SECURITY DEFINER
-- with the pinned search_path. An invoker function (or an aggregate, whose support functions run
-- as the caller) owned by the engine would run the engine's code with its caller's privileges, a
-- superuser's among them.
create or replace function usersync._on_routine_change()
returns event_trigger
language plpgsql
security definer
set search_path = pg_catalog, pg_temp
as $$
declare
    f record;
begin
    for f in select p.oid::pg_catalog.regprocedure as fn
               from pg_catalog.pg_event_trigger_ddl_commands() c
               join pg_catalog.pg_proc p on p.oid = c.objid and c.classid = 'pg_catalog.pg_proc'::pg_catalog.regclass
              where p.proowner = (select r.oid from pg_catalog.pg_roles r where r.rolname = 'usersync_engine')
                and (not p.prosecdef or p.prokind not in ('f', 'p')
                     or not coalesce('search_path=pg_catalog, pg_temp' = any(p.proconfig), false))
              limit 1 loop
        raise exception using errcode = 'US005',
            message = pg_catalog.format('function %s is owned by usersync_engine and must be SECURITY DEFINER '
                                        'with search_path = pg_catalog, pg_temp', f.fn),
            detail = 'A function of the engine that ran as its caller would give the engine its caller''s privileges.',
            hint = 'Functions owned by usersync_engine are written by usersync only; reinstall with usersync db upgrade.';
    end loop;
end
$$;

drop event trigger if exists usersync_guard_drop;
create event trigger usersync_guard_drop on sql_drop
    execute function usersync._on_sql_drop();

drop event trigger if exists usersync_guard_alter;
create event trigger usersync_guard_alter on ddl_command_end
    when tag in ('ALTER TABLE', 'ALTER TRIGGER', 'CREATE TRIGGER', 'CREATE INDEX', 'ALTER INDEX',
                 'CREATE RULE', 'CREATE POLICY', 'ALTER POLICY')
    execute function usersync._on_ddl_end();

drop event trigger if exists usersync_guard_routines;
create event trigger usersync_guard_routines on ddl_command_end
    when tag in ('CREATE FUNCTION', 'ALTER FUNCTION', 'CREATE PROCEDURE', 'ALTER PROCEDURE', 'ALTER ROUTINE',
                 'CREATE AGGREGATE', 'ALTER AGGREGATE')
    execute function usersync._on_routine_change();
