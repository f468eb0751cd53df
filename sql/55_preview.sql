-- 55_preview.sql: what "Update all synchronized users" would change, without changing it.
--
-- usersync.preview_resync(examples) counts the pairs whose target differs from the image of its
-- source under the current mapping, and the pairs that would fail (a source value its target
-- field cannot take, which resync_all records in usersync.sync_errors and skips), and shows a few
-- of each. It reads only (built with EXECUTE: an admin-time query, planned once per call).
--
-- Every value is converted as the real run converts it: assigned to the target column, or cast
-- explicitly where the engine casts (usersync._gen_reverse_expr). So the set-based query fails
-- exactly where the run would. Only then (a data exception or an integrity violation) is it run
-- again with each field whose types differ tried value by value in a subtransaction, so that the
-- pairs that would fail are counted and shown with the error, and the others as usual.

-- The SQL expression of value p_value (an SQL expression) as column p_field of p_rel would store
-- it when assigned (INSERT/UPDATE), failing exactly where that assignment fails. An explicit CAST
-- does the same but for the length of character and bit strings: CAST truncates ('Professor' as
-- varchar(3) is 'Pro') where an assignment fails (22001). For those types the length coercion
-- function is called with isExplicit = false, as the parser does for an assignment (element by
-- element for an array).
create or replace function usersync._preview_assigned(p_value text, p_rel regclass, p_field text)
returns text
language sql
stable
set search_path = pg_catalog, pg_temp
set datestyle = 'ISO, YMD' set intervalstyle = 'postgres' set timezone = 'UTC' set extra_float_digits = 1
set bytea_output = 'hex' set lc_monetary = 'C' set xmloption = 'content' set xmlbinary = 'base64'
set default_text_search_config = 'pg_catalog.simple' set timezone_abbreviations = 'Default' set array_nulls = on
as $$
    select case
             when lc.fn is null then
                 pg_catalog.format('cast(%s as %s)', p_value, pg_catalog.format_type(a.atttypid, a.atttypmod))
             when lc.elem then
                 pg_catalog.format('case when (select pg_catalog.count(%1$s(x.x, %2$s, false))'
                                   ' from pg_catalog.unnest(cast(%3$s as %4$s[])) x(x)) >= 0 then cast(%3$s as %5$s) end',
                                   lc.fn, a.atttypmod, p_value, lc.base,
                                   pg_catalog.format_type(a.atttypid, a.atttypmod))
             else pg_catalog.format('%s(cast(%s as %s), %s, false)', lc.fn, p_value, lc.base, a.atttypmod)
           end
      from pg_catalog.pg_attribute a
      join pg_catalog.pg_type t on t.oid = a.atttypid
      left join lateral (
          select pg_catalog.format('%I.%I', pn.nspname, p.proname) as fn,
                 pg_catalog.format('%I.%I', bn.nspname, b.typname) as base,  -- qualified: no typmod implied
                 b.oid <> a.atttypid as elem
            from pg_catalog.pg_type b
            join pg_catalog.pg_namespace bn on bn.oid = b.typnamespace
            join pg_catalog.pg_cast k on k.castsource = b.oid and k.casttarget = b.oid and k.castmethod = 'f'
            join pg_catalog.pg_proc p on p.oid = k.castfunc and p.pronargs = 3
            join pg_catalog.pg_namespace pn on pn.oid = p.pronamespace
           where a.atttypmod >= 0
             and b.oid = case when t.typcategory = 'A' and t.typelem <> 0 then t.typelem else t.oid end) lc on true
     where a.attrelid = p_rel and a.attname = p_field and not a.attisdropped
$$;

-- The SQL expression of the value a resync would write into the target field of a mapped pair
-- of fields, from the source row named p_alias: the user's field into the contact's
-- (p_to_contact), or the contact's into the user's (reversed pairs).
create or replace function usersync._preview_image(p_to_contact boolean, p_alias text, p_user_field text,
                                                   p_contact_field text)
returns text
language plpgsql
stable
set search_path = pg_catalog, pg_temp
set datestyle = 'ISO, YMD' set intervalstyle = 'postgres' set timezone = 'UTC' set extra_float_digits = 1
set bytea_output = 'hex' set lc_monetary = 'C' set xmloption = 'content' set xmlbinary = 'base64'
set default_text_search_config = 'pg_catalog.simple' set timezone_abbreviations = 'Default' set array_nulls = on
as $$
declare
    rev text;
begin
    if p_to_contact then
        return usersync._preview_assigned(pg_catalog.format('%s.%I', p_alias, p_user_field),
                                          (select m.relation from usersync.modules m where m.module = 'contacts'),
                                          p_contact_field);
    end if;
    -- The engine's own choice: the contact's value as it is (then assigned), or an explicit cast.
    rev := usersync._gen_reverse_expr(p_alias, p_contact_field, p_user_field);
    if rev = pg_catalog.format('%s.%I', p_alias, p_contact_field) then
        return usersync._preview_assigned(rev, (select m.relation from usersync.modules m where m.module = 'users'),
                                          p_user_field);
    end if;
    return rev;
end
$$;

-- Would the value p_value, as column p_column of a row named v, convert through p_expr (from
-- _preview_image)? NULL when it would; else the error, {"sqlstate": ..., "error": message}.
-- Each attempt runs in a subtransaction; only data exceptions and integrity violations (a
-- domain's CHECK or NOT NULL) are answered, anything else is a bug and is raised.
create or replace function usersync._preview_error(p_expr text, p_column text, p_value anyelement)
returns jsonb
language plpgsql
stable
set search_path = pg_catalog, pg_temp
set datestyle = 'ISO, YMD' set intervalstyle = 'postgres' set timezone = 'UTC' set extra_float_digits = 1
set bytea_output = 'hex' set lc_monetary = 'C' set xmloption = 'content' set xmlbinary = 'base64'
set default_text_search_config = 'pg_catalog.simple' set timezone_abbreviations = 'Default' set array_nulls = on
as $$
declare
    st text;
    msg text;
begin
    execute pg_catalog.format('select (%s) from (select $1) v(%I)', p_expr, p_column) using p_value;
    return null;
exception when data_exception or integrity_constraint_violation then
    get stacked diagnostics st = returned_sqlstate, msg = message_text;
    return pg_catalog.jsonb_build_object('sqlstate', st, 'error', msg);
end
$$;

-- The preview's query. p_careful: the fields whose types differ are tried value by value with
-- _preview_error (slow, never fails on a value); otherwise converted in the query itself (fast,
-- fails on the first value that does not fit). Columns: pairs, would_change, would_fail, stale,
-- changes.
create or replace function usersync._preview_sql(p_careful boolean, p_examples integer)
returns text
language plpgsql
stable
set search_path = pg_catalog, pg_temp
set datestyle = 'ISO, YMD' set intervalstyle = 'postgres' set timezone = 'UTC' set extra_float_digits = 1
set bytea_output = 'hex' set lc_monetary = 'C' set xmloption = 'content' set xmlbinary = 'base64'
set default_text_search_config = 'pg_catalog.simple' set timezone_abbreviations = 'Default' set array_nulls = on
as $$
declare
    mu usersync.modules;
    mc usersync.modules;
    f record;
    img text;
    n integer := 0;
    c_rows text[] := '{}';  -- per contact field: (field, current, new, differs, error) (user-sourced pairs)
    c_tries text := '';     -- the lateral attempts those rows read (p_careful)
    u_rows text[] := '{}';  -- per mapped user field, likewise (reversed pairs)
    u_tries text := '';
    probe text;
begin
    select * into mu from usersync.modules where module = 'users';
    select * into mc from usersync.modules where module = 'contacts';

    for f in select cf.field as contact_field, cf.data_type <> cf.user_data_type as retyped, cf.user_field
               from usersync._gen_contact_fields() cf
              order by cf.position loop
        img := case when f.user_field is null then 'null'
                    when not f.retyped then pg_catalog.format('u.%I', f.user_field)
                    else usersync._preview_image(true, 'u', f.user_field, f.contact_field) end;
        if p_careful and f.retyped then
            n := n + 1;
            probe := usersync._preview_image(true, 'v', f.user_field, f.contact_field);
            c_tries := c_tries || pg_catalog.format(
                ' cross join lateral (select usersync._preview_error(%L, %L, u.%I) offset 0) e%s(err)',
                probe, f.user_field, f.user_field, n);
            c_rows := c_rows || pg_catalog.format(
                '(%1$L, c.%2$I::pg_catalog.text, case when e%4$s.err is null then (%3$s)::pg_catalog.text end,'
                ' case when e%4$s.err is null then c.%2$I is distinct from (%3$s) else false end, e%4$s.err)',
                f.contact_field, f.contact_field, img, n);
        else
            c_rows := c_rows || pg_catalog.format(
                '(%1$L, c.%2$I::pg_catalog.text, (%3$s)::pg_catalog.text, c.%2$I is distinct from (%3$s), null::pg_catalog.jsonb)',
                f.contact_field, f.contact_field, img);
        end if;
    end loop;

    for f in select m.user_field, m.contact_field, cf.data_type <> uf.data_type as retyped
               from usersync.field_mapping m
               join usersync.metadata_fields uf on uf.module = 'users' and uf.field = m.user_field
               join usersync.metadata_fields cf on cf.module = 'contacts' and cf.field = m.contact_field
              order by uf.position loop
        img := case when not f.retyped then pg_catalog.format('c.%I', f.contact_field)
                    else usersync._preview_image(false, 'c', f.user_field, f.contact_field) end;
        if p_careful and f.retyped then
            n := n + 1;
            probe := usersync._preview_image(false, 'v', f.user_field, f.contact_field);
            u_tries := u_tries || pg_catalog.format(
                ' cross join lateral (select usersync._preview_error(%L, %L, c.%I) offset 0) e%s(err)',
                probe, f.contact_field, f.contact_field, n);
            u_rows := u_rows || pg_catalog.format(
                '(%1$L, u.%2$I::pg_catalog.text, case when e%4$s.err is null then (%3$s)::pg_catalog.text end,'
                ' case when e%4$s.err is null then u.%2$I is distinct from (%3$s) else false end, e%4$s.err)',
                f.user_field, f.user_field, img, n);
        else
            u_rows := u_rows || pg_catalog.format(
                '(%1$L, u.%2$I::pg_catalog.text, (%3$s)::pg_catalog.text, u.%2$I is distinct from (%3$s), null::pg_catalog.jsonb)',
                f.user_field, f.user_field, img);
        end if;
    end loop;
    if pg_catalog.cardinality(u_rows) = 0 then
        u_rows := array['(null::pg_catalog.text, null::pg_catalog.text, null::pg_catalog.text, false, null::pg_catalog.jsonb)'];
    end if;

    return pg_catalog.format($q$
        with diffs as (
            select l.user_id, l.contact_id, d.field, d.cur, d.new, d.differs, d.err
              from usersync.links l join %1$s u on u.%2$I = l.user_id join %3$s c on c.%4$I = l.contact_id
             %5$s
             cross join lateral (values %6$s) d(field, cur, new, differs, err)
             where l.active and l.source = 'user'
            union all
            select l.user_id, l.contact_id, d.field, d.cur, d.new, d.differs, d.err
              from usersync.links l join %1$s u on u.%2$I = l.user_id join %3$s c on c.%4$I = l.contact_id
             %7$s
             cross join lateral (values %8$s) d(field, cur, new, differs, err)
             where l.active and l.source = 'contact'),
        failed as (%9$s),
        changed as (select * from diffs d where d.differs %10$s)
        select (select pg_catalog.count(*) from usersync.links l where l.active),
               (select pg_catalog.count(distinct x.user_id) from changed x),
               (select pg_catalog.count(distinct x.user_id) from failed x),
               (select pg_catalog.count(*) from usersync.links l where l.active
                   and l.mapping_version < (select s.version from usersync.mapping_state s)),
               coalesce((select pg_catalog.jsonb_agg(
                                    case when x.failing
                                         then pg_catalog.jsonb_build_object('user_id', x.user_id, 'contact_id', x.contact_id,
                                                                            'field', x.field, 'from', x.cur) || x.err
                                         else pg_catalog.jsonb_build_object('user_id', x.user_id, 'contact_id', x.contact_id,
                                                                            'field', x.field, 'from', x.cur, 'to', x.new) end
                                    order by x.failing desc, x.user_id, x.field)
                           from ((select true as failing, y.* from failed y order by y.user_id, y.field limit %11$s)
                                 union all
                                 (select false, y.* from changed y order by y.user_id, y.field limit %11$s)) x), '[]')
        $q$, mu.relation, mu.key_column, mc.relation, mc.key_column,
        c_tries, pg_catalog.array_to_string(c_rows, ', '), u_tries, pg_catalog.array_to_string(u_rows, ', '),
        case when p_careful then 'select * from diffs d where d.err is not null'
             -- no second reference to diffs: the fast query stays one pass, diffs inlined
             else 'select null::pg_catalog.int8 as user_id, null::pg_catalog.int8 as contact_id, null::pg_catalog.text as field,'
                  ' null::pg_catalog.text as cur, null::pg_catalog.text as new, null::pg_catalog.bool as differs,'
                  ' null::pg_catalog.jsonb as err where false' end,
        case when p_careful then 'and not exists (select from failed y where y.user_id = d.user_id)' else '' end,
        p_examples);
end
$$;

-- The return type changed (would_fail): CREATE OR REPLACE cannot change it. 90_install.sql gives
-- it back to usersync_engine and re-grants it to usersync_admin.
drop function if exists usersync.preview_resync(integer);
create or replace function usersync.preview_resync(examples integer default 5)
returns table (pairs bigint, would_change bigint, would_fail bigint, stale bigint, changes jsonb)
language plpgsql
stable
security definer
set search_path = pg_catalog, pg_temp
set datestyle = 'ISO, YMD' set intervalstyle = 'postgres' set timezone = 'UTC' set extra_float_digits = 1
set bytea_output = 'hex' set lc_monetary = 'C' set xmloption = 'content' set xmlbinary = 'base64'
set default_text_search_config = 'pg_catalog.simple' set timezone_abbreviations = 'Default' set array_nulls = on
as $$
declare
    q text;
begin
    if examples is null or examples < 0 then
        raise exception using errcode = 'US006', message = pg_catalog.format('invalid number of examples %s', examples),
            hint = 'Pass 0 or more.';
    end if;
    q := usersync._preview_sql(false, examples);
    begin
        execute q into pairs, would_change, would_fail, stale, changes;
    exception when data_exception or integrity_constraint_violation then
        -- Some value does not fit its target field: the run would record that pair in
        -- usersync.sync_errors and go on. Count and show such pairs instead of failing.
        execute usersync._preview_sql(true, examples) into pairs, would_change, would_fail, stale, changes;
    end;
    return next;
end
$$;
comment on function usersync.preview_resync(integer) is
    'Dry run of resync_all: pairs, how many would change, how many would fail (and why), how many are stale, and a few example field changes';
