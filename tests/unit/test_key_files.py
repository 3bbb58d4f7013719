"""Keys (issue 6 part 5): key files and the TLS private key are 0600/0400 and the service user's, else no start."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from kei_gateway.cli import exitcodes
from kei_gateway.config import check_files, config_from_string, read_config
from kei_gateway.sim.harness import demo_config_text
from kei_gateway.sim.pki import write_demo_credentials

OTHER_UID = 65534  # "nobody": neither root nor the user running the tests
as_root = pytest.mark.skipif(os.geteuid() != 0, reason="changing a file's owner needs root")


def write_config(tmp_path: Path, extra_keys: str = "") -> Path:
    write_demo_credentials(str(tmp_path / "credentials"))
    path = tmp_path / "kei-gateway.toml"
    path.write_text(demo_config_text(str(tmp_path), 9464, extra=extra_keys), encoding="utf-8")
    return path


def problems_of(path: Path, environ: dict[str, str] | None = None, euid: int | None = None) -> dict[str, str]:
    return {p.path: p.message for p in check_files(read_config(str(path)), environ or {}, euid=euid)}


def test_when_the_keys_are_0600_and_the_service_users_then_nothing_is_refused(tmp_path: Path) -> None:
    path = write_config(tmp_path)
    os.chmod(tmp_path / "credentials" / "audit.key", 0o400)
    assert problems_of(path) == {}


def test_when_the_tls_private_key_is_group_readable_then_it_is_refused_by_name(tmp_path: Path) -> None:
    path = write_config(tmp_path)
    key = tmp_path / "credentials" / "gateway.key"
    os.chmod(key, 0o640)
    problems = problems_of(path)
    assert set(problems) == {"tls.private_key"}
    assert str(key) in problems["tls.private_key"] and "0640" in problems["tls.private_key"]


def test_when_the_certificate_is_world_readable_then_that_is_fine(tmp_path: Path) -> None:
    path = write_config(tmp_path)
    os.chmod(tmp_path / "credentials" / "gateway.crt", 0o644)
    assert problems_of(path) == {}


def test_when_a_key_is_executable_then_it_is_refused_as_not_0600_or_0400(tmp_path: Path) -> None:
    path = write_config(tmp_path)
    os.chmod(tmp_path / "credentials" / "store.key", 0o700)
    problems = problems_of(path)
    assert set(problems) == {"keys.store"} and "0600 or 0400" in problems["keys.store"]


def test_when_a_key_belongs_to_another_user_then_it_is_refused_with_the_chown_to_run(tmp_path: Path) -> None:
    """When the file's owner is not the daemon's euid (here: the daemon would run as uid 4242), then it is refused."""
    path = write_config(tmp_path)
    problems = problems_of(path, euid=4242)
    assert set(problems) == {"tls.private_key", "keys.store", "keys.audit"}, "the certificate is not a secret"
    message = problems["keys.audit"]
    assert str(tmp_path / "credentials" / "audit.key") in message
    assert "not by the service user uid 4242" in message and "chown 4242 " in message


@as_root
def test_when_a_key_is_chowned_to_another_account_then_the_daemon_would_refuse_it(tmp_path: Path) -> None:
    path = write_config(tmp_path)
    os.chown(tmp_path / "credentials" / "gateway.key", OTHER_UID, -1)
    problems = problems_of(path)
    assert set(problems) == {"tls.private_key"} and "owned by nobody (uid 65534)" in problems["tls.private_key"]


def test_when_a_previous_store_key_is_someone_elses_then_it_is_named_with_its_index(tmp_path: Path) -> None:
    base = tmp_path / "other"
    write_demo_credentials(str(base))
    path = write_config(tmp_path)
    text = path.read_text(encoding="utf-8").replace("[keys]\n", f'[keys]\nstore_previous = ["{base}/store.key"]\n')
    if "store_previous" not in text:
        text += f'\n[keys]\nstore_previous = ["{base}/store.key"]\n'
    path.write_text(text, encoding="utf-8")
    os.chmod(base / "store.key", 0o604)
    problems = problems_of(path)
    assert set(problems) == {"keys.store_previous[0]"} and "0604" in problems["keys.store_previous[0]"]


# -- $CREDENTIALS_DIRECTORY: systemd's files ------------------------------------------

MINIMAL = '[gateway]\nlg_code = "131041"\nspool_dir = "/tmp/kei-unused/spool"\nstate_dir = "/tmp/kei-unused/state"\n'


def test_when_systemd_delivers_a_root_owned_0440_credential_then_the_service_user_may_use_it(tmp_path: Path) -> None:
    """LoadCredential= files are root's with an ACL for the service user (ls shows 0440): that is 'managed'."""
    creds = tmp_path / "creds"
    write_demo_credentials(str(creds))
    for name in ("gateway.key", "store.key", "audit.key"):
        os.chmod(creds / name, 0o440)
    config = config_from_string(MINIMAL)
    owner = (creds / "store.key").stat().st_uid
    service_user = 4242 if owner == 0 else owner  # root-owned files: as if the daemon ran as uid 4242
    assert check_files(config, {"CREDENTIALS_DIRECTORY": str(creds)}, euid=service_user) == []


def test_when_a_credential_is_open_to_others_then_it_is_refused_even_from_systemd(tmp_path: Path) -> None:
    creds = tmp_path / "creds"
    write_demo_credentials(str(creds))
    os.chmod(creds / "audit.key", 0o444)
    problems = {p.path: p.message for p in check_files(config_from_string(MINIMAL), {"CREDENTIALS_DIRECTORY": str(creds)})}
    assert set(problems) == {"keys.audit"} and "0444" in problems["keys.audit"]


@as_root
def test_when_a_credential_belongs_to_a_third_account_then_it_is_refused(tmp_path: Path) -> None:
    creds = tmp_path / "creds"
    write_demo_credentials(str(creds))
    os.chown(creds / "store.key", OTHER_UID, -1)
    problems = {p.path: p.message for p in check_files(config_from_string(MINIMAL), {"CREDENTIALS_DIRECTORY": str(creds)},
                                                       euid=4242)}
    assert set(problems) == {"keys.store"} and "neither root" in problems["keys.store"]


@pytest.mark.integration  # starts the daemon
def test_when_a_key_is_unsafe_then_run_refuses_to_start_and_names_the_file(tmp_path: Path) -> None:
    """When ``kei-gateway run`` finds a group-readable store key, then it exits 2 naming the file, before any listener."""
    path = write_config(tmp_path)
    key = tmp_path / "credentials" / "store.key"
    os.chmod(key, 0o640)
    result = subprocess.run([sys.executable, "-m", "kei_gateway", "-c", str(path), "run", "--log-target", "terminal"],
                            capture_output=True, text=True, timeout=60, env={**os.environ, "NOTIFY_SOCKET": ""})
    assert result.returncode == exitcodes.USAGE
    assert f"keys.store: {key}: mode 0640" in result.stderr
