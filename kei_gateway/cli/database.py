"""``kei-gateway db upgrade``: migrate the ledger schema (``run`` also does it at start)."""

from __future__ import annotations

import argparse
import sys

from kei_gateway.adapters.ledger import create_ledger_engine, current_revision, head_revision, upgrade
from kei_gateway.cli import exitcodes
from kei_gateway.cli.main import config_path_from, show_usage
from kei_gateway.config import read_config

__all__ = ["register"]


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = subparsers.add_parser("db", help="ledger database maintenance")
    db = parser.add_subparsers(dest="db_command", metavar="ACTION", parser_class=type(parser))
    up = db.add_parser("upgrade", help="migrate the ledger schema to the newest revision")
    up.set_defaults(func=db_upgrade)
    parser.set_defaults(func=show_usage(parser))


def db_upgrade(args: argparse.Namespace) -> int:
    path = config_path_from(args)
    config = read_config(path)
    try:
        engine = create_ledger_engine(config.database_url, config.database.busy_timeout)
        before = current_revision(engine)
        after = upgrade(engine)
    except Exception as error:  # report any database failure with what to check
        print(f"{path}: database.url: cannot migrate the ledger: {error}\n"
              f"Check that the database is reachable and writable by this user.", file=sys.stderr)
        return exitcodes.FAILED
    if before == after:
        print(f"Ledger schema already at the newest revision {after} (head {head_revision()}).")
    else:
        print(f"Ledger schema migrated from {before or 'empty'} to {after}.")
    engine.dispose()
    if before != after:  # a no-op upgrade changes nothing: not an operation to audit
        from kei_gateway.operations.audit import record_or_warn

        record_or_warn(config, "operator.db_upgraded", reason=f"from {before or 'empty'} to {after}")
    return exitcodes.OK
