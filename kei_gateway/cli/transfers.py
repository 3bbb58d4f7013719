"""``kei-gateway status`` and ``kei-gateway transfers list|show|retry|cancel|approve`` (operators).

They read and change the ledger directly (the daemon picks changes up at its next
look at the queue). Nothing personal is shown: names of files, counts, hashes, states.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Callable
from datetime import datetime, timezone
from typing import Any

from kei_gateway.adapters.ledger import (
    OPEN_STATES,
    TransferLedger,
    TransferNotFound,
    TransferRow,
    create_ledger_engine,
)
from kei_gateway.cli import exitcodes
from kei_gateway.cli.main import config_path_from, show_usage
from kei_gateway.config import read_config
from kei_gateway.core.transfer import InvalidTransition
from kei_gateway.core.transfer import TransferState

__all__ = ["register", "operator_name"]


def bounded_int(what: str, maximum: int) -> Callable[[str], int]:
    """An argparse type: a whole number from 1 to *maximum*, else a usage error (exit 2) that says so."""
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a number: {what} is a whole number") from None
        if not 1 <= value <= maximum:
            raise argparse.ArgumentTypeError(f"{text[:40]!r} is out of range: {what} is from 1 to {maximum}")
        return value
    return parse


TRANSFER_ID = bounded_int("a transfer id", 2**63 - 1)
"""Transfer ids are the ledger's 64-bit integer keys; a larger number cannot name one."""


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    status = subparsers.add_parser("status", help="queue summary per flow and the transfers that need a person")
    status.add_argument("--json", action="store_true", help="machine-readable output")
    status.set_defaults(func=show_status)

    parser = subparsers.add_parser("transfers", help="list, inspect, retry, cancel or approve transfers")
    actions = parser.add_subparsers(dest="transfers_command", metavar="ACTION", parser_class=type(parser))
    listing = actions.add_parser("list", help="newest transfers first")
    listing.add_argument("--state", choices=[s.value for s in TransferState], help="only this state")
    listing.add_argument("--flow", help="only this flow")
    listing.add_argument("--limit", type=bounded_int("a limit", 1_000_000), default=50)
    listing.add_argument("--json", action="store_true")
    listing.set_defaults(func=list_transfers)
    show = actions.add_parser("show", help="every field of one transfer")
    show.add_argument("id", type=TRANSFER_ID)
    show.add_argument("--json", action="store_true")
    show.add_argument("--degenerations", action="store_true",
                      help="also list the 外字 replaced by 縮退 at ingest (record, field, from → to); "
                           "these are characters of names: personal data, read from the encrypted store")
    show.set_defaults(func=show_transfer)
    export = actions.add_parser("export", help="decrypt a transfer's stored file (e.g. a quarantined one) for the tax division")
    export.add_argument("id", type=TRANSFER_ID)
    export.add_argument("--output", required=True, metavar="FILE", help="where to write it (created 0600, never overwritten)")
    export.set_defaults(func=export_transfer)
    for name, helptext in (("retry", "send a FAILED or RETRY_WAIT transfer again now"),
                           ("approve", "release a HELD transfer (bulk data approved by the person in charge)"),
                           ("cancel", "discard a HELD, QUEUED, RETRY_WAIT or FAILED transfer")):
        action = actions.add_parser(name, help=helptext)
        action.add_argument("id", type=TRANSFER_ID)
        if name == "cancel":
            action.add_argument("--reason", required=True, help="why (kept in the ledger)")
        action.set_defaults(func=change_transfer, action=name)
    parser.set_defaults(func=show_usage(parser))


def operator_name(environ: Any = os.environ) -> str:
    """Who runs the command: ``SUDO_USER`` if set, else the login name of the uid (the audit trail's actor)."""
    from kei_gateway.operations.audit import operator_login

    return operator_login(environ)


def _ledger(args: argparse.Namespace) -> TransferLedger:
    config = read_config(config_path_from(args))
    return TransferLedger(create_ledger_engine(config.database_url, config.database.busy_timeout))


def _row_dict(row: TransferRow) -> dict[str, Any]:
    return {name: (value.isoformat() if isinstance(value, datetime) else value)
            for name, value in row.__dict__.items()}


def _line(row: TransferRow) -> str:
    when = row.updated_at.astimezone().strftime("%Y-%m-%d %H:%M")
    extra = f"  next {row.next_attempt_at.astimezone().strftime('%H:%M')}" if row.next_attempt_at and row.state == TransferState.RETRY_WAIT else ""
    error = f"  ({row.last_error[:80]})" if row.last_error and row.state in (TransferState.FAILED, TransferState.RETRY_WAIT, TransferState.QUARANTINED) else ""
    return (f"{row.id:>7}  {row.flow:<14} {row.state:<11} {row.record_count:>9} rec  {row.attempts:>2} tries  "
            f"{when}  {row.local_name}{extra}{error}")


def _nodes(args: argparse.Namespace, ledger: TransferLedger) -> list[dict[str, Any]] | None:
    """The nodes sharing the ledger (SPEC §14) and what each holds; None on a ledger from before leases."""
    from sqlalchemy import inspect

    from kei_gateway.adapters.ledger.leases import LeaseLedger

    if not inspect(ledger.engine).has_table("nodes"):
        return None
    config = read_config(config_path_from(args))
    now = datetime.now(timezone.utc)
    out = []
    for status in LeaseLedger(ledger.engine, config.node_id, config.database.lease).nodes(now):
        age = (now - status.node.heartbeat).total_seconds()
        out.append({"node": status.node.node_id, "host": status.host, "pid": status.pid,
                    "started": status.node.started.isoformat(), "heartbeat": status.node.heartbeat.isoformat(),
                    "heartbeat_age_seconds": round(age, 1), "up": age < config.database.lease,
                    "holds": dict(sorted(status.holds.items()))})
    return out


def show_status(args: argparse.Namespace) -> int:
    ledger = _ledger(args)
    counts = ledger.queue_counts()
    attention = [row for state in (TransferState.HELD, TransferState.FAILED) for row in ledger.list_transfers(state=state, limit=20)]
    nodes = _nodes(args, ledger)
    if args.json:
        print(json.dumps({"queue": [{"flow": f, "state": s, "count": c} for (f, s), c in sorted(counts.items())],
                          "attention": [_row_dict(r) for r in attention], "nodes": nodes},
                         ensure_ascii=False, indent=2))
        return exitcodes.OK
    if nodes is None:
        print("Nodes: unknown (the ledger is from before leases: run 'kei-gateway db upgrade').")
    elif not nodes:
        print("Nodes: none running.")
    else:
        print("Nodes:")
        for node in nodes:
            holds = ", ".join(f"{count} {kind}" for kind, count in node["holds"].items()) or "nothing"
            state = "up" if node["up"] else "SILENT"
            print(f"  {node['node']:<20} {state:<6} heartbeat {node['heartbeat_age_seconds']:g}s ago  "
                  f"host {node['host']} pid {node['pid']}  holds {holds}")
        print()
    flows = sorted({flow for flow, _ in counts})
    if not flows:
        print("Queue: empty (no open transfers).")
    for flow in flows:
        parts = ", ".join(f"{counts[(flow, s)]} {s.lower()}" for s in OPEN_STATES if counts.get((flow, s)))
        print(f"{flow}: {parts}")
    if attention:
        print("\nNeeds a person (approve or cancel HELD; retry or cancel FAILED):")
        for row in attention:
            print(_line(row))
    return exitcodes.OK


def list_transfers(args: argparse.Namespace) -> int:
    rows = _ledger(args).list_transfers(state=args.state, flow=args.flow, limit=args.limit)
    if args.json:
        print(json.dumps([_row_dict(r) for r in rows], ensure_ascii=False, indent=2))
    elif not rows:
        print("No transfers match.")
    else:
        print(f"{'id':>7}  {'flow':<14} {'state':<11} {'records':>13}  {'':>8}  {'updated':<16}  name")
        for row in rows:
            print(_line(row))
    return exitcodes.OK


def show_transfer(args: argparse.Namespace) -> int:
    try:
        row = _ledger(args).get(args.id)
    except TransferNotFound as error:
        print(error, file=sys.stderr)
        return exitcodes.FAILED
    data = _row_dict(row)
    if args.degenerations:
        from kei_gateway.adapters.store.errors import StoreError

        try:
            listing = _degenerations(args, row)
        except (StoreError, OSError, ValueError) as error:
            print(f"cannot read the 縮退 list of transfer {row.id}: {error}", file=sys.stderr)
            return exitcodes.FAILED
        data["degenerations"] = listing
    if args.json:
        print(json.dumps(data, ensure_ascii=False, indent=2))
    else:
        for name, value in data.items():
            if name == "degenerations":
                continue
            print(f"{name:>16}: {'' if value is None else value}")
        if args.degenerations:
            _print_degenerations(row, data["degenerations"])
    return exitcodes.OK


def _degenerations(args: argparse.Namespace, row: TransferRow) -> dict[str, Any]:
    """The transfer's 縮退 list from the store: counts, map versions, entries (personal: not audited values)."""
    from kei_gateway.layouts import parse_degenerations
    from kei_gateway.adapters.store.blobs import open_store
    from kei_gateway.adapters.store.errors import BlobNotFound
    from kei_gateway.adapters.store.format import degenerations_blob_id

    config = read_config(config_path_from(args))
    if not row.blob_id:
        return {"available": False, "reason": "the transfer has no stored file (never stored, or already purged)",
                "entries": []}
    store = open_store(config)
    try:
        document = b"".join(store.read(degenerations_blob_id(row.blob_id)))
    except BlobNotFound:
        return {"available": True, "degenerated": 0, "listed": 0, "maps": None, "entries": []}
    header = document.split(b"\n", 1)[0].decode("utf-8").split(" ", 6)
    entries = parse_degenerations(document)
    from kei_gateway.operations.audit import record_or_warn

    record_or_warn(config, "operator.degenerations_shown", transfer_id=row.id, flow=row.flow, peer=row.peer,
                   records=len(entries))
    return {"available": True, "degenerated": int(header[2]), "listed": int(header[4]),
            "maps": header[6] if len(header) > 6 else None,
            "entries": [{"record": e.record, "key": e.key, "from": e.source, "to": e.target} for e in entries]}


def _print_degenerations(row: TransferRow, listing: dict[str, Any]) -> None:
    if not listing["available"]:
        print(f"\n縮退 (degenerations): none to show; {listing['reason']}")
        return
    if not listing["degenerated"]:
        print("\n縮退 (degenerations): none (no 外字 was degenerated in this file)")
        return
    more = listing["degenerated"] - listing["listed"]
    print(f"\n縮退 (degenerations): {listing['degenerated']} in transfer {row.id} ({row.local_name}); "
          f"maps: {listing['maps']}" + (f"; the first {listing['listed']} listed" if more else ""))
    print(f"{'record':>9}  {'field':<16} from → to")
    for entry in listing["entries"]:
        print(f"{entry['record']:>9}  {entry['key']:<16} {entry['from']} → {entry['to']}")
    print("These are characters of personal names: do not copy them into tickets or mail.")


_ACTIONS = {
    "retry": (TransferState.QUEUED, (TransferState.FAILED, TransferState.RETRY_WAIT)),
    "approve": (TransferState.QUEUED, (TransferState.HELD,)),
    "cancel": (TransferState.CANCELLED, (TransferState.HELD, TransferState.QUEUED, TransferState.RETRY_WAIT,
                                       TransferState.FAILED)),
}


_AUDIT_EVENTS = {"retry": "operator.transfer_retried", "approve": "operator.transfer_approved",
                 "cancel": "operator.transfer_cancelled"}


def change_transfer(args: argparse.Namespace) -> int:
    """retry, approve, cancel: the change and its audit record commit in one transaction (issue 11); when the
    audit trail cannot be opened (no key, no table) the change is still made and the gap said, as before."""
    from kei_gateway.operations.audit import AuditError, record_or_warn
    from kei_gateway.operations.audit.operator_action import journal_operator_action, operator_audit_log

    config = read_config(config_path_from(args))
    ledger = TransferLedger(create_ledger_engine(config.database_url, config.database.busy_timeout))
    target, allowed = _ACTIONS[args.action]
    now = datetime.now(timezone.utc)
    who = operator_name()
    event = _AUDIT_EVENTS[args.action]
    try:
        audit_log = operator_audit_log(config, ledger.engine)
    except AuditError:
        audit_log = None  # record_or_warn below says why
    try:
        row = ledger.get(args.id)
        if row.state not in allowed:
            print(f"transfer {row.id} is {row.state}; '{args.action}' applies to {', '.join(allowed)} transfers only",
                  file=sys.stderr)
            return exitcodes.FAILED
        fields: dict[str, Any] = {}
        if args.action == "approve":
            fields["approved_by"] = who
        elif args.action == "cancel":
            fields["last_error"] = f"cancelled by {who}: {args.reason}"
        elif args.action == "retry":
            fields.update(next_attempt_at=None, attempts=0)
        audit_fields = {"transfer_id": row.id, "flow": row.flow, "peer": row.peer, "records": row.record_count,
                        "sha256": row.sha256, "reason": getattr(args, "reason", None)}

        def record(connection: Any) -> None:
            if audit_log is not None:
                audit_log.append_in(connection, event, audit_fields, now, actor=who)

        changed = _transition_from(ledger, row.id, allowed, target, now, fields, record)
        if changed is None:
            now_state = ledger.get(row.id).state
            print(f"transfer {row.id} became {now_state} meanwhile (the daemon moved it); '{args.action}' applies to "
                  f"{', '.join(allowed)} transfers only: nothing was changed", file=sys.stderr)
            return exitcodes.FAILED
        row = changed
    except (TransferNotFound, InvalidTransition) as error:
        print(error, file=sys.stderr)
        return exitcodes.FAILED
    except AuditError as error:  # the record could not be chained: the change was rolled back with it
        print(f"transfer {args.id} was not changed: its audit record could not be written: {error}", file=sys.stderr)
        return exitcodes.FAILED
    print(f"transfer {row.id} is now {row.state} (by {who})")
    if audit_log is not None:
        journal_operator_action(event, who, audit_fields)
    else:
        record_or_warn(config, event, **audit_fields)
    return exitcodes.OK


def _transition_from(ledger: TransferLedger, transfer_id: int, allowed: tuple[str, ...], target: TransferState,
                     now: datetime, fields: dict[str, Any],
                     record: Callable[[Any], None] = lambda connection: None) -> TransferRow | None:
    """Move the transfer to *target* only if it is still in one of *allowed*, in one statement, and *record* it
    on the same connection before the commit; None if it is not.

    The state read before is stale: the daemon may have moved the transfer since (a
    RETRY_WAIT one to SENDING, and SENDING -> QUEUED is a legal move, so a plain
    transition would queue a transfer that is being sent).
    """
    from sqlalchemy import update

    from kei_gateway.core.transfer import check_transition
    from kei_gateway.adapters.ledger.models import Transfer

    for state in allowed:
        check_transition(state, target)
    with ledger.engine.begin() as connection:
        result = connection.execute(update(Transfer).where(Transfer.id == transfer_id, Transfer.state.in_(allowed))
                                    .values(state=target.value, updated_at=now, **fields))
        if result.rowcount == 1:
            record(connection)  # the UPDATE holds SQLite's write lock: the chain's head cannot move meanwhile
    if result.rowcount != 1:
        return None
    return ledger.get(transfer_id)


def export_transfer(args: argparse.Namespace) -> int:
    config = read_config(config_path_from(args))
    ledger = TransferLedger(create_ledger_engine(config.database_url, config.database.busy_timeout))
    try:
        row = ledger.get(args.id)
    except TransferNotFound as error:
        print(error, file=sys.stderr)
        return exitcodes.FAILED
    if not row.blob_id:
        print(f"transfer {row.id} ({row.state}) has no stored file (never stored, or already purged)", file=sys.stderr)
        return exitcodes.FAILED
    from kei_gateway.adapters.store.errors import StoreError
    from kei_gateway.adapters.store.blobs import open_store

    try:
        store = open_store(config)
        fd = os.open(args.output, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
    except FileExistsError:
        print(f"{args.output} exists; choose a new file name (nothing is overwritten)", file=sys.stderr)
        return exitcodes.FAILED
    except (StoreError, OSError) as error:
        print(f"cannot export transfer {row.id}: {error}", file=sys.stderr)
        return exitcodes.FAILED
    size = 0
    try:
        with os.fdopen(fd, "wb") as out:
            for chunk in store.read(row.blob_id):
                out.write(chunk)
                size += len(chunk)
    except (StoreError, OSError) as error:
        os.unlink(args.output)
        print(f"cannot export transfer {row.id}: {error}", file=sys.stderr)
        return exitcodes.FAILED
    print(f"wrote {args.output}: {size} bytes of transfer {row.id} ({row.local_name}, {row.state}) "
          f"by {operator_name()}; it holds personal data: delete it when done")
    from kei_gateway.operations.audit import record_or_warn

    record_or_warn(config, "operator.transfer_exported", transfer_id=row.id, flow=row.flow, peer=row.peer,
                   records=row.record_count, sha256=row.sha256)
    return exitcodes.OK
