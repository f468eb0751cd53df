-- 65_doctor.sql: is the install whole, and making it whole again.
--
-- usersync.doctor(pair)  compares what should exist with what does, and reads only: the guard's
--     event triggers; for each pair its links table, generated functions (and whether they match
--     the tables and the mapping as they are now), its triggers (present, named, enabled), the
--     engine's policy and grants on its tables; and rows that a write behind the triggers left
--     out of step (a user switched on without a contact, a link to a row that is gone).
-- usersync.repair(pair)  restores what doctor finds missing, as the installer (it creates
--     triggers on the application's tables; the event triggers only as a superuser), then syncs
--     the pair's rows.
--
-- A superuser may drop an engine trigger (the guard lets superusers) or disable the event
-- triggers; a write with session_replication_role = replica skips the triggers. Nothing of that
-- is silent any more: usersync status reports a damaged install, doctor says what, repair fixes.

create or replace function usersync.doctor(pair text default null)
returns table (pair_name text, problem text, repair text)
language plpgsql
security definer
set search_path = pg_catalog, pg_temp set standard_conforming_strings = on  -- (its literals hold backslashes)
set jit = off  -- catalog queries
as $$
declare
    a usersync.attachments;
    t record;
    n bigint;
    before_code text;
    after_code text;
    code_query text;
    links text;
begin
    if not exists (select from pg_catalog.pg_event_trigger x join usersync._event_triggers() e on e.name = x.evtname) then
        -- (an install without a superuser: docs/install.md says what is off, and what is not)
        return query select null::text, 'the DDL guard is off: no event trigger of usersync exists'::text,
                            'usersync repair, as a superuser (until then the generated code checks the tables'' '
                            'columns on every write)'::text;
    end if;
    for t in select e.name from usersync._event_triggers() e
              where exists (select from pg_catalog.pg_event_trigger x join usersync._event_triggers() y on y.name = x.evtname)
                and not exists (select from pg_catalog.pg_event_trigger x
                                 where x.evtname = e.name and x.evtfoid = pg_catalog.to_regprocedure(e.fn)
                                   and x.evtenabled in ('O', 'A')) loop
        return query select null::text, pg_catalog.format('event trigger %I of the DDL guard is missing or disabled', t.name),
                            'usersync repair, as a superuser (until then the generated code checks the tables'' '
                            'columns on every write)'::text;
    end loop;
    -- Functions that must run as the engine (a restore with --no-owner gives them to the restorer).
    for t in select f.fn, p.proowner = 'usersync_engine'::pg_catalog.regrole as owned
               from pg_catalog.unnest(usersync._engine_functions()) f(fn)
               join pg_catalog.pg_proc p on p.oid = f.fn
              where p.proowner <> 'usersync_engine'::pg_catalog.regrole or not p.prosecdef
                 or not coalesce('search_path=pg_catalog, pg_temp' = any(p.proconfig), false) loop
        return query select null::text,
                            case when t.owned
                                 then pg_catalog.format('function %s no longer runs as usersync_engine with its pinned '
                                                        'search_path', t.fn)
                                 else pg_catalog.format('function %s is not owned by usersync_engine', t.fn) end,
                            'usersync repair'::text;
    end loop;
    for a in select * from usersync.attachments x
              where doctor.pair is null or x.pair = (usersync._pair(doctor.pair)).pair order by x.id loop
        links := usersync._links_table(a.id);
        if pg_catalog.to_regclass(links) is null then
            return query select a.pair, pg_catalog.format('its links table %s is missing', links),
                                'detach and attach the pair again'::text;
            continue;
        end if;
        -- Generated functions: each template's, SECURITY DEFINER, owned by the engine.
        for t in select usersync._gen_subst(x.fn, pg_catalog.jsonb_build_object(
                            'G', '_g' || a.id || '_', 'UKT', usersync._key_type(a.users, a.user_key),
                            'CKT', usersync._key_type(a.contacts, a.contact_key))) as fn
                   from usersync._templates() x loop
            if not exists (select from pg_catalog.pg_proc p
                            where p.oid = pg_catalog.to_regprocedure('usersync.' || t.fn) and p.prosecdef
                              and p.proowner = 'usersync_engine'::pg_catalog.regrole
                              and 'search_path=pg_catalog, pg_temp' = any(p.proconfig)) then
                return query select a.pair, pg_catalog.format('generated function usersync.%s is missing or altered', t.fn),
                                    'usersync repair'::text;
            end if;
        end loop;
        -- Generated code that no longer matches the tables and the mapping (a change made while
        -- the guard was off): generate it again in a subtransaction, compare, roll back.
        -- (after any generation of the pair in flight has committed: a resync run finishing
        -- generates it again, and the code read before it would differ from the code made after;
        -- the configuration lock before the generation lock, as a change that generates takes them)
        code_query := pg_catalog.format(
            'select pg_catalog.md5(pg_catalog.string_agg(p.proname || p.prosrc || coalesce(p.proconfig::text, ''''), '''' order by p.proname))'
            ' from pg_catalog.pg_proc p where p.pronamespace = ''usersync''::pg_catalog.regnamespace and p.proname like %L',
            '\_g' || a.id || '\_%');
        before_code := null;
        after_code := null;
        begin
            -- (beside a mapping change, not across it; on a standby or in a read-only transaction
            -- the comparison cannot be made and is skipped)
            lock table usersync.config_lock in share mode;
            perform usersync._lock_generation(a.id);
            execute code_query into before_code;
            perform usersync._generate(a.pair);
            execute code_query into after_code;
            raise sqlstate 'USX00';
        exception
            when sqlstate 'USX00' then
                null;
            when read_only_sql_transaction then
                return query select a.pair, 'its generated code could not be compared here (a read-only transaction '
                                            'or a standby)'::text, 'usersync doctor on the primary'::text;
                after_code := before_code;
        end;
        if before_code is distinct from after_code then
            return query select a.pair, 'its generated code does not match its tables and mapping as they are now'::text,
                                'usersync repair'::text;
        end if;
        for t in select pt.name, pt.rel, tg.tgname, tg.tgenabled
                   from usersync._pair_triggers(a) pt
                   left join pg_catalog.pg_trigger tg on tg.tgrelid = pt.rel and tg.tgfoid = pg_catalog.to_regprocedure(pt.fn)
                  where tg.tgname is distinct from pt.name::name or tg.tgenabled not in ('O', 'A')
                     or not usersync._trigger_is(tg.oid, pt.statement) loop
            return query select a.pair,
                                pg_catalog.format('trigger %I on %s is %s', t.name, t.rel,
                                                  case when t.tgname is null then 'missing'
                                                       when t.tgname <> t.name::name then pg_catalog.format('renamed to %I', t.tgname)
                                                       when t.tgenabled not in ('O', 'A') then 'disabled'
                                                       else 'altered (it no longer fires as usersync made it)' end),
                                'usersync repair'::text;
        end loop;
        for t in select x.rel, x.key, c.relnamespace::pg_catalog.regnamespace as nsp
                   from (values (a.users, a.user_key), (a.contacts, a.contact_key)) x(rel, key)
                   join pg_catalog.pg_class c on c.oid = x.rel loop
            if not (pg_catalog.has_schema_privilege('usersync_engine', t.nsp, 'USAGE')
                    and pg_catalog.has_table_privilege('usersync_engine', t.rel, 'SELECT')
                    and pg_catalog.has_table_privilege('usersync_engine', t.rel, 'INSERT')
                    and pg_catalog.has_table_privilege('usersync_engine', t.rel, 'UPDATE')
                    and pg_catalog.has_table_privilege('usersync_engine', t.rel, 'DELETE')
                    and coalesce(pg_catalog.has_sequence_privilege('usersync_engine',
                                     pg_catalog.pg_get_serial_sequence(t.rel::text, t.key), 'USAGE'), true)) then
                return query select a.pair, pg_catalog.format('usersync_engine lacks a privilege on %s', t.rel),
                                    'usersync repair'::text;
            end if;
            if not exists (select from pg_catalog.pg_policy p where p.polrelid = t.rel and p.polname = 'usersync_engine') then
                return query select a.pair, pg_catalog.format('policy usersync_engine on %s is missing', t.rel),
                                    'usersync repair'::text;
            end if;
        end loop;
        -- Rows out of step: what a write behind the triggers leaves (usersync.sync_users repairs it).
        execute pg_catalog.format(
            'select (select count(*) from %1$s u where %2$s and not exists (select from %3$s l where l.user_id = u.%4$I and l.active))'
            ' + (select count(*) from %3$s l where l.active and (not exists (select from %1$s u where u.%4$I = l.user_id)'
            '                                                   or not exists (select from %5$s c where c.%6$I = l.contact_id)))',
            a.users, coalesce('u.' || pg_catalog.quote_ident(a.switch_column), 'true'), links, a.user_key,
            a.contacts, a.contact_key) into n;
        if n > 0 then
            return query select a.pair,
                                pg_catalog.format('%s user(s) without the contact their switch asks for, or links to rows '
                                                  'that are gone (written behind the triggers)', n),
                                'usersync sync'::text;
        end if;
    end loop;
end
$$;
comment on function usersync.doctor(text) is
    'What is missing or out of step in the install and the pairs (nothing when all is well); reads only';

-- Runs as its caller, who must be able to create triggers on the pair's tables (their owner, or
-- the installer as a superuser) and, for the event triggers, a superuser.
create or replace function usersync.repair(pair text default null)
returns setof text
language plpgsql
set search_path = pg_catalog, pg_temp
as $$
declare
    a usersync.attachments;
    t record;
    n bigint;
begin
    -- Before calling any function of the engine: each runs as the engine again (code running as
    -- the engine could have made one run as its caller, and this may run as a superuser).
    perform usersync._set_owners();
    if exists (select from usersync.doctor() d where d.pair_name is null and d.problem like '%event trigger%') then
        if (select r.rolsuper from pg_catalog.pg_roles r where r.rolname = current_user) then
            perform usersync._install_event_triggers();
            return next 'the DDL guard''s event triggers, created again';
        else
            return next 'the DDL guard stays off: creating its event triggers needs a superuser';
        end if;
    end if;
    perform usersync._lock_config_exclusive();
    for a in select * from usersync.attachments x
              where repair.pair is null or x.pair = (usersync._pair(repair.pair)).pair order by x.id loop
        if not exists (select from usersync.doctor(a.pair)) then
            continue;
        end if;
        -- A trigger of the engine renamed, or disabled, by a superuser: named and enabled again.
        for t in select pt.name, pt.rel, tg.tgname, tg.tgenabled
                   from usersync._pair_triggers(a) pt
                   join pg_catalog.pg_trigger tg on tg.tgrelid = pt.rel and tg.tgfoid = pg_catalog.to_regprocedure(pt.fn) loop
            if t.tgname <> t.name::name then
                execute pg_catalog.format('alter trigger %I on %s rename to %I', t.tgname, t.rel, t.name);
            end if;
            if t.tgenabled not in ('O', 'A') then
                execute pg_catalog.format('alter table %s enable trigger %I', t.rel, t.name);
            end if;
        end loop;
        perform usersync._attach_grants(a.pair);
        perform usersync._generate(a.pair);
        perform usersync._attach_triggers(a.pair);
        n := usersync._sync_users(a.pair, null);
        return next pg_catalog.format('pair %s: triggers, grants, policy and generated code restored; %s pair(s) of rows synced',
                                      a.pair, n);
    end loop;
end
$$;
comment on function usersync.repair(text) is
    'Restores what usersync.doctor finds missing (triggers, event triggers, grants, policy, generated code) and syncs the rows';
