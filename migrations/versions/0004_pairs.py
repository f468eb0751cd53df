"""pairs: usersync attaches to the application's own tables (usersync.attach), any key type,
several pairs; the install creates nothing outside its schema. The pair of 0.1-0.3 becomes pair 1.

Revision ID: 0004
Revises: 0003

0004_pairs.sql is migrations/delta/0004_before.sql, sql/00-60, migrations/delta/0004_after.sql
and sql/90_install.sql, frozen (make freeze); on a fresh database it is the definition alone.
"""

from pyapp.migrate import UNINSTALL_PAIRS_SQL, frozen_sql, run_sql

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None

SHA256 = "8894b8b1875aace88781e09e7abbd6455077166f4b9e9deb5eebc8655ae70772"


def upgrade() -> None:
    run_sql(frozen_sql(__file__, "0004_pairs.sql", sha256=SHA256))


def downgrade() -> None:
    # Revisions 0001-0003 served one pair of tables of their own; the pairs of 0004 cannot be put
    # back into that shape. Below 0004 usersync is uninstalled (its triggers, policies and grants
    # on the application's tables too); every application table and row stays. The CLI asks first.
    run_sql(UNINSTALL_PAIRS_SQL)
