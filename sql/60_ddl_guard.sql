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
create or replace function usersync._mapped_field_types(p_pair text)
returns jsonb language sql stable set search_path = pg_catalog, pg_temp as $$
    select coalesce(pg_catalog.jsonb_object_agg(f.module || '.' || f.field, f.data_type), '{}')
      from usersync.field_mapping m
      join usersync.metadata_fields f
        on f.pair = m.pair
       and ((f.module = 'users' and f.field = m.user_field) or (f.module = 'contacts' and f.field = m.contact_field))
     where m.pair = p_pair
$$;

-- Runs as the installing role, inside the DDL guard's event triggers: the pairs given (NULL:
-- every pair), so that a command on one pair's tables costs the same with one pair or a thousand.
create or replace function usersync._check_dependencies(p_missing_triggers_allowed boolean default false,
                                                        p_pairs text[] default null)
returns void
language plpgsql
set search_path = pg_catalog, pg_temp
set jit = off  -- catalog queries the planner overestimates: compiling them would cost more than running them
set quote_all_identifiers = off  -- format_type() is compared with what the generator recorded
as $$
declare
    m record;
    t record;
begin
    for m in select mo.pair, mo.pair_id, mo.module, mo.relation, mo.key_column, mo.switch_column
               from usersync.modules mo where p_pairs is null or mo.pair = any(p_pairs)
              order by mo.pair_id, mo.module loop
        for t in select c.col from (values (m.key_column), (m.switch_column)) c(col)
                  where c.col is not null
                    and not exists (select from pg_catalog.pg_attribute a
                                     where a.attrelid = m.relation and a.attname = c.col and not a.attisdropped) loop
            raise exception using errcode = 'US005',
                message = pg_catalog.format('column %I of %s is used by usersync and cannot be dropped or renamed',
                                            t.col, m.relation),
                hint = 'It is the module''s key or synchronization switch.';
        end loop;
        -- A pair is its keys: a key that is not unique lets another row take a pair over.
        if not exists (select from pg_catalog.pg_index i
                         join pg_catalog.pg_attribute a on a.attrelid = i.indrelid and a.attnum = i.indkey[0]
                        where i.indrelid = m.relation and i.indisunique and i.indimmediate and i.indnkeyatts = 1
                          and i.indpred is null and i.indexprs is null and a.attname = m.key_column) then
            raise exception using errcode = 'US005',
                message = pg_catalog.format('the key %I of %s must stay unique: it identifies the pairs of usersync',
                                            m.key_column, m.relation),
                hint = 'Keep the primary key or a unique index on the key column.';
        end if;
        if m.switch_column is not null
           and not exists (select from pg_catalog.pg_attribute a
                            where a.attrelid = m.relation and a.attname = m.switch_column and a.attnotnull
                              and a.atttypid = 'pg_catalog.bool'::pg_catalog.regtype) then
            raise exception using errcode = 'US005',
                message = pg_catalog.format('the switch %I of %s must stay boolean NOT NULL', m.switch_column, m.relation),
                detail = 'A NULL switch is neither on nor off.',
                hint = 'Keep the column boolean and NOT NULL (with a default such as false).';
        end if;
        -- Writes through an inheritance or partition parent fire the parent's statement triggers,
        -- not the module's, and would bypass the engine.
        for t in select i.inhparent::pg_catalog.regclass as parent, i.inhrelid::pg_catalog.regclass as child
                   from pg_catalog.pg_inherits i
                  where m.relation in (i.inhrelid, i.inhparent) loop
            raise exception using errcode = 'US005',
                message = pg_catalog.format('%s cannot be part of an inheritance or partition tree (%s is the parent of %s): '
                                            'it is synchronized by usersync', m.relation, t.parent, t.child),
                detail = 'Writes through the parent would not fire the engine''s triggers on the module table.',
                hint = 'Keep the module table on its own.';
        end loop;
        -- The engine's policy, as usersync.attach() made it (missing only while attaching).
        if (exists (select from pg_catalog.pg_policy p where p.polrelid = m.relation and p.polname = 'usersync_engine')
            and not usersync._engine_policy_as_made(m.relation))
           or (not p_missing_triggers_allowed
               and not exists (select from pg_catalog.pg_policy p
                                where p.polrelid = m.relation and p.polname = 'usersync_engine')) then
            raise exception using errcode = 'US005',
                message = pg_catalog.format('policy usersync_engine on %s belongs to usersync and must stay as it is',
                                            m.relation),
                detail = 'It lets the engine see and write every row it synchronizes when row-level security is on.',
                hint = 'Add policies of your own for other roles; to uninstall usersync: usersync uninstall.';
        end if;
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
                   from usersync._engine_triggers(m.pair_id) et
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
                hint = pg_catalog.format('To stop synchronizing the pair: SELECT usersync.detach(%L).', m.pair);
        end loop;
    end loop;
    for m in select fm.pair, fm.user_field, fm.contact_field, s.field_types as recorded
               from usersync.field_mapping fm join usersync.mapping_state s on s.pair = fm.pair
              where p_pairs is null or fm.pair = any(p_pairs)
              order by 1, 2 loop
        for t in select x.module, x.field from (values ('users', m.user_field), ('contacts', m.contact_field)) x(module, field)
                  where usersync._field_type(m.pair, x.module, x.field)
                        is distinct from m.recorded ->> (x.module || '.' || x.field) loop
            raise exception using errcode = 'US005',
                message = pg_catalog.format('%s field "%s" is used by the field mapping (%s -> %s) and cannot be %s',
                                            rtrim(t.module, 's'), t.field, m.user_field, m.contact_field,
                                            case when usersync._field_type(m.pair, t.module, t.field) is null then 'dropped or renamed'
                                                 else 'retyped' end),
                hint = pg_catalog.format('Unmap it first: DELETE FROM usersync.field_mapping WHERE pair = %L AND user_field = %L',
                                         m.pair, m.user_field);
        end loop;
    end loop;
end
$$;

-- Who issued a DROP: recorded at ddl_command_start by a caller-rights function (current_user is
-- then the role that issued it), and read at sql_drop by the guard, which runs as the installer.
-- session_user would not do: a superuser's session can run a table owner's SECURITY DEFINER code.
-- Nothing runs between the two events, so a value set beforehand by anyone is overwritten.
-- (Session-level, not LOCAL: a SET LOCAL inside a function with SET clauses ends with the function.)
create or replace function usersync._on_ddl_start()
returns event_trigger
language plpgsql
set search_path = pg_catalog, pg_temp
as $$
begin
    perform pg_catalog.set_config('usersync.ddl_by_superuser',
                                  (select r.rolsuper from pg_catalog.pg_roles r where r.rolname = current_user)::text,
                                  false);
end
$$;

create or replace function usersync._on_sql_drop()
returns event_trigger
language plpgsql
security definer
set search_path = pg_catalog, pg_temp
set jit = off  -- catalog queries the planner overestimates: compiling them would cost more than running them
as $$
declare
    o record;
begin
    if exists (select from pg_catalog.pg_event_trigger_dropped_objects() d
                where d.object_type = 'schema' and d.object_name = 'usersync') then
        return;  -- uninstalling
    end if;
    for o in select d.* , mo.module, mo.relation, mo.pair from pg_catalog.pg_event_trigger_dropped_objects() d
               join usersync.modules mo on mo.relation = d.objid and d.classid = 'pg_catalog.pg_class'::pg_catalog.regclass loop
        if o.object_type = 'table' then
            raise exception using errcode = 'US005',
                message = pg_catalog.format('table %s is the %s table of pair %L synchronized by usersync and cannot be dropped',
                                            o.object_identity, o.module, o.pair),
                hint = pg_catalog.format('Detach the pair first: SELECT usersync.detach(%L).', o.pair);
        end if;
    end loop;
    -- A pair's links table goes with its pair (usersync.detach), not on its own.
    for o in select d.object_identity, a.pair from pg_catalog.pg_event_trigger_dropped_objects() d
               join usersync.attachments a on d.object_type = 'table' and d.schema_name = 'usersync'
                                          and d.object_name = 'links_' || a.id loop
        raise exception using errcode = 'US005',
            message = pg_catalog.format('table %s holds the links of pair %L and cannot be dropped', o.object_identity, o.pair),
            hint = pg_catalog.format('Detach the pair instead: SELECT usersync.detach(%L).', o.pair);
    end loop;
    -- The engine's policy on a module table: without it, row-level security would hide rows from it.
    for o in select d.object_identity from pg_catalog.pg_event_trigger_dropped_objects() d
              where d.object_type = 'policy' and d.address_names[3] = 'usersync_engine'
                and exists (select from usersync.modules mo
                             where mo.relation = pg_catalog.to_regclass(pg_catalog.quote_ident(d.address_names[1]) || '.'
                                                                        || pg_catalog.quote_ident(d.address_names[2]))) loop
        raise exception using errcode = 'US005',
            message = pg_catalog.format('policy %s belongs to usersync and cannot be dropped', o.object_identity),
            detail = 'With row-level security on, the engine would no longer see every row it synchronizes.',
            hint = 'To uninstall usersync: usersync uninstall.';
    end loop;
    -- Columns: the mapping check at ddl_command_end names the mapping; nothing else to do here.
    -- Triggers (recognised by the function they call, whatever their name; a superuser may drop
    -- one: usersync._on_ddl_start recorded who issued the DROP), and indexes or constraints (a
    -- key's uniqueness may go with a spare unique index): check what is left.
    -- (the pairs of the table a trigger, constraint or policy was on; an index names no table:
    -- every pair then)
    if exists (select from pg_catalog.pg_event_trigger_dropped_objects() d
                where d.object_type in ('trigger', 'index', 'table constraint', 'policy')) then
        perform usersync._check_dependencies(
            p_missing_triggers_allowed => coalesce(pg_catalog.current_setting('usersync.ddl_by_superuser', true), '')
                                          = 'true',
            p_pairs => case when exists (select from pg_catalog.pg_event_trigger_dropped_objects() d
                                          where d.object_type = 'index') then null
                            else array(select distinct mo.pair
                                         from pg_catalog.pg_event_trigger_dropped_objects() d
                                         join usersync.modules mo
                                           on mo.relation = pg_catalog.to_regclass(
                                                  pg_catalog.quote_ident(d.address_names[1]) || '.'
                                                  || pg_catalog.quote_ident(d.address_names[2]))
                                        where d.object_type in ('trigger', 'table constraint', 'policy')) end);
    end if;
end
$$;

-- A rewrite of a module table (ALTER COLUMN ... TYPE ... USING, even to the same type) changes
-- stored values without firing a trigger. Recorded here, checked at ddl_command_end.
create table if not exists usersync.rewrites (
    relation regclass not null,
    xid      xid8 not null default pg_catalog.pg_current_xact_id()
);
comment on table usersync.rewrites is 'Module tables rewritten by the current DDL (usersync._on_table_rewrite); empty between commands';

create or replace function usersync._on_table_rewrite()
returns event_trigger
language plpgsql
security definer
set search_path = pg_catalog, pg_temp
as $$
begin
    -- Recorded in a table no other role can write (a setting could be cleared by the USING
    -- expression of the very ALTER that rewrites); read and cleared at ddl_command_end.
    insert into usersync.rewrites (relation)
    select distinct mo.relation from usersync.modules mo where mo.relation = pg_catalog.pg_event_trigger_table_rewrite_oid();
end
$$;

-- After a module table was rewritten: its keys and switches must still match the links (else
-- refused). Mapped values may have changed too: usersync._on_ddl_end then syncs every pair.
-- It reads the application's tables, so it runs as the engine (SECURITY DEFINER): as the
-- installer, an index predicate or a policy of the tables' owner would run as the installer (a
-- superuser), which the owner could set off with DDL on its own table.
create or replace function usersync._check_rewrite(p_pair text)
returns void
language plpgsql
security definer
set search_path = pg_catalog, pg_temp
as $$
declare
    a usersync.attachments := usersync._pair(p_pair);
    broken boolean;
begin
    execute pg_catalog.format(
        'select exists (select from %6$s l where not exists (select from %1$s u where u.%2$I = l.user_id))'
        ' or exists (select from %6$s l where not exists (select from %3$s c where c.%4$I = l.contact_id))'
        ' or exists (select from %6$s l join %1$s u on u.%2$I = l.user_id where l.active <> %5$s)',
        a.users, a.user_key, a.contacts, a.contact_key,
        coalesce('u.' || pg_catalog.quote_ident(a.switch_column), 'true'), usersync._links_table(a.id)) into broken;
    if broken then
        raise exception using errcode = 'US005',
            message = pg_catalog.format('this ALTER TABLE rewrote keys or switches of synchronized rows of pair %L', a.pair),
            detail = 'The links of usersync and the rows they pair would no longer match.',
            hint = 'Change keys and switches with UPDATE (keys of linked rows cannot change), not with ALTER ... USING.';
    end if;
end
$$;

create or replace function usersync._on_ddl_end()
returns event_trigger
language plpgsql
security definer
set search_path = pg_catalog, pg_temp
set jit = off  -- catalog queries the planner overestimates: compiling them would cost more than running them
set quote_all_identifiers = off
as $$
declare
    concerned text[];
    rewritten regclass[];
    retyped boolean;
    p text;
    id integer;
begin
    -- Functions created or replaced (the generator's, above all) concern no pair.
    if not exists (select from pg_catalog.pg_event_trigger_ddl_commands() c
                    where c.classid <> 'pg_catalog.pg_proc'::pg_catalog.regclass) then
        return;
    end if;
    -- Any table joining an inheritance or partition tree with a module (ATTACH PARTITION and
    -- INHERIT name the parent, which is not a module).
    if exists (select from pg_catalog.pg_inherits i join usersync.modules mo on mo.relation in (i.inhrelid, i.inhparent)) then
        perform usersync._check_dependencies(p_missing_triggers_allowed => true,
                                             p_pairs => array(select mo.pair from pg_catalog.pg_inherits i
                                                                join usersync.modules mo
                                                                  on mo.relation in (i.inhrelid, i.inhparent)));
    end if;
    -- The pairs a command concerns: on one of their tables, on an index, trigger, rule or policy
    -- of one, on its schema, or on the type of one of its columns.
    concerned := array(
        select distinct mo.pair
          from pg_catalog.pg_event_trigger_ddl_commands() c
          join usersync.modules mo
            on mo.relation = case c.classid
                 when 'pg_catalog.pg_class'::pg_catalog.regclass then
                     coalesce((select i.indrelid from pg_catalog.pg_index i where i.indexrelid = c.objid), c.objid)
                 when 'pg_catalog.pg_trigger'::pg_catalog.regclass then
                     (select t.tgrelid from pg_catalog.pg_trigger t where t.oid = c.objid)
                 when 'pg_catalog.pg_rewrite'::pg_catalog.regclass then
                     (select r.ev_class from pg_catalog.pg_rewrite r where r.oid = c.objid)
                 when 'pg_catalog.pg_policy'::pg_catalog.regclass then
                     (select x.polrelid from pg_catalog.pg_policy x where x.oid = c.objid)
               end
            or (c.classid = 'pg_catalog.pg_namespace'::pg_catalog.regclass
                and c.objid = (select r.relnamespace from pg_catalog.pg_class r where r.oid = mo.relation))
            or (c.classid = 'pg_catalog.pg_type'::pg_catalog.regclass
                and exists (select from pg_catalog.pg_attribute a
                             where a.attrelid = mo.relation and a.attnum > 0 and a.atttypid = c.objid))
         order by 1);
    if pg_catalog.cardinality(concerned) = 0 then
        return;
    end if;
    -- ALTER TYPE of a column's type (an enum value renamed): stored values read differently now.
    retyped := exists (select from pg_catalog.pg_event_trigger_ddl_commands() c
                        where c.classid = 'pg_catalog.pg_type'::pg_catalog.regclass);
    with done as (delete from usersync.rewrites w where w.xid = pg_catalog.pg_current_xact_id() returning w.relation)
    select array(select distinct d.relation from done d) into rewritten;
    -- A missing engine trigger is the drop guard's business (a superuser may drop one); here
    -- triggers are being created, possibly one by one by usersync.attach().
    perform usersync._check_dependencies(p_missing_triggers_allowed => true, p_pairs => concerned);
    perform usersync._lock_config_exclusive();
    foreach p in array concerned loop
        -- The engine's own triggers being created (attach, repair) change nothing it generates.
        continue when not exists (select from pg_catalog.pg_event_trigger_ddl_commands() c
                                   where not (c.command_tag = 'CREATE TRIGGER'
                                              and exists (select from pg_catalog.pg_trigger tg
                                                            join pg_catalog.pg_proc f on f.oid = tg.tgfoid
                                                           where tg.oid = c.objid
                                                             and f.pronamespace = 'usersync'::pg_catalog.regnamespace)));
        perform usersync._generate(p);
        -- A foreign key that restricts deleting a user was added to an attached pair: its
        -- users need the trigger that deletes their contacts first (not while attach is still
        -- creating the pair's triggers one by one).
        id := (usersync._pair(p)).id;
        if usersync._fk_restricts(id)
           and not exists (select from pg_catalog.pg_trigger tg
                            where tg.tgfoid = pg_catalog.to_regprocedure('usersync._g' || id || '_on_users_delete_before()'))
           and not exists (select from usersync._engine_triggers(id) et
                            where et.fn <> 'usersync._g' || id || '_on_users_delete_before()'
                              and not exists (select from pg_catalog.pg_trigger tg
                                               where tg.tgfoid = pg_catalog.to_regprocedure(et.fn))) then
            perform usersync._attach_triggers(p);
        end if;
        if retyped or exists (select from usersync.attachments a
                               where a.pair = p and (a.users = any(rewritten) or a.contacts = any(rewritten))) then
            perform usersync._check_rewrite(p);
            perform usersync._sync_users(p, null);  -- values changed behind the triggers
        end if;
    end loop;
end
$$;

-- usersync_engine creates and alters its own functions, nothing else, and every function it
-- owns runs as usersync_engine, whoever calls it: SECURITY DEFINER with the pinned search_path.
-- An invoker function, an aggregate (whose support functions run as the caller) or a relation
-- (a temporary view planted in a caller's pg_temp, say) owned by the engine would run code with
-- its caller's privileges, a superuser's among them. Runs as the role that issued the DDL, so
-- current_user tells whether the engine did; needs no privilege of its own.
create or replace function usersync._on_engine_ddl()
returns event_trigger
language plpgsql
set search_path = pg_catalog, pg_temp
set jit = off  -- catalog queries the planner overestimates: compiling them would cost more than running them
as $$
declare
    engine pg_catalog.oid := (select r.oid from pg_catalog.pg_roles r where r.rolname = 'usersync_engine');
    c record;
begin
    for c in select d.command_tag, d.object_identity, d.classid, d.objid, p.prosecdef, p.prokind, p.proconfig,
                    coalesce(p.proowner, r.relowner, t.typowner, o.oprowner) as owner
               from pg_catalog.pg_event_trigger_ddl_commands() d
               left join pg_catalog.pg_proc p on d.classid = 'pg_catalog.pg_proc'::pg_catalog.regclass and p.oid = d.objid
               left join pg_catalog.pg_class r on d.classid = 'pg_catalog.pg_class'::pg_catalog.regclass and r.oid = d.objid
               left join pg_catalog.pg_type t on d.classid = 'pg_catalog.pg_type'::pg_catalog.regclass and t.oid = d.objid
               left join pg_catalog.pg_operator o on d.classid = 'pg_catalog.pg_operator'::pg_catalog.regclass
                                                  and o.oid = d.objid loop
        if c.classid = 'pg_catalog.pg_proc'::pg_catalog.regclass and c.owner = engine
           and (not c.prosecdef or c.prokind not in ('f', 'p')
                or not coalesce('search_path=pg_catalog, pg_temp' = any(c.proconfig), false)) then
            raise exception using errcode = 'US005',
                message = pg_catalog.format('function %s is owned by usersync_engine and must be SECURITY DEFINER '
                                            'with search_path = pg_catalog, pg_temp', c.object_identity),
                detail = 'A function of the engine that ran as its caller would give the engine its caller''s privileges.',
                hint = 'Functions owned by usersync_engine are written by usersync only; reinstall with usersync db upgrade.';
        end if;
        if (current_user = 'usersync_engine' or c.owner = engine)
           and c.classid is distinct from 'pg_catalog.pg_proc'::pg_catalog.regclass
           and c.command_tag <> 'REVOKE' then  -- the engine revokes PUBLIC from its functions; it grants nothing
            raise exception using errcode = 'US005',
                message = pg_catalog.format('usersync_engine may own functions only, not %s (%s)', c.object_identity,
                                            c.command_tag),
                detail = 'An object of the engine in a caller''s session (a temporary view, say) would run code with '
                         'the caller''s privileges.',
                hint = 'Code that runs as usersync_engine (the tables'' own triggers, defaults or policies included) '
                       'must not create objects.';
        end if;
    end loop;
end
$$;

-- The event triggers of the guard (usersync.doctor checks them, usersync.repair restores them).
create or replace function usersync._event_triggers()
returns table (name text, event text, fn text)
language sql immutable set search_path = pg_catalog, pg_temp as $$
    values ('usersync_guard_drop', 'sql_drop', 'usersync._on_sql_drop()'),
           ('usersync_guard_drop_start', 'ddl_command_start', 'usersync._on_ddl_start()'),
           ('usersync_guard_rewrite', 'table_rewrite', 'usersync._on_table_rewrite()'),
           -- No tag filter: ALTER VIEW / MATERIALIZED VIEW / FOREIGN TABLE ... RENAME COLUMN work on a
           -- plain table too, and ALTER TYPE changes what stored values read as. The function tells
           -- which commands concern a pair.
           ('usersync_guard_alter', 'ddl_command_end', 'usersync._on_ddl_end()'),
           ('usersync_guard_engine', 'ddl_command_end', 'usersync._on_engine_ddl()')
$$;

-- Creates (again) every event trigger of the guard, enabled. Creating event triggers needs a
-- superuser; run by the install and by usersync.repair().
create or replace function usersync._install_event_triggers()
returns void
language plpgsql
set search_path = pg_catalog, pg_temp
as $$
declare
    t record;
begin
    if not (select r.rolsuper from pg_catalog.pg_roles r where r.rolname = current_user) then
        raise warning using
            message = 'usersync: installed without the DDL guard: creating event triggers needs a superuser',
            detail = 'Off without it: refusing DDL that breaks the engine (dropping or retyping a mapped column, '
                     'disabling its triggers, rules, ...) and regenerating its code when an attached table changes. '
                     'Instead, the generated code checks the tables'' columns on every write and fails (US005) when '
                     'they changed; usersync doctor reports it and usersync repair generates the code again.',
            hint = 'A superuser can add the guard later: usersync repair.';
        return;
    end if;
    for t in select * from usersync._event_triggers() loop
        execute pg_catalog.format('drop event trigger if exists %I', t.name);
        execute pg_catalog.format('create event trigger %I on %s execute function %s', t.name, t.event, t.fn);
    end loop;
end
$$;

do $$ begin perform usersync._install_event_triggers(); end $$;
