-- 20_catalog.sql: the engine's configuration and state, as tables with constraints.
--
-- attachments    one row per pair: which table is its Users module and which its Contacts
--                module, their keys and the switch (usersync.attach() fills it, 25_attach.sql)
-- settings       the two delete toggles, one row per pair
-- field_mapping  which user field fills which contact field, per pair (validated in 30_mapping.sql)
-- mapping_state  per pair, a version number bumped by every mapping change ("up to date" compares it)
-- links_<id>     per pair, one row per user that has (or had) a contact; active = the switch is on.
--                A table per pair, so that both keys keep their own types (a bigint, a uuid, a
--                text key) and the engine's joins stay index probes on them; usersync.links
--                shows them all, keys as text
-- sync_errors    per pair, the last failure of each pair of rows during "Update all synchronized users"
-- resync_state   per pair, the cursor of the current or last resync_all run, so a rerun resumes
-- config_lock    no rows: its table lock serializes configuration changes against sync actions
--
-- Nothing here refers to an application table by anything but a regclass: usersync owns its
-- schema only (docs/sql-api.md, "What usersync owns").

create table if not exists usersync.attachments (
    id            integer generated always as identity primary key,  -- names the pair's objects
    pair          text not null unique check (pair <> '' and pair = pg_catalog.btrim(pair)),
    users         regclass not null,
    contacts      regclass not null unique,  -- a contact row belongs to at most one user
    user_key      name not null,
    contact_key   name not null,
    switch_column name,                      -- NULL: every user is synchronized
    shared_key    boolean not null default false,
    attached_at   timestamptz not null default pg_catalog.now(),
    check (users <> contacts)
);
comment on table usersync.attachments is
    'The pairs of tables the engine keeps in step (usersync.attach / usersync.detach); see the view usersync.pairs';

-- The pair a statement means when it names none: the only one, or a clear error.
create or replace function usersync._only_pair()
returns text
language plpgsql
stable
set search_path = pg_catalog, pg_temp
as $$
declare
    names text[] := array(select a.pair from usersync.attachments a order by a.pair);
begin
    if pg_catalog.cardinality(names) = 1 then
        return names[1];
    end if;
    if pg_catalog.cardinality(names) = 0 then
        raise exception using errcode = 'US011', message = 'no pair attached',
            detail = 'usersync synchronizes pairs of tables attached with usersync.attach().',
            hint = 'Attach one: usersync attach USERS CONTACTS (or SELECT usersync.attach(''users'', ''contacts'')).';
    end if;
    raise exception using errcode = 'US011',
        message = pg_catalog.format('this database has %s pairs: name one (%s)', pg_catalog.cardinality(names),
                                    pg_catalog.array_to_string(names, ', ')),
        hint = 'Pass pair => ''NAME'' (usersync --pair NAME on the command line).';
end
$$;

-- The pair p_pair names (NULL: the only one), or a clear error.
create or replace function usersync._pair(p_pair text)
returns usersync.attachments
language plpgsql
stable
set search_path = pg_catalog, pg_temp
as $$
declare
    a usersync.attachments;
begin
    -- (not coalesce(p_pair, usersync._only_pair()) in the query: the planner may call a stable
    -- function while estimating, and _only_pair fails where several pairs exist)
    if p_pair is null then
        p_pair := usersync._only_pair();
    end if;
    select * into a from usersync.attachments x where x.pair = p_pair;
    if not found then
        raise exception using errcode = 'US011', message = pg_catalog.format('no pair named %L', p_pair),
            hint = pg_catalog.format('Attached pairs: %s.',
                                     coalesce((select pg_catalog.string_agg(x.pair, ', ' order by x.pair)
                                                 from usersync.attachments x), 'none'));
    end if;
    return a;
end
$$;

create table if not exists usersync.settings (
    pair                     text primary key default usersync._only_pair()
                                  references usersync.attachments (pair) on delete cascade,
    delete_contact_with_user boolean not null default false,
    delete_user_with_contact boolean not null default false
);
comment on table usersync.settings is 'Delete behaviour; one row per pair, changed with UPDATE';
comment on column usersync.settings.delete_contact_with_user is 'Delete contact when user is deleted';
comment on column usersync.settings.delete_user_with_contact is 'Delete user when contact is deleted (reversed pairs)';

create table if not exists usersync.field_mapping (
    user_field    text not null,
    contact_field text not null,
    -- Last, and omitted in an INSERT, the pair is the database's only one: the statements of
    -- usersync 0.1 (INSERT INTO usersync.field_mapping VALUES ('login', 'notes')) keep working.
    pair          text not null default usersync._only_pair()
                       references usersync.attachments (pair) on delete cascade,
    primary key (pair, user_field),
    unique (pair, contact_field)
);
comment on table usersync.field_mapping is
    'One row per mapped pair of fields; edit with INSERT/UPDATE/DELETE; usersync.reset_field_mapping() restores the default';

create table if not exists usersync.mapping_state (
    pair        text primary key references usersync.attachments (pair) on delete cascade,
    version     bigint not null default 1,
    changed_at  timestamptz not null default pg_catalog.now(),
    field_types jsonb not null default '{}',  -- mapped fields' types at the last generation (60_ddl_guard.sql)
    -- The version that every pair is known to be on: set when a resync run finishes with no failure.
    -- While it lags behind version, stale pairs may exist and writes stamp the pairs they rewrite;
    -- once equal, that check costs nothing (no index on links.mapping_version is needed).
    synced_version bigint not null default 0,
    -- The mapping the current version stands for: a statement that leaves the mapping as it was
    -- (setting a field to the target it already has) is no change and bumps nothing.
    mapping     jsonb,
    -- The version of the last resync run that finished, failures or not. Such a run went past
    -- every pair without stamping their links (a third of its time): a pair whose link is older
    -- is up to date through the run, unless the run marked it failed (links.mapping_version 0).
    -- See usersync._rebuild_views and resync_step.
    covered_version bigint not null default 0
);

create table if not exists usersync.sync_errors (
    pair        text not null references usersync.attachments (pair) on delete cascade,
    user_id     text not null,  -- keys as text: pairs have keys of different types
    contact_id  text,
    field       text,
    sqlstate    text not null,
    message     text not null,
    occurred_at timestamptz not null default pg_catalog.now(),
    primary key (pair, user_id)
);
comment on table usersync.sync_errors is
    'Pairs that failed during resync_all, with the reason; a row is cleared when its pair next syncs';

create table if not exists usersync.resync_state (
    pair            text primary key references usersync.attachments (pair) on delete cascade,
    started_at      timestamptz not null,
    finished_at     timestamptz,
    mapping_version bigint not null,
    after_user_id   text,   -- the last user key done, as text (read back in the key's type)
    total           bigint not null,
    synced          bigint not null default 0,  -- pairs brought up to date
    changed         bigint not null default 0,  -- of which a target row was rewritten
    failed          bigint not null default 0,
    -- The session running the current run: a second run beside it is refused (US009) while that
    -- session lives; an interrupted run (its session gone) is resumed by whoever runs next.
    owner_pid       integer
);
comment on table usersync.resync_state is 'Progress of the current (finished_at is null) or last resync_all run of each pair';

-- Configuration changes (mapping edits, regeneration) and set_sync_source lock this table
-- EXCLUSIVE; sync_users and resync_step lock it SHARE, so no batch ever runs half on an old
-- mapping, nor reads a pair's direction that a reversal changes under it.
-- A table lock rather than an advisory lock: any role may take any advisory lock and so stall
-- the engine, while LOCK TABLE in these modes needs UPDATE on the table, which only the engine has.
create table if not exists usersync.config_lock ();
comment on table usersync.config_lock is 'Empty; its table lock serializes configuration changes (only the engine may take it)';

-- Whether one of these sessions waits, directly or through others, for a lock this transaction
-- holds. The engine's waits that PostgreSQL cannot see (a sleep between polls, not a place in a
-- lock queue) ask it before each sleep, and end such a cycle with 40P01 as PostgreSQL would.
create or replace function usersync._waits_for_me(p_pids integer[])
returns boolean
language sql
volatile
set search_path = pg_catalog, pg_temp
as $$
    with recursive w(pid) as (
        select x.pid from pg_catalog.unnest(p_pids) x(pid) where x.pid <> pg_catalog.pg_backend_pid()
        union
        select b.pid from w, pg_catalog.unnest(pg_catalog.pg_blocking_pids(w.pid)) b(pid))
    select exists (select from w where w.pid = pg_catalog.pg_backend_pid())
$$;

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
            -- (we are sleeping, not queued): break it as PostgreSQL would. Through other sessions
            -- too: a sync waiting for an application's row, the application for this change's
            -- table lock (ALTER TABLE holds it while the DDL guard gets here).
            if usersync._waits_for_me(array(select l.pid from pg_catalog.pg_locks l
                                             where l.relation = 'usersync.config_lock'::pg_catalog.regclass
                                               and l.granted)) then
                raise exception using errcode = 'deadlock_detected',
                    message = 'usersync: deadlock between a configuration change and a running synchronization',
                    detail = 'A session holding the configuration lock waits, directly or through others, for a lock this transaction holds.',
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

-- The tables of every pair, one row per role (the shape of usersync 0.1's modules table, with the pair).
create or replace view usersync.modules as
select a.pair, 'users'::text as module, a.users as relation, a.user_key as key_column, a.switch_column, a.id as pair_id
  from usersync.attachments a
union all
select a.pair, 'contacts', a.contacts, a.contact_key, null::name, a.id
  from usersync.attachments a;
comment on view usersync.modules is 'The tables of every pair; key and switch columns are not metadata fields';

-- Does a foreign key from a pair's contacts to its users restrict deleting a user?
create or replace function usersync._fk_restricts(p_id integer)
returns boolean language sql stable set search_path = pg_catalog, pg_temp as $$
    select exists (select from usersync.attachments a join pg_catalog.pg_constraint k
                     on k.conrelid = a.contacts and k.confrelid = a.users and k.contype = 'f'
                    where a.id = p_id and k.confdeltype in ('r', 'a'))
$$;

-- The engine's triggers on a pair's tables, recognised by the function they call (a trigger keeps
-- its function when renamed), with the name and definition usersync._attach_triggers() gives
-- them (the DDL guard and the generator use this list too). Names carry the pair's id, so two
-- pairs sharing a users table never collide.
create or replace function usersync._engine_triggers(p_id integer)
returns table (module text, name text, fn text, def text, cond text)
language sql stable set search_path = pg_catalog, pg_temp as $$
    select t.module, 'usersync_' || p_id || '_' || t.name, 'usersync._g' || p_id || '_' || t.fn || '()', t.def,
           null::text
      from (values ('users', 'after_insert', 'on_users_insert',
                    'after insert on %s referencing new table as new_rows for each statement'),
                   -- A row trigger with the transition tables: one row is synced on its own, a statement
                   -- of many rows set-based by one of its calls (see the template).
                   ('users', 'after_update', 'on_users_update',
                    'after update on %s referencing old table as old_rows new table as new_rows for each row'),
                   ('users', 'after_delete', 'on_users_delete',
                    'after delete on %s referencing old table as old_rows for each statement'),
                   ('users', 'before_truncate', 'on_users_truncate',
                    'before truncate on %s for each statement'),
                   -- Contacts: row triggers that the engine's own writes skip (WHEN is checked before the
                   -- function is even called), so syncing a million contacts pays nothing for them.
                   ('contacts', 'after_update', 'on_contact_update',
                    'after update on %s for each row'),
                   ('contacts', 'before_delete', 'on_contact_delete_before',
                    'before delete on %s for each row'),
                   ('contacts', 'after_delete', 'on_contact_delete_after',
                    'after delete on %s for each row'),
                   ('contacts', 'before_truncate', 'on_contacts_truncate',
                    'before truncate on %s for each statement')) t(module, name, fn, def)
    union all
    -- Only where a foreign key from the contacts restricts deleting a user (ON DELETE RESTRICT or
    -- NO ACTION): its check runs before any AFTER trigger, so delete_contact_with_user must
    -- delete the contact before the user goes. A row trigger, so no other table pays for it.
    select 'users', 'usersync_' || p_id || '_before_delete', 'usersync._g' || p_id || '_on_users_delete_before()',
           'before delete on %s for each row', null
     where usersync._fk_restricts(p_id)
    union all
    -- A user's key must not change while it is linked. A row trigger whose WHEN lets only such
    -- rows through, so the update trigger above need not compare the old rows with the new ones
    -- on every UPDATE (not UPDATE OF: a BEFORE trigger can change a key the SET list does
    -- not name).
    select 'users', 'usersync_' || p_id || '_after_rekey', 'usersync._g' || p_id || '_on_users_rekey()',
           'after update on %s for each row', pg_catalog.format('old.%1$I is distinct from new.%1$I', a.user_key)
      from usersync.attachments a where a.id = p_id
$$;


-- The links table of a pair, and the type of each key as the engine writes it (qualified).
create or replace function usersync._links_table(p_id integer)
returns text language sql immutable set search_path = pg_catalog, pg_temp as $$
    select 'usersync.' || pg_catalog.quote_ident('links_' || p_id)
$$;

create or replace function usersync._key_type(p_rel regclass, p_col name)
returns text language sql stable set search_path = pg_catalog, pg_temp as $$
    select pg_catalog.format('%I.%I', n.nspname, t.typname)
      from pg_catalog.pg_attribute a
      join pg_catalog.pg_type t on t.oid = a.atttypid
      join pg_catalog.pg_namespace n on n.oid = t.typnamespace
     where a.attrelid = p_rel and a.attname = p_col and not a.attisdropped
$$;
