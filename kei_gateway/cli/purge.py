"""``kei-gateway purge [--dry-run]``: run the daily purge now, or show what it would erase.

The daemon runs the purge by itself every day at ``gateway.purge_at`` (and at start
when it missed one); this command is for an operator who wants it now or wants to
see what is due. It takes the same lock as the daemon's run, writes the same 消去報告
and, as an operator action, appends an audit record (``operator.purged``).
"""

from __future__ import annotations

import argparse
import datetime
import os
import sys

from kei_gateway.cli import exitcodes
from kei_gateway.cli.main import config_path_from

__all__ = ["register", "purge_command"]

_EPILOG = """\
What is erased when: see docs/purge.md. In short: payloads of DONE/CANCELLED transfers
after retention.payloads, of QUARANTINED ones after retention.quarantine; files the
gateway relayed into an inbox and the tax system has not taken after retention.inbox;
quarantine/<flow>/ entries after retention.quarantine; ledger rows, audit records and
old reports after retention.ledger. Open and FAILED transfers are never erased.

Exit status: 0 done (or, with --dry-run, planned); 1 something could not be erased
(the report and the message name it) or the audit record could not be written;
2 on a usage or configuration error.
"""


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = subparsers.add_parser(
        "purge", help="erase the data past its retention now and write the deletion report (消去報告)",
        description="Run the daily purge now: erase payloads, inbox and quarantine files and ledger metadata "
                    "past [retention], and append to state_dir/reports/erasure-YYYYMMDD.csv and .txt.",
        epilog=_EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dry-run", action="store_true",
                        help="only list what would be erased; change nothing, write no report")
    parser.set_defaults(func=purge_command)


def _size(size: int | None) -> str:
    return "-" if size is None else f"{size:,} B"


def purge_command(args: argparse.Namespace) -> int:
    from sqlalchemy import inspect
    from sqlalchemy.exc import SQLAlchemyError

    from kei_gateway.config import read_config
    from kei_gateway.runtime.events import describe_error
    from kei_gateway.adapters.ledger import create_ledger_engine
    from kei_gateway.operations.purge import PurgeLedger, run_purge
    from kei_gateway.operations.purge.service import audit_pruner, purge_audit_writer
    from kei_gateway.adapters.store.errors import StoreError
    from kei_gateway.adapters.store.blobs import open_store

    path = config_path_from(args)
    config = read_config(path)
    missing = _sqlite_missing(config.database_url)
    if missing is not None:
        print(f"{path}: database.url: no ledger at {missing}; check the path, or start the daemon "
              "(or 'kei-gateway db upgrade') to create it", file=sys.stderr)
        return exitcodes.FAILED
    try:
        store = open_store(config)
    except (StoreError, OSError) as error:
        print(f"{path}: keys.store: cannot open the encrypted store: {error}; run this as the service user "
              "(sudo -u kei-gateway kei-gateway purge)", file=sys.stderr)
        return exitcodes.FAILED

    def now() -> datetime.datetime:
        return datetime.datetime.now(datetime.timezone.utc)

    actor = _operator()
    engine = create_ledger_engine(config.database_url, config.database.busy_timeout)
    try:
        if not inspect(engine).has_table("transfers"):
            print("the ledger has no transfers table; run 'kei-gateway db upgrade'", file=sys.stderr)
            return exitcodes.FAILED
        pruner = None if args.dry_run else audit_pruner(config, engine, os.environ, now, actor=actor)
        ledger = PurgeLedger(engine)
        ledger.audit_writer = None if args.dry_run else purge_audit_writer(config, engine, os.environ, actor=actor)
        outcome = run_purge(config, ledger, store, now=now, dry_run=args.dry_run, audit_pruner=pruner, actor=actor)
    except (SQLAlchemyError, OSError) as error:
        print(f"the purge could not run: {describe_error(error)}", file=sys.stderr)
        return exitcodes.FAILED
    except Exception as error:  # the audit key, above all: its message says what to do
        print(f"the purge could not run: {error}", file=sys.stderr)
        return exitcodes.FAILED
    finally:
        engine.dispose()

    if outcome.run is None:
        items = outcome.plan.items
        print(f"dry run: {len(items)} item(s) would be erased; nothing was changed and no report written")
        for item in items:
            print(f"  {item.area:<10} {item.name}  ({_size(item.size)})  {item.reason}")
    else:
        print(f"erased {len(outcome.run.items)} item(s):")
        for erased in outcome.run.items:
            print(f"  {erased.area:<10} {erased.name}  ({_size(erased.size)})  {erased.reason}")
        for problem in outcome.run.errors:
            print(f"  NOT ERASED: {problem}", file=sys.stderr)
    counts = outcome.counts()
    print("by area: " + ", ".join(f"{area} {counts.get(area, 0)}" for area in ("store", "inbox", "quarantine", "ledger")))
    if outcome.plan.kept_failed:
        print(f"kept: {len(outcome.plan.kept_failed)} FAILED transfer(s) keep their payload until retried or cancelled "
              f"({', '.join(str(i) for i in outcome.plan.kept_failed)})")
    if outcome.run is None:
        return exitcodes.OK
    assert outcome.report_paths is not None
    print(f"report: {outcome.report_paths[1]}\n        {outcome.report_paths[0]}")
    status = exitcodes.OK if outcome.ok else exitcodes.FAILED
    from kei_gateway.operations.audit import AuditError, record_operator_action

    try:
        record_operator_action(config, "operator.purged", files=len(outcome.run.items),
                               reason=None if outcome.ok else f"{len(outcome.run.errors)} item(s) not erased",
                               report=outcome.report_paths[1])
    except AuditError as audit_error:
        print(f"the purge was done but is not in the audit trail: {audit_error}", file=sys.stderr)
        status = exitcodes.FAILED
    return status


def _operator() -> str:
    from kei_gateway.operations.audit import operator_login

    return operator_login()


def _sqlite_missing(url: str) -> str | None:
    from sqlalchemy.engine import make_url

    parsed = make_url(url)
    if parsed.get_backend_name() == "sqlite" and parsed.database not in (None, "", ":memory:"):
        if not os.path.exists(str(parsed.database)):
            return str(parsed.database)
    return None
