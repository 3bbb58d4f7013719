"""Ledger queries used by the daemon. Every method blocks: call it through the blocking door."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import Engine, func, select

from kei_gateway.blocking import retry_transient
from kei_gateway.ledger.db import ping as _ping
from kei_gateway.ledger.models import Transfer, TransferState

__all__ = ["Ledger", "OPEN_STATES"]

OPEN_STATES = tuple(s.value for s in TransferState if s not in (TransferState.DONE, TransferState.CANCELLED))
"""States of transfers that still need something: shown in the queue gauge and STATUS=."""


class Ledger:
    """The ledger on a SQLAlchemy engine."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine

    @retry_transient
    def ping(self) -> None:
        _ping(self.engine)

    @retry_transient
    def queue_counts(self) -> dict[tuple[str, str], int]:
        """Number of open transfers per (flow, state)."""
        query = (select(Transfer.flow, Transfer.state, func.count())
                 .where(Transfer.state.in_(OPEN_STATES)).group_by(Transfer.flow, Transfer.state))
        with self.engine.connect() as connection:
            return {(flow, state): int(count) for flow, state, count in connection.execute(query)}

    @retry_transient
    def oldest_queued(self) -> dict[str, datetime]:
        """Creation time of the oldest transfer waiting to be sent, per flow."""
        waiting = (TransferState.QUEUED.value, TransferState.RETRY_WAIT.value, TransferState.SENDING.value)
        query = (select(Transfer.flow, func.min(Transfer.created_at))
                 .where(Transfer.state.in_(waiting)).group_by(Transfer.flow))
        with self.engine.connect() as connection:
            return {flow: oldest for flow, oldest in connection.execute(query) if oldest is not None}
