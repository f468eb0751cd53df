-- 0004 (before the definition): from usersync 0.1-0.3, where the install owned one pair of tables
-- named in usersync.modules, to pairs attached by usersync.attach(). Only on such an install
-- (a fresh one has no usersync.modules table): the old catalog's rows are set aside in temporary
-- tables (0004 (after) moves them into the new catalog), the links table becomes pair 1's, and the old
-- code goes, with the event triggers and the engine's triggers that call it. Nothing of the
-- application's tables is touched but those triggers (recreated under their new names).
do $before$
declare
    t record;
begin
    if not exists (select from pg_catalog.pg_class c
                    where c.oid = pg_catalog.to_regclass('usersync.modules') and c.relkind = 'r') then
        return;
    end if;
    drop event trigger if exists usersync_guard_engine;
    drop event trigger if exists usersync_guard_alter;
    drop event trigger if exists usersync_guard_rewrite;
    drop event trigger if exists usersync_guard_drop_start;
    drop event trigger if exists usersync_guard_drop;
    for t in select tg.tgname, tg.tgrelid::pg_catalog.regclass as rel
               from pg_catalog.pg_trigger tg join pg_catalog.pg_proc p on p.oid = tg.tgfoid
              where p.pronamespace = 'usersync'::pg_catalog.regnamespace and not tg.tgisinternal
                and tg.tgrelid in (select m.relation from usersync.modules m) loop
        execute pg_catalog.format('drop trigger %I on %s', t.tgname, t.rel);
    end loop;
    drop view if exists usersync.synchronized_contacts;
    drop view if exists usersync.metadata_fields;
    -- (temporary copies, gone with the migration's transaction; the new tables have the old names)
    create temporary table usersync_old_modules on commit drop as select * from usersync.modules;
    create temporary table usersync_old_settings on commit drop as select * from usersync.settings;
    create temporary table usersync_old_field_mapping on commit drop as select * from usersync.field_mapping;
    create temporary table usersync_old_mapping_state on commit drop as select * from usersync.mapping_state;
    create temporary table usersync_old_sync_errors on commit drop as select * from usersync.sync_errors;
    create temporary table usersync_old_resync_state on commit drop as select * from usersync.resync_state;
    drop table usersync.modules, usersync.settings, usersync.field_mapping, usersync.mapping_state,
               usersync.sync_errors, usersync.resync_state cascade;
    -- The links keep their rows and their bigint keys: they become pair 1's table, named and
    -- indexed as usersync.attach() names a new pair's.
    alter table usersync.links rename to links_1;
    alter index usersync.links_pkey rename to links_1_pkey;
    alter index usersync.links_contact_id_key rename to links_1_contact_id_key;
    alter index usersync.links_reversed rename to links_1_user_id_idx;
    -- (the CHECK on source, and on 18 the named NOT NULL constraints; the keys' constraints
    -- were renamed with their indexes)
    for t in select k.conname from pg_catalog.pg_constraint k
              where k.conrelid = 'usersync.links_1'::pg_catalog.regclass
                and left(k.conname, 6) = 'links_' and left(k.conname, 8) <> 'links_1_' loop
        execute pg_catalog.format('alter table usersync.links_1 rename constraint %I to %I',
                                  t.conname, 'links_1_' || substr(t.conname, 7));
    end loop;
    -- The old code: every function of the schema (0004 defines them all again).
    for t in select p.oid::pg_catalog.regprocedure as fn, p.prokind from pg_catalog.pg_proc p
              where p.pronamespace = 'usersync'::pg_catalog.regnamespace loop
        execute pg_catalog.format('drop %s %s cascade', case t.prokind when 'p' then 'procedure' else 'function' end, t.fn);
    end loop;
end
$before$;

