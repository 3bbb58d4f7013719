"""``kei-gateway results reconcile``: 速報 against 確報 and 速報取消, per channel (SPEC §2.4, §10).

It reads the ledger only (``payment_results``: digests, codes, times and masked slip
hints, nothing personal) and prints the report; ``--csv`` also writes it for Excel.
"""

from __future__ import annotations

import argparse
import datetime
import os
import sys

from kei_gateway.cli import exitcodes
from kei_gateway.cli._args import save_csv
from kei_gateway.cli.main import config_path_from, show_usage

__all__ = ["register", "reconcile_command", "parse_day"]

_EPILOG = """\
What is reconciled: every payment result whose 収納日時 (received at, JST) falls on
--date (default: today in JST) or, with --since, on that date or later. A 確報 or
速報取消 has its 速報's 収納日時, so a day is always complete. A 速報 with neither is
'pending' until [flows.mpn-results] unconfirmed_after (default 3d) has passed since
its 収納日時, then 'unconfirmed'. See docs/reconcile.md for each column and what to do.

Exit status: 0 the report was produced (whatever it found); with --check, 1 when
something needs a person (unconfirmed, amount mismatch, final and cancelled,
final or cancellation without provisional) so a cron job can alert on it;
1 also when the ledger cannot be read; 2 on a usage or configuration error.
"""


def parse_day(text: str) -> datetime.date:
    """``YYYY-MM-DD``, ``today`` or ``yesterday`` (in JST)."""
    from kei_gateway.core.jst import today_in_jst

    if text == "today":
        return today_in_jst()
    if text == "yesterday":
        return today_in_jst() - datetime.timedelta(days=1)
    try:
        return datetime.date.fromisoformat(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a date: write YYYY-MM-DD (e.g. 2026-11-21), "
                                         "'today' or 'yesterday'") from None


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = subparsers.add_parser("results", help="MPN payment results: reconcile 速報 against 確報")
    actions = parser.add_subparsers(dest="results_command", metavar="ACTION", parser_class=type(parser))
    check = actions.add_parser(
        "reconcile", help="count confirmed, cancelled, pending and unconfirmed 速報 per channel and list problems",
        description="Reconcile MPN 速報 (provisional) results against 確報 (final) and 速報取消 (cancellation).",
        epilog=_EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    when = check.add_mutually_exclusive_group()
    when.add_argument("--date", type=parse_day, metavar="YYYY-MM-DD",
                      help="the 収納日 (JST) to reconcile: a date, 'today' (default) or 'yesterday'")
    when.add_argument("--since", type=parse_day, metavar="YYYY-MM-DD",
                      help="reconcile every 収納日 from this date (JST) on, e.g. the last week")
    check.add_argument("--csv", metavar="FILE",
                       help="also write the report as CSV (UTF-8 with BOM, for Excel); an existing FILE is replaced")
    check.add_argument("--check", action="store_true",
                       help="exit 1 when something needs a person (see 'Exit status' below)")
    check.set_defaults(func=reconcile_command)
    parser.set_defaults(func=show_usage(parser))


def _database_missing(url: str) -> str | None:
    """For SQLite: the database file, when it does not exist (so nothing is created by reading)."""
    from sqlalchemy.engine import make_url

    parsed = make_url(url)
    if parsed.get_backend_name() == "sqlite" and parsed.database not in (None, "", ":memory:"):
        if not os.path.exists(str(parsed.database)):
            return str(parsed.database)
    return None


def reconcile_command(args: argparse.Namespace) -> int:
    from sqlalchemy import inspect
    from sqlalchemy.exc import SQLAlchemyError

    from kei_gateway.config import ResultsFlowSection, read_config
    from kei_gateway.runtime.events import describe_error
    from kei_gateway.core.jst import JST, today_in_jst
    from kei_gateway.adapters.ledger import create_ledger_engine, current_revision, head_revision
    from kei_gateway.adapters.ledger.results import ResultLedger
    from kei_gateway.core.results import reconcile, render_csv, render_text

    path = config_path_from(args)
    config = read_config(path)
    notes = []
    flow = config.flows.get("mpn-results")
    if flow is not None:
        unconfirmed_after = float(flow.unconfirmed_after)
    else:
        default = ResultsFlowSection.__dataclass_fields__["unconfirmed_after"].default
        assert isinstance(default, float)
        unconfirmed_after = default
        notes.append("注: [flows.mpn-results] が設定されていないため既定値を使用 "
                     "(note: [flows.mpn-results] is not configured; the default limit is used)")
    missing = _database_missing(config.database_url)
    if missing is not None:
        print(f"{path}: database.url: no ledger at {missing}; check the path, or start the daemon "
              "(or 'kei-gateway db upgrade') to create it", file=sys.stderr)
        return exitcodes.FAILED
    now = datetime.datetime.now(datetime.timezone.utc)
    try:
        engine = create_ledger_engine(config.database_url, config.database.busy_timeout)
        try:
            if not inspect(engine).has_table("payment_results"):
                revision = current_revision(engine)
                print(f"the ledger is at schema revision {revision or 'none'} and has no payment results table "
                      f"(newest: {head_revision()}); run 'kei-gateway db upgrade'", file=sys.stderr)
                return exitcodes.FAILED
            ledger = ResultLedger(engine)
            if args.since is not None:
                rows = ledger.results_since(datetime.datetime.combine(args.since, datetime.time(0), JST))
                scope = f"収納日 (received on) {args.since.isoformat()} 以降 (and later)"
            else:
                day = args.date or today_in_jst(now.timestamp())
                rows = ledger.results_received_on(day)
                scope = f"収納日 (received on) {day.isoformat()}"
        finally:
            engine.dispose()
    except SQLAlchemyError as error:
        print(f"{path}: database.url: cannot read the ledger ({config.database_url_redacted}): "
              f"{describe_error(error)}", file=sys.stderr)
        return exitcodes.FAILED
    report = reconcile(rows, now, unconfirmed_after, scope=scope)
    sys.stdout.write(render_text(report, notes))
    if args.csv and not save_csv(args.csv, render_csv(report)):
        return exitcodes.FAILED
    if args.check and report.needs_attention:
        return exitcodes.FAILED
    return exitcodes.OK
