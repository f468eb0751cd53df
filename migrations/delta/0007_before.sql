-- 0007 (before the definition): a resync run no longer stamps every link it goes past; the
-- mapping state records the version of the last run that finished (covered_version), and each
-- pair's refresh takes whether to stamp. Only objects of usersync's schema: the refresh of the
-- old signature goes (the definition generates the new one, and a call with one argument would
-- otherwise be ambiguous between the two).
alter table usersync.mapping_state add column if not exists covered_version bigint not null default 0;
do $before$
declare
    a record;
begin
    for a in select x.id, x.users, x.user_key from usersync.attachments x loop
        execute pg_catalog.format('drop function if exists usersync.%I(%s[])', '_g' || a.id || '_refresh',
                                  usersync._key_type(a.users, a.user_key));
    end loop;
end
$before$;
