-- 35_diagnose.sql: naming the user, contact and field behind a value that does not fit.
--
-- The engine copies whole sets of rows in one statement, so PostgreSQL's own error ("value too
-- long for type character varying(10)") says neither which pair nor which field. On that
-- (rare) path the engine replays the pair field by field, each attempt in a subtransaction that
-- is always rolled back, and reports the first field that fails. Keys travel as text here (pairs
-- have keys of any type) and are read back in their own type.

-- The probes below insert the user's value into the contacts table and roll back. They must not
-- take keys from the contacts' sequence (a failed bulk insert of 5,000 users burned 35,000 ids
-- in its diagnosis) nor fail on the key: a sequence-backed key is given an existing key (or 1
-- in an empty table) and the conflict skips the row after its values were converted and its
-- NOT NULL and CHECK constraints checked; a shared key is the user's; any other default (a
-- uuid) is left to run. Returns the key column list entry, its value and the clauses, for
-- "insert into C (KEYCOL, field) OVERRIDING select KEYVAL, u.field ... ON CONFLICT".
create or replace function usersync._probe_insert(a usersync.attachments, p_contact_field text, p_value text,
                                                  p_from text)
returns text
language sql
stable
set search_path = pg_catalog, pg_temp
as $$
    select case when a.shared_key or pg_catalog.pg_get_serial_sequence(a.contacts::text, a.contact_key) is not null
                then pg_catalog.format('insert into %s (%I, %I) %s select %s, %s %s on conflict do nothing',
                                       a.contacts, a.contact_key, p_contact_field,
                                       case when exists (select from pg_catalog.pg_attribute x
                                                          where x.attrelid = a.contacts and x.attname = a.contact_key
                                                            and x.attidentity = 'a')
                                            then 'overriding system value' else '' end,
                                       case when a.shared_key
                                            then pg_catalog.format('u.%I::%s', a.user_key,
                                                                   usersync._key_type(a.contacts, a.contact_key))
                                            else pg_catalog.format('coalesce((select min(k.%1$I) from %2$s k), 1)',
                                                                   a.contact_key, a.contacts) end,
                                       p_value, p_from)
                else pg_catalog.format('insert into %s (%I) select %s %s on conflict do nothing',
                                       a.contacts, p_contact_field, p_value, p_from) end
$$;

create or replace function usersync._diagnose(p_pair text, p_user_id text)
returns table (contact_id text, direction text, user_field text, contact_field text, sqlstate text, message text)
language plpgsql
security definer
set search_path = pg_catalog, pg_temp
-- the settings of the generated functions' conversions (usersync._gen_pins), so a diagnosis
-- fails exactly where they do
set datestyle = 'ISO, YMD' set intervalstyle = 'postgres' set timezone = 'UTC' set extra_float_digits = 1
set bytea_output = 'hex' set lc_monetary = 'C' set xmloption = 'content' set xmlbinary = 'base64'
set default_text_search_config = 'pg_catalog.simple' set timezone_abbreviations = 'Default' set array_nulls = on
as $$
declare
    a usersync.attachments := usersync._pair(p_pair);
    l record;
    m record;
    st text;
    msg text;
    col text;
    expr text;
begin
    execute pg_catalog.format('select l.active, l.source, l.contact_id::pg_catalog.text as contact_id from %s l'
                              ' where l.user_id = $1::%s', usersync._links_table(a.id), usersync._key_type(a.users, a.user_key))
       into l using p_user_id;
    for m in select fm.user_field, fm.contact_field from usersync.field_mapping fm where fm.pair = a.pair
              order by fm.user_field loop
        begin
            if l.active and l.source = 'contact' then
                expr := usersync._gen_reverse_expr(a.pair, 'c', m.contact_field, m.user_field);
                execute pg_catalog.format('update %s u set %I = %s from %s c where u.%I = $1::%s and c.%I = $2::%s',
                                          a.users, m.user_field, expr, a.contacts, a.user_key,
                                          usersync._key_type(a.users, a.user_key), a.contact_key,
                                          usersync._key_type(a.contacts, a.contact_key))
                  using p_user_id, l.contact_id;
            else
                execute usersync._probe_insert(a, m.contact_field, pg_catalog.format('u.%I', m.user_field),
                                               pg_catalog.format('from %s u where u.%I = $1::%s', a.users, a.user_key,
                                                                 usersync._key_type(a.users, a.user_key)))
                  using p_user_id;
            end if;
            raise sqlstate 'USX00';  -- undo the attempt
        exception
            when sqlstate 'USX00' then null;
            when others then
                get stacked diagnostics st = returned_sqlstate, msg = message_text, col = column_name;
                -- Another column's NOT NULL constraint is not this field's fault.
                if st like '22%' or col in (m.user_field, m.contact_field) then
                    return query select l.contact_id,
                                        case when l.active and l.source = 'contact' then 'contact' else 'user' end,
                                        m.user_field, m.contact_field, st, msg;
                    return;
                end if;
        end;
    end loop;
end
$$;

-- Does field uf -> cf go through for all of these users? One set-based attempt, always rolled
-- back. Only this field's fault counts (a data error, or one naming one of its columns).
create or replace function usersync._field_fits(p_pair text, p_user_ids text[], p_user_field text, p_contact_field text)
returns boolean
language plpgsql
security definer
set search_path = pg_catalog, pg_temp
-- the settings of the generated functions' conversions (usersync._gen_pins), so a diagnosis
-- fails exactly where they do
set datestyle = 'ISO, YMD' set intervalstyle = 'postgres' set timezone = 'UTC' set extra_float_digits = 1
set bytea_output = 'hex' set lc_monetary = 'C' set xmloption = 'content' set xmlbinary = 'base64'
set default_text_search_config = 'pg_catalog.simple' set timezone_abbreviations = 'Default' set array_nulls = on
as $$
declare
    a usersync.attachments := usersync._pair(p_pair);
    links text := usersync._links_table(a.id);
    ukt text := usersync._key_type(a.users, a.user_key);
    st text;
    col text;
begin
    begin
        -- user -> contact for user-sourced pairs (and users not linked yet)
        execute usersync._probe_insert(a, p_contact_field, pg_catalog.format('u.%I', p_user_field),
            pg_catalog.format('from %s u where u.%I = any($1::%s[])'
                              ' and not exists (select from %s l where l.user_id = u.%I and l.active and l.source = ''contact'')',
                              a.users, a.user_key, ukt, links, a.user_key))
          using p_user_ids;
        -- contact -> user for reversed pairs
        execute pg_catalog.format(
            'update %s u set %I = %s from %s c join %s l on l.contact_id = c.%I'
            ' where l.user_id = u.%I and l.active and l.source = ''contact'' and u.%I = any($1::%s[])',
            a.users, p_user_field,
            usersync._gen_reverse_expr(a.pair, 'c', p_contact_field, p_user_field),
            a.contacts, links, a.contact_key, a.user_key, a.user_key, ukt)
          using p_user_ids;
        raise sqlstate 'USX00';
    exception
        when sqlstate 'USX00' then return true;
        when others then
            get stacked diagnostics st = returned_sqlstate, col = column_name;
            return not (st like '22%' or col in (p_user_field, p_contact_field));
    end;
end
$$;

-- Raises the failure among the given users with user, contact and field named, keeping the
-- original SQLSTATE; returns quietly when none is found, so the caller re-raises the original.
-- Set-based: each mapped field is tried for all users at once, and the failing one is narrowed
-- down by halving, so a bad row 50,000 of a bulk insert costs a few dozen statements.
create or replace function usersync._explain_failure(p_pair text, p_user_ids text[])
returns void
language plpgsql
security definer
set search_path = pg_catalog, pg_temp
as $$
declare
    m record;
    col text;
    ids text[];
    half text[];
    n integer;
    uid text;
    d record;
begin
    if p_user_ids is null or pg_catalog.cardinality(p_user_ids) = 0 then
        return;
    end if;
    for m in select fm.user_field, fm.contact_field from usersync.field_mapping fm where fm.pair = p_pair
              order by fm.user_field loop
        if usersync._field_fits(p_pair, p_user_ids, m.user_field, m.contact_field) then
            continue;
        end if;
        ids := p_user_ids;
        while pg_catalog.cardinality(ids) > 1 loop
            n := pg_catalog.cardinality(ids) / 2;
            half := ids[1:n];
            ids := case when usersync._field_fits(p_pair, half, m.user_field, m.contact_field) then ids[n + 1:] else half end;
        end loop;
        uid := ids[1];
        select * into d from usersync._diagnose(p_pair, uid);
        if not found then
            continue;
        end if;
        if d.direction = 'contact' then
            raise exception using errcode = d.sqlstate,
                message = pg_catalog.format('cannot synchronize contact %s to user %s: contact field "%s" does not fit user field "%s"',
                                            d.contact_id, uid, d.contact_field, d.user_field),
                detail = d.message,
                hint = pg_catalog.format('Correct the contact''s value, or change the field mapping of pair %L (usersync.field_mapping).', p_pair);
        end if;
        raise exception using errcode = d.sqlstate,
            message = pg_catalog.format('cannot synchronize user %s to contact %s: user field "%s" does not fit contact field "%s"',
                                        uid, coalesce(d.contact_id::text, '(new)'), d.user_field, d.contact_field),
            detail = d.message,
            hint = pg_catalog.format('Correct the user''s value, or map the field to a contact field that can hold it '
                                     '(usersync.field_mapping, pair %L).', p_pair);
    end loop;
    -- Not a value's fault: a contact field that cannot be NULL, has no default and is not mapped
    -- (usersync._gen_contact_fields writes it NULL). Named with the class of the error it causes.
    select f.field into col
      from usersync.metadata_fields f
      left join usersync.field_mapping fm on fm.pair = f.pair and fm.contact_field = f.field
     where f.pair = p_pair and f.module = 'contacts' and f.not_null and not f.has_default and fm.user_field is null
     order by f.position limit 1;
    if found then
        raise exception using errcode = 'not_null_violation',
            message = pg_catalog.format('cannot synchronize user %s to a contact: contact field "%s" is NOT NULL, '
                                        'has no default and no user field is mapped to it', p_user_ids[1], col),
            detail = 'An unmapped contact field stays empty; this one cannot be empty.',
            hint = pg_catalog.format('Map a user field to it (usersync mapping set USER_FIELD %s), or give the column '
                                     'a default, or allow NULL in it.', col);
    end if;
end
$$;

-- A write the engine asked for touched fewer (or more) rows than it should have: something on the
-- table swallowed it (a restrictive row-level security policy, a BEFORE trigger returning NULL,
-- a row deleted behind the triggers' back). Failing here keeps a pair from being reported as
-- synced when it is not; see docs/reliability.md, "Trust model".
create or replace function usersync._lost_write(p_table regclass, p_action text, p_expected bigint, p_done bigint)
returns void
language plpgsql
set search_path = pg_catalog, pg_temp
as $$
begin
    if p_action = 'keep' then
        raise exception using errcode = 'US007',
            message = pg_catalog.format('something on %s changed the synchronized values of %s row(s) that usersync wrote',
                                        p_table, p_expected),
            detail = 'A BEFORE trigger (or a rule) on the table rewrote mapped fields: the pair would no longer be '
                     'the image of its source.',
            hint = pg_catalog.format('Let the triggers on %s leave mapped fields as usersync writes them.', p_table);
    end if;
    raise exception using errcode = 'US007',
        message = pg_catalog.format('usersync could not %s %s row(s) of %s: %s were %s', p_action, p_expected, p_table,
                                    p_done, case p_action when 'read' then 'visible' else 'affected' end),
        detail = 'Something on the table hid or skipped rows the engine writes: a row-level security policy that does '
                 'not let usersync_engine see them, a BEFORE trigger that returned NULL, or a row deleted while '
                 'the triggers were bypassed.',
        hint = pg_catalog.format('Check the policies and triggers on %s (usersync needs to see and write every '
                                 'row it synchronizes); SELECT usersync.sync_users() repairs missing rows.', p_table);
end
$$;
