"""engine: mapping, links, generated sync functions, triggers on the modules, DDL guard, grants.

Revision ID: 0002
Revises: 0001
"""

from pyapp.migrate import frozen_sql, run_sql, schema_absent, skipped_on_fresh_install

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None

SHA256 = "57106cabb26d0fcaf60afde5b4cc6f78aa82e61e6d91a75295642513e83f76c4"


def upgrade() -> None:
    if skipped_on_fresh_install():
        return
    run_sql(frozen_sql(__file__, "0002_engine.sql", sha256=SHA256))


def downgrade() -> None:
    if schema_absent():  # uninstalled by 0004's downgrade
        return
    # Everything of the engine lives in schema usersync (the triggers on the modules depend on its
    # functions and go with it); then the schema of revision 0001 is put back as it was.
    run_sql("drop schema usersync cascade;"
            " revoke all on public.users, public.contacts from usersync_engine;"
            " revoke all on sequence public.contacts_id_seq from usersync_engine;")
    run_sql(frozen_sql(__file__, "0001_modules.sql",
                       sha256="5490f0a953465e4c0f6ebddd0c3b1f7703ec0704f91393a1d0a04d07c1c728f2"))
