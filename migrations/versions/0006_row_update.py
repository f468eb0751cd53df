"""row-level update trigger: users' AFTER UPDATE trigger becomes a row trigger that sees the
statement's transition tables. A statement of a few rows syncs each row on its own (one UPDATE
of its contact, as a hand-written row trigger does); a statement of many rows is synced
set-based, once, by the call for its first row.

Revision ID: 0006
Revises: 0005

0006_row_update.sql is sql/00-65 and sql/90_install.sql, frozen (python -m pyapp._freeze); 90_install.sql
regenerates every pair and replaces its update trigger.
"""

from pyapp.migrate import earlier_frozen_sql, frozen_sql, run_sql

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None

SHA256 = "dd7ef3442a8d29a6b9a10fd1e1bb97ad6a813c9e2a9570e3de1a6a9801725f7b"


def upgrade() -> None:
    run_sql(frozen_sql(__file__, "0006_row_update.sql", sha256=SHA256))


def downgrade() -> None:
    # Back to 0005's code: its definition, run again, regenerates every pair as 0005 wrote it and
    # puts the statement-level update trigger back. This revision added no object of its own.
    run_sql(earlier_frozen_sql(__file__, "0005_single_row.py", "0005_single_row.sql"))
