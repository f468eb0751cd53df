-- 40_codegen.sql: the generator of the engine's specialised functions.
--
-- Why generate: a trigger that builds SQL per row with EXECUTE is re-planned every time and is
-- several times slower than static SQL (docs/sql-api.md, "Design"). So whenever the mapping or a module
-- table changes, usersync._generate() rewrites the _g_* functions as plain static PL/pgSQL with
-- the table names, column lists and mapping version written in. Templates below use @NAME@
-- placeholders; every identifier is quoted with quote_ident/%I before it is substituted.
--
-- Generated functions (all SECURITY DEFINER, owned by usersync_engine):
--   _g_refresh(user_ids, stamp) full sync of the given active pairs, both directions
--   _g_link(user_ids)           link users whose switch is on (re-link, repair or create), then refresh
--   _g_sync_users(user_ids)     "Synchronize users"
--   _g_on_users_insert/update/delete/truncate, _g_on_contact_update/delete_before/delete_after,
--   _g_on_contacts_truncate     the trigger functions attached by usersync._attach()

-- The contact fields a sync writes, with the user field that fills each (NULL: unmapped, so it
-- stays empty). An unmapped field that cannot be NULL but has a default is not written at all:
-- it gets its default when the contact is created and keeps its value afterwards (an application's
-- "status not null default 'manual'"). One that has no default is written NULL and fails, named
-- by usersync._explain_failure (the mapping screen warns about it).
create or replace function usersync._gen_contact_fields(p_pair text)
returns table (field text, "position" smallint, user_field text, data_type text, user_data_type text)
language sql stable set search_path = pg_catalog, pg_temp as $$
    select f.field, f.position, m.user_field, f.data_type, uf.data_type
      from usersync.metadata_fields f
      left join usersync.field_mapping m on m.pair = f.pair and m.contact_field = f.field
      left join usersync.metadata_fields uf on uf.pair = f.pair and uf.module = 'users' and uf.field = m.user_field
     where f.pair = p_pair and f.module = 'contacts'
       and not (m.user_field is null and f.not_null and f.has_default)
$$;

-- Column lists and expressions for the current mapping and catalog.
create or replace function usersync._gen_contact_cols(p_pair text)
returns text language sql stable set search_path = pg_catalog, pg_temp as $$
    select string_agg(pg_catalog.quote_ident(f.field), ', ' order by f.position)
      from usersync._gen_contact_fields(p_pair) f
$$;

-- The contact as the image of a user row named p_alias: mapped fields copied, the rest NULL.
create or replace function usersync._gen_contact_image(p_pair text, p_alias text)
returns text language sql stable set search_path = pg_catalog, pg_temp as $$
    select string_agg(case when f.user_field is null then 'null'
                           else p_alias || '.' || pg_catalog.quote_ident(f.user_field) end,
                      ', ' order by f.position)
      from usersync._gen_contact_fields(p_pair) f
$$;

create or replace function usersync._gen_mapped_user_cols(p_pair text)
returns text language sql stable set search_path = pg_catalog, pg_temp as $$
    select string_agg(pg_catalog.quote_ident(m.user_field), ', ' order by f.position)
      from usersync.field_mapping m
      join usersync.metadata_fields f on f.pair = m.pair and f.module = 'users' and f.field = m.user_field
     where m.pair = p_pair
$$;

-- A contact field of the row named p_alias, as a value for a user field (reversed pairs). Where
-- no assignment cast exists (text -> date) the value is cast explicitly; a bad value then fails.
-- The one place that decides it: the generated code, the diagnosis and its probes all use it.
create or replace function usersync._gen_reverse_expr(p_pair text, p_alias text, p_contact_field text, p_user_field text)
returns text language sql stable set search_path = pg_catalog, pg_temp as $$
    select case when usersync._assignable(a.contacts, p_contact_field, a.users, p_user_field)
                then pg_catalog.format('%s.%I', p_alias, p_contact_field)
                else pg_catalog.format('%s.%I::%s', p_alias, p_contact_field,
                                       usersync._field_type(p_pair, 'users', p_user_field)) end
      from usersync.attachments a where a.pair = p_pair
$$;

-- The mapped user fields as the image of a contact row named p_alias (reversed pairs).
create or replace function usersync._gen_user_image(p_pair text, p_alias text)
returns text language sql stable set search_path = pg_catalog, pg_temp as $$
    select string_agg(usersync._gen_reverse_expr(p_pair, p_alias, m.contact_field, m.user_field), ', ' order by f.position)
      from usersync.field_mapping m
      join usersync.metadata_fields f on f.pair = m.pair and f.module = 'users' and f.field = m.user_field
     where m.pair = p_pair
$$;

-- Can values of this type be compared with IS DISTINCT FROM? json, xml, point have no equality
-- operator; an array or a composite of them has one that fails only when two values meet (its
-- elements' equality is looked up then), so two empty arrays of the type are compared for real.
-- A domain compares as its base type. The generated code and the preview both ask here.
create or replace function usersync._gen_comparable(p_type text)
returns boolean
language plpgsql
volatile  -- EXECUTE of a probe; called while generating, never on a hot path
set search_path = pg_catalog, pg_temp
as $$
declare
    typ pg_catalog.oid := p_type::pg_catalog.regtype::pg_catalog.oid;
    t record;
begin
    loop
        select y.typtype, y.typbasetype, y.typcategory, y.typelem into t from pg_catalog.pg_type y where y.oid = typ;
        exit when t.typtype <> 'd';
        typ := t.typbasetype;
    end loop;
    execute pg_catalog.format('select cast(null as %1$s) is distinct from cast(null as %1$s)', p_type);
    if t.typtype = 'c' or (t.typcategory = 'A' and t.typelem <> 0) then
        begin
            execute pg_catalog.format('select cast(%1$L as %2$s[]) is distinct from cast(%1$L as %2$s[])', '{}', p_type);
        exception when undefined_object then
            null;  -- no array type to try it with: the equality is taken as it resolves
        end;
    end if;
    return true;
exception when undefined_function then
    return false;
end
$$;

-- A field of the row named p_alias, as the generated code compares it: as itself, or as its text
-- where its type has no equality (so a change is still seen, and nothing fails to compare).
create or replace function usersync._gen_cmp(p_alias text, p_field text, p_type text)
returns text language sql stable set search_path = pg_catalog, pg_temp as $$
    select pg_catalog.format('%s.%I', p_alias, p_field)
           || case when usersync._gen_comparable(p_type) then '' else '::pg_catalog.text' end
$$;

-- "(o.a, o.b) is distinct from (n.a, n.b)" over the mapped fields of a module; false when none.
create or replace function usersync._gen_changed(p_pair text, p_module text, p_old text, p_new text)
returns text language sql stable set search_path = pg_catalog, pg_temp as $$
    select case when count(*) = 0 then 'false'
                else pg_catalog.format('(%s) is distinct from (%s)',
                       string_agg(usersync._gen_cmp(p_old, x.field, f.data_type), ', ' order by x.field),
                       string_agg(usersync._gen_cmp(p_new, x.field, f.data_type), ', ' order by x.field)) end
      from (select case p_module when 'users' then m.user_field else m.contact_field end as field
              from usersync.field_mapping m where m.pair = p_pair) x
      join usersync.metadata_fields f on f.pair = p_pair and f.module = p_module and f.field = x.field
$$;

-- The name of the first mapped field that differs, for error messages.
create or replace function usersync._gen_first_changed(p_pair text, p_module text, p_old text, p_new text)
returns text language sql stable set search_path = pg_catalog, pg_temp as $$
    select coalesce('case ' || string_agg(pg_catalog.format('when %s is distinct from %s then %L',
                                                            usersync._gen_cmp(p_old, x.field, f.data_type),
                                                            usersync._gen_cmp(p_new, x.field, f.data_type), x.field),
                                          ' ' order by x.field) || ' end',
                    'null::pg_catalog.text')
      from (select case p_module when 'users' then m.user_field else m.contact_field end as field
              from usersync.field_mapping m where m.pair = p_pair) x
      join usersync.metadata_fields f on f.pair = p_pair and f.module = p_module and f.field = x.field
$$;

-- "The contact already is the image of the user": lets a refresh skip rows it would not change
-- (no dead tuple, no WAL), so "changed" counts only rows whose values differ. A mapped field of
-- another type is compared after the conversion the write performs (usersync._preview_image:
-- assigned to the column, failing where the assignment fails), so a value that does not fit
-- still fails rather than pass as unchanged.
create or replace function usersync._gen_contact_same(p_pair text, p_contact text, p_user text)
returns text language plpgsql stable set search_path = pg_catalog, pg_temp as $$
begin
    return (select string_agg(case when f.user_field is null
                                   then pg_catalog.format('%s.%I is null', p_contact, f.field)
                                   when f.user_data_type = f.data_type
                                   then pg_catalog.format('%s is not distinct from %s',
                                                          usersync._gen_cmp(p_contact, f.field, f.data_type),
                                                          usersync._gen_cmp(p_user, f.user_field, f.data_type))
                                   else pg_catalog.format('%s is not distinct from (%s)%s',
                                                          usersync._gen_cmp(p_contact, f.field, f.data_type),
                                                          usersync._preview_image(p_pair, true, p_user, f.user_field, f.field),
                                                          case when usersync._gen_comparable(f.data_type) then ''
                                                               else '::pg_catalog.text' end) end,
                              ' and ' order by f.position)
              from usersync._gen_contact_fields(p_pair) f);
end
$$;

-- "The mapped fields hold the same values on both sides", over the mapped pairs of one type
-- ('true' when there are none; a pair of differing types is converted, so not compared). Where
-- something on a table can change what the engine writes (usersync._gen_writes_can_vanish), the
-- generated code checks it after writing: an application's BEFORE trigger that changes a mapped
-- value would otherwise leave a pair reported as synced that is not.
create or replace function usersync._gen_mapped_same(p_pair text, p_contact text, p_user text)
returns text language sql stable set search_path = pg_catalog, pg_temp as $$
    select case when count(*) = 0 then 'true'
                else pg_catalog.format('(%s) is not distinct from (%s)',
                        string_agg(usersync._gen_cmp(p_contact, f.field, f.data_type), ', ' order by f.position),
                        string_agg(usersync._gen_cmp(p_user, f.user_field, f.data_type), ', ' order by f.position)) end
      from usersync._gen_contact_fields(p_pair) f
     where f.user_field is not null and f.user_data_type = f.data_type
$$;

create or replace function usersync._gen_user_same(p_pair text, p_user text, p_contact text)
returns text language plpgsql stable set search_path = pg_catalog, pg_temp as $$
begin
    -- (the reversed direction: as usersync._gen_contact_same)
    return (select coalesce(string_agg(
                       case when uf.data_type = cf.data_type
                            then pg_catalog.format('%s is not distinct from %s',
                                                   usersync._gen_cmp(p_user, m.user_field, uf.data_type),
                                                   usersync._gen_cmp(p_contact, m.contact_field, cf.data_type))
                            else pg_catalog.format('%s is not distinct from (%s)%s',
                                                   usersync._gen_cmp(p_user, m.user_field, uf.data_type),
                                                   usersync._preview_image(p_pair, false, p_contact, m.user_field,
                                                                           m.contact_field),
                                                   case when usersync._gen_comparable(uf.data_type) then ''
                                                        else '::pg_catalog.text' end) end,
                       ' and ' order by m.user_field), 'true')
              from usersync.field_mapping m
              join usersync.metadata_fields uf on uf.pair = m.pair and uf.module = 'users' and uf.field = m.user_field
              join usersync.metadata_fields cf on cf.pair = m.pair and cf.module = 'contacts' and cf.field = m.contact_field
             where m.pair = p_pair);
end
$$;

-- Can a synchronized write fail on a value? Yes when a mapped pair's types differ (a cast may
-- reject or a typmod truncate), or when a constraint other than the keys watches a column the
-- engine writes: NOT NULL, CHECK, UNIQUE, EXCLUDE, FOREIGN KEY. Only then do the generated
-- functions pay for an exception block to name the culprit. Not a contacts key referencing its
-- own user's key, of the same type, in a shared-key pair (Supabase's profiles.id references
-- auth.users.id): the engine writes that key only as the key of a user it has just read (an
-- application's AFTER trigger that deletes the user first still fails the statement, with
-- PostgreSQL's own message). Of another type, a cast could change the key.
create or replace function usersync._gen_writes_can_fail(p_pair text)
returns boolean language sql stable set search_path = pg_catalog, pg_temp as $$
    select exists (select from usersync.field_mapping m
                     join usersync.metadata_fields u on u.pair = m.pair and u.module = 'users' and u.field = m.user_field
                     join usersync.metadata_fields c on c.pair = m.pair and c.module = 'contacts' and c.field = m.contact_field
                    where m.pair = p_pair and u.data_type <> c.data_type)
        or exists (select from usersync.modules mo
                     join pg_catalog.pg_attribute a on a.attrelid = mo.relation
                    where mo.pair = p_pair and a.attnum > 0 and not a.attisdropped and a.attnotnull
                      and a.attname <> mo.key_column and a.attname is distinct from mo.switch_column
                      and (mo.module = 'contacts'
                           or a.attname in (select m.user_field from usersync.field_mapping m where m.pair = p_pair)))
        or exists (select from usersync.modules mo
                     join pg_catalog.pg_constraint k on k.conrelid = mo.relation
                    where mo.pair = p_pair and k.contype in ('c', 'u', 'x', 'f')
                      and not exists (select from usersync.attachments a
                                       where a.pair = p_pair and a.shared_key and mo.module = 'contacts'
                                         and usersync._key_type(a.users, a.user_key)
                                             = usersync._key_type(a.contacts, a.contact_key)
                                         and k.contype = 'f' and k.confrelid = a.users
                                         and k.conkey = array[(select x.attnum from pg_catalog.pg_attribute x
                                                                where x.attrelid = a.contacts and x.attname = a.contact_key)]
                                         and k.confkey = array[(select x.attnum from pg_catalog.pg_attribute x
                                                                 where x.attrelid = a.users and x.attname = a.user_key)])
                      and (mo.module = 'contacts'
                           or exists (select from pg_catalog.pg_attribute a
                                       where a.attrelid = mo.relation and a.attnum = any(k.conkey)
                                         and a.attname in (select m.user_field from usersync.field_mapping m
                                                            where m.pair = p_pair))))
        or exists (select from usersync.modules mo
                     join pg_catalog.pg_index i on i.indrelid = mo.relation
                    where mo.pair = p_pair and i.indisunique and not i.indisprimary and mo.module = 'contacts')
$$;

-- Can a write of the engine to this table be swallowed, i.e. touch fewer rows than it asked for?
-- Yes where row-level security can hide a row from the engine: a restrictive policy (for any
-- role: one for a role the engine is later made a member of would apply to it, and granting a
-- role fires no event trigger), or the engine's own permissive policy (usersync.attach made it:
-- every row, every command) missing or changed; or with a BEFORE row trigger of the application
-- (returning NULL skips the row, and it can change a value). Only then do the generated
-- functions count the rows each write touched (US007, usersync._lost_write): the checks cost
-- statements on every write, and row-level security with only permissive policies for other
-- roles (Supabase's) hides nothing from the engine. Rules are refused on the module tables
-- altogether (60_ddl_guard.sql). A new policy or trigger regenerates the code (the DDL guard), or
-- where the guard is off changes usersync._shape.
create or replace function usersync._gen_writes_can_vanish(p_rel regclass)
returns boolean language sql stable set search_path = pg_catalog, pg_temp as $$
    select exists (select from pg_catalog.pg_class c
                    where c.oid = p_rel and c.relrowsecurity
                      and (exists (select from pg_catalog.pg_policy p where p.polrelid = p_rel and not p.polpermissive)
                           or not usersync._engine_policy_as_made(p_rel)))
        or exists (select from pg_catalog.pg_trigger t
                    where t.tgrelid = p_rel and not t.tgisinternal and (t.tgtype & 3) = 3
                      -- (the engine's own triggers, of any pair, call functions of its schema)
                      and not exists (select from pg_catalog.pg_proc p
                                       where p.oid = t.tgfoid and p.pronamespace = 'usersync'::pg_catalog.regnamespace))
$$;

-- The SET clauses that make every conversion a generated function performs independent of the
-- session (a date copied into a text field is written in DateStyle, a timestamptz in TimeZone, ...).
-- Needed only where a mapped pair's types differ; the static functions that convert carry the
-- same list in their definitions (tests/test_boundary.py checks that they agree).
create or replace function usersync._gen_pins(p_pair text)
returns text language sql stable set search_path = pg_catalog, pg_temp as $$
    select case when exists (select from usersync.field_mapping m
                               join usersync.metadata_fields u on u.pair = m.pair and u.module = 'users' and u.field = m.user_field
                               join usersync.metadata_fields c on c.pair = m.pair and c.module = 'contacts' and c.field = m.contact_field
                              where m.pair = p_pair and u.data_type <> c.data_type)
                then 'set datestyle = ''ISO, YMD'' set intervalstyle = ''postgres'' set timezone = ''UTC'''
                     ' set extra_float_digits = 1 set bytea_output = ''hex'' set lc_monetary = ''C'''
                     ' set xmloption = ''content'' set xmlbinary = ''base64'''
                     ' set default_text_search_config = ''pg_catalog.simple'''
                     ' set timezone_abbreviations = ''Default'' set array_nulls = on'
                else '' end
$$;

-- The user columns a new contact is made from (the key and the mapped fields), so that creating
-- contacts copies no more of each row than it needs.
create or replace function usersync._gen_source_cols(p_pair text, p_alias text)
returns text language sql stable set search_path = pg_catalog, pg_temp as $$
    select string_agg(p_alias || '.' || pg_catalog.quote_ident(x.col), ', ' order by x.ord, x.col)
      from (select (select a.user_key::text from usersync.attachments a where a.pair = p_pair) as col, 0 as ord
            union
            select m.user_field, 1 from usersync.field_mapping m where m.pair = p_pair) x
$$;

-- The columns of a pair's two tables, as far as the generated code depends on them: names,
-- types, NOT NULL, defaults, generated or dropped; their rules; whether writes can vanish. Where
-- the DDL guard is off (installed without a superuser, or its event triggers disabled), nothing
-- regenerates the code when they change, so the generated code compares this with what it was
-- generated for on every call, and fails rather than write the wrong columns.
create or replace function usersync._shape(p_users regclass, p_contacts regclass)
returns text language sql stable set search_path = pg_catalog, pg_temp as $$
    select pg_catalog.md5(pg_catalog.string_agg(
               pg_catalog.concat_ws('|', a.attrelid, a.attnum, a.attname, a.atttypid, a.atttypmod, a.attnotnull,
                                    a.atthasdef, a.attidentity, a.attgenerated, a.attisdropped), ',' order by a.attrelid, a.attnum)
               -- and rules (which the guard would refuse: one could swallow the engine's writes)
               || (select pg_catalog.count(*) from pg_catalog.pg_rewrite r where r.ev_class in (p_users, p_contacts))::text
               -- and whether the engine's writes need counting (policies, BEFORE triggers)
               || usersync._gen_writes_can_vanish(p_users)::text || usersync._gen_writes_can_vanish(p_contacts)::text)
      from pg_catalog.pg_attribute a
     where a.attrelid in (p_users, p_contacts) and a.attnum > 0
$$;

create or replace function usersync._stale_code(p_pair text)
returns void language plpgsql set search_path = pg_catalog, pg_temp as $$
begin
    raise exception using errcode = 'US005',
        message = pg_catalog.format('the tables of pair %L changed since usersync generated its code', p_pair),
        detail = 'The DDL guard is off (no event triggers), so nothing regenerated the code when the columns changed; '
                 'writing now could fill the wrong columns.',
        hint = 'Run usersync repair (SELECT usersync.repair()), which generates the code again.';
end
$$;

-- Is the DDL guard on? (its event triggers exist and are enabled)
create or replace function usersync._guard_on()
returns boolean language sql stable set search_path = pg_catalog, pg_temp set standard_conforming_strings = on as $$
    select pg_catalog.count(*) = 5
      from pg_catalog.pg_event_trigger e
     where e.evtname like 'usersync\_guard\_%' and e.evtenabled <> 'D'
$$;

-- Generated code must keep the structure of its template whatever the identifiers it embeds
-- (a column may be named 'a$body$; select f(); $body$b' or '@HAS_MAP@'). Three rules make it so:
--   1. placeholders are substituted in one pass over the template: a substituted value is never
--      searched again, so a value holding '@NAME@' stays text;
--   2. the markers below are found in the template before anything is substituted;
--   3. a function body is passed to CREATE FUNCTION as a quote_literal string, never between
--      dollar quotes, so no text inside it can end it.
-- Values are quoted identifiers, literals and fragments built from them (usersync._generate()).

-- Rule 1: the template cut at its placeholders, values put between the pieces.
create or replace function usersync._gen_subst(p_template text, p_vars jsonb)
returns text language plpgsql immutable set search_path = pg_catalog, pg_temp as $$
declare
    pieces text[] := pg_catalog.regexp_split_to_array(p_template, '@[A-Z_]+@');
    names text[] := array(select m.token[1]
                            from pg_catalog.regexp_matches(p_template, '@([A-Z_]+)@', 'g') with ordinality m(token, i)
                           order by m.i);
    result text := pieces[1];
    v text;
begin
    for i in 1 .. coalesce(pg_catalog.cardinality(names), 0) loop
        v := p_vars ->> names[i];
        if v is null then
            raise exception 'usersync internal error: unfilled placeholder @%@ in a generated function', names[i];
        end if;
        result := result || v || pieces[i + 1];
    end loop;
    return result;
end
$$;

-- Statements that join a trigger's transition tables are written once in a template, between
--   /*dual[ into VAR][ using VAR]*/ ... /*end*/
-- and come out twice: static SQL for small statements, EXECUTE for bulk ones. Why: PL/pgSQL
-- plans a static statement once per session, from the transition tables' sizes at its first
-- call. A plan made for one row (nested loops over the index-less tuplestores) is quadratic on
-- 100,000 rows; one made for 100,000 rows (hash joins reading all of links) is a full scan for
-- every later one-row UPDATE. Small statements therefore always run the static copy, whose plan
-- is only ever made for small sizes; bulk ones are planned afresh with their real sizes.
-- Markers are read from the template (rule 2); each piece is then filled (rule 1).
create or replace function usersync._gen_body(p_body text, p_vars jsonb)
returns text language plpgsql immutable set search_path = pg_catalog, pg_temp set standard_conforming_strings = on as $$
declare
    result text := '';
    head_at integer;
    head_len integer;
    head text[];
    rest text;
    end_at integer;
    stmt text;
    dyn text;
    into_var text;
    using_var text;
begin
    loop
        -- Markers are found with strpos: a PostgreSQL regex takes its greediness from its first
        -- quantifier, so "(.*?)" cannot be trusted to stop at the first /*end*/.
        head_at := pg_catalog.strpos(p_body, '/*dual');
        exit when head_at = 0;
        head_len := pg_catalog.strpos(pg_catalog.substr(p_body, head_at), '*/') + 1;
        head := pg_catalog.regexp_match(pg_catalog.substr(p_body, head_at, head_len),
                                        '^/\*dual(?: into ([a-z_]+))?(?: using ([a-z_]+))?\*/$');
        if head is null then
            raise exception 'usersync internal error: bad marker %', pg_catalog.substr(p_body, head_at, head_len);
        end if;
        into_var := head[1];
        using_var := head[2];
        rest := pg_catalog.substr(p_body, head_at + head_len);
        end_at := pg_catalog.strpos(rest, '/*end*/');
        stmt := pg_catalog.btrim(pg_catalog.substr(rest, 1, end_at - 1), E' \n');
        dyn := pg_catalog.rtrim(stmt, ';');
        if into_var is not null then
            dyn := pg_catalog.regexp_replace(dyn, '\minto\s+' || into_var || '\M', '');
        end if;
        if using_var is not null then
            dyn := pg_catalog.regexp_replace(dyn, '\m' || using_var || '\M', '$1', 'g');
        end if;
        result := result || usersync._gen_subst(pg_catalog.substr(p_body, 1, head_at - 1), p_vars)
               || pg_catalog.format(E'if usersync_bulk then\n        execute %L%s%s;\n    else\n        %s\n    end if;',
                                    usersync._gen_subst(dyn, p_vars), coalesce(' into ' || into_var, ''),
                                    coalesce(' using ' || using_var, ''), usersync._gen_subst(stmt, p_vars));
        p_body := pg_catalog.substr(rest, end_at + 7);
    end loop;
    return result || usersync._gen_subst(p_body, p_vars);
end
$$;

-- @TRY@ ... @CATCH@ ... @END_CATCH@ in a template: an exception block that names the culprit of a
-- failing write. Where no synchronized value can fail (usersync._gen_writes_can_fail) the block
-- and its handler are left out, sparing a subtransaction per statement. Read from the template
-- before anything is substituted (rule 2).
create or replace function usersync._gen_try(p_body text, p_can_fail boolean)
returns text language plpgsql immutable set search_path = pg_catalog, pg_temp as $$
declare
    catch_at integer;
    end_at integer;
begin
    if p_can_fail then
        return pg_catalog.replace(pg_catalog.replace(pg_catalog.replace(p_body,
                   '@TRY@', 'begin'),
                   '@CATCH@', 'exception when data_exception or integrity_constraint_violation then'),
                   '@END_CATCH@', 'end;');
    end if;
    p_body := pg_catalog.replace(p_body, '@TRY@', '');
    loop
        catch_at := pg_catalog.strpos(p_body, '@CATCH@');
        exit when catch_at = 0;
        end_at := pg_catalog.strpos(p_body, '@END_CATCH@');
        p_body := pg_catalog.substr(p_body, 1, catch_at - 1) || pg_catalog.substr(p_body, end_at + 11);
    end loop;
    return p_body;
end
$$;

-- A template is "create ... as $body$ BODY $body$;": the body is filled and becomes a string
-- literal (rule 3); the head and tail are filled too (they hold only the generator's own values).
create or replace function usersync._gen_fill(p_template text, p_vars jsonb)
returns text language plpgsql immutable set search_path = pg_catalog, pg_temp as $$
declare
    parts text[] := pg_catalog.string_to_array(p_template, '$body$');
begin
    if pg_catalog.cardinality(parts) <> 3 then
        raise exception 'usersync internal error: a template needs exactly one $body$ ... $body$';
    end if;
    -- use_variable: the engine's variables and parameters win over same-named columns of the
    -- application (a column called switched_on or p_user_ids); the engine's own references to
    -- columns are all qualified by an alias, so they are never taken for a variable.
    return usersync._gen_subst(parts[1], p_vars)
        || pg_catalog.quote_literal(E'\n#variable_conflict use_variable' || usersync._gen_body(usersync._gen_try(parts[2], (p_vars ->> 'CAN_FAIL')::boolean),
                                                       p_vars))
        || usersync._gen_subst(parts[3], p_vars);
end
$$;

-- One generation of a pair at a time, until its transaction ends: two under the shared
-- configuration lock (a resync run finishing, doctor's comparison) would replace the same
-- functions side by side and one would fail ("tuple concurrently updated"), and doctor must not
-- read the code while a generation is in flight.
create or replace function usersync._lock_generation(p_id integer)
returns void language sql set search_path = pg_catalog, pg_temp as $$
    select pg_catalog.pg_advisory_xact_lock(pg_catalog.hashtext('usersync._generate'), p_id)
$$;

create or replace function usersync._generate(p_pair text)
returns void
language plpgsql
security definer
set search_path = pg_catalog, pg_temp set standard_conforming_strings = on  -- (its literals hold backslashes)
set quote_all_identifiers = off  -- the generated text and the SET clauses it records stay canonical
set jit = off  -- catalog queries the planner overestimates: compiling them would cost more than running them
as $gen$
declare
    a usersync.attachments := usersync._pair(p_pair);
    ukt text := usersync._key_type(a.users, a.user_key);
    ckt text := usersync._key_type(a.contacts, a.contact_key);
    seq text;
    cid text;
    can_fail boolean;
    vars jsonb;
    tpl text;
    fn text;
    new boolean;
begin
    perform usersync._lock_generation(a.id);
    -- New contacts get their key before they are inserted, so that one set-based INSERT can
    -- create both the contacts and the links (RETURNING cannot tell which user a row came from).
    -- With a shared key the contact's key is its user's.
    seq := pg_catalog.pg_get_serial_sequence(a.contacts::text, a.contact_key);
    if a.shared_key then
        cid := pg_catalog.format('x.%I', a.user_key) || case when ukt <> ckt then '::' || ckt else '' end;
    elsif seq is not null then
        cid := pg_catalog.format('pg_catalog.nextval(%L::pg_catalog.regclass)', seq);
    else
        select pg_catalog.pg_get_expr(d.adbin, d.adrelid) into cid
          from pg_catalog.pg_attrdef d join pg_catalog.pg_attribute x on x.attrelid = d.adrelid and x.attnum = d.adnum
         where x.attrelid = a.contacts and x.attname = a.contact_key;
        if cid is null then
            raise exception using errcode = 'US005',
                message = pg_catalog.format('the key column %I of %s has no default', a.contact_key, a.contacts),
                hint = 'The contacts key needs an identity, a sequence or a default so the engine can create contacts '
                       '(or attach the pair with shared_key => true).';
        end if;
    end if;

    can_fail := usersync._gen_writes_can_fail(a.pair);
    vars := pg_catalog.jsonb_build_object(
        'G', '_g' || a.id || '_',
        'PAIR', pg_catalog.quote_literal(a.pair),
        -- Has a resync recorded any failure of the pair? Rare: a caller that would forget some
        -- (usersync._forget_failures) asks this first, and then converts no key.
        'ANY_FAILURE', pg_catalog.format('exists (select from usersync.sync_errors e where e.pair = %L)', a.pair),
        'LINKS', usersync._links_table(a.id),
        'UKT', ukt,
        'CKT', ckt,
        'U', a.users::text,
        'C', a.contacts::text,
        'UK', pg_catalog.quote_ident(a.user_key),
        'CK', pg_catalog.quote_ident(a.contact_key),
        'SW', pg_catalog.quote_ident(coalesce(a.switch_column, a.user_key)),  -- (no switch: see below)
        'HAS_SW', (a.switch_column is not null)::text,
        'SW_HINT', pg_catalog.quote_literal(
            case when a.switch_column is not null
                 then pg_catalog.format('switch its synchronization off (UPDATE ... SET %I = false)', a.switch_column)
                 else 'detach the pair (every user of it is synchronized)' end),
        'U_REL', pg_catalog.format('%L::pg_catalog.regclass', a.users::text),
        'C_REL', pg_catalog.format('%L::pg_catalog.regclass', a.contacts::text),
        'GUARDED_U', usersync._gen_writes_can_vanish(a.users)::text,
        'GUARDED_C', usersync._gen_writes_can_vanish(a.contacts)::text,
        'PINS', usersync._gen_pins(a.pair),
        'V', (select s.version from usersync.mapping_state s where s.pair = a.pair)::text,
        -- "link l is up to date with the mapping", as the single-row path asks it: stamped with
        -- this version, or, once a resync run on it has finished (resync_step then generates the
        -- code again), any version but a run's failure mark 0. Written in, not read per call.
        'L_CURRENT', (select case when s.covered_version = s.version then 'l.mapping_version > 0'
                                  else pg_catalog.format('l.mapping_version = %s', s.version) end
                        from usersync.mapping_state s where s.pair = a.pair),
        'BULK_ROWS', '100',  -- above this many rows, statements on transition tables are planned per call
        'SMALL_ROWS', '8',  -- up to this many rows, an UPDATE's rows are synced one by one (@G@on_users_update)
        'CID', cid,
        -- (a pair without a shared key has no such key: a null of the contact key's type, since a
        -- cast of, say, a uuid user key to a bigint contact key would not even parse)
        'CID_U', case when a.shared_key
                      then pg_catalog.format('u.%I', a.user_key) || case when ukt <> ckt then '::' || ckt else '' end
                      else 'null::' || ckt end,
        'CID_N', case when a.shared_key
                      then pg_catalog.format('n.%I', a.user_key) || case when ukt <> ckt then '::' || ckt else '' end
                      else 'null::' || ckt end,
        'C_UNMAPPED_FILLED', coalesce((select pg_catalog.string_agg(pg_catalog.format('c.%I is not null', f.field), ' or ')
                                         from usersync._gen_contact_fields(a.pair) f where f.user_field is null), 'false'),
        'SHARED', a.shared_key::text,
        'C_FK_FIRST', (exists (select from pg_catalog.pg_constraint k
                                where k.conrelid = a.contacts and k.confrelid = a.users and k.contype = 'f'
                                  and k.confdeltype in ('c', 'r', 'a')))::text,
        'C_FK_RESTRICTS', usersync._fk_restricts(a.id)::text,
        'OVR', case when exists (select from pg_catalog.pg_attribute x where x.attrelid = a.contacts
                                   and x.attname = a.contact_key and x.attidentity = 'a')
                    then 'overriding system value' else '' end,
        'C_COLS', usersync._gen_contact_cols(a.pair),
        'C_IMG_S', usersync._gen_contact_image(a.pair, '(s.usr)'),
        'C_IMG_N', usersync._gen_contact_image(a.pair, 'n'),
        'C_IMG_U', usersync._gen_contact_image(a.pair, 'u')
    ) || pg_catalog.jsonb_build_object(  -- (a function takes at most 100 arguments)
        'C_IMG_NEW', usersync._gen_contact_image(a.pair, 'new'),
        'HAS_MAP', (exists (select from usersync.field_mapping m where m.pair = a.pair))::text,
        'U_COLS', coalesce(usersync._gen_mapped_user_cols(a.pair), pg_catalog.quote_ident(a.user_key)),
        'U_IMG_C', coalesce(usersync._gen_user_image(a.pair, 'c'), 'u.' || pg_catalog.quote_ident(a.user_key)),
        'U_IMG_NEW', coalesce(usersync._gen_user_image(a.pair, 'new'), 'u.' || pg_catalog.quote_ident(a.user_key)),
        'U_CHANGED', usersync._gen_changed(a.pair, 'users', 'o', 'n'),
        'U_FIRST_CHANGED', usersync._gen_first_changed(a.pair, 'users', 'o', 'n'),
        'C_CHANGED', usersync._gen_changed(a.pair, 'contacts', 'old', 'new'),
        'C_SAME', usersync._gen_contact_same(a.pair, 'c', 'u'),
        'C_SAME_N', usersync._gen_contact_same(a.pair, 'c', 'n'),
        'C_SAME_NEW', usersync._gen_contact_same(a.pair, 'c', 'new'),
        'KEPT_CU', usersync._gen_mapped_same(a.pair, 'c', 'u'),
        'KEPT_CN', usersync._gen_mapped_same(a.pair, 'c', 'n'),
        'KEPT_NEWU', usersync._gen_mapped_same(a.pair, 'new', 'u'),
        'CAN_FAIL', can_fail::text,
        'U_SRC_U', usersync._gen_source_cols(a.pair, 'u'),
        'U_SRC_N', usersync._gen_source_cols(a.pair, 'n'),
        'U_SAME', usersync._gen_user_same(a.pair, 'u', 'c'),
        'SHAPE_CHECK', case when usersync._guard_on() then ''
                            else pg_catalog.format('if usersync._shape(%L::pg_catalog.regclass, %L::pg_catalog.regclass) '
                                                   'is distinct from %L then perform usersync._stale_code(%L); end if;',
                                                   a.users::text, a.contacts::text, usersync._shape(a.users, a.contacts),
                                                   a.pair) end
    );

    for fn, tpl in select t.fn, t.tpl from usersync._templates() t loop
        -- A pair without a switch synchronizes every user: each "x.@SW@" of the templates (their
        -- own text, before anything is substituted) reads true.
        if a.switch_column is null then
            tpl := pg_catalog.regexp_replace(tpl, '\m[a-z]+\.@SW@', 'true', 'g');
        end if;
        fn := usersync._gen_subst(fn, vars);
        new := pg_catalog.to_regprocedure('usersync.' || fn) is null;
        execute usersync._gen_fill(tpl, vars);
        if new then  -- (a replaced function keeps its privileges)
            execute pg_catalog.format('revoke all on function usersync.%s from public', fn);
        end if;
    end loop;
    update usersync.mapping_state s set field_types = usersync._mapped_field_types(a.pair) where s.pair = a.pair;
end
$gen$;
