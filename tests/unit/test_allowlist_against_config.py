"""Kernel-level allow-list (issue 6 part 6): the drop-in allows exactly the configured addresses, and systemd reads it.

The drop-in is checked against the configuration it came from (every CIDR of the
peers' ``allow`` and ``push_allow`` and of ``listeners.metrics.allow``, plus
loopback, and nothing else), then installed the way systemd finds drop-ins — a
``kei-gateway.service.d/`` directory beside the unit on ``$SYSTEMD_UNIT_PATH`` —
and ``systemd-analyze verify`` must accept unit plus drop-in without a word.
"""

from __future__ import annotations

import ipaddress
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from kei_gateway.cli.allowlist import allowlist_dropin
from kei_gateway.config import Config, config_from_string

ROOT = Path(__file__).resolve().parents[2]
UNIT = ROOT / "systemd" / "kei-gateway.service"
INSTALLED_EXEC = "/opt/kei-gateway/venv/bin/kei-gateway"

CONFIG = """
[gateway]
lg_code = "131041"
spool_dir = "/tmp/kei-unused/spool"
state_dir = "/tmp/kei-unused/state"

[peers.jnks]
url = "https://10.20.30.5/upload/"
results_url = "https://10.20.30.5/results/"
ca = "/etc/kei-gateway/tls/jnks-ca.pem"
allow = ["10.20.30.0/24"]

[peers.mpn]
url = "https://10.20.40.5/slips/"
results_url = "https://10.20.40.5/results/"
ca = "/etc/kei-gateway/tls/mpn-ca.pem"
allow = ["10.20.40.0/24", "2001:db8:40::/48"]
push_allow = ["10.20.41.0/25", "10.20.40.0/24"]

[listeners.metrics]
address = "0.0.0.0:9464"
allow = ["127.0.0.1/32", "192.0.2.10/32"]
"""


def configured_networks(config: Config) -> set[str]:
    networks = {str(n) for n in config.listeners.metrics.allow}
    for peer in config.peers.values():
        networks |= {str(n) for n in peer.allow} | {str(n) for n in peer.push_allow}
    return networks


def allowed_lines(text: str) -> list[str]:
    return [line.split("=", 1)[1] for line in text.splitlines() if line.startswith("IPAddressAllow=")]


def test_when_rendered_then_the_dropin_allows_exactly_loopback_and_the_configured_cidrs() -> None:
    config = config_from_string(CONFIG, source="/etc/kei-gateway/kei-gateway.toml")
    text = allowlist_dropin(config)
    allowed = allowed_lines(text)
    assert len(allowed) == len(set(allowed)), "each address once"
    assert set(allowed) == {"localhost"} | configured_networks(config)
    assert configured_networks(config) == {"127.0.0.1/32", "192.0.2.10/32", "10.20.30.0/24", "10.20.40.0/24",
                                           "2001:db8:40::/48", "10.20.41.0/25"}
    for value in allowed[1:]:
        ipaddress.ip_network(value)  # every line is a network systemd can parse
    lines = text.splitlines()
    assert lines[lines.index("IPAddressAllow=10.20.41.0/25") - 1] == "# peers.mpn.push_allow"
    assert lines[lines.index("IPAddressAllow=192.0.2.10/32") - 1] == "# listeners.metrics.allow"
    assert "[Service]" in lines and not any(line.startswith("IPAddressDeny=") for line in lines), \
        "IPAddressDeny=any stays in the unit; the drop-in only adds"


def test_when_a_peer_is_removed_from_the_config_then_its_addresses_leave_the_dropin() -> None:
    without_mpn = CONFIG[:CONFIG.index("[peers.mpn]")] + CONFIG[CONFIG.index("[listeners.metrics]"):]
    allowed = set(allowed_lines(allowlist_dropin(config_from_string(without_mpn))))
    assert allowed == {"localhost", "127.0.0.1/32", "192.0.2.10/32", "10.20.30.0/24"}


def install_beside_unit(tmp_path: Path, dropin: str) -> Path:
    """The unit (ExecStart= pointed at this venv) and ``kei-gateway.service.d/50-allowlist.conf`` in *tmp_path*."""
    entry_point = Path(sys.executable).parent / "kei-gateway"
    unit = UNIT.read_text(encoding="utf-8").replace(f"={INSTALLED_EXEC} ", f"={entry_point} ")  # ExecStart= and ExecReload=
    (tmp_path / "kei-gateway.service").write_text(unit, encoding="utf-8")
    (tmp_path / "kei-gateway.service.d").mkdir()
    (tmp_path / "kei-gateway.service.d" / "50-allowlist.conf").write_text(dropin, encoding="utf-8")
    return tmp_path / "kei-gateway.service"


def verify(unit: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["systemd-analyze", "verify", "--man=no", str(unit)], capture_output=True, text=True,
                          timeout=60, env={**os.environ, "SYSTEMD_UNIT_PATH": f"{unit.parent}:"})


needs_systemd = pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="systemd-analyze is not installed")


@pytest.mark.integration
@needs_systemd
def test_when_the_dropin_sits_beside_the_unit_then_systemd_analyze_verify_accepts_both_silently(
        tmp_path: Path) -> None:
    result = verify(install_beside_unit(tmp_path, allowlist_dropin(config_from_string(CONFIG))))
    assert result.returncode == 0 and result.stdout + result.stderr == "", result.stderr


@pytest.mark.integration
@needs_systemd
def test_when_the_dropin_holds_a_bad_address_then_verify_names_it(tmp_path: Path) -> None:
    """When a drop-in line is broken, then verify says so: proof that the check above really reads the drop-in."""
    broken = allowlist_dropin(config_from_string(CONFIG)).replace("IPAddressAllow=10.20.41.0/25", "IPAddressAllow=10.20.41.0/33")
    result = verify(install_beside_unit(tmp_path, broken))
    assert "50-allowlist.conf" in result.stderr and "10.20.41.0/33" in result.stderr
