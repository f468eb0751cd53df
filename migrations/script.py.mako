"""${message}

Revision ID: ${up_revision}
Revises: ${down_revision | comma,n}
Create Date: ${create_date}
"""

from pyapp.migrate import frozen_sql, run_sql

revision = ${repr(up_revision)}
down_revision = ${repr(down_revision)}
branch_labels = None
depends_on = None


def upgrade() -> None:
    run_sql(frozen_sql(__file__, "${up_revision}.sql", sha256="fill in: sha256sum of the frozen file"))


def downgrade() -> None:
    run_sql("")
