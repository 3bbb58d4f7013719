"""The real daemon process: readiness, watchdog, health, metrics, allow-list, reload, stop."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.integration.conftest import Journald, poll_until
from tests.integration.harness import DaemonProcess, GatewayFiles, free_port, make_gateway_files, start_daemon

pytestmark = pytest.mark.integration


@pytest.fixture
def files(tmp_path: Path) -> GatewayFiles:
    return make_gateway_files(tmp_path)


@pytest.fixture
def daemon(files: GatewayFiles) -> Iterator[DaemonProcess]:
    process = start_daemon(files)
    try:
        yield process
    finally:
        if process.process.poll() is None:
            process.process.kill()
            process.process.wait()
        process.notify.close()


def metric_value(exposition: str, line_prefix: str) -> float:
    for line in exposition.splitlines():
        if line.startswith(line_prefix + " "):
            return float(line.split()[-1])
    raise AssertionError(f"{line_prefix} not in the exposition")


def test_when_the_daemon_starts_then_it_is_ready_healthy_fed_and_stops_cleanly(daemon: DaemonProcess) -> None:
    daemon.notify.wait_for("READY=1")
    status = daemon.notify.wait_for("STATUS=Ready.")
    assert "0 queued" in status
    daemon.notify.wait_for("WATCHDOG=1")
    daemon.notify.wait_for("WATCHDOG=1")

    code, body = daemon.get("/healthz")
    assert code == 200
    assert json.loads(body)["checks"]["database"]["ok"] is True
    code, body = daemon.get("/readyz")
    assert code == 200 and json.loads(body)["checks"]["certificate"]["ok"] is True
    code, _ = daemon.get("/nothing-here")
    assert code == 404

    daemon.signal(signal.SIGTERM)
    daemon.notify.wait_for("STOPPING=1")
    assert daemon.stop() == 0
    assert "daemon.stopped" in daemon.stderr()


def test_when_metrics_are_scraped_then_promtool_accepts_the_exposition(daemon: DaemonProcess, tmp_path: Path) -> None:
    daemon.notify.wait_for("READY=1")
    code, body = daemon.get("/metrics")
    assert code == 200
    text = body.decode()
    for name in ("kei_gateway_build_info", "kei_gateway_denied_connections_total",
                 "kei_gateway_certificate_expiry_timestamp_seconds", "process_resident_memory_bytes"):
        assert f"\n{name}" in text, name
    checked = subprocess.run(["promtool", "check", "metrics"], input=body, capture_output=True, timeout=60)
    assert checked.returncode == 0, checked.stdout.decode() + checked.stderr.decode()
    assert checked.stdout.decode().strip() == "" and checked.stderr.decode().strip() == "", \
        "promtool found lint problems: " + checked.stdout.decode() + checked.stderr.decode()


def test_when_a_client_outside_the_allow_list_connects_then_it_is_closed_unanswered_and_counted(
        daemon: DaemonProcess) -> None:
    daemon.notify.wait_for("READY=1")
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.settimeout(10)
        s.bind(("127.0.0.2", 0))
        s.connect(("127.0.0.1", daemon.files.metrics_port))
        try:
            s.sendall(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n")
            answer = s.recv(1024)
        except ConnectionResetError:
            answer = b""
    assert answer == b"", "a denied client must get no HTTP answer at all"
    code, body = daemon.get("/metrics")
    assert code == 200
    assert metric_value(body.decode(), 'kei_gateway_denied_connections_total{listener="metrics",reason="address"}') == 1.0
    poll_until(lambda: "listener.denied" in daemon.stderr() or None, 10, "the denial to be logged")
    assert "127.0.0.2" in daemon.stderr()


def test_when_sighup_arrives_then_the_allow_list_reloads_and_a_bad_file_is_refused(daemon: DaemonProcess) -> None:
    daemon.notify.wait_for("READY=1")
    daemon.files.write_config(**{'allow = ["127.0.0.1/32"]': 'allow = ["127.0.0.0/8"]'})
    daemon.signal(signal.SIGHUP)
    daemon.notify.wait_for("RELOADING=1")
    daemon.notify.wait_for("READY=1")
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:  # 127.0.0.2 is now allowed
        s.settimeout(10)
        s.bind(("127.0.0.2", 0))
        s.connect(("127.0.0.1", daemon.files.metrics_port))
        s.sendall(b"GET /healthz HTTP/1.0\r\n\r\n")
        assert s.recv(64).startswith(b"HTTP/1.0 200")

    daemon.files.config.write_text('[gateway]\nlg_code = "999999"\n', encoding="utf-8")
    daemon.notify.messages.clear()
    daemon.signal(signal.SIGHUP)
    daemon.notify.wait_for("RELOADING=1")
    daemon.notify.wait_for("READY=1")
    statuses = [daemon.notify.wait_for("STATUS=")]
    while "reload refused" not in statuses[-1] and len(statuses) < 3:  # a periodic STATUS may come first
        statuses.append(daemon.notify.wait_for("STATUS="))
    assert "reload refused" in statuses[-1], statuses
    poll_until(lambda: "config.reload_failed" in daemon.stderr() or None, 10, "the refused reload to be logged")
    assert "gateway.lg_code" in daemon.stderr()
    assert daemon.get("/healthz")[0] == 200, "the daemon keeps running on the old configuration"
    assert daemon.stop() == 0


def test_when_the_configuration_is_invalid_then_run_exits_2_naming_every_problem(files: GatewayFiles) -> None:
    files.write_config(extra="colour = 1\n", **{'lg_code = "131041"': 'lg_code = "131040"'})
    result = subprocess.run([sys.executable, "-m", "kei_gateway", "-c", str(files.config), "run"],
                            capture_output=True, text=True, timeout=60, stdin=subprocess.DEVNULL)
    assert result.returncode == 2
    assert "gateway.lg_code: check digit should be 1, got 0" in result.stderr
    assert "listeners.metrics.colour: unknown key" in result.stderr


def test_when_the_metrics_port_is_taken_then_run_exits_1_and_says_why(files: GatewayFiles) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as blocker:
        blocker.bind(("127.0.0.1", files.metrics_port))
        blocker.listen()
        daemon = start_daemon(files)
        try:
            assert daemon.process.wait(timeout=60) == 1
        finally:
            daemon.notify.close()
    assert "daemon.failed" in daemon.stderr() and "cannot bind" in daemon.stderr()
    assert not any(m.startswith("READY=1") for m in daemon.notify.messages)


def test_when_run_under_a_journal_stream_then_events_reach_journald_with_their_fields(
        files: GatewayFiles, journald: Journald) -> None:
    mark = journald.mark()
    with journald.stderr_stream("kei-gateway") as (stream, env):
        daemon = start_daemon(files, log_target="auto", stderr=stream.fileno(), extra_env=env)
    try:
        daemon.notify.wait_for("READY=1")
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            s.settimeout(10)
            s.bind(("127.0.0.2", 0))
            s.connect(("127.0.0.1", files.metrics_port))
            assert s.recv(1) == b"", "closed by the daemon, so the denial has happened"
        assert daemon.stop() == 0
    finally:
        daemon.notify.close()
    pid = str(daemon.process.pid)
    entries = journald.wait_for_entries(f"_PID={pid}", "KEI_EVENT=daemon.stopped", after=mark)
    assert entries[0]["SYSLOG_IDENTIFIER"] == "kei-gateway"
    ready = journald.entries(f"_PID={pid}", "KEI_EVENT=daemon.ready", after=mark)
    assert ready and ready[0]["MESSAGE_ID"] == "456928f6416a442cb3789a0f0ed74f82" and ready[0]["PRIORITY"] == "6"
    denied = journald.entries(f"_PID={pid}", "KEI_EVENT=listener.denied", after=mark)
    assert denied and denied[0]["KEI_REASON"] == "address" and denied[0]["PRIORITY"] == "4"
    assert denied[0]["MESSAGE_ID"] == "4984db45de834d8fae112f5626428021"
    assert journald.entries(f"_PID={pid}", "_TRANSPORT=stdout", after=mark) == [], \
        "under a journal stream the daemon writes natively, not plain stderr lines"


@pytest.mark.parametrize("command", [["check-config"], ["transfers", "list"]])
def test_when_the_output_pipe_closes_early_then_the_command_stops_with_one_line_and_no_traceback(
        tmp_path: Path, command: list[str]) -> None:
    """``kei-gateway check-config | head -1`` (issue 11): a BrokenPipeError used to end in a traceback."""
    files = make_gateway_files(tmp_path)
    subprocess.run([sys.executable, "-m", "kei_gateway", "-c", str(files.config), "db", "upgrade"],
                   capture_output=True, timeout=60, check=True)
    reader, writer = os.pipe()
    os.close(reader)  # the reader is gone before anything is written, like 'head -1' after its line
    try:
        result = subprocess.run([sys.executable, "-m", "kei_gateway", "-c", str(files.config), *command],
                                stdout=writer, stderr=subprocess.PIPE, text=True, timeout=60)
    finally:
        os.close(writer)
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert [line for line in result.stderr.splitlines() if line] == [
        "kei-gateway: the output was closed before the command finished (broken pipe)"]
