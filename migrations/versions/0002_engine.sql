-- 20_catalog.sql: the engine's configuration and state, as tables with constraints.
--
-- modules        which tables are the Users and Contacts modules (the engine reads names and
--                columns from here and from the catalog, never from hard-coded lists)
-- settings       the two delete toggles, one row
-- field_mapping  which user field fills which contact field (validated in 30_mapping.sql)
-- mapping_state  a version number bumped by every mapping change ("up to date" compares it)
-- links          one row per user that has (or had) a contact; active = the switch is on
-- sync_errors    the last failure of each pair during "Update all synchronized users"
-- resync_state   the cursor of the current or last resync_all run, so a rerun resumes

create table if not exists usersync.modules (
    module        text primary key check (module in ('users', 'contacts')),
    relation      regclass not null unique,
    key_column    name not null,
    switch_column name,
    check ((module = 'users') = (switch_column is not null))
);
comment on table usersync.modules is 'The tables the engine keeps in step; key and switch columns are not metadata fields';
insert into usersync.modules (module, relation, key_column, switch_column)
values ('users', 'public.users', 'id', 'sync_to_contact'),
       ('contacts', 'public.contacts', 'id', null)
on conflict (module) do nothing;

create table if not exists usersync.settings (
    singleton                boolean primary key default true check (singleton),
    delete_contact_with_user boolean not null default false,
    delete_user_with_contact boolean not null default false
);
comment on table usersync.settings is 'Delete behaviour; exactly one row, changed with UPDATE';
comment on column usersync.settings.delete_contact_with_user is 'Delete contact when user is deleted';
comment on column usersync.settings.delete_user_with_contact is 'Delete user when contact is deleted (reversed pairs)';
insert into usersync.settings default values on conflict do nothing;

create table if not exists usersync.field_mapping (
    user_field    text primary key,
    contact_field text not null unique
);
comment on table usersync.field_mapping is
    'One row per mapped pair; edit with INSERT/UPDATE/DELETE; usersync.reset_field_mapping() restores the default';

create table if not exists usersync.mapping_state (
    singleton  boolean primary key default true check (singleton),
    version     bigint not null default 1,
    changed_at  timestamptz not null default pg_catalog.now(),
    field_types jsonb not null default '{}',  -- mapped fields' types at the last generation (60_ddl_guard.sql)
    -- The version that every pair is known to be on: set when a resync run finishes with no failure.
    -- While it lags behind version, stale pairs may exist and writes stamp the pairs they rewrite;
    -- once equal, that check costs nothing (no index on links.mapping_version is needed).
    synced_version bigint not null default 0
);

create table if not exists usersync.links (
    user_id         bigint primary key,
    contact_id      bigint not null unique,
    source          text not null default 'user' check (source in ('user', 'contact')),
    active          boolean not null default true,
    mapping_version bigint not null,
    synced_at       timestamptz not null default pg_catalog.now()
) with (fillfactor = 70);  -- room on each page, so stamping a resynced pair is a HOT update
comment on table usersync.links is
    'User-contact pairs. Inactive rows remember the contact of a user whose switch is off, so re-enabling re-links it';
comment on column usersync.links.synced_at is 'Last full sync of the pair under the mapping version it records';
-- Guards ask "is there any reversed pair at all?" before joining; this keeps that question O(1).
-- (No index on mapping_version: it would make every stamp a non-HOT update; see synced_version.)
create index if not exists links_reversed on usersync.links (user_id) where active and source = 'contact';

create table if not exists usersync.sync_errors (
    user_id     bigint primary key,
    contact_id  bigint,
    field       text,
    sqlstate    text not null,
    message     text not null,
    occurred_at timestamptz not null default pg_catalog.now()
);
comment on table usersync.sync_errors is
    'Pairs that failed during resync_all, with the reason; a row is cleared when its pair next syncs';

create table if not exists usersync.resync_state (
    singleton       boolean primary key default true check (singleton),
    started_at      timestamptz not null,
    finished_at     timestamptz,
    mapping_version bigint not null,
    after_user_id   bigint,
    total           bigint not null,
    synced          bigint not null default 0,  -- pairs brought up to date
    changed         bigint not null default 0,  -- of which a target row was rewritten
    failed          bigint not null default 0
);
comment on table usersync.resync_state is 'Progress of the current (finished_at is null) or last resync_all run';

create or replace view usersync.metadata_fields as
select m.module,
       a.attname::text as field,
       pg_catalog.format_type(a.atttypid, a.atttypmod) as data_type,
       coalesce(pg_catalog.col_description(a.attrelid, a.attnum), a.attname::text) as label,
       a.attnum as position
  from usersync.modules m
  join pg_catalog.pg_attribute a on a.attrelid = m.relation
 where a.attnum > 0
   and not a.attisdropped
   and a.attgenerated = ''
   and a.attname <> m.key_column
   and a.attname is distinct from m.switch_column;
comment on view usersync.metadata_fields is 'The live catalog of both modules'' metadata fields';
-- 30_mapping.sql: validating the field mapping, the default mapping, and what a change sets off.
--
-- Admins edit usersync.field_mapping with plain INSERT/UPDATE/DELETE. Every row is checked
-- here (US003 on anything invalid); every statement that changes the mapping bumps the mapping
-- version and regenerates the engine's specialised functions (40_codegen.sql). Existing
-- contacts are not rewritten: sync_users / resync_all do that.

-- One advisory lock serializes every configuration change (mapping edits, code generation,
-- resync batches take it shared), so no batch ever runs half on an old mapping.
create or replace function usersync._config_lock_key()
returns bigint
language sql immutable parallel safe
set search_path = ''
as $$ select 7311046471950211001::bigint $$;

-- Can a value of user field uf be assigned to contact field cf (or the reverse)? Asked of the
-- parser itself: EXPLAIN plans the INSERT without running it, and fails exactly when PostgreSQL
-- has no assignment cast (text -> date fails; date -> text works).
create or replace function usersync._assignable(p_from regclass, p_from_field text, p_to regclass, p_to_field text)
returns boolean
language plpgsql
set search_path = ''
as $$
begin
    execute pg_catalog.format('explain (costs off) insert into %s (%I) select src.%I from %s src',
                              p_to, p_to_field, p_from_field, p_from);
    return true;
exception when datatype_mismatch or cannot_coerce then
    return false;
end
$$;

create or replace function usersync._field_type(p_module text, p_field text)
returns text
language sql stable
set search_path = ''
as $$
    select f.data_type from usersync.metadata_fields f where f.module = p_module and f.field = p_field
$$;

-- Explains why a name is not a metadata field of a module: unknown, or reserved to the engine.
create or replace function usersync._reject_field(p_module text, p_field text)
returns void
language plpgsql
set search_path = ''
as $$
declare
    m usersync.modules;
    label text := case p_module when 'users' then 'Users' else 'Contacts' end;
begin
    select * into m from usersync.modules where module = p_module;
    if p_field = m.key_column or p_field = m.switch_column
       or exists (select from pg_catalog.pg_attribute a
                   where a.attrelid = m.relation and a.attname = p_field and (a.attnum < 0 or a.attgenerated <> '')) then
        raise exception using
            errcode = 'US003',
            message = pg_catalog.format('"%s" is a system column of the %s module, not a metadata field', p_field, label),
            detail = pg_catalog.format('The key, the synchronization switch, generated and system columns of %s cannot be mapped.',
                                       m.relation),
            hint = pg_catalog.format('Map one of the fields listed by: SELECT field FROM usersync.metadata_fields WHERE module = %L',
                                     p_module);
    end if;
    raise exception using
        errcode = 'US003',
        message = pg_catalog.format('unknown %s field "%s"', rtrim(p_module, 's'), p_field),
        detail = pg_catalog.format('%s has no metadata field named "%s"; mapping never creates fields.', m.relation, p_field),
        hint = pg_catalog.format('Map one of the fields listed by: SELECT field FROM usersync.metadata_fields WHERE module = %L',
                                 p_module);
end
$$;

create or replace function usersync._check_mapping_row()
returns trigger
language plpgsql
security definer
set search_path = ''
as $$
declare
    users_rel regclass := (select relation from usersync.modules where module = 'users');
    contacts_rel regclass := (select relation from usersync.modules where module = 'contacts');
    other text;
begin
    perform pg_catalog.pg_advisory_xact_lock(usersync._config_lock_key());
    if new.user_field is null or new.contact_field is null then
        raise exception using errcode = 'US003', message = 'a mapping needs both a user field and a contact field',
            hint = 'To remove a mapping, DELETE its row instead.';
    end if;
    if usersync._field_type('users', new.user_field) is null then
        perform usersync._reject_field('users', new.user_field);
    end if;
    if usersync._field_type('contacts', new.contact_field) is null then
        perform usersync._reject_field('contacts', new.contact_field);
    end if;

    -- Each field is mapped at most once. Checked here (not only by the unique constraints) to
    -- say which mapping holds it; the advisory lock makes the check race-free.
    select fm.contact_field into other from usersync.field_mapping fm
     where fm.user_field = new.user_field and (tg_op = 'INSERT' or fm.user_field <> old.user_field);
    if found then
        raise exception using errcode = 'US003',
            message = pg_catalog.format('user field "%s" is already mapped (to contact field "%s")', new.user_field, other),
            detail = 'Each metadata field can be mapped only once.',
            hint = pg_catalog.format('Change that mapping instead: UPDATE usersync.field_mapping SET contact_field = ... WHERE user_field = %L',
                                     new.user_field);
    end if;
    select fm.user_field into other from usersync.field_mapping fm
     where fm.contact_field = new.contact_field and (tg_op = 'INSERT' or fm.contact_field <> old.contact_field);
    if found then
        raise exception using errcode = 'US003',
            message = pg_catalog.format('contact field "%s" is already mapped (from user field "%s")', new.contact_field, other),
            detail = 'Each metadata field can be mapped only once.',
            hint = pg_catalog.format('Remove that mapping first: DELETE FROM usersync.field_mapping WHERE user_field = %L', other);
    end if;

    -- Checked user -> contact. Reversed pairs copy the other way with an explicit cast where no
    -- assignment cast exists (text -> date), so a bad value fails there, naming the pair.
    if not usersync._assignable(users_rel, new.user_field, contacts_rel, new.contact_field) then
        raise exception using errcode = 'US003',
            message = pg_catalog.format('user field "%s" (%s) cannot fill contact field "%s" (%s)', new.user_field,
                                        usersync._field_type('users', new.user_field), new.contact_field,
                                        usersync._field_type('contacts', new.contact_field)),
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
set search_path = ''
as $$
begin
    perform pg_catalog.pg_advisory_xact_lock(usersync._config_lock_key());
    update usersync.mapping_state set version = version + 1, changed_at = pg_catalog.now();
    -- With no pair at all, nothing can be stale.
    if not exists (select from usersync.links l where l.active) then
        update usersync.mapping_state set synced_version = version;
    end if;
    perform usersync._generate();
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
create or replace function usersync.default_field_mapping()
returns table (user_field text, contact_field text)
language sql stable
security definer
set search_path = ''
as $$
    select u.field, c.field
      from usersync.metadata_fields u
      join usersync.metadata_fields c on c.module = 'contacts' and c.field = u.field
     where u.module = 'users'
       and usersync._assignable((select relation from usersync.modules where module = 'users'), u.field,
                                (select relation from usersync.modules where module = 'contacts'), c.field)
     order by u.position
$$;
comment on function usersync.default_field_mapping() is 'The default mapping: every field both modules have';

create or replace function usersync.reset_field_mapping()
returns bigint
language plpgsql
security definer
set search_path = ''
as $$
declare
    n bigint;
begin
    delete from usersync.field_mapping;
    insert into usersync.field_mapping (user_field, contact_field)
    select d.user_field, d.contact_field from usersync.default_field_mapping() d;
    get diagnostics n = row_count;
    return n;
end
$$;
comment on function usersync.reset_field_mapping() is 'Restores the default mapping; returns the number of mapped pairs';
-- 35_diagnose.sql: naming the user, contact and field behind a value that does not fit.
--
-- The engine copies whole sets of rows in one statement, so PostgreSQL's own error ("value too
-- long for type character varying(10)") says neither which pair nor which field. On that
-- (rare) path the engine replays the pair field by field, each attempt in a subtransaction that
-- is always rolled back, and reports the first field that fails.

create or replace function usersync._diagnose(p_user_id bigint)
returns table (contact_id bigint, direction text, user_field text, contact_field text, sqlstate text, message text)
language plpgsql
security definer
set search_path = ''
as $$
declare
    mu usersync.modules;
    mc usersync.modules;
    l usersync.links;
    m record;
    st text;
    msg text;
    col text;
    expr text;
begin
    select * into mu from usersync.modules where module = 'users';
    select * into mc from usersync.modules where module = 'contacts';
    select * into l from usersync.links where links.user_id = p_user_id;
    for m in select fm.user_field, fm.contact_field from usersync.field_mapping fm order by fm.user_field loop
        begin
            if l.active and l.source = 'contact' then
                expr := usersync._gen_reverse_expr('c', m.contact_field, m.user_field);
                execute pg_catalog.format('update %s u set %I = %s from %s c where u.%I = $1 and c.%I = $2',
                                          mu.relation, m.user_field, expr, mc.relation, mu.key_column, mc.key_column)
                  using p_user_id, l.contact_id;
            else
                execute pg_catalog.format('insert into %s (%I) select u.%I from %s u where u.%I = $1',
                                          mc.relation, m.contact_field, m.user_field, mu.relation, mu.key_column)
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
create or replace function usersync._field_fits(p_user_ids bigint[], p_user_field text, p_contact_field text)
returns boolean
language plpgsql
security definer
set search_path = ''
as $$
declare
    mu usersync.modules;
    mc usersync.modules;
    st text;
    col text;
begin
    select * into mu from usersync.modules where module = 'users';
    select * into mc from usersync.modules where module = 'contacts';
    begin
        -- user -> contact for user-sourced pairs (and users not linked yet)
        execute pg_catalog.format(
            'insert into %s (%I) select u.%I from %s u where u.%I = any($1)'
            ' and not exists (select from usersync.links l where l.user_id = u.%I and l.active and l.source = ''contact'')',
            mc.relation, p_contact_field, p_user_field, mu.relation, mu.key_column, mu.key_column)
          using p_user_ids;
        -- contact -> user for reversed pairs
        execute pg_catalog.format(
            'update %s u set %I = %s from %s c join usersync.links l on l.contact_id = c.%I'
            ' where l.user_id = u.%I and l.active and l.source = ''contact'' and u.%I = any($1)',
            mu.relation, p_user_field,
            usersync._gen_reverse_expr('c', p_contact_field, p_user_field),
            mc.relation, mc.key_column, mu.key_column, mu.key_column)
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
create or replace function usersync._explain_failure(p_user_ids bigint[])
returns void
language plpgsql
security definer
set search_path = ''
as $$
declare
    m record;
    ids bigint[];
    half bigint[];
    n integer;
    uid bigint;
    d record;
begin
    if p_user_ids is null or pg_catalog.cardinality(p_user_ids) = 0 then
        return;
    end if;
    for m in select fm.user_field, fm.contact_field from usersync.field_mapping fm order by fm.user_field loop
        if usersync._field_fits(p_user_ids, m.user_field, m.contact_field) then
            continue;
        end if;
        ids := p_user_ids;
        while pg_catalog.cardinality(ids) > 1 loop
            n := pg_catalog.cardinality(ids) / 2;
            half := ids[1:n];
            ids := case when usersync._field_fits(half, m.user_field, m.contact_field) then ids[n + 1:] else half end;
        end loop;
        uid := ids[1];
        select * into d from usersync._diagnose(uid);
        if not found then
            continue;
        end if;
        if d.direction = 'contact' then
            raise exception using errcode = d.sqlstate,
                message = pg_catalog.format('cannot synchronize contact %s to user %s: contact field "%s" does not fit user field "%s"',
                                            d.contact_id, uid, d.contact_field, d.user_field),
                detail = d.message,
                hint = 'Correct the contact''s value, or change the field mapping (usersync.field_mapping).';
        end if;
        raise exception using errcode = d.sqlstate,
            message = pg_catalog.format('cannot synchronize user %s to contact %s: user field "%s" does not fit contact field "%s"',
                                        uid, coalesce(d.contact_id::text, '(new)'), d.user_field, d.contact_field),
            detail = d.message,
            hint = 'Correct the user''s value, or map the field to a contact field that can hold it (usersync.field_mapping).';
    end loop;
end
$$;
-- 40_codegen.sql: the generator of the engine's specialised functions.
--
-- Why generate: a trigger that builds SQL per row with EXECUTE is re-planned every time and is
-- several times slower than static SQL (docs/sql-api.md, "Design"). So whenever the mapping or a module
-- table changes, usersync._generate() rewrites the _g_* functions as plain static PL/pgSQL with
-- the table names, column lists and mapping version written in. Templates below use @NAME@
-- placeholders; every identifier is quoted with quote_ident/%I before it is substituted.
--
-- Generated functions (all SECURITY DEFINER, owned by usersync_engine):
--   _g_refresh(user_ids)        full sync of the given active pairs, both directions
--   _g_link(user_ids)           link users whose switch is on (re-link, repair or create), then refresh
--   _g_sync_users(user_ids)     "Synchronize users"
--   _g_on_users_insert/update/delete/truncate, _g_on_contact_update/delete_before/delete_after,
--   _g_on_contacts_truncate     the trigger functions attached by usersync._attach()

-- Column lists and expressions for the current mapping and catalog.
create or replace function usersync._gen_contact_cols()
returns text language sql stable set search_path = '' as $$
    select string_agg(pg_catalog.quote_ident(f.field), ', ' order by f.position)
      from usersync.metadata_fields f where f.module = 'contacts'
$$;

-- The contact as the image of a user row named p_alias: mapped fields copied, the rest NULL.
create or replace function usersync._gen_contact_image(p_alias text)
returns text language sql stable set search_path = '' as $$
    select string_agg(case when m.user_field is null then 'null'
                           else p_alias || '.' || pg_catalog.quote_ident(m.user_field) end,
                      ', ' order by f.position)
      from usersync.metadata_fields f
      left join usersync.field_mapping m on m.contact_field = f.field
     where f.module = 'contacts'
$$;

create or replace function usersync._gen_mapped_user_cols()
returns text language sql stable set search_path = '' as $$
    select string_agg(pg_catalog.quote_ident(m.user_field), ', ' order by f.position)
      from usersync.field_mapping m
      join usersync.metadata_fields f on f.module = 'users' and f.field = m.user_field
$$;

-- A contact field of the row named p_alias, as a value for a user field (reversed pairs). Where
-- no assignment cast exists (text -> date) the value is cast explicitly; a bad value then fails.
-- The one place that decides it: the generated code, the diagnosis and its probes all use it.
create or replace function usersync._gen_reverse_expr(p_alias text, p_contact_field text, p_user_field text)
returns text language sql stable set search_path = '' as $$
    select case when usersync._assignable((select relation from usersync.modules where module = 'contacts'),
                                          p_contact_field,
                                          (select relation from usersync.modules where module = 'users'),
                                          p_user_field)
                then pg_catalog.format('%s.%I', p_alias, p_contact_field)
                else pg_catalog.format('%s.%I::%s', p_alias, p_contact_field,
                                       usersync._field_type('users', p_user_field)) end
$$;

-- The mapped user fields as the image of a contact row named p_alias (reversed pairs).
create or replace function usersync._gen_user_image(p_alias text)
returns text language sql stable set search_path = '' as $$
    select string_agg(usersync._gen_reverse_expr(p_alias, m.contact_field, m.user_field), ', ' order by f.position)
      from usersync.field_mapping m
      join usersync.metadata_fields f on f.module = 'users' and f.field = m.user_field
$$;

-- "(o.a, o.b) is distinct from (n.a, n.b)" over the mapped fields of a module; false when none.
create or replace function usersync._gen_changed(p_module text, p_old text, p_new text)
returns text language sql stable set search_path = '' as $$
    select case when count(*) = 0 then 'false'
                else pg_catalog.format('(%s) is distinct from (%s)',
                       string_agg(p_old || '.' || pg_catalog.quote_ident(x.field), ', ' order by x.field),
                       string_agg(p_new || '.' || pg_catalog.quote_ident(x.field), ', ' order by x.field)) end
      from (select case p_module when 'users' then m.user_field else m.contact_field end as field
              from usersync.field_mapping m) x
$$;

-- The name of the first mapped field that differs, for error messages.
create or replace function usersync._gen_first_changed(p_module text, p_old text, p_new text)
returns text language sql stable set search_path = '' as $$
    select coalesce('case ' || string_agg(pg_catalog.format('when %s.%I is distinct from %s.%I then %L',
                                                            p_old, x.field, p_new, x.field, x.field),
                                          ' ' order by x.field) || ' end',
                    'null::text')
      from (select case p_module when 'users' then m.user_field else m.contact_field end as field
              from usersync.field_mapping m) x
$$;

-- "The contact already is the image of the user": lets a refresh skip rows it would not change
-- (no dead tuple, no WAL). Mapped fields of different types are always rewritten.
create or replace function usersync._gen_contact_same(p_contact text, p_user text)
returns text language sql stable set search_path = '' as $$
    select case when bool_or(m.user_field is not null and uf.data_type <> f.data_type) then 'false'
                else string_agg(case when m.user_field is null
                                     then pg_catalog.format('%s.%I is null', p_contact, f.field)
                                     else pg_catalog.format('%s.%I is not distinct from %s.%I',
                                                            p_contact, f.field, p_user, m.user_field) end,
                                ' and ' order by f.position) end
      from usersync.metadata_fields f
      left join usersync.field_mapping m on m.contact_field = f.field
      left join usersync.metadata_fields uf on uf.module = 'users' and uf.field = m.user_field
     where f.module = 'contacts'
$$;

create or replace function usersync._gen_user_same(p_user text, p_contact text)
returns text language sql stable set search_path = '' as $$
    select case when bool_or(uf.data_type <> cf.data_type) then 'false'
                else coalesce(string_agg(pg_catalog.format('%s.%I is not distinct from %s.%I',
                                                           p_user, m.user_field, p_contact, m.contact_field),
                                         ' and ' order by m.user_field), 'true') end
      from usersync.field_mapping m
      join usersync.metadata_fields uf on uf.module = 'users' and uf.field = m.user_field
      join usersync.metadata_fields cf on cf.module = 'contacts' and cf.field = m.contact_field
$$;

-- Can a synchronized write fail on a value? Yes when a mapped pair's types differ (a cast may
-- reject or a typmod truncate), or when a constraint other than the keys watches a column the
-- engine writes: NOT NULL, CHECK, UNIQUE, EXCLUDE, FOREIGN KEY. Only then do the generated
-- functions pay for an exception block to name the culprit.
create or replace function usersync._gen_writes_can_fail()
returns boolean language sql stable set search_path = '' as $$
    select exists (select from usersync.field_mapping m
                     join usersync.metadata_fields u on u.module = 'users' and u.field = m.user_field
                     join usersync.metadata_fields c on c.module = 'contacts' and c.field = m.contact_field
                    where u.data_type <> c.data_type)
        or exists (select from usersync.modules mo
                     join pg_catalog.pg_attribute a on a.attrelid = mo.relation
                    where a.attnum > 0 and not a.attisdropped and a.attnotnull
                      and a.attname <> mo.key_column and a.attname is distinct from mo.switch_column
                      and (mo.module = 'contacts'
                           or a.attname in (select m.user_field from usersync.field_mapping m)))
        or exists (select from usersync.modules mo
                     join pg_catalog.pg_constraint k on k.conrelid = mo.relation
                    where k.contype in ('c', 'u', 'x', 'f')
                      and (mo.module = 'contacts'
                           or exists (select from pg_catalog.pg_attribute a
                                       where a.attrelid = mo.relation and a.attnum = any(k.conkey)
                                         and a.attname in (select m.user_field from usersync.field_mapping m))))
        or exists (select from usersync.modules mo
                     join pg_catalog.pg_index i on i.indrelid = mo.relation
                    where i.indisunique and not i.indisprimary and mo.module = 'contacts')
$$;

-- The user columns a new contact is made from (the key and the mapped fields), so that creating
-- contacts copies no more of each row than it needs.
create or replace function usersync._gen_source_cols(p_alias text)
returns text language sql stable set search_path = '' as $$
    select string_agg(p_alias || '.' || pg_catalog.quote_ident(x.col), ', ' order by x.ord, x.col)
      from (select (select key_column::text from usersync.modules where module = 'users') as col, 0 as ord
            union
            select m.user_field, 1 from usersync.field_mapping m) x
$$;

-- Statements that join a trigger's transition tables are written once in a template, between
--   /*dual[ into VAR][ using VAR]*/ ... /*end*/
-- and come out twice: static SQL for small statements, EXECUTE for bulk ones. Why: PL/pgSQL
-- plans a static statement once per session, from the transition tables' sizes at its first
-- call. A plan made for one row (nested loops over the index-less tuplestores) is quadratic on
-- 100,000 rows; one made for 100,000 rows (hash joins reading all of links) is a full scan for
-- every later one-row UPDATE. Small statements therefore always run the static copy, whose plan
-- is only ever made for small sizes; bulk ones are planned afresh with their real sizes.
create or replace function usersync._gen_dual(p_body text)
returns text language plpgsql immutable set search_path = '' as $$
declare
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
        p_body := pg_catalog.substr(p_body, 1, head_at - 1)
               || pg_catalog.format(E'if usersync_bulk then\n        execute %L%s%s;\n    else\n        %s\n    end if;',
                                    dyn, coalesce(' into ' || into_var, ''), coalesce(' using ' || using_var, ''), stmt)
               || pg_catalog.substr(rest, end_at + 7);
    end loop;
    return p_body;
end
$$;

create or replace function usersync._gen_fill(p_template text, p_vars jsonb)
returns text language plpgsql immutable set search_path = '' as $$
declare
    k text;
    v text;
begin
    for k, v in select key, value from pg_catalog.jsonb_each_text(p_vars) loop
        p_template := pg_catalog.replace(p_template, '@' || k || '@', v);
    end loop;
    p_template := usersync._gen_dual(p_template);
    if p_template ~ '@[A-Z_]+@' then
        raise exception 'usersync internal error: unfilled placeholder % in a generated function',
            (pg_catalog.regexp_match(p_template, '@[A-Z_]+@'))[1];
    end if;
    return p_template;
end
$$;

create or replace function usersync._generate()
returns void
language plpgsql
security definer
set search_path = ''
as $gen$
declare
    mu usersync.modules;
    mc usersync.modules;
    seq text;
    cid text;
    can_fail boolean;
    vars jsonb;
    tpl text;
    fn text;
begin
    select * into mu from usersync.modules where module = 'users';
    select * into mc from usersync.modules where module = 'contacts';

    -- New contacts get their key before they are inserted, so that one set-based INSERT can
    -- create both the contacts and the links (RETURNING cannot tell which user a row came from).
    seq := pg_catalog.pg_get_serial_sequence(mc.relation::text, mc.key_column);
    if seq is not null then
        cid := pg_catalog.format('pg_catalog.nextval(%L::regclass)', seq);
    else
        select pg_catalog.pg_get_expr(d.adbin, d.adrelid) into cid
          from pg_catalog.pg_attrdef d join pg_catalog.pg_attribute a on a.attrelid = d.adrelid and a.attnum = d.adnum
         where a.attrelid = mc.relation and a.attname = mc.key_column;
        if cid is null then
            raise exception using errcode = 'US005',
                message = pg_catalog.format('the key column %I of %s has no default', mc.key_column, mc.relation),
                hint = 'The Contacts key needs an identity, a sequence or a default so the engine can create contacts.';
        end if;
    end if;

    can_fail := usersync._gen_writes_can_fail();
    vars := pg_catalog.jsonb_build_object(
        'U', mu.relation::text,
        'C', mc.relation::text,
        'UK', pg_catalog.quote_ident(mu.key_column),
        'CK', pg_catalog.quote_ident(mc.key_column),
        'SW', pg_catalog.quote_ident(mu.switch_column),
        'V', (select version from usersync.mapping_state)::text,
        'BULK_ROWS', '100',  -- above this many rows, statements on transition tables are planned per call
        'CID', cid,
        'OVR', case when exists (select from pg_catalog.pg_attribute a where a.attrelid = mc.relation
                                   and a.attname = mc.key_column and a.attidentity = 'a')
                    then 'overriding system value' else '' end,
        'C_COLS', usersync._gen_contact_cols(),
        'C_IMG_S', usersync._gen_contact_image('s'),
        'C_IMG_N', usersync._gen_contact_image('n'),
        'C_IMG_U', usersync._gen_contact_image('u'),
        'HAS_MAP', (exists (select from usersync.field_mapping))::text,
        'U_COLS', coalesce(usersync._gen_mapped_user_cols(), pg_catalog.quote_ident(mu.switch_column)),
        'U_IMG_C', coalesce(usersync._gen_user_image('c'), 'u.' || pg_catalog.quote_ident(mu.switch_column)),
        'U_IMG_NEW', coalesce(usersync._gen_user_image('new'), 'u.' || pg_catalog.quote_ident(mu.switch_column)),
        'U_CHANGED', usersync._gen_changed('users', 'o', 'n'),
        'U_FIRST_CHANGED', usersync._gen_first_changed('users', 'o', 'n'),
        'C_CHANGED', usersync._gen_changed('contacts', 'old', 'new'),
        'C_SAME', usersync._gen_contact_same('c', 'u'),
        'TRY', case when can_fail then 'begin' else '' end,
        'CATCH', case when can_fail then 'exception when data_exception or integrity_constraint_violation then'
                      else '/* no exception block: no synchronized value can fail (usersync._gen_writes_can_fail)' end,
        'END_CATCH', case when can_fail then 'end;' else '*/' end,
        'U_SRC_U', usersync._gen_source_cols('u'),
        'U_SRC_N', usersync._gen_source_cols('n'),
        'U_SAME', usersync._gen_user_same('u', 'c')
    );

    for fn, tpl in select t.fn, t.tpl from usersync._templates() t loop
        execute usersync._gen_fill(tpl, vars);
        execute pg_catalog.format('revoke all on function usersync.%s from public', fn);
    end loop;
    update usersync.mapping_state set field_types = usersync._mapped_field_types();
end
$gen$;
-- 45_templates.sql: the templates that usersync._generate() fills in (see 40_codegen.sql).
--
-- Placeholders: @U@/@C@ the module tables, @UK@/@CK@ their keys, @SW@ the switch column,
-- @V@ the mapping version, @CID@ a new contact key, @OVR@ "overriding system value" when the
-- key is GENERATED ALWAYS, @C_COLS@ every contact metadata field, @C_IMG_x@ the contact image
-- of the user row aliased x, @U_COLS@/@U_IMG_x@ the mapped user fields and their image of the
-- contact row aliased x, @U_CHANGED@/@C_CHANGED@ "did a mapped field change", @HAS_MAP@.
-- @TRY@ / @CATCH@ / @END_CATCH@ wrap the writes in an exception block that names user, contact
-- and field when a value does not fit; when nothing can fail (same types, no constraints: see
-- usersync._gen_writes_can_fail) they become a comment, sparing a subtransaction per statement.
--
-- Trigger functions are SECURITY DEFINER, so inside them current_user is always the engine: who
-- issued the statement is decided by the triggers' WHEN (current_user <> 'usersync_engine'),
-- which PostgreSQL evaluates as the caller. The engine's own writes to the modules never need
-- the triggers (it keeps the links itself), so they skip them.
--
-- Lock order, everywhere: a pair's source row before its target row (the user, or for a reversed
-- pair the contact), each set in key order. An application's write locks the row it writes
-- (always the source: targets are read-only) before any trigger runs, and the engine follows
-- the same order in its own actions, so they never wait for each other in a cycle.

create or replace function usersync._templates()
returns table (fn text, tpl text)
language sql immutable
set search_path = ''
as $templates$
values
('_g_lock_pair(bigint, bigint, text)', $tpl$
create or replace function usersync._g_lock_pair(p_user_id bigint, p_contact_id bigint, p_source text)
returns void language plpgsql security definer set search_path = '' as $body$
begin
    if p_source = 'contact' then
        perform from @C@ c where c.@CK@ = p_contact_id for update;
        perform from @U@ u where u.@UK@ = p_user_id for update;
    else
        perform from @U@ u where u.@UK@ = p_user_id for update;
        perform from @C@ c where c.@CK@ = p_contact_id for update;
    end if;
end
$body$;
$tpl$),

('_g_refresh(bigint[])', $tpl$
create or replace function usersync._g_refresh(p_user_ids bigint[], out synced bigint, out changed bigint)
language plpgsql security definer set search_path = '' as $body$
declare
    n bigint;
begin
    -- Read the sources under a lock first: a plain UPDATE ... FROM would, under READ COMMITTED,
    -- wait for a concurrent writer and then write the value it read before that writer committed.
    -- Users are the sources of every pair but the reversed ones (whose contacts are locked below).
    perform from @U@ u
     where u.@UK@ = any(p_user_ids)
       and not exists (select from usersync.links l where l.user_id = u.@UK@ and l.active and l.source = 'contact')
     order by u.@UK@ for share;
    -- Both sides restricted by the array: PostgreSQL does not carry "= any(array)" across a join,
    -- and without it every batch would scan all of links.
    update @C@ c set (@C_COLS@) = row(@C_IMG_U@)
      from @U@ u join usersync.links l on l.user_id = u.@UK@
     where u.@UK@ = any(p_user_ids) and l.user_id = any(p_user_ids)
       and u.@SW@ and l.active and l.source = 'user' and c.@CK@ = l.contact_id
       and not (@C_SAME@);
    get diagnostics changed = row_count;
    if @HAS_MAP@ and exists (select from usersync.links l where l.active and l.source = 'contact') then
        perform from @C@ c join usersync.links l on l.contact_id = c.@CK@
         where l.user_id = any(p_user_ids) and l.active and l.source = 'contact' order by c.@CK@ for share;
        update @U@ u set (@U_COLS@) = row(@U_IMG_C@)
          from @C@ c join usersync.links l on l.contact_id = c.@CK@
         where l.user_id = any(p_user_ids) and u.@UK@ = any(p_user_ids)
           and l.active and l.source = 'contact' and u.@UK@ = l.user_id
           and not (@U_SAME@);
        get diagnostics n = row_count;
        changed := changed + n;
    end if;
    -- Every active pair whose contact exists is now the image of its source under mapping @V@.
    -- (offset 0 keeps the EXISTS a per-row index probe; as a hash semi-join it would read all
    -- of contacts for every batch)
    update usersync.links l set mapping_version = @V@, synced_at = pg_catalog.now()
     where l.user_id = any(p_user_ids) and l.active
       and exists (select from @C@ c where c.@CK@ = l.contact_id offset 0);
    get diagnostics synced = row_count;
    delete from usersync.sync_errors e where e.user_id = any(p_user_ids);
end
$body$;
$tpl$),

('_g_link(bigint[])', $tpl$
create or replace function usersync._g_link(p_user_ids bigint[])
returns bigint language plpgsql security definer set search_path = '' as $body$
begin
    perform from @U@ u where u.@UK@ = any(p_user_ids) order by u.@UK@ for share;
    -- A link whose contact is gone cannot be re-used: forget it, a new contact is made below.
    delete from usersync.links l
     where l.user_id = any(p_user_ids) and not exists (select from @C@ c where c.@CK@ = l.contact_id);
    -- Re-enabling the switch re-links the contact the user had before (never a duplicate),
    -- with the user as the source again: that is what the switch means.
    update usersync.links l set active = true, source = 'user'
     where l.user_id = any(p_user_ids) and not l.active;
    with s as materialized (
        select @CID@ as usersync_new_contact_id, @U_SRC_U@
          from @U@ u
         where u.@UK@ = any(p_user_ids) and u.@SW@
           and not exists (select from usersync.links l where l.user_id = u.@UK@)),
    linked as (
        insert into usersync.links (user_id, contact_id, source, active, mapping_version)
        select s.@UK@, s.usersync_new_contact_id, 'user', true, @V@ from s)
    insert into @C@ (@CK@, @C_COLS@) @OVR@
    select s.usersync_new_contact_id, @C_IMG_S@ from s;
    return (usersync._g_refresh(p_user_ids)).synced;
end
$body$;
$tpl$),

('_g_sync_users(bigint[])', $tpl$
create or replace function usersync._g_sync_users(p_user_ids bigint[])
returns bigint language plpgsql security definer set search_path = '' as $body$
declare
    unknown bigint[];
    ids bigint[];
begin
    if p_user_ids is not null then
        select pg_catalog.array_agg(x.id order by x.id) into unknown
          from pg_catalog.unnest(p_user_ids) x(id)
         where not exists (select from @U@ u where u.@UK@ = x.id);
        if unknown is not null then
            raise exception using errcode = 'US006',
                message = pg_catalog.format('unknown user id(s): %s', pg_catalog.array_to_string(unknown, ', ')),
                hint = 'Pass ids of existing users, or NULL for every user whose switch is on.';
        end if;
    end if;
    -- Repairs, for writes that bypassed the triggers (session_replication_role = replica, ...):
    -- a link whose switch is off ends; a link whose user is gone is forgotten.
    update usersync.links l set active = false
      from @U@ u
     where u.@UK@ = l.user_id and l.active and not u.@SW@ and (p_user_ids is null or l.user_id = any(p_user_ids));
    delete from usersync.links l
     where (p_user_ids is null or l.user_id = any(p_user_ids))
       and not exists (select from @U@ u where u.@UK@ = l.user_id);
    ids := array(select u.@UK@ from @U@ u
                  where u.@SW@ and (p_user_ids is null or u.@UK@ = any(p_user_ids)) order by u.@UK@);
    if pg_catalog.cardinality(ids) = 0 then
        return 0;
    end if;
    return usersync._g_link(ids);
exception when data_exception or integrity_constraint_violation then
    perform usersync._explain_failure(ids);
    raise;
end
$body$;
$tpl$),

('_g_on_users_insert()', $tpl$
create or replace function usersync._g_on_users_insert()
returns trigger language plpgsql security definer set search_path = '' as $body$
begin
    @TRY@
    if exists (select from new_rows n where n.@SW@) then
        with s as materialized (
            select @CID@ as usersync_new_contact_id, @U_SRC_N@ from new_rows n where n.@SW@),
        linked as (
            -- ON CONFLICT: a link left behind by a delete that bypassed the triggers.
            insert into usersync.links (user_id, contact_id, source, active, mapping_version)
            select s.@UK@, s.usersync_new_contact_id, 'user', true, @V@ from s
            on conflict (user_id) do update
               set contact_id = excluded.contact_id, source = 'user', active = true,
                   mapping_version = excluded.mapping_version, synced_at = pg_catalog.now())
        insert into @C@ (@CK@, @C_COLS@) @OVR@
        select s.usersync_new_contact_id, @C_IMG_S@ from s;
    end if;
    @CATCH@
        perform usersync._explain_failure(array(select n.@UK@ from new_rows n where n.@SW@));
        raise;
    @END_CATCH@
    return null;
end
$body$;
$tpl$),

('_g_on_users_update()', $tpl$
create or replace function usersync._g_on_users_update()
returns trigger language plpgsql security definer set search_path = '' as $body$
declare
    r record;
    switched_on bigint[] := '{}';
    any_reversed boolean;
    any_stale boolean;
    any_switched boolean;
    usersync_bulk boolean;
begin
    @TRY@
    -- Four questions in one statement (each statement costs, and this runs for every UPDATE of
    -- users): is any pair reversed, may any pair be stale, did the switch change for any row,
    -- is this a bulk statement? EXCEPT, not a join: hashing or sorting, never quadratic.
    select exists (select from usersync.links l where l.active and l.source = 'contact'),
           s.synced_version < @V@,
           exists ((select n.@UK@, n.@SW@ from new_rows n) except (select o.@UK@, o.@SW@ from old_rows o)),
           exists (select from new_rows offset @BULK_ROWS@)
      into any_reversed, any_stale, any_switched, usersync_bulk
      from usersync.mapping_state s;

    -- A reversed pair's mapped user fields follow the contact: only the engine writes them (and
    -- the engine's own writes never get here: see the WHEN clause in usersync._attach()).
    if any_reversed then
        /*dual into r*/
        select n.@UK@ as user_id, l.contact_id, @U_FIRST_CHANGED@ as field into r
          from new_rows n join old_rows o on o.@UK@ = n.@UK@
          join usersync.links l on l.user_id = n.@UK@ and l.active and l.source = 'contact'
         where @U_CHANGED@
         limit 1;
        /*end*/
        if r.user_id is not null then
            raise exception using errcode = 'US002',
                message = pg_catalog.format('user %s is synchronized from contact %s: field "%s" is read-only',
                                            r.user_id, r.contact_id, r.field),
                detail = 'The synchronization direction of this pair is reversed: the contact is the data source.',
                hint = pg_catalog.format('Edit contact %s instead, or restore the direction: SELECT usersync.set_sync_source(%s, ''user'')',
                                         r.contact_id, r.user_id);
        end if;
    end if;

    -- The switch changed for some row (rare).
    if any_switched then
        -- Switched off: the link ends, the contact stays as an ordinary contact.
        /*dual*/
        update usersync.links l set active = false
          from new_rows n where l.user_id = n.@UK@ and l.active and not n.@SW@;
        /*end*/
        -- Switched on: link (re-link the earlier contact, or create one) and refresh.
        /*dual into switched_on*/
        select array(select n.@UK@ from new_rows n
                      where n.@SW@ and not exists (select from usersync.links l
                                                    where l.user_id = n.@UK@ and l.active)) into switched_on;
        /*end*/
        if pg_catalog.cardinality(switched_on) > 0 then
            perform usersync._g_link(switched_on);
        end if;
    end if;

    -- A mapped field changed: rewrite the contact as the image of the user. Unmapped changes
    -- write nothing.
    /*dual using switched_on*/
    update @C@ c set (@C_COLS@) = row(@C_IMG_N@)
      from new_rows n
      join old_rows o on o.@UK@ = n.@UK@
      join usersync.links l on l.user_id = n.@UK@ and l.active and l.source = 'user'
     where c.@CK@ = l.contact_id and n.@SW@ and @U_CHANGED@
       and not n.@UK@ = any(switched_on);
    /*end*/
    -- Pairs that were stale (mapping changed since their last sync) are now up to date. Only
    -- worth a look while a mapping change has not been resynced everywhere yet.
    if any_stale then
        /*dual*/
        update usersync.links l set mapping_version = @V@, synced_at = pg_catalog.now()
          from new_rows n join old_rows o on o.@UK@ = n.@UK@
         where l.user_id = n.@UK@ and l.active and l.source = 'user' and l.mapping_version < @V@
           and n.@SW@ and @U_CHANGED@;
        /*end*/
    end if;
    @CATCH@
        perform usersync._explain_failure(array(select n.@UK@ from new_rows n where n.@SW@));
        raise;
    @END_CATCH@
    return null;
end
$body$;
$tpl$),

('_g_on_users_delete()', $tpl$
create or replace function usersync._g_on_users_delete()
returns trigger language plpgsql security definer set search_path = '' as $body$
declare
    r record;
    usersync_bulk boolean := exists (select from old_rows offset @BULK_ROWS@);
begin
    if exists (select from usersync.links l where l.active and l.source = 'contact') then
        /*dual into r*/
        select o.@UK@ as user_id, l.contact_id into r
          from old_rows o join usersync.links l on l.user_id = o.@UK@ and l.active and l.source = 'contact'
         limit 1;
        /*end*/
        if r.user_id is not null then
            raise exception using errcode = 'US002',
                message = pg_catalog.format('user %s is synchronized from contact %s and cannot be deleted',
                                            r.user_id, r.contact_id),
                detail = 'The synchronization direction of this pair is reversed: the contact is the data source.',
                hint = pg_catalog.format('Delete contact %s instead (the setting delete_user_with_contact decides what '
                                         'happens to the user), or restore the direction: SELECT usersync.set_sync_source(%s, ''user'')',
                                         r.contact_id, r.user_id);
        end if;
    end if;
    if (select s.delete_contact_with_user from usersync.settings s) then
        /*dual*/
        delete from @C@ c
         using old_rows o join usersync.links l on l.user_id = o.@UK@ and l.active and l.source = 'user'
         where c.@CK@ = l.contact_id;
        /*end*/
    end if;
    -- Without the toggle the contact stays, unlinked and editable.
    /*dual*/
    delete from usersync.links l using old_rows o where l.user_id = o.@UK@;
    /*end*/
    /*dual*/
    delete from usersync.sync_errors e using old_rows o where e.user_id = o.@UK@;
    /*end*/
    return null;
end
$body$;
$tpl$),

('_g_on_users_truncate()', $tpl$
create or replace function usersync._g_on_users_truncate()
returns trigger language plpgsql security definer set search_path = '' as $body$
begin
    if exists (select from usersync.links l where l.active and l.source = 'contact') then
        raise exception using errcode = 'US002',
            message = pg_catalog.format('cannot truncate %s: some users are synchronized from their contacts', tg_table_name),
            detail = 'Reversed pairs make those users read-only.',
            hint = 'Delete their contacts, or restore the direction with usersync.set_sync_source(user_id, ''user''), first.';
    end if;
    -- TRUNCATE skips row triggers; apply the delete rules to every pair at once instead.
    if (select s.delete_contact_with_user from usersync.settings s) then
        delete from @C@ c using usersync.links l where c.@CK@ = l.contact_id and l.active and l.source = 'user';
    end if;
    delete from usersync.links;
    delete from usersync.sync_errors;
    return null;
end
$body$;
$tpl$),

('_g_on_contact_update()', $tpl$
create or replace function usersync._g_on_contact_update()
returns trigger language plpgsql security definer set search_path = '' as $body$
declare
    l usersync.links;
begin
    select * into l from usersync.links where contact_id = old.@CK@ and active;
    if not found then
        return null;
    end if;
    if l.source = 'user' then
        raise exception using errcode = 'US001',
            message = pg_catalog.format('contact %s is synchronized from user %s and cannot be edited', old.@CK@, l.user_id),
            detail = 'While the user is the data source, the contact is read-only in the Contacts module.',
            hint = pg_catalog.format('Edit user %s instead; or switch its synchronization off (UPDATE ... SET @SW@ = false), '
                                     'or reverse the direction: SELECT usersync.set_sync_source(%s, ''contact'')',
                                     l.user_id, l.user_id);
    end if;
    if @HAS_MAP@ and @C_CHANGED@ then
        @TRY@
        update @U@ u set (@U_COLS@) = row(@U_IMG_NEW@) where u.@UK@ = l.user_id;
        @CATCH@
            perform usersync._explain_failure(array[l.user_id]);
            raise;
        @END_CATCH@
    end if;
    return null;
end
$body$;
$tpl$),

('_g_on_contact_delete_before()', $tpl$
create or replace function usersync._g_on_contact_delete_before()
returns trigger language plpgsql security definer set search_path = '' as $body$
declare
    l usersync.links;
begin
    select * into l from usersync.links where contact_id = old.@CK@ and active;
    if not found then
        return old;
    end if;
    if l.source = 'user' then
        raise exception using errcode = 'US001',
            message = pg_catalog.format('contact %s is synchronized from user %s and cannot be deleted', old.@CK@, l.user_id),
            detail = 'While the user is the data source, the contact is read-only in the Contacts module.',
            hint = pg_catalog.format('Delete user %s (the setting delete_contact_with_user decides what happens to the contact), '
                                     'or switch its synchronization off first', l.user_id);
    end if;
    return old;
end
$body$;
$tpl$),

('_g_on_contact_delete_after()', $tpl$
create or replace function usersync._g_on_contact_delete_after()
returns trigger language plpgsql security definer set search_path = '' as $body$
declare
    l usersync.links;
begin
    select * into l from usersync.links where contact_id = old.@CK@;
    if not found then
        return null;
    end if;
    delete from usersync.links where user_id = l.user_id;
    delete from usersync.sync_errors where user_id = l.user_id;
    if l.active then  -- a reversed pair (user-sourced contacts cannot get here)
        if (select s.delete_user_with_contact from usersync.settings s) then
            delete from @U@ u where u.@UK@ = l.user_id;
        else
            update @U@ u set @SW@ = false where u.@UK@ = l.user_id;
        end if;
    end if;
    return null;
end
$body$;
$tpl$),

('_g_on_contacts_truncate()', $tpl$
create or replace function usersync._g_on_contacts_truncate()
returns trigger language plpgsql security definer set search_path = '' as $body$
declare
    n bigint;
    example usersync.links;
begin
    select count(*) into n from usersync.links l where l.active and l.source = 'user';
    if n > 0 then
        select * into example from usersync.links l where l.active and l.source = 'user' order by l.user_id limit 1;
        raise exception using errcode = 'US001',
            message = pg_catalog.format('cannot truncate %s: %s contact(s) are synchronized from users (contact %s from user %s, ...)',
                                        tg_table_name, n, example.contact_id, example.user_id),
            detail = 'While the user is the data source, the contact is read-only in the Contacts module.',
            hint = 'Switch synchronization off for those users first (UPDATE ... SET @SW@ = false).';
    end if;
    if exists (select from usersync.links l where l.active) then
        raise exception using errcode = 'US004',
            message = pg_catalog.format('cannot truncate %s: some users are synchronized from their contacts', tg_table_name),
            detail = 'TRUNCATE fires no row triggers, so the rule for deleting a source contact cannot be applied.',
            hint = 'Use DELETE, which applies delete_user_with_contact to each pair.';
    end if;
    delete from usersync.links;  -- remembered contacts of switched-off users are about to vanish
    return null;
end
$body$;
$tpl$)
$templates$;
-- 50_actions.sql: the public API of the engine, what admins and DBAs call.
--
-- sync_users(user_ids)         "Synchronize users": (re)sync and repair the given users' pairs
-- resync_step(batch_size)      one batch of "Update all synchronized users", committed by the caller
-- resync_all(batch_size)       CALL it: every pair, a batch per transaction, resumable
-- set_sync_source(user_id, s)  reverse a pair ('contact') or restore it ('user')
-- synchronized_contacts        which contacts are user contacts, and whether they are up to date

create or replace view usersync.synchronized_contacts as
select l.contact_id,
       l.user_id,
       l.source,
       l.synced_at,
       l.mapping_version = s.version as up_to_date
  from usersync.links l
 cross join usersync.mapping_state s
 where l.active;
comment on view usersync.synchronized_contacts is
    'User contacts (the "profile icon"); up_to_date is false when the mapping changed since the pair was last synced';

create or replace function usersync.sync_users(user_ids bigint[] default null)
returns bigint
language plpgsql
security definer
set search_path = ''
as $$
begin
    -- Taken before any row lock, so it never waits while holding one.
    perform pg_catalog.pg_advisory_xact_lock_shared(usersync._config_lock_key());
    return usersync._g_sync_users(user_ids);
end
$$;
comment on function usersync.sync_users(bigint[]) is
    '"Synchronize users": (re)syncs the given users (NULL: every user whose switch is on), repairs missing contacts and dangling links; returns the number of pairs synced';

create or replace function usersync.resync_step(batch_size integer default 1000)
returns table (done boolean, batch_synced bigint, batch_changed bigint, batch_failed bigint,
               synced bigint, changed bigint, failed bigint, total bigint)
language plpgsql
security definer
set search_path = ''
as $$
#variable_conflict use_column
declare
    st usersync.resync_state;
    ids bigint[];
    ok bigint := 0;
    rewritten bigint := 0;
    bad bigint := 0;
    r record;
    uid bigint;
    d record;
    e_state text;
    e_msg text;
begin
    if batch_size is null or batch_size < 1 then
        raise exception using errcode = 'US006', message = pg_catalog.format('invalid batch size %s', batch_size),
            hint = 'Pass a positive number of pairs per batch, e.g. 1000.';
    end if;
    perform pg_catalog.pg_advisory_xact_lock_shared(usersync._config_lock_key());
    -- One run at a time: the state row is the run's lock as well as its cursor.
    select * into st from usersync.resync_state for update;
    -- A finished run, or none: start one. A run whose mapping changed between two batches starts
    -- over too, or its earlier batches would stay on the old mapping when it reports finished.
    if not found or st.finished_at is not null
       or st.mapping_version <> (select version from usersync.mapping_state) then
        insert into usersync.resync_state (singleton, started_at, mapping_version, after_user_id, total)
        values (true, pg_catalog.now(), (select version from usersync.mapping_state),
                null, (select count(*) from usersync.links where active))
        on conflict (singleton) do update
           set started_at = excluded.started_at, finished_at = null, mapping_version = excluded.mapping_version,
               after_user_id = null, total = excluded.total, synced = 0, changed = 0, failed = 0
        returning * into st;
    end if;

    ids := array(select l.user_id from usersync.links l
                  where l.active and (st.after_user_id is null or l.user_id > st.after_user_id)
                  order by l.user_id limit resync_step.batch_size);
    if pg_catalog.cardinality(ids) = 0 then
        update usersync.resync_state set finished_at = pg_catalog.now() returning * into st;
        -- Every pair went through this run on the current mapping (a change restarts the run).
        if st.failed = 0 then
            update usersync.mapping_state set synced_version = st.mapping_version;
        end if;
        return query select true, 0::bigint, 0::bigint, 0::bigint, st.synced, st.changed, st.failed, st.total;
        return;
    end if;

    begin
        select * into r from usersync._g_refresh(ids);
        ok := r.synced;
        rewritten := r.changed;
    exception when data_exception or integrity_constraint_violation then
        -- Some pair in the batch holds a value its target cannot take: redo the batch pair by
        -- pair so the others still sync, and record each failure with its field.
        ok := 0;
        rewritten := 0;
        foreach uid in array ids loop
            begin
                select * into r from usersync._g_refresh(array[uid]);
                ok := ok + r.synced;
                rewritten := rewritten + r.changed;
            exception when data_exception or integrity_constraint_violation then
                get stacked diagnostics e_state = returned_sqlstate, e_msg = message_text;
                select * into d from usersync._diagnose(uid);
                insert into usersync.sync_errors as e (user_id, contact_id, field, sqlstate, message)
                values (uid, (select l.contact_id from usersync.links l where l.user_id = uid),
                        case when d.user_field is not null then d.user_field || ' -> ' || d.contact_field end,
                        coalesce(d.sqlstate, e_state), coalesce(d.message, e_msg))
                on conflict (user_id) do update
                   set contact_id = excluded.contact_id, field = excluded.field, sqlstate = excluded.sqlstate,
                       message = excluded.message, occurred_at = pg_catalog.now();
                bad := bad + 1;
            end;
        end loop;
    end;

    update usersync.resync_state
       set after_user_id = ids[pg_catalog.cardinality(ids)], synced = synced + ok, changed = changed + rewritten,
           failed = failed + bad
    returning * into st;
    return query select false, ok, rewritten, bad, st.synced, st.changed, st.failed, st.total;
end
$$;
comment on function usersync.resync_step(integer) is
    'One batch of "Update all synchronized users" (starts a run or continues the unfinished one); commit after each call';

-- Transaction control is not allowed in SECURITY DEFINER procedures, so this one runs as the
-- caller (who needs EXECUTE on resync_step) and holds no privilege of its own.
create or replace procedure usersync.resync_all(batch_size integer default 1000)
language plpgsql
as $$
declare
    r record;
begin
    loop
        select * into r from usersync.resync_step(batch_size);
        commit;
        exit when r.done;
    end loop;
end
$$;
comment on procedure usersync.resync_all(integer) is
    '"Update all synchronized users": re-applies the mapping to every pair, committing each batch; resumes an interrupted run. CALL it outside a transaction block.';

create or replace function usersync.set_sync_source(user_id bigint, source text)
returns void
language plpgsql
security definer
set search_path = ''
as $$
declare
    l usersync.links;
    linked boolean := false;
begin
    if set_sync_source.source is null or set_sync_source.source not in ('user', 'contact') then
        raise exception using errcode = 'US006',
            message = pg_catalog.format('invalid synchronization source %L', set_sync_source.source),
            hint = 'Use ''user'' (the user is the data source, the default) or ''contact'' (reversed).';
    end if;
    perform pg_catalog.pg_advisory_xact_lock_shared(usersync._config_lock_key());
    -- Lock the pair source first (as every writer does), then re-read: the direction may have
    -- changed while this waited.
    loop
        select * into l from usersync.links where links.user_id = set_sync_source.user_id and active;
        if not found then
            exit;
        end if;
        perform usersync._g_lock_pair(l.user_id, l.contact_id, l.source);
        if exists (select from usersync.links x where x.user_id = l.user_id and x.active and x.source = l.source) then
            linked := true;
            exit;
        end if;
    end loop;
    if not linked then
        raise exception using errcode = 'US006',
            message = pg_catalog.format('user %s has no synchronized contact', set_sync_source.user_id),
            hint = 'Switch "Synchronize user to contact module" on for the user first.';
    end if;
    update usersync.links set source = set_sync_source.source where links.user_id = set_sync_source.user_id;
    -- Leave the pair consistent with its (new) source at once.
    perform usersync._g_refresh(array[set_sync_source.user_id]);
end
$$;
comment on function usersync.set_sync_source(bigint, text) is
    'Reverses a pair (''contact'': the contact becomes the data source) or restores it (''user'')';
-- 55_preview.sql: what "Update all synchronized users" would change, without changing it.
--
-- usersync.preview_resync(examples) counts the pairs whose target differs from the image of its
-- source under the current mapping, and shows a few field changes. It reads only (built with
-- EXECUTE: an admin-time query, planned once per call).

create or replace function usersync.preview_resync(examples integer default 5)
returns table (pairs bigint, would_change bigint, stale bigint, changes jsonb)
language plpgsql
stable
security definer
set search_path = ''
as $$
declare
    mu usersync.modules;
    mc usersync.modules;
    c_diff text;   -- per contact field: (field, current, new) when they differ (user-sourced)
    u_diff text;   -- per mapped user field: (field, current, new) when they differ (reversed)
    q text;
begin
    if examples is null or examples < 0 then
        raise exception using errcode = 'US006', message = pg_catalog.format('invalid number of examples %s', examples),
            hint = 'Pass 0 or more.';
    end if;
    select * into mu from usersync.modules where module = 'users';
    select * into mc from usersync.modules where module = 'contacts';

    select string_agg(pg_catalog.format('(%L, c.%I::text, %s::text, c.%I is distinct from %s)',
                                        f.field, f.field, x.img, f.field, x.img), ', ' order by f.position)
      into c_diff
      from usersync.metadata_fields f
      left join usersync.field_mapping m on m.contact_field = f.field
     cross join lateral (select case when m.user_field is null then 'null'
                                     else pg_catalog.format('cast(u.%I as %s)', m.user_field, f.data_type) end) x(img)
     where f.module = 'contacts';
    select string_agg(pg_catalog.format(
               '(%L, u.%I::text, cast(c.%I as %s)::text, u.%I is distinct from cast(c.%I as %s))',
               m.user_field, m.user_field, m.contact_field, f.data_type, m.user_field, m.contact_field, f.data_type),
             ', ' order by f.position)
      into u_diff
      from usersync.field_mapping m
      join usersync.metadata_fields f on f.module = 'users' and f.field = m.user_field;

    q := pg_catalog.format($q$
        with diffs as (
            select l.user_id, l.contact_id, l.mapping_version, d.field, d.cur, d.new, d.differs
              from usersync.links l join %1$s u on u.%2$I = l.user_id join %3$s c on c.%4$I = l.contact_id
             cross join lateral (values %5$s) d(field, cur, new, differs)
             where l.active and l.source = 'user'
            union all
            select l.user_id, l.contact_id, l.mapping_version, d.field, d.cur, d.new, d.differs
              from usersync.links l join %1$s u on u.%2$I = l.user_id join %3$s c on c.%4$I = l.contact_id
             cross join lateral (values %6$s) d(field, cur, new, differs)
             where l.active and l.source = 'contact'),
        changed as (select * from diffs where differs)
        select (select count(*) from usersync.links l where l.active),
               (select count(distinct user_id) from changed),
               (select count(*) from usersync.links l where l.active
                   and l.mapping_version < (select s.version from usersync.mapping_state s)),
               coalesce((select pg_catalog.jsonb_agg(pg_catalog.jsonb_build_object(
                                'user_id', x.user_id, 'contact_id', x.contact_id, 'field', x.field,
                                'from', x.cur, 'to', x.new) order by x.user_id, x.field)
                           from (select * from changed order by user_id, field limit %7$s) x), '[]')
        $q$, mu.relation, mu.key_column, mc.relation, mc.key_column, c_diff,
        coalesce(u_diff, '(null::text, null::text, null::text, false)'), examples);
    return query execute q;
end
$$;
comment on function usersync.preview_resync(integer) is
    'Dry run of resync_all: pairs, how many would change, how many are stale, and a few example field changes';
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
-- 90_install.sql: ownership, grants, the triggers on the modules, and the first generation.
-- Safe to run again: it changes nothing that is already as it should be, and keeps the
-- administrators' mapping and settings.

-- Attach the engine's triggers to the module tables named in usersync.modules. Existing
-- triggers with the right definition are left alone (the DDL guard refuses to drop them for
-- anyone but a superuser).
create or replace function usersync._attach()
returns void
language plpgsql
set search_path = ''
as $$
declare
    mu usersync.modules;
    mc usersync.modules;
    t record;
    seq text;
    existing text;
    wanted text;
begin
    select * into mu from usersync.modules where module = 'users';
    select * into mc from usersync.modules where module = 'contacts';
    for t in
        select * from (values
            (mu.relation, 'usersync_after_insert',
             'after insert on %s referencing new table as new_rows for each statement when (current_user <> ''usersync_engine'') execute function usersync._g_on_users_insert()'),
            (mu.relation, 'usersync_after_update',
             'after update on %s referencing old table as old_rows new table as new_rows for each statement when (current_user <> ''usersync_engine'') execute function usersync._g_on_users_update()'),
            (mu.relation, 'usersync_after_delete',
             'after delete on %s referencing old table as old_rows for each statement when (current_user <> ''usersync_engine'') execute function usersync._g_on_users_delete()'),
            (mu.relation, 'usersync_before_truncate',
             'before truncate on %s for each statement when (current_user <> ''usersync_engine'') execute function usersync._g_on_users_truncate()'),
            -- Contacts: row triggers that the engine's own writes skip (WHEN is checked before the
            -- function is even called), so syncing a million contacts pays nothing for them.
            (mc.relation, 'usersync_after_update',
             'after update on %s for each row when (current_user <> ''usersync_engine'') execute function usersync._g_on_contact_update()'),
            (mc.relation, 'usersync_before_delete',
             'before delete on %s for each row when (current_user <> ''usersync_engine'') execute function usersync._g_on_contact_delete_before()'),
            (mc.relation, 'usersync_after_delete',
             'after delete on %s for each row when (current_user <> ''usersync_engine'') execute function usersync._g_on_contact_delete_after()'),
            (mc.relation, 'usersync_before_truncate',
             'before truncate on %s for each statement when (current_user <> ''usersync_engine'') execute function usersync._g_on_contacts_truncate()')
        ) v(rel, name, def)
    loop
        wanted := pg_catalog.format('create trigger %I ', t.name) || pg_catalog.format(t.def, t.rel);
        select pg_catalog.pg_get_triggerdef(tg.oid) into existing
          from pg_catalog.pg_trigger tg where tg.tgrelid = t.rel and tg.tgname = t.name;
        if existing is not null and lower(existing) = lower(wanted) then
            continue;
        end if;
        if existing is not null then
            execute pg_catalog.format('drop trigger %I on %s', t.name, t.rel);
        end if;
        execute wanted;
    end loop;

    execute pg_catalog.format('grant select, insert, update, delete on %s, %s to usersync_engine', mu.relation, mc.relation);
    for seq in select pg_catalog.pg_get_serial_sequence(mo.relation::text, mo.key_column) from usersync.modules mo loop
        if seq is not null then
            execute pg_catalog.format('grant usage on sequence %s to usersync_engine', seq);
        end if;
    end loop;
end
$$;

-- The engine: owns every function that writes, so that current_user inside them is
-- usersync_engine, which is what the guards recognise.
alter function usersync._check_mapping_row() owner to usersync_engine;
alter function usersync._mapping_changed() owner to usersync_engine;
alter function usersync.default_field_mapping() owner to usersync_engine;
alter function usersync.reset_field_mapping() owner to usersync_engine;
alter function usersync._generate() owner to usersync_engine;
alter function usersync._diagnose(bigint) owner to usersync_engine;
alter function usersync._explain_failure(bigint[]) owner to usersync_engine;
alter function usersync._field_fits(bigint[], text, text) owner to usersync_engine;
alter function usersync.sync_users(bigint[]) owner to usersync_engine;
alter function usersync.resync_step(integer) owner to usersync_engine;
alter function usersync.set_sync_source(bigint, text) owner to usersync_engine;
alter function usersync.preview_resync(integer) owner to usersync_engine;
alter function usersync._check_dependencies() owner to usersync_engine;
alter function usersync._on_sql_drop() owner to usersync_engine;
alter function usersync._on_ddl_end() owner to usersync_engine;

grant select on usersync.modules, usersync.settings, usersync.field_mapping, usersync.mapping_state to usersync_engine;
grant select, insert, update, delete on usersync.links, usersync.sync_errors, usersync.resync_state to usersync_engine;
grant insert, delete on usersync.field_mapping to usersync_engine;
grant update on usersync.mapping_state to usersync_engine;
grant select on usersync.metadata_fields to usersync_engine;

-- Functions are executable by PUBLIC by default: take that away from every one of them,
-- then grant the public API to administrators.
revoke all on all functions in schema usersync from public;
revoke all on all procedures in schema usersync from public;
revoke all on all tables in schema usersync from public;

grant execute on all functions in schema usersync to usersync_engine;

grant select on usersync.modules, usersync.settings, usersync.field_mapping, usersync.mapping_state,
                usersync.links, usersync.sync_errors, usersync.resync_state,
                usersync.metadata_fields, usersync.synchronized_contacts to usersync_admin;
grant insert, update, delete, truncate on usersync.field_mapping to usersync_admin;
grant update (delete_contact_with_user, delete_user_with_contact) on usersync.settings to usersync_admin;
grant execute on function usersync.sync_users(bigint[]), usersync.resync_step(integer),
                          usersync.set_sync_source(bigint, text), usersync.reset_field_mapping(),
                          usersync.default_field_mapping(), usersync.preview_resync(integer) to usersync_admin;
grant execute on procedure usersync.resync_all(integer) to usersync_admin;

-- First install only: the default mapping (which also generates the engine). Later runs keep
-- whatever the administrators configured.
do $$
begin
    if not exists (select from usersync.mapping_state) then
        insert into usersync.mapping_state default values;
        perform usersync._generate();
        perform usersync._attach();
        perform usersync.reset_field_mapping();
    else
        perform pg_catalog.pg_advisory_xact_lock(usersync._config_lock_key());
        perform usersync._generate();
        perform usersync._attach();
    end if;
end
$$;
