-- 0003 prelude: functions whose name or signature changed in 0.2 (the rest is replaced in place).
drop function if exists usersync._gen_dual(text);
drop function if exists usersync._config_lock_key();
drop function if exists usersync._trigger_names();
drop function if exists usersync._check_dependencies();
drop function if exists usersync.preview_resync(integer);

-- 00_schema.sql: the usersync schema and the roles the engine relies on.
--
-- usersync_engine  NOLOGIN; owns the engine's functions. Inside them current_user is
--                  usersync_engine, and that (not a session setting any role could forge)
--                  is how the guards recognise the engine's own writes.
-- usersync_admin   NOLOGIN; grant it to the people and scripts that administer the sync
--                  (mapping, settings, sync actions). See docs/sql-api.md.
-- Roles are cluster-wide, so they are created only when missing and never dropped here.

do $$
begin
    if not exists (select from pg_catalog.pg_roles where rolname = 'usersync_engine') then
        create role usersync_engine nologin;
    end if;
    if not exists (select from pg_catalog.pg_roles where rolname = 'usersync_admin') then
        create role usersync_admin nologin;
    end if;
end
$$;

create schema if not exists usersync;
comment on schema usersync is 'usersync: keeps the Contacts module synchronized from the Users module';

-- Nothing in usersync is for PUBLIC; grants below and in later files are explicit.
revoke all on schema usersync from public;
grant usage on schema usersync to usersync_admin;
-- The engine regenerates its specialised functions when the mapping changes, so it creates in its schema.
grant usage, create on schema usersync to usersync_engine;
-- 10_modules.sql: the two modules the engine keeps in step, Users and Contacts.
--
-- Every column is a metadata field except the key (id) and the switch (sync_to_contact).
-- Column comments are the labels shown to administrators. A DBA may add custom fields with
-- ALTER TABLE ... ADD COLUMN; the engine reads the catalog, so they appear at once.

create table if not exists public.users (
    id              bigint generated always as identity primary key,
    login           text not null unique,
    first_name      text,
    last_name       text,
    academic_title  text,
    email           text,
    phone           text,
    mobile          text,
    department      text,
    job_title       text,
    birth_date      date,
    sync_to_contact boolean not null default false
);

comment on table public.users is 'Users module';
comment on column public.users.login is 'Login';
comment on column public.users.first_name is 'First name';
comment on column public.users.last_name is 'Last name';
comment on column public.users.academic_title is 'Academic title';
comment on column public.users.email is 'Email';
comment on column public.users.phone is 'Phone';
comment on column public.users.mobile is 'Mobile';
comment on column public.users.department is 'Department';
comment on column public.users.job_title is 'Job title';
comment on column public.users.birth_date is 'Date of birth';
comment on column public.users.sync_to_contact is 'Synchronize user to contact module';

create table if not exists public.contacts (
    id          bigint generated always as identity primary key,
    title       text,
    first_name  text,
    last_name   text,
    email       text,
    phone       text,
    mobile      text,
    company     text,
    department  text,
    job_title   text,
    birthday    date,
    notes       text
);

comment on table public.contacts is 'Contacts module';
comment on column public.contacts.title is 'Title';
comment on column public.contacts.first_name is 'First name';
comment on column public.contacts.last_name is 'Last name';
comment on column public.contacts.email is 'Email';
comment on column public.contacts.phone is 'Phone';
comment on column public.contacts.mobile is 'Mobile';
comment on column public.contacts.company is 'Company';
comment on column public.contacts.department is 'Department';
comment on column public.contacts.job_title is 'Job title';
comment on column public.contacts.birthday is 'Birthday';
comment on column public.contacts.notes is 'Notes';
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
-- config_lock    no rows: its table lock serializes configuration changes against sync actions

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
-- The mapping the current version stands for: a statement that leaves the mapping as it was
-- (setting a field to the target it already has) is no change and bumps nothing.
alter table usersync.mapping_state add column if not exists mapping jsonb;

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
-- The session running the current run: a second run beside it is refused (US009) while that
-- session lives; an interrupted run (its session gone) is resumed by whoever runs next.
alter table usersync.resync_state add column if not exists owner_pid integer;

-- Configuration changes (mapping edits, regeneration) lock this table EXCLUSIVE; sync_users,
-- resync_step and set_sync_source lock it SHARE, so no batch ever runs half on an old mapping.
-- A table lock rather than an advisory lock: any role may take any advisory lock and so stall
-- the engine, while LOCK TABLE in these modes needs UPDATE on the table, which only the engine has.
create table if not exists usersync.config_lock ();
comment on table usersync.config_lock is 'Empty; its table lock serializes configuration changes (only the engine may take it)';

-- The EXCLUSIVE lock is taken without joining the lock queue: a configuration change that waited
-- in the queue behind a sync action (itself waiting for a row an application holds) would make
-- every later sync action queue behind it. Polling with NOWAIT keeps the queue free for them;
-- lock_timeout and statement_timeout still bound the wait.
create or replace function usersync._lock_config_exclusive()
returns void
language plpgsql
set search_path = pg_catalog, pg_temp
as $$
declare
    started pg_catalog.timestamptz := pg_catalog.clock_timestamp();
    pause pg_catalog.float8 := 0.005;
    timeout pg_catalog.interval :=
        nullif(pg_catalog.current_setting('lock_timeout'), '0')::pg_catalog.interval;
begin
    loop
        begin
            lock table usersync.config_lock in exclusive mode nowait;
            return;
        exception when lock_not_available then
            -- A holder of the lock waiting for one of ours is a deadlock PostgreSQL cannot see
            -- (we are sleeping, not queued): break it as PostgreSQL would.
            if exists (select from pg_catalog.pg_locks l
                        where l.relation = 'usersync.config_lock'::pg_catalog.regclass and l.granted
                          and l.pid <> pg_catalog.pg_backend_pid()
                          and pg_catalog.pg_backend_pid() = any(pg_catalog.pg_blocking_pids(l.pid))) then
                raise exception using errcode = 'deadlock_detected',
                    message = 'usersync: deadlock between a configuration change and a running synchronization',
                    detail = 'A session holding the configuration lock waits for a lock this transaction holds.',
                    hint = 'Retry the configuration change.';
            end if;
            if timeout is not null and pg_catalog.clock_timestamp() - started > timeout then
                raise exception using errcode = 'lock_not_available',
                    message = 'usersync: a synchronization is running; the configuration change waited too long',
                    hint = 'Retry when the running sync_users, resync batch or set_sync_source has finished.';
            end if;
            perform pg_catalog.pg_sleep(pause);
            pause := least(pause * 2, 0.2);
        end;
    end loop;
end
$$;

-- The engine's triggers, recognised by the function they call (a trigger keeps its function when
-- renamed), with the name and definition usersync._attach() gives them
-- (the DDL guard and the generator use this list too).
create or replace function usersync._engine_triggers()
returns table (module text, name text, fn text, def text)
language sql immutable set search_path = pg_catalog, pg_temp as $$
    values ('users', 'usersync_after_insert', 'usersync._g_on_users_insert()',
            'after insert on %s referencing new table as new_rows for each statement'),
           ('users', 'usersync_after_update', 'usersync._g_on_users_update()',
            'after update on %s referencing old table as old_rows new table as new_rows for each statement'),
           ('users', 'usersync_after_delete', 'usersync._g_on_users_delete()',
            'after delete on %s referencing old table as old_rows for each statement'),
           ('users', 'usersync_before_truncate', 'usersync._g_on_users_truncate()',
            'before truncate on %s for each statement'),
           -- Contacts: row triggers that the engine's own writes skip (WHEN is checked before the
           -- function is even called), so syncing a million contacts pays nothing for them.
           ('contacts', 'usersync_after_update', 'usersync._g_on_contact_update()',
            'after update on %s for each row'),
           ('contacts', 'usersync_before_delete', 'usersync._g_on_contact_delete_before()',
            'before delete on %s for each row'),
           ('contacts', 'usersync_after_delete', 'usersync._g_on_contact_delete_after()',
            'after delete on %s for each row'),
           ('contacts', 'usersync_before_truncate', 'usersync._g_on_contacts_truncate()',
            'before truncate on %s for each statement')
$$;

create or replace view usersync.metadata_fields as
select m.module,
       a.attname::text as field,
       pg_catalog.format_type(a.atttypid, a.atttypmod) as data_type,
       coalesce(pg_catalog.col_description(a.attrelid, a.attnum), a.attname::text) as label,
       a.attnum as position,
       a.attnotnull as not_null,
       a.atthasdef or a.attidentity <> '' as has_default
  from usersync.modules m
  join pg_catalog.pg_attribute a on a.attrelid = m.relation
 where a.attnum > 0
   and not a.attisdropped
   and a.attgenerated = ''
   and a.attname <> m.key_column
   and a.attname is distinct from m.switch_column;
comment on view usersync.metadata_fields is 'The live catalog of both modules'' metadata fields';
comment on column usersync.metadata_fields.not_null is 'NOT NULL: unmapped, the field gets its default (or, without one, a sync fails)';
-- 30_mapping.sql: validating the field mapping, the default mapping, and what a change sets off.
--
-- Admins edit usersync.field_mapping with plain INSERT/UPDATE/DELETE. Every row is checked
-- here (US003 on anything invalid); every statement that changes the mapping bumps the mapping
-- version and regenerates the engine's specialised functions (40_codegen.sql). Existing
-- contacts are not rewritten: sync_users / resync_all do that.

-- Can a value of user field uf be assigned to contact field cf (or the reverse)? Asked of the
-- parser itself: EXPLAIN plans the INSERT without running it, and fails exactly when PostgreSQL
-- has no assignment cast (text -> date fails; date -> text works).
create or replace function usersync._assignable(p_from regclass, p_from_field text, p_to regclass, p_to_field text)
returns boolean
language plpgsql
set search_path = pg_catalog, pg_temp
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
set search_path = pg_catalog, pg_temp
as $$
    select f.data_type from usersync.metadata_fields f where f.module = p_module and f.field = p_field
$$;

-- Explains why a name is not a metadata field of a module: unknown, or reserved to the engine.
create or replace function usersync._reject_field(p_module text, p_field text)
returns void
language plpgsql
set search_path = pg_catalog, pg_temp
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
set search_path = pg_catalog, pg_temp
as $$
declare
    users_rel regclass := (select relation from usersync.modules where module = 'users');
    contacts_rel regclass := (select relation from usersync.modules where module = 'contacts');
    other text;
begin
    perform usersync._lock_config_exclusive();
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
set search_path = pg_catalog, pg_temp
as $$
declare
    current jsonb;
begin
    perform usersync._lock_config_exclusive();
    current := (select coalesce(pg_catalog.jsonb_object_agg(m.user_field, m.contact_field), '{}')
                  from usersync.field_mapping m);
    if current = (select s.mapping from usersync.mapping_state s) then
        return null;  -- the statement left the mapping as it was: no pair becomes stale
    end if;
    update usersync.mapping_state set version = version + 1, changed_at = pg_catalog.now(), mapping = current;
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
set search_path = pg_catalog, pg_temp
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
set search_path = pg_catalog, pg_temp
as $$
declare
    n bigint;
begin
    -- Already the default: nothing to do (deleting and inserting it again would make every pair stale).
    if not exists ((select m.user_field, m.contact_field from usersync.field_mapping m)
                   except (select d.user_field, d.contact_field from usersync.default_field_mapping() d))
       and not exists ((select d.user_field, d.contact_field from usersync.default_field_mapping() d)
                       except (select m.user_field, m.contact_field from usersync.field_mapping m)) then
        return (select count(*) from usersync.field_mapping);
    end if;
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
set search_path = pg_catalog, pg_temp
-- the settings of the generated functions' conversions (usersync._gen_pins), so a diagnosis
-- fails exactly where they do
set datestyle = 'ISO, YMD' set intervalstyle = 'postgres' set timezone = 'UTC' set extra_float_digits = 1
set bytea_output = 'hex' set lc_monetary = 'C' set xmloption = 'content' set xmlbinary = 'base64'
set default_text_search_config = 'pg_catalog.simple' set timezone_abbreviations = 'Default' set array_nulls = on
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
set search_path = pg_catalog, pg_temp
-- the settings of the generated functions' conversions (usersync._gen_pins), so a diagnosis
-- fails exactly where they do
set datestyle = 'ISO, YMD' set intervalstyle = 'postgres' set timezone = 'UTC' set extra_float_digits = 1
set bytea_output = 'hex' set lc_monetary = 'C' set xmloption = 'content' set xmlbinary = 'base64'
set default_text_search_config = 'pg_catalog.simple' set timezone_abbreviations = 'Default' set array_nulls = on
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
set search_path = pg_catalog, pg_temp
as $$
declare
    m record;
    col text;
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
    -- Not a value's fault: a contact field that cannot be NULL, has no default and is not mapped
    -- (usersync._gen_contact_fields writes it NULL). Named with the class of the error it causes.
    select f.field into col
      from usersync.metadata_fields f
      left join usersync.field_mapping fm on fm.contact_field = f.field
     where f.module = 'contacts' and f.not_null and not f.has_default and fm.user_field is null
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

-- The contact fields a sync writes, with the user field that fills each (NULL: unmapped, so it
-- stays empty). An unmapped field that cannot be NULL but has a default is not written at all:
-- it gets its default when the contact is created and keeps its value afterwards (an application's
-- "status not null default 'manual'"). One that has no default is written NULL and fails, named
-- by usersync._explain_failure (the mapping screen warns about it).
create or replace function usersync._gen_contact_fields()
returns table (field text, "position" smallint, user_field text, data_type text, user_data_type text)
language sql stable set search_path = pg_catalog, pg_temp as $$
    select f.field, f.position, m.user_field, f.data_type, uf.data_type
      from usersync.metadata_fields f
      left join usersync.field_mapping m on m.contact_field = f.field
      left join usersync.metadata_fields uf on uf.module = 'users' and uf.field = m.user_field
     where f.module = 'contacts'
       and not (m.user_field is null and f.not_null and f.has_default)
$$;

-- Column lists and expressions for the current mapping and catalog.
create or replace function usersync._gen_contact_cols()
returns text language sql stable set search_path = pg_catalog, pg_temp as $$
    select string_agg(pg_catalog.quote_ident(f.field), ', ' order by f.position)
      from usersync._gen_contact_fields() f
$$;

-- The contact as the image of a user row named p_alias: mapped fields copied, the rest NULL.
create or replace function usersync._gen_contact_image(p_alias text)
returns text language sql stable set search_path = pg_catalog, pg_temp as $$
    select string_agg(case when f.user_field is null then 'null'
                           else p_alias || '.' || pg_catalog.quote_ident(f.user_field) end,
                      ', ' order by f.position)
      from usersync._gen_contact_fields() f
$$;

create or replace function usersync._gen_mapped_user_cols()
returns text language sql stable set search_path = pg_catalog, pg_temp as $$
    select string_agg(pg_catalog.quote_ident(m.user_field), ', ' order by f.position)
      from usersync.field_mapping m
      join usersync.metadata_fields f on f.module = 'users' and f.field = m.user_field
$$;

-- A contact field of the row named p_alias, as a value for a user field (reversed pairs). Where
-- no assignment cast exists (text -> date) the value is cast explicitly; a bad value then fails.
-- The one place that decides it: the generated code, the diagnosis and its probes all use it.
create or replace function usersync._gen_reverse_expr(p_alias text, p_contact_field text, p_user_field text)
returns text language sql stable set search_path = pg_catalog, pg_temp as $$
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
returns text language sql stable set search_path = pg_catalog, pg_temp as $$
    select string_agg(usersync._gen_reverse_expr(p_alias, m.contact_field, m.user_field), ', ' order by f.position)
      from usersync.field_mapping m
      join usersync.metadata_fields f on f.module = 'users' and f.field = m.user_field
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
create or replace function usersync._gen_changed(p_module text, p_old text, p_new text)
returns text language sql stable set search_path = pg_catalog, pg_temp as $$
    select case when count(*) = 0 then 'false'
                else pg_catalog.format('(%s) is distinct from (%s)',
                       string_agg(usersync._gen_cmp(p_old, x.field, f.data_type), ', ' order by x.field),
                       string_agg(usersync._gen_cmp(p_new, x.field, f.data_type), ', ' order by x.field)) end
      from (select case p_module when 'users' then m.user_field else m.contact_field end as field
              from usersync.field_mapping m) x
      join usersync.metadata_fields f on f.module = p_module and f.field = x.field
$$;

-- The name of the first mapped field that differs, for error messages.
create or replace function usersync._gen_first_changed(p_module text, p_old text, p_new text)
returns text language sql stable set search_path = pg_catalog, pg_temp as $$
    select coalesce('case ' || string_agg(pg_catalog.format('when %s is distinct from %s then %L',
                                                            usersync._gen_cmp(p_old, x.field, f.data_type),
                                                            usersync._gen_cmp(p_new, x.field, f.data_type), x.field),
                                          ' ' order by x.field) || ' end',
                    'null::pg_catalog.text')
      from (select case p_module when 'users' then m.user_field else m.contact_field end as field
              from usersync.field_mapping m) x
      join usersync.metadata_fields f on f.module = p_module and f.field = x.field
$$;

-- "The contact already is the image of the user": lets a refresh skip rows it would not change
-- (no dead tuple, no WAL). Mapped fields of different types are always rewritten.
create or replace function usersync._gen_contact_same(p_contact text, p_user text)
returns text language sql stable set search_path = pg_catalog, pg_temp as $$
    select case when bool_or(f.user_field is not null and f.user_data_type <> f.data_type) then 'false'
                else string_agg(case when f.user_field is null
                                     then pg_catalog.format('%s.%I is null', p_contact, f.field)
                                     else pg_catalog.format('%s is not distinct from %s',
                                                            usersync._gen_cmp(p_contact, f.field, f.data_type),
                                                            usersync._gen_cmp(p_user, f.user_field, f.data_type)) end,
                                ' and ' order by f.position) end
      from usersync._gen_contact_fields() f
$$;

-- "The mapped fields hold the same values on both sides", over the mapped pairs of one type
-- ('true' when there are none; a pair of differing types is converted, so not compared). Where
-- something on a table can change what the engine writes (usersync._gen_writes_can_vanish), the
-- generated code checks it after writing: an application's BEFORE trigger that changes a mapped
-- value would otherwise leave a pair reported as synced that is not.
create or replace function usersync._gen_mapped_same(p_contact text, p_user text)
returns text language sql stable set search_path = pg_catalog, pg_temp as $$
    select case when count(*) = 0 then 'true'
                else pg_catalog.format('(%s) is not distinct from (%s)',
                        string_agg(usersync._gen_cmp(p_contact, f.field, f.data_type), ', ' order by f.position),
                        string_agg(usersync._gen_cmp(p_user, f.user_field, f.data_type), ', ' order by f.position)) end
      from usersync._gen_contact_fields() f
     where f.user_field is not null and f.user_data_type = f.data_type
$$;

create or replace function usersync._gen_user_same(p_user text, p_contact text)
returns text language sql stable set search_path = pg_catalog, pg_temp as $$
    select case when bool_or(uf.data_type <> cf.data_type) then 'false'
                else coalesce(string_agg(pg_catalog.format('%s is not distinct from %s',
                                                           usersync._gen_cmp(p_user, m.user_field, uf.data_type),
                                                           usersync._gen_cmp(p_contact, m.contact_field, cf.data_type)),
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
returns boolean language sql stable set search_path = pg_catalog, pg_temp as $$
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

-- Can a write of the engine to this table be swallowed, i.e. touch fewer rows than it asked for?
-- Yes with row-level security on (a restrictive policy can hide rows even from the engine), or
-- with a BEFORE row trigger of the application (returning NULL skips the row). Only then do the
-- generated functions count the rows each write touched (US007, usersync._lost_write). Rules are
-- refused on the module tables altogether (60_ddl_guard.sql).
create or replace function usersync._gen_writes_can_vanish(p_rel regclass)
returns boolean language sql stable set search_path = pg_catalog, pg_temp as $$
    select exists (select from pg_catalog.pg_class c where c.oid = p_rel and c.relrowsecurity)
        or exists (select from pg_catalog.pg_trigger t
                    where t.tgrelid = p_rel and not t.tgisinternal and (t.tgtype & 3) = 3
                      and not exists (select from usersync._engine_triggers() et
                                       where t.tgfoid = pg_catalog.to_regprocedure(et.fn)))
$$;

-- The SET clauses that make every conversion a generated function performs independent of the
-- session (a date copied into a text field is written in DateStyle, a timestamptz in TimeZone, ...).
-- Needed only where a mapped pair's types differ; the static functions that convert carry the
-- same list in their definitions (tests/test_boundary.py checks that they agree).
create or replace function usersync._gen_pins()
returns text language sql stable set search_path = pg_catalog, pg_temp as $$
    select case when exists (select from usersync.field_mapping m
                               join usersync.metadata_fields u on u.module = 'users' and u.field = m.user_field
                               join usersync.metadata_fields c on c.module = 'contacts' and c.field = m.contact_field
                              where u.data_type <> c.data_type)
                then 'set datestyle = ''ISO, YMD'' set intervalstyle = ''postgres'' set timezone = ''UTC'''
                     ' set extra_float_digits = 1 set bytea_output = ''hex'' set lc_monetary = ''C'''
                     ' set xmloption = ''content'' set xmlbinary = ''base64'''
                     ' set default_text_search_config = ''pg_catalog.simple'''
                     ' set timezone_abbreviations = ''Default'' set array_nulls = on'
                else '' end
$$;

-- The user columns a new contact is made from (the key and the mapped fields), so that creating
-- contacts copies no more of each row than it needs.
create or replace function usersync._gen_source_cols(p_alias text)
returns text language sql stable set search_path = pg_catalog, pg_temp as $$
    select string_agg(p_alias || '.' || pg_catalog.quote_ident(x.col), ', ' order by x.ord, x.col)
      from (select (select key_column::text from usersync.modules where module = 'users') as col, 0 as ord
            union
            select m.user_field, 1 from usersync.field_mapping m) x
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
returns text language plpgsql immutable set search_path = pg_catalog, pg_temp as $$
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

create or replace function usersync._generate()
returns void
language plpgsql
security definer
set search_path = pg_catalog, pg_temp
set quote_all_identifiers = off  -- the generated text and the SET clauses it records stay canonical
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
        cid := pg_catalog.format('pg_catalog.nextval(%L::pg_catalog.regclass)', seq);
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
        'SW_LIT', pg_catalog.quote_literal(pg_catalog.quote_ident(mu.switch_column)),
        'U_REL', pg_catalog.format('%L::pg_catalog.regclass', mu.relation::text),
        'C_REL', pg_catalog.format('%L::pg_catalog.regclass', mc.relation::text),
        'GUARDED_U', usersync._gen_writes_can_vanish(mu.relation)::text,
        'GUARDED_C', usersync._gen_writes_can_vanish(mc.relation)::text,
        'PINS', usersync._gen_pins(),
        'V', (select version from usersync.mapping_state)::text,
        'BULK_ROWS', '100',  -- above this many rows, statements on transition tables are planned per call
        'CID', cid,
        'OVR', case when exists (select from pg_catalog.pg_attribute a where a.attrelid = mc.relation
                                   and a.attname = mc.key_column and a.attidentity = 'a')
                    then 'overriding system value' else '' end,
        'C_COLS', usersync._gen_contact_cols(),
        'C_IMG_S', usersync._gen_contact_image('(s.usr)'),
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
        'KEPT_CU', usersync._gen_mapped_same('c', 'u'),
        'KEPT_CN', usersync._gen_mapped_same('c', 'n'),
        'KEPT_NEWU', usersync._gen_mapped_same('new', 'u'),
        'CAN_FAIL', can_fail::text,
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
-- @SW_LIT@ the switch column's name as a string literal (for messages), @PINS@ the SET clauses
-- that make conversions independent of the session's settings (only where a mapped pair's types
-- differ), @GUARDED_U@/@GUARDED_C@ true when something on that table can swallow a write of the
-- engine (row-level security, a BEFORE row trigger of the application): the engine then counts
-- the rows each write touched and fails with US007 rather than report a pair as synced.
-- Placeholders never stand in comments or string literals; see 40_codegen.sql for why the
-- generated code keeps its structure whatever the identifiers.
-- @TRY@ / @CATCH@ / @END_CATCH@ wrap the writes in an exception block that names user, contact
-- and field when a value does not fit; when nothing can fail (same types, no constraints: see
-- usersync._gen_writes_can_fail) the block and its handler are left out (usersync._gen_try).
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
set search_path = pg_catalog, pg_temp
as $templates$
values
('_g_lock_pair(bigint, bigint, text)', $tpl$
create or replace function usersync._g_lock_pair(p_user_id bigint, p_contact_id bigint, p_source text)
returns void language plpgsql security definer set search_path = pg_catalog, pg_temp as $body$
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
language plpgsql security definer set search_path = pg_catalog, pg_temp @PINS@
-- A batch touches its own rows only: index probes from the id array, whatever the statistics say
-- (just loaded, no ANALYZE: a custom plan read every table whole for each batch) and whatever
-- plan the cache settled on after five calls. Every table it reads has the index it needs.
set enable_seqscan = off set enable_hashjoin = off set enable_mergejoin = off
as $body$
declare
    n bigint;
    expected bigint;
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
    if @GUARDED_C@ then
        select count(*) into expected
          from @C@ c, @U@ u join usersync.links l on l.user_id = u.@UK@
         where u.@UK@ = any(p_user_ids) and l.user_id = any(p_user_ids)
           and u.@SW@ and l.active and l.source = 'user' and c.@CK@ = l.contact_id
           and not (@C_SAME@);
    end if;
    update @C@ c set (@C_COLS@) = row(@C_IMG_U@)
      from @U@ u join usersync.links l on l.user_id = u.@UK@
     where u.@UK@ = any(p_user_ids) and l.user_id = any(p_user_ids)
       and u.@SW@ and l.active and l.source = 'user' and c.@CK@ = l.contact_id
       and not (@C_SAME@);
    get diagnostics changed = row_count;
    if @GUARDED_C@ and changed <> expected then
        perform usersync._lost_write(@C_REL@, 'update', expected, changed);
    end if;
    if @GUARDED_C@ then
        select count(*) into n
          from @C@ c join usersync.links l on l.contact_id = c.@CK@ join @U@ u on u.@UK@ = l.user_id
         where u.@UK@ = any(p_user_ids) and l.user_id = any(p_user_ids)
           and u.@SW@ and l.active and l.source = 'user' and not (@KEPT_CU@);
        if n > 0 then
            perform usersync._lost_write(@C_REL@, 'keep', n, 0);
        end if;
    end if;
    if @HAS_MAP@ and exists (select from usersync.links l where l.active and l.source = 'contact') then
        perform from @C@ c join usersync.links l on l.contact_id = c.@CK@
         where l.user_id = any(p_user_ids) and l.active and l.source = 'contact' order by c.@CK@ for share;
        if @GUARDED_U@ then
            select count(*) into expected
              from @U@ u, @C@ c join usersync.links l on l.contact_id = c.@CK@
             where l.user_id = any(p_user_ids) and u.@UK@ = any(p_user_ids)
               and l.active and l.source = 'contact' and u.@UK@ = l.user_id
               and not (@U_SAME@);
        end if;
        update @U@ u set (@U_COLS@) = row(@U_IMG_C@)
          from @C@ c join usersync.links l on l.contact_id = c.@CK@
         where l.user_id = any(p_user_ids) and u.@UK@ = any(p_user_ids)
           and l.active and l.source = 'contact' and u.@UK@ = l.user_id
           and not (@U_SAME@);
        get diagnostics n = row_count;
        if @GUARDED_U@ and n <> expected then
            perform usersync._lost_write(@U_REL@, 'update', expected, n);
        end if;
        if @GUARDED_U@ then
            select count(*) into expected
              from @U@ u join usersync.links l on l.user_id = u.@UK@ join @C@ c on c.@CK@ = l.contact_id
             where l.user_id = any(p_user_ids) and u.@UK@ = any(p_user_ids)
               and l.active and l.source = 'contact' and not (@KEPT_CU@);
            if expected > 0 then
                perform usersync._lost_write(@U_REL@, 'keep', expected, 0);
            end if;
        end if;
        changed := changed + n;
    end if;
    -- Every active pair whose contact exists is now the image of its source under the current
    -- mapping. (offset 0 keeps the EXISTS a per-row index probe; as a hash semi-join it would read
    -- all of contacts for every batch)
    update usersync.links l set mapping_version = @V@, synced_at = pg_catalog.now()
     where l.user_id = any(p_user_ids) and l.active
       and exists (select from @C@ c where c.@CK@ = l.contact_id offset 0)
       and (not @GUARDED_U@ or exists (select from @U@ u where u.@UK@ = l.user_id offset 0));
    get diagnostics synced = row_count;
    -- A pair whose contact (or, with row-level security on users, user) the engine cannot see
    -- (deleted behind the triggers' back, or hidden by a policy) is not synced, and says so
    -- rather than stay silently stale.
    select count(*) into expected from usersync.links l where l.user_id = any(p_user_ids) and l.active;
    if synced <> expected then
        perform usersync._lost_write(@C_REL@, 'read', expected, synced);
    end if;
    delete from usersync.sync_errors e where e.user_id = any(p_user_ids);
end
$body$;
$tpl$),

('_g_link(bigint[])', $tpl$
create or replace function usersync._g_link(p_user_ids bigint[])
returns bigint language plpgsql security definer set search_path = pg_catalog, pg_temp @PINS@ as $body$
declare
    expected bigint;
    written bigint;
begin
    perform from @U@ u where u.@UK@ = any(p_user_ids) order by u.@UK@ for share;
    -- A link whose contact is gone cannot be re-used: forget it, a new contact is made below.
    -- Unless row-level security may only be hiding it: a new contact would then be a duplicate.
    if @GUARDED_C@ then
        select count(*) into expected from usersync.links l
         where l.user_id = any(p_user_ids) and not exists (select from @C@ c where c.@CK@ = l.contact_id);
        if expected > 0 then
            perform usersync._lost_write(@C_REL@, 'read', expected, 0);
        end if;
    end if;
    delete from usersync.links l
     where l.user_id = any(p_user_ids) and not exists (select from @C@ c where c.@CK@ = l.contact_id);
    -- Re-enabling the switch re-links the contact the user had before (never a duplicate),
    -- with the user as the source again: that is what the switch means.
    update usersync.links l set active = true, source = 'user'
     where l.user_id = any(p_user_ids) and not l.active;
    if @GUARDED_C@ then
        select count(*) into expected from @U@ u
         where u.@UK@ = any(p_user_ids) and u.@SW@
           and not exists (select from usersync.links l where l.user_id = u.@UK@);
    end if;
    -- s(new_id, usr): the user's columns travel as one composite, so no column of the
    -- application's can clash with the engine's own.
    with s as materialized (
        select @CID@ as new_id, x as usr
          from (select @U_SRC_U@
                  from @U@ u
                 where u.@UK@ = any(p_user_ids) and u.@SW@
                   and not exists (select from usersync.links l where l.user_id = u.@UK@)) x),
    linked as (
        insert into usersync.links (user_id, contact_id, source, active, mapping_version)
        select (s.usr).@UK@, s.new_id, 'user', true, @V@ from s)
    insert into @C@ (@CK@, @C_COLS@) @OVR@
    select s.new_id, @C_IMG_S@ from s;
    if @GUARDED_C@ then
        get diagnostics written = row_count;
        if written <> expected then
            perform usersync._lost_write(@C_REL@, 'insert', expected, written);
        end if;
    end if;
    return (usersync._g_refresh(p_user_ids)).synced;
end
$body$;
$tpl$),

('_g_sync_users(bigint[])', $tpl$
create or replace function usersync._g_sync_users(p_user_ids bigint[])
returns bigint language plpgsql security definer set search_path = pg_catalog, pg_temp @PINS@ as $body$
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
                message = pg_catalog.format('unknown user id(s): %s', pg_catalog.array_to_string(unknown, ', ', 'NULL')),
                hint = 'Pass ids of existing users, or NULL for every user whose switch is on.';
        end if;
    end if;
    -- Repairs, for writes that bypassed the triggers (session_replication_role = replica, ...):
    -- a link whose switch is off ends; a link whose user is gone is forgotten.
    update usersync.links l set active = false
      from @U@ u
     where u.@UK@ = l.user_id and l.active and not u.@SW@ and (p_user_ids is null or l.user_id = any(p_user_ids));
    -- (Not while row-level security may only be hiding the user: that pair would be lost.)
    if @GUARDED_U@ then
        select array_agg(l.user_id) into unknown from usersync.links l
         where (p_user_ids is null or l.user_id = any(p_user_ids))
           and not exists (select from @U@ u where u.@UK@ = l.user_id);
        if unknown is not null then
            perform usersync._lost_write(@U_REL@, 'read', pg_catalog.cardinality(unknown), 0);
        end if;
    end if;
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
returns trigger language plpgsql security definer set search_path = pg_catalog, pg_temp @PINS@ as $body$
declare
    expected bigint;
    written bigint;
    visible bigint;
begin
    @TRY@
    if exists (select from new_rows n where n.@SW@) then
        with s as materialized (
            select @CID@ as new_id, x as usr from (select @U_SRC_N@ from new_rows n where n.@SW@) x),
        linked as (
            -- ON CONFLICT: a link left behind by a delete that bypassed the triggers.
            insert into usersync.links (user_id, contact_id, source, active, mapping_version)
            select (s.usr).@UK@, s.new_id, 'user', true, @V@ from s
            on conflict (user_id) do update
               set contact_id = excluded.contact_id, source = 'user', active = true,
                   mapping_version = excluded.mapping_version, synced_at = pg_catalog.now())
        insert into @C@ (@CK@, @C_COLS@) @OVR@
        select s.new_id, @C_IMG_S@ from s;
        if @GUARDED_C@ then
            get diagnostics written = row_count;
            expected := (select count(*) from new_rows n where n.@SW@);
            if written <> expected then
                perform usersync._lost_write(@C_REL@, 'insert', expected, written);
            end if;
            -- (every new contact must be visible, or a policy could hide a changed value)
            select count(*) filter (where not (@KEPT_CN@)), count(*) into written, visible
              from new_rows n join usersync.links l on l.user_id = n.@UK@ join @C@ c on c.@CK@ = l.contact_id
             where n.@SW@;
            if visible <> expected then
                perform usersync._lost_write(@C_REL@, 'read', expected, visible);
            end if;
            if written > 0 then
                perform usersync._lost_write(@C_REL@, 'keep', written, 0);
            end if;
        end if;
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
returns trigger language plpgsql security definer set search_path = pg_catalog, pg_temp @PINS@ as $body$
declare
    r record;
    switched_on bigint[] := '{}';
    expected bigint;
    written bigint;
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

    -- The switch changed for some row, or a key did (rare: both show as a (key, switch) that is new).
    if any_switched then
        -- A pair is its two keys: re-keying a linked user would leave its link behind.
        /*dual into r*/
        select o.@UK@ as user_id into r
          from old_rows o
         where not exists (select from new_rows n where n.@UK@ = o.@UK@)
           and exists (select from usersync.links l where l.user_id = o.@UK@)
         limit 1;
        /*end*/
        if r.user_id is not null then
            raise exception using errcode = 'US008',
                message = pg_catalog.format('the key of user %s cannot change: it is linked to a contact', r.user_id),
                detail = 'usersync identifies a pair by the keys of its user and its contact.',
                hint = 'Keep the key, or delete the user and insert it again with the new key.';
        end if;
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
    if @GUARDED_C@ then
        /*dual into expected using switched_on*/
        select count(*) into expected
          from new_rows n
          join old_rows o on o.@UK@ = n.@UK@
          join usersync.links l on l.user_id = n.@UK@ and l.active and l.source = 'user'
         where n.@SW@ and @U_CHANGED@
           and not n.@UK@ = any(switched_on);
        /*end*/
    end if;
    /*dual using switched_on*/
    update @C@ c set (@C_COLS@) = row(@C_IMG_N@)
      from new_rows n
      join old_rows o on o.@UK@ = n.@UK@
      join usersync.links l on l.user_id = n.@UK@ and l.active and l.source = 'user'
     where c.@CK@ = l.contact_id and n.@SW@ and @U_CHANGED@
       and not n.@UK@ = any(switched_on);
    /*end*/
    if @GUARDED_C@ then
        get diagnostics written = row_count;
        if written <> expected then
            perform usersync._lost_write(@C_REL@, 'update', expected, written);
        end if;
        /*dual into written using switched_on*/
        select count(*) into written
          from new_rows n
          join old_rows o on o.@UK@ = n.@UK@
          join usersync.links l on l.user_id = n.@UK@ and l.active and l.source = 'user'
          join @C@ c on c.@CK@ = l.contact_id
         where n.@SW@ and @U_CHANGED@ and not n.@UK@ = any(switched_on) and not (@KEPT_CN@);
        /*end*/
        if written > 0 then
            perform usersync._lost_write(@C_REL@, 'keep', written, 0);
        end if;
    end if;
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
returns trigger language plpgsql security definer set search_path = pg_catalog, pg_temp as $body$
declare
    r record;
    expected bigint;
    written bigint;
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
        if @GUARDED_C@ then
            /*dual into expected*/
            select count(*) into expected
              from old_rows o join usersync.links l on l.user_id = o.@UK@ and l.active and l.source = 'user';
            /*end*/
        end if;
        /*dual*/
        delete from @C@ c
         using old_rows o join usersync.links l on l.user_id = o.@UK@ and l.active and l.source = 'user'
         where c.@CK@ = l.contact_id;
        /*end*/
        if @GUARDED_C@ then
            get diagnostics written = row_count;
            if written <> expected then
                perform usersync._lost_write(@C_REL@, 'delete', expected, written);
            end if;
        end if;
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
returns trigger language plpgsql security definer set search_path = pg_catalog, pg_temp as $body$
declare
    expected bigint;
    written bigint;
begin
    if exists (select from usersync.links l where l.active and l.source = 'contact') then
        raise exception using errcode = 'US002',
            message = pg_catalog.format('cannot truncate %s: some users are synchronized from their contacts', tg_table_name),
            detail = 'Reversed pairs make those users read-only.',
            hint = 'Delete their contacts, or restore the direction with usersync.set_sync_source(user_id, ''user''), first.';
    end if;
    -- TRUNCATE skips row triggers; apply the delete rules to every pair at once instead.
    if (select s.delete_contact_with_user from usersync.settings s) then
        select count(*) into expected from usersync.links l where l.active and l.source = 'user';
        delete from @C@ c using usersync.links l where c.@CK@ = l.contact_id and l.active and l.source = 'user';
        get diagnostics written = row_count;
        if @GUARDED_C@ and written <> expected then
            perform usersync._lost_write(@C_REL@, 'delete', expected, written);
        end if;
    end if;
    delete from usersync.links;
    delete from usersync.sync_errors;
    return null;
end
$body$;
$tpl$),

('_g_on_contact_update()', $tpl$
create or replace function usersync._g_on_contact_update()
returns trigger language plpgsql security definer set search_path = pg_catalog, pg_temp @PINS@ as $body$
declare
    l usersync.links;
    written bigint;
begin
    select * into l from usersync.links where contact_id = old.@CK@ and active;
    if not found then
        -- A remembered contact (its user switched off) is found again by its key.
        if new.@CK@ is distinct from old.@CK@ then
            select * into l from usersync.links x where x.contact_id = old.@CK@;
        end if;
        if l.user_id is not null then
            raise exception using errcode = 'US008',
                message = pg_catalog.format('the key of contact %s cannot change: it is linked to user %s', old.@CK@, l.user_id),
                detail = 'usersync identifies a pair by the keys of its user and its contact.',
                hint = 'Keep the key, or delete the contact and insert it again with the new key.';
        end if;
        return null;
    end if;
    if l.source = 'user' then
        raise exception using errcode = 'US001',
            message = pg_catalog.format('contact %s is synchronized from user %s and cannot be edited', old.@CK@, l.user_id),
            detail = 'While the user is the data source, the contact is read-only in the Contacts module.',
            hint = pg_catalog.format('Edit user %s instead; or switch its synchronization off (UPDATE ... SET %s = false), '
                                     'or reverse the direction: SELECT usersync.set_sync_source(%s, ''contact'')',
                                     l.user_id, @SW_LIT@, l.user_id);
    end if;
    if new.@CK@ is distinct from old.@CK@ then
        raise exception using errcode = 'US008',
            message = pg_catalog.format('the key of contact %s cannot change: it is linked to user %s', old.@CK@, l.user_id),
            detail = 'usersync identifies a pair by the keys of its user and its contact.',
            hint = 'Keep the key, or delete the contact and insert it again with the new key.';
    end if;
    if @HAS_MAP@ and @C_CHANGED@ then
        @TRY@
        update @U@ u set (@U_COLS@) = row(@U_IMG_NEW@) where u.@UK@ = l.user_id;
        if @GUARDED_U@ then
            get diagnostics written = row_count;
            if written <> 1 then
                perform usersync._lost_write(@U_REL@, 'update', 1, written);
            end if;
            if exists (select from @U@ u where u.@UK@ = l.user_id and not (@KEPT_NEWU@)) then
                perform usersync._lost_write(@U_REL@, 'keep', 1, 0);
            end if;
        end if;
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
returns trigger language plpgsql security definer set search_path = pg_catalog, pg_temp as $body$
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
returns trigger language plpgsql security definer set search_path = pg_catalog, pg_temp as $body$
declare
    l usersync.links;
    written bigint;
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
        if @GUARDED_U@ then
            get diagnostics written = row_count;
            if written <> 1 then
                perform usersync._lost_write(@U_REL@, 'delete', 1, written);
            end if;
        end if;
    end if;
    return null;
end
$body$;
$tpl$),

('_g_on_contacts_truncate()', $tpl$
create or replace function usersync._g_on_contacts_truncate()
returns trigger language plpgsql security definer set search_path = pg_catalog, pg_temp as $body$
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
            hint = pg_catalog.format('Switch synchronization off for those users first (UPDATE ... SET %s = false).', @SW_LIT@);
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
set search_path = pg_catalog, pg_temp
as $$
begin
    -- Taken before any row lock, so it never waits while holding one.
    lock table usersync.config_lock in share mode;
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
set search_path = pg_catalog, pg_temp
-- The next batch's ids come from the links' primary key, a range after the cursor, whatever the
-- statistics (see usersync._g_refresh); the cursor is a plain range so a generic plan keeps it.
set enable_seqscan = off
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
    lock table usersync.config_lock in share mode;
    -- One run at a time: the state row is the run's lock as well as its cursor.
    select * into st from usersync.resync_state for update;
    if found and st.finished_at is null and st.owner_pid is distinct from pg_catalog.pg_backend_pid()
       and exists (select from pg_catalog.pg_stat_activity a where a.pid = st.owner_pid) then
        raise exception using errcode = 'US009',
            message = pg_catalog.format('a resync run is in progress in session %s (started %s, %s of %s pairs done)',
                                        st.owner_pid, st.started_at, st.synced + st.failed, st.total),
            detail = 'Two runs side by side would each start the other over.',
            hint = pg_catalog.format('Wait for it to finish; to take it over, end that session first: '
                                     'SELECT pg_terminate_backend(%s)', st.owner_pid);
    end if;
    -- A finished run, or none: start one. A run whose mapping changed between two batches starts
    -- over too, or its earlier batches would stay on the old mapping when it reports finished.
    if not found or st.finished_at is not null
       or st.mapping_version <> (select version from usersync.mapping_state) then
        insert into usersync.resync_state (singleton, started_at, mapping_version, after_user_id, total, owner_pid)
        values (true, pg_catalog.now(), (select version from usersync.mapping_state),
                null, (select count(*) from usersync.links where active), pg_catalog.pg_backend_pid())
        on conflict (singleton) do update
           set started_at = excluded.started_at, finished_at = null, mapping_version = excluded.mapping_version,
               after_user_id = null, total = excluded.total, synced = 0, changed = 0, failed = 0,
               owner_pid = excluded.owner_pid
        returning * into st;
    end if;

    ids := array(select l.user_id from usersync.links l
                  where l.active and l.user_id > coalesce(st.after_user_id, -9223372036854775808)
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
    exception when data_exception or integrity_constraint_violation or sqlstate 'US007' then
        -- Some pair in the batch holds a value its target cannot take: redo the batch pair by
        -- pair so the others still sync, and record each failure with its field.
        ok := 0;
        rewritten := 0;
        foreach uid in array ids loop
            begin
                select * into r from usersync._g_refresh(array[uid]);
                ok := ok + r.synced;
                rewritten := rewritten + r.changed;
            exception when data_exception or integrity_constraint_violation or sqlstate 'US007' then
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
           failed = failed + bad, owner_pid = pg_catalog.pg_backend_pid()  -- resuming an interrupted run takes it over
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
set search_path = pg_catalog, pg_temp
as $$
declare
    l usersync.links;
    m usersync.modules;
    linked boolean := false;
    found_user boolean;
begin
    if set_sync_source.user_id is null then
        raise exception using errcode = 'US006', message = 'the user id is NULL',
            hint = 'Pass the id of a user whose synchronization is on.';
    end if;
    if set_sync_source.source is null or set_sync_source.source not in ('user', 'contact') then
        raise exception using errcode = 'US006',
            message = pg_catalog.format('invalid synchronization source %L', set_sync_source.source),
            hint = 'Use ''user'' (the user is the data source, the default) or ''contact'' (reversed).';
    end if;
    lock table usersync.config_lock in share mode;
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
        select * into m from usersync.modules where module = 'users';
        execute pg_catalog.format('select exists (select from %s u where u.%I = $1)', m.relation, m.key_column)
          into found_user using set_sync_source.user_id;
        if not found_user then
            raise exception using errcode = 'US006',
                message = pg_catalog.format('user %s does not exist', set_sync_source.user_id),
                hint = pg_catalog.format('Pass the id of an existing user of %s.', m.relation);
        end if;
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
-- CHECK: _preview_violation) when the run writes it: when one of its fields differs, or always
-- when a mapped field's type differs (the engine then rewrites every pair, see
-- usersync._gen_contact_same). Only where a table has such constraints on what the engine
-- writes: at level 0 the query reads the pairs a second time for them ("broken"), at levels 1
-- and 2 they are one more row of each pair, tried only when its values all converted.
create or replace function usersync._preview_sql(p_level integer, p_examples integer)
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
    c_any_retyped boolean := false;
    c_differs text[] := '{}';
    c_check text;
    u_rows text[] := '{}';  -- per mapped user field, likewise (reversed pairs)
    u_tries text := '';
    u_ok text[] := '{}';
    u_written jsonb := '{}';
    u_any_retyped boolean := false;
    u_differs text[] := '{}';
    u_check text;
    probe text;
    pair_from text;
    broken text[] := '{}';
begin
    select * into mu from usersync.modules where module = 'users';
    select * into mc from usersync.modules where module = 'contacts';

    for f in select cf.field as contact_field, cf.data_type, cf.data_type <> cf.user_data_type as retyped, cf.user_field
               from usersync._gen_contact_fields() cf
              order by cf.position loop
        img := case when f.user_field is null then 'null'
                    when not f.retyped then pg_catalog.format('u.%I', f.user_field)
                    else usersync._preview_image(true, 'u', f.user_field, f.contact_field) end;
        dif := usersync._preview_differs(mc.relation, f.contact_field, pg_catalog.format('c.%I', f.contact_field), img);
        c_written := c_written || pg_catalog.jsonb_build_object(
            f.contact_field, case when f.user_field is null then pg_catalog.format('cast(null as %s)', f.data_type) else img end);
        c_any_retyped := c_any_retyped or coalesce(f.retyped, false);
        c_differs := c_differs || dif;
        if careful and f.retyped then
            n := n + 1;
            probe := usersync._preview_image(true, 'v', f.user_field, f.contact_field);
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
               join usersync.metadata_fields uf on uf.module = 'users' and uf.field = m.user_field
               join usersync.metadata_fields cf on cf.module = 'contacts' and cf.field = m.contact_field
              order by uf.position loop
        img := case when not f.retyped then pg_catalog.format('c.%I', f.contact_field)
                    else usersync._preview_image(false, 'c', f.user_field, f.contact_field) end;
        dif := usersync._preview_differs(mu.relation, f.user_field, pg_catalog.format('u.%I', f.user_field), img);
        u_written := u_written || pg_catalog.jsonb_build_object(f.user_field, img);
        u_any_retyped := u_any_retyped or f.retyped;
        u_differs := u_differs || dif;
        if careful and f.retyped then
            n := n + 1;
            probe := usersync._preview_image(false, 'v', f.user_field, f.contact_field);
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
                                     case when c_any_retyped then 'true'
                                          when pg_catalog.cardinality(c_differs) = 0 then 'false'
                                          else '(' || pg_catalog.array_to_string(c_differs, ' or ') || ')' end,
                                     c_check);
    end if;
    if pg_catalog.cardinality(u_rows) > 0 then
        u_check := usersync._preview_violation(mu.relation, 'u', u_written, p_level >= 2);
    end if;
    if u_check is not null then
        u_check := pg_catalog.format('case when %s then %s end',
                                     case when u_any_retyped then 'true'
                                          when pg_catalog.cardinality(u_differs) = 0 then 'false'
                                          else '(' || pg_catalog.array_to_string(u_differs, ' or ') || ')' end,
                                     u_check);
    end if;
    pair_from := pg_catalog.format('usersync.links l join %s u on u.%I = l.user_id join %s c on c.%I = l.contact_id',
                                   mu.relation, mu.key_column, mc.relation, mc.key_column);
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
             else 'select null::pg_catalog.int8, null::pg_catalog.int8, null::pg_catalog.text,'
                  ' null::pg_catalog.text, null::pg_catalog.text, null::pg_catalog.bool,'
                  ' null::pg_catalog.jsonb where false' end,
        case when careful or pg_catalog.cardinality(broken) > 0
             then 'and not exists (select from failed y where y.user_id = d.user_id)' else '' end,
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
    q := usersync._preview_sql(0, examples);
    begin
        execute q into pairs, would_change, would_fail, stale, changes;
    exception when data_exception or integrity_constraint_violation then
        -- Some value does not fit its target field: the run would record that pair in
        -- usersync.sync_errors and go on. Count and show such pairs instead of failing.
        begin
            execute usersync._preview_sql(1, examples) into pairs, would_change, would_fail, stale, changes;
        exception when data_exception or integrity_constraint_violation then
            -- A CHECK of a target table raises on some new row: the run records that pair too.
            execute usersync._preview_sql(2, examples) into pairs, would_change, would_fail, stale, changes;
        end;
    end;
    return next;
end
$$;
comment on function usersync.preview_resync(integer) is
    'Dry run of resync_all: pairs, how many would change, how many would fail (and why), how many are stale, and a few example field changes';
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
set quote_all_identifiers = off  -- format_type() is compared with what the generator recorded
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
        -- The engine's policy, as usersync._attach() made it (missing only while installing).
        if exists (select from pg_catalog.pg_policy p where p.polrelid = m.relation and p.polname = 'usersync_engine'
                      and not (p.polpermissive and p.polcmd = '*'
                               and p.polroles = array[(select r.oid from pg_catalog.pg_roles r
                                                        where r.rolname = 'usersync_engine')]::pg_catalog.oid[]
                               and pg_catalog.pg_get_expr(p.polqual, p.polrelid) = 'true'
                               and pg_catalog.pg_get_expr(p.polwithcheck, p.polrelid) = 'true'))
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
                hint = 'Uninstall usersync first: usersync uninstall.';
        end if;
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
    if exists (select from pg_catalog.pg_event_trigger_dropped_objects() d
                where d.object_type in ('trigger', 'index', 'table constraint', 'policy')) then
        perform usersync._check_dependencies(
            p_missing_triggers_allowed => coalesce(pg_catalog.current_setting('usersync.ddl_by_superuser', true), '')
                                          = 'true');
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
    select mo.relation from usersync.modules mo where mo.relation = pg_catalog.pg_event_trigger_table_rewrite_oid();
end
$$;

-- After a module table was rewritten: its keys and switches must still match the links (else
-- refused). Mapped values may have changed too: usersync._on_ddl_end then syncs every pair.
create or replace function usersync._check_rewrite()
returns void
language plpgsql
set search_path = pg_catalog, pg_temp
as $$
declare
    mu usersync.modules;
    mc usersync.modules;
    broken boolean;
begin
    select * into mu from usersync.modules where module = 'users';
    select * into mc from usersync.modules where module = 'contacts';
    execute pg_catalog.format(
        'select exists (select from usersync.links l where not exists (select from %1$s u where u.%2$I = l.user_id))'
        ' or exists (select from usersync.links l where not exists (select from %3$s c where c.%4$I = l.contact_id))'
        ' or exists (select from usersync.links l join %1$s u on u.%2$I = l.user_id where l.active <> u.%5$I)',
        mu.relation, mu.key_column, mc.relation, mc.key_column, mu.switch_column) into broken;
    if broken then
        raise exception using errcode = 'US005',
            message = 'this ALTER TABLE rewrote keys or switches of synchronized rows',
            detail = 'A rewrite changes stored values without firing triggers; the links would no longer match.',
            hint = 'Change keys and switches with UPDATE (keys of linked rows cannot change), not with ALTER ... USING.';
    end if;
end
$$;

create or replace function usersync._on_ddl_end()
returns event_trigger
language plpgsql
security definer
set search_path = pg_catalog, pg_temp
set quote_all_identifiers = off
as $$
declare
    rewritten boolean;
    retyped boolean;
begin
    -- Any table joining an inheritance or partition tree with a module (ATTACH PARTITION and
    -- INHERIT name the parent, which is not a module).
    if exists (select from pg_catalog.pg_inherits i join usersync.modules mo on mo.relation in (i.inhrelid, i.inhparent)) then
        perform usersync._check_dependencies(p_missing_triggers_allowed => true);
    end if;
    -- A command on a module table, on an index, trigger, rule or policy of one, or on its schema.
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
                          end
                       or (c.classid = 'pg_catalog.pg_namespace'::pg_catalog.regclass
                           and c.objid = (select r.relnamespace from pg_catalog.pg_class r where r.oid = mo.relation))
                       or (c.classid = 'pg_catalog.pg_type'::pg_catalog.regclass
                           and exists (select from pg_catalog.pg_attribute a
                                        where a.attrelid = mo.relation and a.attnum > 0 and a.atttypid = c.objid))) then
        return;
    end if;
    -- ALTER TYPE of a column's type (an enum value renamed): stored values read differently now.
    retyped := exists (select from pg_catalog.pg_event_trigger_ddl_commands() c
                        where c.classid = 'pg_catalog.pg_type'::pg_catalog.regclass);
    with done as (delete from usersync.rewrites w where w.xid = pg_catalog.pg_current_xact_id() returning 1)
    select exists (select from done) into rewritten;
    -- A missing engine trigger is the drop guard's business (a superuser may drop one); here
    -- triggers are being created, possibly one by one by usersync._attach().
    perform usersync._check_dependencies(p_missing_triggers_allowed => true);
    perform usersync._lock_config_exclusive();
    if rewritten then
        perform usersync._check_rewrite();
    end if;
    if rewritten or retyped then
        perform usersync._generate();
        perform usersync._g_sync_users(null);  -- values changed behind the triggers
        return;
    end if;
    perform usersync._generate();
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

drop event trigger if exists usersync_guard_drop;
create event trigger usersync_guard_drop on sql_drop
    execute function usersync._on_sql_drop();

drop event trigger if exists usersync_guard_drop_start;
create event trigger usersync_guard_drop_start on ddl_command_start
    execute function usersync._on_ddl_start();

drop event trigger if exists usersync_guard_rewrite;
create event trigger usersync_guard_rewrite on table_rewrite
    execute function usersync._on_table_rewrite();

drop event trigger if exists usersync_guard_alter;
-- No tag filter: ALTER VIEW / MATERIALIZED VIEW / FOREIGN TABLE ... RENAME COLUMN work on a
-- plain table too, and ALTER TYPE changes what stored values read as. The function tells which
-- commands concern a module.
create event trigger usersync_guard_alter on ddl_command_end
    execute function usersync._on_ddl_end();

drop event trigger if exists usersync_guard_engine;
create event trigger usersync_guard_engine on ddl_command_end
    execute function usersync._on_engine_ddl();
-- 90_install.sql: ownership, grants, the triggers on the modules, and the first generation.
-- Safe to run again: it changes nothing that is already as it should be, and keeps the
-- administrators' mapping and settings.

-- Attach the engine's triggers (usersync._engine_triggers()) to the module tables named in
-- usersync.modules, with the policy and grants the engine needs there. Existing
-- triggers with the right definition are left alone (the DDL guard refuses to drop them for
-- anyone but a superuser).
create or replace function usersync._attach()
returns void
language plpgsql
set search_path = pg_catalog, pg_temp
as $$
declare
    t record;
    seq text;
    existing text;
    wanted text;
begin
    for t in select et.name, mo.relation,
                    pg_catalog.format(et.def, mo.relation)
                    || ' when (current_user <> ''usersync_engine'') execute function ' || et.fn as def
               from usersync._engine_triggers() et join usersync.modules mo on mo.module = et.module loop
        wanted := pg_catalog.format('create trigger %I ', t.name) || t.def;
        select pg_catalog.pg_get_triggerdef(tg.oid) into existing
          from pg_catalog.pg_trigger tg where tg.tgrelid = t.relation and tg.tgname = t.name;
        if existing is not null and lower(existing) = lower(wanted) then
            continue;
        end if;
        if existing is not null then
            execute pg_catalog.format('drop trigger %I on %s', t.name, t.relation);
        end if;
        execute wanted;
    end loop;

    for t in select mo.relation from usersync.modules mo loop
        execute pg_catalog.format('grant select, insert, update, delete on %s to usersync_engine', t.relation);
        -- Row-level security, when the application enables it (Supabase does on its tables), must
        -- not hide rows from the engine: this permissive policy lets it see and write every row,
        -- and applies to no other role. (A restrictive policy can still hide rows: the engine
        -- then fails with US007 instead of skipping them; see usersync._lost_write.)
        if not exists (select from pg_catalog.pg_policy p where p.polrelid = t.relation and p.polname = 'usersync_engine') then
            execute pg_catalog.format('create policy usersync_engine on %s as permissive for all to usersync_engine'
                                      ' using (true) with check (true)', t.relation);
        end if;
        seq := pg_catalog.pg_get_serial_sequence(t.relation::text,
                                                 (select mo.key_column from usersync.modules mo where mo.relation = t.relation));
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
-- Functions that run as their caller, event-trigger functions above all, belong to the installing
-- role and never to the engine (60_ddl_guard.sql explains why). Named here because an upgrade from
-- 0.1, where the engine owned them, keeps the owner through CREATE OR REPLACE.
alter function usersync._check_dependencies(boolean) owner to current_user;
alter function usersync._on_sql_drop() owner to current_user;
alter function usersync._on_ddl_end() owner to current_user;
alter function usersync._on_ddl_start() owner to current_user;
alter function usersync._on_table_rewrite() owner to current_user;
alter function usersync._on_engine_ddl() owner to current_user;
alter function usersync._check_rewrite() owner to current_user;

grant select on usersync.modules, usersync.settings, usersync.field_mapping, usersync.mapping_state to usersync_engine;
grant select, insert, update, delete on usersync.links, usersync.sync_errors, usersync.resync_state to usersync_engine;
grant insert, delete on usersync.field_mapping to usersync_engine;
grant update on usersync.mapping_state to usersync_engine;
-- LOCK TABLE ... SHARE/EXCLUSIVE needs UPDATE: the engine alone may take the configuration lock.
grant update on usersync.config_lock to usersync_engine;
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
        lock table usersync.config_lock in exclusive mode;
        -- Installs from before 0.2 recorded no mapping with the version: it is the current one.
        update usersync.mapping_state
           set mapping = (select coalesce(pg_catalog.jsonb_object_agg(m.user_field, m.contact_field), '{}')
                            from usersync.field_mapping m)
         where mapping is null;
        perform usersync._generate();
        perform usersync._attach();
    end if;
end
$$;
