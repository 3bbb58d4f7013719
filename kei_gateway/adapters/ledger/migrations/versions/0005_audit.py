"""audit and audit_head: the tamper-evident audit trail (issue 6, SPEC §7)

Revision ID: 0005
Revises: 0004
"""
import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None

GENESIS_MAC = "0" * 64


def upgrade() -> None:
    op.create_table(
        "audit",
        sa.Column("sequence", sa.BigInteger, primary_key=True, autoincrement=False),
        sa.Column("time", sa.DateTime(timezone=True), nullable=False),
        sa.Column("actor", sa.String(64), nullable=False),
        sa.Column("event", sa.String(64), nullable=False),
        sa.Column("flow", sa.String(32), nullable=True),
        sa.Column("peer", sa.String(64), nullable=True),
        sa.Column("listener", sa.String(32), nullable=True),
        sa.Column("source", sa.String(64), nullable=True),
        sa.Column("transfer_id", sa.BigInteger, nullable=True),
        sa.Column("sha256", sa.String(64), nullable=True),
        sa.Column("count", sa.BigInteger, nullable=True),
        sa.Column("reason", sa.String(255), nullable=True),
        sa.Column("anchor_sequence", sa.BigInteger, nullable=True),
        sa.Column("anchor_mac", sa.String(64), nullable=True),
        sa.Column("previous_mac", sa.String(64), nullable=False),
        sa.Column("mac", sa.String(64), nullable=False),
    )
    op.create_index("ix_audit_time", "audit", ["time"])
    op.create_index("ix_audit_event", "audit", ["event"])
    head = op.create_table(
        "audit_head",
        sa.Column("id", sa.SmallInteger, primary_key=True, autoincrement=False),
        sa.Column("sequence", sa.BigInteger, nullable=False),
        sa.Column("mac", sa.String(64), nullable=False),
    )
    op.bulk_insert(head, [{"id": 1, "sequence": 0, "mac": GENESIS_MAC}])


def downgrade() -> None:
    op.drop_table("audit_head")
    op.drop_index("ix_audit_event", table_name="audit")
    op.drop_index("ix_audit_time", table_name="audit")
    op.drop_table("audit")
