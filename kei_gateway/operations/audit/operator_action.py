"""``record_operator_action``: what a state-changing CLI command calls after it acted.

The actor is the operator's login (``$SUDO_USER``, else the name of the uid). The record is
appended to the same chain as the daemon's, and the same event goes to journald (when the
host has one; in a terminal nothing extra is printed: the audit record is the durable trace).
"""

from __future__ import annotations

import os
import pwd
from collections.abc import Mapping
from datetime import datetime, timezone
from typing import TYPE_CHECKING, Any, cast

from kei_gateway.operations.audit.chain import AuditRecord, StoredRecord
from kei_gateway.operations.audit.log import AuditError, AuditLog, AuditUnavailable, audit_key_from_config

if TYPE_CHECKING:
    from kei_gateway.config import Config

__all__ = ["record_operator_action", "record_or_warn", "operator_login", "record_from_fields", "operator_audit_log",
           "journal_operator_action"]

_COUNT_FIELDS = ("count", "records", "files")
_TEXT_FIELDS = ("flow", "peer", "listener", "source", "sha256", "reason")


def operator_login(environ: Mapping[str, str] = os.environ) -> str:
    """``$SUDO_USER`` if set, else the login name of this process's uid (``uid N`` if it has none)."""
    sudo = environ.get("SUDO_USER")
    if sudo:
        return sudo
    try:
        return pwd.getpwuid(os.getuid()).pw_name
    except KeyError:
        return f"uid {os.getuid()}"


def _int(value: Any) -> int | None:
    if value is None or isinstance(value, bool):
        return None
    try:
        return int(value)
    except (TypeError, ValueError):
        return None


def record_from_fields(event: str, actor: str, now: datetime, fields: Mapping[str, Any]) -> AuditRecord:
    """An audit record of *event* from an event's keyword fields; fields it has no column for are left out.

    ``records``, ``files`` or ``count`` become ``count``; a ``state`` (without a ``reason``)
    becomes the reason ``state HELD``; only the standard fields and ``listener``/``source`` are kept, so names of files and free text never reach the table
    (``reason`` is kept, cut to 255 characters).
    """
    count = next((_int(fields[name]) for name in _COUNT_FIELDS if _int(fields.get(name)) is not None), None)
    text = {name: (str(fields[name]) if fields.get(name) is not None else None) for name in _TEXT_FIELDS}
    if text["reason"] is None and fields.get("state") is not None:
        text["reason"] = f"state {fields['state']}"  # ingest.queued: QUEUED or HELD
    return AuditRecord(time=now, actor=actor, event=event, transfer_id=_int(fields.get("transfer_id")), count=count,
                       flow=text["flow"], peer=text["peer"], listener=text["listener"], source=text["source"],
                       sha256=text["sha256"], reason=text["reason"])


def _to_journal(event_name: str, actor: str, fields: Mapping[str, Any]) -> None:
    """The same event as a native journald entry, if this host has journald and the event is declared.

    Not through :class:`~kei_gateway.runtime.journal.GatewayLogObserver`: in a terminal it would fall back
    to printing the line, and a command's output is for the operator, not for the log.
    """
    import importlib

    from twisted.logger import ILogObserver, LogEvent, Logger

    from kei_gateway.runtime import events
    from kei_gateway.runtime.journal import journal_fields

    event_type = events.by_name(event_name)
    if event_type is None or not os.path.exists("/run/systemd/journal/socket"):
        return
    try:
        send = importlib.import_module("systemd.journal").send
    except ImportError:
        return
    captured: list[LogEvent] = []
    events.emit(Logger(namespace="kei_gateway.cli", observer=cast(ILogObserver, captured.append)), event_type,
                actor=actor, **fields)
    entry = journal_fields(captured[0])
    send(entry.pop("MESSAGE"), **entry)


def operator_audit_log(config: Config, engine: Any, environ: Mapping[str, str] = os.environ) -> AuditLog:
    """The audit chain on *engine* for a command that records its change in the change's own transaction
    (:meth:`AuditLog.append_in` with the operator as actor); :class:`AuditError` saying what to fix."""
    key = audit_key_from_config(config, environ)
    try:
        log = AuditLog(engine, key)
        available = log.available()
    except Exception as error:  # the database: its first line, never parameters
        from kei_gateway.runtime.events import describe_error

        raise AuditError(f"cannot open the audit trail: {describe_error(error)}") from None
    if not available:
        raise AuditUnavailable("the ledger has no audit table: run 'kei-gateway db upgrade'")
    return log


def journal_operator_action(event_name: str, actor: str, fields: Mapping[str, Any]) -> None:
    """The same event as a native journald entry, when the host has one (never a reason to fail the command)."""
    try:
        _to_journal(event_name, actor, fields)
    except Exception:
        pass


def record_operator_action(config: Config, event_name: str, *, environ: Mapping[str, str] = os.environ,
                           now: datetime | None = None, journal: bool = True, **fields: Any) -> StoredRecord:
    """Append an audit record of *event_name* with the operator as actor; also log it to journald.

    *fields* are event fields (``transfer_id=…``, ``reason=…``, ``records=…``); never pass a
    personal value. Raises :class:`~kei_gateway.operations.audit.AuditError` (key, database, no audit
    table) with a message that says what to do: the caller tells the operator that the action
    was done but is not in the audit trail.
    """
    from kei_gateway.adapters.ledger import create_ledger_engine

    actor = operator_login(environ)
    record = record_from_fields(event_name, actor, now or datetime.now(timezone.utc), fields)
    if journal:  # first, so that the action is in journald even if the audit trail cannot be written
        journal_operator_action(event_name, actor, fields)
    key = audit_key_from_config(config, environ)
    engine = create_ledger_engine(config.database_url, config.database.busy_timeout)
    try:
        if not AuditLog(engine, key).available():
            raise AuditUnavailable("the ledger has no audit table: run 'kei-gateway db upgrade'")
        return AuditLog(engine, key).append(record)
    except AuditError:
        raise
    except Exception as error:  # the database: its first line, never parameters
        from kei_gateway.runtime.events import describe_error

        raise AuditError(f"cannot write the audit record: {describe_error(error)}") from None
    finally:
        engine.dispose()


def record_or_warn(config: Config, event_name: str, **fields: Any) -> bool:
    """:func:`record_operator_action`, for a command that has already acted: a failure is said on stderr.

    The command keeps its exit status (what it did is done); the warning tells the operator
    that the audit trail misses it and what to fix. The event still went to journald.
    """
    import sys

    try:
        record_operator_action(config, event_name, **fields)
    except AuditError as error:
        print(f"warning: done, but not recorded in the audit trail: {error}", file=sys.stderr)
        return False
    return True
