-- 0007 (before the definition): a resync run no longer stamps every link it goes past; the
-- mapping state records the version of the last run that finished (covered_version), and each
-- pair's refresh takes whether to stamp. Only objects of usersync's schema: the refresh of the
-- old signature goes (the definition generates the new one, and a call with one argument would
-- otherwise be ambiguous between the two).
-- A link that a run in progress on the current mapping went past without stamping gets the
-- failure mark 0, or it would count as gone past: 0006 stamped each pair it synced, so it is a
-- pair the run failed (in sync_errors) or did not see (a link a transaction still open under the
-- mapping before made), and it stays stale, as in 0006. No other link needs it for its
-- up_to_date: with covered_version 0, no finished run covers anything yet.
-- A pair in sync_errors gets the mark too, as a failing run now gives it (status counts failed
-- pairs by it), unless its link was stamped with the mapping since: then it synced after it
-- failed (0006 left the row behind when its user's write synced it), and the row goes; so does
-- the row of a pair that ended (its user switched off, or deleted behind the triggers' back: 0006
-- left those too). Keys in
-- sync_errors are ISO text written under resync_step's pinned settings: read back in the key's
-- type, they are the same keys under any settings.
alter table usersync.mapping_state add column if not exists covered_version bigint not null default 0;
do $before$
declare
    a record;
    links text;
    ukt text;
begin
    for a in select x.id, x.pair, x.users, x.user_key from usersync.attachments x loop
        links := usersync._links_table(a.id);
        ukt := usersync._key_type(a.users, a.user_key);
        execute pg_catalog.format('drop function if exists usersync.%I(%s[])', '_g' || a.id || '_refresh', ukt);
        execute pg_catalog.format(
            'update %s l set mapping_version = 0'
            '  from usersync.resync_state r, usersync.mapping_state s'
            ' where r.pair = %L and s.pair = %L and r.finished_at is null and r.mapping_version = s.version'
            '   and l.active and l.mapping_version <> s.version and l.user_id <= r.after_user_id::%s',
            links, a.pair, a.pair, ukt);
        execute pg_catalog.format(
            'delete from usersync.sync_errors e using %s l, usersync.mapping_state s'
            ' where e.pair = %L and s.pair = %L and l.user_id = e.user_id::%s and l.mapping_version = s.version',
            links, a.pair, a.pair, ukt);
        execute pg_catalog.format(
            'delete from usersync.sync_errors e where e.pair = %L'
            '   and not exists (select from %s l where l.user_id = e.user_id::%s and l.active)',
            a.pair, links, ukt);
        execute pg_catalog.format(
            'update %s l set mapping_version = 0 from usersync.sync_errors e'
            ' where e.pair = %L and l.user_id = e.user_id::%s',
            links, a.pair, ukt);
    end loop;
    -- A run in progress starts over, as on a mapping change, so that 0007's first batch waits
    -- for the transactions still open (usersync._await_writers): a link one of them made under
    -- the mapping before, invisible above and behind the cursor once it commits, would otherwise
    -- count as gone past. (0006 did not wait; the links the run stamped stay up to date.)
    update usersync.resync_state r set mapping_version = 0
      from usersync.mapping_state s
     where r.pair = s.pair and r.finished_at is null and r.mapping_version = s.version;
end
$before$;
-- 00_schema.sql: the usersync schema and the roles the engine relies on.
--
-- usersync_engine  NOLOGIN; owns the engine's functions. Inside them current_user is
--                  usersync_engine, and that (not a session setting any role could forge)
--                  is how the guards recognise the engine's own writes.
-- usersync_admin   NOLOGIN; grant it to the people and scripts that administer the sync
--                  (mapping, settings, sync actions). See docs/sql-api.md.
-- Roles are cluster-wide, so they are created only when missing and never dropped here.
--
-- The installer is a superuser, or (on a managed server: RDS, Cloud SQL, Azure, Supabase, Neon)
-- the database's owner with CREATEROLE. Such an installer makes itself a member of
-- usersync_engine, which it needs to give the engine its functions (ALTER ... OWNER TO); on
-- PostgreSQL 16 and later it may only grant roles it has ADMIN OPTION on, which it has on the
-- roles it created. docs/install.md lists the privileges and the GRANTs.

do $$
declare
    me text := current_user;
    super boolean := (select r.rolsuper from pg_catalog.pg_roles r where r.rolname = current_user);
begin
    if not super and not (select r.rolcreaterole from pg_catalog.pg_roles r where r.rolname = current_user)
       and not (exists (select from pg_catalog.pg_roles where rolname = 'usersync_engine')
                and exists (select from pg_catalog.pg_roles where rolname = 'usersync_admin')) then
        raise exception using errcode = 'insufficient_privilege',
            message = pg_catalog.format('installing usersync needs a superuser or a role with CREATEROLE; %s has neither', me),
            detail = 'The install creates the roles usersync_engine and usersync_admin when they are missing.',
            hint = 'Install as a superuser, or as the database owner with CREATEROLE (docs/install.md).';
    end if;
    if not exists (select from pg_catalog.pg_roles where rolname = 'usersync_engine') then
        create role usersync_engine nologin;
    end if;
    if not exists (select from pg_catalog.pg_roles where rolname = 'usersync_admin') then
        create role usersync_admin nologin;
    end if;
    -- (16+: the creator of a role holds it WITH ADMIN but may not SET ROLE to it until it grants
    -- itself that; 15 has no such option and asks for membership)
    if not super and not pg_catalog.pg_has_role(me, 'usersync_engine',
                                                 case when pg_catalog.current_setting('server_version_num')::integer >= 160000
                                                      then 'SET' else 'MEMBER' end) then
        begin
            execute pg_catalog.format('grant usersync_engine to %I', me);
        exception when insufficient_privilege then
            raise exception using errcode = 'insufficient_privilege',
                message = pg_catalog.format('%s cannot install usersync: it is not a member of usersync_engine and '
                                            'cannot make itself one', me),
                detail = 'The role usersync_engine already exists (another database''s install made it) and this '
                         'role has no ADMIN OPTION on it.',
                hint = pg_catalog.format('Have a superuser or that role''s admin run: GRANT usersync_engine, '
                                         'usersync_admin TO %I WITH ADMIN OPTION', me);
        end;
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
-- 25_pairs.sql: attaching the engine to the application's tables, and detaching it.
--
-- usersync.attach(users, contacts, switch_column, shared_key, pair)  one verb, like supa_audit's
--     enable_tracking(regclass): checks both tables, records the pair, creates its links table,
--     generates its functions, puts its triggers and policy on the tables, maps same-named
--     fields, and synchronizes the users whose switch is already on, in one transaction.
-- usersync.attach_preview(...)  the same checks and what attach would create and link, writing nothing.
-- usersync.detach(pair)          removes the pair's triggers, policy, grants, generated code and
--     state; keeps both tables and every row.
--
-- attach and detach run as their caller (SECURITY INVOKER): creating triggers and policies on a
-- table is its owner's right, so the caller must own both tables (or be a superuser) and own the
-- usersync schema (the role that installed it). Nothing here ever alters a column or a row of an
-- application table: attach adds triggers, a policy and grants, and the rows sync creates.

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

-- A table's candidate fields (not the key, the switch, generated or dropped columns).
create or replace function usersync._table_fields(p_rel regclass, p_key name, p_switch name)
returns table (field text, data_type text, label text, "position" smallint, not_null boolean, has_default boolean)
language sql stable set search_path = pg_catalog, pg_temp as $$
    select a.attname::text,
           pg_catalog.format_type(a.atttypid, a.atttypmod),
           coalesce(pg_catalog.col_description(a.attrelid, a.attnum), a.attname::text),
           a.attnum,
           a.attnotnull,
           a.atthasdef or a.attidentity <> ''
      from pg_catalog.pg_attribute a
     where a.attrelid = p_rel and a.attnum > 0 and not a.attisdropped and a.attgenerated = ''
       and a.attname <> p_key and a.attname is distinct from p_switch
$$;

create or replace view usersync.metadata_fields as
select m.pair, m.module, f.field, f.data_type, f.label, f.position, f.not_null, f.has_default
  from usersync.modules m
 cross join lateral usersync._table_fields(m.relation, m.key_column, m.switch_column) f;
comment on view usersync.metadata_fields is 'The live catalog of the metadata fields of every pair''s tables';
comment on column usersync.metadata_fields.not_null is 'NOT NULL: unmapped, the field gets its default (or, without one, a sync fails)';

-- The key of a table: its primary key, else its only single-column unique NOT NULL key.
create or replace function usersync._table_key(p_rel regclass, p_role text)
returns name
language plpgsql stable set search_path = pg_catalog, pg_temp as $$
declare
    k record;
    candidates name[];
begin
    select i.indnkeyatts, a.attname into k
      from pg_catalog.pg_index i
      left join pg_catalog.pg_attribute a on a.attrelid = i.indrelid and a.attnum = i.indkey[0]
     where i.indrelid = p_rel and i.indisprimary;
    if found and k.indnkeyatts = 1 and k.attname is not null then
        return k.attname;
    end if;
    if found then
        raise exception using errcode = 'US010',
            message = pg_catalog.format('cannot attach %s: its primary key has %s columns', p_rel, k.indnkeyatts),
            detail = pg_catalog.format('usersync pairs rows by a single-column key of the %s table.', p_role),
            hint = 'Add a single-column unique key (e.g. an identity column) and make it the primary key.';
    end if;
    candidates := array(select a.attname
                          from pg_catalog.pg_index i
                          join pg_catalog.pg_attribute a on a.attrelid = i.indrelid and a.attnum = i.indkey[0]
                         where i.indrelid = p_rel and i.indisunique and i.indimmediate and i.indnkeyatts = 1
                           and i.indpred is null and i.indexprs is null and a.attnotnull
                         order by a.attnum);
    if pg_catalog.cardinality(candidates) = 1 then
        return candidates[1];
    end if;
    raise exception using errcode = 'US010',
        message = pg_catalog.format('cannot attach %s: it has %s', p_rel,
                                    case when pg_catalog.cardinality(candidates) = 0 then 'no key'
                                         else 'no primary key and several unique keys (' ||
                                              pg_catalog.array_to_string(candidates, ', ') || ')' end),
        detail = pg_catalog.format('usersync pairs rows by the primary key of the %s table, or by its only '
                                   'single-column unique NOT NULL key.', p_role),
        hint = pg_catalog.format('Give %s a primary key (ALTER TABLE ... ADD PRIMARY KEY).', p_rel);
end
$$;

-- The checks of attach, and the shape of the pair they allow. Raises US010 naming the table and
-- the column when a table cannot be attached; returns the keys and the pair's name.
create or replace function usersync._attach_check(p_users regclass, p_contacts regclass, p_switch name,
                                                  p_shared_key boolean, p_pair text)
returns table (pair text, user_key name, contact_key name)
language plpgsql stable set search_path = pg_catalog, pg_temp as $$
declare
    t record;
    uk name;
    ck name;
    name_ text;
    gen boolean;
begin
    if p_users is null or p_contacts is null or p_shared_key is null then
        raise exception using errcode = 'US010', message = 'attach needs a users table and a contacts table',
            hint = 'SELECT usersync.attach(''schema.users'', ''schema.contacts'')';
    end if;
    for t in select x.rel, x.role, c.relkind from (values (p_users, 'users'), (p_contacts, 'contacts')) x(rel, role)
               join pg_catalog.pg_class c on c.oid = x.rel loop
        if t.relkind = 'p' then
            raise exception using errcode = 'US010',
                message = pg_catalog.format('cannot attach %s: it is a partitioned table', t.rel),
                detail = 'usersync attaches to plain tables; writes through a partitioned table''s partitions would '
                         'bypass the triggers of its parent.',
                hint = 'Attach a plain table.';
        elsif t.relkind <> 'r' then
            raise exception using errcode = 'US010',
                message = pg_catalog.format('cannot attach %s: it is %s, not a table', t.rel,
                                            case t.relkind when 'v' then 'a view' when 'm' then 'a materialized view'
                                                           when 'f' then 'a foreign table' else 'not a table' end),
                hint = 'Attach the tables the application writes.';
        end if;
        if exists (select from pg_catalog.pg_inherits i where t.rel in (i.inhrelid, i.inhparent)) then
            raise exception using errcode = 'US010',
                message = pg_catalog.format('cannot attach %s: it is part of an inheritance tree', t.rel),
                detail = 'Writes through a parent or a child would bypass the triggers of the attached table.',
                hint = 'Attach a table that has no parent and no child.';
        end if;
        if exists (select from pg_catalog.pg_rewrite r where r.ev_class = t.rel and r.rulename <> '_RETURN') then
            raise exception using errcode = 'US010',
                message = pg_catalog.format('cannot attach %s: it has rules', t.rel),
                detail = 'A rule rewrites the engine''s own writes, which could then silently not happen.',
                hint = 'Replace the rules with triggers.';
        end if;
    end loop;
    if p_users = p_contacts then
        raise exception using errcode = 'US010', message = pg_catalog.format('cannot attach %s to itself', p_users),
            hint = 'A pair is a users table and a different contacts table.';
    end if;
    -- A table that is some pair's contacts table, or a new contacts table that is some pair's users.
    select a.pair, x.rel, case when x.rel = a.contacts then 'contacts' else 'users' end as role into t
      from usersync.attachments a, (values (p_users, 'users'), (p_contacts, 'contacts')) x(rel, wanted)
     where x.rel = a.contacts or (x.wanted = 'contacts' and x.rel = a.users)
     order by a.pair limit 1;
    if found then
        raise exception using errcode = 'US010',
            message = pg_catalog.format('cannot attach %s -> %s: %s is already the %s table of pair %L', p_users, p_contacts,
                                        t.rel, t.role, t.pair),
            detail = 'A contact row belongs to at most one user: a table is the contacts of one pair at most, and '
                     'never the users of one pair and the contacts of another.',
            hint = pg_catalog.format('Detach that pair first (SELECT usersync.detach(%L)), or attach other tables.', t.pair);
    end if;
    -- The engine's writes to a users table skip every pair's triggers: a users table feeding a
    -- reversed pair cannot feed another (usersync._set_sync_source refuses the converse).
    for t in select a.pair, a.id from usersync.attachments a where a.users = p_users loop
        execute pg_catalog.format('select exists (select from %s l where l.active and l.source = ''contact'')',
                                  usersync._links_table(t.id)) into gen;
        if gen then
            raise exception using errcode = 'US010',
                message = pg_catalog.format('cannot attach %s -> %s: pair %L of the same users table has reversed pairs',
                                            p_users, p_contacts, t.pair),
                detail = 'A contact that writes its user would leave the user''s contacts in the other pairs behind.',
                hint = pg_catalog.format('Restore their direction first (usersync.set_sync_source(..., ''user'', pair => %L)).', t.pair);
        end if;
    end loop;

    uk := usersync._table_key(p_users, 'users');
    ck := usersync._table_key(p_contacts, 'contacts');
    if p_switch is not null then
        if not exists (select from pg_catalog.pg_attribute a
                        where a.attrelid = p_users and a.attname = p_switch and a.attnum > 0 and not a.attisdropped) then
            raise exception using errcode = 'US010',
                message = pg_catalog.format('cannot attach %s: it has no column %I for the switch', p_users, p_switch),
                hint = 'Name a boolean NOT NULL column of the users table, or none (every user is then synchronized).';
        end if;
        if p_switch = uk or not exists (select from pg_catalog.pg_attribute a
                                         where a.attrelid = p_users and a.attname = p_switch and a.attnotnull
                                           and a.attgenerated = ''
                                           and a.atttypid = 'pg_catalog.bool'::pg_catalog.regtype) then
            raise exception using errcode = 'US010',
                message = pg_catalog.format('cannot attach %s: the switch %I must be a boolean NOT NULL column', p_users, p_switch),
                detail = 'A NULL switch is neither on nor off.',
                hint = pg_catalog.format('ALTER TABLE %s ALTER COLUMN %I SET NOT NULL (with a default such as false).',
                                         p_users, p_switch);
        end if;
    end if;
    if p_shared_key then
        if usersync._key_type(p_users, uk) <> usersync._key_type(p_contacts, ck)
           and not exists (select from pg_catalog.pg_cast k
                            where k.castsource = (select a.atttypid from pg_catalog.pg_attribute a
                                                   where a.attrelid = p_users and a.attname = uk)
                              and k.casttarget = (select a.atttypid from pg_catalog.pg_attribute a
                                                   where a.attrelid = p_contacts and a.attname = ck)
                              and k.castcontext in ('i', 'a')) then
            raise exception using errcode = 'US010',
                message = pg_catalog.format('cannot attach %s -> %s with a shared key: %s.%I (%s) cannot fill %s.%I (%s)',
                                            p_users, p_contacts, p_users, uk, usersync._key_type(p_users, uk),
                                            p_contacts, ck, usersync._key_type(p_contacts, ck)),
                hint = 'A shared key needs keys of the same type.';
        end if;
    else
        select a.attidentity <> '' or a.atthasdef into gen
          from pg_catalog.pg_attribute a where a.attrelid = p_contacts and a.attname = ck;
        if not gen then
            raise exception using errcode = 'US010',
                message = pg_catalog.format('cannot attach %s: its key %I is neither generated nor shared', p_contacts, ck),
                detail = 'usersync creates contacts, so it needs their key: an identity, a serial, a default such as '
                         'gen_random_uuid(), or the user''s own key.',
                hint = pg_catalog.format('Give %s.%I a default, or attach with shared_key => true (the contact''s key is '
                                         'then its user''s).', p_contacts, ck);
        end if;
    end if;
    name_ := coalesce(p_pair, (select c.relname from pg_catalog.pg_class c where c.oid = p_contacts));
    if name_ <> pg_catalog.btrim(name_) or name_ = '' then
        raise exception using errcode = 'US010', message = pg_catalog.format('invalid pair name %L', name_),
            hint = 'Name the pair with a non-empty name without leading or trailing spaces.';
    end if;
    if exists (select from usersync.attachments a where a.pair = name_) then
        raise exception using errcode = 'US010', message = pg_catalog.format('a pair named %L already exists', name_),
            hint = 'Name the new pair with pair => ''NAME''.';
    end if;
    return query select name_, uk, ck;
end
$$;

-- What the default mapping of two tables would be, before they are attached: every user field
-- with a same-named contact field it can fill (usersync.default_field_mapping, once attached).
create or replace function usersync._default_mapping_of(p_users regclass, p_user_key name, p_switch name,
                                                        p_contacts regclass, p_contact_key name)
returns table (user_field text, contact_field text)
language sql stable set search_path = pg_catalog, pg_temp as $$
    select u.field, c.field
      from usersync._table_fields(p_users, p_user_key, p_switch) u
      join usersync._table_fields(p_contacts, p_contact_key, null) c on c.field = u.field
     where usersync._assignable(p_users, u.field, p_contacts, c.field)
     order by u.position
$$;

-- What a DBA should know before attaching: foreign keys that decide deletes whatever the toggles
-- say, and contact fields that no sync can fill.
create or replace function usersync._attach_warnings(p_users regclass, p_user_key name, p_switch name,
                                                     p_contacts regclass, p_contact_key name)
returns setof text
language sql stable set search_path = pg_catalog, pg_temp as $$
    select pg_catalog.format(
               case k.confdeltype
                    when 'c' then 'foreign key %1$s on %2$s: deleting a user deletes its contact (ON DELETE CASCADE), '
                                  'whatever delete_contact_with_user says'
                    when 'n' then 'foreign key %1$s on %2$s: deleting a user sets the reference in its contact to NULL '
                                  '(ON DELETE SET NULL); delete_contact_with_user then decides whether the contact stays'
                    when 'd' then 'foreign key %1$s on %2$s: deleting a user sets the reference in its contact to its '
                                  'default (ON DELETE SET DEFAULT); delete_contact_with_user then decides whether the contact stays'
                    else 'foreign key %1$s on %2$s (ON DELETE RESTRICT / NO ACTION): with delete_contact_with_user '
                         'off (the default) a user whose contact is synchronized cannot be deleted while the contact '
                         'exists; with it on, the contact is deleted first' end,
               pg_catalog.quote_ident(k.conname), p_contacts)
      from pg_catalog.pg_constraint k
     where k.conrelid = p_contacts and k.confrelid = p_users and k.contype = 'f'
    union all
    select pg_catalog.format('contact field %I of %s is NOT NULL, has no default and no user field fills it: every '
                             'synchronization will fail until a user field is mapped to it or it gets a default',
                             c.field, p_contacts)
      from usersync._table_fields(p_contacts, p_contact_key, null) c
     where c.not_null and not c.has_default
       and not exists (select from usersync._default_mapping_of(p_users, p_user_key, p_switch, p_contacts, p_contact_key) d
                        where d.contact_field = c.field)
$$;

-- The rows attach and its preview count: users it would synchronize, contacts a shared key links,
-- and of those, contacts with values in the given (unmapped) fields. Read as the caller of
-- attach (the engine has no privilege on tables not attached yet), so code of the tables' owner
-- that reading runs (an index predicate, a policy) runs as that caller: docs/install.md says to
-- attach a distrusted owner's tables only after reviewing their code.
create or replace function usersync._attach_counts(p_users regclass, p_contacts regclass, p_user_key name,
                                                   p_contact_key name, p_switch name, p_shared_key boolean,
                                                   p_unmapped text[],
                                                   out to_sync bigint, out to_link bigint, out would_empty bigint)
language plpgsql
set search_path = pg_catalog, pg_temp
as $$
declare
    sw text := coalesce('u.' || pg_catalog.quote_ident(p_switch), 'true');
    filled text := (select pg_catalog.string_agg(pg_catalog.format('c.%I is not null', f), ' or ')
                      from pg_catalog.unnest(p_unmapped) f);
begin
    execute pg_catalog.format('select count(*) from %s u where %s', p_users, sw) into to_sync;
    to_link := 0;
    would_empty := 0;
    if p_shared_key then
        execute pg_catalog.format('select count(*), count(*) filter (where %s) from %s u join %s c on c.%I = u.%I where %s',
                                  coalesce(filled, 'false'), p_users, p_contacts, p_contact_key, p_user_key, sw)
           into to_link, would_empty;
    end if;
end
$$;

create or replace function usersync.attach_preview(users regclass, contacts regclass, switch_column name default null,
                                                   shared_key boolean default false, pair text default null)
returns table (pair_name text, user_key name, contact_key name, users_to_sync bigint, contacts_to_create bigint,
               contacts_to_link bigint, mapping jsonb, warnings text[])
language plpgsql stable set search_path = pg_catalog, pg_temp as $$
declare
    c record;
begin
    select * into c from usersync._attach_check(users, contacts, switch_column, shared_key, attach_preview.pair);
    select x.to_sync, x.to_link into users_to_sync, contacts_to_link
      from usersync._attach_counts(users, contacts, c.user_key, c.contact_key, switch_column, shared_key, '{}') x;
    contacts_to_create := users_to_sync - contacts_to_link;
    return query
    select c.pair, c.user_key, c.contact_key, users_to_sync, contacts_to_create, contacts_to_link,
           -- (an array of [user field, contact field], in the users table's column order)
           (select coalesce(pg_catalog.jsonb_agg(pg_catalog.jsonb_build_array(d.user_field, d.contact_field)), '[]')
              from usersync._default_mapping_of(users, c.user_key, switch_column, contacts, c.contact_key) d),
           array(select w from usersync._attach_warnings(users, c.user_key, switch_column, contacts, c.contact_key) w);
end
$$;
comment on function usersync.attach_preview(regclass, regclass, name, boolean, text) is
    'What usersync.attach would do with these arguments (the checks, the users it would sync, the contacts it would create or link, the default mapping, warnings), writing nothing';

-- The views over every pair's links table: rebuilt when a pair comes or goes. Keys are shown as
-- text (of the default collation: pairs' keys differ in type and collation).
-- synchronized_contacts decides up_to_date per pair, where the keys still have their own type: a
-- link stamped with the current mapping version, or one that a resync run on the current
-- mapping went past (a finished run: mapping_state.covered_version; the run in progress: its
-- cursor, read back in the key's type by usersync._resync_cursor) and did not mark failed
-- (mapping_version 0). The view reads the engine's state with its owner's rights, so a role
-- granted SELECT on it needs nothing else (docs/sql-api.md).
create or replace function usersync._rebuild_views()
returns void
language plpgsql
set search_path = pg_catalog, pg_temp
as $$
declare
    links_body text;
    contacts_body text;
begin
    links_body := coalesce((select pg_catalog.string_agg(pg_catalog.format(
                          'select %L::pg_catalog.text as pair, l.user_id::pg_catalog.text collate pg_catalog."default" as user_id,'
                          ' l.contact_id::pg_catalog.text collate pg_catalog."default" as contact_id, l.source, l.active,'
                          ' l.mapping_version, l.synced_at'
                          ' from %s l', a.pair, usersync._links_table(a.id)), ' union all ' order by a.id)
                        from usersync.attachments a),
                     'select null::pg_catalog.text as pair, null::pg_catalog.text as user_id, null::pg_catalog.text as contact_id,'
                     ' null::pg_catalog.text as source, null::pg_catalog.bool as active, null::pg_catalog.int8 as mapping_version,'
                     ' null::pg_catalog.timestamptz as synced_at where false');
    execute 'create or replace view usersync.links as ' || links_body;
    contacts_body := coalesce((select pg_catalog.string_agg(pg_catalog.format(
                          'select %1$L::pg_catalog.text as pair,'
                          ' l.contact_id::pg_catalog.text collate pg_catalog."default" as contact_id,'
                          ' l.user_id::pg_catalog.text collate pg_catalog."default" as user_id, l.source, l.synced_at,'
                          ' l.mapping_version = s.version'
                          '  or l.mapping_version > 0'
                          '     and (s.covered_version = s.version'
                          '          or coalesce(l.user_id <= (select usersync._resync_cursor(r.after_user_id, %3$L, null::%3$s)'
                          '                                      from usersync.resync_state r'
                          '                                     where r.pair = %1$L and r.mapping_version = s.version), false))'
                          '  as up_to_date'
                          ' from %2$s l join usersync.mapping_state s on s.pair = %1$L'
                          ' where l.active',
                          a.pair, usersync._links_table(a.id),
                          (select pg_catalog.format_type(x.atttypid, x.atttypmod) from pg_catalog.pg_attribute x
                            where x.attrelid = a.users and x.attname = a.user_key)),
                          ' union all ' order by a.id)
                        from usersync.attachments a),
                     'select null::pg_catalog.text as pair, null::pg_catalog.text as contact_id, null::pg_catalog.text as user_id,'
                     ' null::pg_catalog.text as source, null::pg_catalog.timestamptz as synced_at,'
                     ' null::pg_catalog.bool as up_to_date where false');
    execute 'create or replace view usersync.synchronized_contacts as ' || contacts_body;
end
$$;

-- Is the engine's policy on this table as usersync._attach_grants makes it (permissive, every
-- command, the engine alone, every row)? The DDL guard refuses any other; the generator counts
-- the engine's writes where it is not (usersync._gen_writes_can_vanish).
create or replace function usersync._engine_policy_as_made(p_rel regclass)
returns boolean language sql stable set search_path = pg_catalog, pg_temp as $$
    select exists (select from pg_catalog.pg_policy p
                    where p.polrelid = p_rel and p.polname = 'usersync_engine'
                      and p.polpermissive and p.polcmd = '*'
                      and p.polroles = array[(select r.oid from pg_catalog.pg_roles r
                                               where r.rolname = 'usersync_engine')]::pg_catalog.oid[]
                      and pg_catalog.pg_get_expr(p.polqual, p.polrelid) = 'true'
                      and pg_catalog.pg_get_expr(p.polwithcheck, p.polrelid) = 'true')
$$;

-- What the engine needs on a pair's tables: the schema, the rows, the key's sequence, and a policy.
create or replace function usersync._attach_grants(p_pair text)
returns void
language plpgsql
set search_path = pg_catalog, pg_temp
as $$
declare
    a usersync.attachments := usersync._pair(p_pair);
    t record;
    seq text;
begin
    -- Both schemas first: each statement below runs the DDL guard, which reads both tables.
    for t in select distinct c.relnamespace::pg_catalog.regnamespace as nsp
               from pg_catalog.pg_class c where c.oid in (a.users, a.contacts) loop
        execute pg_catalog.format('grant usage on schema %s to usersync_engine', t.nsp);
    end loop;
    for t in select x.rel, x.key from (values (a.users, a.user_key), (a.contacts, a.contact_key)) x(rel, key) loop
        execute pg_catalog.format('grant select, insert, update, delete on %s to usersync_engine', t.rel);
        -- Row-level security, when the application enables it (Supabase does on its tables), must
        -- not hide rows from the engine: this permissive policy lets it see and write every row,
        -- and applies to no other role. (A restrictive policy can still hide rows: the engine
        -- then fails with US007 instead of skipping them; see usersync._lost_write.)
        if not exists (select from pg_catalog.pg_policy p where p.polrelid = t.rel and p.polname = 'usersync_engine') then
            execute pg_catalog.format('create policy usersync_engine on %s as permissive for all to usersync_engine'
                                      ' using (true) with check (true)', t.rel);
        end if;
        seq := pg_catalog.pg_get_serial_sequence(t.rel::text, t.key);
        if seq is not null then
            execute pg_catalog.format('grant usage on sequence %s to usersync_engine', seq);
        end if;
    end loop;
end
$$;

-- The CREATE TRIGGER statement of one of the engine's triggers (usersync._engine_triggers), and
-- whether an existing trigger is that one (pg_get_triggerdef writes the WHEN clause with its
-- casts and parentheses). usersync.doctor() asks too: a trigger altered to never fire is no
-- engine trigger.
create or replace function usersync._trigger_statement(p_name text, p_def text, p_rel regclass, p_fn text,
                                                       p_cond text default null)
returns text language sql stable set search_path = pg_catalog, pg_temp as $$
    select pg_catalog.format('create trigger %I ', p_name) || pg_catalog.format(p_def, p_rel)
           || ' when (current_user <> ''usersync_engine''' || coalesce(' and (' || p_cond || ')', '')
           || ') execute function ' || p_fn
$$;

create or replace function usersync._trigger_is(p_trigger oid, p_statement text)
returns boolean language sql stable set search_path = pg_catalog, pg_temp as $$
    select pg_catalog.regexp_replace(lower(pg_catalog.pg_get_triggerdef(p_trigger)), '[()]|::name', '', 'g')
           = pg_catalog.regexp_replace(lower(p_statement), '[()]|::name', '', 'g')
$$;

-- A pair's engine triggers: each with the table it is on and the statement that creates it.
create or replace function usersync._pair_triggers(a usersync.attachments)
returns table (name text, rel regclass, fn text, statement text)
language sql stable set search_path = pg_catalog, pg_temp as $$
    select et.name, x.rel, et.fn, usersync._trigger_statement(et.name, et.def, x.rel, et.fn, et.cond)
      from usersync._engine_triggers(a.id) et
      join (values ('users', a.users), ('contacts', a.contacts)) x(module, rel) on x.module = et.module
$$;

-- The engine's triggers on a pair's tables. Existing triggers with the right definition are left
-- alone (the DDL guard refuses to drop them for anyone but a superuser).
create or replace function usersync._attach_triggers(p_pair text)
returns void
language plpgsql
set search_path = pg_catalog, pg_temp
as $$
declare
    a usersync.attachments := usersync._pair(p_pair);
    t record;
    existing oid;
begin
    for t in select * from usersync._pair_triggers(a) loop
        select tg.oid into existing from pg_catalog.pg_trigger tg where tg.tgrelid = t.rel and tg.tgname = t.name;
        if found and usersync._trigger_is(existing, t.statement) then
            continue;
        end if;
        if found then
            execute pg_catalog.format('drop trigger %I on %s', t.name, t.rel);
        end if;
        execute t.statement;
    end loop;
end
$$;

-- A key's column type for the links table: its type, qualified, and its collation (a text key's
-- comparisons then agree with the key's own).
create or replace function usersync._key_column(p_rel regclass, p_col name)
returns text language sql stable set search_path = pg_catalog, pg_temp as $$
    select usersync._key_type(p_rel, p_col)
           || coalesce(' collate ' || (select pg_catalog.format('%I.%I', ns.nspname, k.collname)
                                          from pg_catalog.pg_collation k join pg_catalog.pg_namespace ns on ns.oid = k.collnamespace
                                         where k.oid = x.attcollation and x.attcollation <> 0), '')
      from pg_catalog.pg_attribute x where x.attrelid = p_rel and x.attname = p_col
$$;

create or replace function usersync.attach(users regclass, contacts regclass, switch_column name default null,
                                           shared_key boolean default false, pair text default null)
returns text
language plpgsql
set search_path = pg_catalog, pg_temp
as $$
declare
    c record;
    a usersync.attachments;
    ukt text;
    ckt text;
    links text;
    w text;
    n bigint;
begin
    -- The lock first: a reversal checks for other pairs of its users table under it too.
    perform usersync._lock_config_exclusive();
    select * into c from usersync._attach_check(users, contacts, switch_column, shared_key, attach.pair);
    insert into usersync.attachments (pair, users, contacts, user_key, contact_key, switch_column, shared_key)
    values (c.pair, users, contacts, c.user_key, c.contact_key, switch_column, shared_key)
    returning * into a;
    insert into usersync.settings (pair) values (a.pair);
    insert into usersync.mapping_state (pair, mapping) values (a.pair, '{}');

    -- The pair's links, keyed in the keys' own types and collations.
    links := usersync._links_table(a.id);
    ukt := usersync._key_column(a.users, a.user_key);
    ckt := usersync._key_column(a.contacts, a.contact_key);
    execute pg_catalog.format(
        'create table %s ('
        ' user_id %s primary key,'
        ' contact_id %s not null unique,'
        ' source text not null default ''user'' check (source in (''user'', ''contact'')),'
        ' active boolean not null default true,'
        ' mapping_version bigint not null,'
        ' synced_at timestamptz not null default pg_catalog.now()'
        ') with (fillfactor = 70)', links, ukt, ckt);  -- room on each page: stamping a resynced pair is a HOT update
    -- Guards ask "is there any reversed pair at all?" before joining; this keeps that question O(1).
    execute pg_catalog.format('create index on %s (user_id) where active and source = ''contact''', links);
    execute pg_catalog.format('comment on table %s is %L', links,
                              pg_catalog.format('Links of pair %s (usersync.links shows every pair''s)', a.pair));
    execute pg_catalog.format('comment on column %s.synced_at is %L', links,
                              'Last full sync of the pair under the mapping version it records');
    execute pg_catalog.format('revoke all on %s from public', links);
    execute pg_catalog.format('grant select, insert, update, delete on %s to usersync_engine', links);
    execute pg_catalog.format('grant select on %s to usersync_admin', links);

    perform usersync._attach_grants(a.pair);
    perform usersync._generate(a.pair);
    perform usersync._attach_triggers(a.pair);
    perform usersync._rebuild_views();
    perform usersync.reset_field_mapping(a.pair);

    -- A shared key links the contacts that already have their user's key: their mapped fields
    -- then follow the user, and their unmapped fields are emptied (the article's rule). Refused
    -- where that would empty a value: attaching must not lose application data.
    if a.shared_key then
        select x.would_empty into n
          from usersync._attach_counts(a.users, a.contacts, a.user_key, a.contact_key, a.switch_column, true,
                                       array(select f.field from usersync._gen_contact_fields(a.pair) f
                                              where f.user_field is null)) x;
        begin
            if n > 0 then
                raise exception using errcode = 'US010',
                    message = pg_catalog.format('cannot attach %s -> %s: %s existing contact(s) have values in fields no '
                                                'user field is mapped to', a.users, a.contacts, n),
                    detail = 'Linking them would empty those fields (unmapped contact fields stay empty).',
                    hint = pg_catalog.format('Attach, then map those fields (usersync.field_mapping, pair %L), in one '
                                             'transaction; or give them defaults and NOT NULL.', a.pair);
            end if;
        end;
    end if;
    -- A contact field no sync can fill would make the first sync below fail, with a hint about a
    -- pair that the failure rolls back: refused here, with what to do instead.
    select f.field into w
      from usersync._gen_contact_fields(a.pair) f
      join usersync.metadata_fields m on m.pair = a.pair and m.module = 'contacts' and m.field = f.field
     where f.user_field is null and m.not_null and not m.has_default
     order by m.position limit 1;
    if found then
        select x.to_sync into n
          from usersync._attach_counts(a.users, a.contacts, a.user_key, a.contact_key, a.switch_column, false, '{}') x;
        if n > 0 then
            raise exception using errcode = 'US010',
                message = pg_catalog.format('cannot attach %s -> %s: contact field %I is NOT NULL, has no default and '
                                            'no user field of the same name fills it, and %s user(s) would be '
                                            'synchronized now', a.users, a.contacts, w, n),
                hint = pg_catalog.format('Give %s.%I a default (ALTER TABLE ... ALTER COLUMN %I SET DEFAULT ...), or '
                                         'a same-named user field; or attach while no user is synchronized and map a '
                                         'user field to it first.', a.contacts, w, w);
        end if;
    end if;
    for w in select x from usersync._attach_warnings(a.users, a.user_key, a.switch_column, a.contacts, a.contact_key) x loop
        raise warning 'usersync: %', w;
    end loop;
    -- Users whose switch is already on get their contact now.
    perform usersync._sync_users(a.pair, null);
    return a.pair;
end
$$;
comment on function usersync.attach(regclass, regclass, name, boolean, text) is
    'Attaches usersync to a users table and a contacts table; returns the pair''s name. See usersync.attach_preview for a dry run.';

create or replace function usersync.detach(pair text)
returns void
language plpgsql
set search_path = pg_catalog, pg_temp set standard_conforming_strings = on  -- (its literals hold backslashes)
as $$
declare
    a usersync.attachments;
    t record;
    seq text;
    triggers text[];
    drop_trigger text;
begin
    if detach.pair is null then
        raise exception using errcode = 'US011', message = 'detach needs the name of a pair',
            hint = 'SELECT pair FROM usersync.pairs';
    end if;
    a := usersync._pair(detach.pair);
    perform usersync._lock_config_exclusive();
    -- The pair's tables before any row: dropping their triggers waits for the application's open
    -- transactions, whose triggers still run and may delete a row the catalog's cascade below
    -- deletes (a failure in sync_errors that a user's fix ends): a cycle, 40P01.
    -- (users, then contacts; a table dropped while the DDL guard was off is left out)
    for t in select x.rel from (values (1, a.users), (2, a.contacts)) x(n, rel)
               join pg_catalog.pg_class c on c.oid = x.rel order by x.n loop
        execute pg_catalog.format('lock table %s in access exclusive mode', t.rel);
    end loop;
    -- The pair's triggers, recognised by the functions they call (whatever their names).
    triggers := array(select pg_catalog.format('drop trigger %I on %s', tg.tgname, tg.tgrelid::pg_catalog.regclass)
                        from pg_catalog.pg_trigger tg join pg_catalog.pg_proc p on p.oid = tg.tgfoid
                       where tg.tgrelid in (a.users, a.contacts) and p.pronamespace = 'usersync'::pg_catalog.regnamespace
                         and p.proname like '\_g' || a.id || '\_%');
    -- The catalog first: the DDL guard then lets the pair's triggers and policy go.
    delete from usersync.attachments x where x.id = a.id;
    foreach drop_trigger in array triggers loop
        execute drop_trigger;
    end loop;
    -- What the tables got for the engine stays while another pair uses the table.
    for t in select x.rel, x.key, c.relnamespace as nsp
               from (values (a.users, a.user_key), (a.contacts, a.contact_key)) x(rel, key)
               join pg_catalog.pg_class c on c.oid = x.rel
              where not exists (select from usersync.attachments y where x.rel in (y.users, y.contacts)) loop
        -- (the schema's USAGE too, unless another pair's table is in it; public's is everyone's)
        if t.nsp <> 'public'::pg_catalog.regnamespace
           and not exists (select from usersync.attachments y join pg_catalog.pg_class c on c.oid in (y.users, y.contacts)
                            where c.relnamespace = t.nsp) then
            execute pg_catalog.format('revoke usage on schema %s from usersync_engine', t.nsp::pg_catalog.regnamespace);
        end if;
        execute pg_catalog.format('drop policy if exists usersync_engine on %s', t.rel);
        execute pg_catalog.format('revoke all on %s from usersync_engine', t.rel);
        seq := pg_catalog.pg_get_serial_sequence(t.rel::text, t.key);
        if seq is not null then
            execute pg_catalog.format('revoke all on sequence %s from usersync_engine', seq);
        end if;
    end loop;
    for t in select p.oid::pg_catalog.regprocedure as fn from pg_catalog.pg_proc p
              where p.pronamespace = 'usersync'::pg_catalog.regnamespace and p.proname like '\_g' || a.id || '\_%' loop
        execute pg_catalog.format('drop function %s', t.fn);
    end loop;
    perform usersync._rebuild_views();
    execute pg_catalog.format('drop table %s', usersync._links_table(a.id));
end
$$;
comment on function usersync.detach(text) is
    'Detaches a pair: removes its triggers, generated code, links and configuration; keeps both tables and every row';

-- No link active in a pair (so no pair of rows can be stale).
create or replace function usersync._pair_is_empty(p_pair text)
returns boolean
language plpgsql stable set search_path = pg_catalog, pg_temp as $$
declare
    empty boolean;
begin
    execute pg_catalog.format('select not exists (select from %s l where l.active)',
                              usersync._links_table((usersync._pair(p_pair)).id)) into empty;
    return empty;
end
$$;
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
-- 45_templates.sql: the templates that usersync._generate() fills in (see 40_codegen.sql).
--
-- Placeholders: @U@/@C@ the module tables, @UK@/@CK@ their keys, @SW@ the switch column,
-- @V@ the mapping version, @L_CURRENT@ "link l is up to date with it" (see 40_codegen.sql),
-- @CID@ a new contact key, @OVR@ "overriding system value" when the key is GENERATED ALWAYS, @C_COLS@ every contact metadata field, @C_IMG_x@ the contact image
-- of the user row aliased x, @U_COLS@/@U_IMG_x@ the mapped user fields and their image of the
-- contact row aliased x, @U_CHANGED@/@C_CHANGED@ "did a mapped field change",
-- @C_SAME@/@C_SAME_N@/@C_SAME_NEW@ "contact c is the image of user row u / n / NEW", @HAS_MAP@,
-- @SMALL_ROWS@/@BULK_ROWS@ the statement sizes where the update trigger goes set-based / where
-- statements on transition tables are planned per call.
-- @G@ the prefix of the pair's generated functions (_g<id>_), @LINKS@ its links table, @PAIR@ its
-- name as a literal, @UKT@/@CKT@ the key types, @SHARED@ true when the contact's key is its user's
-- (@CID_U@/@CID_N@: that key, of the user row aliased u / n), @HAS_SW@ false for a pair without a switch
-- (every "x.@SW@" then reads true, see usersync._generate), @SW_HINT@ how to stop syncing a user,
-- for messages, @SHAPE_CHECK@ nothing, or where the DDL guard is off (an install without a
-- superuser) a statement that fails when the tables' columns changed since the code was generated
-- (usersync._shape), @C_FK_FIRST@ true when a foreign key from the contacts to the users decides a
-- contact's delete before the engine's statement trigger runs (ON DELETE CASCADE, or RESTRICT /
-- NO ACTION: see on_users_delete_before), @C_FK_RESTRICTS@ the latter, @PINS@ the SET clauses
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
('@G@lock_pair(@UKT@, @CKT@, text)', $tpl$
create or replace function usersync.@G@lock_pair(p_user_id @UKT@, p_contact_id @CKT@, p_source text)
returns void language plpgsql security definer set search_path = pg_catalog, pg_temp as $body$
begin
    @SHAPE_CHECK@
    -- (NO KEY UPDATE keeps out every write of the application, not its foreign keys' KEY SHARE
    -- locks: a row it inserts that references the target must not hold the reversal up.)
    if p_source = 'contact' then
        perform from @C@ c where c.@CK@ = p_contact_id for no key update;
        perform from @U@ u where u.@UK@ = p_user_id for no key update;
    else
        perform from @U@ u where u.@UK@ = p_user_id for no key update;
        perform from @C@ c where c.@CK@ = p_contact_id for no key update;
    end if;
end
$body$;
$tpl$),

('@G@refresh(@UKT@[], boolean)', $tpl$
create or replace function usersync.@G@refresh(p_user_ids @UKT@[], p_stamp boolean, out synced bigint, out changed bigint)
language plpgsql security definer set search_path = pg_catalog, pg_temp @PINS@
-- A batch touches its own rows only: index probes from the id array, whatever the statistics say
-- (just loaded, no ANALYZE: a custom plan read every table whole for each batch) and whatever
-- plan the cache settled on after five calls. Every table it reads has the index it needs. And no
-- Materialize: with the links' selectivity underestimated (fresh rows, no ANALYZE), the planner
-- joined 10,000 users to a materialized 10,000 links by a filter, 10^8 comparisons a batch,
-- instead of probing the links' key for each user.
set enable_seqscan = off set enable_hashjoin = off set enable_mergejoin = off set enable_material = off
as $body$
declare
    n bigint;
    expected bigint;
    active_links bigint;
    any_reversed boolean;
begin
    @SHAPE_CHECK@
    -- Read the sources under a lock first: a plain UPDATE ... FROM would, under READ COMMITTED,
    -- wait for a concurrent writer and then write the value it read before that writer committed.
    -- Users are the sources of every pair but the reversed ones, whose contacts are, and are
    -- locked next, then their users (the targets, which the application may write too: the
    -- switch, unmapped fields): both rows of a pair before its link (stamped below), as a
    -- contact's own update, a switch turned off and set_sync_source take them.
    perform from @U@ u
     where u.@UK@ = any(p_user_ids)
       and not exists (select from @LINKS@ l where l.user_id = u.@UK@ and l.active and l.source = 'contact')
     order by u.@UK@ for share;
    any_reversed := @HAS_MAP@ and exists (select from @LINKS@ l where l.active and l.source = 'contact');
    if any_reversed then
        perform from @C@ c join @LINKS@ l on l.contact_id = c.@CK@
         where l.user_id = any(p_user_ids) and l.active and l.source = 'contact' order by c.@CK@ for share of c;
        perform from @U@ u join @LINKS@ l on l.user_id = u.@UK@
         where l.user_id = any(p_user_ids) and l.active and l.source = 'contact' order by u.@UK@ for no key update of u;
    end if;
    -- Driven by the links, restricted by the array; users and contacts are probed by their keys.
    -- (The array on the probed side too would be searched again for every probe: 10,000 probes
    -- of a 10,000-key array, seconds a batch.)
    if @GUARDED_C@ then
        select count(*) into expected
          from @C@ c, @U@ u join @LINKS@ l on l.user_id = u.@UK@
         where l.user_id = any(p_user_ids)
           and u.@SW@ and l.active and l.source = 'user' and c.@CK@ = l.contact_id
           and not (@C_SAME@);
    end if;
    -- One statement stamps the batch's active links and rewrites their contacts, reading the links
    -- once (the stamp's RETURNING drives the contacts' update) and counting what the checks below
    -- need: no second walk of the array for the stamp, none for the count. A stamped pair whose
    -- contact (or, with row-level security on users, user) cannot be seen fails the batch below
    -- (US007), which rolls the stamp back. Lock order: the sources above, then each pair's link
    -- and target (a reversed pair's user below).
    -- A resync batch (p_stamp false) reads the links instead of stamping them: the users' lock
    -- above already orders it with every write of these pairs, and the run's cursor, not a stamp
    -- per link, says which pairs it went past (resync_step). It stamps only a link an earlier run
    -- marked failed (0), which its cursor would not make up to date again.
    with stamped as (
        update @LINKS@ l set mapping_version = @V@, synced_at = pg_catalog.now()
         where (p_stamp or l.mapping_version = 0) and l.user_id = any(p_user_ids) and l.active
        returning l.user_id, l.contact_id, l.source),
    l as (
        select * from stamped
        union all
        select l.user_id, l.contact_id, l.source from @LINKS@ l
         where not p_stamp and l.mapping_version <> 0 and l.user_id = any(p_user_ids) and l.active),
    w as (
        update @C@ c set (@C_COLS@) = row(@C_IMG_U@)
          from l join @U@ u on u.@UK@ = l.user_id
         where l.source = 'user' and u.@SW@ and c.@CK@ = l.contact_id
           and not (@C_SAME@)
        returning 1)
    select count(*),
           count(*) filter (where exists (select from @C@ c where c.@CK@ = l.contact_id)
                              and (not @GUARDED_U@ or exists (select from @U@ u where u.@UK@ = l.user_id))),
           (select count(*) from w)
      into active_links, synced, changed
      from l;
    if @GUARDED_C@ and changed <> expected then
        perform usersync._lost_write(@C_REL@, 'update', expected, changed);
    end if;
    if @GUARDED_C@ then
        select count(*) into n
          from @C@ c join @LINKS@ l on l.contact_id = c.@CK@ join @U@ u on u.@UK@ = l.user_id
         where l.user_id = any(p_user_ids)
           and u.@SW@ and l.active and l.source = 'user' and not (@KEPT_CU@);
        if n > 0 then
            perform usersync._lost_write(@C_REL@, 'keep', n, 0);
        end if;
    end if;
    if any_reversed then
        if @GUARDED_U@ then
            select count(*) into expected
              from @U@ u, @C@ c join @LINKS@ l on l.contact_id = c.@CK@
             where l.user_id = any(p_user_ids)
               and l.active and l.source = 'contact' and u.@UK@ = l.user_id
               and not (@U_SAME@);
        end if;
        update @U@ u set (@U_COLS@) = row(@U_IMG_C@)
          from @C@ c join @LINKS@ l on l.contact_id = c.@CK@
         where l.user_id = any(p_user_ids)
           and l.active and l.source = 'contact' and u.@UK@ = l.user_id
           and not (@U_SAME@);
        get diagnostics n = row_count;
        if @GUARDED_U@ and n <> expected then
            perform usersync._lost_write(@U_REL@, 'update', expected, n);
        end if;
        if @GUARDED_U@ then
            select count(*) into expected
              from @U@ u join @LINKS@ l on l.user_id = u.@UK@ join @C@ c on c.@CK@ = l.contact_id
             where l.user_id = any(p_user_ids)
               and l.active and l.source = 'contact' and not (@KEPT_CU@);
            if expected > 0 then
                perform usersync._lost_write(@U_REL@, 'keep', expected, 0);
            end if;
        end if;
        changed := changed + n;
    end if;
    -- A pair whose contact (or, with row-level security on users, user) the engine cannot see
    -- (deleted behind the triggers' back, or hidden by a policy) is not synced, and says so
    -- rather than stay silently stale.
    if synced <> active_links then
        perform usersync._lost_write(@C_REL@, 'read', active_links, synced);
    end if;
    if @ANY_FAILURE@ then
        perform usersync._forget_failures(@PAIR@, p_user_ids);
    end if;
end
$body$;
$tpl$),

('@G@link(@UKT@[])', $tpl$
create or replace function usersync.@G@link(p_user_ids @UKT@[])
returns bigint language plpgsql security definer set search_path = pg_catalog, pg_temp @PINS@ as $body$
declare
    expected bigint;
    written bigint;
    r record;
begin
    @SHAPE_CHECK@
    -- The users that are their pairs' sources (refresh, called below, locks the reversed pairs'
    -- contacts before their users: a user locked here first could deadlock with its contact's edit).
    perform from @U@ u
     where u.@UK@ = any(p_user_ids)
       and not exists (select from @LINKS@ l where l.user_id = u.@UK@ and l.active and l.source = 'contact')
     order by u.@UK@ for share;
    -- A link whose contact is gone cannot be re-used: forget it, a new contact is made below.
    -- Unless row-level security may only be hiding it: a new contact would then be a duplicate
    -- (not with a shared key: the new contact would take the hidden one's key, and fail).
    if @GUARDED_C@ and not @SHARED@ then
        select count(*) into expected from @LINKS@ l
         where l.user_id = any(p_user_ids) and not exists (select from @C@ c where c.@CK@ = l.contact_id);
        if expected > 0 then
            perform usersync._lost_write(@C_REL@, 'read', expected, 0);
        end if;
    end if;
    -- The contacts of links about to be re-activated (ordinary contacts until then, which the
    -- application may edit or delete) before their links, as the contacts' own triggers take them.
    perform from @C@ c join @LINKS@ l on l.contact_id = c.@CK@
     where l.user_id = any(p_user_ids) and not l.active order by c.@CK@ for no key update of c;
    delete from @LINKS@ l
     where l.user_id = any(p_user_ids) and not exists (select from @C@ c where c.@CK@ = l.contact_id);
    -- Re-enabling the switch re-links the contact the user had before (never a duplicate),
    -- with the user as the source again: that is what the switch means. The switch is read
    -- again from the user locked above: sync_users read it from its snapshot, and a user switched
    -- off meanwhile (its link ended by its trigger) keeps its link ended.
    update @LINKS@ l set active = true, source = 'user'
     where l.user_id = any(p_user_ids) and not l.active
       and exists (select from @U@ u where u.@UK@ = l.user_id and u.@SW@);
    -- A shared key: a contact that already has the user's key is the user's contact (linked,
    -- never duplicated), unless it belongs to another user of the pair.
    if @SHARED@ then
        -- Those contacts locked first, and read again below: one deleted meanwhile (with no
        -- foreign key to stop the delete) is not linked, and the user gets a new contact instead.
        perform from @U@ u join @C@ c on c.@CK@ = @CID_U@
         where u.@UK@ = any(p_user_ids) and u.@SW@
           and not exists (select from @LINKS@ l where l.user_id = u.@UK@)
         order by c.@CK@ for no key update of c;
        -- (refused where linking would empty values no user field fills: as attach refuses)
        select u.@UK@ as user_id, c.@CK@ as contact_id into r
          from @U@ u join @C@ c on c.@CK@ = @CID_U@
         where u.@UK@ = any(p_user_ids) and u.@SW@ and (@C_UNMAPPED_FILLED@)
           and not exists (select from @LINKS@ l where l.user_id = u.@UK@)
           and not exists (select from @LINKS@ l where l.contact_id = c.@CK@)
         limit 1;
        if r.user_id is not null then
            raise exception using errcode = 'US010',
                message = pg_catalog.format('contact %s cannot be linked to user %s: it has values in fields no user '
                                            'field is mapped to, which linking would empty', r.contact_id, r.user_id),
                detail = 'A shared key links the contact that already has the user''s key; a synchronized contact is '
                         'the image of its user.',
                hint = 'Map those fields (usersync.field_mapping), or empty them first.';
        end if;
        insert into @LINKS@ (user_id, contact_id, source, active, mapping_version)
        select u.@UK@, c.@CK@, 'user', true, 0
          from @U@ u join @C@ c on c.@CK@ = @CID_U@
         where u.@UK@ = any(p_user_ids) and u.@SW@
           and not exists (select from @LINKS@ l where l.user_id = u.@UK@)
           and not exists (select from @LINKS@ l where l.contact_id = c.@CK@);
    end if;
    if @GUARDED_C@ then
        select count(*) into expected from @U@ u
         where u.@UK@ = any(p_user_ids) and u.@SW@
           and not exists (select from @LINKS@ l where l.user_id = u.@UK@);
    end if;
    -- s(new_id, usr): the user's columns travel as one composite, so no column of the
    -- application's can clash with the engine's own.
    with s as materialized (
        select @CID@ as new_id, x as usr
          from (select @U_SRC_U@
                  from @U@ u
                 where u.@UK@ = any(p_user_ids) and u.@SW@
                   and not exists (select from @LINKS@ l where l.user_id = u.@UK@)) x),
    linked as (
        insert into @LINKS@ (user_id, contact_id, source, active, mapping_version)
        select (s.usr).@UK@, s.new_id, 'user', true, @V@ from s)
    insert into @C@ (@CK@, @C_COLS@) @OVR@
    select s.new_id, @C_IMG_S@ from s;
    if @GUARDED_C@ then
        get diagnostics written = row_count;
        if written <> expected then
            perform usersync._lost_write(@C_REL@, 'insert', expected, written);
        end if;
    end if;
    return (usersync.@G@refresh(p_user_ids, true)).synced;
end
$body$;
$tpl$),

('@G@sync_users(@UKT@[])', $tpl$
create or replace function usersync.@G@sync_users(p_user_ids @UKT@[])
returns bigint language plpgsql security definer set search_path = pg_catalog, pg_temp @PINS@ as $body$
declare
    unknown @UKT@[];
    over @UKT@[];
    ids @UKT@[];
begin
    @SHAPE_CHECK@
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
    -- a link whose switch is off ends; a link whose user is gone is forgotten. Either way a
    -- failure a resync recorded for the pair is over. The switches are read from locked rows (a
    -- reversed pair's contact first, the lock order): read from the snapshot, a user switched on
    -- meanwhile by a transaction that found its link still active lost that link here.
    perform from @C@ c join @LINKS@ l on l.contact_id = c.@CK@ join @U@ u on u.@UK@ = l.user_id
     where l.active and l.source = 'contact' and not u.@SW@ and (p_user_ids is null or l.user_id = any(p_user_ids))
     order by c.@CK@ for share of c;
    with ended as (
        update @LINKS@ l set active = false
         where l.active and l.user_id in (
               select u.@UK@ from @U@ u join @LINKS@ k on k.user_id = u.@UK@
                where k.active and not u.@SW@ and (p_user_ids is null or u.@UK@ = any(p_user_ids))
                order by u.@UK@ for share of u)
        returning l.user_id)
    select pg_catalog.array_agg(e.user_id) into over from ended e;
    -- (Not while row-level security may only be hiding the user: that pair would be lost.)
    if @GUARDED_U@ then
        select array_agg(l.user_id) into unknown from @LINKS@ l
         where (p_user_ids is null or l.user_id = any(p_user_ids))
           and not exists (select from @U@ u where u.@UK@ = l.user_id);
        if unknown is not null then
            perform usersync._lost_write(@U_REL@, 'read', pg_catalog.cardinality(unknown), 0);
        end if;
    end if;
    -- Those links locked first, and the users read again below: a user inserted meanwhile with
    -- a gone user's key (its trigger took the link over) keeps its link, and gets no second contact.
    perform from @LINKS@ l
     where (p_user_ids is null or l.user_id = any(p_user_ids))
       and not exists (select from @U@ u where u.@UK@ = l.user_id)
     order by l.user_id for update;
    with gone as (
        delete from @LINKS@ l
         where (p_user_ids is null or l.user_id = any(p_user_ids))
           and not exists (select from @U@ u where u.@UK@ = l.user_id)
        returning l.user_id)
    select over || pg_catalog.array_agg(g.user_id) into over from gone g;
    if over is not null and @ANY_FAILURE@ then
        perform usersync._forget_failures(@PAIR@, over);
    end if;
    ids := array(select u.@UK@ from @U@ u
                  where u.@SW@ and (p_user_ids is null or u.@UK@ = any(p_user_ids)) order by u.@UK@);
    if pg_catalog.cardinality(ids) = 0 then
        return 0;
    end if;
    return usersync.@G@link(ids);
exception when data_exception or integrity_constraint_violation then
    perform usersync._explain_failure(@PAIR@, ids::pg_catalog.text[]);
    raise;
end
$body$;
$tpl$),

('@G@on_users_insert()', $tpl$
create or replace function usersync.@G@on_users_insert()
returns trigger language plpgsql security definer set search_path = pg_catalog, pg_temp @PINS@ as $body$
declare
    expected bigint;
    written bigint;
    visible bigint;
begin
    @SHAPE_CHECK@
    @TRY@
    if @SHARED@ and exists (select from new_rows n join @C@ c on c.@CK@ = @CID_N@ where n.@SW@) then
        -- A shared key met a contact that already has it (rare): linked, not duplicated (see link).
        perform usersync.@G@link(array(select n.@UK@ from new_rows n where n.@SW@));
    elsif exists (select from new_rows n where n.@SW@) then
        with s as materialized (
            select @CID@ as new_id, x as usr from (select @U_SRC_N@ from new_rows n where n.@SW@) x),
        linked as (
            -- ON CONFLICT: a link left behind by a delete that bypassed the triggers.
            insert into @LINKS@ (user_id, contact_id, source, active, mapping_version)
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
              from new_rows n join @LINKS@ l on l.user_id = n.@UK@ join @C@ c on c.@CK@ = l.contact_id
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
        perform usersync._explain_failure(@PAIR@, array(select n.@UK@::pg_catalog.text from new_rows n where n.@SW@));
        raise;
    @END_CATCH@
    return null;
end
$body$;
$tpl$),

('@G@on_users_update()', $tpl$
create or replace function usersync.@G@on_users_update()
returns trigger language plpgsql security definer set search_path = pg_catalog, pg_temp @PINS@ as $body$
declare
    r record;
    switched_on @UKT@[] := '{}';
    stamped_ids @UKT@[];
    ended_ids @UKT@[];
    expected bigint;
    written bigint;
    any_reversed boolean;
    any_stale boolean;
    any_switched boolean;
    usersync_bulk boolean;
    usersync_path text;
begin
    -- A row trigger that sees the statement's transition tables (usersync._engine_triggers), so
    -- that one row costs what a hand-written row trigger costs and a bulk statement stays
    -- set-based (docs/performance.md). One question decides this call's path:
    --   skip  a statement of more than @SMALL_ROWS@ rows (or on a table whose writes are counted)
    --         is synced by the call for the first row of new_rows, set-based, below; the others
    --         return. Every row of new_rows has its call, so at least one call does it, whatever
    --         order they come in (a key twice in new_rows, as a foreign key's cascade can make,
    --         only repeats the set-based code, which then changes nothing). The question reads
    --         at most @SMALL_ROWS@ + 1 rows and compares the keys in SQL, with the column's own
    --         type and collation;
    --   row   a few rows, this user synchronized and its switch unchanged: the common case;
    --   off   a few rows, this user not synchronized, its switch unchanged;
    --   set   the set-based code, over all of new_rows.
    -- (Each PL/pgSQL expression is prepared again in every transaction: the hot path has few.)
    select case when exists (select from new_rows offset @SMALL_ROWS@) or @GUARDED_C@
                then case when new.@UK@ is not distinct from (select n.@UK@ from new_rows n limit 1)
                          then 'set' else 'skip' end
                when old.@SW@ is distinct from new.@SW@ then 'set'
                when new.@SW@ then 'row'
                else 'off' end
      into usersync_path;
    if usersync_path = 'skip' then
        return null;
    end if;
    @SHAPE_CHECK@
    @TRY@
    if usersync_path = 'row' then
        -- The contact becomes the image of NEW, through a link that is the user's and up to
        -- date with the mapping (not stale), unless it is that image already (an unmapped field
        -- changed: the link is then probed once more, and nothing is written). "Is the image"
        -- compares after conversion, as the set-based code does, not "did a mapped field
        -- change": where types differ, 10.5 and 10.50 are one numeric but two texts. Anything
        -- else (a reversed or stale link, a missing one) is for the set-based code below.
        update @C@ c set (@C_COLS@) = row(@C_IMG_NEW@)
          from @LINKS@ l
         where l.user_id = new.@UK@ and l.active and l.source = 'user' and @L_CURRENT@
           and c.@CK@ = l.contact_id and not (@C_SAME_NEW@);
        if found then
            return null;
        end if;
        if exists (select from @LINKS@ l where l.user_id = new.@UK@ and l.active and l.source = 'user'
                                           and @L_CURRENT@) then
            return null;
        end if;
    elsif usersync_path = 'off' then
        -- Nothing to do if it has no link (one that is left is ended below).
        if not exists (select from @LINKS@ l where l.user_id = new.@UK@ and l.active) then
            return null;
        end if;
    end if;

    -- The statement, set-based: all of new_rows (a statement of many rows is here once). Is it
    -- a bulk statement; is any pair reversed; does a row's switch disagree with its link
    -- (switched on or off; a linked row whose key changed is refused by the rekey trigger); may a
    -- pair be stale?
    -- Only the statement's new rows, each probing the links' key (OFFSET 0 keeps it a probe: as
    -- a hashed subplan it would read all of the links): linear at any size, whatever size the
    -- plan was made for. Without a switch nothing is switched: a user whose reversed contact was
    -- deleted stays without one until sync_users makes one, whatever is written to it.
    select exists (select from new_rows offset @BULK_ROWS@),
           exists (select from @LINKS@ l where l.active and l.source = 'contact'),
           @HAS_SW@ and exists (select from new_rows n
                                 where n.@SW@ is distinct from exists (select from @LINKS@ l
                                                                       where l.user_id = n.@UK@ and l.active offset 0)),
           (select s.synced_version < @V@ from usersync.mapping_state s where s.pair = @PAIR@)
      into usersync_bulk, any_reversed, any_switched, any_stale;

    -- A reversed pair's mapped user fields follow the contact: only the engine writes them (and
    -- the engine's own writes never get here: see the WHEN clause in usersync._attach()).
    if any_reversed then
        /*dual into r*/
        select n.@UK@ as user_id, l.contact_id, @U_FIRST_CHANGED@ as field into r
          from new_rows n join old_rows o on o.@UK@ = n.@UK@
          join @LINKS@ l on l.user_id = n.@UK@ and l.active and l.source = 'contact'
         where @U_CHANGED@
         limit 1;
        /*end*/
        if r.user_id is not null then
            raise exception using errcode = 'US002',
                message = pg_catalog.format('user %s is synchronized from contact %s: field "%s" is read-only',
                                            r.user_id, r.contact_id, r.field),
                detail = 'The synchronization direction of this pair is reversed: the contact is the data source.',
                hint = pg_catalog.format('Edit contact %s instead, or restore the direction: '
                                         'SELECT usersync.set_sync_source(%L, ''user'', pair => %L)',
                                         r.contact_id, r.user_id, @PAIR@);
        end if;
    end if;

    if any_switched then
        -- Switched off: the link ends, the contact stays as an ordinary contact, and a failure a
        -- resync recorded for the pair is over with it.
        /*dual into ended_ids*/
        with ended as (
            update @LINKS@ l set active = false
              from new_rows n where l.user_id = n.@UK@ and l.active and not n.@SW@
            returning l.user_id)
        select pg_catalog.array_agg(e.user_id) into ended_ids from ended e;
        /*end*/
        if ended_ids is not null and @ANY_FAILURE@ then
            perform usersync._forget_failures(@PAIR@, ended_ids);
        end if;
        -- Switched on: link (re-link the earlier contact, or create one) and refresh.
        /*dual into switched_on*/
        select array(select n.@UK@ from new_rows n
                      where n.@SW@ and not exists (select from @LINKS@ l
                                                    where l.user_id = n.@UK@ and l.active)) into switched_on;
        /*end*/
        if pg_catalog.cardinality(switched_on) > 0 then
            perform usersync.@G@link(switched_on);
        end if;
    end if;

    if not (@GUARDED_C@ or any_stale) then
        -- Every synchronized contact of the statement becomes the image of its user; those that
        -- are already (an unmapped field changed, or nothing did) are not written. No join of the
        -- two transition tables: with every pair up to date with the mapping, and nothing but the
        -- engine writing these contacts (no BEFORE trigger, no policy that could hide a row:
        -- usersync._gen_writes_can_vanish), "differs from the image" is "a mapped field changed".
        /*dual*/
        update @C@ c set (@C_COLS@) = row(@C_IMG_N@)
          from new_rows n
          join @LINKS@ l on l.user_id = n.@UK@ and l.active and l.source = 'user'
         where c.@CK@ = l.contact_id and n.@SW@ and not (@C_SAME_N@);
        /*end*/
    else
        -- A pair may be stale (a mapping change not resynced yet: its contact differs from the
        -- image but only "Update all synchronized users" may rewrite it), or something can change
        -- or swallow the engine's writes to the contacts (an application's BEFORE trigger, a
        -- restrictive policy): only contacts whose user changed a mapped field are written, and
        -- where writes can vanish the engine counts what they did (US007 rather than a pair
        -- reported synced that is not). Links re-made above were refreshed by link().
        if @GUARDED_C@ then
            /*dual into expected using switched_on*/
            select count(*) into expected
              from new_rows n
              join old_rows o on o.@UK@ = n.@UK@
              join @LINKS@ l on l.user_id = n.@UK@ and l.active and l.source = 'user'
             where n.@SW@ and @U_CHANGED@
               and not n.@UK@ = any(switched_on);
            /*end*/
        end if;
        /*dual using switched_on*/
        update @C@ c set (@C_COLS@) = row(@C_IMG_N@)
          from new_rows n
          join old_rows o on o.@UK@ = n.@UK@
          join @LINKS@ l on l.user_id = n.@UK@ and l.active and l.source = 'user'
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
              join @LINKS@ l on l.user_id = n.@UK@ and l.active and l.source = 'user'
              join @C@ c on c.@CK@ = l.contact_id
             where n.@SW@ and @U_CHANGED@ and not n.@UK@ = any(switched_on) and not (@KEPT_CN@);
            /*end*/
            if written > 0 then
                perform usersync._lost_write(@C_REL@, 'keep', written, 0);
            end if;
        end if;
        -- Pairs that were stale and whose contact was just rewritten are now up to date, and a
        -- resync's failure of one of them is over (status no longer counts it failed).
        if any_stale then
            /*dual into stamped_ids*/
            with stamped as (
                update @LINKS@ l set mapping_version = @V@, synced_at = pg_catalog.now()
                  from new_rows n join old_rows o on o.@UK@ = n.@UK@
                 where l.user_id = n.@UK@ and l.active and l.source = 'user' and l.mapping_version < @V@
                   and n.@SW@ and @U_CHANGED@
                returning l.user_id)
            select pg_catalog.array_agg(s.user_id) into stamped_ids from stamped s;
            /*end*/
            if @ANY_FAILURE@ then
                perform usersync._forget_failures(@PAIR@, stamped_ids);
            end if;
        end if;
    end if;
    @CATCH@
        perform usersync._explain_failure(@PAIR@, array(select n.@UK@::pg_catalog.text from new_rows n where n.@SW@));
        raise;
    @END_CATCH@
    return null;
end
$body$;
$tpl$),

('@G@on_users_rekey()', $tpl$
create or replace function usersync.@G@on_users_rekey()
returns trigger language plpgsql security definer set search_path = pg_catalog, pg_temp as $body$
begin
    -- A row trigger whose WHEN lets through only rows whose key changed (usersync._engine_triggers):
    -- nothing else pays for it. A pair is its two keys: re-keying a linked user would leave its
    -- link behind.
    if exists (select from @LINKS@ l where l.user_id = old.@UK@) then
        raise exception using errcode = 'US008',
            message = pg_catalog.format('the key of user %s cannot change: it is linked to a contact', old.@UK@),
            detail = 'usersync identifies a pair by the keys of its user and its contact.',
            hint = 'Keep the key, or delete the user and insert it again with the new key.';
    end if;
    return null;
end
$body$;
$tpl$),

('@G@on_users_delete()', $tpl$
create or replace function usersync.@G@on_users_delete()
returns trigger language plpgsql security definer set search_path = pg_catalog, pg_temp as $body$
declare
    r record;
    expected bigint;
    written bigint;
    usersync_bulk boolean := exists (select from old_rows offset @BULK_ROWS@);
begin
    @SHAPE_CHECK@
    if exists (select from @LINKS@ l where l.active and l.source = 'contact') then
        /*dual into r*/
        select o.@UK@ as user_id, l.contact_id into r
          from old_rows o join @LINKS@ l on l.user_id = o.@UK@ and l.active and l.source = 'contact'
         limit 1;
        /*end*/
        if r.user_id is not null then
            raise exception using errcode = 'US002',
                message = pg_catalog.format('user %s is synchronized from contact %s and cannot be deleted',
                                            r.user_id, r.contact_id),
                detail = 'The synchronization direction of this pair is reversed: the contact is the data source.',
                hint = pg_catalog.format('Delete contact %s instead (the setting delete_user_with_contact decides what '
                                         'happens to the user), or restore the direction: '
                                         'SELECT usersync.set_sync_source(%L, ''user'', pair => %L)',
                                         r.contact_id, r.user_id, @PAIR@);
        end if;
    end if;
    if (select s.delete_contact_with_user from usersync.settings s where s.pair = @PAIR@) then
        if @GUARDED_C@ then
            -- A foreign key from the contacts may have had some deleted already: its ON DELETE
            -- CASCADE (its triggers run before this one; the contacts' own row triggers after
            -- it), or on_users_delete_before where it restricts deletes.
            /*dual into expected*/
            select count(*) into expected
              from old_rows o join @LINKS@ l on l.user_id = o.@UK@ and l.active and l.source = 'user'
             where not @C_FK_FIRST@ or exists (select from @C@ c where c.@CK@ = l.contact_id);
            /*end*/
        end if;
        /*dual*/
        delete from @C@ c
         using old_rows o join @LINKS@ l on l.user_id = o.@UK@ and l.active and l.source = 'user'
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
    delete from @LINKS@ l using old_rows o where l.user_id = o.@UK@;
    /*end*/
    if @ANY_FAILURE@ then
        perform usersync._forget_failures(@PAIR@, array(select o.@UK@ from old_rows o));
    end if;
    return null;
end
$body$;
$tpl$),

('@G@on_users_delete_before()', $tpl$
create or replace function usersync.@G@on_users_delete_before()
returns trigger language plpgsql security definer set search_path = pg_catalog, pg_temp as $body$
begin
    @SHAPE_CHECK@
    -- Attached only where a foreign key from the contacts restricts deleting a user: its check
    -- runs before any AFTER trigger, so with delete_contact_with_user the contact goes first.
    if @C_FK_RESTRICTS@ and (select s.delete_contact_with_user from usersync.settings s where s.pair = @PAIR@) then
        delete from @C@ c using @LINKS@ l
         where l.user_id = old.@UK@ and l.active and l.source = 'user' and c.@CK@ = l.contact_id;
    end if;
    return old;
end
$body$;
$tpl$),

('@G@on_users_truncate()', $tpl$
create or replace function usersync.@G@on_users_truncate()
returns trigger language plpgsql security definer set search_path = pg_catalog, pg_temp as $body$
declare
    expected bigint;
    written bigint;
begin
    @SHAPE_CHECK@
    if exists (select from @LINKS@ l where l.active and l.source = 'contact') then
        raise exception using errcode = 'US002',
            message = pg_catalog.format('cannot truncate %s: some users are synchronized from their contacts', tg_table_name),
            detail = 'Reversed pairs make those users read-only.',
            hint = pg_catalog.format('Delete their contacts, or restore the direction with '
                                     'usersync.set_sync_source(user_id, ''user'', pair => %L), first.', @PAIR@);
    end if;
    -- TRUNCATE skips row triggers; apply the delete rules to every pair at once instead.
    if (select s.delete_contact_with_user from usersync.settings s where s.pair = @PAIR@) then
        select count(*) into expected from @LINKS@ l where l.active and l.source = 'user';
        delete from @C@ c using @LINKS@ l where c.@CK@ = l.contact_id and l.active and l.source = 'user';
        get diagnostics written = row_count;
        if @GUARDED_C@ and written <> expected then
            perform usersync._lost_write(@C_REL@, 'delete', expected, written);
        end if;
    end if;
    delete from @LINKS@;
    delete from usersync.sync_errors e where e.pair = @PAIR@;
    return null;
end
$body$;
$tpl$),

('@G@on_contact_update()', $tpl$
create or replace function usersync.@G@on_contact_update()
returns trigger language plpgsql security definer set search_path = pg_catalog, pg_temp @PINS@ as $body$
declare
    l @LINKS@;
    written bigint;
begin
    @SHAPE_CHECK@
    select * into l from @LINKS@ where contact_id = old.@CK@ and active;
    if not found then
        -- A remembered contact (its user switched off) is found again by its key.
        if new.@CK@ is distinct from old.@CK@ then
            select * into l from @LINKS@ x where x.contact_id = old.@CK@;
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
        -- Its user is gone: a foreign key's ON DELETE SET NULL / SET DEFAULT updates the contact
        -- while the user's delete runs; the engine's delete trigger then ends the pair.
        if not exists (select from @U@ u where u.@UK@ = l.user_id) then
            return null;
        end if;
        raise exception using errcode = 'US001',
            message = pg_catalog.format('contact %s is synchronized from user %s and cannot be edited', old.@CK@, l.user_id),
            detail = 'While the user is the data source, the contact is read-only in the Contacts module.',
            hint = pg_catalog.format('Edit user %s instead; or %s, '
                                     'or reverse the direction: SELECT usersync.set_sync_source(%L, ''contact'', pair => %L)',
                                     l.user_id, @SW_HINT@, l.user_id, @PAIR@);
    end if;
    if new.@CK@ is distinct from old.@CK@ then
        raise exception using errcode = 'US008',
            message = pg_catalog.format('the key of contact %s cannot change: it is linked to user %s', old.@CK@, l.user_id),
            detail = 'usersync identifies a pair by the keys of its user and its contact.',
            hint = 'Keep the key, or delete the contact and insert it again with the new key.';
    end if;
    if @HAS_MAP@ and @C_CHANGED@ then
        -- The user (this pair's target) before its link, read again under that lock: a user
        -- switched off while this waited for it ended the pair, and its fields are its own again.
        perform from @U@ u where u.@UK@ = l.user_id for no key update;
        select * into l from @LINKS@ x where x.contact_id = old.@CK@ and x.active and x.source = 'contact';
        if not found then
            return null;
        end if;
        @TRY@
        update @U@ u set (@U_COLS@) = row(@U_IMG_NEW@) where u.@UK@ = l.user_id;
        get diagnostics written = row_count;
        if @GUARDED_U@ then
            if written <> 1 then
                perform usersync._lost_write(@U_REL@, 'update', 1, written);
            end if;
            if exists (select from @U@ u where u.@UK@ = l.user_id and not (@KEPT_NEWU@)) then
                perform usersync._lost_write(@U_REL@, 'keep', 1, 0);
            end if;
        end if;
        -- The user is now the whole image of its contact under the current mapping: a pair that
        -- was stale, or that a resync run marked failed (0), is synced, and its failure is over
        -- (as a user's own fix ends a user-sourced pair's, in the update trigger of users). Not
        -- where no user was written (deleted behind the triggers' back: the pair is broken).
        if l.mapping_version < @V@ and written = 1 then
            update @LINKS@ x set mapping_version = @V@, synced_at = pg_catalog.now()
             where x.user_id = l.user_id and x.mapping_version < @V@;
            if @ANY_FAILURE@ then
                perform usersync._forget_failures(@PAIR@, array[l.user_id]);
            end if;
        end if;
        @CATCH@
            perform usersync._explain_failure(@PAIR@, array[l.user_id::pg_catalog.text]);
            raise;
        @END_CATCH@
    end if;
    return null;
end
$body$;
$tpl$),

('@G@on_contact_delete_before()', $tpl$
create or replace function usersync.@G@on_contact_delete_before()
returns trigger language plpgsql security definer set search_path = pg_catalog, pg_temp as $body$
declare
    l @LINKS@;
begin
    @SHAPE_CHECK@
    select * into l from @LINKS@ where contact_id = old.@CK@ and active;
    if not found then
        return old;
    end if;
    if l.source = 'user' then
        -- Its user is gone: a foreign key's ON DELETE CASCADE (profiles.id references users)
        -- deletes the contact while the user's delete runs, which is allowed.
        if not exists (select from @U@ u where u.@UK@ = l.user_id) then
            return old;
        end if;
        raise exception using errcode = 'US001',
            message = pg_catalog.format('contact %s is synchronized from user %s and cannot be deleted', old.@CK@, l.user_id),
            detail = 'While the user is the data source, the contact is read-only in the Contacts module.',
            hint = pg_catalog.format('Delete user %s (the setting delete_contact_with_user decides what happens to the contact), '
                                     'or %s first', l.user_id, @SW_HINT@);
    end if;
    return old;
end
$body$;
$tpl$),

('@G@on_contact_delete_after()', $tpl$
create or replace function usersync.@G@on_contact_delete_after()
returns trigger language plpgsql security definer set search_path = pg_catalog, pg_temp as $body$
declare
    l @LINKS@;
    written bigint;
begin
    @SHAPE_CHECK@
    select * into l from @LINKS@ where contact_id = old.@CK@;
    if not found then
        return null;
    end if;
    -- The pair's user before its link, as every writer of a link takes them: a reversed pair's
    -- user (written below), which the application may be writing (its switch) before it takes
    -- the link; a remembered contact's user too (KEY SHARE: nothing is written to it), since
    -- TRUNCATE of the users takes their table, then every link. The link is read again under
    -- that lock: a user switched off meanwhile ended the pair, and is not deleted with its
    -- former contact. (An active user-sourced link gets here only through its user's own
    -- delete, a foreign key's ON DELETE CASCADE, which holds that user: no probe per row.)
    if not l.active or l.source = 'contact' then
        if l.active then
            perform from @U@ u where u.@UK@ = l.user_id for update;
        else
            perform from @U@ u where u.@UK@ = l.user_id for key share;
        end if;
        select * into l from @LINKS@ where contact_id = old.@CK@;
        if not found then
            return null;
        end if;
    end if;
    delete from @LINKS@ where user_id = l.user_id;
    if @ANY_FAILURE@ then
        perform usersync._forget_failures(@PAIR@, array[l.user_id]);
    end if;
    -- A reversed pair. (A user-sourced contact gets here only when its user is already gone:
    -- a foreign key's ON DELETE CASCADE.)
    if l.active and l.source = 'contact' then
        if (select s.delete_user_with_contact from usersync.settings s where s.pair = @PAIR@) then
            delete from @U@ u where u.@UK@ = l.user_id;
        elsif @HAS_SW@ then
            update @U@ u set @SW@ = false where u.@UK@ = l.user_id;
        else
            -- No switch: the user stays, without a contact until usersync.sync_users() makes one.
            return null;
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

('@G@on_contacts_truncate()', $tpl$
create or replace function usersync.@G@on_contacts_truncate()
returns trigger language plpgsql security definer set search_path = pg_catalog, pg_temp as $body$
declare
    n bigint;
    example @LINKS@;
begin
    @SHAPE_CHECK@
    select count(*) into n from @LINKS@ l where l.active and l.source = 'user';
    if n > 0 then
        select * into example from @LINKS@ l where l.active and l.source = 'user' order by l.user_id limit 1;
        raise exception using errcode = 'US001',
            message = pg_catalog.format('cannot truncate %s: %s contact(s) are synchronized from users (contact %s from user %s, ...)',
                                        tg_table_name, n, example.contact_id, example.user_id),
            detail = 'While the user is the data source, the contact is read-only in the Contacts module.',
            hint = pg_catalog.format('First %s.', @SW_HINT@);
    end if;
    if exists (select from @LINKS@ l where l.active) then
        raise exception using errcode = 'US004',
            message = pg_catalog.format('cannot truncate %s: some users are synchronized from their contacts', tg_table_name),
            detail = 'TRUNCATE fires no row triggers, so the rule for deleting a source contact cannot be applied.',
            hint = 'Use DELETE, which applies delete_user_with_contact to each pair.';
    end if;
    delete from @LINKS@;  -- remembered contacts of switched-off users are about to vanish
    return null;
end
$body$;
$tpl$)
$templates$;
-- 50_actions.sql: the public API of the engine, what admins and DBAs call.
--
-- sync_users(user_ids, pair)         "Synchronize users": (re)sync and repair the given users' pairs
-- resync_step(batch_size, pair)      one batch of "Update all synchronized users", committed by the caller
-- resync_all(batch_size, pair)       CALL it: every pair, a batch per transaction, resumable
-- set_sync_source(user_id, s, pair)  reverse a pair ('contact') or restore it ('user')
--
-- pair may be omitted where the database has one pair (usersync._only_pair). User ids are passed
-- in the key's own type (a bigint[], a uuid[]) or as text, and are read in the key's type; a value
-- that is not a key of the pair's users table is refused with US006.

-- The ids as an array of the pair's user key type (US006 when one is not a valid key).
create or replace function usersync._user_ids(a usersync.attachments, p_ids text[])
returns text  -- an SQL expression of the array, to EXECUTE with $1 = p_ids
language plpgsql
stable
set search_path = pg_catalog, pg_temp
as $$
declare
    ukt text := usersync._key_type(a.users, a.user_key);
begin
    begin
        execute pg_catalog.format('select $1::%s[]', ukt) using p_ids;
    exception when data_exception then
        raise exception using errcode = 'US006',
            message = pg_catalog.format('invalid user id(s) for pair %L: %s', a.pair, pg_catalog.array_to_string(p_ids, ', ', 'NULL')),
            detail = pg_catalog.format('The key %I of %s is of type %s.', a.user_key, a.users,
                                       (select pg_catalog.format_type(x.atttypid, x.atttypmod) from pg_catalog.pg_attribute x
                                         where x.attrelid = a.users and x.attname = a.user_key)),
            hint = 'Pass keys of the pair''s users table.';
    end;
    return pg_catalog.format('$1::%s[]', ukt);
end
$$;

create or replace function usersync._sync_users(p_pair text, p_ids text[])
returns bigint
language plpgsql
security definer
set search_path = pg_catalog, pg_temp
as $$
declare
    a usersync.attachments := usersync._pair(p_pair);
    n bigint;
begin
    -- Taken before any row lock, so it never waits while holding one.
    lock table usersync.config_lock in share mode;
    execute pg_catalog.format('select usersync.%I(%s)', '_g' || a.id || '_sync_users', usersync._user_ids(a, p_ids))
       into n using p_ids;
    return n;
end
$$;

-- Keys arrive in any type (anycompatible) and are turned into text inside SECURITY DEFINER
-- functions: only types of PostgreSQL's own are accepted, since a cast to text that the caller
-- defined for a type of their own (CREATE CAST) would run as the engine.
create or replace function usersync._check_key_type(p_type regtype)
returns void
language plpgsql
stable
set search_path = pg_catalog, pg_temp
as $$
begin
    if not exists (select from pg_catalog.pg_type t
                    where t.oid = p_type and t.typnamespace = 'pg_catalog'::pg_catalog.regnamespace and t.typtype = 'b') then
        raise exception using errcode = 'US006',
            message = pg_catalog.format('user ids of type %s are not accepted', p_type),
            detail = 'Keys are passed in a type of PostgreSQL''s own (bigint, uuid, text, ...) or as text.',
            hint = 'Cast them to text, e.g. array[...]::text[].';
    end if;
end
$$;

-- Keys as text in one format whatever the caller's settings: ISO dates, times in UTC with their
-- offset, floats with all their digits (resync_step writes sync_errors under the same settings).
-- Read back by the key type's input under any DateStyle, TimeZone or IntervalStyle, they are the
-- same keys; only money's text depends on lc_monetary on the way in too (see usersync.sync_users).
create or replace function usersync._keys_as_text(p_ids anycompatiblearray)
returns text[]
language sql
stable
set search_path = pg_catalog, pg_temp
set datestyle = 'ISO, YMD' set intervalstyle = 'postgres' set timezone = 'UTC' set extra_float_digits = 1
set bytea_output = 'hex' set lc_monetary = 'C' set xmloption = 'content' set xmlbinary = 'base64'
set default_text_search_config = 'pg_catalog.simple' set timezone_abbreviations = 'Default' set array_nulls = on
as $$
    select p_ids::pg_catalog.text[]
$$;

-- A pair's failures (sync_errors) of these users are over: something synced them, or they are
-- gone. The keys are matched as resync_step wrote them, whatever this session's settings, and
-- converted once (a function in a scan's filter would run for every row). Callers ask first
-- whether the pair has any failure at all (@ANY_FAILURE@ in the templates), which is rare: then
-- nothing is converted.
create or replace function usersync._forget_failures(p_pair text, p_ids anycompatiblearray)
returns void
language sql
set search_path = pg_catalog, pg_temp
as $$
    delete from usersync.sync_errors e
     where e.pair = p_pair
       and e.user_id in (select k.k from pg_catalog.unnest(usersync._keys_as_text(p_ids)) k(k))
$$;

-- Keys given in their own type become text in one format (usersync._keys_as_text) and are read
-- back in the key's type: the same keys whatever the caller's settings. Printed under them, a
-- float8 key under extra_float_digits = -3 would round to a neighbour's, and a timestamptz under
-- DateStyle Postgres in India would print as IST, read back as Israel's. Keys given as text are
-- the caller's literals, read under the caller's settings as any literal is; so is money, whose
-- text both ways follows lc_monetary.
create or replace function usersync._keys_in_one_format(p_ids anycompatiblearray)
returns text[]
language sql
stable
set search_path = pg_catalog, pg_temp
as $$
    select case when pg_catalog.pg_typeof(p_ids) = 'pg_catalog.money[]'::pg_catalog.regtype
                then p_ids::pg_catalog.text[]
                else usersync._keys_as_text(p_ids) end
$$;

create or replace function usersync.sync_users(user_ids anycompatiblearray, pair text default null)
returns bigint
language plpgsql
security definer
set search_path = pg_catalog, pg_temp
as $$
declare
    elem pg_catalog.regtype := (select t.typelem from pg_catalog.pg_type t
                                 where t.oid = pg_catalog.pg_typeof(user_ids)::pg_catalog.oid);
begin
    -- (checked before the cast below runs)
    perform usersync._check_key_type(elem);
    return usersync._sync_users(sync_users.pair, usersync._keys_in_one_format(user_ids));
end
$$;
comment on function usersync.sync_users(anycompatiblearray, text) is
    '"Synchronize users": (re)syncs the given users of a pair (NULL: every user whose switch is on), repairs missing contacts and dangling links; returns the number of pairs synced';

create or replace function usersync.sync_users(pair text default null)
returns bigint
language sql
security definer
set search_path = pg_catalog, pg_temp
as $$
    select usersync._sync_users(pair, null)
$$;
comment on function usersync.sync_users(text) is
    '"Synchronize users": (re)syncs every user of the pair whose switch is on; sync_users(NULL) does the same';

-- A resync run's cursor (text) in the key's type, p_type as format_type writes it (its length
-- too: char(5), not char(1)), p_like a null of that type: where usersync.synchronized_contacts
-- decides whether a run went past a pair. It reads the text back under the settings resync_step
-- wrote it with (the same SET list: a test compares them), so the answer does not depend on the
-- session's. It runs as its caller and reads nothing; p_type must be a type name.
create or replace function usersync._resync_cursor(p_cursor text, p_type text, p_like anyelement)
returns anyelement
language plpgsql
stable
set search_path = pg_catalog, pg_temp
set datestyle = 'ISO, YMD' set intervalstyle = 'postgres' set timezone = 'UTC' set extra_float_digits = 1
set bytea_output = 'hex' set lc_monetary = 'C' set xmloption = 'content' set xmlbinary = 'base64'
set default_text_search_config = 'pg_catalog.simple' set timezone_abbreviations = 'Default' set array_nulls = on
as $$
begin
    if p_cursor is null then
        return null;
    end if;
    if pg_catalog.to_regtype(p_type) is distinct from pg_catalog.pg_typeof(p_like) then
        raise exception using errcode = '22023', message = pg_catalog.format('%L is not the type of %L', p_type, p_like),
            hint = 'usersync.synchronized_contacts calls this function; it is not for direct use.';
    end if;
    execute pg_catalog.format('select $1::%s', p_type) into p_like using p_cursor;
    return p_like;
end
$$;

-- "pids 1, 2; prepared transactions 'a', 'b'": the writers a run waits for, as a DBA finds them.
create or replace function usersync._writers_named(p_pids integer[], p_gids text[])
returns text language sql stable set search_path = pg_catalog, pg_temp as $$
    select pg_catalog.concat_ws('; ',
               'pids ' || nullif(pg_catalog.array_to_string(p_pids, ', '), ''),
               'prepared transactions ' || nullif(
                   (select pg_catalog.string_agg(pg_catalog.quote_literal(g), ', ') from pg_catalog.unnest(p_gids) g), ''))
$$;

-- Before a resync run starts on a mapping: wait for the transactions still open that wrote the
-- pair's tables. One of them may have run the code of the mapping before (a trigger runs the
-- code current when it fires, and takes no lock of the engine's): a link it made, at that
-- mapping's version, would be invisible to the run's batches, yet counted as gone past once it
-- commits. So the run waits for them, as CREATE INDEX CONCURRENTLY waits for older
-- transactions; a transaction that begins later runs the current code. The waiting is a sleep,
-- which PostgreSQL's deadlock detector cannot see: a transaction it waits for that waits,
-- directly or through others, for this one ends it with 40P01 (usersync._waits_for_me), and
-- lock_timeout, if set, bounds it (55P03). It only makes sense
-- where the batches then see what those transactions committed, and once the current code is
-- committed: READ COMMITTED, and not in the transaction that changed the mapping.
create or replace function usersync._await_writers(a usersync.attachments)
returns void
language plpgsql
set search_path = pg_catalog, pg_temp
as $$
declare
    writers text[];
    pids integer[];
    gids text[];
    since timestamptz := pg_catalog.clock_timestamp();
    told boolean := false;
begin
    if pg_catalog.current_setting('transaction_isolation') <> 'read committed' then
        raise exception using errcode = '25000',
            message = pg_catalog.format('a resync run of pair %L starts only in a READ COMMITTED transaction', a.pair),
            detail = 'Its batches must see what the transactions it waits for commit.',
            hint = 'Run it at the default isolation level, as CALL usersync.resync_all() does.';
    end if;
    if exists (select from pg_catalog.pg_locks x
                where x.locktype = 'relation' and x.relation = 'usersync.config_lock'::pg_catalog.regclass
                  and x.pid = pg_catalog.pg_backend_pid() and x.mode = 'ExclusiveLock' and x.granted) then
        raise exception using errcode = '25000',
            message = pg_catalog.format('the configuration of pair %L (its mapping, its tables or a pair''s direction) '
                                        'changed in this transaction', a.pair),
            detail = 'A resync run starts once the code of the current mapping and the directions are committed, '
                     'so that writes after it run that code.',
            hint = 'Commit, then run the resync.';
    end if;
    -- pg_locks names a lock's holder by its current virtual xid, which a transaction that ends
    -- or prepares clears (n/0) for a moment before its locks are released or handed over to
    -- the prepared transaction: read again until every writer has its name (for a second at
    -- most: the moment is a few instructions long).
    for attempt in 1..1000 loop
        writers := array(select distinct x.virtualtransaction from pg_catalog.pg_locks x
                          where x.locktype = 'relation'
                            and x.database = (select d.oid from pg_catalog.pg_database d
                                               where d.datname = pg_catalog.current_database())
                            and x.relation in (a.users, a.contacts) and x.mode = 'RowExclusiveLock' and x.granted
                            and x.pid is distinct from pg_catalog.pg_backend_pid());
        exit when not exists (select from pg_catalog.unnest(writers) w(name) where w.name like '%/0');
        perform pg_catalog.pg_sleep(0.001);
    end loop;
    -- A writer is over when no lock is held in its name any more: a session's transaction holds
    -- its own virtual xid's lock until it ends; a prepared transaction (PREPARE TRANSACTION) has
    -- no session, and holds its locks, under the same name, until COMMIT or ROLLBACK PREPARED
    -- (and its virtual xid's lock, of that name, until they are handed over).
    loop
        select coalesce(pg_catalog.array_agg(distinct x.pid) filter (where x.pid is not null), '{}'),
               coalesce(pg_catalog.array_agg(distinct p.gid) filter (where p.gid is not null), '{}')
          into pids, gids
          from pg_catalog.pg_locks x
          left join pg_catalog.pg_prepared_xacts p
            on x.pid is null and x.locktype = 'transactionid' and p.transaction = x.transactionid
         where (x.virtualtransaction = any(writers) or x.locktype = 'virtualxid' and x.virtualxid = any(writers))
           and x.granted;
        exit when pg_catalog.cardinality(pids) + pg_catalog.cardinality(gids) = 0;
        if not told then
            raise notice 'the resync run of pair % waits for % open transaction(s) that wrote % or % before it (%)',
                a.pair, pg_catalog.cardinality(pids) + pg_catalog.cardinality(gids), a.users, a.contacts,
                usersync._writers_named(pids, gids);
            told := true;
        end if;
        if usersync._waits_for_me(pids) then
            raise exception using errcode = '40P01',
                message = pg_catalog.format('a resync run of pair %L would wait for a transaction that waits for it',
                                            a.pair),
                detail = pg_catalog.format('Sessions %s wrote %s or %s before the run and wait, directly or through '
                                           'others, for a lock this transaction holds.',
                                           pg_catalog.array_to_string(pids, ', '), a.users, a.contacts),
                hint = 'Run the resync in a transaction of its own.';
        end if;
        if pg_catalog.current_setting('lock_timeout')::pg_catalog.interval > '0'
           and pg_catalog.clock_timestamp() - since > pg_catalog.current_setting('lock_timeout')::pg_catalog.interval then
            raise exception using errcode = '55P03',
                message = pg_catalog.format('a resync run of pair %L waits for transactions that wrote %s or %s '
                                            'before it started', a.pair, a.users, a.contacts),
                detail = pg_catalog.format('Transactions of %s may have synced their rows with the mapping before the '
                                           'current one.', usersync._writers_named(pids, gids)),
                hint = 'Let them finish (pg_stat_activity shows the sessions, pg_prepared_xacts the prepared '
                       'transactions), then run it again.';
        end if;
        perform pg_catalog.pg_sleep(0.01);
    end loop;
end
$$;

create or replace function usersync.resync_step(batch_size integer default 1000, pair text default null)
returns table (done boolean, batch_synced bigint, batch_changed bigint, batch_failed bigint,
               synced bigint, changed bigint, failed bigint, total bigint)
language plpgsql
security definer
set search_path = pg_catalog, pg_temp
-- The next batch's ids come from the links' primary key, a range after the cursor, whatever the
-- statistics (see the generated refresh function). The cursor is kept as text and read back in
-- the key's type, under the same settings whoever runs the next batch.
set enable_seqscan = off
set datestyle = 'ISO, YMD' set intervalstyle = 'postgres' set timezone = 'UTC' set extra_float_digits = 1
set bytea_output = 'hex' set lc_monetary = 'C' set xmloption = 'content' set xmlbinary = 'base64'
set default_text_search_config = 'pg_catalog.simple' set timezone_abbreviations = 'Default' set array_nulls = on
as $$
#variable_conflict use_column
declare
    a usersync.attachments := usersync._pair(resync_step.pair);
    links text := usersync._links_table(a.id);
    ukt text := usersync._key_type(a.users, a.user_key);
    -- (false: the batch's links are not stamped; the run's cursor says it went past them)
    refresh text := pg_catalog.format('select r.synced, r.changed from usersync.%I($1::%s[], false) r',
                                      '_g' || a.id || '_refresh', ukt);
    st usersync.resync_state;
    ids text[];
    ok bigint := 0;
    rewritten bigint := 0;
    bad bigint := 0;
    r record;
    uid text;
    d record;
    e_state text;
    e_msg text;
    n bigint;
    covered boolean;
    awaited bigint;
    current_version bigint;
begin
    if batch_size is null or batch_size < 1 then
        raise exception using errcode = 'US006', message = pg_catalog.format('invalid batch size %s', batch_size),
            hint = 'Pass a positive number of pairs per batch, e.g. 1000.';
    end if;
    -- A call that will start a run waits first (usersync._await_writers), holding no lock of the
    -- engine's: a transaction it waits for may want one (to change the mapping, to run a batch).
    -- A run on the mapping a finished run already waited for needs no wait.
    current_version := (select s.version from usersync.mapping_state s where s.pair = a.pair);
    select * into st from usersync.resync_state x where x.pair = a.pair;
    if not found or st.mapping_version <> current_version then
        perform usersync._await_writers(a);
        awaited := current_version;
    end if;
    lock table usersync.config_lock in share mode;
    current_version := (select s.version from usersync.mapping_state s where s.pair = a.pair);  -- (now it holds)
    -- One run at a time per pair: the state row is the run's lock as well as its cursor.
    select * into st from usersync.resync_state x where x.pair = a.pair for update;
    if found and st.finished_at is null and st.owner_pid is distinct from pg_catalog.pg_backend_pid()
       and exists (select from pg_catalog.pg_stat_activity x where x.pid = st.owner_pid) then
        raise exception using errcode = 'US009',
            message = pg_catalog.format('a resync run of pair %L is in progress in session %s (started %s, %s of %s pairs done)',
                                        a.pair, st.owner_pid, st.started_at, st.synced + st.failed, st.total),
            detail = 'Two runs side by side would each start the other over.',
            hint = pg_catalog.format('Wait for it to finish; to take it over, end that session first: '
                                     'SELECT pg_terminate_backend(%s)', st.owner_pid);
    end if;
    -- A finished run, or none: start one. A run whose mapping changed between two batches starts
    -- over too, or its earlier batches would stay on the old mapping when it reports finished.
    if not found or st.finished_at is not null or st.mapping_version <> current_version then
        -- (the mapping changed since the wait above, or another run finished on an older one)
        if awaited is distinct from current_version and (not found or st.mapping_version <> current_version) then
            perform usersync._await_writers(a);
        end if;
        execute pg_catalog.format('select count(*) from %s l where l.active', links) into n;
        insert into usersync.resync_state as x (pair, started_at, mapping_version, after_user_id, total, owner_pid)
        values (a.pair, pg_catalog.now(), current_version,
                null, n, pg_catalog.pg_backend_pid())
        on conflict (pair) do update
           set started_at = excluded.started_at, finished_at = null, mapping_version = excluded.mapping_version,
               after_user_id = null, total = excluded.total, synced = 0, changed = 0, failed = 0,
               owner_pid = excluded.owner_pid
        returning * into st;
    end if;

    -- Two forms, not "($1 is null or l.user_id > $1)": with the OR the cursor is no index range,
    -- and every batch read the links from the start (1,000,000 pairs: 113 s instead of 25 s).
    if st.after_user_id is null then
        execute pg_catalog.format('select array(select l.user_id::pg_catalog.text from %s l'
                                  ' where l.active order by l.user_id limit $1)', links)
           into ids using resync_step.batch_size;
    else
        execute pg_catalog.format('select array(select l.user_id::pg_catalog.text from %s l'
                                  ' where l.active and l.user_id > $1::%s order by l.user_id limit $2)', links, ukt)
           into ids using st.after_user_id, resync_step.batch_size;
    end if;
    if pg_catalog.cardinality(ids) = 0 then
        update usersync.resync_state x set finished_at = pg_catalog.now() where x.pair = a.pair returning * into st;
        -- Every pair went through this run on the current mapping (a change restarts the run):
        -- each one is up to date but those it marked failed, and with none, every one is.
        covered := exists (select from usersync.mapping_state s
                            where s.pair = a.pair and s.covered_version = st.mapping_version);
        update usersync.mapping_state s
           set covered_version = st.mapping_version,
               synced_version = case when st.failed = 0 then st.mapping_version else s.synced_version end
         where s.pair = a.pair;
        -- The single-row path of the update trigger now takes the links this run went past
        -- (usersync._generate writes that test in, rather than read the mapping state per call).
        if not covered then
            perform usersync._generate(a.pair);
        end if;
        return query select true, 0::bigint, 0::bigint, 0::bigint, st.synced, st.changed, st.failed, st.total;
        return;
    end if;

    begin
        execute refresh into ok, rewritten using ids;
    exception when data_exception or integrity_constraint_violation or sqlstate 'US007' then
        -- Some pair in the batch holds a value its target cannot take: redo the batch pair by
        -- pair so the others still sync, and record each failure with its field.
        ok := 0;
        rewritten := 0;
        foreach uid in array ids loop
            begin
                execute refresh into r using array[uid];
                ok := ok + r.synced;
                rewritten := rewritten + r.changed;
            exception when data_exception or integrity_constraint_violation or sqlstate 'US007' then
                get stacked diagnostics e_state = returned_sqlstate, e_msg = message_text;
                -- The run's cursor goes past this pair: its link says it is not up to date. (The
                -- link before sync_errors, as every writer of both takes them.)
                execute pg_catalog.format('update %s l set mapping_version = 0 where l.user_id = $1::%s', links, ukt)
                  using uid;
                select * into d from usersync._diagnose(a.pair, uid);
                insert into usersync.sync_errors as e (pair, user_id, contact_id, field, sqlstate, message)
                values (a.pair, uid, d.contact_id,
                        case when d.user_field is not null then d.user_field || ' -> ' || d.contact_field end,
                        coalesce(d.sqlstate, e_state), coalesce(d.message, e_msg))
                on conflict (pair, user_id) do update
                   set contact_id = excluded.contact_id, field = excluded.field, sqlstate = excluded.sqlstate,
                       message = excluded.message, occurred_at = pg_catalog.now();
                bad := bad + 1;
            end;
        end loop;
        -- A pair of the mapping may now be stale: the triggers' set-based path then stamps it and
        -- clears its failure when its user's write syncs it (an earlier clean run left synced_version
        -- at the mapping's version, and the path that trusts it does neither).
        if bad > 0 then
            update usersync.mapping_state s set synced_version = least(s.synced_version, st.mapping_version - 1)
             where s.pair = a.pair;
        end if;
    end;

    update usersync.resync_state x
       set after_user_id = ids[pg_catalog.cardinality(ids)], synced = x.synced + ok, changed = x.changed + rewritten,
           failed = x.failed + bad, owner_pid = pg_catalog.pg_backend_pid()  -- resuming an interrupted run takes it over
     where x.pair = a.pair
    returning * into st;
    return query select false, ok, rewritten, bad, st.synced, st.changed, st.failed, st.total;
end
$$;
comment on function usersync.resync_step(integer, text) is
    'One batch of "Update all synchronized users" for a pair (starts a run or continues the unfinished one); commit after each call';

-- Transaction control is not allowed in SECURITY DEFINER procedures, so this one runs as the
-- caller (who needs EXECUTE on resync_step) and holds no privilege of its own.
create or replace procedure usersync.resync_all(batch_size integer default 1000, pair text default null)
language plpgsql
as $$
declare
    r record;
begin
    loop
        select * into r from usersync.resync_step(batch_size, pair);
        commit;
        exit when r.done;
    end loop;
end
$$;
comment on procedure usersync.resync_all(integer, text) is
    '"Update all synchronized users": re-applies the mapping to every pair of rows of a pair of tables, committing each batch; resumes an interrupted run. CALL it outside a transaction block.';

create or replace function usersync.set_sync_source(user_id anycompatible, source text, pair text default null)
returns void
language plpgsql
security definer
set search_path = pg_catalog, pg_temp
as $$
begin
    perform usersync._check_key_type(pg_catalog.pg_typeof(user_id));  -- (see usersync.sync_users)
    perform usersync._set_sync_source(set_sync_source.pair, (usersync._keys_in_one_format(array[user_id]))[1],
                                      set_sync_source.source);
end
$$;
comment on function usersync.set_sync_source(anycompatible, text, text) is
    'Reverses a pair (''contact'': the contact becomes the data source) or restores it (''user'')';

create or replace function usersync._set_sync_source(p_pair text, p_user_id text, p_source text)
returns void
language plpgsql
security definer
set search_path = pg_catalog, pg_temp
as $$
declare
    a usersync.attachments := usersync._pair(p_pair);
    links text := usersync._links_table(a.id);
    ukt text := usersync._key_type(a.users, a.user_key);
    l record;
    linked boolean := false;
    found_user boolean;
    other text;
begin
    if p_user_id is null then
        raise exception using errcode = 'US006', message = 'the user id is NULL',
            hint = 'Pass the id of a user whose synchronization is on.';
    end if;
    if p_source is null or p_source not in ('user', 'contact') then
        raise exception using errcode = 'US006',
            message = pg_catalog.format('invalid synchronization source %L', p_source),
            hint = 'Use ''user'' (the user is the data source, the default) or ''contact'' (reversed).';
    end if;
    perform usersync._user_ids(a, array[p_user_id]);  -- a valid key of the pair, or US006
    -- (before the check below: an attach of a second pair checks for reversed pairs under it)
    -- Exclusive, as a configuration change takes it (polled, not queued): a direction changes
    -- only while no sync_users or resync batch runs. They read the directions (which of a pair's
    -- rows is its source, to lock first) under their SHARE lock; a reversal committed while one
    -- waited for a row made it lock that pair's user, now its target, before its contact.
    perform usersync._lock_config_exclusive();
    -- The engine's writes to a users table skip every pair's triggers: a contact that wrote its
    -- user would leave the user's other contacts behind. So a users table feeding several pairs
    -- is the source of all of them.
    if p_source = 'contact' then
        select x.pair into other from usersync.attachments x where x.users = a.users and x.pair <> a.pair
         order by x.pair limit 1;
        if found then
            raise exception using errcode = 'US006',
                message = pg_catalog.format('pairs of %s cannot be reversed: the table feeds pairs %L and %L',
                                            a.users, a.pair, other),
                detail = 'A contact that wrote its user would leave the user''s contacts in the other pairs behind.',
                hint = 'Reverse pairs only where the users table feeds one pair.';
        end if;
    end if;
    -- Lock the pair source first (as every writer does), then re-read: the direction may have
    -- changed while this waited.
    loop
        execute pg_catalog.format('select l.user_id, l.contact_id, l.source from %s l where l.user_id = $1::%s and l.active',
                                  links, ukt) into l using p_user_id;
        if l.user_id is null then
            exit;
        end if;
        execute pg_catalog.format('select usersync.%I($1, $2, $3)', '_g' || a.id || '_lock_pair')
          using l.user_id, l.contact_id, l.source;
        execute pg_catalog.format('select exists (select from %s x where x.user_id = $1::%s and x.active and x.source = $2)',
                                  links, ukt) into linked using p_user_id, l.source;
        exit when linked;
    end loop;
    if not linked then
        execute pg_catalog.format('select exists (select from %s u where u.%I = $1::%s)', a.users, a.user_key, ukt)
          into found_user using p_user_id;
        if not found_user then
            raise exception using errcode = 'US006',
                message = pg_catalog.format('user %s does not exist', p_user_id),
                hint = pg_catalog.format('Pass the id of an existing user of %s.', a.users);
        end if;
        raise exception using errcode = 'US006',
            message = pg_catalog.format('user %s has no synchronized contact', p_user_id),
            hint = case when a.switch_column is null then 'Synchronize it first: SELECT usersync.sync_users()'
                        else 'Switch "Synchronize user to contact module" on for the user first.' end;
    end if;
    execute pg_catalog.format('update %s l set source = $2 where l.user_id = $1::%s', links, ukt)
      using p_user_id, p_source;
    -- Leave the pair consistent with its (new) source at once.
    execute pg_catalog.format('select usersync.%I(array[$1::%s], true)', '_g' || a.id || '_refresh', ukt) using p_user_id;
end
$$;
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
create or replace function usersync._mapped_field_types(p_pair text)
returns jsonb language sql stable set search_path = pg_catalog, pg_temp as $$
    select coalesce(pg_catalog.jsonb_object_agg(f.module || '.' || f.field, f.data_type), '{}')
      from usersync.field_mapping m
      join usersync.metadata_fields f
        on f.pair = m.pair
       and ((f.module = 'users' and f.field = m.user_field) or (f.module = 'contacts' and f.field = m.contact_field))
     where m.pair = p_pair
$$;

-- Runs as the installing role, inside the DDL guard's event triggers: the pairs given (NULL:
-- every pair), so that a command on one pair's tables costs the same with one pair or a thousand.
create or replace function usersync._check_dependencies(p_missing_triggers_allowed boolean default false,
                                                        p_pairs text[] default null)
returns void
language plpgsql
set search_path = pg_catalog, pg_temp
set jit = off  -- catalog queries the planner overestimates: compiling them would cost more than running them
set quote_all_identifiers = off  -- format_type() is compared with what the generator recorded
as $$
declare
    m record;
    t record;
begin
    for m in select mo.pair, mo.pair_id, mo.module, mo.relation, mo.key_column, mo.switch_column
               from usersync.modules mo where p_pairs is null or mo.pair = any(p_pairs)
              order by mo.pair_id, mo.module loop
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
        -- The engine's policy, as usersync.attach() made it (missing only while attaching).
        if (exists (select from pg_catalog.pg_policy p where p.polrelid = m.relation and p.polname = 'usersync_engine')
            and not usersync._engine_policy_as_made(m.relation))
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
                   from usersync._engine_triggers(m.pair_id) et
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
                hint = pg_catalog.format('To stop synchronizing the pair: SELECT usersync.detach(%L).', m.pair);
        end loop;
    end loop;
    for m in select fm.pair, fm.user_field, fm.contact_field, s.field_types as recorded
               from usersync.field_mapping fm join usersync.mapping_state s on s.pair = fm.pair
              where p_pairs is null or fm.pair = any(p_pairs)
              order by 1, 2 loop
        for t in select x.module, x.field from (values ('users', m.user_field), ('contacts', m.contact_field)) x(module, field)
                  where usersync._field_type(m.pair, x.module, x.field)
                        is distinct from m.recorded ->> (x.module || '.' || x.field) loop
            raise exception using errcode = 'US005',
                message = pg_catalog.format('%s field "%s" is used by the field mapping (%s -> %s) and cannot be %s',
                                            rtrim(t.module, 's'), t.field, m.user_field, m.contact_field,
                                            case when usersync._field_type(m.pair, t.module, t.field) is null then 'dropped or renamed'
                                                 else 'retyped' end),
                hint = pg_catalog.format('Unmap it first: DELETE FROM usersync.field_mapping WHERE pair = %L AND user_field = %L',
                                         m.pair, m.user_field);
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
set jit = off  -- catalog queries the planner overestimates: compiling them would cost more than running them
as $$
declare
    o record;
begin
    if exists (select from pg_catalog.pg_event_trigger_dropped_objects() d
                where d.object_type = 'schema' and d.object_name = 'usersync') then
        return;  -- uninstalling
    end if;
    for o in select d.* , mo.module, mo.relation, mo.pair from pg_catalog.pg_event_trigger_dropped_objects() d
               join usersync.modules mo on mo.relation = d.objid and d.classid = 'pg_catalog.pg_class'::pg_catalog.regclass loop
        if o.object_type = 'table' then
            raise exception using errcode = 'US005',
                message = pg_catalog.format('table %s is the %s table of pair %L synchronized by usersync and cannot be dropped',
                                            o.object_identity, o.module, o.pair),
                hint = pg_catalog.format('Detach the pair first: SELECT usersync.detach(%L).', o.pair);
        end if;
    end loop;
    -- A pair's links table goes with its pair (usersync.detach), not on its own.
    for o in select d.object_identity, a.pair from pg_catalog.pg_event_trigger_dropped_objects() d
               join usersync.attachments a on d.object_type = 'table' and d.schema_name = 'usersync'
                                          and d.object_name = 'links_' || a.id loop
        raise exception using errcode = 'US005',
            message = pg_catalog.format('table %s holds the links of pair %L and cannot be dropped', o.object_identity, o.pair),
            hint = pg_catalog.format('Detach the pair instead: SELECT usersync.detach(%L).', o.pair);
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
    -- (the pairs of the table a trigger, constraint or policy was on; an index names no table:
    -- every pair then)
    if exists (select from pg_catalog.pg_event_trigger_dropped_objects() d
                where d.object_type in ('trigger', 'index', 'table constraint', 'policy')) then
        perform usersync._check_dependencies(
            p_missing_triggers_allowed => coalesce(pg_catalog.current_setting('usersync.ddl_by_superuser', true), '')
                                          = 'true',
            p_pairs => case when exists (select from pg_catalog.pg_event_trigger_dropped_objects() d
                                          where d.object_type = 'index') then null
                            else array(select distinct mo.pair
                                         from pg_catalog.pg_event_trigger_dropped_objects() d
                                         join usersync.modules mo
                                           on mo.relation = pg_catalog.to_regclass(
                                                  pg_catalog.quote_ident(d.address_names[1]) || '.'
                                                  || pg_catalog.quote_ident(d.address_names[2]))
                                        where d.object_type in ('trigger', 'table constraint', 'policy')) end);
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
    select distinct mo.relation from usersync.modules mo where mo.relation = pg_catalog.pg_event_trigger_table_rewrite_oid();
end
$$;

-- After a module table was rewritten: its keys and switches must still match the links (else
-- refused). Mapped values may have changed too: usersync._on_ddl_end then syncs every pair.
-- It reads the application's tables, so it runs as the engine (SECURITY DEFINER): as the
-- installer, an index predicate or a policy of the tables' owner would run as the installer (a
-- superuser), which the owner could set off with DDL on its own table.
create or replace function usersync._check_rewrite(p_pair text)
returns void
language plpgsql
security definer
set search_path = pg_catalog, pg_temp
as $$
declare
    a usersync.attachments := usersync._pair(p_pair);
    broken boolean;
begin
    execute pg_catalog.format(
        'select exists (select from %6$s l where not exists (select from %1$s u where u.%2$I = l.user_id))'
        ' or exists (select from %6$s l where not exists (select from %3$s c where c.%4$I = l.contact_id))'
        ' or exists (select from %6$s l join %1$s u on u.%2$I = l.user_id where l.active <> %5$s)',
        a.users, a.user_key, a.contacts, a.contact_key,
        coalesce('u.' || pg_catalog.quote_ident(a.switch_column), 'true'), usersync._links_table(a.id)) into broken;
    if broken then
        raise exception using errcode = 'US005',
            message = pg_catalog.format('this ALTER TABLE rewrote keys or switches of synchronized rows of pair %L', a.pair),
            detail = 'The links of usersync and the rows they pair would no longer match.',
            hint = 'Change keys and switches with UPDATE (keys of linked rows cannot change), not with ALTER ... USING.';
    end if;
end
$$;

create or replace function usersync._on_ddl_end()
returns event_trigger
language plpgsql
security definer
set search_path = pg_catalog, pg_temp
set jit = off  -- catalog queries the planner overestimates: compiling them would cost more than running them
set quote_all_identifiers = off
as $$
declare
    concerned text[];
    rewritten regclass[];
    retyped boolean;
    p text;
    id integer;
begin
    -- Functions created or replaced (the generator's, above all) concern no pair.
    if not exists (select from pg_catalog.pg_event_trigger_ddl_commands() c
                    where c.classid <> 'pg_catalog.pg_proc'::pg_catalog.regclass) then
        return;
    end if;
    -- Any table joining an inheritance or partition tree with a module (ATTACH PARTITION and
    -- INHERIT name the parent, which is not a module).
    if exists (select from pg_catalog.pg_inherits i join usersync.modules mo on mo.relation in (i.inhrelid, i.inhparent)) then
        perform usersync._check_dependencies(p_missing_triggers_allowed => true,
                                             p_pairs => array(select mo.pair from pg_catalog.pg_inherits i
                                                                join usersync.modules mo
                                                                  on mo.relation in (i.inhrelid, i.inhparent)));
    end if;
    -- The pairs a command concerns: on one of their tables, on an index, trigger, rule or policy
    -- of one, on its schema, or on the type of one of its columns.
    concerned := array(
        select distinct mo.pair
          from pg_catalog.pg_event_trigger_ddl_commands() c
          join usersync.modules mo
            on mo.relation = case c.classid
                 when 'pg_catalog.pg_class'::pg_catalog.regclass then
                     coalesce((select i.indrelid from pg_catalog.pg_index i where i.indexrelid = c.objid), c.objid)
                 when 'pg_catalog.pg_trigger'::pg_catalog.regclass then
                     (select t.tgrelid from pg_catalog.pg_trigger t where t.oid = c.objid)
                 when 'pg_catalog.pg_rewrite'::pg_catalog.regclass then
                     (select r.ev_class from pg_catalog.pg_rewrite r where r.oid = c.objid)
                 when 'pg_catalog.pg_policy'::pg_catalog.regclass then
                     (select x.polrelid from pg_catalog.pg_policy x where x.oid = c.objid)
               end
            or (c.classid = 'pg_catalog.pg_namespace'::pg_catalog.regclass
                and c.objid = (select r.relnamespace from pg_catalog.pg_class r where r.oid = mo.relation))
            or (c.classid = 'pg_catalog.pg_type'::pg_catalog.regclass
                and exists (select from pg_catalog.pg_attribute a
                             where a.attrelid = mo.relation and a.attnum > 0 and a.atttypid = c.objid))
         order by 1);
    if pg_catalog.cardinality(concerned) = 0 then
        return;
    end if;
    -- ALTER TYPE of a column's type (an enum value renamed): stored values read differently now.
    retyped := exists (select from pg_catalog.pg_event_trigger_ddl_commands() c
                        where c.classid = 'pg_catalog.pg_type'::pg_catalog.regclass);
    with done as (delete from usersync.rewrites w where w.xid = pg_catalog.pg_current_xact_id() returning w.relation)
    select array(select distinct d.relation from done d) into rewritten;
    -- A missing engine trigger is the drop guard's business (a superuser may drop one); here
    -- triggers are being created, possibly one by one by usersync.attach().
    perform usersync._check_dependencies(p_missing_triggers_allowed => true, p_pairs => concerned);
    perform usersync._lock_config_exclusive();
    foreach p in array concerned loop
        -- The engine's own triggers being created (attach, repair) change nothing it generates.
        continue when not exists (select from pg_catalog.pg_event_trigger_ddl_commands() c
                                   where not (c.command_tag = 'CREATE TRIGGER'
                                              and exists (select from pg_catalog.pg_trigger tg
                                                            join pg_catalog.pg_proc f on f.oid = tg.tgfoid
                                                           where tg.oid = c.objid
                                                             and f.pronamespace = 'usersync'::pg_catalog.regnamespace)));
        perform usersync._generate(p);
        -- A foreign key that restricts deleting a user was added to an attached pair: its
        -- users need the trigger that deletes their contacts first (not while attach is still
        -- creating the pair's triggers one by one).
        id := (usersync._pair(p)).id;
        if usersync._fk_restricts(id)
           and not exists (select from pg_catalog.pg_trigger tg
                            where tg.tgfoid = pg_catalog.to_regprocedure('usersync._g' || id || '_on_users_delete_before()'))
           and not exists (select from usersync._engine_triggers(id) et
                            where et.fn <> 'usersync._g' || id || '_on_users_delete_before()'
                              and not exists (select from pg_catalog.pg_trigger tg
                                               where tg.tgfoid = pg_catalog.to_regprocedure(et.fn))) then
            perform usersync._attach_triggers(p);
        end if;
        if retyped or exists (select from usersync.attachments a
                               where a.pair = p and (a.users = any(rewritten) or a.contacts = any(rewritten))) then
            perform usersync._check_rewrite(p);
            perform usersync._sync_users(p, null);  -- values changed behind the triggers
        end if;
    end loop;
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
set jit = off  -- catalog queries the planner overestimates: compiling them would cost more than running them
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

-- The event triggers of the guard (usersync.doctor checks them, usersync.repair restores them).
create or replace function usersync._event_triggers()
returns table (name text, event text, fn text)
language sql immutable set search_path = pg_catalog, pg_temp as $$
    values ('usersync_guard_drop', 'sql_drop', 'usersync._on_sql_drop()'),
           ('usersync_guard_drop_start', 'ddl_command_start', 'usersync._on_ddl_start()'),
           ('usersync_guard_rewrite', 'table_rewrite', 'usersync._on_table_rewrite()'),
           -- No tag filter: ALTER VIEW / MATERIALIZED VIEW / FOREIGN TABLE ... RENAME COLUMN work on a
           -- plain table too, and ALTER TYPE changes what stored values read as. The function tells
           -- which commands concern a pair.
           ('usersync_guard_alter', 'ddl_command_end', 'usersync._on_ddl_end()'),
           ('usersync_guard_engine', 'ddl_command_end', 'usersync._on_engine_ddl()')
$$;

-- Creates (again) every event trigger of the guard, enabled. Creating event triggers needs a
-- superuser; run by the install and by usersync.repair().
create or replace function usersync._install_event_triggers()
returns void
language plpgsql
set search_path = pg_catalog, pg_temp
as $$
declare
    t record;
begin
    if not (select r.rolsuper from pg_catalog.pg_roles r where r.rolname = current_user) then
        raise warning using
            message = 'usersync: installed without the DDL guard: creating event triggers needs a superuser',
            detail = 'Off without it: refusing DDL that breaks the engine (dropping or retyping a mapped column, '
                     'disabling its triggers, rules, ...) and regenerating its code when an attached table changes. '
                     'Instead, the generated code checks the tables'' columns on every write and fails (US005) when '
                     'they changed; usersync doctor reports it and usersync repair generates the code again.',
            hint = 'A superuser can add the guard later: usersync repair.';
        return;
    end if;
    for t in select * from usersync._event_triggers() loop
        execute pg_catalog.format('drop event trigger if exists %I', t.name);
        execute pg_catalog.format('create event trigger %I on %s execute function %s', t.name, t.event, t.fn);
    end loop;
end
$$;

do $$ begin perform usersync._install_event_triggers(); end $$;
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
-- 90_install.sql: the views over every pair, ownership, grants, and regeneration of each pair.
-- Safe to run again: it changes nothing that is already as it should be, and keeps the pairs,
-- their mapping, settings and links. It creates nothing outside the usersync schema (the pairs'
-- triggers and policies are usersync.attach's, 25_pairs.sql).

do $$ begin perform usersync._rebuild_views(); end $$;

comment on view usersync.synchronized_contacts is
    'User contacts (the "profile icon"), keys as text; up_to_date is false when the mapping changed since the pair was last synced';

create or replace view usersync.pairs as
select a.pair,
       a.users,
       a.contacts,
       a.user_key,
       a.contact_key,
       a.switch_column,
       a.shared_key,
       s.delete_contact_with_user,
       s.delete_user_with_contact,
       m.version as mapping_version,
       m.synced_version = m.version as all_up_to_date,
       a.attached_at,
       a.id
  from usersync.attachments a
  join usersync.settings s on s.pair = a.pair
  join usersync.mapping_state m on m.pair = a.pair;
comment on view usersync.pairs is 'The attached pairs of tables, with their keys, switch and delete settings';

-- The static functions the engine owns (besides each pair's generated ones).
create or replace function usersync._engine_functions()
returns pg_catalog.regprocedure[]
language sql stable set search_path = pg_catalog, pg_temp as $$
    select array['usersync._check_mapping_row()',
           'usersync._mapping_changed()',
           'usersync.default_field_mapping(text)',
           'usersync.reset_field_mapping(text)',
           'usersync._generate(text)',
           'usersync._diagnose(text, text)',
           'usersync._explain_failure(text, text[])',
           'usersync._field_fits(text, text[], text, text)',
           'usersync._sync_users(text, text[])',
           'usersync.sync_users(anycompatiblearray, text)',
           'usersync.sync_users(text)',
           'usersync.resync_step(integer, text)',
           'usersync._set_sync_source(text, text, text)',
           'usersync.set_sync_source(anycompatible, text, text)',
           'usersync.preview_resync(integer, text)',
           'usersync.doctor(text)',
           'usersync._check_rewrite(text)']::pg_catalog.regprocedure[]
$$;

-- Who owns what (docs/sql-api.md, "Ownership"), set by the install and again by usersync.repair()
-- (a restore with --no-owner, by a role that is not a superuser, leaves every function to the
-- restoring role: docs/install.md).
create or replace function usersync._set_owners()
returns void
language plpgsql
set search_path = pg_catalog, pg_temp
as $$
declare
    f record;
begin
    -- The engine: owns every function that writes, so that current_user inside them is
    -- usersync_engine, which is what the guards recognise; the generated ones included.
    for f in select p.oid::pg_catalog.regprocedure as fn, p.proowner = 'usersync_engine'::pg_catalog.regrole as owned
               from pg_catalog.pg_proc p
              where p.pronamespace = 'usersync'::pg_catalog.regnamespace
                and (p.proname ~ '^_g[0-9]+_' or p.oid = any(usersync._engine_functions()))
                and (p.proowner <> 'usersync_engine'::pg_catalog.regrole or not p.prosecdef
                     or not coalesce('search_path=pg_catalog, pg_temp' = any(p.proconfig), false)) loop
        -- (and SECURITY DEFINER with the pinned path: code running as the engine could have
        -- changed that where the DDL guard is off, and repair may run as a superuser)
        execute pg_catalog.format('alter function %s security definer set search_path = pg_catalog, pg_temp', f.fn);
        if not f.owned then
            execute pg_catalog.format('alter function %s owner to usersync_engine', f.fn);
        end if;
    end loop;
    -- Functions that run as their caller, event-trigger functions above all, belong to the
    -- installing role and never to the engine (60_ddl_guard.sql explains why). Named here because
    -- an upgrade from 0.1, where the engine owned them, keeps the owner through CREATE OR REPLACE.
    for f in select p.oid::pg_catalog.regprocedure as fn
               from pg_catalog.pg_proc p
              where p.proowner = 'usersync_engine'::pg_catalog.regrole
                and p.oid in ('usersync._check_dependencies(boolean, text[])'::pg_catalog.regprocedure,
                              'usersync._on_sql_drop()'::pg_catalog.regprocedure,
                              'usersync._on_ddl_end()'::pg_catalog.regprocedure,
                              'usersync._on_ddl_start()'::pg_catalog.regprocedure,
                              'usersync._on_table_rewrite()'::pg_catalog.regprocedure,
                              'usersync._on_engine_ddl()'::pg_catalog.regprocedure) loop
        execute pg_catalog.format('alter function %s owner to %I', f.fn, current_user);
    end loop;
end
$$;
do $$ begin perform usersync._set_owners(); end $$;

grant select on usersync.attachments, usersync.settings, usersync.field_mapping, usersync.mapping_state,
                usersync.modules to usersync_engine;
grant select, insert, update, delete on usersync.sync_errors, usersync.resync_state to usersync_engine;
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

grant select on usersync.attachments, usersync.pairs, usersync.modules, usersync.settings, usersync.field_mapping,
                usersync.mapping_state, usersync.links, usersync.sync_errors, usersync.resync_state,
                usersync.metadata_fields, usersync.synchronized_contacts to usersync_admin;
grant insert, update, delete, truncate on usersync.field_mapping to usersync_admin;
-- (after the administrators' grant, as an upgrade from 0006 orders the view's privileges)
grant select on usersync.synchronized_contacts to usersync_engine;  -- (preview_resync counts the stale pairs)
-- Read by synchronized_contacts for whoever may read it; it only reads a key from text.
grant execute on function usersync._resync_cursor(text, text, anyelement) to public;
grant update (delete_contact_with_user, delete_user_with_contact) on usersync.settings to usersync_admin;
grant execute on function usersync.sync_users(anycompatiblearray, text), usersync.sync_users(text),
                          usersync.resync_step(integer, text), usersync.set_sync_source(anycompatible, text, text),
                          usersync.reset_field_mapping(text), usersync.default_field_mapping(text),
                          usersync.preview_resync(integer, text), usersync.doctor(text),
                          usersync._only_pair(),  -- (the default of field_mapping.pair)
                          usersync._table_fields(regclass, name, name)  -- (read by metadata_fields)
                       to usersync_admin;
grant execute on procedure usersync.resync_all(integer, text) to usersync_admin;

-- Every pair's generated code and triggers, as this version writes them (an upgrade changes them).
do $$
declare
    p text;
begin
    lock table usersync.config_lock in exclusive mode;
    for p in select a.pair from usersync.attachments a order by a.id loop
        perform usersync._attach_grants(p);
        perform usersync._generate(p);
        perform usersync._attach_triggers(p);
    end loop;
end
$$;
