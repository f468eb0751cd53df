"""security: pinned search paths, injection-proof code generation, engine-owned code never runs as
another role, counted writes, key changes refused, session-independent conversions, a
configuration lock only the engine can take, triggers recognised by their function.

Revision ID: 0003
Revises: 0002
"""

from pyapp.migrate import frozen_sql, run_sql, schema_absent, skipped_on_fresh_install

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None

SHA256 = "173d0858f127c548f9ddd063a8ff7ae770e949d7f515eebd665eeb5dbeca790a"


def upgrade() -> None:
    if skipped_on_fresh_install():
        return
    run_sql(frozen_sql(__file__, "0003_security.sql", sha256=SHA256))


def downgrade() -> None:
    if schema_absent():  # uninstalled by 0004's downgrade
        return
    # 0002's definition is idempotent (CREATE OR REPLACE, IF NOT EXISTS): re-applying it puts its
    # functions and event triggers back; what 0003 added on top is removed first.
    run_sql("drop event trigger if exists usersync_guard_engine;"
            " drop event trigger if exists usersync_guard_drop_start;"
            " drop event trigger if exists usersync_guard_rewrite;"
            " drop event trigger if exists usersync_guard_drop;"
            " drop event trigger if exists usersync_guard_alter;"
            " drop function if exists usersync._on_engine_ddl(), usersync._on_ddl_start(),"
            " usersync._on_table_rewrite(), usersync._check_rewrite(), usersync._engine_triggers(),"
            " usersync._gen_subst(text, jsonb), usersync._gen_body(text, jsonb), usersync._gen_fill(text, jsonb),"
            " usersync._gen_writes_can_vanish(regclass), usersync._gen_pins(),"
            " usersync._lost_write(regclass, text, bigint, bigint), usersync._gen_try(text, boolean),"
            " usersync._preview_assigned(text, regclass, text), usersync._preview_image(boolean, text, text, text),"
            " usersync._preview_error(text, text, anyelement), usersync._preview_sql(boolean, integer),"
            " usersync._check_dependencies(boolean);"
            " drop table if exists usersync.config_lock;"
            " drop policy if exists usersync_engine on public.users;"
            " drop policy if exists usersync_engine on public.contacts;"
            " drop function if exists usersync.preview_resync(integer), usersync._gen_contact_fields();"
            " drop view if exists usersync.metadata_fields;")  # 0002's has fewer columns
    run_sql(frozen_sql(__file__, "0002_engine.sql",
                       sha256="57106cabb26d0fcaf60afde5b4cc6f78aa82e61e6d91a75295642513e83f76c4"))
