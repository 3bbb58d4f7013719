"""audit_head.head_mac: the audit chain's head authenticated, so records cut off the end are detected

Revision ID: 0006
Revises: 0005

The column is NULL after the upgrade (a migration has no audit key): the first append writes
the MAC; until then ``audit verify`` reports the head as not yet authenticated (a warning).
"""
import sqlalchemy as sa
from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("audit_head") as batch:
        batch.add_column(sa.Column("head_mac", sa.String(64), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("audit_head") as batch:
        batch.drop_column("head_mac")
