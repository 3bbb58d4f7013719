"""Adapters around the core: the ledger (SQLAlchemy), the encrypted store, the spool and the peer transport."""
