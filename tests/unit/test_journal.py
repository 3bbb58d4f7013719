"""Unit tests of the log observer and the generated catalog: a fake ``send``, no journald, no reactor."""

from __future__ import annotations

import io
import logging
import os
import re
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest
from twisted.logger import Logger, LogLevel

from kei_gateway.runtime import events
from kei_gateway.runtime.journal import (
    SYSLOG_IDENTIFIER,
    GatewayLogObserver,
    _StdlibToTwisted,
    journal_fields,
    journal_priority,
    parse_level,
    resolve_target,
    stderr_is_journal,
    terminal_line,
)
from kei_gateway.tools.event_catalog import catalog_text, events_markdown

ROOT = Path(__file__).resolve().parents[2]
WHEN = 1795786200.0  # 2026-11-21 13:30:00 UTC


class FakeSend:
    """Records what would have been sent to journald; can be told to fail."""

    def __init__(self, error: Exception | None = None) -> None:
        self.entries: list[dict[str, str]] = []
        self.error = error

    def __call__(self, MESSAGE: str, **fields: str) -> None:
        if self.error is not None:
            raise self.error
        self.entries.append({"MESSAGE": MESSAGE, **fields})


def journal_observer(level: LogLevel = LogLevel.info) -> tuple[GatewayLogObserver, FakeSend]:
    send = FakeSend()
    return GatewayLogObserver(target="journal", level=level, send=send, environ={}), send


def terminal_observer(level: LogLevel = LogLevel.info) -> tuple[GatewayLogObserver, io.StringIO]:
    stream = io.StringIO()
    return GatewayLogObserver(target="terminal", level=level, stream=stream, environ={}, send=FakeSend()), stream


def local_time(when: float) -> str:
    return datetime.fromtimestamp(when).astimezone().strftime("%Y-%m-%d %H:%M:%S%z")


def fake_stat(device: int, inode: int) -> os.stat_result:
    return os.stat_result((0o140777, inode, device, 1, 0, 0, 0, 0, 0, 0))


# --- levels ----------------------------------------------------------------------


@pytest.mark.parametrize(
    "name, level",
    [
        ("debug", LogLevel.debug),
        ("info", LogLevel.info),
        ("warn", LogLevel.warn),
        ("warning", LogLevel.warn),
        ("error", LogLevel.error),
        ("critical", LogLevel.critical),
        (" WARNING ", LogLevel.warn),
    ],
)
def test_when_a_level_name_is_parsed_then_its_log_level_is_returned(name: str, level: LogLevel) -> None:
    assert parse_level(name) is level


@pytest.mark.parametrize("name", ["", "verbose", "fatal", "notice", "6"])
def test_when_an_unknown_level_name_is_parsed_then_value_error_names_the_accepted_ones(name: str) -> None:
    with pytest.raises(ValueError, match="debug, info, warn"):
        parse_level(name)


@pytest.mark.parametrize(
    "level, priority",
    [(LogLevel.debug, 7), (LogLevel.info, 6), (LogLevel.warn, 4), (LogLevel.error, 3), (LogLevel.critical, 2)],
)
def test_when_a_level_is_mapped_then_the_syslog_priority_follows_the_spec(level: LogLevel, priority: int) -> None:
    assert journal_priority(level) == priority


# --- journald fields --------------------------------------------------------------


def test_when_an_event_is_emitted_to_the_journal_then_every_spec_field_is_sent() -> None:
    observer, send = journal_observer()
    log = Logger(namespace="kei_gateway.test", observer=observer)
    events.emit(
        log, events.DAEMON_READY, listeners="metrics", schema="0001",
        flow="jnks-payments", peer="jnks", transfer_id=12, sha256="ab" * 32, records=3021, reason="ok",
    )
    assert send.entries == [
        {
            "MESSAGE": "kei-gateway ready: listeners metrics, database schema 0001",
            "MESSAGE_ID": events.DAEMON_READY.message_id,
            "PRIORITY": "6",
            "SYSLOG_IDENTIFIER": SYSLOG_IDENTIFIER,
            "KEI_EVENT": "daemon.ready",
            "KEI_FLOW": "jnks-payments",
            "KEI_PEER": "jnks",
            "KEI_TRANSFER_ID": "12",
            "KEI_SHA256": "ab" * 32,
            "KEI_RECORDS": "3021",
            "KEI_REASON": "ok",
            "CODE_FUNC": "kei_gateway.test",
        }
    ]


def test_when_run_as_an_instance_of_the_template_then_every_entry_carries_kei_instance() -> None:
    """When KEI_GATEWAY_INSTANCE is set (kei-gateway@131041), then each entry has KEI_INSTANCE=131041."""
    send = FakeSend()
    observer = GatewayLogObserver(target="journal", send=send, environ={"KEI_GATEWAY_INSTANCE": "131041"})
    events.emit(Logger(namespace="t", observer=observer), events.DAEMON_READY, listeners="metrics", schema="0001")
    (entry,) = send.entries
    assert entry["KEI_INSTANCE"] == "131041" and entry["SYSLOG_IDENTIFIER"] == SYSLOG_IDENTIFIER
    plain, plain_send = journal_observer()
    events.emit(Logger(namespace="t", observer=plain), events.DAEMON_READY, listeners="metrics", schema="0001")
    assert "KEI_INSTANCE" not in plain_send.entries[0]


def test_when_standard_fields_are_absent_then_no_kei_field_but_kei_event_is_sent() -> None:
    observer, send = journal_observer()
    events.emit(Logger(namespace="t", observer=observer), events.LISTENER_DENIED,
                listener="metrics", source="10.0.0.9", reason="address")
    (entry,) = send.entries
    assert {k for k in entry if k.startswith("KEI_")} == {"KEI_EVENT", "KEI_REASON"}
    assert entry["PRIORITY"] == "4"
    assert entry["MESSAGE_ID"] == "4984db45de834d8fae112f5626428021"


def test_when_a_library_logs_without_kei_event_then_the_generic_message_id_is_used() -> None:
    observer, send = journal_observer()
    Logger(namespace="twisted.web.server.Site", observer=observer).info("Starting factory {f}", f="Site")
    (entry,) = send.entries
    assert entry["MESSAGE_ID"] == events.MESSAGE.message_id
    assert entry["KEI_EVENT"] == "message"
    assert entry["MESSAGE"] == "Starting factory Site"
    assert entry["CODE_FUNC"] == "twisted.web.server.Site"


def test_when_kei_event_names_no_known_event_then_the_generic_message_id_is_used() -> None:
    fields = journal_fields({"log_format": "x", "log_level": LogLevel.error, "kei_event": "no.such"})
    assert (fields["MESSAGE_ID"], fields["KEI_EVENT"], fields["PRIORITY"]) == (events.MESSAGE.message_id, "message", "3")


def test_when_an_event_has_no_level_then_it_is_sent_as_info() -> None:
    fields = journal_fields({"log_format": "bare"})
    assert (fields["MESSAGE"], fields["PRIORITY"]) == ("bare", "6")


def _log_failure(log: Logger) -> None:
    try:
        int("山田太郎")  # the kind of input a record parser would see
    except ValueError:
        events_fields: dict[str, Any] = {"kei_event": events.INTERNAL_ERROR.name, "reason": "parse"}
        log.failure("unexpected error: {reason}", **events_fields)


def test_when_a_failure_is_logged_at_info_then_frames_and_type_are_sent_but_not_the_exception_message() -> None:
    observer, send = journal_observer(LogLevel.info)
    _log_failure(Logger(namespace="t", observer=observer))
    (entry,) = send.entries
    message = entry["MESSAGE"]
    assert message.startswith("unexpected error: parse\nTraceback (most recent call last):\n")
    assert re.search(r'File ".*test_journal\.py", line \d+, in _log_failure', message)
    assert "ValueError (exception message withheld" in message
    assert "山田" not in message
    assert entry["PRIORITY"] == "2"  # Logger.failure logs at critical
    assert entry["MESSAGE_ID"] == events.INTERNAL_ERROR.message_id


def test_when_a_failure_is_logged_at_debug_then_the_exception_message_is_included() -> None:
    observer, send = journal_observer(LogLevel.debug)
    _log_failure(Logger(namespace="t", observer=observer))
    (entry,) = send.entries
    assert entry["MESSAGE"].endswith("ValueError: invalid literal for int() with base 10: '山田太郎'")


# --- terminal lines ----------------------------------------------------------------


def test_when_an_event_is_written_to_a_terminal_then_it_is_one_line_with_time_level_name_message_fields() -> None:
    line = terminal_line({
        "log_time": WHEN, "log_level": LogLevel.info, "log_namespace": "t",
        "log_format": events.DAEMON_READY.format, "kei_event": "daemon.ready",
        "listeners": "metrics", "schema": "0001", "flow": "jnks-payments", "transfer_id": 12,
    })
    assert line == (
        f"{local_time(WHEN)} [info] daemon.ready: kei-gateway ready: listeners metrics, database schema 0001"
        " flow=jnks-payments transfer_id=12"
    )


def test_when_a_field_value_has_blanks_or_quotes_then_the_terminal_shows_it_quoted() -> None:
    line = terminal_line({"log_time": WHEN, "log_level": LogLevel.warn, "log_format": "denied",
                          "kei_event": "listener.denied", "reason": 'not "allowed" here', "peer": ""})
    assert line.endswith(' peer="" reason="not \\"allowed\\" here"')
    assert "[warn] listener.denied: denied" in line


def test_when_a_library_event_is_written_to_a_terminal_then_its_namespace_stands_for_the_event_name() -> None:
    line = terminal_line({"log_time": WHEN, "log_level": LogLevel.info, "log_format": "Starting",
                          "log_namespace": "twisted.web.server.Site"})
    assert line == f"{local_time(WHEN)} [info] twisted.web.server.Site: Starting"


def test_when_a_failure_is_written_to_a_terminal_then_the_traceback_follows_on_indented_lines() -> None:
    observer, stream = terminal_observer()
    _log_failure(Logger(namespace="t", observer=observer))
    first, *rest = stream.getvalue().rstrip("\n").split("\n")
    assert re.fullmatch(r"\S+ \S+ \[critical\] internal\.error: unexpected error: parse reason=parse", first)
    assert rest[0] == "    Traceback (most recent call last):"
    assert all(line.startswith("    ") for line in rest)
    assert "山田" not in stream.getvalue()


def test_when_the_terminal_observer_gets_events_then_each_is_one_line_on_its_stream() -> None:
    observer, stream = terminal_observer()
    log = Logger(namespace="t", observer=observer)
    events.emit(log, events.DAEMON_STARTING, version="1.0", config_path="/etc/kei-gateway/kei-gateway.toml")
    events.emit(log, events.DAEMON_STOPPED)
    lines = stream.getvalue().splitlines()
    assert [line.split(" ", 3)[3] for line in lines] == [
        "daemon.starting: kei-gateway 1.0 starting with configuration /etc/kei-gateway/kei-gateway.toml",
        "daemon.stopped: kei-gateway stopped cleanly",
    ]


# --- target selection ---------------------------------------------------------------


def test_when_journal_stream_matches_stderr_then_stderr_is_the_journal() -> None:
    assert stderr_is_journal({"JOURNAL_STREAM": "8:12345"}, fake_stat(8, 12345))


@pytest.mark.parametrize(
    "environ, stat",
    [
        ({}, fake_stat(8, 12345)),
        ({"JOURNAL_STREAM": "8:99999"}, fake_stat(8, 12345)),  # inherited from a parent, stderr redirected
        ({"JOURNAL_STREAM": "9:12345"}, fake_stat(8, 12345)),
        ({"JOURNAL_STREAM": "garbage"}, fake_stat(8, 12345)),
        ({"JOURNAL_STREAM": "a:b"}, fake_stat(8, 12345)),
        ({"JOURNAL_STREAM": "8:12345"}, None),  # fd 2 closed
    ],
)
def test_when_journal_stream_is_missing_or_does_not_match_then_stderr_is_not_the_journal(
    environ: dict[str, str], stat: os.stat_result | None,
) -> None:
    assert not stderr_is_journal(environ, stat)


def test_when_target_is_auto_then_it_resolves_by_the_journal_stream() -> None:
    on_journal = {"JOURNAL_STREAM": "8:12345"}
    assert resolve_target("auto", on_journal, fake_stat(8, 12345)) == "journal"
    assert resolve_target("auto", on_journal, fake_stat(8, 1)) == "terminal"


def test_when_target_is_explicit_then_the_environment_is_ignored() -> None:
    assert resolve_target("journal", {}, None) == "journal"
    assert resolve_target("terminal", {"JOURNAL_STREAM": "8:12345"}, fake_stat(8, 12345)) == "terminal"


def test_when_systemd_python_is_unavailable_then_a_journal_target_falls_back_to_the_terminal() -> None:
    assert resolve_target("journal", {}, None, journal_available=False) == "terminal"


def test_when_the_target_is_unknown_then_value_error_names_the_accepted_ones() -> None:
    with pytest.raises(ValueError, match="auto, journal or terminal"):
        GatewayLogObserver(target="syslog", send=FakeSend())


def test_when_the_environment_names_this_process_stderr_then_auto_observer_targets_the_journal() -> None:
    stat = os.fstat(2)
    observer = GatewayLogObserver(environ={"JOURNAL_STREAM": f"{stat.st_dev}:{stat.st_ino}"}, send=FakeSend())
    assert observer.target == "journal"


def test_when_the_environment_has_no_journal_stream_then_auto_observer_targets_the_terminal() -> None:
    assert GatewayLogObserver(environ={}, send=FakeSend()).target == "terminal"


# --- level filtering -----------------------------------------------------------------


def test_when_an_event_is_below_the_level_then_it_is_dropped() -> None:
    observer, send = journal_observer(LogLevel.warn)
    log = Logger(namespace="t", observer=observer)
    log.debug("d")
    log.info("i")
    log.warn("w")
    log.error("e")
    log.critical("c")
    assert [entry["MESSAGE"] for entry in send.entries] == ["w", "e", "c"]


def test_when_the_level_is_changed_at_runtime_then_the_next_events_follow_it() -> None:
    observer, stream = terminal_observer(LogLevel.info)
    log = Logger(namespace="t", observer=observer)
    log.info("before")
    observer.level = LogLevel.error
    log.warn("dropped")
    log.error("kept")
    observer.level = LogLevel.debug
    log.debug("now visible")
    assert [line.split(": ", 1)[1] for line in stream.getvalue().splitlines()] == ["before", "kept", "now visible"]


# --- never raising -----------------------------------------------------------------------


def test_when_journald_refuses_an_entry_then_the_event_is_written_as_a_terminal_line_after_one_note() -> None:
    stream = io.StringIO()
    observer = GatewayLogObserver(target="journal", stream=stream, environ={},
                                  send=FakeSend(error=ConnectionRefusedError(111, "refused")))
    log = Logger(namespace="t", observer=observer)
    events.emit(log, events.DAEMON_STOPPING, flow="mpn-slips")
    events.emit(log, events.DAEMON_STOPPED)
    lines = stream.getvalue().splitlines()
    assert lines[0] == ("kei-gateway: journald did not accept a log entry (ConnectionRefusedError); "
                        "writing log lines to stderr instead")
    assert lines[1].endswith("[info] daemon.stopping: kei-gateway stopping: draining transfers in flight flow=mpn-slips")
    assert lines[2].endswith("[info] daemon.stopped: kei-gateway stopped cleanly")
    assert len(lines) == 3
    assert observer.target == "journal"  # journald may come back; every event tries it first


def test_when_the_terminal_stream_fails_then_the_observer_does_not_raise() -> None:
    class BrokenStream(io.StringIO):
        def write(self, text: str) -> int:
            raise OSError("EPIPE")

    stream = BrokenStream()
    observer = GatewayLogObserver(target="journal", stream=stream, environ={}, send=FakeSend(error=OSError("gone")))
    observer({"log_format": "x", "log_level": LogLevel.error})
    assert stream.getvalue() == ""


def test_when_the_event_cannot_be_formatted_then_the_observer_still_sends_a_message() -> None:
    observer, send = journal_observer()
    observer({"log_format": "missing {field}", "log_level": LogLevel.info})
    observer({"log_level": object(), "log_format": None, "kei_event": ["unhashable"]})
    assert len(send.entries) == 2
    assert "Unable to format event" in send.entries[0]["MESSAGE"]
    assert send.entries[1]["PRIORITY"] == "6"


# --- stdlib logging bridge ------------------------------------------------------------------


def test_when_a_library_logs_through_stdlib_logging_then_the_observer_gets_it_with_level_and_namespace() -> None:
    observer, send = journal_observer(LogLevel.debug)
    stdlib_logger = logging.getLogger("kei_gateway_test.library")
    stdlib_logger.propagate = False
    stdlib_logger.setLevel(logging.DEBUG)
    handler = _StdlibToTwisted(observer)
    stdlib_logger.addHandler(handler)
    try:
        stdlib_logger.warning("pool %s exhausted", "main")
        try:
            raise KeyError("k")
        except KeyError:
            stdlib_logger.exception("lookup failed")
    finally:
        stdlib_logger.removeHandler(handler)
    first, second = send.entries
    assert (first["MESSAGE"], first["PRIORITY"], first["CODE_FUNC"], first["MESSAGE_ID"]) == (
        "pool main exhausted", "4", "kei_gateway_test.library", events.MESSAGE.message_id)
    assert second["PRIORITY"] == "3"
    assert second["MESSAGE"].startswith("lookup failed\nTraceback (most recent call last):")
    assert second["MESSAGE"].endswith("KeyError: 'k'")


# --- generated catalog and docs ----------------------------------------------------------------


def test_when_the_catalog_is_generated_then_it_equals_the_committed_file() -> None:
    """When events.py changes, then regenerate: python -m kei_gateway.tools.event_catalog catalog > systemd/kei-gateway.catalog"""
    assert (ROOT / "systemd" / "kei-gateway.catalog").read_text(encoding="utf-8") == catalog_text()


def test_when_the_event_reference_is_generated_then_it_equals_the_committed_docs() -> None:
    """When events.py changes, then regenerate: python -m kei_gateway.tools.event_catalog events-md > docs/events.md"""
    assert (ROOT / "docs" / "events.md").read_text(encoding="utf-8") == events_markdown()


def _catalog_entries(text: str) -> dict[tuple[str, str], list[str]]:
    """Parse the way journald's catalog importer does (header after a blank line; # lines are comments)."""
    entries: dict[tuple[str, str], list[str]] = {}
    current: list[str] | None = None
    previous_blank = True
    for line in text.split("\n"):
        match = re.fullmatch(r"-- ([0-9a-f]{32})(?: ([a-z]{2}(?:_[A-Z]{2})?))?", line)
        if previous_blank and match:
            key = (match.group(1), match.group(2) or "")
            assert key not in entries, f"duplicate catalog entry {key}"
            current = entries[key] = []
        elif current is not None and not line.startswith(("#", ";")):
            current.append(line)
        previous_blank = line == ""
    return entries


def test_when_the_catalog_is_parsed_then_every_event_has_an_english_and_a_japanese_entry() -> None:
    entries = _catalog_entries(catalog_text())
    assert set(entries) == {(e.message_id, lang) for e in events.ALL_EVENTS for lang in ("", "ja")}
    for event in events.ALL_EVENTS:
        english, japanese = entries[(event.message_id, "")], entries[(event.message_id, "ja")]
        assert english[:3] == [f"Subject: {event.summary_en.rstrip('.')}", "Defined-By: kei-gateway", english[2]]
        assert english[2].startswith("Support: ")
        assert event.remedy_en in "\n".join(english)
        assert japanese[0] == f"Subject: {event.summary_ja.rstrip('。')}"
        assert event.remedy_ja in "\n".join(japanese)


def test_when_the_catalog_text_is_checked_then_no_body_line_would_be_dropped_as_a_comment() -> None:
    body = catalog_text().split("\n\n", 1)[1]
    assert not [line for line in body.split("\n") if line.startswith(("#", ";"))]


def test_when_message_ids_are_checked_then_each_is_unique_lowercase_128_bit_hex() -> None:
    ids = [event.message_id for event in events.ALL_EVENTS]
    assert all(re.fullmatch(r"[0-9a-f]{32}", message_id) for message_id in ids)
    assert len(set(ids)) == len(ids)


def test_when_the_event_reference_is_generated_then_it_lists_every_event_with_its_message_id() -> None:
    text = events_markdown()
    for event in events.ALL_EVENTS:
        assert f"| `{event.name}` | `{event.message_id}` | {event.level.name} " in text


def test_when_a_signal_handler_logs_during_a_write_then_both_lines_are_written_without_deadlock() -> None:
    """A second SIGTERM while the daemon logs "stopping" once hung it for good (a plain Lock)."""
    import io
    import threading

    written: list[str] = []
    observer: GatewayLogObserver

    class Stream(io.StringIO):
        def write(self, text: str) -> int:
            if not written:  # like a signal handler running between the bytecodes of this write
                written.append("outer")
                observer(dict(log_level=LogLevel.info, log_format="Received SIGTERM, shutting down.",
                              log_namespace="twisted.internet.base", log_time=0.0))
            written.append(text)
            return len(text)

    observer = GatewayLogObserver(target="terminal", stream=Stream(), environ={}, send=FakeSend())
    worker = threading.Thread(target=observer, args=(dict(
        log_level=LogLevel.info, log_format="stopping", log_namespace="kei_gateway", log_time=0.0),), daemon=True)
    worker.start()
    worker.join(timeout=10)
    assert not worker.is_alive(), "the nested write deadlocked"
    assert len([line for line in written if line.endswith("\n")]) == 2
