"""``kei-gateway sim jnks`` as a real process, driven by curl over mutual TLS on loopback."""

from __future__ import annotations

import base64
import datetime
import hashlib
import shutil
import signal
import socket
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from kei_gateway.sim import pki
from kei_gateway.sim.harness import free_port
from tests.integration.conftest import poll_until

pytestmark = pytest.mark.integration

START_TIMEOUT = 30.0
RESULT_TIMEOUT = 15.0
CURL_TIMEOUT = 30


@dataclass(frozen=True)
class Pki:
    ca: Path
    server_cert: Path
    server_key: Path
    client_cert: Path
    client_key: Path
    stranger_cert: Path
    stranger_key: Path


@pytest.fixture(scope="module")
def throwaway_pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    base = tmp_path_factory.mktemp("pki")
    ca = pki.make_ca("sim test CA")
    other_ca = pki.make_ca("some other CA")
    server = pki.issue(ca, "sim test server", client=False)
    client = pki.issue(ca, "sim test gateway", server=False)
    stranger = pki.issue(other_ca, "stranger", server=False)
    paths = Pki(*(base / n for n in ("ca.pem", "server.crt", "server.key", "client.crt", "client.key",
                                     "stranger.crt", "stranger.key")))
    paths.ca.write_bytes(ca.certificate_pem())
    paths.server_cert.write_bytes(server.certificate_pem() + ca.certificate_pem())
    paths.client_cert.write_bytes(client.certificate_pem())
    paths.stranger_cert.write_bytes(stranger.certificate_pem())
    for path, issued in ((paths.server_key, server), (paths.client_key, client), (paths.stranger_key, stranger)):
        pki.write_secret(str(path), issued.key_pem())
    return paths


@dataclass
class Curled:
    code: int
    headers: dict[str, str]
    body: bytes
    returncode: int
    stderr: str


@dataclass
class Sim:
    process: subprocess.Popen[bytes]
    port: int
    root: Path
    log_path: Path
    keys: Pki
    work: Path

    @property
    def url(self) -> str:
        return f"https://127.0.0.1:{self.port}"

    def log(self) -> str:
        return self.log_path.read_text(encoding="utf-8", errors="replace")

    def curl(self, *args: str, cert: Path | None = None, key: Path | None = None) -> Curled:
        headers_path, body_path = self.work / "curl.headers", self.work / "curl.body"
        for p in (headers_path, body_path):
            p.unlink(missing_ok=True)
        command = ["curl", "-sS", "--max-time", str(CURL_TIMEOUT), "--cacert", str(self.keys.ca),
                   "-D", str(headers_path), "-o", str(body_path), "-w", "%{http_code}"]
        if cert is not None and key is not None:
            command += ["--cert", str(cert), "--key", str(key)]
        result = subprocess.run(command + list(args), capture_output=True, text=True, timeout=CURL_TIMEOUT + 10)
        headers: dict[str, str] = {}
        if headers_path.exists():
            for line in headers_path.read_text(encoding="latin-1").splitlines()[1:]:
                name, sep, value = line.partition(":")
                if sep:
                    headers[name.strip().lower()] = value.strip()
        return Curled(int(result.stdout or 0), headers, body_path.read_bytes() if body_path.exists() else b"",
                      result.returncode, result.stderr)

    def as_gateway(self, *args: str) -> Curled:
        return self.curl(*args, cert=self.keys.client_cert, key=self.keys.client_key)

    def stop(self) -> int:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
        return self.process.wait(timeout=30)


def _accepting(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1):
            return True
    except OSError:
        return False


def start_sim(base: Path, keys: Pki, *extra: str, kind: str = "jnks") -> Sim:
    """``kei-gateway sim <kind>`` (jnks or mpn) as a process on loopback; waits (bounded) until it accepts."""
    if shutil.which("curl") is None:
        pytest.skip("curl is not installed")
    base.mkdir(parents=True, exist_ok=True)
    port = free_port()
    log_path = base / "sim.log"
    with log_path.open("wb") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", "kei_gateway", "sim", kind, "--listen", f"127.0.0.1:{port}",
             "--root", str(base / "root"), "--cert", str(keys.server_cert), "--key", str(keys.server_key),
             "--client-ca", str(keys.ca), *extra],
            stdin=subprocess.DEVNULL, stdout=log, stderr=log)
    sim = Sim(process, port, base / "root", log_path, keys, base)

    def ready() -> bool:
        if process.poll() is not None:
            pytest.fail(f"kei-gateway sim {kind} exited with {process.returncode}:\n{sim.log()}")
        return _accepting(port)

    try:
        poll_until(ready, START_TIMEOUT, f"the {kind} simulator to accept on 127.0.0.1:{port}", sim.log)
    except BaseException:
        process.kill()
        process.wait(timeout=10)
        raise
    return sim


@pytest.fixture
def sim(tmp_path: Path, throwaway_pki: Pki) -> Iterator[Sim]:
    running = start_sim(tmp_path, throwaway_pki, "--reject-lines", "3")
    try:
        yield running
    finally:
        code = running.stop()
    assert code == 0, running.log()


def dummy_file(records: int) -> bytes:
    try:
        from kei_gateway.layouts import generate_file, get_layout
    except ImportError:  # pragma: no cover - the layout package is part of the project
        pytest.skip("kei_gateway.layouts is not available")
    today = datetime.datetime.now(datetime.timezone(datetime.timedelta(hours=9))).date()
    return b"".join(generate_file(get_layout("jnks-payments"), records, seed=3, today=today))


def content_digest(data: bytes) -> str:
    return "Content-Digest: sha-256=:" + base64.b64encode(hashlib.sha256(data).digest()).decode() + ":"


def upload(sim: Sim, name: str, data: bytes) -> tuple[Curled, Curled]:
    source = sim.work / f"{name}.local"
    source.write_bytes(data)
    put = sim.as_gateway("-T", str(source), "-H", content_digest(data), f"{sim.url}/upload/{name}.part")
    move = sim.as_gateway("-X", "MOVE", "-H", f"Destination: {sim.url}/upload/{name}", "-H", "Overwrite: F",
                          f"{sim.url}/upload/{name}.part")
    return put, move


def test_when_the_gateway_uploads_then_a_result_file_appears_and_can_be_fetched_and_deleted(sim: Sim) -> None:
    data = dummy_file(20)
    put, move = upload(sim, "x.dat", data)
    assert (put.code, move.code) == (201, 201), (put, move)

    def listed() -> bytes | None:
        found = sim.as_gateway("-X", "PROPFIND", "-H", "Depth: 1", f"{sim.url}/results/")
        return found.body if found.code == 207 and b"/results/x.dat.result" in found.body else None

    listing = poll_until(listed, RESULT_TIMEOUT, "/results/x.dat.result in PROPFIND", sim.log)
    assert b"<D:getcontentlength>2000</D:getcontentlength>" in listing
    got = sim.as_gateway(f"{sim.url}/results/x.dat.result")
    assert got.code == 200 and len(got.body) == 20 * 100
    records = [got.body[i:i + 100] for i in range(0, len(got.body), 100)]
    assert [r[:1] for r in records] == [b"0", b"0", b"9"] + [b"0"] * 17  # --reject-lines 3
    assert records[2][1:12] == b"0000003E900"
    assert all(r.endswith(b"\r\n") for r in records)
    assert records[0][32:98].decode("cp932") == "\u3000" * 33
    assert sim.as_gateway(f"{sim.url}/upload/x.dat").body == data  # kept, so a 412 can be compared
    assert sim.as_gateway("-X", "DELETE", f"{sim.url}/results/x.dat.result").code == 204
    assert sim.as_gateway(f"{sim.url}/results/x.dat.result").code == 404
    log = sim.log()
    assert "PUT /upload/x.dat.part 201" in log and hashlib.sha256(data).hexdigest() in log
    assert "DMY" not in log and "DUMMY" not in log  # no record contents in the log


def test_when_the_same_name_is_moved_again_then_412_and_the_first_file_stays(sim: Sim) -> None:
    data = dummy_file(2)
    assert [c.code for c in upload(sim, "y.dat", data)] == [201, 201]
    put, move = upload(sim, "y.dat", data + data[:70])
    assert (put.code, move.code) == (201, 412)
    assert (sim.root / "upload" / "y.dat").read_bytes() == data


def test_when_the_content_digest_is_wrong_then_400_and_nothing_is_stored(sim: Sim) -> None:
    source = sim.work / "z.local"
    source.write_bytes(b"not what the digest says\r\n")
    put = sim.as_gateway("-T", str(source), "-H", content_digest(b"other"), f"{sim.url}/upload/z.dat.part")
    assert put.code == 400
    listing = sim.as_gateway("-X", "PROPFIND", "-H", "Depth: 1", f"{sim.url}/upload/")
    assert listing.code == 207 and b"z.dat" not in listing.body
    assert not (sim.root / "upload" / "z.dat.part").exists()


def test_when_a_path_escapes_the_collections_then_403(sim: Sim) -> None:
    assert sim.as_gateway("--path-as-is", f"{sim.url}/upload/../../etc/passwd").code == 403
    assert sim.as_gateway(f"{sim.url}/upload/%2e%2e%2fx").code == 403


def test_when_a_client_has_no_certificate_or_one_from_another_ca_then_the_handshake_fails(sim: Sim) -> None:
    anonymous = sim.curl(f"{sim.url}/results/")
    stranger = sim.curl(f"{sim.url}/results/", cert=sim.keys.stranger_cert, key=sim.keys.stranger_key)
    for refused in (anonymous, stranger):
        assert refused.code == 0 and refused.returncode != 0, refused
    assert "GET /results/" not in sim.log()


def test_when_the_503_fault_is_set_then_puts_get_retry_after_until_it_is_spent(tmp_path: Path,
                                                                                throwaway_pki: Pki) -> None:
    sim = start_sim(tmp_path, throwaway_pki, "--fault", "fail_put_503_times=1", "--fault", "retry_after_seconds=9")
    try:
        first, _ = upload(sim, "w.dat", dummy_file(1))
        assert (first.code, first.headers.get("retry-after")) == (503, "9")
        second, move = upload(sim, "w.dat", dummy_file(1))
        assert (second.code, move.code) == (201, 201)
    finally:
        code = sim.stop()
    assert code == 0
    assert "fail_put_503_times" in sim.log()  # the stop line reports what fired


def test_when_the_wrong_certificate_fault_is_set_then_the_client_cannot_verify_the_server(
        tmp_path: Path, throwaway_pki: Pki) -> None:
    sim = start_sim(tmp_path, throwaway_pki, "--fault", "wrong_server_cert")
    try:
        refused = sim.as_gateway(f"{sim.url}/results/")
        assert refused.code == 0 and refused.returncode == 60, refused  # 60: peer certificate cannot be verified
    finally:
        assert sim.stop() == 0


def test_when_the_reset_fault_is_set_then_the_put_is_cut_mid_body_and_nothing_is_stored(
        tmp_path: Path, throwaway_pki: Pki) -> None:
    sim = start_sim(tmp_path, throwaway_pki, "--fault", "reset_mid_body_times=1")
    try:
        source = sim.work / "big.local"
        source.write_bytes(b"0" * 1_000_000)
        cut = sim.as_gateway("-T", str(source), f"{sim.url}/upload/big.dat.part")
        assert cut.code in (0, 100) and cut.returncode != 0, cut  # 100: curl saw "100 Continue" first
        assert not (sim.root / "upload" / "big.dat.part").exists()
        assert sim.as_gateway("-T", str(source), f"{sim.url}/upload/big.dat.part").code == 201
    finally:
        assert sim.stop() == 0
    assert "'reset_mid_body_times': 1" in sim.log()
