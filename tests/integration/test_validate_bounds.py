"""``kei-gateway validate`` on inputs without end or line ends: it stops promptly, in bounded memory
(issue 11 item 4; SPEC §4).  A real process on a real device and a real sparse file."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration


PEAK = ("import resource, subprocess, sys; code = subprocess.run(sys.argv[1:]).returncode; "
        "print('peak_kib', resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss, file=sys.stderr); sys.exit(code)")
"""Runs the command and prints its own peak RSS (a wrapper whose only child it is)."""


def validate(path: str) -> tuple[subprocess.CompletedProcess[str], float]:
    result = subprocess.run([sys.executable, "-c", PEAK, sys.executable, "-m", "kei_gateway", "validate", path,
                             "--layout", "jnks-payments"], capture_output=True, text=True, timeout=60)
    peak = [line for line in result.stderr.splitlines() if line.startswith("peak_kib ")]
    return result, int(peak[-1].split()[1]) / 1024


def test_when_validate_reads_dev_zero_then_it_ends_with_record_1_has_no_cr_lf() -> None:
    result, peak_mb = validate("/dev/zero")
    assert result.returncode == 3, result.stderr
    assert "/dev/zero: record 1, byte 0: has no CR LF within 73 bytes" in result.stdout
    assert "validation stopped after record 1" in result.stderr
    assert peak_mb < 150


def test_when_validate_reads_a_2_gib_sparse_file_without_line_ends_then_it_ends_at_once(tmp_path: Path) -> None:
    sparse = tmp_path / "sparse.dat"
    with sparse.open("wb") as out:
        out.truncate(2 << 30)  # 2 GiB of zeros, no blocks on disk
    result, peak_mb = validate(str(sparse))
    assert result.returncode == 3, result.stderr
    assert "record 1, byte 0: has no CR LF within 73 bytes" in result.stdout
    assert peak_mb < 150
    assert os.path.getsize(sparse) == 2 << 30
