"""Ledger tables. The schema itself is owned by the Alembic migrations; these models mirror it."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import BigInteger, Boolean, DateTime, ForeignKey, Index, Integer, SmallInteger, String, Text, UniqueConstraint
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from kei_gateway.core.transfer import TransferState

__all__ = ["Base", "Transfer", "TransferState", "PaymentResult", "AuditEntry", "AuditHead", "Node", "LeaseRow"]


class Base(DeclarativeBase):
    pass


class Transfer(Base):
    """One file moving through the gateway, in either direction."""

    __tablename__ = "transfers"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    flow: Mapped[str] = mapped_column(String(32))
    direction: Mapped[str] = mapped_column(String(3))  # "out" or "in"
    peer: Mapped[str] = mapped_column(String(64))
    state: Mapped[str] = mapped_column(String(16))
    local_name: Mapped[str] = mapped_column(String(255))
    remote_name: Mapped[str | None] = mapped_column(String(255), nullable=True)
    size: Mapped[int] = mapped_column(BigInteger, default=0)
    sha256: Mapped[str | None] = mapped_column(String(64), nullable=True)
    record_count: Mapped[int] = mapped_column(Integer, default=0)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    next_attempt_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
    last_error: Mapped[str | None] = mapped_column(Text, nullable=True)
    receipt_summary: Mapped[str | None] = mapped_column(Text, nullable=True)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    blob_id: Mapped[str | None] = mapped_column(String(128), nullable=True)
    """The encrypted payload in the store; None once purged."""
    source_removed: Mapped[bool] = mapped_column(Boolean, default=False)
    """The plaintext original has been removed from the outbox (ingest's last step)."""
    approved_by: Mapped[str | None] = mapped_column(String(64), nullable=True)
    remote_etag: Mapped[str | None] = mapped_column(String(255), nullable=True)
    """For downloads: the peer's ETag (with size and name, what makes a remote file 'already seen')."""
    relay_name: Mapped[str | None] = mapped_column(String(255), nullable=True)
    """For payment results: the inbox file the new results were relayed in, set when the relay is decided."""

    __table_args__ = (
        Index("ix_transfers_flow_state", "flow", "state"),
        Index("ix_transfers_state_next_attempt", "state", "next_attempt_at"),
        Index("ix_transfers_flow_local_name", "flow", "local_name"),
        Index("ix_transfers_flow_remote_name", "flow", "remote_name"),
    )


class PaymentResult(Base):
    """One MPN payment result (SPEC §2.4), kept by keyed digests: no personal value in clear.

    ``identity_key`` is unique (the dedupe key of SPEC §6); a 確報 or 速報取消 shares
    its 速報's ``match_key``. See :mod:`kei_gateway.core.results.identity`.
    """

    __tablename__ = "payment_results"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    identity_key: Mapped[str] = mapped_column(String(64))
    match_key: Mapped[str] = mapped_column(String(64))
    amount_key: Mapped[str] = mapped_column(String(64))
    kind: Mapped[int] = mapped_column(SmallInteger)
    """収納区分: 1 速報, 2 確報, 3 速報取消."""
    channel: Mapped[str] = mapped_column(String(2))
    tax_item: Mapped[str] = mapped_column(String(2))
    pay_method: Mapped[str] = mapped_column(String(2))
    received_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    """収納日時 (stored as UTC; shown in JST)."""
    slip_hint: Mapped[str] = mapped_column(String(24))
    """The 納付書番号 masked but for its last 4 digits."""
    transfer_id: Mapped[int] = mapped_column(
        Integer, ForeignKey("transfers.id", name="fk_payment_results_transfer", ondelete="CASCADE"))
    """The inbound transfer that first brought this result."""
    relay_name: Mapped[str | None] = mapped_column(String(255), nullable=True)
    """The inbox file it was relayed in."""
    recorded_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))

    __table_args__ = (
        UniqueConstraint("identity_key", name="uq_payment_results_identity_key"),
        Index("ix_payment_results_match_key", "match_key"),
        Index("ix_payment_results_transfer_id", "transfer_id"),
        Index("ix_payment_results_received_at", "received_at"),
        Index("ix_payment_results_kind_received_at", "kind", "received_at"),
    )


class AuditEntry(Base):
    """One record of the tamper-evident audit trail (see :mod:`kei_gateway.operations.audit`): no personal value.

    ``sequence`` is assigned by the writer (the head's sequence + 1), never by the database.
    """

    __tablename__ = "audit"

    sequence: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=False)
    time: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    actor: Mapped[str] = mapped_column(String(64))
    event: Mapped[str] = mapped_column(String(64))
    flow: Mapped[str | None] = mapped_column(String(32), nullable=True)
    peer: Mapped[str | None] = mapped_column(String(64), nullable=True)
    listener: Mapped[str | None] = mapped_column(String(32), nullable=True)
    source: Mapped[str | None] = mapped_column(String(64), nullable=True)
    transfer_id: Mapped[int | None] = mapped_column(BigInteger, nullable=True)
    sha256: Mapped[str | None] = mapped_column(String(64), nullable=True)
    count: Mapped[int | None] = mapped_column(BigInteger, nullable=True)
    reason: Mapped[str | None] = mapped_column(String(255), nullable=True)
    anchor_sequence: Mapped[int | None] = mapped_column(BigInteger, nullable=True)
    anchor_mac: Mapped[str | None] = mapped_column(String(64), nullable=True)
    previous_mac: Mapped[str] = mapped_column(String(64))
    mac: Mapped[str] = mapped_column(String(64))

    __table_args__ = (
        Index("ix_audit_time", "time"),
        Index("ix_audit_event", "event"),
    )


class AuditHead(Base):
    """The audit chain's head: one row (id 1) with the newest sequence and MAC; appends lock it.

    ``head_mac`` authenticates the two (:func:`kei_gateway.operations.audit.chain.head_mac`): NULL until the
    first append after migration 0006, or a ``broken:<sequence>`` mark once an append found it forged.
    """

    __tablename__ = "audit_head"

    id: Mapped[int] = mapped_column(SmallInteger, primary_key=True, autoincrement=False)
    sequence: Mapped[int] = mapped_column(BigInteger)
    mac: Mapped[str] = mapped_column(String(64))
    head_mac: Mapped[str | None] = mapped_column(String(64), nullable=True)


class Node(Base):
    """A gateway node sharing this ledger (SPEC §14): its current start and last heartbeat."""

    __tablename__ = "nodes"

    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    incarnation: Mapped[str] = mapped_column(String(36))
    """A random id of the node's current start: another start under the same id is told apart by it."""
    started: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    heartbeat: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    host: Mapped[str] = mapped_column(String(255))
    pid: Mapped[int] = mapped_column(Integer)


class LeaseRow(Base):
    """One piece of claimed work (:class:`kei_gateway.core.lease.Lease`); kept after release so tokens only rise."""

    __tablename__ = "leases"

    kind: Mapped[str] = mapped_column(String(16), primary_key=True)
    key: Mapped[str] = mapped_column(String(128), primary_key=True)
    holder: Mapped[str | None] = mapped_column(String(64), nullable=True)
    expires: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
    token: Mapped[int] = mapped_column(BigInteger)

    __table_args__ = (Index("ix_leases_holder", "holder"),)
