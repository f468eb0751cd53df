"""modules: the usersync schema, its roles, and the Users and Contacts tables.

Revision ID: 0001
Revises:
"""

from pyapp.migrate import frozen_sql, run_sql, skipped_on_fresh_install

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    if skipped_on_fresh_install():
        return
    run_sql(frozen_sql(
        __file__, "0001_modules.sql", sha256="5490f0a953465e4c0f6ebddd0c3b1f7703ec0704f91393a1d0a04d07c1c728f2"
    ))


def downgrade() -> None:
    # usersync owns only its schema: users and contacts, once created, hold the application's rows
    # and stay (usersync 0.1 dropped them here). The roles are cluster-wide and stay too.
    run_sql("drop schema if exists usersync cascade;")
