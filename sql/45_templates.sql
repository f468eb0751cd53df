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
