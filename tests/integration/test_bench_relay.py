"""The relay benchmark (``bench/relay.py --quick``) runs end to end: the real daemon, pushes over mutual TLS, the inbox."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration
BENCH = Path(__file__).resolve().parents[2] / "bench" / "relay.py"


def test_when_the_relay_benchmark_runs_quick_then_it_relays_every_batch_prints_its_table_and_exits_0() -> None:
    result = subprocess.run([sys.executable, str(BENCH), "--quick"], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert "| target results/s | batch | relayed results/s |" in result.stdout
    rows = [line for line in result.stdout.splitlines() if line.startswith(("| 100 |", "| 250 |"))]
    assert len(rows) == 2, result.stdout
    for row in rows:
        cells = [cell.strip() for cell in row.strip("|").split("|")]
        assert int(cells[3]) > 0 and cells[6] == "0", row  # batches accepted (201), none left unrelayed
    assert "- sustained throughput:" in result.stdout
