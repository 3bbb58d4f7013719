"""The gateway's one log observer: journald fields under systemd, readable lines in a terminal.

Code logs with ``twisted.logger`` and :func:`kei_gateway.runtime.events.emit`; this
module turns each event into either

* a native journald entry (``systemd.journal.send``) with the fields of
  SPEC.md §8 — ``MESSAGE``, ``PRIORITY``, ``SYSLOG_IDENTIFIER=kei-gateway``,
  ``MESSAGE_ID``, ``KEI_EVENT`` and ``KEI_FLOW`` … ``KEI_REASON`` — or
* one readable line on a text stream (stderr by default)::

    2026-11-21 22:30:00+0900 [info] daemon.ready: kei-gateway ready: … flow=jnks-payments transfer_id=12

It also generates, from the same event table, the journald message catalog
(``systemd/kei-gateway.catalog``) and the event reference (``docs/events.md``)::

    python -m kei_gateway.tools.event_catalog catalog > systemd/kei-gateway.catalog
    python -m kei_gateway.tools.event_catalog events-md > docs/events.md
"""

from __future__ import annotations

import importlib
import json
import logging
import os
import sys
import threading
from collections.abc import Callable, Mapping
from typing import Any, TextIO, cast

from twisted.logger import (
    ILogObserver,
    LogEvent,
    Logger,
    LogLevel,
    formatEvent,
    formatTime,
    globalLogBeginner,
)
from twisted.python.failure import Failure
from zope.interface import implementer

from kei_gateway.runtime import events

__all__ = ["GatewayLogObserver", "begin_logging", "parse_level", "journal_priority", "journal_fields",
    "instance_fields", "terminal_line", "stderr_is_journal", "resolve_target", "SYSLOG_IDENTIFIER", "TARGETS",
    "SendFunction"]

SYSLOG_IDENTIFIER = "kei-gateway"
INSTANCE_ENV = "KEI_GATEWAY_INSTANCE"
TARGETS = ("auto", "journal", "terminal")

_PRIORITIES: dict[LogLevel, int] = {
    LogLevel.debug: 7,
    LogLevel.info: 6,
    LogLevel.warn: 4,
    LogLevel.error: 3,
    LogLevel.critical: 2,
}
_ORDER: dict[LogLevel, int] = {
    LogLevel.debug: 0,
    LogLevel.info: 1,
    LogLevel.warn: 2,
    LogLevel.error: 3,
    LogLevel.critical: 4,
}
_LEVEL_NAMES: dict[str, LogLevel] = {
    "debug": LogLevel.debug,
    "info": LogLevel.info,
    "warn": LogLevel.warn,
    "warning": LogLevel.warn,
    "error": LogLevel.error,
    "critical": LogLevel.critical,
}

SendFunction = Callable[..., None]


def parse_level(name: str) -> LogLevel:
    """The :class:`LogLevel` called *name* (``debug``, ``info``, ``warn``/``warning``,
    ``error``, ``critical``; case and surrounding blanks ignored).

    :raises ValueError: for any other name, saying which names are accepted.
    """
    level = _LEVEL_NAMES.get(name.strip().lower())
    if level is None:
        raise ValueError(
            f"unknown log level {name!r}: use one of debug, info, warn (or warning), error, critical"
        )
    return level


def journal_priority(level: LogLevel) -> int:
    """The syslog/journald ``PRIORITY`` for a Twisted log level."""
    return _PRIORITIES.get(level, 6)


def _event_level(event: LogEvent) -> LogLevel:
    level = event.get("log_level")
    try:
        return cast(LogLevel, level) if level in _ORDER else LogLevel.info
    except TypeError:  # an unhashable value where a level belongs
        return LogLevel.info


def _event_type(event: LogEvent) -> events.EventType:
    name = event.get("kei_event")
    found = events.by_name(name) if isinstance(name, str) else None
    return found if found is not None else events.MESSAGE


def _exception_name(failure: Failure) -> str:
    kind = failure.type
    if not isinstance(kind, type):
        return str(kind)
    module = kind.__module__
    return kind.__qualname__ if module == "builtins" else f"{module}.{kind.__qualname__}"


def _failure_text(failure: Failure, *, include_exception_message: bool) -> str:
    """The traceback of *failure*: its frames, then its exception type.

    Frames name files, lines and functions — code, never data — so they are
    always included: an ``internal.error`` without them cannot be diagnosed.
    The exception's *message* is another matter: our own code never puts a
    value in one (STYLE.md), but the standard library and third-party code do
    (``int('…')`` quotes its input, ``UnicodeDecodeError`` its bytes,
    SQLAlchemy its bound parameters), and those inputs are tax records. So the
    message is written only when the operator has chosen ``debug`` — a
    deliberate, temporary troubleshooting setting — and otherwise replaced by
    a note saying how to see it.
    """
    lines = ["Traceback (most recent call last):"]
    for frame in failure.frames:
        function, filename, line_number = frame[0], frame[1], frame[2]
        lines.append(f'  File "{filename}", line {line_number}, in {function}')
    name = _exception_name(failure)
    if include_exception_message:
        lines.append(f"{name}: {failure.getErrorMessage()}")
    else:
        lines.append(f"{name} (exception message withheld: it may quote input data; set log level debug to see it)")
    return "\n".join(lines)


def _message(event: LogEvent, *, include_exception_message: bool) -> str:
    text = formatEvent(event)
    failure = event.get("log_failure")
    if isinstance(failure, Failure):
        tb = _failure_text(failure, include_exception_message=include_exception_message)
        text = f"{text}\n{tb}" if text else tb
    return text


def journal_fields(event: LogEvent, *, include_exception_message: bool = False) -> dict[str, str]:
    """The journald fields for *event* (``MESSAGE`` included), as strings.

    ``CODE_FUNC`` carries the event's logger namespace (module or class that
    logged it); without an explicit value ``systemd.journal.send`` would
    record this module's own line, which says nothing.
    """
    event_type = _event_type(event)
    fields = {
        "MESSAGE": _message(event, include_exception_message=include_exception_message),
        "MESSAGE_ID": event_type.message_id,
        "PRIORITY": str(journal_priority(_event_level(event))),
        "SYSLOG_IDENTIFIER": SYSLOG_IDENTIFIER,
        "KEI_EVENT": event_type.name,
    }
    for key in events.STANDARD_FIELDS:
        value = event.get(key)
        if value is not None:
            fields["KEI_" + key.upper()] = str(value)
    namespace = event.get("log_namespace")
    if isinstance(namespace, str) and namespace:
        fields["CODE_FUNC"] = namespace
    return fields


def instance_fields(environ: Mapping[str, str]) -> dict[str, str]:
    """``KEI_INSTANCE=<city>`` for every entry of an instance of ``kei-gateway@.service``.

    The template unit sets ``KEI_GATEWAY_INSTANCE=%i``; the plain unit does not, and its
    entries carry no such field. ``journalctl KEI_INSTANCE=131041`` picks one city's events.
    """
    instance = environ.get(INSTANCE_ENV, "")
    return {"KEI_INSTANCE": instance} if instance else {}


def _field_value(value: object) -> str:
    text = str(value)
    if not text or any(c.isspace() or c in '"=' for c in text):
        return json.dumps(text, ensure_ascii=False)
    return text


def terminal_line(event: LogEvent, *, include_exception_message: bool = False) -> str:
    """*event* as readable text: one line, then an indented traceback for failures.

    ``<local time> [<level>] <event name>: <message> <field>=<value> …`` — the
    standard fields in the order of :data:`kei_gateway.runtime.events.STANDARD_FIELDS`.
    Events from libraries (no ``kei_event``) show their logger namespace in
    place of the event name. Continuation lines are indented by four spaces.
    """
    when = event.get("log_time")
    timestamp = formatTime(when, "%Y-%m-%d %H:%M:%S%z") if isinstance(when, (int, float)) else "-"
    level = _event_level(event)
    name = event.get("kei_event")
    if not isinstance(name, str) or events.by_name(name) is None:
        namespace = event.get("log_namespace")
        name = namespace if isinstance(namespace, str) and namespace else events.MESSAGE.name
    message = _message(event, include_exception_message=include_exception_message)
    first, _, rest = message.partition("\n")
    extras = "".join(
        f" {key}={_field_value(event[key])}"
        for key in events.STANDARD_FIELDS
        if event.get(key) is not None
    )
    line = f"{timestamp} [{level.name}] {name}: {first}{extras}"
    if rest:
        line += "".join(f"\n    {continuation}" for continuation in rest.split("\n"))
    return line


def stderr_is_journal(environ: Mapping[str, str], stderr_stat: os.stat_result | None) -> bool:
    """Whether stderr is systemd's journal stream.

    systemd sets ``JOURNAL_STREAM=<device>:<inode>`` for a service whose
    stdout/stderr it connected to journald; the variable is inherited by
    children whose stderr may be something else, so it counts only if it
    matches what file descriptor 2 really is (*stderr_stat*).
    """
    value = environ.get("JOURNAL_STREAM", "")
    device, sep, inode = value.partition(":")
    if not sep or stderr_stat is None:
        return False
    try:
        return (int(device), int(inode)) == (stderr_stat.st_dev, stderr_stat.st_ino)
    except ValueError:
        return False


def _stat_stderr() -> os.stat_result | None:
    try:
        return os.fstat(2)
    except OSError:
        return None


def resolve_target(
    target: str,
    environ: Mapping[str, str],
    stderr_stat: os.stat_result | None,
    journal_available: bool = True,
) -> str:
    """``"journal"`` or ``"terminal"`` for the requested *target*.

    ``auto`` means journal exactly when :func:`stderr_is_journal`. A journal
    target without systemd-python (never the case on a supported host) falls
    back to the terminal rather than losing every log line.

    :raises ValueError: if *target* is not one of :data:`TARGETS`.
    """
    if target not in TARGETS:
        raise ValueError(f"unknown log target {target!r}: use auto, journal or terminal")
    if not journal_available:
        return "terminal"
    if target == "auto":
        return "journal" if stderr_is_journal(environ, stderr_stat) else "terminal"
    return target


def _import_journal_send() -> SendFunction | None:
    # importlib, not "from systemd import journal": to mypy, the repository's
    # own systemd/ directory (unit files, catalog) shadows systemd-python.
    try:
        systemd_journal = importlib.import_module("systemd.journal")
    except ImportError:
        return None
    send: SendFunction = systemd_journal.send
    return send


@implementer(ILogObserver)
class GatewayLogObserver:
    """Writes every log event at or above :attr:`level` to journald or a terminal.

    :param target: ``"journal"``, ``"terminal"`` or ``"auto"`` (journal when
        stderr is the journal stream, see :func:`stderr_is_journal`).
    :param level: the minimum level written; assign :attr:`level` at any time
        (SIGHUP reload does).
    :param stream: the terminal stream; default: ``sys.stderr`` at the time of
        each write.
    :param environ: the environment consulted by ``auto``; default ``os.environ``.
    :param send: the journald send function; default ``systemd.journal.send``.

    The observer never raises: if journald refuses an entry, the event is
    written as a terminal line instead (under systemd, stderr is itself the
    journal, so the line still arrives — as plain text), preceded once by a
    note saying why.
    """

    def __init__(
        self,
        target: str = "auto",
        level: LogLevel = LogLevel.info,
        stream: TextIO | None = None,
        environ: Mapping[str, str] | None = None,
        send: SendFunction | None = None,
    ) -> None:
        self.level = level
        self._stream = stream
        self._send = send if send is not None else _import_journal_send()
        environ = os.environ if environ is None else environ
        self._target = resolve_target(target, environ, _stat_stderr(), journal_available=self._send is not None)
        self._instance = instance_fields(environ)
        # Reentrant: a signal handler runs between the bytecodes of a write on the same thread
        # (Twisted logs "Received SIGTERM" from it), and a plain Lock would deadlock there.
        self._lock = threading.RLock()
        self._journal_failure_noted = False

    @property
    def target(self) -> str:
        """Where events go: ``"journal"`` or ``"terminal"``."""
        return self._target

    def __call__(self, event: LogEvent) -> None:
        try:
            if _ORDER[_event_level(event)] < _ORDER.get(self.level, 1):
                return
            detailed = self.level == LogLevel.debug
            if self._target == "journal" and self._send is not None:
                try:
                    fields = journal_fields(event, include_exception_message=detailed)
                    fields.update(self._instance)
                    self._send(fields.pop("MESSAGE"), **fields)
                    return
                except Exception as error:  # journald gone, socket full, …
                    self._note_journal_failure(error)
            self._write(terminal_line(event, include_exception_message=detailed))
        except Exception:
            pass  # a log observer must never raise into the logging system

    def _note_journal_failure(self, error: Exception) -> None:
        if not self._journal_failure_noted:
            self._journal_failure_noted = True
            self._write(
                f"{SYSLOG_IDENTIFIER}: journald did not accept a log entry "
                f"({type(error).__name__}); writing log lines to stderr instead"
            )

    def _write(self, line: str) -> None:
        stream = self._stream if self._stream is not None else sys.stderr
        with self._lock:
            try:
                stream.write(line + "\n")
                stream.flush()
            except Exception:
                pass


_STDLIB_LEVELS = (
    (logging.CRITICAL, LogLevel.critical),
    (logging.ERROR, LogLevel.error),
    (logging.WARNING, LogLevel.warn),
    (logging.INFO, LogLevel.info),
)


class _StdlibToTwisted(logging.Handler):
    """Forwards stdlib ``logging`` records (libraries: SQLAlchemy, Alembic …) to twisted.logger.

    *observer* receives the events directly (tests); by default they go to the
    global log publisher like any ``Logger``'s.
    """

    def __init__(self, observer: ILogObserver | None = None) -> None:
        super().__init__()
        self._observer = observer

    def emit(self, record: logging.LogRecord) -> None:
        try:
            level = next((lv for number, lv in _STDLIB_LEVELS if record.levelno >= number), LogLevel.debug)
            fields: dict[str, Any] = {"text": record.getMessage()}
            if record.exc_info and record.exc_info[1] is not None:
                _, value, tb = record.exc_info
                fields["log_failure"] = Failure(value, type(value), tb)
            Logger(namespace=record.name, observer=self._observer).emit(level, "{text}", **fields)
        except Exception:
            pass


def begin_logging(observer: GatewayLogObserver) -> None:
    """Send all twisted.logger events — and stdlib ``logging`` records — to *observer*.

    Standard I/O is not redirected: under systemd stderr already is the
    journal, and a stray ``print`` must not pose as a log event. The stdlib
    root logger keeps its level (WARNING unless someone changed it) on
    purpose: below that, SQLAlchemy's engine logger writes SQL statements
    *with their bound parameters* — personal data — so library INFO/DEBUG
    chatter is never forwarded.
    """
    globalLogBeginner.beginLoggingTo([cast(ILogObserver, observer)], redirectStandardIO=False)
    root = logging.getLogger()
    if not any(isinstance(handler, _StdlibToTwisted) for handler in root.handlers):
        root.addHandler(_StdlibToTwisted())


