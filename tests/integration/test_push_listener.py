"""The push listener (SPEC §5) on loopback with real TLS, driven by curl.

A throwaway PKI: the gateway's CA (server certificate), and separate CAs for the MPN
peer, the JNKS peer and a stranger. The listener runs in the in-process reactor
thread (``tests/integration/reactor_thread.py``) with a real SQLite ledger, the
file store and a real thread pool; its ``push_allow`` is ``127.0.0.1/32`` only, so
curl bound to ``127.0.0.2`` is a source outside every allow-list.
"""

from __future__ import annotations

import hashlib
import ipaddress
import secrets
import shutil
import socket
import ssl
import subprocess
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import pytest
from prometheus_client import CollectorRegistry
from twisted.logger import ILogObserver, globalLogPublisher
from twisted.python.threadpool import ThreadPool
from zope.interface import provider

from kei_gateway.adapters.ledger import TransferLedger, TransferRow, create_ledger_engine, upgrade
from kei_gateway.adapters.store.blobs import FileBlobStore
from kei_gateway.adapters.store.keys import StoreKeyring
from kei_gateway.adapters.transport.tls import spki_pin
from kei_gateway.config import Config, config_from_string
from kei_gateway.core.jst import today_in_jst
from kei_gateway.flows.inbound.push_listener import PushListener, make_push_listener
from kei_gateway.layouts import generate_file, get_layout
from kei_gateway.runtime.blocking import ThreadPoolBlocking
from kei_gateway.runtime.metrics import GatewayMetrics
from kei_gateway.sim import pki
from kei_gateway.sim.harness import demo_config_text, free_port
from tests.integration.conftest import poll_until
from tests.integration.reactor_thread import ReactorThread
from tests.unit.helpers import push_peers_config

pytestmark = [pytest.mark.integration,
              pytest.mark.skipif(shutil.which("curl") is None, reason="curl is not installed")]

LAYOUT = get_layout("mpn-results")
CURL_TIMEOUT = 60
FLOOD_LATENCY_FACTOR = 10
"""A legitimate push during a flood takes at most this many times its usual time (plus a second)."""


def results_file(records: int, seed: int = 1) -> bytes:
    return b"".join(generate_file(LAYOUT, records, seed=seed, today=today_in_jst()))


@dataclass
class PushSetup:
    base: Path
    port: int
    listener: PushListener
    registry: CollectorRegistry
    ledger: TransferLedger
    store: FileBlobStore
    events: list[dict[str, Any]]
    committed: list[tuple[TransferRow, float]]
    holder: list[Config]
    gateway_ca: Path

    def curl(self, name: str, body: bytes | None, *, identity: str | None = "mpn",
             interface: str | None = None, method: str | None = None) -> tuple[str, int, bytes]:
        """``(http code, curl exit code, response body)`` of one request."""
        upload = self.base / f"upload-{secrets.token_hex(4)}"
        out = self.base / f"out-{secrets.token_hex(4)}"
        command = ["curl", "-sS", "--max-time", "30", "-o", str(out), "-w", "%{http_code}",
                   "--cacert", str(self.gateway_ca)]
        if identity is not None:
            command += ["--cert", str(self.base / f"{identity}.crt"), "--key", str(self.base / f"{identity}.key")]
        if interface is not None:
            command += ["--interface", interface]
        if body is not None:
            upload.write_bytes(body)
            command += ["-T", str(upload)]
        if method is not None:
            command += ["-X", method]
        command.append(f"https://127.0.0.1:{self.port}/push/{name}")
        result = subprocess.run(command, capture_output=True, timeout=CURL_TIMEOUT)
        response = out.read_bytes() if out.exists() else b""
        return result.stdout.decode().strip(), result.returncode, response

    def denied(self, reason: str) -> float:
        return self.registry.get_sample_value("kei_gateway_denied_connections_total",
                                              {"listener": "push", "reason": reason}) or 0.0

    def refusals(self, event: str = "push.refused") -> list[dict[str, Any]]:
        return [e for e in list(self.events) if e.get("kei_event") == event]


def write_pem(path: Path, issued: pki.Issued) -> None:
    path.with_suffix(".crt").write_bytes(issued.certificate_pem())
    pki.write_secret(str(path.with_suffix(".key")), issued.key_pem())


@pytest.fixture
def push(reactor_thread: ReactorThread, tmp_path: Path) -> Iterator[PushSetup]:
    gateway_ca = pki.make_ca("push test gateway CA")
    (tmp_path / "gateway-ca.pem").write_bytes(gateway_ca.certificate_pem())
    credentials = tmp_path / "credentials"
    credentials.mkdir()
    write_pem(credentials / "gateway", pki.issue(gateway_ca, "gateway", client=False))
    for peer in ("mpn", "jnks", "stranger"):
        ca = pki.make_ca(f"push test {peer} CA")
        (tmp_path / f"{peer}-ca.pem").write_bytes(ca.certificate_pem())
        write_pem(tmp_path / peer, pki.issue(ca, f"{peer} client", server=False))
    port = free_port()
    peers = push_peers_config(str(tmp_path)) + f"""
[listeners.push]
address = "127.0.0.1:{port}"
"""
    holder = [config_from_string(demo_config_text(str(tmp_path), 9464, extra=peers))]
    engine = create_ledger_engine(f"sqlite:///{tmp_path}/ledger.sqlite3")
    upgrade(engine)
    ledger = TransferLedger(engine)
    store = FileBlobStore(str(tmp_path / "store"), StoreKeyring(secrets.token_bytes(32)))
    pool = ThreadPool(minthreads=1, maxthreads=4, name="push-test-blocking")
    pool.start()
    registry = CollectorRegistry()
    metrics = GatewayMetrics(registry, process=False)
    captured: list[dict[str, Any]] = []
    committed: list[tuple[TransferRow, float]] = []

    @provider(ILogObserver)
    def observe(event: dict[str, Any]) -> None:
        if "kei_event" in event:
            captured.append(dict(event))

    globalLogPublisher.addObserver(observe)
    reactor = reactor_thread.reactor

    class RecordingRelay:
        accept_bytes = 0  # never inside the accepting commit: every committed push is handed over

        def relay_on_accept(self, records: int, received_at: float | None = None, key: Any = None) -> None:
            return None

        def relay(self, row: TransferRow, received_at: float | None = None, fence: Any = None) -> None:
            assert received_at is not None
            committed.append((row, received_at))

    listener = make_push_listener(lambda: holder[0], reactor, ledger=ledger, store=store,
                                  blocking=ThreadPoolBlocking(reactor, pool), metrics=metrics, environ={},
                                  relay=RecordingRelay())
    address = holder[0].listeners.push.address  # type: ignore[union-attr]
    listening = reactor_thread.run(lambda: reactor.listenTCP(address.port, listener.factory,
                                                             interface=address.host))
    try:
        yield PushSetup(tmp_path, port, listener, registry, ledger, store, captured, committed,
                        holder, tmp_path / "gateway-ca.pem")
    finally:
        reactor_thread.run(listening.stopListening)
        reactor_thread.run(listener.receiver.bursts.flush)  # no burst timer outlives the test
        globalLogPublisher.removeObserver(observe)
        pool.stop()
        engine.dispose()


def test_when_the_listed_peer_pushes_then_201_then_identical_204_then_other_content_409(push: PushSetup) -> None:
    body = results_file(4)
    code, rc, _ = push.curl("mpn-results/R20261121-01.dat", body)
    assert (code, rc) == ("201", 0)
    [row] = push.ledger.inbound_for("mpn-results", "R20261121-01.dat")
    assert (row.state, row.peer, row.size, row.record_count) == ("VALIDATED", "mpn", len(body), 4)
    assert row.sha256 == hashlib.sha256(body).hexdigest()
    assert row.blob_id is not None and b"".join(push.store.read(row.blob_id)) == body
    assert [r.id for r, _ in push.committed] == [row.id]
    blobs = push.store.list_ids()
    assert push.curl("mpn-results/R20261121-01.dat", body)[:2] == ("204", 0)
    code, _, response = push.curl("mpn-results/R20261121-01.dat", results_file(4, seed=2))
    assert code == "409" and b"new name" in response
    assert push.store.list_ids() == blobs and len(push.committed) == 1
    assert [e["kei_event"] for e in push.events if e["kei_event"].startswith("push.")] == [
        "push.accepted", "push.repeated", "push.conflict"]
    # Nothing of the file is in plaintext in the store directory.
    for blob_id in push.store.list_ids():
        assert body[:100] not in (push.base / "store" / blob_id).read_bytes()


def test_when_a_large_file_is_pushed_then_it_streams_through_and_is_stored_whole(push: PushSetup) -> None:
    body = results_file(20000)  # about 5 MB: curl sends Expect: 100-continue; many chunks, back-pressure
    code, rc, _ = push.curl("mpn-results/BIG.dat", body)
    assert (code, rc) == ("201", 0)
    [row] = push.ledger.inbound_for("mpn-results", "BIG.dat")
    assert row.record_count == 20000 and row.sha256 == hashlib.sha256(body).hexdigest()


def test_when_an_invalid_file_is_pushed_then_422_with_errors_and_it_is_quarantined(push: PushSetup) -> None:
    body = bytearray(results_file(3))
    body[2:3] = b"A"  # 納付書番号 with a letter
    code, _, response = push.curl("mpn-results/BAD.dat", bytes(body))
    assert code == "422"
    assert "納付書番号 (slip_no)".encode() in response and b"[value '****" in response
    [row] = push.ledger.inbound_for("mpn-results", "BAD.dat")
    assert row.state == "QUARANTINED"
    assert (push.base / "spool" / "quarantine" / "mpn-results" / "BAD.dat.errors.txt").exists()
    assert push.committed == []


def test_when_refused_connections_come_then_each_is_refused_counted_and_logged_and_the_peer_still_pushes(
        push: PushSetup) -> None:
    body = results_file(2)
    # No client certificate: the handshake fails.
    code, rc, _ = push.curl("mpn-results/A.dat", body, identity=None)
    assert code == "000" and rc != 0
    poll_until(lambda: push.denied("no_certificate") == 1, 10, "the no_certificate refusal to be counted")
    # A certificate from a CA no peer has.
    code, rc, _ = push.curl("mpn-results/A.dat", body, identity="stranger")
    assert code == "000" and rc != 0
    poll_until(lambda: push.denied("certificate") == 1, 10, "the certificate refusal to be counted")
    # The JNKS peer's valid certificate, to the MPN flow.
    code, rc, _ = push.curl("mpn-results/A.dat", body, identity="jnks")
    assert (code, rc) == ("403", 0)
    assert push.denied("flow") == 1
    # Bad path and bad method.
    assert push.curl("mpn-results/..%2Fetc", body)[0] == "404"
    assert push.curl("mpn-results/A.dat", None, method="GET")[0] == "405"
    assert (push.denied("path"), push.denied("method")) == (1, 1)
    # From an address outside every push_allow: closed before the handshake.
    code, rc, _ = push.curl("mpn-results/A.dat", body, interface="127.0.0.2")
    assert code == "000" and rc != 0
    poll_until(lambda: push.denied("address") == 1, 10, "the address refusal to be counted")
    address_events = [e for e in push.events if e["kei_event"] == "listener.denied"]
    assert [(e["listener"], e["source"], e["reason"]) for e in address_events] == [("push", "127.0.0.2", "address")]
    reasons = [(e["reason"], str(e["status"])) for e in push.refusals()]
    assert reasons == [("no_certificate", "handshake"), ("certificate", "handshake"), ("flow", "403"),
                       ("path", "404"), ("method", "405")]
    assert all(e["source"] == "127.0.0.1" for e in push.refusals())
    assert push.ledger.inbound_for("mpn-results", "A.dat") == []
    # The listed peer keeps working throughout.
    assert push.curl("mpn-results/A.dat", body)[:2] == ("201", 0)


def test_when_a_reload_sets_pins_then_new_connections_follow_them(push: PushSetup) -> None:
    from cryptography import x509

    mpn_pin = spki_pin(x509.load_pem_x509_certificate((push.base / "mpn.crt").read_bytes()))
    other_pin = spki_pin(x509.load_pem_x509_certificate((push.base / "jnks.crt").read_bytes()))
    config = push.holder[0]

    def with_pins(*pins: str) -> Config:
        peers = dict(config.peers)
        peers["mpn"] = replace(peers["mpn"], pins=pins)
        return replace(config, peers=peers)

    push.holder[0] = with_pins(other_pin)
    push.listener.reconfigure(push.holder[0])
    code, rc, _ = push.curl("mpn-results/P.dat", results_file(1))
    assert code == "000" and rc != 0
    poll_until(lambda: push.denied("pin") == 1, 10, "the pin refusal to be counted")
    push.holder[0] = with_pins(mpn_pin)
    push.listener.reconfigure(push.holder[0])
    assert push.curl("mpn-results/P.dat", results_file(1))[:2] == ("201", 0)
    # A reload that takes the peer's address away closes the door before the handshake.
    peers = dict(config.peers)
    peers["mpn"] = replace(peers["mpn"], push_allow=())
    peers["jnks"] = replace(peers["jnks"], push_allow=())
    push.holder[0] = replace(config, peers=peers)
    push.listener.reconfigure(push.holder[0])
    assert push.curl("mpn-results/Q.dat", results_file(1))[0] == "000"
    poll_until(lambda: push.denied("address") == 1, 10, "the address refusal to be counted")


def hostile_connection(push: PushSetup, name: str, body_length: int, first: bytes = b"") -> ssl.SSLSocket | None:
    """A TLS connection from 127.0.0.1 with the listed MPN peer's certificate that sends a PUT's headers (and
    *first*), or None when the gateway closed it before or during the handshake."""
    context = ssl.create_default_context(cafile=str(push.gateway_ca))
    context.load_cert_chain(str(push.base / "mpn.crt"), str(push.base / "mpn.key"))
    raw = socket.create_connection(("127.0.0.1", push.port), timeout=10, source_address=("127.0.0.1", 0))
    try:
        wrapped = context.wrap_socket(raw, server_hostname="127.0.0.1")
        wrapped.sendall(f"PUT /push/mpn-results/{name} HTTP/1.1\r\nHost: gateway\r\n"
                        f"Content-Length: {body_length}\r\n\r\n".encode() + first)
        return wrapped
    except (OSError, ssl.SSLError):
        raw.close()
        return None


def test_when_a_listed_peer_trickles_and_floods_header_only_connections_then_another_push_gets_201_and_all_is_counted(
        push: PushSetup) -> None:
    """Two connections trickling a body byte every 2 s and 50 sending headers only, all from 127.0.0.1 with the
    MPN peer's valid certificate; meanwhile the peer pushes from 127.0.0.3 (also in its push_allow)."""
    from kei_gateway.flows.inbound.push import BODY_RATE_WINDOW, DEFAULT_LIMITS

    config = push.holder[0]
    peers = dict(config.peers)
    peers["mpn"] = replace(peers["mpn"], push_allow=(ipaddress.ip_network("127.0.0.1/32"),
                                                     ipaddress.ip_network("127.0.0.3/32")))
    push.holder[0] = replace(config, peers=peers)
    body = results_file(3)

    def timed_push(name: str, seed: int) -> float:
        data = results_file(3, seed=seed)
        started = time.monotonic()
        code, rc, _ = push.curl(f"mpn-results/{name}", data, interface="127.0.0.3")
        assert (code, rc) == ("201", 0), name
        return time.monotonic() - started

    usual = sorted(timed_push(f"BEFORE{n}.dat", 10 + n) for n in range(3))[1]  # a median, curl's start included

    stop = threading.Event()
    tricklers = [hostile_connection(push, f"T{n}.dat", len(body), body[:1]) for n in range(2)]
    assert all(tricklers), "the two tricklers are accepted"

    def trickle() -> None:
        sent = 1
        while not stop.wait(2.0) and sent < len(body):
            for connection in tricklers:
                try:
                    connection.send(body[sent:sent + 1])  # type: ignore[union-attr]
                except OSError:
                    pass
            sent += 1

    trickling = threading.Thread(target=trickle, daemon=True)
    trickling.start()
    header_only: list[ssl.SSLSocket | None] = []
    try:
        header_only += [hostile_connection(push, f"H{n}.dat", len(body)) for n in range(50)]
        per_source = DEFAULT_LIMITS.max_connections_per_source
        # Each header-only connection is refused once: at the connection (over the per-source limit, with the
        # tricklers' two open) or, once connected, busy (the tricklers hold this address's half of the slots).
        poll_until(lambda: push.denied("connections") + push.denied("busy") == 50, 10,
                   "every header-only connection to be refused and counted")
        assert push.denied("connections") >= 50 - per_source and push.denied("busy") >= 1
        elapsed = [timed_push(f"LEGIT{n}.dat", 20 + n) for n in range(3)]
        print(f"usual {usual:.2f} s; during the flood {', '.join(f'{e:.2f}' for e in elapsed)} s")
        # Within its usual time: a bounded multiple, far below the rate window a push waiting for a trickler's
        # slot would take (the tricklers are only closed BODY_RATE_WINDOW s after their headers), or a 503.
        assert max(elapsed) < min(FLOOD_LATENCY_FACTOR * usual + 1.0, BODY_RATE_WINDOW), \
            f"the pushes took {', '.join(f'{e:.2f}' for e in elapsed)} s (usual {usual:.2f} s)"
        poll_until(lambda: push.denied("slow_body") == 2, 3 * BODY_RATE_WINDOW,
                   "the two tricklers to be closed for their body rate")
    finally:
        stop.set()
        trickling.join()
        for connection in [*tricklers, *header_only]:
            if connection is not None:
                connection.close()
    # Nothing of the hostile requests was committed.
    assert sorted(row.local_name for row in push.ledger.list_transfers()) == [
        *(f"BEFORE{n}.dat" for n in range(3)), *(f"LEGIT{n}.dat" for n in range(3))]
    # Logged once per burst (source, reason), not once per connection.
    logged = [(e["source"], e["reason"]) for e in push.refusals()]
    assert sorted(set(logged)) == sorted(logged), logged
    assert {("127.0.0.1", "connections"), ("127.0.0.1", "busy"), ("127.0.0.1", "slow_body")} <= set(logged)
