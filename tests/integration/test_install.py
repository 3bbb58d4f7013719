"""scripts/install into a staging root (``--prefix``), twice: what it creates, and that a rerun changes nothing.

Installing dependencies from an index is neither possible here (loopback only)
nor what this test is about, so the installer runs with
``--reuse-site-packages``: the new venv sees the test venv's packages through a
``.pth`` file, and only kei-gateway itself is built and installed, non-editable,
from a clean copy of the checkout.  The test checks that the installed
``kei-gateway`` imports its code from the new venv, not from the checkout.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import stat
import subprocess
import sys
import sysconfig
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

import kei_gateway

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]
INSTALL = REPO / "scripts" / "install"
CONFIG_EXAMPLE = REPO / "etc" / "kei-gateway.toml.example"
CATALOG = REPO / "systemd" / "kei-gateway.catalog"
OPERATOR_EDIT = "\n# edited by the operator between installs\n"


@dataclass
class Installed:
    root: Path
    first: subprocess.CompletedProcess[str]
    second: subprocess.CompletedProcess[str]
    keys_before: dict[str, bytes]
    seconds: float

    @property
    def venv(self) -> Path:
        return self.root / "opt" / "kei-gateway" / "venv"


def run_install(root: Path, *extra: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(INSTALL), "--prefix", str(root), "--python", sys.executable,
         "--reuse-site-packages", sysconfig.get_path("purelib"), "--generate-keys", *extra],
        capture_output=True, text=True, timeout=120, check=False,
    )


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> Installed:
    root = tmp_path_factory.mktemp("root")
    started = time.monotonic()
    first = run_install(root)
    assert first.returncode == 0, f"first install failed:\n{first.stderr}"
    creds = root / "etc" / "kei-gateway" / "credentials"
    keys_before = {p.name: p.read_bytes() for p in creds.glob("*.key")}
    config = root / "etc" / "kei-gateway" / "kei-gateway.toml"
    if config.exists():
        with config.open("a", encoding="utf-8") as f:
            f.write(OPERATOR_EDIT)
    second = run_install(root)
    assert second.returncode == 0, f"second install failed:\n{second.stderr}"
    return Installed(root, first, second, keys_before, time.monotonic() - started)


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_when_installed_twice_then_both_runs_succeed_within_the_time_budget(installed: Installed) -> None:
    """When the installer runs twice into a staging root, then both succeed and together take under 90 s."""
    assert installed.seconds < 90
    assert "not creating users" in installed.first.stderr  # --prefix implies --no-user
    assert "Next steps" in installed.second.stdout


def test_when_installed_then_the_venv_runs_kei_gateway_from_its_own_copy(installed: Installed, tmp_path: Path) -> None:
    """When installed, then the venv's kei-gateway --version runs, and its code is the venv's copy, not the checkout."""
    version = subprocess.run(
        [str(installed.venv / "bin" / "kei-gateway"), "--version"],
        capture_output=True, text=True, timeout=60, check=False, cwd=tmp_path,
    )
    assert version.returncode == 0, version.stderr
    assert version.stdout.strip() == f"kei-gateway {kei_gateway.__version__}"
    origin = subprocess.run(
        [str(installed.venv / "bin" / "python"), "-c", "import kei_gateway; print(kei_gateway.__file__)"],
        capture_output=True, text=True, timeout=60, check=True, cwd=tmp_path,
    ).stdout.strip()
    assert Path(origin).is_relative_to(installed.venv), origin


def test_when_reinstalled_then_keys_are_never_overwritten(installed: Installed) -> None:
    """When keys exist, then a second install keeps them byte for byte, 0600 in a 0700 directory."""
    creds = installed.root / "etc" / "kei-gateway" / "credentials"
    assert mode(creds) == 0o700
    assert sorted(installed.keys_before) == ["audit.key", "store.key"]
    for name, content in installed.keys_before.items():
        key = creds / name
        assert len(content) == 32
        assert key.read_bytes() == content
        assert mode(key) == 0o600
    assert "kept the existing key" in installed.second.stderr


def test_when_reinstalled_then_the_operators_config_is_kept(installed: Installed) -> None:
    """When a config exists, then the installer never overwrites it; the example is refreshed beside it."""
    etc = installed.root / "etc" / "kei-gateway"
    if not CONFIG_EXAMPLE.exists():
        assert "skipped the config" in installed.first.stderr
        assert not (etc / "kei-gateway.toml").exists()
        return
    example = CONFIG_EXAMPLE.read_text(encoding="utf-8")
    assert (etc / "kei-gateway.toml").read_text(encoding="utf-8") == example + OPERATOR_EDIT
    assert (etc / "kei-gateway.toml.example").read_text(encoding="utf-8") == example
    assert "kept the existing" in installed.second.stderr


def test_when_installed_then_the_spool_has_the_documented_modes(installed: Installed) -> None:
    """When installed, then the spool directories have the modes docs/operations.md explains (setgid for the group)."""
    spool = installed.root / "var" / "spool" / "kei-gateway"
    expected = {
        ".": 0o750,
        "outbox": 0o2750, "outbox/jnks": 0o2770, "outbox/mpn-slips": 0o2770,
        "inbox": 0o2750, "inbox/jnks-receipts": 0o2770, "inbox/mpn-results": 0o2770,
        "quarantine": 0o2750,
        "quarantine/jnks-payments": 0o2750, "quarantine/jnks-receipts": 0o2750,
        "quarantine/mpn-slips": 0o2750, "quarantine/mpn-results": 0o2750,
    }
    actual = {name: mode(spool / name) for name in expected}
    assert {k: oct(v) for k, v in actual.items()} == {k: oct(v) for k, v in expected.items()}


def test_when_installed_then_unit_and_catalog_are_in_place(installed: Installed) -> None:
    """When installed, then the unit is the checkout's, and the catalog (if written yet) is installed and indexed."""
    for name in ("kei-gateway.service", "kei-gateway@.service"):  # the template too, for instances
        unit = installed.root / "etc" / "systemd" / "system" / name
        assert unit.read_bytes() == (REPO / "systemd" / name).read_bytes()
        assert mode(unit) == 0o644
    catalog = installed.root / "usr" / "lib" / "systemd" / "catalog" / "kei-gateway.catalog"
    if CATALOG.exists():
        assert catalog.read_bytes() == CATALOG.read_bytes()
        assert (installed.root / "var" / "lib" / "systemd" / "catalog" / "database").stat().st_size > 0
    else:
        assert "skipped the journald catalog" in installed.first.stderr
        assert not catalog.exists()


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="systemd-analyze is not installed")
def test_when_installed_then_the_unit_verifies_against_the_installed_venv(installed: Installed, tmp_path: Path) -> None:
    """When the installed unit's commands (ExecStart=, ExecReload=) are rebased onto the staging root, then
    systemd-analyze verify is silent."""
    unit = (installed.root / "etc" / "systemd" / "system" / "kei-gateway.service").read_text(encoding="utf-8")
    rebased = unit.replace("=/opt/kei-gateway/", f"={installed.root}/opt/kei-gateway/")
    assert rebased != unit
    copy = tmp_path / "kei-gateway.service"
    copy.write_text(rebased, encoding="utf-8")
    result = subprocess.run(
        ["systemd-analyze", "verify", "--man=no", str(copy)],
        capture_output=True, text=True, timeout=60, check=False,
    )
    assert (result.returncode, result.stdout + result.stderr) == (0, "")


def test_when_given_an_unknown_option_then_the_installer_exits_2_and_says_so(tmp_path: Path) -> None:
    """When the installer gets an option it does not know, then it exits 2, names it and changes nothing."""
    result = subprocess.run(
        [str(INSTALL), "--prefix", str(tmp_path), "--frobnicate"],
        capture_output=True, text=True, timeout=30, check=False,
    )
    assert result.returncode == 2
    assert "unknown option: --frobnicate" in result.stderr
    assert os.listdir(tmp_path) == []


def test_when_help_is_asked_then_every_option_is_explained(tmp_path: Path) -> None:
    result = subprocess.run([str(INSTALL), "--help"], capture_output=True, text=True, timeout=30, check=False)
    assert result.returncode == 0
    for option in ("--prefix", "--no-user", "--python", "--wheelhouse", "--generate-keys", "--with-postgresql",
                   "--reuse-site-packages", "--instance"):
        assert f"  {option}" in result.stdout, option


def test_when_the_postgresql_extra_is_asked_with_reused_packages_then_the_driver_is_importable(
        tmp_path: Path) -> None:
    """--with-postgresql is accepted; with --reuse-site-packages the driver comes from the reused packages."""
    import sysconfig

    root = tmp_path / "root"
    root.mkdir()
    result = subprocess.run([str(INSTALL), "--prefix", str(root), "--with-postgresql", "--reuse-site-packages",
                             sysconfig.get_path("purelib")], capture_output=True, text=True, timeout=300, check=False)
    assert result.returncode == 0, result.stderr
    venv_python = root / "opt" / "kei-gateway" / "venv" / "bin" / "python"
    check = subprocess.run([str(venv_python), "-c", "import psycopg, kei_gateway"], capture_output=True, text=True,
                           timeout=60, check=False)
    assert check.returncode == 0, check.stderr


def test_when_both_keys_are_generated_then_they_are_independent(installed: Installed) -> None:
    """When the two keys were generated, then they differ from each other (two independent random draws)."""
    digests = {hashlib.sha256(v).hexdigest() for v in installed.keys_before.values()}
    assert len(digests) == 2


def test_when_an_instance_is_installed_then_it_has_its_own_config_credentials_and_spool(installed: Installed) -> None:
    """When --instance 131016 is installed beside the plain gateway, then /etc/kei-gateway/131016 holds its config
    (naming its own spool, state and CA directories) and keys, /var/spool/kei-gateway-131016 its spool, and the
    plain gateway's files are untouched; the next steps name kei-gateway@131016."""
    root = installed.root
    plain_config = (root / "etc" / "kei-gateway" / "kei-gateway.toml").read_bytes()
    result = run_install(root, "--instance", "131016")
    assert result.returncode == 0, result.stderr
    etc = root / "etc" / "kei-gateway" / "131016"
    config = (etc / "kei-gateway.toml").read_text(encoding="utf-8")
    assert 'spool_dir = "/var/spool/kei-gateway-131016"' in config
    assert 'state_dir = "/var/lib/kei-gateway-131016"' in config
    assert 'url = "sqlite:////var/lib/kei-gateway-131016/ledger.sqlite3"' in config
    assert 'ca = "/etc/kei-gateway/131016/tls/jnks-ca.pem"' in config
    assert "/var/lib/kei-gateway/" not in config and '"/var/spool/kei-gateway"' not in config
    assert mode(etc / "credentials") == 0o700
    assert sorted(p.name for p in (etc / "credentials").glob("*.key")) == ["audit.key", "store.key"]
    assert mode(root / "var" / "spool" / "kei-gateway-131016" / "outbox" / "jnks") == 0o2770
    assert (root / "etc" / "kei-gateway" / "kei-gateway.toml").read_bytes() == plain_config
    assert "systemctl daemon-reload && systemctl enable --now kei-gateway@131016" in result.stdout
    assert "systemd-allowlist --instance 131016" in result.stdout


def test_when_the_instance_name_could_not_be_a_user_name_then_the_installer_refuses_it(tmp_path: Path) -> None:
    result = subprocess.run([str(INSTALL), "--prefix", str(tmp_path), "--instance", "../x"],
                            capture_output=True, text=True, timeout=30, check=False)
    assert result.returncode == 2 and "--instance ../x" in result.stderr
    assert os.listdir(tmp_path) == []


def test_when_installed_then_the_venv_carries_the_ledger_migrations(installed: Installed, tmp_path: Path) -> None:
    """When the installed (non-editable) package migrates a new ledger, then it finds its migrations: package data
    moved with the code (the real-systemd test found a daemon that could not start without them)."""
    code = ("import sys; from kei_gateway.adapters.ledger import create_ledger_engine, upgrade; "
            "print(upgrade(create_ledger_engine(sys.argv[1])))")
    result = subprocess.run([str(installed.venv / "bin" / "python"), "-c", code, f"sqlite:///{tmp_path}/ledger.sqlite3"],
                            capture_output=True, text=True, timeout=120, check=False, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
