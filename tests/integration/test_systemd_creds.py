"""docs/operations.md §3.1 (encrypted credentials): its commands and its drop-in, run and verified as written.

The shell block is run in a temporary directory standing in for
``/etc/kei-gateway/credentials`` (with keys made by ``kei-gateway keys
generate``, as §3.0 says); the ``[Service]`` block is installed as a drop-in
beside the unit and must pass ``systemd-analyze verify`` silently.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from kei_gateway.sim.pki import write_demo_credentials

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(shutil.which("systemd-creds") is None or shutil.which("systemd-analyze") is None,
                       reason="systemd-creds / systemd-analyze are not installed"),
    pytest.mark.skipif(os.geteuid() != 0, reason="systemd-creds encrypts with the host key only as root"),
]

REPO = Path(__file__).resolve().parents[2]
DOC = REPO / "docs" / "operations.md"
UNIT = REPO / "systemd" / "kei-gateway.service"
INSTALLED_EXEC = "/opt/kei-gateway/venv/bin/kei-gateway"
CREDENTIALS = "/etc/kei-gateway/credentials"


def section(title: str) -> str:
    text = DOC.read_text(encoding="utf-8")
    start = text.index(title)
    following = re.search(r"^##+ ", text[start + len(title):], re.MULTILINE)
    return text[start:start + len(title) + following.start()] if following else text[start:]


def blocks(text: str, language: str) -> list[str]:
    return re.findall(rf"^```{language}\n(.*?)^```", text, re.MULTILINE | re.DOTALL)


def test_when_the_documented_commands_run_then_each_key_is_encrypted_checked_and_the_plain_file_removed(
        tmp_path: Path) -> None:
    credentials = tmp_path / "credentials"
    write_demo_credentials(str(credentials))  # gateway.crt/.key and store/audit keys, 0600
    keys = ("gateway.key", "store.key", "audit.key")
    originals = {name: (credentials / name).read_bytes() for name in keys}
    script = blocks(section("### 3.1 Encrypted credentials"), "sh")[0]
    assert f"cd {CREDENTIALS}" in script
    script = script.replace(f"cd {CREDENTIALS}", f"cd {credentials}")
    script = "\n".join(line for line in script.splitlines() if not line.startswith("systemctl "))
    result = subprocess.run(["bash", "-euo", "pipefail", "-c", script], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    for name in keys:
        assert not (credentials / name).exists(), f"{name}: the plain key is still there"
        cred = credentials / f"{name}.cred"
        assert cred.stat().st_mode & 0o777 == 0o600
        assert originals[name] not in cred.read_bytes()
        decrypted = subprocess.run(["systemd-creds", "decrypt", f"--name={name}", str(cred), "-"],
                                   capture_output=True, timeout=60, check=True).stdout
        assert decrypted == originals[name]
        wrong_name = subprocess.run(["systemd-creds", "decrypt", "--name=other.key", str(cred), "-"],
                                    capture_output=True, timeout=60)
        assert wrong_name.returncode != 0, "a credential decrypts only under the name it was encrypted with"
    assert (credentials / "gateway.crt").exists(), "the certificate is not a secret: it stays as it is"


def test_when_the_documented_dropin_is_installed_then_systemd_analyze_verify_is_silent(tmp_path: Path) -> None:
    dropin = blocks(section("### 3.1 Encrypted credentials"), "ini")[0]
    assert dropin.count("LoadCredentialEncrypted=") == 3 and "LoadCredential=\n" in dropin
    entry_point = Path(sys.executable).parent / "kei-gateway"
    unit = UNIT.read_text(encoding="utf-8").replace(f"={INSTALLED_EXEC} ", f"={entry_point} ")  # ExecStart= and ExecReload=
    (tmp_path / "kei-gateway.service").write_text(unit, encoding="utf-8")
    (tmp_path / "kei-gateway.service.d").mkdir()
    (tmp_path / "kei-gateway.service.d" / "override.conf").write_text(dropin, encoding="utf-8")

    def verify() -> subprocess.CompletedProcess[str]:
        return subprocess.run(["systemd-analyze", "verify", "--man=no", str(tmp_path / "kei-gateway.service")],
                              capture_output=True, text=True, timeout=60,
                              env={**os.environ, "SYSTEMD_UNIT_PATH": f"{tmp_path}:"})

    result = verify()
    assert result.returncode == 0 and result.stdout + result.stderr == "", result.stderr
    # The check can fail: a misspelt directive in the drop-in is reported.
    (tmp_path / "kei-gateway.service.d" / "override.conf").write_text(
        dropin.replace("LoadCredentialEncrypted=store.key", "LoadCredentialEncryptd=store.key"), encoding="utf-8")
    assert "LoadCredentialEncryptd" in verify().stderr
