"""The log observer and the message catalog against a real journald and journalctl."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from kei_gateway.runtime import events
from kei_gateway.tools.event_catalog import catalog_text

from .conftest import Journald

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
SHA = "5f" * 32

# Runs in a child process: the observer as the daemon installs it, then a few events.
EMITTER = r"""
import logging, sys
from twisted.logger import Logger
from kei_gateway.runtime import events
from kei_gateway.runtime.journal import GatewayLogObserver, begin_logging, parse_level

observer = GatewayLogObserver(target=sys.argv[1], level=parse_level(sys.argv[2]))
begin_logging(observer)
print(observer.target, flush=True)
log = Logger(namespace="kei_gateway.test_journald")
events.emit(log, events.DAEMON_READY, listeners="metrics", schema="0001",
            flow="jnks-payments", peer="jnks", transfer_id=12, sha256="%(sha)s", records=3021, reason="ok")
events.emit(log, events.LISTENER_DENIED, listener="metrics", source="10.0.0.9", reason="address")
events.emit(log, events.DATABASE_UNAVAILABLE, reason="locked", flow="mpn-results")
events.emit(log, events.CERTIFICATE_EXPIRED, role="client", not_after="2026-11-01", peer="mpn")
log.debug("debug detail {n}", n=1)
Logger(namespace="twisted.web.server.Site").info("Starting factory {factory}", factory="Site")
logging.getLogger("sqlalchemy.pool").warning("pool %%s overflow", "main")
try:
    int("山田太郎")
except ValueError:
    log.failure("unexpected error: {reason}", kei_event="internal.error", reason="parse", transfer_id=13)
""" % {"sha": SHA}

# (MESSAGE, MESSAGE_ID, PRIORITY, KEI_* fields) of what EMITTER logs at level info, in order.
EXPECTED: list[tuple[str, str, str, dict[str, str]]] = [
    ("kei-gateway ready: listeners metrics, database schema 0001", events.DAEMON_READY.message_id, "6",
     {"KEI_EVENT": "daemon.ready", "KEI_FLOW": "jnks-payments", "KEI_PEER": "jnks", "KEI_TRANSFER_ID": "12",
      "KEI_SHA256": SHA, "KEI_RECORDS": "3021", "KEI_REASON": "ok"}),
    ("metrics listener refused a connection from 10.0.0.9: address", events.LISTENER_DENIED.message_id, "4",
     {"KEI_EVENT": "listener.denied", "KEI_REASON": "address"}),
    ("database does not answer: locked", events.DATABASE_UNAVAILABLE.message_id, "2",
     {"KEI_EVENT": "database.unavailable", "KEI_REASON": "locked", "KEI_FLOW": "mpn-results"}),
    ("client certificate expired on 2026-11-01", events.CERTIFICATE_EXPIRED.message_id, "2",
     {"KEI_EVENT": "certificate.expired", "KEI_PEER": "mpn"}),
    ("Starting factory Site", events.MESSAGE.message_id, "6", {"KEI_EVENT": "message"}),
    ("pool main overflow", events.MESSAGE.message_id, "4", {"KEI_EVENT": "message"}),
    ("unexpected error: parse\nTraceback (most recent call last):", events.INTERNAL_ERROR.message_id, "2",
     {"KEI_EVENT": "internal.error", "KEI_REASON": "parse", "KEI_TRANSFER_ID": "13"}),
]


def kei_fields(entry: dict[str, Any]) -> dict[str, str]:
    return {key: value for key, value in entry.items() if key.startswith("KEI_")}


def assert_structured(entries: list[dict[str, Any]], pid: int) -> None:
    assert len(entries) == len(EXPECTED), [entry["MESSAGE"] for entry in entries]
    for entry, (message, message_id, priority, fields) in zip(entries, EXPECTED):
        if message_id == events.INTERNAL_ERROR.message_id:
            assert entry["MESSAGE"].startswith(message)
            assert entry["MESSAGE"].endswith("ValueError (exception message withheld: it may quote input data; "
                                             "set log level debug to see it)")
            assert "山田" not in entry["MESSAGE"]
        else:
            assert entry["MESSAGE"] == message
        assert (entry["MESSAGE_ID"], entry["PRIORITY"]) == (message_id, priority), message
        assert entry["SYSLOG_IDENTIFIER"] == "kei-gateway"
        assert entry["_PID"] == str(pid)
        assert entry["_TRANSPORT"] == "journal"
        assert kei_fields(entry) == fields, message


def test_when_the_observer_targets_the_journal_then_journalctl_reads_back_every_field(journald: Journald) -> None:
    """When a process logs events with target journal, then journalctl -o json _PID=… shows MESSAGE_ID,
    PRIORITY, SYSLOG_IDENTIFIER and every KEI_ field; debug is dropped at level info; no personal value leaks."""
    mark = journald.mark()
    process = subprocess.Popen([sys.executable, "-c", EMITTER, "journal", "info"], cwd=ROOT,
                               stdout=subprocess.PIPE, text=True)
    stdout, _ = process.communicate(timeout=60)
    assert (process.returncode, stdout) == (0, "journal\n")
    entries = journald.wait_for_entries(f"_PID={process.pid}", after=mark, count=len(EXPECTED))
    assert_structured(entries, process.pid)


def test_when_the_level_is_debug_then_debug_events_reach_the_journal_with_priority_7(journald: Journald) -> None:
    mark = journald.mark()
    process = subprocess.Popen([sys.executable, "-c", EMITTER, "journal", "debug"], cwd=ROOT,
                               stdout=subprocess.PIPE, text=True)
    process.communicate(timeout=60)
    assert process.returncode == 0
    entries = journald.wait_for_entries(f"_PID={process.pid}", after=mark, count=len(EXPECTED) + 1)
    debug = [entry for entry in entries if entry["PRIORITY"] == "7"]
    assert [entry["MESSAGE"] for entry in debug] == ["debug detail 1"]
    failure = entries[-1]["MESSAGE"]
    assert failure.endswith("ValueError: invalid literal for int() with base 10: '山田太郎'")


def test_when_stderr_is_a_journal_stream_then_auto_sends_structured_entries(journald: Journald) -> None:
    """When the process runs as systemd runs a service (stderr a journal stream, JOURNAL_STREAM set),
    then target auto resolves to journal and entries are native, structured ones."""
    mark = journald.mark()
    with journald.stderr_stream("kei-gateway-stream-test") as (stream, environ):
        process = subprocess.Popen([sys.executable, "-c", EMITTER, "auto", "info"], cwd=ROOT, text=True,
                                   stdout=subprocess.PIPE, stderr=stream.fileno(), env={**os.environ, **environ})
        stdout, _ = process.communicate(timeout=60)
    assert (process.returncode, stdout) == (0, "journal\n")
    entries = journald.wait_for_entries(f"_PID={process.pid}", after=mark, count=len(EXPECTED))
    assert_structured(entries, process.pid)


def test_when_stderr_is_a_journal_stream_without_journal_stream_variable_then_plain_lines_arrive(
    journald: Journald,
) -> None:
    """When JOURNAL_STREAM is absent (not a systemd service), then auto writes terminal lines, which a
    stream socket records as plain text without MESSAGE_ID — why auto must check the variable."""
    mark = journald.mark()
    environ = {key: value for key, value in os.environ.items() if key != "JOURNAL_STREAM"}
    with journald.stderr_stream("kei-gateway-plain-test") as (stream, _):
        process = subprocess.Popen([sys.executable, "-c", EMITTER, "auto", "info"], cwd=ROOT, text=True,
                                   stdout=subprocess.PIPE, stderr=stream.fileno(), env=environ)
        stdout, _ = process.communicate(timeout=60)
    assert (process.returncode, stdout) == (0, "terminal\n")
    entries = journald.wait_for_entries("SYSLOG_IDENTIFIER=kei-gateway-plain-test", after=mark, count=7)
    first = entries[0]
    assert first["_TRANSPORT"] == "stdout"
    assert "MESSAGE_ID" not in first and not kei_fields(first)
    assert "[info] daemon.ready: kei-gateway ready: listeners metrics, database schema 0001 flow=jnks-payments" \
        in first["MESSAGE"]


# --- the message catalog ------------------------------------------------------------------


@pytest.fixture
def catalog_root(tmp_path: Path) -> Path:
    """A root directory holding only our catalog, compiled with journalctl --root=… --update-catalog."""
    catalog_dir = tmp_path / "usr/lib/systemd/catalog"
    catalog_dir.mkdir(parents=True)
    (catalog_dir / "kei-gateway.catalog").write_text(
        (ROOT / "systemd/kei-gateway.catalog").read_text(encoding="utf-8"), encoding="utf-8")
    subprocess.run(["journalctl", f"--root={tmp_path}", "--update-catalog"], check=True, timeout=60,
                   capture_output=True)
    assert (tmp_path / "var/lib/systemd/catalog/database").is_file()
    return tmp_path


@pytest.fixture(scope="session")
def japanese_locale(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """Environment selecting ja_JP.UTF-8: the installed locale, or one compiled with localedef into a
    temporary LOCPATH (Debian 12 minimal images have only C.UTF-8)."""
    installed = subprocess.run(["locale", "-a"], capture_output=True, text=True, check=False).stdout.split()
    if "ja_JP.utf8" in installed or "ja_JP.UTF-8" in installed:
        return {"LANG": "ja_JP.UTF-8", "LC_ALL": "ja_JP.UTF-8"}
    if shutil.which("localedef") is None or not Path("/usr/share/i18n/locales/ja_JP").exists():
        pytest.skip("no ja_JP.UTF-8 locale and no localedef/locale sources to build one (Debian package locales)")
    locpath = tmp_path_factory.mktemp("locale")
    subprocess.run(["localedef", "-i", "ja_JP", "-f", "UTF-8", str(locpath / "ja_JP.UTF-8")],
                   check=True, timeout=120, capture_output=True)
    return {"LANG": "ja_JP.UTF-8", "LC_ALL": "ja_JP.UTF-8", "LOCPATH": str(locpath)}


def journalctl(*args: str, environ: dict[str, str] | None = None) -> str:
    env = {key: value for key, value in os.environ.items() if not key.startswith(("LC_", "LANG"))}
    env.update({"LANG": "C.UTF-8", "SYSTEMD_COLORS": "0", "SYSTEMD_PAGER": ""}, **(environ or {}))
    result = subprocess.run(["journalctl", "--no-pager", *args], capture_output=True, text=True,
                            timeout=60, check=True, env=env)
    return result.stdout


def entry_text(event: events.EventType, language: str) -> tuple[str, str]:
    if language == "ja":
        return event.summary_ja.rstrip("。"), event.remedy_ja
    return event.summary_en.rstrip("."), event.remedy_en


@pytest.mark.parametrize("language", ["en", "ja"])
def test_when_the_catalog_is_compiled_then_list_and_dump_show_every_event_in_the_selected_language(
    catalog_root: Path, japanese_locale: dict[str, str], language: str,
) -> None:
    environ = japanese_locale if language == "ja" else {}
    listing = journalctl(f"--root={catalog_root}", "--list-catalog", environ=environ).splitlines()
    assert sorted(listing) == sorted(
        f"{event.message_id} kei-gateway: {entry_text(event, language)[0]}" for event in events.ALL_EVENTS)
    dump = journalctl(f"--root={catalog_root}", "--dump-catalog", environ=environ)
    for event in events.ALL_EVENTS:
        subject, remedy = entry_text(event, language)
        assert f"-- {event.message_id}\nSubject: {subject}\nDefined-By: kei-gateway\n" in dump
        assert remedy in dump


def _in_private_catalog(catalog_root: Path, args: list[str], environ: dict[str, str]) -> str:
    """journalctl *args* in a private mount namespace whose catalog database is *catalog_root*'s.

    ``journalctl -x`` always reads /var/lib/systemd/catalog/database (--root
    does not apply to it); bind-mounting ours over it in a namespace of its own
    leaves the host's catalog untouched.
    """
    Path("/var/lib/systemd/catalog").mkdir(parents=True, exist_ok=True)
    script = 'mount --bind "$1" /var/lib/systemd/catalog && shift && exec journalctl --no-pager "$@"'
    env = {key: value for key, value in os.environ.items() if not key.startswith(("LC_", "LANG"))}
    env.update({"LANG": "C.UTF-8", "SYSTEMD_COLORS": "0", "SYSTEMD_PAGER": ""}, **environ)
    result = subprocess.run(
        ["unshare", "--mount", "--propagation", "private", "sh", "-c", script, "sh",
         str(catalog_root / "var/lib/systemd/catalog"), *args],
        capture_output=True, text=True, timeout=60, check=False, env=env,
    )
    assert result.returncode == 0, result.stderr
    return result.stdout


@pytest.fixture
def private_mounts() -> Iterator[None]:
    if os.geteuid() != 0 or shutil.which("unshare") is None:
        pytest.skip("journalctl -x with a private catalog needs root and unshare (util-linux)")
    probe = subprocess.run(["unshare", "--mount", "true"], capture_output=True, check=False, timeout=30)
    if probe.returncode != 0:
        pytest.skip(f"mount namespaces are not available here: {probe.stderr!r}")
    yield


@pytest.mark.parametrize("language", ["en", "ja"])
def test_when_the_catalog_is_installed_then_journalctl_x_explains_the_entry_and_its_remedy(
    journald: Journald, catalog_root: Path, japanese_locale: dict[str, str], private_mounts: None, language: str,
) -> None:
    mark = journald.mark()
    process = subprocess.Popen([sys.executable, "-c", EMITTER, "journal", "info"], cwd=ROOT,
                               stdout=subprocess.PIPE, text=True)
    process.communicate(timeout=60)
    assert process.returncode == 0
    journald.wait_for_entries(f"_PID={process.pid}", after=mark, count=len(EXPECTED))
    environ = japanese_locale if language == "ja" else {}
    explained = _in_private_catalog(
        catalog_root, ["-x", f"_PID={process.pid}", f"MESSAGE_ID={events.LISTENER_DENIED.message_id}"], environ)
    subject, remedy = entry_text(events.LISTENER_DENIED, language)
    assert "metrics listener refused a connection from 10.0.0.9: address" in explained
    assert f"░░ Subject: {subject}\n" in explained
    assert "░░ Defined-By: kei-gateway\n" in explained
    assert remedy in explained


def test_when_the_committed_catalog_is_compared_then_it_is_the_generated_one() -> None:
    """When the integration tests install systemd/kei-gateway.catalog, then it is current (else regenerate)."""
    assert (ROOT / "systemd/kei-gateway.catalog").read_text(encoding="utf-8") == catalog_text()
