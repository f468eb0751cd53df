-- 60_ddl_guard.sql: event triggers that protect what the engine depends on.
--
-- Refused with US005: dropping a module table; dropping, renaming or retyping a column that the
-- mapping, the key or the switch uses; disabling or (unless superuser) dropping the engine's
-- triggers. Any other ALTER TABLE of a module (a new custom field, say) regenerates the engine's
-- functions so they match the table. DROP SCHEMA usersync CASCADE uninstalls and is allowed.

create or replace function usersync._trigger_names()
returns table (module text, name text)
language sql immutable set search_path = '' as $$
    values ('users', 'usersync_after_insert'), ('users', 'usersync_after_update'),
           ('users', 'usersync_after_delete'), ('users', 'usersync_before_truncate'),
           ('contacts', 'usersync_after_update'), ('contacts', 'usersync_before_delete'),
           ('contacts', 'usersync_after_delete'), ('contacts', 'usersync_before_truncate')
$$;

-- The types of the mapped fields when the engine was last generated: a retype is seen by
-- comparing against them.
create or replace function usersync._mapped_field_types()
returns jsonb language sql stable set search_path = '' as $$
    select coalesce(pg_catalog.jsonb_object_agg(f.module || '.' || f.field, f.data_type), '{}')
      from usersync.field_mapping m
      join usersync.metadata_fields f
        on (f.module = 'users' and f.field = m.user_field) or (f.module = 'contacts' and f.field = m.contact_field)
$$;

create or replace function usersync._check_dependencies()
returns void
language plpgsql
security definer
set search_path = ''
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
        for t in select tn.name, tg.tgenabled from usersync._trigger_names() tn
                   left join pg_catalog.pg_trigger tg on tg.tgrelid = m.relation and tg.tgname = tn.name
                  where tn.module = m.module and tg.tgenabled is distinct from 'O' and tg.tgenabled is distinct from 'A' loop
            raise exception using errcode = 'US005',
                message = pg_catalog.format('trigger %I on %s belongs to usersync and must stay enabled', t.name, m.relation),
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
set search_path = ''
as $$
declare
    o record;
begin
    if exists (select from pg_catalog.pg_event_trigger_dropped_objects() d
                where d.object_type = 'schema' and d.object_name = 'usersync') then
        return;  -- uninstalling
    end if;
    for o in select d.* , mo.module, mo.relation from pg_catalog.pg_event_trigger_dropped_objects() d
               join usersync.modules mo on mo.relation = d.objid and d.classid = 'pg_catalog.pg_class'::regclass loop
        if o.object_type = 'table' then
            raise exception using errcode = 'US005',
                message = pg_catalog.format('table %s is the %s module synchronized by usersync and cannot be dropped',
                                            o.object_identity, o.module),
                hint = 'Uninstall usersync first: DROP SCHEMA usersync CASCADE.';
        end if;
    end loop;
    -- Columns: the mapping check at ddl_command_end names the mapping; nothing else to do here.
    -- Triggers: session_user, not current_user (which is the engine here), tells who asked; it
    -- changes only through SET SESSION AUTHORIZATION, which only a superuser may run.
    if (select r.rolsuper from pg_catalog.pg_roles r where r.rolname = session_user) then
        return;
    end if;
    for o in select d.object_identity
               from pg_catalog.pg_event_trigger_dropped_objects() d
               join usersync._trigger_names() tn on tn.name = d.address_names[3]
               join usersync.modules mo on mo.module = tn.module
                and mo.relation = pg_catalog.to_regclass(pg_catalog.quote_ident(d.address_names[1]) || '.'
                                                         || pg_catalog.quote_ident(d.address_names[2]))
              where d.object_type = 'trigger' loop
        raise exception using errcode = 'US005',
            message = pg_catalog.format('trigger %s belongs to usersync and cannot be dropped', o.object_identity),
            detail = 'Without it, writes to the module would bypass the synchronization.',
            hint = 'To uninstall usersync: DROP SCHEMA usersync CASCADE.';
    end loop;
end
$$;

create or replace function usersync._on_ddl_end()
returns event_trigger
language plpgsql
security definer
set search_path = ''
as $$
begin
    -- A command on a module table, or on an index of one (a new unique index changes what can fail).
    if not exists (select from pg_catalog.pg_event_trigger_ddl_commands() c
                     join usersync.modules mo
                       on mo.relation = c.objid
                       or mo.relation = (select i.indrelid from pg_catalog.pg_index i where i.indexrelid = c.objid)) then
        return;
    end if;
    perform usersync._check_dependencies();
    perform pg_catalog.pg_advisory_xact_lock(usersync._config_lock_key());
    perform usersync._generate();
end
$$;

drop event trigger if exists usersync_guard_drop;
create event trigger usersync_guard_drop on sql_drop
    execute function usersync._on_sql_drop();

drop event trigger if exists usersync_guard_alter;
create event trigger usersync_guard_alter on ddl_command_end
    when tag in ('ALTER TABLE', 'ALTER TRIGGER', 'CREATE INDEX', 'ALTER INDEX')
    execute function usersync._on_ddl_end();
