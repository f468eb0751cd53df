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
