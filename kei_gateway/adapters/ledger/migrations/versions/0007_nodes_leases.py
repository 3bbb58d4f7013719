"""nodes and leases: two or more gateway nodes on one ledger (SPEC §14)

Revision ID: 0007
Revises: 0006

``nodes``: one row per node id — which start of it is current (``incarnation``), when it
started and its last heartbeat. ``leases``: one row per piece of claimed work (kind, key)
with its holder, expiry and fencing token (:mod:`kei_gateway.core.lease`). Rows are kept
after release (holder NULL) so a token only ever rises.
"""
import sqlalchemy as sa
from alembic import op

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "nodes",
        sa.Column("id", sa.String(64), primary_key=True),
        sa.Column("incarnation", sa.String(36), nullable=False),
        sa.Column("started", sa.DateTime(timezone=True), nullable=False),
        sa.Column("heartbeat", sa.DateTime(timezone=True), nullable=False),
        sa.Column("host", sa.String(255), nullable=False),
        sa.Column("pid", sa.Integer, nullable=False),
    )
    op.create_table(
        "leases",
        sa.Column("kind", sa.String(16), primary_key=True),
        sa.Column("key", sa.String(128), primary_key=True),
        sa.Column("holder", sa.String(64), nullable=True),
        sa.Column("expires", sa.DateTime(timezone=True), nullable=True),
        sa.Column("token", sa.BigInteger, nullable=False),
    )
    op.create_index("ix_leases_holder", "leases", ["holder"])


def downgrade() -> None:
    op.drop_index("ix_leases_holder", table_name="leases")
    op.drop_table("leases")
    op.drop_table("nodes")
