"""payment_results (MPN results by keyed digests, SPEC §2.4/§6) and transfers.relay_name

Revision ID: 0004
Revises: 0003
"""
import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "payment_results",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("identity_key", sa.String(64), nullable=False),
        sa.Column("match_key", sa.String(64), nullable=False),
        sa.Column("amount_key", sa.String(64), nullable=False),
        sa.Column("kind", sa.SmallInteger, nullable=False),
        sa.Column("channel", sa.String(2), nullable=False),
        sa.Column("tax_item", sa.String(2), nullable=False),
        sa.Column("pay_method", sa.String(2), nullable=False),
        sa.Column("received_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("slip_hint", sa.String(24), nullable=False),
        sa.Column("transfer_id", sa.Integer, sa.ForeignKey("transfers.id", name="fk_payment_results_transfer",
                                                            ondelete="CASCADE"), nullable=False),
        sa.Column("relay_name", sa.String(255), nullable=True),
        sa.Column("recorded_at", sa.DateTime(timezone=True), nullable=False),
        sa.UniqueConstraint("identity_key", name="uq_payment_results_identity_key"),
    )
    op.create_index("ix_payment_results_match_key", "payment_results", ["match_key"])
    op.create_index("ix_payment_results_transfer_id", "payment_results", ["transfer_id"])
    op.create_index("ix_payment_results_received_at", "payment_results", ["received_at"])
    op.create_index("ix_payment_results_kind_received_at", "payment_results", ["kind", "received_at"])
    with op.batch_alter_table("transfers") as batch:
        batch.add_column(sa.Column("relay_name", sa.String(255), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("transfers") as batch:
        batch.drop_column("relay_name")
    op.drop_table("payment_results")
