"""Operators' commands: status, transfers list/show/retry/cancel/approve."""

from __future__ import annotations

import json
from datetime import datetime, timezone
from pathlib import Path

import pytest

from kei_gateway.adapters.ledger import TransferLedger, create_ledger_engine, upgrade
from kei_gateway.cli import main as cli, exitcodes
from kei_gateway.config import read_config
from kei_gateway.core.transfer import TransferState as S
from kei_gateway.sim.harness import demo_config_text

NOW = datetime(2026, 11, 21, 9, 0, tzinfo=timezone.utc)


@pytest.fixture
def setup(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[Path, TransferLedger]:
    monkeypatch.setenv("SUDO_USER", "tanaka-dummy")
    config = tmp_path / "k.toml"
    config.write_text(demo_config_text(str(tmp_path), 9464), encoding="utf-8")
    engine = create_ledger_engine(read_config(str(config)).database_url)
    upgrade(engine)
    return config, TransferLedger(engine)


def add(ledger: TransferLedger, state: S, name: str = "a.dat") -> int:
    return ledger.add_transfer(flow="jnks-payments", direction="out", peer="jnks", local_name=name, state=state,
                               size=70, sha256="0" * 64, record_count=12, blob_id=None, now=NOW).id


def run(config: Path, *argv: str) -> int:
    return cli.main(["-c", str(config), *argv])


@pytest.mark.integration  # opens a SQLite ledger file
def test_when_a_held_transfer_is_approved_then_it_is_queued_with_the_approver(
        setup: tuple[Path, TransferLedger], capsys: pytest.CaptureFixture[str]) -> None:
    config, ledger = setup
    held = add(ledger, S.HELD)
    assert run(config, "transfers", "approve", str(held)) == exitcodes.OK
    assert "QUEUED (by tanaka-dummy)" in capsys.readouterr().out
    row = ledger.get(held)
    assert row.state == "QUEUED" and row.approved_by == "tanaka-dummy"


@pytest.mark.integration  # opens a SQLite ledger file
def test_when_approving_something_not_held_then_it_is_refused_and_unchanged(
        setup: tuple[Path, TransferLedger], capsys: pytest.CaptureFixture[str]) -> None:
    config, ledger = setup
    queued = add(ledger, S.QUEUED)
    assert run(config, "transfers", "approve", str(queued)) == exitcodes.FAILED
    assert "applies to HELD transfers only" in capsys.readouterr().err
    assert ledger.get(queued).state == "QUEUED"


@pytest.mark.integration  # opens a SQLite ledger file
def test_when_a_failed_transfer_is_retried_then_it_is_queued_with_fresh_attempts(
        setup: tuple[Path, TransferLedger]) -> None:
    config, ledger = setup
    failed = add(ledger, S.QUEUED)
    ledger.transition(failed, S.SENDING, NOW, attempts=8)
    ledger.transition(failed, S.FAILED, NOW)
    assert run(config, "transfers", "retry", str(failed)) == exitcodes.OK
    row = ledger.get(failed)
    assert row.state == "QUEUED" and row.attempts == 0


@pytest.mark.integration  # opens a SQLite ledger file
def test_when_cancelled_then_the_reason_and_person_are_kept(setup: tuple[Path, TransferLedger]) -> None:
    config, ledger = setup
    held = add(ledger, S.HELD)
    assert run(config, "transfers", "cancel", str(held), "--reason", "sent twice by mistake") == exitcodes.OK
    row = ledger.get(held)
    assert row.state == "CANCELLED" and row.last_error == "cancelled by tanaka-dummy: sent twice by mistake"


@pytest.mark.integration  # opens a SQLite ledger file
def test_when_listing_and_showing_then_states_counts_and_json_come_out(
        setup: tuple[Path, TransferLedger], capsys: pytest.CaptureFixture[str]) -> None:
    config, ledger = setup
    add(ledger, S.HELD, "h.dat")
    queued = add(ledger, S.QUEUED, "q.dat")
    assert run(config, "transfers", "list", "--state", "QUEUED") == exitcodes.OK
    out = capsys.readouterr().out
    assert "q.dat" in out and "h.dat" not in out
    assert run(config, "transfers", "show", str(queued), "--json") == exitcodes.OK
    assert json.loads(capsys.readouterr().out)["local_name"] == "q.dat"
    assert run(config, "status") == exitcodes.OK
    out = capsys.readouterr().out
    assert "jnks-payments: 1 held, 1 queued" in out and "Needs a person" in out
    assert run(config, "transfers", "show", "999") == exitcodes.FAILED
    assert "no transfer 999" in capsys.readouterr().err


@pytest.mark.integration  # opens a SQLite ledger file
def test_when_a_stored_file_is_exported_then_it_comes_back_decrypted_0600_and_never_overwrites(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    from kei_gateway.sim.pki import write_demo_credentials
    from kei_gateway.adapters.store.blobs import open_store

    write_demo_credentials(str(tmp_path / "credentials"))
    config_path = tmp_path / "k.toml"
    config_path.write_text(demo_config_text(str(tmp_path), 9464), encoding="utf-8")
    config = read_config(str(config_path))
    engine = create_ledger_engine(config.database_url)
    upgrade(engine)
    ledger = TransferLedger(engine)
    open_store(config).write("quarantine-x", [b"dummy record\r\n"])
    transfer = ledger.add_transfer(flow="jnks-payments", direction="out", peer="jnks", local_name="bad.dat",
                                   state=S.QUARANTINED, size=14, sha256=None, record_count=1,
                                   blob_id="quarantine-x", now=NOW).id
    target = tmp_path / "out.dat"
    assert run(config_path, "transfers", "export", str(transfer), "--output", str(target)) == exitcodes.OK
    assert target.read_bytes() == b"dummy record\r\n" and target.stat().st_mode & 0o777 == 0o600
    assert "delete it when done" in capsys.readouterr().out
    assert run(config_path, "transfers", "export", str(transfer), "--output", str(target)) == exitcodes.FAILED
    assert "nothing is overwritten" in capsys.readouterr().err


@pytest.mark.integration  # opens a SQLite ledger file
def test_when_the_daemon_starts_sending_a_transfer_being_retried_then_the_retry_changes_nothing(
        setup: tuple[Path, TransferLedger], monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    config, ledger = setup
    waiting = add(ledger, S.RETRY_WAIT)
    seen = ledger.get(waiting)  # what the command reads ...
    ledger.transition(waiting, S.SENDING, NOW)  # ... before the daemon takes the transfer to send it
    monkeypatch.setattr(TransferLedger, "get", lambda self, transfer_id: seen if transfer_id == waiting else None)
    assert run(config, "transfers", "retry", str(waiting)) == exitcodes.FAILED
    assert "nothing was changed" in capsys.readouterr().err
    monkeypatch.undo()
    assert ledger.get(waiting).state == "SENDING"


@pytest.mark.integration  # opens a SQLite ledger file (issue 13 test from main, under issue 10's tiers)
def test_when_show_is_asked_for_degenerations_then_the_encrypted_list_is_printed_and_the_reading_audited(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    from kei_gateway.operations.audit import AuditLog, audit_key_from_config
    from kei_gateway.sim.pki import write_demo_credentials
    from kei_gateway.adapters.store.blobs import open_store
    from kei_gateway.adapters.store.format import degenerations_blob_id

    monkeypatch.setenv("SUDO_USER", "tanaka-dummy")
    write_demo_credentials(str(tmp_path / "credentials"))
    config_path = tmp_path / "k.toml"
    config_path.write_text(demo_config_text(str(tmp_path), 9464), encoding="utf-8")
    config = read_config(str(config_path))
    engine = create_ledger_engine(config.database_url)
    upgrade(engine)
    ledger = TransferLedger(engine)
    store = open_store(config)
    store.write("out-x", [b"payload\r\n"])
    store.write(degenerations_blob_id("out-x"),
                ["# degenerated 3 listed 2 maps jntajis-python 0.0 (test)\n12\tpayer_name\t髙\t高\n"
                 "40\tpayer_name\t𠮷\t吉\n".encode("utf-8")])
    transfer = ledger.add_transfer(flow="mpn-slips", direction="out", peer="mpn", local_name="std.dat",
                                   state=S.QUEUED, size=9, sha256=None, record_count=40, blob_id="out-x", now=NOW).id
    plain = ledger.add_transfer(flow="mpn-slips", direction="out", peer="mpn", local_name="plain.dat",
                                state=S.QUEUED, size=9, sha256=None, record_count=1, blob_id="out-y", now=NOW).id

    assert run(config_path, "transfers", "show", str(transfer)) == exitcodes.OK
    assert "髙" not in capsys.readouterr().out, "only with --degenerations"
    assert run(config_path, "transfers", "show", str(transfer), "--degenerations") == exitcodes.OK
    out = capsys.readouterr().out
    assert "縮退 (degenerations): 3 in transfer" in out and "the first 2 listed" in out
    assert "       12  payer_name       髙 → 高" in out and "       40  payer_name       𠮷 → 吉" in out
    assert run(config_path, "transfers", "show", str(transfer), "--degenerations", "--json") == exitcodes.OK
    listing = json.loads(capsys.readouterr().out)["degenerations"]
    assert listing["degenerated"] == 3 and listing["listed"] == 2
    assert listing["entries"][1] == {"record": 40, "key": "payer_name", "from": "𠮷", "to": "吉"}
    assert run(config_path, "transfers", "show", str(plain), "--degenerations") == exitcodes.OK
    assert "none (no 外字 was degenerated" in capsys.readouterr().out
    audited = [stored.record for stored in AuditLog(engine, audit_key_from_config(config)).iter_records()
               if stored.record.event == "operator.degenerations_shown"]
    assert [(r.actor, r.transfer_id, r.count) for r in audited] == [("tanaka-dummy", transfer, 2)] * 2


@pytest.mark.integration  # opens a SQLite ledger file
def test_when_nodes_share_the_ledger_then_status_lists_each_with_its_heartbeat_and_what_it_holds(
        setup: tuple[Path, TransferLedger], capsys: pytest.CaptureFixture[str]) -> None:
    from kei_gateway.adapters.ledger.leases import LeaseLedger

    config, ledger = setup
    assert run(config, "status") == exitcodes.OK
    assert "Nodes: none running." in capsys.readouterr().out
    now = datetime.now(timezone.utc)
    leases = LeaseLedger(ledger.engine, "gw1", 15.0)
    leases.join("inc", now, "host-1", 4242, pid_alive=lambda pid: True)
    leases.claim("purge", "daily", now)
    leases.claim("transfer", "3", now)
    assert run(config, "status") == exitcodes.OK
    out = capsys.readouterr().out
    assert "gw1" in out and " up " in out and "host host-1 pid 4242" in out and "holds 1 purge, 1 transfer" in out
    assert run(config, "status", "--json") == exitcodes.OK
    [node] = json.loads(capsys.readouterr().out)["nodes"]
    assert (node["node"], node["up"], node["holds"]) == ("gw1", True, {"purge": 1, "transfer": 1})


@pytest.mark.integration  # opens a SQLite ledger file
def test_when_a_node_stopped_heartbeating_then_status_shows_it_silent_and_holding_nothing(
        setup: tuple[Path, TransferLedger], capsys: pytest.CaptureFixture[str]) -> None:
    """A node killed for good (docs/high-availability.md, "When a node is lost for good"): after a lease its row
    says SILENT and its expired leases are no longer counted as held."""
    from datetime import timedelta

    from kei_gateway.adapters.ledger.leases import LeaseLedger

    config, ledger = setup
    then = datetime.now(timezone.utc) - timedelta(seconds=60)
    lost = LeaseLedger(ledger.engine, "gw2", 15.0)
    lost.join("inc-2", then, "host-2", 4343, pid_alive=lambda pid: True)
    lost.claim("transfer", "7", then)
    assert run(config, "status") == exitcodes.OK
    out = capsys.readouterr().out
    assert "gw2" in out and " SILENT " in out and "holds nothing" in out, out
    assert run(config, "status", "--json") == exitcodes.OK
    [node] = json.loads(capsys.readouterr().out)["nodes"]
    assert (node["node"], node["up"], node["holds"]) == ("gw2", False, {})
    assert node["heartbeat_age_seconds"] >= 60
