"""The simulators' WebDAV subset, driven through a real HTTP channel on a StringTransport."""

from __future__ import annotations

import base64
import hashlib
import os
import xml.etree.ElementTree as ET

from twisted.internet import task
from twisted.internet.address import IPv4Address
from twisted.internet.testing import StringTransport
from twisted.trial.unittest import SynchronousTestCase

from kei_gateway.sim.dav import (
    DavPath, DavSite, DavStore, PathRefused, dav_site, etag_of, parse_content_digest, resolve_path,
)
from kei_gateway.sim.faults import Faults, FaultState, parse_fault
from tests.unit.helpers import temporary_directory

COLLECTIONS = ("upload", "results")
DAV = "{DAV:}"


class Response:
    def __init__(self, raw: bytes) -> None:
        head, _, self.body = raw.partition(b"\r\n\r\n")
        lines = head.decode("latin-1").split("\r\n")
        self.code = int(lines[0].split()[1]) if lines[0] else 0
        self.headers = {k.lower(): v.strip() for k, _, v in (line.partition(":") for line in lines[1:])}


def request(method: str, path: str, body: bytes = b"", **headers: str) -> bytes:
    lines = [f"{method} {path} HTTP/1.1", "Host: 127.0.0.1", f"Content-Length: {len(body)}"]
    lines += [f"{k.replace('_', '-')}: {v}" for k, v in headers.items()]
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + body


class DavCase(SynchronousTestCase):
    def setUp(self) -> None:
        self.root = temporary_directory(self)
        self.store = DavStore(self.root, COLLECTIONS)
        self.clock = task.Clock()
        self.state = FaultState(Faults())
        self.stored: list[DavPath] = []
        self.site: DavSite = dav_site(self.store, self.clock, self.state, "test", self.stored.append)

    def connect(self) -> tuple[object, StringTransport]:
        channel = self.site.buildProtocol(IPv4Address("TCP", "127.0.0.1", 40000))
        transport = StringTransport()
        channel.makeConnection(transport)  # type: ignore[union-attr]
        return channel, transport

    def send(self, raw: bytes) -> Response:
        channel, transport = self.connect()
        channel.dataReceived(raw)  # type: ignore[attr-defined]
        return Response(transport.value())

    def put(self, path: str, body: bytes, **headers: str) -> Response:
        return self.send(request("PUT", path, body, **headers))


def digest_header(body: bytes) -> str:
    return "sha-256=:" + base64.b64encode(hashlib.sha256(body).digest()).decode() + ":"


class PathTests(SynchronousTestCase):
    def test_when_paths_leave_the_collections_then_they_are_refused(self) -> None:
        for raw in (b"/upload/../etc/passwd", b"/upload/%2e%2e/x", b"/upload/..%2fx", b"/upload/.hidden",
                    b"/etc/passwd", b"/", b"/upload/a/b", b"upload/x", b"/upload/%E3%81%82",
                    b"https://127.0.0.1/results/../upload/x", b"/upload/" + b"a" * 256):
            with self.subTest(raw=raw):
                self.assertRaises(PathRefused, resolve_path, raw, COLLECTIONS)

    def test_when_paths_are_served_ones_then_they_resolve(self) -> None:
        self.assertEqual(resolve_path(b"/upload/", COLLECTIONS), DavPath("upload"))
        self.assertEqual(resolve_path(b"/upload", COLLECTIONS), DavPath("upload"))
        self.assertEqual(resolve_path(b"/upload/x.dat.part", COLLECTIONS), DavPath("upload", "x.dat.part"))
        self.assertEqual(resolve_path(b"https://127.0.0.1:8443/upload/x.dat?q", COLLECTIONS),
                         DavPath("upload", "x.dat"))

    def test_when_content_digest_is_parsed_then_sha256_is_found_and_malformed_values_fail(self) -> None:
        digest = hashlib.sha256(b"x").digest()
        header = digest_header(b"x").encode()
        self.assertEqual(parse_content_digest(header), digest)
        self.assertEqual(parse_content_digest(b"sha-512=:AAAA:, " + header), digest)
        self.assertIsNone(parse_content_digest(None))
        self.assertIsNone(parse_content_digest(b"sha-512=:AAAA:"))
        for bad in (b"sha-256=abc", b"sha-256=:!!:", b"sha-256=:AAAA:"):
            self.assertRaises(ValueError, parse_content_digest, bad)


class PutMoveTests(DavCase):
    def test_when_a_file_is_put_then_it_is_stored_whole_and_announced(self) -> None:
        body = b"0123456789" * 20_000  # above Twisted's in-memory threshold: a temporary file
        response = self.put("/upload/x.dat.part", body, Content_Digest=digest_header(body))
        self.assertEqual(response.code, 201)
        self.assertEqual(self.store.path_of(DavPath("upload", "x.dat.part")).read_bytes(), body)
        self.assertEqual(self.stored, [DavPath("upload", "x.dat.part")])
        self.assertEqual(self.put("/upload/x.dat.part", b"again").code, 204)
        self.assertEqual(os.listdir(os.path.join(self.root, ".incoming")), [])

    def test_when_the_content_digest_does_not_match_then_400_and_nothing_is_stored(self) -> None:
        response = self.put("/upload/x.dat.part", b"body", Content_Digest=digest_header(b"other"))
        self.assertEqual(response.code, 400)
        self.assertFalse(self.store.exists(DavPath("upload", "x.dat.part")))
        self.assertEqual(os.listdir(os.path.join(self.root, ".incoming")), [])
        self.assertEqual(self.stored, [])

    def test_when_a_path_is_outside_the_collections_then_403(self) -> None:
        self.assertEqual(self.put("/upload/..%2f..%2fescape", b"x").code, 403)
        self.assertEqual(self.put("/secret/x", b"x").code, 403)
        self.assertEqual(self.send(request("MOVE", "/upload/x", Destination="/../x")).code, 403)
        self.assertEqual(sorted(os.listdir(self.root)), [".incoming", "results", "upload"])

    def test_when_a_part_is_moved_then_201_and_a_second_move_to_the_same_name_is_412(self) -> None:
        self.put("/upload/x.dat.part", b"first")
        moved = self.send(request("MOVE", "/upload/x.dat.part", Destination="https://127.0.0.1:8443/upload/x.dat",
                                  Overwrite="F"))
        self.assertEqual(moved.code, 201)
        self.assertEqual(self.stored[-1], DavPath("upload", "x.dat"))
        self.assertFalse(self.store.exists(DavPath("upload", "x.dat.part")))
        self.put("/upload/x.dat.part", b"second")
        again = self.send(request("MOVE", "/upload/x.dat.part", Destination="/upload/x.dat", Overwrite="F"))
        self.assertEqual(again.code, 412)
        self.assertEqual(self.store.path_of(DavPath("upload", "x.dat")).read_bytes(), b"first")
        self.assertTrue(self.store.exists(DavPath("upload", "x.dat.part")))
        self.assertEqual(self.send(request("MOVE", "/upload/x.dat.part", Destination="/upload/x.dat")).code, 204)
        self.assertEqual(self.send(request("MOVE", "/upload/gone", Destination="/upload/y")).code, 404)
        self.assertEqual(self.send(request("MOVE", "/upload/x.dat")).code, 400)

    def test_when_deleting_then_204_then_404(self) -> None:
        self.put("/results/r.result", b"r")
        self.assertEqual(self.send(request("DELETE", "/results/r.result")).code, 204)
        self.assertEqual(self.send(request("DELETE", "/results/r.result")).code, 404)
        self.assertEqual(self.send(request("DELETE", "/results/")).code, 403)

    def test_when_options_or_an_unknown_method_then_dav_headers_or_405(self) -> None:
        options = self.send(request("OPTIONS", "/upload/"))
        self.assertEqual((options.code, options.headers["dav"]), (200, "1"))
        self.assertIn("PROPFIND", options.headers["allow"])
        self.assertEqual(self.send(request("LOCK", "/upload/x")).code, 405)

    def test_when_head_then_length_etag_and_last_modified(self) -> None:
        self.put("/results/r.result", b"12345")
        head = self.send(request("HEAD", "/results/r.result"))
        st = os.stat(self.store.path_of(DavPath("results", "r.result")))
        self.assertEqual(head.code, 200)
        self.assertEqual(head.headers["content-length"], "5")
        self.assertEqual(head.headers["etag"], etag_of(5, st.st_mtime))
        self.assertIn("GMT", head.headers["last-modified"])
        self.assertEqual(self.send(request("HEAD", "/results/missing")).code, 404)


class PropfindTests(DavCase):
    def test_when_propfind_depth_1_then_207_lists_the_collection_and_each_file_with_its_properties(self) -> None:
        self.put("/results/b.result", b"bb")
        self.put("/results/a.result", b"a")
        (self.store.root / "results" / ".tmp-ignored").write_bytes(b"")
        response = self.send(request("PROPFIND", "/results/", Depth="1"))
        self.assertEqual(response.code, 207)
        self.assertTrue(response.headers["content-type"].startswith("text/xml"))
        tree = ET.fromstring(response.body)
        self.assertEqual(tree.tag, DAV + "multistatus")
        found = {}
        for item in tree.findall(DAV + "response"):
            prop = item.find(f"{DAV}propstat/{DAV}prop")
            assert prop is not None
            found[item.findtext(DAV + "href")] = prop
            self.assertEqual(item.findtext(f"{DAV}propstat/{DAV}status"), "HTTP/1.1 200 OK")
        self.assertEqual(list(found), ["/results/", "/results/a.result", "/results/b.result"])
        self.assertIsNotNone(found["/results/"].find(f"{DAV}resourcetype/{DAV}collection"))
        b = found["/results/b.result"]
        self.assertEqual(b.findtext(DAV + "displayname"), "b.result")
        self.assertEqual(b.findtext(DAV + "getcontentlength"), "2")
        self.assertRegex(b.findtext(DAV + "getetag") or "", r'^"[0-9a-f]+-2"$')
        self.assertTrue((b.findtext(DAV + "getlastmodified") or "").endswith("GMT"))
        self.assertIsNone(b.find(f"{DAV}resourcetype/{DAV}collection"))

    def test_when_propfind_depth_0_or_a_file_then_one_response_and_missing_is_404(self) -> None:
        self.put("/results/a.result", b"a")
        for path, depth in (("/results/", "0"), ("/results/a.result", "1")):
            tree = ET.fromstring(self.send(request("PROPFIND", path, Depth=depth)).body)
            self.assertEqual(len(tree.findall(DAV + "response")), 1)
        self.assertEqual(self.send(request("PROPFIND", "/results/none", Depth="1")).code, 404)
        self.assertEqual(self.send(request("PROPFIND", "/results/", Depth="2")).code, 400)


class FaultTests(DavCase):
    def test_when_503_is_armed_then_the_first_puts_get_retry_after_and_nothing_is_stored(self) -> None:
        self.state.faults = Faults(fail_put_503_times=2, retry_after_seconds=7)
        for _ in range(2):
            response = self.put("/upload/x.part", b"x")
            self.assertEqual((response.code, response.headers["retry-after"]), (503, "7"))
        self.assertFalse(self.store.exists(DavPath("upload", "x.part")))
        self.assertEqual(self.put("/upload/x.part", b"x").code, 201)
        self.assertEqual(self.state.fired["fail_put_503_times"], 2)

    def test_when_reset_mid_body_is_armed_then_the_connection_is_aborted_and_nothing_is_stored(self) -> None:
        self.state.faults.reset_mid_body_times = 1
        channel, transport = self.connect()
        raw = request("PUT", "/upload/x.part", b"a" * 1000)
        channel.dataReceived(raw[:-1000])  # type: ignore[attr-defined]
        channel.dataReceived(b"a" * 600)  # type: ignore[attr-defined]
        self.assertTrue(transport.disconnecting)
        self.assertEqual(transport.value(), b"")
        self.assertFalse(self.store.exists(DavPath("upload", "x.part")))
        self.assertEqual(self.state.fired["reset_mid_body_times"], 1)
        self.assertEqual(self.put("/upload/x.part", b"a" * 1000).code, 201)

    def test_when_a_delay_is_set_then_the_answer_waits_for_the_clock(self) -> None:
        self.state.faults.delay_seconds = 5.0
        channel, transport = self.connect()
        channel.dataReceived(request("PUT", "/upload/x.part", b"x"))  # type: ignore[attr-defined]
        self.clock.advance(4.9)
        self.assertEqual(transport.value(), b"")
        self.clock.advance(0.1)
        self.assertEqual(Response(transport.value()).code, 201)
        self.assertEqual(self.state.fired["delay_seconds"], 1)

    def test_when_a_move_delay_is_set_then_only_the_move_waits_for_the_clock(self) -> None:
        self.state.faults.delay_move_seconds = 5.0
        self.assertEqual(self.put("/upload/x.dat.part", b"x").code, 201, "a PUT is answered at once")
        channel, transport = self.connect()
        channel.dataReceived(request("MOVE", "/upload/x.dat.part", Destination="/upload/x.dat",  # type: ignore[attr-defined]
                                     Overwrite="F"))
        self.clock.advance(4.9)
        self.assertEqual(transport.value(), b"")
        self.assertFalse(self.store.exists(DavPath("upload", "x.dat")), "not moved before its answer")
        self.clock.advance(0.1)
        self.assertEqual(Response(transport.value()).code, 201)
        self.assertEqual(self.state.fired["delay_move_seconds"], 1)

    def test_when_replay_412_is_armed_then_the_move_is_stored_but_answered_412(self) -> None:
        self.state.faults.replay_412 = 1
        self.put("/upload/x.dat.part", b"x")
        response = self.send(request("MOVE", "/upload/x.dat.part", Destination="/upload/x.dat", Overwrite="F"))
        self.assertEqual(response.code, 412)
        self.assertTrue(self.store.exists(DavPath("upload", "x.dat")))
        self.assertEqual(self.stored[-1], DavPath("upload", "x.dat"))
        self.assertEqual(self.state.fired["replay_412"], 1)

    def test_when_faults_are_parsed_from_the_command_line_then_types_and_names_are_checked(self) -> None:
        faults = parse_fault("fail_put_503_times=3", Faults())
        faults = parse_fault("wrong-server-cert", faults)
        faults = parse_fault("delay_seconds=0.5", faults)
        faults = parse_fault("replay_412", faults)
        self.assertEqual(faults, Faults(fail_put_503_times=3, wrong_server_cert=True, delay_seconds=0.5,
                                        replay_412=1))
        for bad in ("nope=1", "fail_put_503_times=x", "delay_seconds=-1", "wrong_server_cert=maybe"):
            self.assertRaises(ValueError, parse_fault, bad, Faults())
