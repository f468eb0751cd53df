"""resync watermark: "Update all synchronized users" no longer stamps each link it goes past (a
third of a batch's time and WAL). A link is up to date when stamped with the current mapping
version, or when a resync run on that version went past it (mapping_state.covered_version for a
finished run, the cursor for the run in progress) and did not mark it failed (mapping_version 0).
Also: keys given to sync_users and set_sync_source in their own type are read back exactly
whatever the caller's settings (usersync._keys_as_text).

Revision ID: 0007
Revises: 0006

0007_resync_watermark.sql is migrations/delta/0007_before.sql, sql/00-65 and sql/90_install.sql,
frozen (python -m pyapp._freeze).
"""

from pyapp.migrate import earlier_frozen_sql, frozen_sql, run_sql

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None

SHA256 = "283cebfa1d3b5563306bc1a1b4bc15e6f97de7794cb8abd83a3faa357673f9fb"


def upgrade() -> None:
    run_sql(frozen_sql(__file__, "0007_resync_watermark.sql", sha256=SHA256))


def downgrade() -> None:
    # Back to 0006, where only a link's own stamp says it is up to date: the links a run went past
    # get that stamp first (nothing reads as stale that was not; keys compared as text under
    # digits that tell every float apart), then 0006's definition, run again, regenerates every
    # pair as 0006 wrote it and replaces the views (same columns: their privileges and the
    # application's views on them stay); this revision's objects go last.
    run_sql("""
        do $$
        declare
            a record;
        begin
            perform pg_catalog.set_config('extra_float_digits', '3', true);
            for a in select x.id, x.pair, x.users, x.user_key from usersync.attachments x loop
                execute pg_catalog.format(
                    'update %s l set mapping_version = s.version'
                    '  from usersync.synchronized_contacts v, usersync.mapping_state s'
                    ' where v.pair = %L and v.up_to_date and v.user_id = l.user_id::pg_catalog.text'
                    '   and s.pair = %L and l.mapping_version <> s.version',
                    usersync._links_table(a.id), a.pair, a.pair);
                -- (0006's definition makes the refresh of one argument: a call would be ambiguous)
                execute pg_catalog.format('drop function if exists usersync.%I(%s[], boolean)',
                                          '_g' || a.id || '_refresh', usersync._key_type(a.users, a.user_key));
            end loop;
        end
        $$;
    """)
    run_sql(earlier_frozen_sql(__file__, "0006_row_update.py", "0006_row_update.sql"))
    run_sql("""
        revoke select on usersync.synchronized_contacts from usersync_engine;
        drop function usersync._resync_cursor(text, text, anyelement);
        drop function usersync._await_writers(usersync.attachments);
        drop function usersync._writers_named(integer[], text[]);
        drop function usersync._waits_for_me(integer[]);
        drop function usersync._lock_generation(integer);
        drop function usersync._forget_failures(text, anycompatiblearray);
        drop function usersync._keys_in_one_format(anycompatiblearray);
        drop function usersync._keys_as_text(anycompatiblearray);
        alter table usersync.mapping_state drop column covered_version;
    """)
