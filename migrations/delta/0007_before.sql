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
