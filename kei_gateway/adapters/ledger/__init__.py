"""The ledger: SQLAlchemy models, engine set-up and Alembic migrations (SPEC §6)."""

from kei_gateway.adapters.ledger.db import (
    create_ledger_engine,
    current_revision,
    head_revision,
    ping,
    upgrade,
)
from kei_gateway.adapters.ledger.ledger import (
    OPEN_STATES,
    Ledger,
    TransferLedger,
    TransferNotFound,
    TransferRow,
)
from kei_gateway.adapters.ledger.models import Base, Transfer, TransferState

__all__ = ["create_ledger_engine", "upgrade", "current_revision", "head_revision", "ping",
           "Base", "Transfer", "TransferState", "Ledger", "OPEN_STATES", "TransferLedger", "TransferNotFound", "TransferRow"]
