"""The upload benchmark (``bench/upload.py --quick``) runs end to end: nginx, curl, the real daemon."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.integration.nginx import DAV_EXT_MODULE, NGINX

pytestmark = pytest.mark.integration
BENCH = Path(__file__).resolve().parents[2] / "bench" / "upload.py"


def test_when_the_upload_benchmark_runs_quick_then_it_prints_throughput_and_latency_and_exits_0() -> None:
    if not Path(NGINX).exists() or not DAV_EXT_MODULE.exists() or shutil.which("curl") is None:
        pytest.skip("needs nginx-light, libnginx-mod-http-dav-ext and curl")
    result = subprocess.run([sys.executable, str(BENCH), "--quick"], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert "| curl -T |" in result.stdout
    assert "gateway end to end (outbox → peer)" in result.stdout
    assert "gateway upload stage alone (store → peer)" in result.stdout
    assert "| p50 | p90 | p99 | max |" in result.stdout
