"""``kei-gateway reload --pid PID``: the unit's ``ExecReload=``: signal the daemon, wait for its verdict.

Operators type ``systemctl reload kei-gateway``; systemd runs this, and the exit status
becomes that command's: 0 when the daemon accepted the new configuration, 1 when it
refused it (every problem on stderr, i.e. in the unit's journal) or gave no answer in
time. See :mod:`kei_gateway.runtime.reload_outcome`.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
import time
from collections.abc import Callable, Mapping

from kei_gateway.cli import exitcodes
from kei_gateway.runtime.reload_outcome import outcome_path, read_outcome, wait_for_outcome

__all__ = ["register", "reload_daemon"]

DEFAULT_TIMEOUT = 60.0


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = subparsers.add_parser(
        "reload", help="signal the running daemon to reload its configuration and wait for its verdict "
                       "(the unit's ExecReload=; operators run 'systemctl reload kei-gateway')")
    parser.add_argument("--pid", type=int, required=True, help="the daemon's process id ($MAINPID in the unit)")
    parser.add_argument("--runtime-dir", metavar="DIR",
                        help="where the daemon records the verdict (default: $RUNTIME_DIRECTORY, set by systemd)")
    parser.add_argument("--timeout", type=float, default=DEFAULT_TIMEOUT, metavar="SECONDS",
                        help=f"how long to wait for the verdict (default {DEFAULT_TIMEOUT:g})")
    parser.set_defaults(func=reload_daemon)


def reload_daemon(args: argparse.Namespace, environ: Mapping[str, str] = os.environ,
                  kill: Callable[[int, int], None] = os.kill, clock: Callable[[], float] = time.monotonic,
                  sleep: Callable[[float], None] = time.sleep) -> int:
    path = outcome_path({"RUNTIME_DIRECTORY": args.runtime_dir} if args.runtime_dir else environ)
    if path is None:
        print("kei-gateway reload: $RUNTIME_DIRECTORY is not set; this runs as the unit's ExecReload=. "
              "Reload with 'systemctl reload kei-gateway' (or give --runtime-dir)", file=sys.stderr)
        return exitcodes.USAGE
    before = read_outcome(path)
    after = before.generation if before is not None and before.pid == args.pid else 0
    try:
        kill(args.pid, signal.SIGHUP)
    except OSError as error:
        print(f"kei-gateway reload: cannot signal process {args.pid}: {error.strerror}; is the daemon running?",
              file=sys.stderr)
        return exitcodes.FAILED
    outcome = wait_for_outcome(path, args.pid, after, args.timeout, clock, sleep)
    if outcome is None:
        print(f"kei-gateway reload: no verdict from process {args.pid} in {path} within {args.timeout:g}s; "
              "see the unit's journal (KEI_EVENT=config.reloaded or config.reload_failed)", file=sys.stderr)
        return exitcodes.FAILED
    if not outcome.accepted:
        print(f"configuration refused, the daemon keeps its running configuration: {outcome.reason}",
              file=sys.stderr)
        return exitcodes.FAILED
    print(f"configuration reloaded (process {outcome.pid}, reload {outcome.generation})")
    return exitcodes.OK
