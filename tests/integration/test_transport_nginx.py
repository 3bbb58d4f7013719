"""The peer transport against a real nginx WebDAV server with mutual TLS (SPEC §3).

How the client runs: Twisted's global reactor runs in a background thread for
the session (``tests/integration/reactor_thread.py``; ``pytest-twisted`` is not
installed and trial's TestCase does not drive a real reactor under pytest), and
each test calls ``reactor_thread.run(lambda: client.put(...), timeout=...)``,
which returns the Deferred's result or raises its exception in the test, bounded
in time. nginx is started per test by the ``nginx_dav`` fixture
(``tests/integration/nginx.py``) with a throwaway PKI made here.
"""

from __future__ import annotations

import hashlib
import ipaddress
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from kei_gateway.adapters.transport import (
    BodySourceError,
    HttpError,
    TransientError,
    OutboundDenied,
    PeerIdentityError,
    PeerTLS,
    RemoteConflict,
    WebDavClient,
    content_digest,
    spki_pin,
)
from kei_gateway.runtime.blocking import ThreadPoolBlocking
from kei_gateway.sim import pki
from tests.integration.conftest import poll_until
from tests.integration.nginx import NginxDav, NginxTLS, nginx_dav  # noqa: F401 (fixture)
from tests.integration.reactor_thread import ReactorThread

pytestmark = [pytest.mark.integration, pytest.mark.timeout(60)]

NAME = "131041_jnks-payments_20250401093000_42.dat"
CALL_TIMEOUT = 30.0


@dataclass(frozen=True)
class Pki:
    directory: Path
    peer_ca: Path           # what the gateway trusts for this peer
    gateway_ca: Path        # what nginx trusts for clients
    server: NginxTLS        # nginx's identity, from peer_ca, valid for 127.0.0.1
    gateway_cert: Path
    gateway_key: Path
    rogue_server: NginxTLS  # a server certificate from an unknown CA
    misnamed_server: NginxTLS  # from peer_ca but for another host name
    rogue_client_cert: Path
    rogue_client_key: Path
    server_pin: str


def _write(directory: Path, stem: str, issued: pki.Issued, ca: pki.Issued) -> tuple[Path, Path]:
    cert, key = directory / f"{stem}.crt", directory / f"{stem}.key"
    cert.write_bytes(issued.certificate_pem() + ca.certificate_pem())
    pki.write_secret(str(key), issued.key_pem())
    return cert, key


@pytest.fixture(scope="module")
def throwaway_pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    directory = tmp_path_factory.mktemp("pki")
    peer_ca, gateway_ca, rogue_ca = pki.make_ca("peer CA"), pki.make_ca("city CA"), pki.make_ca("rogue CA")
    for name, ca in (("peer-ca.pem", peer_ca), ("gateway-ca.pem", gateway_ca)):
        (directory / name).write_bytes(ca.certificate_pem())
    server = pki.issue(peer_ca, "peer", hosts=("127.0.0.1", "localhost"), client=False)
    server_cert, server_key = _write(directory, "server", server, peer_ca)
    gateway_cert, gateway_key = _write(directory, "gateway", pki.issue(gateway_ca, "gateway", server=False), gateway_ca)
    rogue_cert, rogue_key = _write(directory, "rogue-server", pki.issue(rogue_ca, "rogue", client=False), rogue_ca)
    misnamed_cert, misnamed_key = _write(
        directory, "misnamed", pki.issue(peer_ca, "other", hosts=("peer.example.lg.jp",), client=False), peer_ca)
    rogue_client_cert, rogue_client_key = _write(directory, "rogue-client",
                                                 pki.issue(rogue_ca, "rogue client", server=False), rogue_ca)
    client_ca = directory / "gateway-ca.pem"
    return Pki(
        directory=directory, peer_ca=directory / "peer-ca.pem", gateway_ca=client_ca,
        server=NginxTLS(server_cert, server_key, client_ca), gateway_cert=gateway_cert, gateway_key=gateway_key,
        rogue_server=NginxTLS(rogue_cert, rogue_key, client_ca),
        misnamed_server=NginxTLS(misnamed_cert, misnamed_key, client_ca),
        rogue_client_cert=rogue_client_cert, rogue_client_key=rogue_client_key,
        server_pin=spki_pin(server.certificate),
    )


@pytest.fixture
def make_client(reactor_thread: ReactorThread, throwaway_pki: Pki) -> Iterator[Callable[..., WebDavClient]]:
    """Build WebDavClients for an nginx (in the reactor thread); closed after the test."""
    clients: list[WebDavClient] = []

    def make(server: NginxDav, allow: tuple[str, ...] = ("127.0.0.0/8",), pins: tuple[str, ...] = (),
             certificate: Path | None = None, key: Path | None = None, ca: Path | None = None,
             transfer_timeout: float = 20.0, idle_timeout: float = 60.0, min_version: str = "1.2") -> WebDavClient:
        def tls(host: str) -> PeerTLS:
            return PeerTLS("jnks", host, str(ca or throwaway_pki.peer_ca),
                           str(certificate or throwaway_pki.gateway_cert), str(key or throwaway_pki.gateway_key),
                           min_version, pins)

        def build() -> WebDavClient:
            reactor = reactor_thread.reactor
            return WebDavClient(
                reactor, "jnks", [server.url("upload/"), server.url("results/")],
                [ipaddress.ip_network(a) for a in allow], tls, ThreadPoolBlocking(reactor, reactor.getThreadPool()),
                connect_timeout=5.0, transfer_timeout=transfer_timeout, idle_timeout=idle_timeout)

        client = reactor_thread.run(build)
        clients.append(client)
        return client

    yield make
    for client in clients:
        reactor_thread.run(client.close, timeout=10)


def chunks_of(data: bytes, size: int = 65536) -> Callable[[], Iterator[bytes]]:
    def source() -> Iterator[bytes]:
        for offset in range(0, len(data), size):
            yield data[offset:offset + size]
    return source


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def put(reactor_thread: ReactorThread, client: WebDavClient, server: NginxDav, data: bytes,
        name: str = NAME, source: Callable[[], Any] | None = None, digest: str | None = None) -> Any:
    return reactor_thread.run(lambda: client.put(server.url("upload/"), name, source or chunks_of(data), len(data),
                                                 digest or sha256(data)), timeout=CALL_TIMEOUT)


def test_when_put_then_the_file_appears_under_its_final_name_and_no_part_is_left(
        reactor_thread: ReactorThread, nginx_dav: Callable[[NginxTLS], NginxDav], make_client: Any,
        throwaway_pki: Pki) -> None:
    server = nginx_dav(throwaway_pki.server)
    client = make_client(server)
    data = os.urandom(3 * 1024 * 1024 + 17)
    result = put(reactor_thread, client, server, data)
    assert result.already_present is False
    assert result.url == server.url("upload/" + NAME)
    assert server.files("upload") == {NAME: data}
    # nginx writes a request's log line when the request finishes, which can be just after the client
    # has its response: wait (bounded) for the MOVE's line.
    log = poll_until(lambda: server.requests() if any('"MOVE ' in line for line in server.requests()) else None,
                     10, "the MOVE in nginx's access log", lambda: str(server.requests()))
    digest = content_digest(sha256(data))
    assert any(f'"PUT /upload/{NAME}.part HTTP/1.1" 201' in line and f'digest="{digest}"' in line for line in log), log
    assert any(f'"MOVE /upload/{NAME}.part HTTP/1.1" 20' in line and 'overwrite="F"' in line
               and f'destination="{server.url("upload/" + NAME)}"' in line for line in log), log


def test_when_the_move_is_repeated_onto_the_same_content_then_the_412_rule_counts_it_done(
        reactor_thread: ReactorThread, nginx_dav: Callable[[NginxTLS], NginxDav], make_client: Any,
        throwaway_pki: Pki) -> None:
    server = nginx_dav(throwaway_pki.server)
    client = make_client(server)
    data = b"record\r\n" * 1000
    put(reactor_thread, client, server, data)
    again = put(reactor_thread, client, server, data)
    assert again.already_present is True
    assert server.files("upload") == {NAME: data}
    assert poll_until(lambda: any(f'"MOVE /upload/{NAME}.part HTTP/1.1" 412' in line for line in server.requests()),
                      10, "nginx's 412 to MOVE with Overwrite: F onto an existing file (access log)",
                      lambda: str(server.requests()))


def test_when_the_final_name_holds_other_content_then_remote_conflict_and_the_file_is_untouched(
        reactor_thread: ReactorThread, nginx_dav: Callable[[NginxTLS], NginxDav], make_client: Any,
        throwaway_pki: Pki) -> None:
    server = nginx_dav(throwaway_pki.server)
    (server.root / "upload" / NAME).write_bytes(b"someone else's file")
    client = make_client(server)
    data = b"ours\r\n" * 10
    with pytest.raises(RemoteConflict) as caught:
        put(reactor_thread, client, server, data)
    assert caught.value.kind == "conflict"
    assert caught.value.remote_sha256 == sha256(b"someone else's file")
    assert server.files("upload") == {NAME: b"someone else's file"}


def test_when_propfind_then_the_files_are_listed_with_their_sizes_without_directories(
        reactor_thread: ReactorThread, nginx_dav: Callable[[NginxTLS], NginxDav], make_client: Any,
        throwaway_pki: Pki) -> None:
    server = nginx_dav(throwaway_pki.server)
    results = server.root / "results"
    (results / "a.dat").write_bytes(b"x" * 100)
    (results / "b.dat").write_bytes(b"")
    (results / "sub").mkdir()
    client = make_client(server)
    entries = reactor_thread.run(lambda: client.propfind(server.url("results/")), timeout=CALL_TIMEOUT)
    assert [(e.name, e.size) for e in entries] == [("a.dat", 100), ("b.dat", 0)]
    assert all(e.last_modified is not None for e in entries)


def test_when_get_then_the_body_streams_in_chunks_and_is_hashed(
        reactor_thread: ReactorThread, nginx_dav: Callable[[NginxTLS], NginxDav], make_client: Any,
        throwaway_pki: Pki) -> None:
    server = nginx_dav(throwaway_pki.server)
    data = os.urandom(4 * 1024 * 1024)
    (server.root / "results" / "r.dat").write_bytes(data)
    client = make_client(server)
    received: list[bytes] = []
    size, digest = reactor_thread.run(lambda: client.get(server.url("results/r.dat"), received.append),
                                      timeout=CALL_TIMEOUT)
    assert (size, digest) == (len(data), sha256(data))
    assert b"".join(received) == data
    assert len(received) > 1 and max(len(c) for c in received) <= 1024 * 1024

    slow: list[bytes] = []

    def slow_sink(chunk: bytes) -> Any:  # a sink that is busy for a reactor turn: the download pauses
        from twisted.internet import task
        slow.append(chunk)
        return task.deferLater(reactor_thread.reactor, 0.001, lambda: None)

    assert reactor_thread.run(lambda: client.get(server.url("results/r.dat"), slow_sink),
                              timeout=CALL_TIMEOUT) == (len(data), sha256(data))
    assert b"".join(slow) == data


def test_when_delete_then_the_file_is_gone_and_a_second_delete_reports_it_absent(
        reactor_thread: ReactorThread, nginx_dav: Callable[[NginxTLS], NginxDav], make_client: Any,
        throwaway_pki: Pki) -> None:
    server = nginx_dav(throwaway_pki.server)
    (server.root / "results" / "r.dat").write_bytes(b"data")
    client = make_client(server)
    assert reactor_thread.run(lambda: client.delete(server.url("results/r.dat")), timeout=CALL_TIMEOUT) is True
    assert not (server.root / "results" / "r.dat").exists()
    assert reactor_thread.run(lambda: client.delete(server.url("results/r.dat")), timeout=CALL_TIMEOUT) is False


def test_when_get_of_a_missing_file_then_http_error_404(
        reactor_thread: ReactorThread, nginx_dav: Callable[[NginxTLS], NginxDav], make_client: Any,
        throwaway_pki: Pki) -> None:
    server = nginx_dav(throwaway_pki.server)
    client = make_client(server)
    with pytest.raises(HttpError) as caught:
        reactor_thread.run(lambda: client.get(server.url("results/none.dat"), lambda c: None), timeout=CALL_TIMEOUT)
    assert (caught.value.status, caught.value.kind, caught.value.retryable) == (404, "rejected", False)


def test_when_the_client_certificate_is_from_another_ca_then_nginx_rejects_and_stores_nothing(
        reactor_thread: ReactorThread, nginx_dav: Callable[[NginxTLS], NginxDav], make_client: Any,
        throwaway_pki: Pki) -> None:
    server = nginx_dav(throwaway_pki.server)
    client = make_client(server, certificate=throwaway_pki.rogue_client_cert, key=throwaway_pki.rogue_client_key)
    with pytest.raises(HttpError) as caught:
        put(reactor_thread, client, server, b"data")
    assert caught.value.status == 400  # nginx's answer to an unverifiable client certificate
    assert server.files("upload") == {}


def test_when_the_server_certificate_is_from_an_unknown_ca_then_identity_error_ca_and_nothing_is_sent(
        reactor_thread: ReactorThread, nginx_dav: Callable[[NginxTLS], NginxDav], make_client: Any,
        throwaway_pki: Pki) -> None:
    server = nginx_dav(throwaway_pki.rogue_server)
    client = make_client(server)
    with pytest.raises(PeerIdentityError) as caught:
        put(reactor_thread, client, server, b"data")
    assert (caught.value.kind, caught.value.alert, caught.value.retryable) == ("ca", True, False)
    assert server.files("upload") == {}
    assert server.requests() == []


def test_when_the_server_certificate_names_another_host_then_identity_error_hostname(
        reactor_thread: ReactorThread, nginx_dav: Callable[[NginxTLS], NginxDav], make_client: Any,
        throwaway_pki: Pki) -> None:
    server = nginx_dav(throwaway_pki.misnamed_server)
    client = make_client(server)
    with pytest.raises(PeerIdentityError) as caught:
        reactor_thread.run(lambda: client.propfind(server.url("upload/")), timeout=CALL_TIMEOUT)
    assert caught.value.kind == "hostname"
    assert server.requests() == []


def test_when_the_pin_does_not_match_then_identity_error_pin_and_when_it_does_the_upload_works(
        reactor_thread: ReactorThread, nginx_dav: Callable[[NginxTLS], NginxDav], make_client: Any,
        throwaway_pki: Pki) -> None:
    server = nginx_dav(throwaway_pki.server)
    wrong = make_client(server, pins=("sha256/" + "A" * 43 + "=",))
    with pytest.raises(PeerIdentityError) as caught:
        put(reactor_thread, wrong, server, b"data")
    assert caught.value.kind == "pin"
    assert server.requests() == []
    right = make_client(server, pins=("sha256/" + "A" * 43 + "=", throwaway_pki.server_pin))
    assert put(reactor_thread, right, server, b"data").already_present is False


def test_when_the_peer_address_is_outside_allow_then_outbound_denied_and_nginx_sees_nothing(
        reactor_thread: ReactorThread, nginx_dav: Callable[[NginxTLS], NginxDav], make_client: Any,
        throwaway_pki: Pki) -> None:
    server = nginx_dav(throwaway_pki.server)
    client = make_client(server, allow=("10.0.0.0/8",))
    with pytest.raises(OutboundDenied) as caught:
        put(reactor_thread, client, server, b"data")
    assert (caught.value.kind, caught.value.reason) == ("denied", "address")
    assert server.requests() == []


def test_when_the_body_iterator_fails_midway_then_nothing_appears_under_the_final_name(
        reactor_thread: ReactorThread, nginx_dav: Callable[[NginxTLS], NginxDav], make_client: Any,
        throwaway_pki: Pki) -> None:
    server = nginx_dav(throwaway_pki.server)
    client = make_client(server)
    data = os.urandom(2 * 1024 * 1024)

    class TagMismatch(Exception):
        pass

    def corrupt() -> Iterator[bytes]:
        for offset in range(0, len(data) - 65536, 65536):
            yield data[offset:offset + 65536]
        raise TagMismatch("GCM tag of the last segment")

    with pytest.raises(BodySourceError) as caught:
        put(reactor_thread, client, server, data, source=corrupt)
    assert isinstance(caught.value.cause, TagMismatch)
    assert caught.value.kind == "source"
    assert server.files("upload") == {}
    assert not any('"MOVE' in line for line in server.requests())


def test_when_the_body_does_not_match_its_sha256_then_the_put_is_aborted(
        reactor_thread: ReactorThread, nginx_dav: Callable[[NginxTLS], NginxDav], make_client: Any,
        throwaway_pki: Pki) -> None:
    server = nginx_dav(throwaway_pki.server)
    client = make_client(server)
    with pytest.raises(BodySourceError):
        put(reactor_thread, client, server, b"data" * 1000, digest="0" * 64)
    assert server.files("upload") == {}


def test_when_the_peer_answers_503_or_429_then_retry_after_is_surfaced(
        reactor_thread: ReactorThread, nginx_dav: Callable[[NginxTLS], NginxDav], make_client: Any,
        throwaway_pki: Pki) -> None:
    server = nginx_dav(throwaway_pki.server)
    client = make_client(server)
    with pytest.raises(HttpError) as busy:
        reactor_thread.run(lambda: client.propfind(server.url("busy/")), timeout=CALL_TIMEOUT)
    assert (busy.value.status, busy.value.kind, busy.value.retry_after, busy.value.retryable) == (
        503, "unavailable", 120.0, True)
    with pytest.raises(HttpError) as throttled:
        reactor_thread.run(lambda: client.get(server.url("throttled/x.dat"), lambda chunk: None),
                           timeout=CALL_TIMEOUT)
    assert (throttled.value.status, throttled.value.kind) == (429, "throttled")
    assert throttled.value.retry_after is not None and throttled.value.retry_after > 365 * 86400


def test_when_the_peer_goes_silent_then_the_idle_timeout_aborts_with_a_transient_error(
        reactor_thread: ReactorThread, nginx_dav: Callable[[NginxTLS], NginxDav], make_client: Any,
        throwaway_pki: Pki) -> None:
    server = nginx_dav(throwaway_pki.server)
    client = make_client(server, idle_timeout=1.0)
    with pytest.raises(TransientError) as caught:
        reactor_thread.run(lambda: client.get(server.url("stall/x.dat"), lambda chunk: None), timeout=CALL_TIMEOUT)
    assert (caught.value.kind, caught.value.retryable) == ("idle_timeout", True)


def test_when_the_whole_transfer_takes_too_long_then_transfer_timeout(
        reactor_thread: ReactorThread, nginx_dav: Callable[[NginxTLS], NginxDav], make_client: Any,
        throwaway_pki: Pki) -> None:
    server = nginx_dav(throwaway_pki.server)
    client = make_client(server, transfer_timeout=1.0, idle_timeout=30.0)
    with pytest.raises(TransientError) as caught:
        reactor_thread.run(lambda: client.get(server.url("stall/x.dat"), lambda chunk: None), timeout=CALL_TIMEOUT)
    assert caught.value.kind == "transfer_timeout"


def test_when_the_server_offers_only_non_ecdhe_or_non_aead_suites_then_the_handshake_fails(
        reactor_thread: ReactorThread, nginx_dav: Callable[[NginxTLS], NginxDav], make_client: Any,
        throwaway_pki: Pki) -> None:
    import dataclasses

    server = nginx_dav(dataclasses.replace(throwaway_pki.server, protocols="TLSv1.2", ciphers="ECDHE-ECDSA-AES128-SHA"))
    client = make_client(server)
    with pytest.raises(PeerIdentityError) as caught:
        reactor_thread.run(lambda: client.propfind(server.url("upload/")), timeout=CALL_TIMEOUT)
    assert (caught.value.kind, caught.value.alert) == ("handshake", False)
    assert server.requests() == []


def test_when_min_version_is_1_3_then_a_tls_1_2_only_peer_is_refused_and_a_1_3_peer_works(
        reactor_thread: ReactorThread, nginx_dav: Callable[[NginxTLS], NginxDav], make_client: Any,
        throwaway_pki: Pki) -> None:
    import dataclasses

    old = nginx_dav(dataclasses.replace(throwaway_pki.server, protocols="TLSv1.2"))
    strict = make_client(old, min_version="1.3")
    with pytest.raises(PeerIdentityError) as caught:
        reactor_thread.run(lambda: strict.propfind(old.url("upload/")), timeout=CALL_TIMEOUT)
    assert caught.value.kind == "handshake"
    current = nginx_dav(throwaway_pki.server)
    assert put(reactor_thread, make_client(current, min_version="1.3"), current, b"data").already_present is False
