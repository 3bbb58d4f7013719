"""record_operator_action: CLI commands append to the audit chain with the operator as actor."""

from __future__ import annotations

import os
import pwd
import secrets
from pathlib import Path

import pytest

from kei_gateway.adapters.ledger import create_ledger_engine, upgrade
from kei_gateway.config import Config, read_config
from kei_gateway.operations.audit import (
    AuditError,
    AuditKeyError,
    AuditLog,
    load_audit_key,
    operator_login,
    record_operator_action,
)
from kei_gateway.sim.harness import demo_config_text


def make_config(tmp_path: Path, *, migrate: bool = True, key: bool = True) -> Config:
    (tmp_path / "credentials").mkdir(exist_ok=True)
    if key:
        path = tmp_path / "credentials" / "audit.key"
        path.write_bytes(secrets.token_bytes(32))
        path.chmod(0o600)
    config_path = tmp_path / "k.toml"
    config_path.write_text(demo_config_text(str(tmp_path), 9464), encoding="utf-8")
    config = read_config(str(config_path))
    if migrate:
        engine = create_ledger_engine(config.database_url)
        upgrade(engine)
        engine.dispose()
    return config


def audit_log(config: Config) -> AuditLog:
    return AuditLog(create_ledger_engine(config.database_url),
                    load_audit_key(config.file_path(config.keys.audit)))


@pytest.mark.integration  # opens a SQLite ledger file
def test_when_an_operator_action_is_recorded_under_sudo_then_the_sudo_user_is_the_actor(tmp_path: Path) -> None:
    config = make_config(tmp_path)
    stored = record_operator_action(config, "operator.transfer_approved", environ={"SUDO_USER": "ope-dummy"},
                                    transfer_id=7, flow="jnks-payments", records=1200, journal=False)
    log = audit_log(config)
    [record] = list(log.iter_records())
    assert record == stored
    assert (record.record.actor, record.record.event, record.record.transfer_id, record.record.count) == (
        "ope-dummy", "operator.transfer_approved", 7, 1200)
    assert log.verify().ok


def test_when_no_sudo_user_is_set_then_the_login_of_the_uid_is_the_actor() -> None:
    assert operator_login({}) == pwd.getpwuid(os.getuid()).pw_name


@pytest.mark.integration  # opens a SQLite ledger file
def test_when_fields_carry_a_file_name_then_it_is_not_recorded(tmp_path: Path) -> None:
    config = make_config(tmp_path)
    stored = record_operator_action(config, "operator.keys_generated", environ={}, local_name="PERSONAL-NAME.csv",
                                    journal=False)
    assert "PERSONAL-NAME" not in repr(stored)


@pytest.mark.integration  # opens a SQLite ledger file
def test_when_the_audit_key_is_readable_by_others_then_the_record_is_refused_naming_keys_audit(tmp_path: Path) -> None:
    config = make_config(tmp_path)
    (tmp_path / "credentials" / "audit.key").chmod(0o644)
    with pytest.raises(AuditKeyError, match="keys.audit"):
        record_operator_action(config, "operator.transfer_retried", environ={}, transfer_id=1, journal=False)


@pytest.mark.integration  # opens a SQLite ledger file
def test_when_the_ledger_is_not_migrated_then_the_error_says_to_run_db_upgrade(tmp_path: Path) -> None:
    config = make_config(tmp_path, migrate=False)
    with pytest.raises(AuditError, match="db upgrade"):
        record_operator_action(config, "operator.transfer_retried", environ={}, transfer_id=1, journal=False)
