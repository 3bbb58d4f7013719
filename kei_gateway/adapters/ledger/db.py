"""Engine set-up and migrations. All of it blocks: call it through the blocking-work door."""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sqlalchemy import Engine, create_engine, event, text
from sqlalchemy.engine import make_url

if TYPE_CHECKING:
    from alembic.config import Config as AlembicConfig

__all__ = ["create_ledger_engine", "upgrade", "current_revision", "head_revision", "ping", "is_database_failure",
           "may_come_back", "POSTGRESQL_NETWORK_BOUNDS", "PING_STATEMENT_TIMEOUT"]

_MIGRATIONS = Path(__file__).with_name("migrations")

POSTGRESQL_NETWORK_BOUNDS: dict[str, int] = {
    "connect_timeout": 3,        # seconds to connect (per host address; libpq's minimum is 2)
    "tcp_user_timeout": 4000,    # ms a sent request may stay unacknowledged: a host gone or a network cut
    "keepalives": 1,             # an established connection whose server went silent is found out
    "keepalives_idle": 4,        # ... after 4 s idle,
    "keepalives_interval": 1,    # probes every second,
    "keepalives_count": 3,       # 3 unanswered: ~7 s
}
"""libpq's bounds on every ledger connection's network waits (no server setting: fine behind PgBouncer). Without
them a PostgreSQL host that vanishes (no RST) holds a ledger call for the kernel's TCP timeouts — minutes — and every
thread of the blocking pool with it. With them a call to a database that is away fails within seconds, as a refusal
does, so the watchdog's check ends (issue 15, docs/high-availability.md "The watchdog and the database")."""

PING_STATEMENT_TIMEOUT = 3.0
"""Seconds the server may take to answer the health check (``SET LOCAL statement_timeout``): a server that is up but
too busy to answer is reported down rather than holding the check."""


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
    postgresql = parsed.get_backend_name() == "postgresql"
    engine = create_engine(url, pool_pre_ping=True, connect_args=dict(POSTGRESQL_NETWORK_BOUNDS) if postgresql else {})
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


def ping(engine: Engine, statement_timeout: float | None = None) -> None:
    """Raise if the database does not answer a trivial query (within *statement_timeout* seconds, on PostgreSQL)."""
    with engine.connect() as connection:
        if statement_timeout is not None and connection.dialect.name == "postgresql":
            connection.execute(text(f"SET LOCAL statement_timeout = {max(1, int(statement_timeout * 1000))}"))
        connection.execute(text("SELECT 1"))


def may_come_back(error: BaseException) -> bool:
    """True when *error* says the PostgreSQL server could not be reached or is not accepting connections yet (no
    server answer at all — refused, no socket, timed out — or SQLSTATE class 08, or 57P01–57P03: shutting down,
    starting up): worth waiting for at start. False for an answer that waiting will not change (a wrong password,
    a database that does not exist) and for SQLite (a file is there or not)."""
    from sqlalchemy.exc import DBAPIError

    if not isinstance(error, DBAPIError) or not hasattr(error.orig, "sqlstate"):
        return False
    sqlstate = getattr(error.orig, "sqlstate", None)
    return sqlstate is None or str(sqlstate).startswith("08") or sqlstate in ("57P01", "57P02", "57P03")


def is_database_failure(error: BaseException) -> bool:
    """True for a failure the database's driver reports (refused, unreachable, timed out, an error of the server);
    False for one of the daemon's own (the connection pool's wait, a bug)."""
    from sqlalchemy.exc import DBAPIError

    return isinstance(error, DBAPIError)
