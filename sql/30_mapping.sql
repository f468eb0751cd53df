-- 30_mapping.sql: validating the field mapping, the default mapping, and what a change sets off.
--
-- Admins edit usersync.field_mapping with plain INSERT/UPDATE/DELETE; each pair has its own
-- mapping. Every row is checked here (US003 on anything invalid); every statement that changes a
-- pair's mapping bumps its mapping version and regenerates its specialised functions
-- (40_codegen.sql). Existing contacts are not rewritten: sync_users / resync_all do that.

create or replace function usersync._field_type(p_pair text, p_module text, p_field text)
returns text
language sql stable
set search_path = pg_catalog, pg_temp
as $$
    select f.data_type from usersync.metadata_fields f where f.pair = p_pair and f.module = p_module and f.field = p_field
$$;

-- Explains why a name is not a metadata field of a module: unknown, or reserved to the engine.
create or replace function usersync._reject_field(p_pair text, p_module text, p_field text)
returns void
language plpgsql
set search_path = pg_catalog, pg_temp
as $$
declare
    m usersync.modules;
    label text := case p_module when 'users' then 'Users' else 'Contacts' end;
begin
    select * into m from usersync.modules x where x.pair = p_pair and x.module = p_module;
    if p_field = m.key_column or p_field = m.switch_column
       or exists (select from pg_catalog.pg_attribute a
                   where a.attrelid = m.relation and a.attname = p_field and (a.attnum < 0 or a.attgenerated <> '')) then
        raise exception using
            errcode = 'US003',
            message = pg_catalog.format('"%s" is a system column of the %s module, not a metadata field', p_field, label),
            detail = pg_catalog.format('The key, the synchronization switch, generated and system columns of %s cannot be mapped.',
                                       m.relation),
            hint = pg_catalog.format('Map one of the fields listed by: SELECT field FROM usersync.metadata_fields WHERE pair = %L AND module = %L',
                                     p_pair, p_module);
    end if;
    raise exception using
        errcode = 'US003',
        message = pg_catalog.format('unknown %s field "%s"', rtrim(p_module, 's'), p_field),
        detail = pg_catalog.format('%s has no metadata field named "%s"; mapping never creates fields.', m.relation, p_field),
        hint = pg_catalog.format('Map one of the fields listed by: SELECT field FROM usersync.metadata_fields WHERE pair = %L AND module = %L',
                                 p_pair, p_module);
end
$$;

create or replace function usersync._check_mapping_row()
returns trigger
language plpgsql
security definer
set search_path = pg_catalog, pg_temp
as $$
declare
    a usersync.attachments;
    other text;
begin
    perform usersync._lock_config_exclusive();
    a := usersync._pair(new.pair);
    if new.user_field is null or new.contact_field is null then
        raise exception using errcode = 'US003', message = 'a mapping needs both a user field and a contact field',
            hint = 'To remove a mapping, DELETE its row instead.';
    end if;
    if usersync._field_type(a.pair, 'users', new.user_field) is null then
        perform usersync._reject_field(a.pair, 'users', new.user_field);
    end if;
    if usersync._field_type(a.pair, 'contacts', new.contact_field) is null then
        perform usersync._reject_field(a.pair, 'contacts', new.contact_field);
    end if;

    -- Each field is mapped at most once. Checked here (not only by the unique constraints) to
    -- say which mapping holds it; the advisory lock makes the check race-free.
    select fm.contact_field into other from usersync.field_mapping fm
     where fm.pair = a.pair and fm.user_field = new.user_field
       and (tg_op = 'INSERT' or (fm.pair, fm.user_field) <> (old.pair, old.user_field));
    if found then
        raise exception using errcode = 'US003',
            message = pg_catalog.format('user field "%s" is already mapped (to contact field "%s")', new.user_field, other),
            detail = 'Each metadata field can be mapped only once.',
            hint = pg_catalog.format('Change that mapping instead: UPDATE usersync.field_mapping SET contact_field = ... '
                                     'WHERE pair = %L AND user_field = %L', a.pair, new.user_field);
    end if;
    select fm.user_field into other from usersync.field_mapping fm
     where fm.pair = a.pair and fm.contact_field = new.contact_field
       and (tg_op = 'INSERT' or (fm.pair, fm.contact_field) <> (old.pair, old.contact_field));
    if found then
        raise exception using errcode = 'US003',
            message = pg_catalog.format('contact field "%s" is already mapped (from user field "%s")', new.contact_field, other),
            detail = 'Each metadata field can be mapped only once.',
            hint = pg_catalog.format('Remove that mapping first: DELETE FROM usersync.field_mapping WHERE pair = %L AND user_field = %L',
                                     a.pair, other);
    end if;

    -- Checked user -> contact. Reversed pairs copy the other way with an explicit cast where no
    -- assignment cast exists (text -> date), so a bad value fails there, naming the pair.
    if not usersync._assignable(a.users, new.user_field, a.contacts, new.contact_field) then
        raise exception using errcode = 'US003',
            message = pg_catalog.format('user field "%s" (%s) cannot fill contact field "%s" (%s)', new.user_field,
                                        usersync._field_type(a.pair, 'users', new.user_field), new.contact_field,
                                        usersync._field_type(a.pair, 'contacts', new.contact_field)),
            detail = 'PostgreSQL has no assignment cast between these types.',
            hint = 'Map it to a contact field of a compatible type (any type can fill a text field).';
    end if;
    return new;
end
$$;

create or replace function usersync._mapping_changed()
returns trigger
language plpgsql
security definer
set search_path = pg_catalog, pg_temp
as $$
declare
    p record;
begin
    perform usersync._lock_config_exclusive();
    for p in select s.pair, x.current
               from usersync.mapping_state s
               cross join lateral (select coalesce(pg_catalog.jsonb_object_agg(m.user_field, m.contact_field), '{}') as current
                                     from usersync.field_mapping m where m.pair = s.pair) x
              where x.current is distinct from s.mapping
              order by s.pair loop
        -- (a pair whose mapping the statement left as it was becomes no staler)
        update usersync.mapping_state s set version = s.version + 1, changed_at = pg_catalog.now(), mapping = p.current
         where s.pair = p.pair;
        -- With no linked user at all, nothing can be stale. Asked once no transaction is open
        -- that wrote the users (its trigger ran the code of the mapping before, and may have made
        -- a link this cannot see, stale once committed): their table in SHARE mode, NOWAIT, then
        -- the links read again. Taken, later writers wait for this change and run its code; not
        -- taken, a pair may be stale, and writes stamp the pairs they rewrite until a resync.
        if usersync._pair_is_empty(p.pair) then
            begin
                execute pg_catalog.format('lock table %s in share mode nowait', (usersync._pair(p.pair)).users);
                if usersync._pair_is_empty(p.pair) then
                    update usersync.mapping_state s set synced_version = s.version where s.pair = p.pair;
                end if;
            exception when lock_not_available then
                null;
            end;
        end if;
        perform usersync._generate(p.pair);
    end loop;
    return null;
end
$$;

drop trigger if exists check_mapping_row on usersync.field_mapping;
create trigger check_mapping_row
    before insert or update on usersync.field_mapping
    for each row execute function usersync._check_mapping_row();

drop trigger if exists mapping_changed on usersync.field_mapping;
create trigger mapping_changed
    after insert or update or delete or truncate on usersync.field_mapping
    for each statement execute function usersync._mapping_changed();

-- The default: every user field with a same-named contact field it can fill.
create or replace function usersync.default_field_mapping(pair text default null)
returns table (user_field text, contact_field text)
language plpgsql stable
security definer
set search_path = pg_catalog, pg_temp
as $$
declare
    a usersync.attachments := usersync._pair(default_field_mapping.pair);
begin
    return query
    select u.field, c.field
      from usersync.metadata_fields u
      join usersync.metadata_fields c on c.pair = a.pair and c.module = 'contacts' and c.field = u.field
     where u.pair = a.pair and u.module = 'users'
       and usersync._assignable(a.users, u.field, a.contacts, c.field)
     order by u.position;
end
$$;
comment on function usersync.default_field_mapping(text) is 'The default mapping of a pair: every field both its tables have';

create or replace function usersync.reset_field_mapping(pair text default null)
returns bigint
language plpgsql
security definer
set search_path = pg_catalog, pg_temp
as $$
declare
    a usersync.attachments := usersync._pair(reset_field_mapping.pair);
    n bigint;
begin
    -- Already the default: nothing to do (deleting and inserting it again would make every pair stale).
    if not exists ((select m.user_field, m.contact_field from usersync.field_mapping m where m.pair = a.pair)
                   except (select d.user_field, d.contact_field from usersync.default_field_mapping(a.pair) d))
       and not exists ((select d.user_field, d.contact_field from usersync.default_field_mapping(a.pair) d)
                       except (select m.user_field, m.contact_field from usersync.field_mapping m where m.pair = a.pair)) then
        return (select count(*) from usersync.field_mapping m where m.pair = a.pair);
    end if;
    delete from usersync.field_mapping m where m.pair = a.pair;
    insert into usersync.field_mapping (pair, user_field, contact_field)
    select a.pair, d.user_field, d.contact_field from usersync.default_field_mapping(a.pair) d;
    get diagnostics n = row_count;
    return n;
end
$$;
comment on function usersync.reset_field_mapping(text) is 'Restores the default mapping of a pair; returns the number of mapped pairs of fields';
