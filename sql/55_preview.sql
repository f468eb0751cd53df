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
-- A pair whose values all convert still fails where its new row breaks a NOT NULL or CHECK
-- constraint of the target table: those are evaluated against the new row
-- (usersync._preview_violation), only where the table has such constraints. UNIQUE, EXCLUDE and
-- FOREIGN KEY constraints, which depend on other rows, are not.

-- The SQL expression of value p_value (an SQL expression) as column p_field of p_rel would store
-- it when assigned (INSERT/UPDATE), failing exactly where that assignment fails. An explicit CAST
-- does the same but for the length of character and bit strings: CAST truncates ('Professor' as
-- varchar(3) is 'Pro') where an assignment fails (22001). For those types the length coercion
-- function is called with isExplicit = false, as the parser does for an assignment (element by
-- element for an array), then the value is cast to the column's type (a no-op for a value that
-- fits). A domain's length is not in atttypmod but in its base type (typtypmod), under any
-- number of domains, on the column's type or on its elements: the walk below finds it.
create or replace function usersync._preview_assigned(p_value text, p_rel regclass, p_field text)
returns text
language plpgsql
stable
set search_path = pg_catalog, pg_temp
set datestyle = 'ISO, YMD' set intervalstyle = 'postgres' set timezone = 'UTC' set extra_float_digits = 1
set bytea_output = 'hex' set lc_monetary = 'C' set xmloption = 'content' set xmlbinary = 'base64'
set default_text_search_config = 'pg_catalog.simple' set timezone_abbreviations = 'Default' set array_nulls = on
as $$
declare
    typ oid;          -- walks from the column's type down to the type whose length counts
    mods integer;     -- the typmod that applies to it
    full_type text;   -- the column's type, as declared
    elem boolean := false;
    t record;
    fn text;
    leaf text;
begin
    select a.atttypid, a.atttypmod, pg_catalog.format_type(a.atttypid, a.atttypmod) into typ, mods, full_type
      from pg_catalog.pg_attribute a
     where a.attrelid = p_rel and a.attname = p_field and not a.attisdropped;
    loop
        select y.typtype, y.typbasetype, y.typtypmod, y.typcategory, y.typelem into t
          from pg_catalog.pg_type y where y.oid = typ;
        if t.typtype = 'd' then
            typ := t.typbasetype;  -- a domain: its base type, with the domain's typmod
            mods := t.typtypmod;
        elsif not elem and t.typcategory = 'A' and t.typelem <> 0 then
            typ := t.typelem;      -- an array: its elements, with the array's typmod
            elem := true;
        else
            exit;
        end if;
    end loop;
    if mods >= 0 then
        select pg_catalog.format('%I.%I', pn.nspname, p.proname),
               pg_catalog.format('%I.%I', bn.nspname, b.typname)  -- qualified: no typmod implied
          into fn, leaf
          from pg_catalog.pg_type b
          join pg_catalog.pg_namespace bn on bn.oid = b.typnamespace
          join pg_catalog.pg_cast k on k.castsource = b.oid and k.casttarget = b.oid and k.castmethod = 'f'
          join pg_catalog.pg_proc p on p.oid = k.castfunc and p.pronargs = 3
          join pg_catalog.pg_namespace pn on pn.oid = p.pronamespace
         where b.oid = typ;
    end if;
    if fn is null then
        return pg_catalog.format('cast(%s as %s)', p_value, full_type);
    elsif elem then
        return pg_catalog.format('case when (select pg_catalog.count(%1$s(x.x, %2$s, false))'
                                 ' from pg_catalog.unnest(cast(%3$s as %4$s[])) x(x)) >= 0 then cast(%3$s as %5$s) end',
                                 fn, mods, p_value, leaf, full_type);
    end if;
    return pg_catalog.format('cast(%s(cast(%s as %s), %s, false) as %s)', fn, p_value, leaf, mods, full_type);
end
$$;

-- The SQL expression of the value a resync would write into the target field of a mapped pair
-- of fields, from the source row named p_alias: the user's field into the contact's
-- (p_to_contact), or the contact's into the user's (reversed pairs).
create or replace function usersync._preview_image(p_pair text, p_to_contact boolean, p_alias text, p_user_field text,
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
                                          (select m.relation from usersync.modules m where m.pair = p_pair and m.module = 'contacts'),
                                          p_contact_field);
    end if;
    -- The engine's own choice: the contact's value as it is (then assigned), or an explicit cast.
    rev := usersync._gen_reverse_expr(p_pair, p_alias, p_contact_field, p_user_field);
    if rev = pg_catalog.format('%s.%I', p_alias, p_contact_field) then
        return usersync._preview_assigned(rev, (select m.relation from usersync.modules m where m.pair = p_pair and m.module = 'users'),
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

-- The SQL expression "p_current differs from p_image" for column p_field of p_rel (p_image an
-- expression of the column's type, or 'null'). By the type's equality where it has one, as the
-- engine decides whether to rewrite a field; a type without one (json, xml, point; an array or
-- a composite of such a type, whose equality fails only when it runs) is compared by its text
-- form, i.e. "would the stored value change". The engine rewrites a field of a different type
-- whatever it holds (usersync._gen_contact_same), so the preview never needs more than that.
create or replace function usersync._preview_differs(p_rel regclass, p_field text, p_current text, p_image text)
returns text
language plpgsql
stable
set search_path = pg_catalog, pg_temp
set datestyle = 'ISO, YMD' set intervalstyle = 'postgres' set timezone = 'UTC' set extra_float_digits = 1
set bytea_output = 'hex' set lc_monetary = 'C' set xmloption = 'content' set xmlbinary = 'base64'
set default_text_search_config = 'pg_catalog.simple' set timezone_abbreviations = 'Default' set array_nulls = on
as $$
declare
    type_name text;
begin
    if p_image = 'null' then
        return pg_catalog.format('%s is distinct from null', p_current);  -- a null test: no equality needed
    end if;
    select pg_catalog.format_type(a.atttypid, null) into type_name
      from pg_catalog.pg_attribute a
     where a.attrelid = p_rel and a.attname = p_field and not a.attisdropped;
    if usersync._gen_comparable(type_name) then
        return pg_catalog.format('%s is distinct from (%s)', p_current, p_image);
    end if;
    return pg_catalog.format('(%s)::pg_catalog.text is distinct from (%s)::pg_catalog.text', p_current, p_image);
end
$$;

-- The table's own constraints that a write of the engine to p_rel can break, NOT NULL then CHECK
-- (in the order PostgreSQL checks them: NOT NULL by column, CHECK by name), as one SQL
-- expression over the row named p_row that is about to be written: NULL when the new row passes
-- them, else {"field": ..., "sqlstate": ..., "error": ...} (PostgreSQL's message). p_written:
-- the columns written, {column: SQL expression of its new value}; the other columns keep their
-- value (a generated column too: a CHECK on one sees its current value). Only NOT NULL on a written column, and CHECKs that read one (or any column, or none,
-- or were added NOT VALID) can fail. NULL (SQL) when there is none: nothing to check.
-- p_one_by_one: evaluated by _preview_row_error in a subtransaction, row by row (a CHECK that
-- raises a data error on the new row does so in the run too: a failure, not an error of the
-- preview); otherwise in the query itself, where such an error sends the preview to its next
-- level (usersync.preview_resync).
-- UNIQUE, EXCLUDE and FOREIGN KEY constraints (which depend on other rows) are not checked.
create or replace function usersync._preview_violation(p_rel regclass, p_row text, p_written jsonb, p_one_by_one boolean)
returns text
language plpgsql
stable
set search_path = pg_catalog, pg_temp
set datestyle = 'ISO, YMD' set intervalstyle = 'postgres' set timezone = 'UTC' set extra_float_digits = 1
set bytea_output = 'hex' set lc_monetary = 'C' set xmloption = 'content' set xmlbinary = 'base64'
set default_text_search_config = 'pg_catalog.simple' set timezone_abbreviations = 'Default' set array_nulls = on
as $$
declare
    rel text;
    tests text;
    fields text;
    cols text;
    vals text;
begin
    select c.relname into rel from pg_catalog.pg_class c where c.oid = p_rel;
    select pg_catalog.string_agg(x.test, ' ' order by x.ord, x.attnum, x.conname),
           pg_catalog.string_agg(x.field, ', ' order by x.ord, x.attnum, x.conname)
      into tests, fields
      from (select 1 as ord, a.attnum, null::pg_catalog.name as conname, a.attname::pg_catalog.text as field,
                   pg_catalog.format('when %I is not distinct from null then pg_catalog.jsonb_build_object('
                                     '''field'', %L, ''sqlstate'', ''23502'', ''error'', %L)',
                                     a.attname, a.attname,
                                     pg_catalog.format('null value in column "%s" of relation "%s" violates not-null constraint',
                                                       a.attname, rel)) as test
              from pg_catalog.pg_attribute a
             where a.attrelid = p_rel and a.attnum > 0 and not a.attisdropped and a.attnotnull
               and p_written ->> a.attname::pg_catalog.text is not null
            union all
            select 2, 0, k.conname, f.names,
                   pg_catalog.format('when (%s) is false then pg_catalog.jsonb_build_object('
                                     '''field'', %L, ''sqlstate'', ''23514'', ''error'', %L)',
                                     pg_catalog.pg_get_expr(k.conbin, k.conrelid), f.names,
                                     pg_catalog.format('new row for relation "%s" violates check constraint "%s"',
                                                       rel, k.conname))
              from pg_catalog.pg_constraint k
             cross join lateral (
                 select coalesce(pg_catalog.string_agg(a.attname::pg_catalog.text, ', ' order by a.attnum),
                                 k.conname::pg_catalog.text) as names,
                        pg_catalog.bool_or(p_written ->> a.attname::pg_catalog.text is not null) as reads_written
                   from pg_catalog.pg_attribute a
                  where a.attrelid = p_rel and a.attnum = any(k.conkey) and a.attnum > 0) f
             where k.conrelid = p_rel and k.contype = 'c'
               and (f.reads_written or not k.convalidated or k.conkey is null or 0 = any(k.conkey)
                    or pg_catalog.cardinality(k.conkey) = 0)) x;
    if tests is null then
        return null;
    end if;
    select pg_catalog.string_agg(pg_catalog.quote_ident(a.attname), ', ' order by a.attnum),
           pg_catalog.string_agg(coalesce('(' || (p_written ->> a.attname::pg_catalog.text) || ')',
                                          pg_catalog.format('%s.%I', p_row, a.attname)), ', ' order by a.attnum)
      into cols, vals
      from pg_catalog.pg_attribute a
     where a.attrelid = p_rel and a.attnum > 0 and not a.attisdropped;
    if p_one_by_one then
        return pg_catalog.format('usersync._preview_row_error(%L, %L, %L, row(%s)::%s)',
                                 'case ' || tests || ' end', rel, fields, vals, p_rel);
    end if;
    -- The new row as a derived table named like the relation, so that the CHECK expressions
    -- (deparsed for it: bare column names, "relname.*") read its columns.
    return pg_catalog.format('(select case %s end from (select %s) as %I(%s))', tests, vals, rel, cols);
end
$$;

-- A _preview_violation test (p_check, over the columns of a relation named p_name) run on the
-- new row p_row (of the relation's row type) in a subtransaction: a data exception (or an
-- integrity violation) it raises is the pair's failure, reported for the constraints' fields
-- p_field.
create or replace function usersync._preview_row_error(p_check text, p_name text, p_field text, p_row anyelement)
returns jsonb
language plpgsql
stable
set search_path = pg_catalog, pg_temp
set datestyle = 'ISO, YMD' set intervalstyle = 'postgres' set timezone = 'UTC' set extra_float_digits = 1
set bytea_output = 'hex' set lc_monetary = 'C' set xmloption = 'content' set xmlbinary = 'base64'
set default_text_search_config = 'pg_catalog.simple' set timezone_abbreviations = 'Default' set array_nulls = on
as $$
declare
    r jsonb;
    st text;
    msg text;
begin
    execute pg_catalog.format('select %s from (select ($1).*) as %I', p_check, p_name) into r using p_row;
    return r;
exception when data_exception or integrity_constraint_violation then
    get stacked diagnostics st = returned_sqlstate, msg = message_text;
    return pg_catalog.jsonb_build_object('field', p_field, 'sqlstate', st, 'error', msg);
end
$$;

-- The preview's query, at one of three levels (usersync.preview_resync tries them in turn):
--   0  everything in the query itself (fast; fails on the first value that does not fit);
--   1  the fields whose types differ tried value by value with _preview_error (slow, never fails
--      on a value), the target tables' constraints still in the query;
--   2  the constraints too tried row by row, in a subtransaction (only a CHECK expression that
--      raises on a new row gets here).
-- Columns: pairs, would_change, would_fail, stale, changes.
--
-- A pair whose values all convert can still fail on a constraint of its target table (NOT NULL,
-- CHECK: _preview_violation) when the run writes it, that is when one of its fields differs (the
-- engine skips a pair that is already the image of its source, usersync._gen_contact_same;
-- values of another type are compared converted). Only where a table has such constraints on what the engine
-- writes: at level 0 the query reads the pairs a second time for them ("broken"), at levels 1
-- and 2 they are one more row of each pair, tried only when its values all converted.
create or replace function usersync._preview_sql(p_pair text, p_level integer, p_examples integer)
returns text
language plpgsql
stable
set search_path = pg_catalog, pg_temp
set datestyle = 'ISO, YMD' set intervalstyle = 'postgres' set timezone = 'UTC' set extra_float_digits = 1
set bytea_output = 'hex' set lc_monetary = 'C' set xmloption = 'content' set xmlbinary = 'base64'
set default_text_search_config = 'pg_catalog.simple' set timezone_abbreviations = 'Default' set array_nulls = on
as $$
declare
    careful boolean := p_level >= 1;  -- values tried one by one
    mu usersync.modules;
    mc usersync.modules;
    f record;
    img text;
    dif text;
    n integer := 0;
    c_rows text[] := '{}';  -- per contact field: (field, current, new, differs, error) (user-sourced pairs)
    c_tries text := '';     -- the lateral attempts those rows read (careful)
    c_ok text[] := '{}';    -- "no attempt failed", for the constraints (careful)
    c_written jsonb := '{}';  -- contact column -> its new value
    c_differs text[] := '{}';
    c_check text;
    u_rows text[] := '{}';  -- per mapped user field, likewise (reversed pairs)
    u_tries text := '';
    u_ok text[] := '{}';
    u_written jsonb := '{}';
    u_differs text[] := '{}';
    u_check text;
    probe text;
    pair_from text;
    broken text[] := '{}';
begin
    select * into mu from usersync.modules x where x.pair = p_pair and x.module = 'users';
    select * into mc from usersync.modules x where x.pair = p_pair and x.module = 'contacts';

    for f in select cf.field as contact_field, cf.data_type, cf.data_type <> cf.user_data_type as retyped, cf.user_field
               from usersync._gen_contact_fields(p_pair) cf
              order by cf.position loop
        img := case when f.user_field is null then 'null'
                    when not f.retyped then pg_catalog.format('u.%I', f.user_field)
                    else usersync._preview_image(p_pair, true, 'u', f.user_field, f.contact_field) end;
        dif := usersync._preview_differs(mc.relation, f.contact_field, pg_catalog.format('c.%I', f.contact_field), img);
        c_written := c_written || pg_catalog.jsonb_build_object(
            f.contact_field, case when f.user_field is null then pg_catalog.format('cast(null as %s)', f.data_type) else img end);
        c_differs := c_differs || dif;
        if careful and f.retyped then
            n := n + 1;
            probe := usersync._preview_image(p_pair, true, 'v', f.user_field, f.contact_field);
            c_tries := c_tries || pg_catalog.format(
                ' cross join lateral (select usersync._preview_error(%L, %L, u.%I) offset 0) e%s(err)',
                probe, f.user_field, f.user_field, n);
            c_ok := c_ok || pg_catalog.format('e%s.err is null', n);
            c_rows := c_rows || pg_catalog.format(
                '(%1$L, c.%2$I::pg_catalog.text, case when e%4$s.err is null then (%3$s)::pg_catalog.text end,'
                ' case when e%4$s.err is null then %5$s else false end, e%4$s.err)',
                f.contact_field, f.contact_field, img, n, dif);
        else
            c_rows := c_rows || pg_catalog.format(
                '(%1$L, c.%2$I::pg_catalog.text, (%3$s)::pg_catalog.text, %4$s, null::pg_catalog.jsonb)',
                f.contact_field, f.contact_field, img, dif);
        end if;
    end loop;

    for f in select m.user_field, m.contact_field, cf.data_type <> uf.data_type as retyped
               from usersync.field_mapping m
               join usersync.metadata_fields uf on uf.pair = m.pair and uf.module = 'users' and uf.field = m.user_field
               join usersync.metadata_fields cf on cf.pair = m.pair and cf.module = 'contacts' and cf.field = m.contact_field
              where m.pair = p_pair
              order by uf.position loop
        img := case when not f.retyped then pg_catalog.format('c.%I', f.contact_field)
                    else usersync._preview_image(p_pair, false, 'c', f.user_field, f.contact_field) end;
        dif := usersync._preview_differs(mu.relation, f.user_field, pg_catalog.format('u.%I', f.user_field), img);
        u_written := u_written || pg_catalog.jsonb_build_object(f.user_field, img);
        u_differs := u_differs || dif;
        if careful and f.retyped then
            n := n + 1;
            probe := usersync._preview_image(p_pair, false, 'v', f.user_field, f.contact_field);
            u_tries := u_tries || pg_catalog.format(
                ' cross join lateral (select usersync._preview_error(%L, %L, c.%I) offset 0) e%s(err)',
                probe, f.contact_field, f.contact_field, n);
            u_ok := u_ok || pg_catalog.format('e%s.err is null', n);
            u_rows := u_rows || pg_catalog.format(
                '(%1$L, u.%2$I::pg_catalog.text, case when e%4$s.err is null then (%3$s)::pg_catalog.text end,'
                ' case when e%4$s.err is null then %5$s else false end, e%4$s.err)',
                f.user_field, f.user_field, img, n, dif);
        else
            u_rows := u_rows || pg_catalog.format(
                '(%1$L, u.%2$I::pg_catalog.text, (%3$s)::pg_catalog.text, %4$s, null::pg_catalog.jsonb)',
                f.user_field, f.user_field, img, dif);
        end if;
    end loop;

    -- The table constraints each direction can break, for the pairs the run writes.
    c_check := usersync._preview_violation(mc.relation, 'c', c_written, p_level >= 2);
    if c_check is not null then
        c_check := pg_catalog.format('case when %s then %s end',
                                     case when pg_catalog.cardinality(c_differs) = 0 then 'false'
                                          else '(' || pg_catalog.array_to_string(c_differs, ' or ') || ')' end,
                                     c_check);
    end if;
    if pg_catalog.cardinality(u_rows) > 0 then
        u_check := usersync._preview_violation(mu.relation, 'u', u_written, p_level >= 2);
    end if;
    if u_check is not null then
        u_check := pg_catalog.format('case when %s then %s end',
                                     case when pg_catalog.cardinality(u_differs) = 0 then 'false'
                                          else '(' || pg_catalog.array_to_string(u_differs, ' or ') || ')' end,
                                     u_check);
    end if;
    pair_from := pg_catalog.format('%s l join %s u on u.%I = l.user_id join %s c on c.%I = l.contact_id',
                                   usersync._links_table(mu.pair_id), mu.relation, mu.key_column, mc.relation, mc.key_column);
    if careful then
        -- One more row per pair, tried only when none of its values failed to convert.
        if c_check is not null then
            c_tries := c_tries || pg_catalog.format(' cross join lateral (select case when %s then %s end offset 0) k(err)',
                                                    case when pg_catalog.cardinality(c_ok) = 0 then 'true'
                                                         else pg_catalog.array_to_string(c_ok, ' and ') end, c_check);
            c_rows := c_rows || '(k.err ->> ''field'', null::pg_catalog.text, null::pg_catalog.text, false, k.err - ''field'')'::text;
        end if;
        if u_check is not null then
            u_tries := u_tries || pg_catalog.format(' cross join lateral (select case when %s then %s end offset 0) k(err)',
                                                    case when pg_catalog.cardinality(u_ok) = 0 then 'true'
                                                         else pg_catalog.array_to_string(u_ok, ' and ') end, u_check);
            u_rows := u_rows || '(k.err ->> ''field'', null::pg_catalog.text, null::pg_catalog.text, false, k.err - ''field'')'::text;
        end if;
    else
        if c_check is not null then
            broken := broken || pg_catalog.format(
                'select l.user_id, l.contact_id, k.err ->> ''field'', null::pg_catalog.text, null::pg_catalog.text, false,'
                ' k.err - ''field'' from %s cross join lateral (select %s offset 0) k(err)'
                ' where l.active and l.source = ''user'' and k.err is not null', pair_from, c_check);
        end if;
        if u_check is not null then
            broken := broken || pg_catalog.format(
                'select l.user_id, l.contact_id, k.err ->> ''field'', null::pg_catalog.text, null::pg_catalog.text, false,'
                ' k.err - ''field'' from %s cross join lateral (select %s offset 0) k(err)'
                ' where l.active and l.source = ''contact'' and k.err is not null', pair_from, u_check);
        end if;
    end if;
    if pg_catalog.cardinality(u_rows) = 0 then
        u_rows := array['(null::pg_catalog.text, null::pg_catalog.text, null::pg_catalog.text, false, null::pg_catalog.jsonb)'];
    end if;

    return pg_catalog.format($q$
        with diffs as (
            select l.user_id, l.contact_id, d.field, d.cur, d.new, d.differs, d.err
              from %1$s
             %2$s
             cross join lateral (values %3$s) d(field, cur, new, differs, err)
             where l.active and l.source = 'user'
            union all
            select l.user_id, l.contact_id, d.field, d.cur, d.new, d.differs, d.err
              from %1$s
             %4$s
             cross join lateral (values %5$s) d(field, cur, new, differs, err)
             where l.active and l.source = 'contact'),
        failed(user_id, contact_id, field, cur, new, differs, err) as (%6$s),
        changed as (select * from diffs d where d.differs %7$s)
        select (select pg_catalog.count(*) from %9$s l where l.active),
               (select pg_catalog.count(distinct x.user_id) from changed x),
               (select pg_catalog.count(distinct x.user_id) from failed x),
               (select pg_catalog.count(*) from usersync.synchronized_contacts l where l.pair = %10$L and not l.up_to_date),
               coalesce((select pg_catalog.jsonb_agg(
                                    case when x.failing
                                         then pg_catalog.jsonb_build_object('user_id', x.user_id, 'contact_id', x.contact_id,
                                                                            'field', x.field, 'from', x.cur) || x.err
                                         else pg_catalog.jsonb_build_object('user_id', x.user_id, 'contact_id', x.contact_id,
                                                                            'field', x.field, 'from', x.cur, 'to', x.new) end
                                    order by x.failing desc, x.user_id, x.field)
                           from ((select true as failing, y.* from failed y order by y.user_id, y.field limit %8$s)
                                 union all
                                 (select false, y.* from changed y order by y.user_id, y.field limit %8$s)) x), '[]')
        $q$, pair_from,
        c_tries, pg_catalog.array_to_string(c_rows, ', '), u_tries, pg_catalog.array_to_string(u_rows, ', '),
        case when careful then 'select * from diffs d where d.err is not null'
             -- the pairs the constraints of their target reject: read again, so that diffs
             -- stays inlined (one pass) in changed
             when pg_catalog.cardinality(broken) > 0 then pg_catalog.array_to_string(broken, ' union all ')
             -- no second reference to diffs: the fast query stays one pass, diffs inlined
             else 'select null::' || usersync._key_type(mu.relation, mu.key_column)
                  || ', null::' || usersync._key_type(mc.relation, mc.key_column) || ', null::pg_catalog.text,'
                  ' null::pg_catalog.text, null::pg_catalog.text, null::pg_catalog.bool,'
                  ' null::pg_catalog.jsonb where false' end,
        case when careful or pg_catalog.cardinality(broken) > 0
             then 'and not exists (select from failed y where y.user_id = d.user_id)' else '' end,
        p_examples, usersync._links_table(mu.pair_id), p_pair);
end
$$;

create or replace function usersync.preview_resync(examples integer default 5, pair text default null)
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
    p text := (usersync._pair(preview_resync.pair)).pair;
    q text;
begin
    if examples is null or examples < 0 then
        raise exception using errcode = 'US006', message = pg_catalog.format('invalid number of examples %s', examples),
            hint = 'Pass 0 or more.';
    end if;
    q := usersync._preview_sql(p, 0, examples);
    begin
        execute q into pairs, would_change, would_fail, stale, changes;
    exception when data_exception or integrity_constraint_violation then
        -- Some value does not fit its target field: the run would record that pair in
        -- usersync.sync_errors and go on. Count and show such pairs instead of failing.
        begin
            execute usersync._preview_sql(p, 1, examples) into pairs, would_change, would_fail, stale, changes;
        exception when data_exception or integrity_constraint_violation then
            -- A CHECK of a target table raises on some new row: the run records that pair too.
            execute usersync._preview_sql(p, 2, examples) into pairs, would_change, would_fail, stale, changes;
        end;
    end;
    return next;
end
$$;
comment on function usersync.preview_resync(integer, text) is
    'Dry run of resync_all: pairs, how many would change, how many would fail (and why), how many are stale, and a few example field changes';
