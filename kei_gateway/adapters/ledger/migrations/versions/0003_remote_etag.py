"""transfers: the peer's ETag of a downloaded file (so a quarantined one is not fetched again)

Revision ID: 0003
Revises: 0002
"""
import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("transfers") as batch:
        batch.add_column(sa.Column("remote_etag", sa.String(255), nullable=True))
    op.create_index("ix_transfers_flow_remote_name", "transfers", ["flow", "remote_name"])


def downgrade() -> None:
    op.drop_index("ix_transfers_flow_remote_name", "transfers")
    with op.batch_alter_table("transfers") as batch:
        batch.drop_column("remote_etag")
