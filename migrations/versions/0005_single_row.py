"""single-row path: an UPDATE of users costs two statements in the common case (the contact
update, and one probe of the links); key changes are checked by a row trigger that only rows
whose key changed reach; write counting only where something can swallow the engine's writes.

Revision ID: 0005
Revises: 0004

0005_single_row.sql is migrations/delta/0005_before.sql, sql/00-65 and sql/90_install.sql,
frozen (make freeze).
"""

from pyapp.migrate import earlier_frozen_sql, frozen_sql, run_sql

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None

SHA256 = "439e434f7976eef3f8bd754c12e1127f8300234cd4b865f714603610102209f2"


def upgrade() -> None:
    run_sql(frozen_sql(__file__, "0005_single_row.sql", sha256=SHA256))


def downgrade() -> None:
    # Back to 0004's code: this revision's trigger and its functions go (0004's definition, run
    # again by its own upgrade below, regenerates every pair as 0004 wrote it).
    run_sql("""
        do $$
        declare
            a record;
        begin
            for a in select id, users from usersync.attachments loop
                execute pg_catalog.format('drop trigger if exists %I on %s',
                                          'usersync_' || a.id || '_after_rekey', a.users);
                execute pg_catalog.format('drop function if exists usersync.%I()', '_g' || a.id || '_on_users_rekey');
            end loop;
        end
        $$;
        drop function if exists usersync._engine_triggers(integer);
        drop function if exists usersync._trigger_statement(text, text, regclass, text, text);
        drop function if exists usersync._engine_policy_as_made(regclass);
    """)
    run_sql(earlier_frozen_sql(__file__, "0004_pairs.py", "0004_pairs.sql"))
