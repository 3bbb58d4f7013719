"""The daemon's own size: its peak resident memory once READY (issue 11: < 150 MB with a maximum-size push)."""

from __future__ import annotations

from pathlib import Path

import pytest

from kei_gateway.sim.harness import free_port
from tests.integration.harness import make_gateway_files, start_daemon

pytestmark = pytest.mark.integration

READY_BOUND_MIB = 116
"""MiB (2^20 bytes, as /proc counts). The daemon with the MPN flows and the push listener measured 103-105 MiB
at READY after the lazy imports of issues 11/16 (118-121 MiB before: docs/performance.md, "Daemon memory at
READY"); a maximum-size push adds ~25 MiB to that, and must stay under 150 MB = 143 MiB."""


def _status_kb(pid: int, key: str) -> int:
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith(key + ":"):
                return int(line.split()[1])
    raise AssertionError(f"no {key} in /proc/{pid}/status")


def test_when_the_daemon_is_ready_then_its_peak_resident_memory_is_under_the_bound(tmp_path: Path) -> None:
    """VmHWM, the peak since the process started (the start's migration included), with the MPN flows and the
    push listener configured; the pull side points at a closed port, so nothing else runs."""
    files = make_gateway_files(tmp_path / "gateway")
    closed = free_port()
    files.write_mpn_config(f"https://127.0.0.1:{closed}/", free_port())
    daemon = start_daemon(files)
    try:
        daemon.notify.wait_for("READY=1", timeout=60)
        peak_mib = _status_kb(daemon.process.pid, "VmHWM") / 1024
    finally:
        daemon.stop()
    assert peak_mib < READY_BOUND_MIB, (f"the daemon peaked at {peak_mib:.0f} MiB before any work (bound "
                                        f"{READY_BOUND_MIB} MiB): something heavy is imported or built at start; "
                                        f"bench/memory.py shows what")


def test_when_the_memory_benchmark_runs_quick_then_it_prints_the_import_steps_and_every_variant() -> None:
    """``bench/memory.py --quick``: the import breakdown, then one daemon per environment variant with its READY
    split and its peak after a 10,000-result push, and each variant's ratio to the daemon as shipped."""
    import re
    import subprocess
    import sys

    bench = Path(__file__).resolve().parents[2] / "bench" / "memory.py"
    result = subprocess.run([sys.executable, str(bench), "--quick"], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    steps = [line for line in result.stdout.splitlines() if re.search(r"\| \+\d+\.\d \|$", line)]
    assert len(steps) == 9 and "Alembic" in steps[-2] and "AIRIS" in steps[-1], result.stdout
    rows = [line.split("|")[1:-1] for line in result.stdout.splitlines()
            if line.startswith(("| as shipped |", "| glibc's arenas |", "| OpenBLAS 1 thread |"))]
    assert len(rows) == 3, result.stdout
    for cells in rows:
        ready, peak_after = float(cells[1]), float(cells[8])
        assert 0 < ready <= peak_after, cells  # a push only adds
    assert result.stdout.count("/ as shipped (medians): READY ") == 2, result.stdout
