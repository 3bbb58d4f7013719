"""Engine set-up and migrations. All of it blocks: call it through the blocking-work door."""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sqlalchemy import Engine, create_engine, event, text
from sqlalchemy.engine import make_url

if TYPE_CHECKING:
    from alembic.config import Config as AlembicConfig

__all__ = ["create_ledger_engine", "upgrade", "current_revision", "head_revision", "ping"]

_MIGRATIONS = Path(__file__).with_name("migrations")


def create_ledger_engine(url: str, busy_timeout: float = 5.0, idle_in_transaction: float | None = None) -> Engine:
    """An engine for *url*; SQLite gets WAL, ``synchronous=FULL``, a busy timeout and foreign keys.

    On PostgreSQL, *idle_in_transaction* (seconds; the daemon passes its lease, SPEC §14) makes the server end a
    session that sits inside a transaction that long without a statement — a node stopped (SIGSTOP, a VM
    paused) in the middle of a commit — so the row locks it holds (the audit chain's head, a lease row) are
    released and the other nodes go on; the stopped node's transaction is rolled back and its next statement
    fails, to be retried or fenced. Set with ``SET`` when a connection is made (no startup option, which a
    transaction-pooling PgBouncer refuses)."""
    parsed = make_url(url)
    if parsed.get_backend_name() == "sqlite":
        database = parsed.database or ""
        if database and database != ":memory:":
            os.makedirs(os.path.dirname(os.path.abspath(database)), mode=0o700, exist_ok=True)
        engine = create_engine(url, connect_args={"timeout": busy_timeout, "check_same_thread": False})

        @event.listens_for(engine, "connect")
        def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
            cursor = dbapi_connection.cursor()
            cursor.execute("PRAGMA journal_mode=WAL")
            cursor.execute("PRAGMA synchronous=FULL")
            cursor.execute(f"PRAGMA busy_timeout={int(busy_timeout * 1000)}")
            cursor.execute("PRAGMA foreign_keys=ON")
            cursor.close()

        return engine
    engine = create_engine(url, pool_pre_ping=True)
    if idle_in_transaction is not None and parsed.get_backend_name() == "postgresql":
        milliseconds = max(1, int(idle_in_transaction * 1000))

        @event.listens_for(engine, "connect")
        def _session_limits(dbapi_connection: Any, _record: Any) -> None:
            cursor = dbapi_connection.cursor()
            cursor.execute(f"SET idle_in_transaction_session_timeout = {milliseconds}")
            cursor.close()
            dbapi_connection.commit()  # a SET in a transaction rolled back would be undone

    return engine


def _alembic_config(engine: Engine) -> AlembicConfig:
    from alembic.config import Config as AlembicConfig

    cfg = AlembicConfig()
    cfg.set_main_option("script_location", str(_MIGRATIONS))
    cfg.attributes["engine"] = engine
    return cfg


def upgrade(engine: Engine, revision: str = "head") -> str | None:
    """Migrate the schema to *revision*; return the revision now in force."""
    from alembic import command

    command.upgrade(_alembic_config(engine), revision)
    return current_revision(engine)


def current_revision(engine: Engine) -> str | None:
    from alembic.runtime.migration import MigrationContext

    with engine.connect() as connection:
        return MigrationContext.configure(connection).get_current_revision()


def head_revision() -> str | None:
    from alembic.script import ScriptDirectory

    return ScriptDirectory(str(_MIGRATIONS)).get_current_head()


def ping(engine: Engine) -> None:
    """Raise if the database does not answer a trivial query."""
    with engine.connect() as connection:
        connection.execute(text("SELECT 1"))
