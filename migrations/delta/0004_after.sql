-- 0004 (after the definition, before 90_install.sql): the pair of usersync 0.1-0.3 becomes pair 1,
-- with its mapping, mapping version, settings, links, sync errors and resync cursor as they were.
-- 90_install.sql then generates its code and puts its triggers back.
do $after$
begin
    if pg_catalog.to_regclass('pg_temp.usersync_old_modules') is null then
        return;
    end if;
    insert into usersync.attachments (id, pair, users, contacts, user_key, contact_key, switch_column, shared_key)
    overriding system value
    select 1, k.relname, u.relation, c.relation, u.key_column, c.key_column, u.switch_column, false
      from pg_temp.usersync_old_modules u, pg_temp.usersync_old_modules c, pg_catalog.pg_class k
     where u.module = 'users' and c.module = 'contacts' and k.oid = c.relation;
    perform pg_catalog.setval(pg_catalog.pg_get_serial_sequence('usersync.attachments', 'id'), 1);
    insert into usersync.settings (pair, delete_contact_with_user, delete_user_with_contact)
    select a.pair, s.delete_contact_with_user, s.delete_user_with_contact
      from usersync.attachments a, pg_temp.usersync_old_settings s;
    insert into usersync.mapping_state (pair, version, changed_at, field_types, synced_version, mapping)
    select a.pair, s.version, s.changed_at, s.field_types, s.synced_version, s.mapping
      from usersync.attachments a, pg_temp.usersync_old_mapping_state s;
    -- (the mapping is what mapping_state records: inserting it bumps no version)
    insert into usersync.field_mapping (pair, user_field, contact_field)
    select a.pair, m.user_field, m.contact_field from usersync.attachments a, pg_temp.usersync_old_field_mapping m;
    insert into usersync.sync_errors (pair, user_id, contact_id, field, sqlstate, message, occurred_at)
    select a.pair, e.user_id::pg_catalog.text, e.contact_id::pg_catalog.text, e.field, e.sqlstate, e.message, e.occurred_at
      from usersync.attachments a, pg_temp.usersync_old_sync_errors e;
    insert into usersync.resync_state (pair, started_at, finished_at, mapping_version, after_user_id, total, synced,
                                       changed, failed, owner_pid)
    select a.pair, r.started_at, r.finished_at, r.mapping_version, r.after_user_id::pg_catalog.text, r.total, r.synced,
           r.changed, r.failed, r.owner_pid
      from usersync.attachments a, pg_temp.usersync_old_resync_state r;
    drop table pg_temp.usersync_old_modules, pg_temp.usersync_old_settings, pg_temp.usersync_old_field_mapping,
               pg_temp.usersync_old_mapping_state, pg_temp.usersync_old_sync_errors, pg_temp.usersync_old_resync_state;
    execute pg_catalog.format('comment on table usersync.links_1 is %L',
                              pg_catalog.format('Links of pair %s (usersync.links shows every pair''s)',
                                                (select a.pair from usersync.attachments a where a.id = 1)));
    revoke all on usersync.links_1 from usersync_admin;
    grant select on usersync.links_1 to usersync_admin;
end
$after$;

