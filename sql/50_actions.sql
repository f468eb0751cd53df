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
