"""The JNKS payment flow end to end: the real daemon, the outbox, the JNKS simulator over mutual TLS."""

from __future__ import annotations

import datetime
import hashlib
import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from kei_gateway.layouts import generate_file, get_layout
from tests.integration.conftest import poll_until
from tests.monitoring import metric_names, rule_expressions
from tests.integration.harness import (
    DaemonProcess, GatewayFiles, SimProcess, make_gateway_files, start_daemon, start_jnks_sim,
)

pytestmark = pytest.mark.integration
JST = datetime.timezone(datetime.timedelta(hours=9))


def dummy_file(records: int, seed: int = 1, invalid_rate: float = 0.0) -> bytes:
    today = datetime.datetime.now(JST).date()
    return b"".join(generate_file(get_layout("jnks-payments"), records, seed=seed, today=today,
                                  invalid_rate=invalid_rate, lg_code="131041"))


def drop(files: GatewayFiles, name: str, data: bytes) -> None:
    """Write as the tax system does: a temporary name, then a rename (SPEC §4, ready = "rename")."""
    outbox = files.base / "spool" / "outbox" / "jnks"
    outbox.mkdir(parents=True, exist_ok=True)
    (outbox / (name + ".tmp")).write_bytes(data)
    os.rename(outbox / (name + ".tmp"), outbox / name)


def transfers(files: GatewayFiles) -> list[dict[str, object]]:
    result = subprocess.run([sys.executable, "-m", "kei_gateway", "-c", str(files.config), "transfers", "list",
                             "--json"], capture_output=True, text=True, timeout=60, check=True)
    return list(json.loads(result.stdout))


@pytest.fixture
def setup(tmp_path: Path) -> Iterator[tuple[GatewayFiles, SimProcess]]:
    files = make_gateway_files(tmp_path)
    sim = start_jnks_sim(files)
    try:
        yield files, sim
    finally:
        sim.stop()


def run_daemon(files: GatewayFiles) -> DaemonProcess:
    daemon = start_daemon(files)
    daemon.notify.wait_for("READY=1")
    return daemon


def assert_alerted_metrics_are_served(daemon: DaemonProcess) -> None:
    """Every series the shipped alert rules read is served by the real daemon running a JNKS flow.

    Prometheus's own ``up`` aside, and ``kei_gateway_unconfirmed_results`` (MPN flows only). The
    audit chain's first verification and the start-up purge run after READY: polled.
    """
    wanted = set().union(*(metric_names(e) for e in rule_expressions())) - {"up", "kei_gateway_unconfirmed_results"}

    last: dict[str, list[float]] = {}

    def served() -> dict[str, list[float]] | None:
        _, body = daemon.get("/metrics")
        last.clear()
        for family in text_string_to_metric_families(body.decode()):
            for sample in family.samples:
                last.setdefault(sample.name, []).append(sample.value)
        ready = wanted <= set(last) and last["kei_gateway_audit_chain_checked_timestamp_seconds"][0] > 0 \
            and last["kei_gateway_last_purge_timestamp_seconds"][0] > 0
        return dict(last) if ready else None

    def missing() -> str:
        stamps = {name: last.get(name) for name in ("kei_gateway_audit_chain_checked_timestamp_seconds",
                                                    "kei_gateway_last_purge_timestamp_seconds")}
        return f"not served: {sorted(wanted - set(last))}; {stamps}"

    samples = poll_until(served, 30, "every series the alert rules read", missing)
    assert samples["kei_gateway_audit_chain_ok"] == [1.0]
    assert min(samples["kei_gateway_queue_age_limit_seconds"]) > 0


def test_when_a_file_is_renamed_into_the_outbox_then_the_peer_gets_it_once_under_its_final_name(
        setup: tuple[GatewayFiles, SimProcess]) -> None:
    files, sim = setup
    files.write_jnks_config(sim.url)
    daemon = run_daemon(files)
    try:
        data = dummy_file(200)
        drop(files, "pay-001.dat", data)
        upload = sim.root / "upload"
        delivered = poll_until(lambda: (list(upload.glob("*.dat")) if upload.exists() else None) or None, 30,
                               "the file at the peer", lambda: daemon.stderr()[-2000:])
        assert len(delivered) == 1
        assert delivered[0].name.startswith("131041_jnks-payments_") and delivered[0].name.endswith("_1.dat")
        assert hashlib.sha256(delivered[0].read_bytes()).hexdigest() == hashlib.sha256(data).hexdigest()
        assert list(upload.glob("*.part")) == []
        assert os.listdir(files.base / "spool" / "outbox" / "jnks") == []
        done = poll_until(lambda: [t for t in transfers(files) if t["flow"] == "jnks-payments" and t["state"] == "DONE"]
                           or None, 30, "DONE")
        assert done[0]["record_count"] == 200 and done[0]["sha256"] == hashlib.sha256(data).hexdigest()
        code, body = daemon.get("/metrics")
        assert 'kei_gateway_transfers_total{flow="jnks-payments",outcome="done"} 1.0' in body.decode()
        assert 'kei_gateway_peer_up{peer="jnks"} 1.0' in body.decode()
        checked = subprocess.run(["promtool", "check", "metrics"], input=body, capture_output=True, timeout=60)
        assert checked.returncode == 0 and not checked.stdout.strip() and not checked.stderr.strip(), \
            "promtool on the exposition with flows: " + checked.stdout.decode() + checked.stderr.decode()
        assert "transfer.sent" in daemon.stderr()
        assert_alerted_metrics_are_served(daemon)
        state_dir = files.base / "state"
        plaintext = data[:60]
        for path in state_dir.rglob("*"):
            if path.is_file() and not path.name.startswith("ledger.sqlite3"):
                assert plaintext not in path.read_bytes(), f"plaintext in {path}"
    finally:
        assert daemon.stop() == 0
        daemon.notify.close()


def test_when_the_peer_resolves_outside_its_allow_list_then_nothing_is_sent_and_the_transfer_waits(
        setup: tuple[GatewayFiles, SimProcess]) -> None:
    files, sim = setup
    files.write_jnks_config(sim.url, allow="10.20.30.0/24")
    daemon = run_daemon(files)
    try:
        drop(files, "pay-002.dat", dummy_file(5))
        poll_until(lambda: "peer.denied" in daemon.stderr() or None, 30, "the refusal to be logged",
                   lambda: daemon.stderr()[-2000:])
        rows = transfers(files)
        assert [r["state"] for r in rows] == ["QUEUED"] and "outbound connection refused" in str(rows[0]["last_error"])
        assert not (sim.root / "upload").exists() or list((sim.root / "upload").iterdir()) == []
        assert "PUT" not in sim.log_path.read_text(errors="replace"), "not even a connection reached the peer"
    finally:
        assert daemon.stop() == 0
        daemon.notify.close()


def test_when_an_invalid_file_arrives_then_it_is_quarantined_and_the_daemon_keeps_sending(
        setup: tuple[GatewayFiles, SimProcess]) -> None:
    files, sim = setup
    files.write_jnks_config(sim.url)
    daemon = run_daemon(files)
    try:
        drop(files, "bad.dat", dummy_file(50, seed=4, invalid_rate=0.3))
        drop(files, "good.dat", dummy_file(10, seed=5))
        quarantine = files.base / "spool" / "quarantine" / "jnks-payments"
        poll_until(lambda: (quarantine / "bad.dat.errors.txt").exists() or None, 30, "the errors file")
        poll_until(lambda: [t for t in transfers(files) if t["state"] == "DONE"] or None, 30, "good.dat sent")
        errors = (quarantine / "bad.dat.errors.txt").read_text(encoding="utf-8")
        assert "record " in errors and "nothing of this file was sent" in errors
        assert len(list((sim.root / "upload").glob("*.dat"))) == 1
        assert "ingest.quarantined" in daemon.stderr()
    finally:
        assert daemon.stop() == 0
        daemon.notify.close()


def test_when_a_file_is_over_max_file_size_then_the_daemon_refuses_it_unread_and_sends_the_one_beside_it(
        setup: tuple[GatewayFiles, SimProcess]) -> None:
    files, sim = setup
    small = dummy_file(20, seed=5)  # 1,400 bytes: the limit is 1,470 (at least "1KiB")
    files.write_jnks_config(sim.url, **{'state_dir = ': f'max_file_size = "{len(small) + 70}B"\nstate_dir = '})
    daemon = run_daemon(files)
    try:
        big = dummy_file(100, seed=6)
        drop(files, "big.dat", big)
        drop(files, "good.dat", small)
        quarantine = files.base / "spool" / "quarantine" / "jnks-payments"
        poll_until(lambda: (quarantine / "big.dat.errors.txt").exists() or None, 30, "the errors file of big.dat")
        poll_until(lambda: [t for t in transfers(files) if t["state"] == "DONE"] or None, 30, "good.dat sent")
        errors = (quarantine / "big.dat.errors.txt").read_text(encoding="utf-8")
        assert f"{len(big)} bytes, larger than [gateway] max_file_size ({len(small) + 70} bytes)" in errors
        assert sorted(os.listdir(quarantine)) == ["big.dat.errors.txt"], "nothing of it is kept"
        assert not (files.base / "spool" / "outbox" / "jnks" / "big.dat").exists()
        by_name = {t["local_name"]: t for t in transfers(files)}
        assert (by_name["big.dat"]["state"], by_name["big.dat"]["size"]) == ("QUARANTINED", len(big))
        assert len(list((sim.root / "upload").glob("*.dat"))) == 1
    finally:
        assert daemon.stop() == 0
        daemon.notify.close()


def test_when_jnks_answers_then_the_receipt_is_relayed_to_the_inbox_deleted_there_and_counted(
        tmp_path: Path) -> None:
    files = make_gateway_files(tmp_path)
    sim = start_jnks_sim(files, "--reject-lines", "2,5")
    files.write_jnks_config(sim.url)
    daemon = run_daemon(files)
    try:
        drop(files, "pay-003.dat", dummy_file(8, seed=6))
        inbox = files.base / "spool" / "inbox" / "jnks-receipts"
        receipts = poll_until(lambda: (list(inbox.glob("*.result")) if inbox.exists() else None) or None, 30,
                              "the receipt in the inbox", lambda: daemon.stderr()[-3000:])
        assert len(receipts) == 1 and receipts[0].name.endswith("_1.dat.result")
        data = receipts[0].read_bytes()
        assert len(data) == 8 * 100 and data.count(b"\r\n") == 8
        assert oct(receipts[0].stat().st_mode & 0o777) == "0o640", "readable by the tax system's group"
        poll_until(lambda: (not list((sim.root / "results").iterdir())) or None, 30, "the DELETE at the peer")
        upload = poll_until(lambda: [t for t in transfers(files) if t["flow"] == "jnks-payments"
                                     and t["receipt_summary"]] or None, 30, "the receipt summary")
        assert upload[0]["receipt_summary"].startswith("受付 6, エラー 2")
        code, body = daemon.get("/metrics")
        text = body.decode()
        assert 'kei_gateway_records_total{flow="jnks-payments",outcome="rejected_by_peer"} 2.0' in text
        assert 'kei_gateway_transfers_total{flow="jnks-receipts",outcome="relayed"} 1.0' in text
        assert "receipt.rejections" in daemon.stderr()
    finally:
        assert daemon.stop() == 0
        daemon.notify.close()
        sim.stop()


@pytest.mark.parametrize(("faults", "expect"), [
    (["--fault", "fail_put_503_times=2", "--fault", "retry_after_seconds=1"], "unavailable"),
    (["--fault", "reset_mid_body_times=1"], "connection_lost"),
    (["--fault", "replay_412=1"], None),
])
def test_when_the_peer_misbehaves_then_the_file_still_arrives_exactly_once(
        tmp_path: Path, faults: list[str], expect: str | None) -> None:
    files = make_gateway_files(tmp_path)
    sim = start_jnks_sim(files, *faults)
    files.write_jnks_config(sim.url)
    daemon = run_daemon(files)
    try:
        data = dummy_file(1500, seed=9)  # more than one store segment: the reset comes mid-body
        drop(files, "pay-fault.dat", data)
        done = poll_until(lambda: [t for t in transfers(files) if t["flow"] == "jnks-payments"
                                   and t["state"] == "DONE"] or None, 60, "DONE despite the fault",
                          lambda: daemon.stderr()[-3000:])
        delivered = list((sim.root / "upload").glob("*.dat"))
        assert [hashlib.sha256(p.read_bytes()).hexdigest() for p in delivered] == [hashlib.sha256(data).hexdigest()]
        if expect is not None:
            assert done[0]["attempts"] >= 2
            assert "transfer.retry" in daemon.stderr() and expect in daemon.stderr()
        else:
            assert done[0]["receipt_summary"] is None or "already present" in str(done[0]["receipt_summary"]) \
                or "受付" in str(done[0]["receipt_summary"])
    finally:
        assert daemon.stop() == 0
        daemon.notify.close()
        sim.stop()


def test_when_the_peer_presents_a_certificate_from_an_unknown_ca_then_nothing_is_sent_and_an_alert_is_raised(
        tmp_path: Path) -> None:
    files = make_gateway_files(tmp_path)
    sim = start_jnks_sim(files, "--fault", "wrong_server_cert")
    files.write_jnks_config(sim.url)
    daemon = run_daemon(files)
    try:
        drop(files, "pay-ca.dat", dummy_file(5))
        poll_until(lambda: "peer.identity_failed" in daemon.stderr() or None, 30, "the identity alert",
                   lambda: daemon.stderr()[-3000:])
        assert "[critical] peer.identity_failed" in daemon.stderr() and "reason=ca" in daemon.stderr()
        rows = transfers(files)
        assert [(r["flow"], r["state"]) for r in rows if r["flow"] == "jnks-payments"] == [("jnks-payments", "QUEUED")]
        assert not (sim.root / "upload").exists() or list((sim.root / "upload").iterdir()) == []
        code, body = daemon.get("/metrics")
        assert 'kei_gateway_transfers_total{flow="jnks-payments",outcome="refused_ca"} 1.0' in body.decode()
    finally:
        assert daemon.stop() == 0
        daemon.notify.close()
        sim.stop()


def test_when_the_peer_key_does_not_match_its_pin_then_nothing_is_sent_and_an_alert_is_raised(tmp_path: Path) -> None:
    files = make_gateway_files(tmp_path)
    sim = start_jnks_sim(files)
    wrong_pin = "sha256/" + "A" * 43 + "="
    files.write_jnks_config(sim.url, **{'allow = ["127.0.0.0/8"]': f'allow = ["127.0.0.0/8"]\npins = ["{wrong_pin}"]'})
    daemon = run_daemon(files)
    try:
        drop(files, "pay-pin.dat", dummy_file(5))
        poll_until(lambda: "peer.identity_failed" in daemon.stderr() or None, 30, "the pin alert",
                   lambda: daemon.stderr()[-3000:])
        assert "reason=pin" in daemon.stderr()
        assert [r["state"] for r in transfers(files) if r["flow"] == "jnks-payments"] == ["QUEUED"]
        assert not (sim.root / "upload").exists() or list((sim.root / "upload").iterdir()) == []
    finally:
        assert daemon.stop() == 0
        daemon.notify.close()
        sim.stop()


def test_when_bad_names_links_and_directories_appear_then_each_is_refused_unread_and_the_daemon_runs_on(
        setup: tuple[GatewayFiles, SimProcess], tmp_path: Path) -> None:
    files, sim = setup
    files.write_jnks_config(sim.url)
    daemon = run_daemon(files)
    try:
        outbox = files.base / "spool" / "outbox" / "jnks"
        outbox.mkdir(parents=True, exist_ok=True)
        secret = tmp_path / "secret.txt"
        secret.write_text("not for the peer")
        os.symlink(secret, outbox / "link.dat")
        (outbox / "sub").mkdir()
        (outbox / "full").mkdir()  # holds the writer's plaintext: left where it is, reported once
        (outbox / "full" / "inner.dat").write_bytes(dummy_file(2))
        (outbox / "bad name.dat").write_bytes(dummy_file(3))
        drop(files, "good.dat", dummy_file(4, seed=11))
        quarantine = files.base / "spool" / "quarantine" / "jnks-payments"
        poll_until(lambda: (quarantine.exists() and len(list(quarantine.glob("*.errors.txt"))) == 3) or None, 30,
                   "three refusals", lambda: daemon.stderr()[-3000:])
        poll_until(lambda: [t for t in transfers(files) if t["state"] == "DONE"] or None, 30, "good.dat delivered")
        assert os.path.islink(quarantine / "link.dat") and (quarantine / "sub").is_dir()
        poll_until(lambda: "move it out of the outbox" in daemon.stderr() or None, 30, "full/ reported",
                   lambda: daemon.stderr()[-3000:])
        assert sorted(p.name for p in outbox.iterdir()) == ["full"]
        assert (outbox / "full" / "inner.dat").read_bytes() == dummy_file(2)
        assert not list(quarantine.rglob("inner.dat")), "no plaintext copied into quarantine/"
        assert "not for the peer" not in "".join(p.read_text(errors="replace") for p in quarantine.glob("*.errors.txt"))
        assert daemon.get("/healthz")[0] == 200
    finally:
        assert daemon.stop() == 0
        daemon.notify.close()


def test_when_a_standardised_system_writes_utf8_with_mj_characters_then_the_peer_gets_them_degenerated(
        setup: tuple[GatewayFiles, SimProcess]) -> None:
    from kei_gateway.layouts import ValidationOptions, validate_bytes

    files, sim = setup
    files.write_jnks_config(sim.url)
    text = files.config.read_text(encoding="utf-8")
    files.config.write_text(text.replace('outbox = "outbox/jnks"\n', 'outbox = "outbox/jnks"\nencoding = "utf-8"\n'
                                         'gaiji = "degenerate"\n', 1), encoding="utf-8")
    today = datetime.datetime.now(JST).date()
    layout = get_layout("jnks-payments")
    data = b"".join(generate_file(layout, 300, seed=9, today=today, lg_code="131041", encoding="utf-8",
                                  mj_rate=0.05))
    converted: list[bytes] = []
    expected = validate_bytes(data, layout, ValidationOptions(today=today, encoding="utf-8", gaiji="degenerate",
                                                              lg_code="131041"), sink=converted.append)
    assert expected.valid and expected.degenerated > 0
    daemon = run_daemon(files)
    try:
        drop(files, "std-001.dat", data)
        upload = sim.root / "upload"
        delivered = poll_until(lambda: (list(upload.glob("*.dat")) if upload.exists() else None) or None, 30,
                               "the file at the peer", lambda: daemon.stderr()[-2000:])
        assert delivered[0].read_bytes() == b"".join(converted), "CP932 with the 縮退 targets"
        done = poll_until(lambda: [t for t in transfers(files) if t["flow"] == "jnks-payments"] or None, 30, "ingested")
        code, body = daemon.get("/metrics")
        assert (f'kei_gateway_degenerated_characters_total{{flow="jnks-payments"}} {float(expected.degenerated)}'
                in body.decode())
        shown = subprocess.run([sys.executable, "-m", "kei_gateway", "-c", str(files.config), "transfers", "show",
                                str(done[0]["id"]), "--degenerations", "--json"],
                               capture_output=True, text=True, timeout=60, check=True)
        listing = json.loads(shown.stdout)["degenerations"]
        assert [(e["record"], e["key"], e["from"], e["to"]) for e in listing["entries"]] == [
            tuple(d) for d in expected.degenerations]
        sources = {d.source for d in expected.degenerations}
        assert not any(source in daemon.stderr() for source in sources), "no 縮退 character in the daemon's log"
    finally:
        assert daemon.stop() == 0
        daemon.notify.close()
