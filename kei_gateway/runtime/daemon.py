"""The daemon process once its configuration is valid: prepare what the service tree needs, then serve.

:mod:`kei_gateway.cli.daemon` parses the command line, reads the configuration and turns
the outcome into the exit code; this module opens the ledger (migrating it), the audit
trail and the encrypted store, requeues what a stop cut off, builds the tree
(:func:`kei_gateway.runtime.service.make_service`, the one composition root) and runs
the reactor with SIGHUP as reload.
"""

from __future__ import annotations

import gc
import os
import signal
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any

from twisted.logger import Logger

from kei_gateway import __version__
from kei_gateway.adapters.ledger import TransferLedger, create_ledger_engine, upgrade
from kei_gateway.adapters.ledger.db import PING_STATEMENT_TIMEOUT, may_come_back, ping
from kei_gateway.adapters.store.blobs import FileBlobStore, open_store
from kei_gateway.adapters.store.errors import StoreError
from kei_gateway.config import Config
from kei_gateway.runtime import events
from kei_gateway.adapters.ledger.leases import LeaseLedger, NodeRefused
from kei_gateway.runtime.leases import NodeIdentity, host_and_pid, new_incarnation
from kei_gateway.runtime.journal import GatewayLogObserver, parse_level
from kei_gateway.runtime.sdnotify import Notifier, watchdog_interval
from kei_gateway.operations.audit.spool import spool_path

__all__ = ["StartFailed", "MigrationFailed", "Prepared", "prepare", "serve", "start", "migrate_apart",
           "wait_for_database", "START_DATABASE_WAIT"]

log = Logger(namespace="kei_gateway.daemon")


class StartFailed(Exception):
    """The daemon cannot start; ``daemon.failed`` was logged with the reason.

    *usage*: the operator's to fix (keys, store) rather than the machine's (database, disk).
    """

    def __init__(self, usage: bool) -> None:
        super().__init__("the daemon cannot start (see daemon.failed)")
        self.usage = usage


@dataclass(frozen=True)
class Prepared:
    """What the service tree is built on."""

    ledger: TransferLedger
    store: FileBlobStore
    schema: str
    audit_log: Any
    node: NodeIdentity | None = None
    """This node in the ledger (SPEC §14), registered at the start."""


def prepare(config: Config, path: str, notifier: Notifier) -> Prepared:
    """Migrate and open the ledger, open the audit trail and the store, requeue cut-off sends; or :class:`StartFailed`."""
    from kei_gateway.operations.audit import AuditError, AuditLog, audit_key_from_config
    from kei_gateway.operations.audit.spool import recover_pending

    events.emit(log, events.DAEMON_STARTING, version=__version__, config_path=path)
    notifier.notify("STATUS=Migrating the ledger database")
    try:
        # A node stopped inside a transaction holds its row locks no longer than a lease (SPEC §14).
        engine = create_ledger_engine(config.database_url, config.database.busy_timeout,
                                      idle_in_transaction=config.database.lease)
        if engine.dialect.name == "postgresql":  # a server may be on its way; a SQLite file is there or not
            wait_for_database(lambda: ping(engine, PING_STATEMENT_TIMEOUT), notifier)
        schema = migrate_apart(engine) or "?"
    except Exception as error:  # any database failure at start is fatal, with its reason
        reason = str(error) if isinstance(error, MigrationFailed) else events.describe_error(error)
        events.emit(log, events.DAEMON_FAILED, reason=f"database {config.database_url_redacted}: {reason}")
        raise StartFailed(usage=False) from error
    events.emit(log, events.DATABASE_MIGRATED, schema=schema, url=config.database_url_redacted)
    try:
        audit_log = AuditLog(engine, audit_key_from_config(config))
    except AuditError as error:
        events.emit(log, events.DAEMON_FAILED, reason=f"audit trail: {error}")
        raise StartFailed(usage=True) from error
    try:
        chained, known = recover_pending(audit_spool_path(config), audit_log)
    except Exception as error:  # the database went away since the migration, or the file is unreadable
        events.emit(log, events.DAEMON_FAILED, reason=f"audit trail: the records left by the last run: "
                                                      f"{events.describe_error(error)}")
        raise StartFailed(usage=False) from error
    if chained:
        events.emit(log, events.MESSAGE, text=f"{chained} audit record(s) the last run had not chained yet are "
                                              f"chained now ({known} were already)")
    try:
        store = open_store(config)
        store.recover()
    except (StoreError, OSError) as error:
        events.emit(log, events.DAEMON_FAILED, reason=f"encrypted store: {error}")
        raise StartFailed(usage=isinstance(error, StoreError)) from error
    ledger = TransferLedger(engine)
    node = join_ledger(config, engine)
    # Blobs no transfer refers to (a crash between the store write and the ledger commit) are left to the
    # daily purge: it erases them past retention.payloads and lists them in the deletion report. Deleting
    # them here would erase unreported, and erase the whole store if database.url named a new, empty ledger.
    # The restart rule of SPEC §6 as §14 restates it: this node's own cut-off sends (and unleased or expired
    # ones), never those another live node holds.
    requeued = ledger.requeue_sending(datetime.now(timezone.utc), node=config.node_id)
    if requeued:
        events.emit(log, events.MESSAGE, text=f"{requeued} transfer(s) cut off while SENDING are QUEUED again")
    return Prepared(ledger, store, schema, audit_log, node)


START_DATABASE_WAIT = 60.0
"""Seconds a start waits for a PostgreSQL server that cannot be reached yet (within the unit's
``TimeoutStartSec=2min``, the migration after it): hosts and database coming back together after a power cut,
the database a little later, must not spend the unit's five restarts (``StartLimitBurst=5``) in half a minute."""


def wait_for_database(probe: Callable[[], None], notifier: Notifier, patience: float = START_DATABASE_WAIT,
                      sleep: Callable[[float], None] = time.sleep,
                      monotonic: Callable[[], float] = time.monotonic) -> None:
    """Return once *probe* succeeds; while it fails with an error a wait may cure (:func:`may_come_back`), retry
    every second for at most *patience* seconds, saying so (``STATUS=``, one log line); else raise its error."""
    deadline = monotonic() + patience
    said = False
    while True:
        try:
            probe()
            return
        except Exception as error:
            if not may_come_back(error) or monotonic() >= deadline:
                raise
            reason = events.describe_error(error)
            if not said:
                said = True
                events.emit(log, events.MESSAGE, text=f"the ledger database cannot be reached yet; waiting up to "
                                                      f"{patience:g}s for it: {reason}")
            notifier.notify(f"STATUS=Waiting for the ledger database: {reason}"[:400])
        sleep(1.0)


class MigrationFailed(Exception):
    """The migration's child process failed; the message is ``describe_error`` of its exception, as the child wrote it."""


def migrate_apart(engine: Any) -> str | None:
    """:func:`~kei_gateway.adapters.ledger.upgrade` in a forked child process; the schema revision now in force.

    The daemon runs for months: Alembic, Mako (and Pygments where installed) and what the
    migration allocates would stay in its resident memory all that time, about 8 MB of it
    (docs/performance.md, "Daemon memory at READY"). The child starts from the parent's
    engine without its pooled connections (there are none yet), migrates, closes its own,
    and writes one answer back: ``ok <revision>``, or ``error <describe_error of what it
    raised>``, which the parent raises as :class:`MigrationFailed`.
    """
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: migrate, answer, and leave without running the parent's exit handlers
        code = 1
        try:
            os.close(read_end)
            engine.dispose(close=False)
            try:
                answer, code = f"ok {upgrade(engine) or ''}", 0
                engine.dispose()
            except BaseException as error:
                answer = f"error {events.describe_error(error)}"
            os.write(write_end, answer.encode("utf-8", "replace"))
        finally:
            os._exit(code)
    os.close(write_end)
    with os.fdopen(read_end, "rb") as answers:
        kind, _, text = answers.read().decode("utf-8", "replace").partition(" ")
    _, status = os.waitpid(pid, 0)
    if kind == "ok" and status == 0:
        return text or None
    raise MigrationFailed(text if kind == "error" else
                          f"the migration process ended with status {os.waitstatus_to_exitcode(status)}")


def audit_spool_path(config: Config) -> str:
    """The audit observer's pending file: one per node when the ledger (and so ``state_dir``) is shared."""
    shared = not config.database_url.startswith("sqlite")
    return spool_path(config.gateway.state_dir, config.node_id if shared else None)


def join_ledger(config: Config, engine: Any) -> NodeIdentity:
    """Register this start of the node in the ledger (SPEC §14), or :class:`StartFailed`: a second node on a
    SQLite ledger, or a node id another live node uses."""
    store = LeaseLedger(engine, config.node_id, config.database.lease)
    incarnation = new_incarnation()
    host, pid = host_and_pid()
    try:
        store.join(incarnation, datetime.now(timezone.utc), host, pid)
        nodes = store.nodes(datetime.now(timezone.utc))
    except NodeRefused as refused:
        events.emit(log, events.DAEMON_FAILED, reason=str(refused))
        raise StartFailed(usage=True) from refused
    except Exception as error:
        events.emit(log, events.DAEMON_FAILED, reason=f"database {config.database_url_redacted}: "
                                                      f"{events.describe_error(error)}")
        raise StartFailed(usage=False) from error
    events.emit(log, events.NODE_JOINED, node=config.node_id, lease=f"{config.database.lease:g}",
                nodes=", ".join(status.node.node_id for status in nodes))
    return NodeIdentity(store, incarnation)


def freeze_startup_objects() -> int:
    """Move every object alive now (modules, layouts, config, the service tree) out of the garbage collector's
    sight (``gc.freeze``), after one collection: a full collection then walks only what was made since, so it no
    longer stalls every thread for 100–270 ms in the middle of a relay (issue 16, docs/performance.md). Returns
    the number of objects frozen."""
    gc.collect()
    gc.freeze()
    return gc.get_freeze_count()


def serve(config: Config, path: str, prepared: Prepared, notifier: Notifier, observer: GatewayLogObserver,
          audit: Any = None) -> bool:
    """Build the service tree and run the reactor until it stops; False when a listener could not be bound."""
    from twisted.internet import reactor as _reactor

    from kei_gateway.runtime.service import make_service

    reactor: Any = _reactor
    ok = [True]

    def set_level(name: str) -> None:
        observer.level = parse_level(name)

    gateway = make_service(config, reactor, prepared.ledger, notifier=notifier, environ=os.environ,
                           watchdog_interval=watchdog_interval(), on_log_level=set_level, schema=prepared.schema,
                           store=prepared.store, audit=audit, audit_log=prepared.audit_log,
                           audit_spool=audit_spool_path(config), node=prepared.node)

    def start_failed(failure: Any) -> None:
        events.emit(log, events.DAEMON_FAILED, reason=f"cannot bind a listener: {failure.value}")
        ok[0] = False
        reactor.stop()

    def start_service() -> None:
        gateway.ready.addErrback(start_failed)
        freeze_startup_objects()
        gateway.startService()

    def on_hangup(signum: int, frame: object) -> None:
        reactor.callFromThread(gateway.reload_from, path)

    signal.signal(signal.SIGHUP, on_hangup)
    reactor.callWhenRunning(start_service)
    reactor.addSystemEventTrigger("before", "shutdown", gateway.stopService)
    reactor.addSystemEventTrigger("after", "shutdown", lambda: events.emit(log, events.DAEMON_STOPPED))
    reactor.run()
    prepared.ledger.engine.dispose()
    return ok[0]


def start(config: Config, path: str, notifier: Notifier, observer: GatewayLogObserver, audit: Any = None) -> bool:
    """:func:`prepare`, then :func:`serve`; :class:`StartFailed` when the start is refused."""
    return serve(config, path, prepare(config, path, notifier), notifier, observer, audit)
