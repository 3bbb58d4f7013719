"""``kei-gateway run``: the daemon, in the foreground (systemd ``Type=notify``)."""

from __future__ import annotations

import argparse
import os
import signal
import sys
from datetime import datetime, timezone
from typing import Any

from twisted.logger import Logger

from kei_gateway import __version__
from kei_gateway.adapters.ledger import TransferLedger, create_ledger_engine, upgrade
from kei_gateway.adapters.store.blobs import FileBlobStore, open_store
from kei_gateway.adapters.store.errors import StoreError
from kei_gateway.cli import exitcodes
from kei_gateway.cli.main import config_path_from
from kei_gateway.config import Config, ConfigError, load_config
from kei_gateway.runtime import events
from kei_gateway.runtime.journal import GatewayLogObserver, begin_logging, parse_level
from kei_gateway.runtime.sdnotify import SystemdNotifier, watchdog_interval

__all__ = ["register", "run_daemon"]

log = Logger(namespace="kei_gateway.daemon")


def register(subparsers: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    parser = subparsers.add_parser("run", help="run the gateway daemon in the foreground")
    parser.add_argument("--log-target", choices=("auto", "journal", "terminal"), default="auto",
                        help="where events go: journald, one line each on stderr, or auto "
                             "(journald when stderr is the journal, as under systemd)")
    parser.set_defaults(func=run_daemon)


def run_daemon(args: argparse.Namespace) -> int:
    path = config_path_from(args)
    observer = GatewayLogObserver(target=args.log_target)
    begin_logging(observer)
    notifier = SystemdNotifier()
    try:
        config = load_config(path)
    except ConfigError as error:
        print(error.render(), file=sys.stderr)
        first = error.problems[0] if error.problems else "unknown"
        events.emit(log, events.DAEMON_FAILED,
                    reason=f"{len(error.problems)} configuration problem(s) in {path}, first: {first}")
        notifier.notify("STATUS=Configuration invalid: run 'kei-gateway check-config'")
        return exitcodes.USAGE
    observer.level = parse_level(config.gateway.log_level)
    # The audit trail (docs/audit.md): installed before the first event of the run, so daemon.starting
    # and the migration are recorded too; it writes once the service has started.
    from twisted.internet import reactor as _reactor
    from twisted.logger import globalLogPublisher

    from kei_gateway.operations.audit.observer import AuditObserver

    audit = AuditObserver(_reactor)
    globalLogPublisher.addObserver(audit)
    try:
        return _start(config, path, notifier, observer, audit)
    finally:
        globalLogPublisher.removeObserver(audit)


def _start(config: Config, path: str, notifier: SystemdNotifier, observer: GatewayLogObserver, audit: Any) -> int:
    from kei_gateway.operations.audit import AuditError, AuditLog, audit_key_from_config

    events.emit(log, events.DAEMON_STARTING, version=__version__, config_path=path)
    notifier.notify("STATUS=Migrating the ledger database")
    try:
        engine = create_ledger_engine(config.database_url, config.database.busy_timeout)
        schema = upgrade(engine) or "?"
    except Exception as error:  # any database failure at start is fatal, with its reason
        events.emit(log, events.DAEMON_FAILED, reason=f"database {config.database_url_redacted}: {events.describe_error(error)}")
        return exitcodes.FAILED
    events.emit(log, events.DATABASE_MIGRATED, schema=schema, url=config.database_url_redacted)
    try:
        audit_log = AuditLog(engine, audit_key_from_config(config))
    except AuditError as error:
        events.emit(log, events.DAEMON_FAILED, reason=f"audit trail: {error}")
        return exitcodes.USAGE
    try:
        store = open_store(config)
        store.recover()
    except (StoreError, OSError) as error:
        events.emit(log, events.DAEMON_FAILED, reason=f"encrypted store: {error}")
        return exitcodes.USAGE if isinstance(error, StoreError) else exitcodes.FAILED
    ledger = TransferLedger(engine)
    ledger.audit_writer = audit_log.append_in  # an action's record in the action's transaction (STYLE 14)
    # Blobs no transfer refers to (a crash between the store write and the ledger commit) are left to the
    # daily purge: it erases them past retention.payloads and lists them in the deletion report. Deleting
    # them here would erase unreported, and erase the whole store if database.url named a new, empty ledger.
    requeued = ledger.requeue_sending(datetime.now(timezone.utc))
    if requeued:
        events.emit(log, events.MESSAGE, text=f"{requeued} transfer(s) cut off while SENDING are QUEUED again")
    return _serve(config, path, ledger, store, notifier, observer, schema, audit, audit_log)


def _serve(config: Config, path: str, ledger: TransferLedger, store: FileBlobStore, notifier: SystemdNotifier,
           observer: GatewayLogObserver, schema: str, audit: Any = None, audit_log: Any = None) -> int:
    from twisted.internet import reactor as _reactor

    from kei_gateway.runtime.service import make_service

    reactor: Any = _reactor
    exit_code = [exitcodes.OK]

    def set_level(name: str) -> None:
        observer.level = parse_level(name)

    gateway = make_service(config, reactor, ledger, notifier=notifier, environ=os.environ,
                           watchdog_interval=watchdog_interval(), on_log_level=set_level, schema=schema,
                           store=store, audit=audit, audit_log=audit_log)

    def start_failed(failure: Any) -> None:
        events.emit(log, events.DAEMON_FAILED, reason=f"cannot bind a listener: {failure.value}")
        exit_code[0] = exitcodes.FAILED
        reactor.stop()

    def start() -> None:
        gateway.ready.addErrback(start_failed)
        gateway.startService()

    def on_hangup(signum: int, frame: object) -> None:
        reactor.callFromThread(gateway.reload_from, path)

    signal.signal(signal.SIGHUP, on_hangup)
    reactor.callWhenRunning(start)
    reactor.addSystemEventTrigger("before", "shutdown", gateway.stopService)
    reactor.addSystemEventTrigger("after", "shutdown", lambda: events.emit(log, events.DAEMON_STOPPED))
    reactor.run()
    ledger.engine.dispose()
    return exit_code[0]
