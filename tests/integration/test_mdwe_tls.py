"""Does pyOpenSSL's TLS work under MemoryDenyWriteExecute?  It does not; these tests show why.

The unit sets ``MemoryDenyWriteExecute=no`` because of what these tests
demonstrate (docs/decisions.md, "systemd unit and hardening"): pyOpenSSL makes
every Python callback (``set_verify``, ``set_info_callback``, ALPN, ...) a cffi
``ffi.callback()`` closure, and cffi allocates closures in memory that is
writable and executable, which MDWE forbids.  Twisted sets such a verify
callback on every outbound client connection, so under MDWE the gateway could
not reach any peer.

Each probe runs in its own process (``mdwe_tls_handshake.py``), because MDWE
cannot be turned off again in a process once it is on.  If a future cffi or
pyOpenSSL stops needing write+execute memory, the MDWE tests fail and say to
switch the unit to ``MemoryDenyWriteExecute=yes``.
"""

from __future__ import annotations

import ctypes
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

pytestmark = pytest.mark.integration

HERE = Path(__file__).resolve().parent
PROBE = HERE / "mdwe_tls_handshake.py"
UNIT = HERE.parents[1] / "systemd" / "kei-gateway.service"

PR_GET_MDWE = 66


def _kernel_has_mdwe() -> bool:
    libc = ctypes.CDLL(None, use_errno=True)
    return int(libc.prctl(PR_GET_MDWE, 0, 0, 0, 0)) >= 0


needs_mdwe = pytest.mark.skipif(
    not _kernel_has_mdwe(), reason="this kernel has no prctl(PR_SET_MDWE) (Linux >= 6.3 needed)"
)


def run_probe(*args: str) -> dict[str, Any]:
    completed = subprocess.run(
        [sys.executable, str(PROBE), *args],
        capture_output=True, text=True, timeout=60, check=False,
    )
    assert completed.returncode == 0, f"the probe itself failed:\n{completed.stderr}"
    result: dict[str, Any] = json.loads(completed.stdout.strip().splitlines()[-1])
    return result


def unit_setting(name: str) -> list[str]:
    return [
        line.split("=", 1)[1].strip()
        for line in UNIT.read_text(encoding="utf-8").splitlines()
        if line.startswith(f"{name}=")
    ]


def test_when_mdwe_is_off_then_a_mutual_tls_handshake_with_verify_callbacks_succeeds() -> None:
    """The control: the same probe works without MDWE, so a failure under MDWE is MDWE's doing."""
    result = run_probe()
    assert result["ok"], result
    assert result["mdwe"] == 0
    assert result["protocol"] == "TLSv1.3"
    assert result["server_saw_client"] == "CN=gateway.example.lg.jp"
    # Both sides verified a two-certificate chain (leaf and CA) through the Python callback.
    assert result["verify_calls"] == 4 and result["all_verified"]
    assert result["payload"] == "ping"


@needs_mdwe
def test_when_mdwe_is_on_then_pyopenssl_cannot_create_its_verify_callback() -> None:
    """When MDWE is on (as MemoryDenyWriteExecute=yes does), then set_verify() fails for lack of W+X memory."""
    result = run_probe("--mdwe")
    assert result["mdwe"] == 1, "prctl(PR_SET_MDWE) did not take effect"
    assert not result["ok"], (
        "pyOpenSSL completed a mutual-TLS handshake under MDWE: cffi no longer needs write+execute "
        "memory; set MemoryDenyWriteExecute=yes in systemd/kei-gateway.service, update "
        "docs/decisions.md and turn these tests around"
    )
    assert result["error_type"] == "MemoryError"
    assert "write+execute memory for ffi.callback()" in result["error"]


@needs_mdwe
def test_when_mdwe_is_on_then_twisted_cannot_start_an_outbound_tls_connection() -> None:
    """When MDWE is on, then Twisted's optionsForClientTLS connection (the gateway's peer client) fails too."""
    control = run_probe("--stack", "twisted-client")
    assert control["ok"], control
    assert control["client_hello_bytes"] > 0

    result = run_probe("--mdwe", "--stack", "twisted-client")
    assert result["mdwe"] == 1
    assert not result["ok"], "Twisted's TLS client works under MDWE: see the previous test's message"
    assert result["error_type"] == "MemoryError"


def test_when_tls_needs_wx_memory_then_the_unit_does_not_deny_it() -> None:
    """When MDWE breaks TLS (tests above), then the unit must say MemoryDenyWriteExecute=no, explicitly."""
    assert unit_setting("MemoryDenyWriteExecute") == ["no"]
