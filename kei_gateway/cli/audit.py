"""``kei-gateway audit verify`` and ``kei-gateway audit report --since 7d [--csv FILE]`` (docs/audit.md).

Both read the ledger only. ``verify`` walks the whole HMAC chain with ``[keys] audit`` and
names the first changed, deleted, inserted or reordered record; ``report`` is the weekly
review of denials, failures, quarantines, holds and approvals, operator commands and purges.
"""

from __future__ import annotations

import argparse
import datetime
import re
import sys

from kei_gateway.cli import exitcodes
from kei_gateway.cli._args import save_csv
from kei_gateway.cli.main import config_path_from, show_usage

__all__ = ["register", "verify_command", "report_command", "parse_since"]

_VERIFY_EPILOG = """\
Exit status: 0 the chain is intact ("OK, N records"); 1 it is not (the first changed,
deleted, inserted or reordered record is named) or it cannot be read; 2 on a usage or
configuration error (e.g. keys.audit missing or readable by others).
"""


def parse_since(text: str, now: datetime.datetime | None = None) -> datetime.datetime:
    """``7d``, ``24h``, ``90m`` before now, or a date ``YYYY-MM-DD`` (from 00:00 JST)."""
    from kei_gateway.core.jst import JST

    now = now or datetime.datetime.now(datetime.timezone.utc)
    match = re.fullmatch(r"(\d+)\s*([dhm])", text.strip())
    if match:
        amount, unit = int(match.group(1)), match.group(2)
        return now - datetime.timedelta(**{{"d": "days", "h": "hours", "m": "minutes"}[unit]: amount})
    try:
        return datetime.datetime.combine(datetime.date.fromisoformat(text), datetime.time(0), JST)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r}: write a period like 7d, 24h or 90m, or a date YYYY-MM-DD") from None


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = subparsers.add_parser("audit", help="the tamper-evident audit trail: verify the chain, weekly report")
    actions = parser.add_subparsers(dest="audit_command", metavar="ACTION", parser_class=type(parser))
    verify = actions.add_parser(
        "verify", help="walk the audit chain and name the first tampered record",
        description="Check every audit record's HMAC and its link to the one before, with keys.audit.",
        epilog=_VERIFY_EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    verify.set_defaults(func=verify_command)
    report = actions.add_parser(
        "report", help="denials, failures, quarantines, holds and approvals, operator commands, purges",
        description="The periodic log review: what the audit trail recorded since --since.")
    report.add_argument("--since", type=parse_since, default="7d", metavar="PERIOD",
                        help="7d (default), 24h, 90m, or a date YYYY-MM-DD (JST)")
    report.add_argument("--csv", metavar="FILE",
                        help="also write every listed record as CSV (UTF-8 with BOM, for Excel); FILE is replaced")
    report.add_argument("--no-verify", action="store_true", help="do not walk the chain first")
    report.set_defaults(func=report_command)
    parser.set_defaults(func=show_usage(parser))


def _open(args: argparse.Namespace) -> tuple[object, int]:
    """The AuditLog of the configuration, or an exit status after saying why."""
    from sqlalchemy.exc import SQLAlchemyError

    from kei_gateway.operations.audit import AuditKeyError, AuditLog, audit_key_from_config
    from kei_gateway.cli.results import _database_missing
    from kei_gateway.config import read_config
    from kei_gateway.runtime.events import describe_error
    from kei_gateway.adapters.ledger import create_ledger_engine

    path = config_path_from(args)
    config = read_config(path)
    try:
        key = audit_key_from_config(config)
    except AuditKeyError as error:
        print(f"{path}: {error}", file=sys.stderr)
        return None, exitcodes.USAGE
    missing = _database_missing(config.database_url)
    if missing is not None:
        print(f"{path}: database.url: no ledger at {missing}; check the path", file=sys.stderr)
        return None, exitcodes.FAILED
    try:
        audit_log = AuditLog(create_ledger_engine(config.database_url, config.database.busy_timeout), key)
        if not audit_log.available():
            print("the ledger has no audit table; run 'kei-gateway db upgrade'", file=sys.stderr)
            return None, exitcodes.FAILED
    except SQLAlchemyError as error:
        print(f"{path}: database.url: cannot read the ledger ({config.database_url_redacted}): "
              f"{describe_error(error)}", file=sys.stderr)
        return None, exitcodes.FAILED
    return audit_log, exitcodes.OK


def verify_command(args: argparse.Namespace) -> int:
    from sqlalchemy.exc import SQLAlchemyError

    from kei_gateway.operations.audit import AuditError, AuditLog
    from kei_gateway.runtime.events import describe_error

    audit_log, status = _open(args)
    if not isinstance(audit_log, AuditLog):
        return status
    try:
        report = audit_log.verify()
        unrecorded, first = audit_log.unrecorded_transfers()
    except (SQLAlchemyError, AuditError) as error:
        print(f"cannot read the audit chain: {describe_error(error) if isinstance(error, SQLAlchemyError) else error}",
              file=sys.stderr)
        return exitcodes.FAILED
    finally:
        audit_log.engine.dispose()
    if report.ok and not unrecorded:
        print(report.text())
        return exitcodes.OK
    if report.ok:
        print(report.text())
        print(f"{unrecorded} transfer(s) have no audit record (ids {', '.join(map(str, first))}"
              f"{', …' if unrecorded > len(first) else ''}): their actions were not recorded. Keep the database as "
              f"it is and report this to the person in charge of information security; see docs/audit.md.",
              file=sys.stderr)
        return exitcodes.FAILED
    print(report.text(), file=sys.stderr)
    print(f"({report.count} records verified before it.) Keep the database as it is (copy it) and report this to the "
          f"person in charge of information security; see docs/audit.md.", file=sys.stderr)
    return exitcodes.FAILED


def report_command(args: argparse.Namespace) -> int:
    from sqlalchemy.exc import SQLAlchemyError

    from kei_gateway.operations.audit import AuditError, AuditLog
    from kei_gateway.operations.audit.report import build_report, render_csv, render_text
    from kei_gateway.runtime.events import describe_error

    since = args.since if isinstance(args.since, datetime.datetime) else parse_since(args.since)
    audit_log, status = _open(args)
    if not isinstance(audit_log, AuditLog):
        return status
    now = datetime.datetime.now(datetime.timezone.utc)
    try:
        chain = None if args.no_verify else audit_log.verify().text()
        report = build_report(audit_log.iter_records(since), since, now, chain=chain)
    except (SQLAlchemyError, AuditError) as error:
        print(f"cannot read the audit trail: {describe_error(error) if isinstance(error, SQLAlchemyError) else error}",
              file=sys.stderr)
        return exitcodes.FAILED
    finally:
        audit_log.engine.dispose()
    sys.stdout.write(render_text(report))
    if args.csv and not save_csv(args.csv, render_csv(report)):
        return exitcodes.FAILED
    return exitcodes.OK
