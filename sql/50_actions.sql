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
