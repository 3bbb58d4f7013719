"""``kei-gateway run``: the daemon, in the foreground (systemd ``Type=notify``).

The command line, the configuration and the exit code are here; what the process does once
its configuration is valid is :mod:`kei_gateway.runtime.daemon`.
"""

from __future__ import annotations

import argparse
import sys

from twisted.logger import Logger

from kei_gateway.cli import exitcodes
from kei_gateway.cli.main import config_path_from
from kei_gateway.config import ConfigError, load_config
from kei_gateway.runtime import events
from kei_gateway.runtime.journal import GatewayLogObserver, begin_logging, parse_level
from kei_gateway.runtime.daemon import StartFailed, start
from kei_gateway.runtime.sdnotify import SystemdNotifier

__all__ = ["register", "run_daemon"]

log = Logger(namespace="kei_gateway.daemon")


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
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
        return exitcodes.OK if start(config, path, notifier, observer, audit) else exitcodes.FAILED
    except StartFailed as refused:
        return exitcodes.USAGE if refused.usage else exitcodes.FAILED
    finally:
        globalLogPublisher.removeObserver(audit)
