"""``kei-gateway sim mpn`` as a real process: slips in over mutual TLS (curl), results pulled and pushed.

The push receiver is a tiny mutual-TLS HTTPS server in the test (Python's ``ssl``
+ ``http.server`` on 127.0.0.1), standing in for the gateway's push listener.
"""

from __future__ import annotations

import datetime
import json
import signal
import ssl
import subprocess
import sys
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from kei_gateway.sim import pki
from kei_gateway.sim.harness import free_port
from tests.integration.conftest import poll_until
from tests.integration.test_sim_jnks import Pki, Sim, content_digest, start_sim

pytestmark = pytest.mark.integration

RESULT_TIMEOUT = 30.0
RESULT_BYTES = 258


@dataclass(frozen=True)
class MpnPki:
    keys: Pki
    """ca.pem, the simulator's server cert, the gateway's client cert (for curl), a stranger."""
    push_cert: Path
    push_key: Path
    """The simulator's client certificate for pushing."""
    receiver_cert: Path
    receiver_key: Path
    """The push receiver's (the gateway's) server certificate."""


@pytest.fixture(scope="module")
def mpn_pki(tmp_path_factory: pytest.TempPathFactory) -> MpnPki:
    base = tmp_path_factory.mktemp("mpn-pki")
    ca = pki.make_ca("mpn sim test CA")
    issued = {
        "server": pki.issue(ca, "mpn sim test server", client=False),
        "client": pki.issue(ca, "mpn sim test gateway", server=False),
        "stranger": pki.issue(pki.make_ca("other CA"), "stranger", server=False),
        "push": pki.issue(ca, "mpn sim push client", server=False),
        "receiver": pki.issue(ca, "mpn test push receiver", client=False),
    }
    (base / "ca.pem").write_bytes(ca.certificate_pem())
    for role, cert in issued.items():
        (base / f"{role}.crt").write_bytes(cert.certificate_pem() + ca.certificate_pem())
        pki.write_secret(str(base / f"{role}.key"), cert.key_pem())
    keys = Pki(base / "ca.pem", base / "server.crt", base / "server.key", base / "client.crt", base / "client.key",
               base / "stranger.crt", base / "stranger.key")
    return MpnPki(keys, base / "push.crt", base / "push.key", base / "receiver.crt", base / "receiver.key")


def start_mpn(base: Path, keys: MpnPki, *extra: str) -> Sim:
    return start_sim(base, keys.keys, "--report", str(base / "report.json"), *extra, kind="mpn")


@pytest.fixture
def stop_later() -> Iterator[list[Sim]]:
    started: list[Sim] = []
    yield started
    for sim in started:
        assert sim.stop() == 0, sim.log()


def slips_file(records: int, seed: int = 11) -> bytes:
    from kei_gateway.layouts import generate_file, get_layout

    today = datetime.datetime.now(datetime.timezone(datetime.timedelta(hours=9))).date()
    return b"".join(generate_file(get_layout("mpn-slips"), records, seed=seed, today=today))


def upload(sim: Sim, name: str, data: bytes) -> None:
    source = sim.work / f"{name}.local"
    source.write_bytes(data)
    put = sim.as_gateway("-T", str(source), "-H", content_digest(data), f"{sim.url}/slips/{name}.part")
    move = sim.as_gateway("-X", "MOVE", "-H", f"Destination: {sim.url}/slips/{name}", "-H", "Overwrite: F",
                          f"{sim.url}/slips/{name}.part")
    assert (put.code, move.code) == (201, 201), (put, move)


def report_when_done(sim: Sim, files: int) -> dict[str, Any]:
    """The simulator's report once it has delivered *files* result files and nothing is pending."""
    path = sim.work / "report.json"

    def done() -> dict[str, Any] | None:
        if not path.exists():
            return None
        report: dict[str, Any] = json.loads(path.read_text(encoding="utf-8"))
        return report if report["pending"] == 0 and len(report["produced"]) >= files else None

    return poll_until(done, RESULT_TIMEOUT, f"{files} result files delivered", sim.log)


def validates(path: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "kei_gateway", "validate", str(path), "--layout", "mpn-results"],
                          capture_output=True, text=True, timeout=120)


def identities(data: bytes) -> set[tuple[str, ...]]:
    records = [data[i:i + RESULT_BYTES] for i in range(0, len(data), RESULT_BYTES)]
    return {(r[0:2].decode(), r[2:22].decode(), r[22:28].decode(), r[28:32].decode(), r[203:205].decode(),
             r[188:202].decode(), r[202:203].decode()) for r in records}


def test_when_slips_are_uploaded_then_速報_and_確報_can_be_pulled_and_validate(tmp_path: Path, mpn_pki: MpnPki,
                                                                          stop_later: list[Sim]) -> None:
    sim = start_mpn(tmp_path, mpn_pki, "--batch-size", "7", "--confirm-after", "1", "--cancel-share", "0.2",
                    "--seed", "3")
    stop_later.append(sim)
    upload(sim, "slips-0001.dat", slips_file(20))
    report = report_when_done(sim, 3 + 3)  # 3 速報 files; a 確報 file each, 取消 files only where drawn
    listing = sim.as_gateway("-X", "PROPFIND", "-H", "Depth: 1", f"{sim.url}/results/")
    assert listing.code == 207
    names = [p["name"] for p in report["produced"]]
    assert {"slips-0001.dat.sokuho-001", "slips-0001.dat.kakuho-001"} <= set(names)
    assert names.index("slips-0001.dat.sokuho-001") < names.index("slips-0001.dat.kakuho-001")
    seen: set[tuple[str, ...]] = set()
    for produced in report["produced"]:
        assert produced["delivery"] == "pull"
        assert f"/results/{produced['name']}".encode() in listing.body
        got = sim.as_gateway(f"{sim.url}/results/{produced['name']}")
        assert got.code == 200 and len(got.body) == produced["records"] * RESULT_BYTES
        local = tmp_path / produced["name"]
        local.write_bytes(got.body)
        checked = validates(local)
        assert checked.returncode == 0, checked.stdout + checked.stderr
        seen |= identities(got.body)
        assert sim.as_gateway("-X", "DELETE", f"{sim.url}/results/{produced['name']}").code == 204
    assert seen == {tuple(i) for i in report["truth"]["results"]}
    assert len(report["truth"]["confirmed"]) + len(report["truth"]["cancelled"]) == 20
    log = sim.log()
    assert "slips-0001.dat accepted: 20 slips" in log
    assert "ダミー" not in log and "試験" not in log  # no record contents in the log


def test_when_a_slips_file_is_broken_then_no_results_appear(tmp_path: Path, mpn_pki: MpnPki,
                                                           stop_later: list[Sim]) -> None:
    sim = start_mpn(tmp_path, mpn_pki)
    stop_later.append(sim)
    data = slips_file(3)
    upload(sim, "broken.dat", data[:158] + b"X" + data[159:])
    path = sim.work / "report.json"
    report = poll_until(lambda: json.loads(path.read_text()) if path.exists() else None, RESULT_TIMEOUT,
                        "the report", sim.log)
    assert report["slips"] == [{"name": "broken.dat", "sha256": report["slips"][0]["sha256"], "records": 3,
                                "rejected": 1, "results": 0}]
    assert report["produced"] == []
    assert not list((sim.root / "results").iterdir())


@dataclass
class Receiver:
    """A mutual-TLS HTTPS server standing in for the gateway's push listener."""

    port: int
    received: list[tuple[str, bytes, str]] = field(default_factory=list)
    """(path, body, client certificate CN) per PUT."""
    fail_first: int = 0
    statuses: list[int] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)


@pytest.fixture
def receiver(mpn_pki: MpnPki) -> Iterator[Receiver]:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.load_cert_chain(str(mpn_pki.receiver_cert), str(mpn_pki.receiver_key))
    context.load_verify_locations(str(mpn_pki.keys.ca))
    context.verify_mode = ssl.CERT_REQUIRED
    state = Receiver(port=0)

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def do_PUT(self) -> None:
            body = self.rfile.read(int(self.headers.get("content-length", "0")))
            peer = self.connection.getpeercert()  # type: ignore[attr-defined]
            cn = dict(item[0] for item in peer["subject"]).get("commonName", "") if peer else ""
            with state.lock:
                failing = len(state.statuses) < state.fail_first
                again = any(p == self.path and b == body for p, b, _ in state.received)
                code = 503 if failing else 204 if again else 201
                state.statuses.append(code)
                if not failing:
                    state.received.append((self.path, body, cn))
            self.send_response(code)
            if failing:
                self.send_header("Retry-After", "1")
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, format: str, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.socket = context.wrap_socket(server.socket, server_side=True)
    state.port = server.server_address[1]
    thread = threading.Thread(target=server.serve_forever, name="push-receiver", daemon=True)
    thread.start()
    try:
        yield state
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=10)


def push_options(keys: MpnPki, port: int) -> tuple[str, ...]:
    return ("--push-url", f"https://127.0.0.1:{port}/push/mpn-results", "--push-cert", str(keys.push_cert),
            "--push-key", str(keys.push_key), "--push-ca", str(keys.keys.ca), "--push-first-delay", "0.2")


def test_when_速報_are_pushed_then_the_receiver_gets_them_with_the_sims_certificate_and_a_repeat_gets_204(
        tmp_path: Path, mpn_pki: MpnPki, receiver: Receiver, stop_later: list[Sim]) -> None:
    receiver.fail_first = 1  # one 503 with Retry-After first
    sim = start_mpn(tmp_path, mpn_pki, *push_options(mpn_pki, receiver.port), "--push-share", "1",
                    "--repeat-push-share", "1", "--missing-share", "1", "--batch-size", "10")
    stop_later.append(sim)
    upload(sim, "slips-push.dat", slips_file(15))
    report = report_when_done(sim, 2)
    assert [p["delivery"] for p in report["produced"]] == ["push", "push"]
    assert receiver.statuses == [503, 201, 204, 201, 204]
    assert report["push_statuses"] == {"503": 1, "201": 2, "204": 2}
    paths = [p for p, _, _ in receiver.received]
    assert paths == (["/push/mpn-results/slips-push.dat.sokuho-001"] * 2
                     + ["/push/mpn-results/slips-push.dat.sokuho-002"] * 2)
    assert {cn for _, _, cn in receiver.received} == {"mpn sim push client"}
    for number, (path, body, _) in enumerate(receiver.received[::2]):
        local = tmp_path / f"pushed-{number}"
        local.write_bytes(body)
        checked = validates(local)
        assert checked.returncode == 0, checked.stdout + checked.stderr
    assert not list((sim.root / "results").iterdir())  # pushed only: nothing left for pull
    assert len(report["truth"]["unconfirmed"]) == 15


def test_when_the_push_target_is_down_then_the_files_are_left_in_results(tmp_path: Path, mpn_pki: MpnPki,
                                                                         stop_later: list[Sim]) -> None:
    sim = start_mpn(tmp_path, mpn_pki, *push_options(mpn_pki, free_port()), "--push-share", "1",
                    "--push-attempts", "2", "--missing-share", "1")
    stop_later.append(sim)
    upload(sim, "slips-down.dat", slips_file(4))
    report = report_when_done(sim, 1)
    assert [p["delivery"] for p in report["produced"]] == ["push-failed"]
    assert [p["delivered"] for p in report["pushes"]] == [False]
    assert len(report["pushes"][0]["statuses"]) == 2
    left = sim.root / "results" / "slips-down.dat.sokuho-001"
    assert left.exists() and len(left.read_bytes()) == 4 * RESULT_BYTES
    assert "left in /results/ for pull" in sim.log()


def test_when_sigterm_arrives_then_the_simulator_exits_0(tmp_path: Path, mpn_pki: MpnPki) -> None:
    sim = start_mpn(tmp_path, mpn_pki, "--confirm-after", "3600")
    upload(sim, "slips-stop.dat", slips_file(2))
    # the 確報 wait an hour: stopping must not wait for them
    poll_until(lambda: (sim.root / "results" / "slips-stop.dat.sokuho-001").exists() or None, RESULT_TIMEOUT,
               "the 速報 file", sim.log)
    sim.process.send_signal(signal.SIGTERM)
    assert sim.process.wait(timeout=30) == 0, sim.log()
    assert "mpn simulator stopping" in sim.log()
