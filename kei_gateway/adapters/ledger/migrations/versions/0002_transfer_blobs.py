"""transfers: blob id, source removal mark, approval

Revision ID: 0002
Revises: 0001
"""
import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("transfers") as batch:
        batch.add_column(sa.Column("blob_id", sa.String(128), nullable=True))
        batch.add_column(sa.Column("source_removed", sa.Boolean, nullable=False, server_default=sa.false()))
        batch.add_column(sa.Column("approved_by", sa.String(64), nullable=True))
    op.create_index("ix_transfers_flow_local_name", "transfers", ["flow", "local_name"])


def downgrade() -> None:
    op.drop_index("ix_transfers_flow_local_name", "transfers")
    with op.batch_alter_table("transfers") as batch:
        batch.drop_column("approved_by")
        batch.drop_column("source_removed")
        batch.drop_column("blob_id")
