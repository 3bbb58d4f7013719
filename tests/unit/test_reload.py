"""`kei-gateway reload` (the unit's ExecReload=) and the daemon's reload verdict it waits for."""

from __future__ import annotations

import argparse
import signal
from pathlib import Path

import pytest

from kei_gateway.cli import exitcodes
from kei_gateway.cli.reload import reload_daemon
from kei_gateway.runtime.reload_outcome import ReloadOutcome, outcome_path, read_outcome, wait_for_outcome, write_outcome


class FakeTime:
    """A clock that moves only when slept on."""

    def __init__(self) -> None:
        self.now = 100.0
        self.slept: list[float] = []

    def clock(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.slept.append(seconds)
        self.now += seconds


def args(runtime: Path, pid: int = 4242, timeout: float = 5.0) -> argparse.Namespace:
    return argparse.Namespace(pid=pid, runtime_dir=str(runtime), timeout=timeout)


@pytest.mark.parametrize("outcome", [
    ReloadOutcome(4242, 1, True),
    ReloadOutcome(4242, 7, False, "config.toml: 1 problem(s):\n  gateway.bogus: unknown key"),
])
def test_when_an_outcome_is_rendered_then_it_parses_back_on_one_line(outcome: ReloadOutcome) -> None:
    text = outcome.render()
    assert text.count("\n") == 1
    parsed = ReloadOutcome.parse(text)
    assert parsed is not None
    assert (parsed.pid, parsed.generation, parsed.accepted) == (outcome.pid, outcome.generation, outcome.accepted)
    assert parsed.reason == " ".join(outcome.reason.split())


@pytest.mark.parametrize("text", ["", "4242 1 accepted", "4242 x accepted\n", "4242 1 maybe\n", "garbage\n"])
def test_when_the_file_is_partial_or_foreign_then_it_is_no_outcome(text: str) -> None:
    assert ReloadOutcome.parse(text) is None


def test_when_systemd_sets_runtime_directories_then_the_first_holds_the_verdict() -> None:
    assert outcome_path({"RUNTIME_DIRECTORY": "/run/kei-gateway:/run/other"}) == "/run/kei-gateway/reload"
    assert outcome_path({}) is None


def test_when_the_daemon_answers_then_the_wait_returns_its_newer_verdict_only(tmp_path: Path) -> None:
    """When an old verdict (or another process's) is in the file, then the wait ignores it until the new one."""
    path = str(tmp_path / "reload")
    write_outcome(path, ReloadOutcome(4242, 3, True))
    fake = FakeTime()
    assert wait_for_outcome(path, 4242, 3, 1.0, fake.clock, fake.sleep) is None
    assert fake.now - 100.0 >= 1.0 and max(fake.slept) <= 0.25, "bounded, with short polls"
    write_outcome(path, ReloadOutcome(9999, 4, True))
    assert wait_for_outcome(path, 4242, 3, 1.0, fake.clock, fake.sleep) is None
    write_outcome(path, ReloadOutcome(4242, 4, False, "why"))
    assert wait_for_outcome(path, 4242, 3, 1.0, fake.clock, fake.sleep) == ReloadOutcome(4242, 4, False, "why")


def daemon(path: Path, accepted: bool, reason: str = "") -> tuple[list[tuple[int, int]], object]:
    """A fake kill that, like the daemon on SIGHUP, writes its next verdict."""
    sent: list[tuple[int, int]] = []

    def kill(pid: int, signum: int) -> None:
        sent.append((pid, signum))
        before = read_outcome(str(path))
        write_outcome(str(path), ReloadOutcome(pid, (before.generation if before else 0) + 1, accepted, reason))

    return sent, kill


def test_when_the_daemon_accepts_then_reload_signals_it_and_exits_0(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    write_outcome(str(tmp_path / "reload"), ReloadOutcome(4242, 2, False, "an earlier refusal"))
    sent, kill = daemon(tmp_path / "reload", accepted=True)
    fake = FakeTime()
    assert reload_daemon(args(tmp_path), {}, kill, fake.clock, fake.sleep) == exitcodes.OK  # type: ignore[arg-type]
    assert sent == [(4242, signal.SIGHUP)]
    assert "configuration reloaded (process 4242, reload 3)" in capsys.readouterr().out


def test_when_the_daemon_refuses_then_reload_exits_1_with_the_reason_on_stderr(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    _, kill = daemon(tmp_path / "reload", accepted=False, reason="kei-gateway.toml: gateway.bogus: unknown key")
    fake = FakeTime()
    assert reload_daemon(args(tmp_path), {}, kill, fake.clock, fake.sleep) == exitcodes.FAILED  # type: ignore[arg-type]
    assert "refused, the daemon keeps its running configuration: kei-gateway.toml: gateway.bogus: unknown key" \
        in capsys.readouterr().err


def test_when_the_daemon_never_answers_then_reload_gives_up_after_the_timeout(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    fake = FakeTime()
    code = reload_daemon(args(tmp_path, timeout=3.0), {}, lambda pid, signum: None, fake.clock, fake.sleep)
    assert code == exitcodes.FAILED and 3.0 <= fake.now - 100.0 < 3.5
    assert "no verdict from process 4242" in capsys.readouterr().err


def test_when_the_process_is_gone_or_no_runtime_directory_is_known_then_reload_says_so(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    def gone(pid: int, signum: int) -> None:
        raise ProcessLookupError(3, "No such process")

    fake = FakeTime()
    assert reload_daemon(args(tmp_path), {}, gone, fake.clock, fake.sleep) == exitcodes.FAILED
    assert "cannot signal process 4242: No such process" in capsys.readouterr().err
    no_dir = argparse.Namespace(pid=4242, runtime_dir=None, timeout=1.0)
    assert reload_daemon(no_dir, {}, gone, fake.clock, fake.sleep) == exitcodes.USAGE
    assert "systemctl reload kei-gateway" in capsys.readouterr().err
