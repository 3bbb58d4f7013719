"""Shared fixtures of the integration tests (real processes; bounded waits, never fixed sleeps).

``journald``
    A real ``systemd-journald`` accepting entries on ``/run/systemd/journal``:
    the one already running, or one started for the session (and stopped at
    its end) — systemd is installed but need not be PID 1. Use it to read back
    what a process logged::

        def test_something(journald: Journald) -> None:
            mark = journald.mark()
            process = subprocess.run([...])  # logs to journald
            entries = journald.wait_for_entries(f"_PID={pid}", after=mark, count=3)

    and :meth:`Journald.stderr_stream` to run a process the way systemd runs a
    service with ``StandardError=journal`` (stderr a journal stream socket,
    ``JOURNAL_STREAM`` set).
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import socket
import subprocess
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import pytest

from tests.integration.reactor_thread import reactor_thread  # noqa: F401 (the one session fixture: one reactor)

JOURNALD_BINARY = Path("/lib/systemd/systemd-journald")
JOURNAL_RUNTIME_DIR = Path("/run/systemd/journal")
JOURNAL_SOCKET = JOURNAL_RUNTIME_DIR / "socket"  # native protocol (datagrams)
JOURNAL_STDOUT = JOURNAL_RUNTIME_DIR / "stdout"  # stream protocol (service stdout/stderr)
JOURNALD_START_TIMEOUT = 20.0
ENTRY_TIMEOUT = 15.0

T = TypeVar("T")


def poll_until(
    check: Callable[[], T | None], timeout: float, what: str, describe: Callable[[], str] = lambda: "",
) -> T:
    """Call *check* until it returns something other than ``None``/``False``; at most *timeout* seconds.

    Polls with a short, growing interval (this is a bounded wait, not a fixed
    sleep). Fails the test naming *what* was awaited and ``describe()``.
    """
    deadline = time.monotonic() + timeout
    interval = 0.01
    while True:
        result = check()
        if result is not None and result is not False:
            return result
        if time.monotonic() >= deadline:
            pytest.fail(f"timed out after {timeout:g}s waiting for {what}. {describe()}".rstrip())
        time.sleep(interval)
        interval = min(interval * 2, 0.2)


def _accepts(path: Path, kind: socket.SocketKind) -> bool:
    with socket.socket(socket.AF_UNIX, kind) as probe:
        try:
            probe.connect(str(path))
        except OSError:  # missing, stale (ECONNREFUSED), not yet bound
            return False
        return True


def journald_accepting() -> bool:
    """Whether a journald is bound to both the native and the stream socket."""
    return _accepts(JOURNAL_SOCKET, socket.SOCK_DGRAM) and _accepts(JOURNAL_STDOUT, socket.SOCK_STREAM)


@dataclass(frozen=True)
class JournalMark:
    """A point in the journal: entries after it are new (``cursor`` is None for an empty journal)."""

    cursor: str | None


@dataclass
class Journald:
    """A running journald and ways to read what was logged to it."""

    started_by_fixture: bool
    process: subprocess.Popen[bytes] | None = None
    log_path: Path | None = None

    def _journalctl(self, *args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            ["journalctl", "--no-pager", *args],
            capture_output=True, text=True, timeout=30, check=False,
            env={**os.environ, "SYSTEMD_COLORS": "0", "SYSTEMD_PAGER": ""},
        )

    def sync(self) -> None:
        """Ask journald to write everything received so far (best effort; reading polls anyway)."""
        self._journalctl("--sync")

    def mark(self) -> JournalMark:
        """The journal's current end: pass it as ``after=`` to see only newer entries (PIDs are reused)."""
        self.sync()
        result = self._journalctl("-n", "1", "-o", "json")
        lines = [line for line in result.stdout.splitlines() if line.strip()]
        return JournalMark(json.loads(lines[-1])["__CURSOR"] if lines else None)

    def entries(self, *matches: str, after: JournalMark | None = None) -> list[dict[str, Any]]:
        """Entries matching journalctl *matches* (``FIELD=value``), oldest first, as journalctl's JSON."""
        args = ["-o", "json", "--all"]
        cursor = after.cursor if after is not None else None
        if cursor is not None:
            # Not --after-cursor: with matches, journalctl 252 skips one entry too
            # many when the cursor's own entry does not match. --cursor is
            # inclusive; the marked entry itself is dropped below.
            args.append(f"--cursor={cursor}")
        result = self._journalctl(*args, *matches)
        if result.returncode not in (0, 1):  # 1: no entries (some versions)
            pytest.fail(f"journalctl {' '.join(args + list(matches))} failed: {result.stderr}")
        found = [json.loads(line) for line in result.stdout.splitlines() if line.strip()]
        return [entry for entry in found if entry.get("__CURSOR") != cursor]

    def wait_for_entries(
        self, *matches: str, after: JournalMark | None = None, count: int = 1, timeout: float = ENTRY_TIMEOUT,
    ) -> list[dict[str, Any]]:
        """Poll until at least *count* entries match (journald is asynchronous); return them all."""
        seen: list[dict[str, Any]] = []

        def enough() -> list[dict[str, Any]] | None:
            nonlocal seen
            self.sync()
            seen = self.entries(*matches, after=after)
            return seen if len(seen) >= count else None

        return poll_until(
            enough, timeout, f"{count} journal entries matching {' '.join(matches)}",
            lambda: f"Saw {len(seen)}: {[entry.get('MESSAGE') for entry in seen]}",
        )

    @contextlib.contextmanager
    def stderr_stream(self, identifier: str, priority: int = 6) -> Iterator[tuple[socket.socket, dict[str, str]]]:
        """A journal stream socket and the environment a service gets from systemd for it.

        Pass ``socket.fileno()`` as a subprocess's ``stdout``/``stderr`` and
        the returned ``{"JOURNAL_STREAM": "<dev>:<ino>"}`` in its environment:
        this is what ``StandardError=journal`` does. Lines written there arrive
        with ``_TRANSPORT=stdout`` and ``SYSLOG_IDENTIFIER=<identifier>``.
        """
        stream = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            stream.connect(str(JOURNAL_STDOUT))
            # identifier, unit id, priority, level prefix, forward to syslog, kmsg, console
            stream.sendall(f"{identifier}\n\n{priority}\n0\n0\n0\n0\n".encode())
            stream.shutdown(socket.SHUT_RD)
            stat = os.fstat(stream.fileno())
            yield stream, {"JOURNAL_STREAM": f"{stat.st_dev}:{stat.st_ino}"}
        finally:
            stream.close()


def _start_journald(log_path: Path) -> subprocess.Popen[bytes]:
    if os.geteuid() != 0:
        pytest.skip("no journald is running and starting one needs root")
    if not JOURNALD_BINARY.exists():
        pytest.skip(f"no journald is running and {JOURNALD_BINARY} is not installed (Debian package systemd)")
    JOURNAL_RUNTIME_DIR.mkdir(parents=True, exist_ok=True)
    with log_path.open("wb") as log:
        process = subprocess.Popen(
            [str(JOURNALD_BINARY)], stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
            start_new_session=True,
        )

    def ready() -> bool:
        if process.poll() is not None:
            pytest.fail(f"systemd-journald exited with {process.returncode}: {log_path.read_text(errors='replace')}")
        return journald_accepting()

    try:
        poll_until(ready, JOURNALD_START_TIMEOUT, f"{JOURNALD_BINARY} to accept on {JOURNAL_SOCKET}",
                   lambda: log_path.read_text(errors="replace"))
    except BaseException:
        _stop(process)
        raise
    return process


def _stop(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=10)


@pytest.fixture(scope="session")
def journald(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Journald]:
    """A real journald: the running one, else ``/lib/systemd/systemd-journald`` started for the session."""
    if shutil.which("journalctl") is None:
        pytest.skip("journalctl is not installed (Debian package systemd)")
    if journald_accepting():
        yield Journald(started_by_fixture=False)
        return
    log_path = tmp_path_factory.mktemp("journald") / "journald.log"
    process = _start_journald(log_path)
    try:
        yield Journald(started_by_fixture=True, process=process, log_path=log_path)
    finally:
        _stop(process)
