"""The outbox watcher: scans at start, on events and periodically; one scan at a time."""

from __future__ import annotations

import datetime
import os
import secrets
from collections.abc import Callable
from pathlib import Path
from typing import Any
from unittest import mock

from prometheus_client import CollectorRegistry
from twisted.internet import defer, task
from twisted.trial.unittest import SynchronousTestCase

from kei_gateway.adapters.store.blobs import FileBlobStore
from kei_gateway.adapters.store.keys import StoreKeyring
from kei_gateway.config import OutboundFlowSection
from kei_gateway.core.jst import today_in_jst
from kei_gateway.flows.outbound.outbox import OutboxWatcher
from kei_gateway.layouts import generate_file, get_layout
from kei_gateway.runtime.metrics import GatewayMetrics
from kei_gateway.testing import InMemoryLedger, SynchronousBlocking
from tests.unit.helpers import temporary_directory

START = datetime.datetime(2026, 11, 21, 9, 0, tzinfo=datetime.timezone.utc).timestamp()


class DeferredBlocking:
    """A blocking door whose work runs only when the test says so."""

    def __init__(self) -> None:
        self.waiting: list[tuple[defer.Deferred[Any], Callable[..., Any], tuple[Any, ...]]] = []

    def run(self, f: Callable[..., Any], *args: Any, **kwargs: Any) -> defer.Deferred[Any]:
        d: defer.Deferred[Any] = defer.Deferred()
        self.waiting.append((d, f, args))
        return d

    def finish_one(self) -> None:
        d, f, args = self.waiting.pop(0)
        defer.maybeDeferred(f, *args).chainDeferred(d)


class OutboxWatcherTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.base = Path(temporary_directory(self))
        self.outbox = self.base / "outbox" / "jnks"
        self.ledger = InMemoryLedger()
        self.clock = task.Clock()
        self.clock.advance(START)
        self.registry = CollectorRegistry()
        self.results: list[Any] = []

    def watcher(self, blocking: Any, ready: str = "rename", max_file_size: Callable[[], int] | None = None,
                registry: CollectorRegistry | None = None,
                **flow_settings: str) -> OutboxWatcher:
        settings = OutboundFlowSection(peer="jnks", outbox="outbox/jnks", ready=ready, **flow_settings)
        watcher = OutboxWatcher(
            flow="jnks-payments", settings=settings,
            outbox_dir=str(self.outbox), quarantine_dir=str(self.base / "quarantine" / "jnks-payments"),
            lg_code="131041", clock=self.clock, blocking=blocking, ledger=self.ledger,
            store=FileBlobStore(str(self.base / "store"), StoreKeyring(secrets.token_bytes(32))),
            metrics=GatewayMetrics(registry or self.registry, process=False), on_ingested=self.results.append,
            use_inotify=False, **({"max_file_size": max_file_size} if max_file_size is not None else {}))
        return watcher

    def put(self, name: str, records: int = 3) -> None:
        self.outbox.mkdir(parents=True, exist_ok=True)
        data = b"".join(generate_file(get_layout("jnks-payments"), records, seed=len(name),
                                      today=today_in_jst(START), lg_code="131041"))
        (self.outbox / name).write_bytes(data)

    def test_when_max_file_size_changes_then_the_next_scan_refuses_a_larger_file_unread(self) -> None:
        limit = [1 << 20]
        self.put("a.dat", records=3)
        self.put("b.dat", records=3)
        os.rename(self.outbox / "b.dat", self.outbox / "b.tmp")
        watcher = self.watcher(SynchronousBlocking(), max_file_size=lambda: limit[0])
        watcher.startService()
        self.assertEqual([r.outcome for r in self.results], ["queued"])
        limit[0] = 100  # a reload lowered it: the scan reads the live value
        os.rename(self.outbox / "b.tmp", self.outbox / "b.dat")
        self.successResultOf(watcher.scan_soon())
        self.assertEqual([(r.outcome, r.reason) for r in self.results[1:]], [("quarantined", "too-large")])
        self.assertEqual(self.registry.get_sample_value(
            "kei_gateway_transfers_total", {"flow": "jnks-payments", "outcome": "quarantined"}), 1)
        self.successResultOf(defer.maybeDeferred(watcher.stopService))

    def test_when_started_then_files_already_waiting_are_taken_and_counted(self) -> None:
        self.put("a.dat")
        watcher = self.watcher(SynchronousBlocking())
        watcher.startService()
        self.assertEqual([r.outcome for r in self.results], ["queued"])
        self.assertEqual(os.listdir(self.outbox), [])
        self.assertEqual(self.registry.get_sample_value(
            "kei_gateway_records_total", {"flow": "jnks-payments", "outcome": "accepted"}), 3)
        self.successResultOf(defer.maybeDeferred(watcher.stopService))

    def test_when_a_file_arrives_later_then_the_periodic_rescan_takes_it(self) -> None:
        watcher = self.watcher(SynchronousBlocking())
        watcher.startService()
        self.put("b.dat")
        self.assertEqual(self.results, [])
        self.clock.advance(30)
        self.assertEqual([r.name for r in self.results], ["b.dat"])
        watcher.stopService()

    def test_when_events_come_during_a_scan_then_exactly_one_more_scan_follows(self) -> None:
        blocking = DeferredBlocking()
        watcher = self.watcher(blocking)
        watcher.startService()
        self.assertEqual(len(blocking.waiting), 1)
        self.put("c.dat")
        watcher.scan_soon()
        watcher.scan_soon()
        self.assertEqual(len(blocking.waiting), 1, "no second scan while one is in flight")
        blocking.finish_one()
        self.assertEqual(len(blocking.waiting), 1, "one follow-up scan for the events that came meanwhile")
        blocking.finish_one()
        self.assertEqual([r.name for r in self.results], ["c.dat"])
        self.assertEqual(blocking.waiting, [])
        watcher.stopService()

    def test_when_an_invalid_file_and_a_link_arrive_then_both_are_quarantined_and_counted(self) -> None:
        self.outbox.mkdir(parents=True)
        (self.outbox / "bad.dat").write_bytes(b"not a record\r\n")
        os.symlink("/etc/hostname", self.outbox / "link.dat")
        watcher = self.watcher(SynchronousBlocking())
        watcher.startService()
        self.assertEqual(sorted((r.name, r.outcome) for r in self.results),
                         [("bad.dat", "quarantined"), ("link.dat", "quarantined")])
        self.assertEqual(self.registry.get_sample_value(
            "kei_gateway_transfers_total", {"flow": "jnks-payments", "outcome": "quarantined"}), 2)
        watcher.stopService()

    def test_when_a_directory_cannot_be_moved_and_a_file_cannot_be_read_then_the_valid_file_beside_them_is_taken(
            self) -> None:
        """As root the suite cannot meet a 0555 directory or a 0000 file as the daemon's user does, so the
        filesystem refuses through a patched rename/open, the way it refuses the unprivileged daemon."""
        self.outbox.mkdir(parents=True)
        (self.outbox / "adir").mkdir(mode=0o555)
        self.put("locked.dat")
        self.put("good.dat")
        real_rename, real_open = os.rename, os.open

        def rename(source: Any, target: Any) -> None:
            if str(source).endswith("adir"):
                raise PermissionError(13, "Permission denied", source)
            real_rename(source, target)

        def open_(path: Any, *args: Any) -> int:
            if str(path).endswith("locked.dat"):
                raise PermissionError(13, "Permission denied", path)
            return real_open(path, *args)

        with mock.patch("kei_gateway.adapters.spool.os.rename", rename), \
                mock.patch("kei_gateway.flows.outbound.ingest.os.open", open_):
            watcher = self.watcher(SynchronousBlocking())
            watcher.startService()
            self.assertEqual(sorted((r.name, r.outcome) for r in self.results),
                             [("adir", "skipped"), ("good.dat", "queued"), ("locked.dat", "skipped")])
            self.assertIn("remove it from the outbox", next(r.reason for r in self.results if r.name == "adir"))
            self.assertIn("umask", next(r.reason for r in self.results if r.name == "locked.dat"))
            self.clock.advance(30)
            self.assertEqual(len(self.results), 3, "an entry left in the outbox is reported once, not at every scan")
        self.assertEqual(sorted(os.listdir(self.outbox)), ["adir", "locked.dat"])
        self.clock.advance(30)
        self.assertEqual(sorted((r.name, r.outcome) for r in self.results[3:]),
                         [("adir", "quarantined"), ("locked.dat", "queued")],
                         "once the writer fixes them, they are taken at the next scan")
        watcher.stopService()

    def test_when_a_directory_holds_files_then_it_stays_in_the_outbox_reported_once_and_nothing_is_copied(
            self) -> None:
        """Its files are the writer's plaintext: quarantine/ keeps nothing unencrypted (SPEC §7, issue 11), and
        the gateway deletes nothing it has not read. Once emptied, the directory is quarantined like an empty one."""
        self.outbox.mkdir(parents=True)
        (self.outbox / "sub").mkdir()
        (self.outbox / "sub" / "inner.dat").write_bytes(b"plaintext\r\n")
        self.put("good.dat")
        watcher = self.watcher(SynchronousBlocking())
        watcher.startService()
        self.assertEqual(sorted((r.name, r.outcome) for r in self.results), [("good.dat", "queued"), ("sub", "skipped")])
        self.assertIn("move it out of the outbox", next(r.reason for r in self.results if r.name == "sub"))
        self.clock.advance(30)
        self.assertEqual(len(self.results), 2, "reported once, not at every scan")
        self.assertEqual((self.outbox / "sub" / "inner.dat").read_bytes(), b"plaintext\r\n")
        quarantined = list((self.base / "quarantine").rglob("*"))
        self.assertEqual([p for p in quarantined if p.name == "inner.dat"], [], "no plaintext copied to quarantine/")
        (self.outbox / "sub" / "inner.dat").unlink()
        self.clock.advance(30)
        self.assertEqual([(r.name, r.outcome) for r in self.results[2:]], [("sub", "quarantined")])
        watcher.stopService()

    def test_when_an_outbox_name_holds_a_newline_then_it_is_reported_escaped_on_one_line(self) -> None:
        self.outbox.mkdir(parents=True)
        (self.outbox / "a\nb.dat").write_bytes(b"A\r\n")
        watcher = self.watcher(SynchronousBlocking())
        watcher.startService()
        self.assertEqual([(r.name, r.outcome) for r in self.results], [("'a\\nb.dat'", "quarantined")])
        self.assertNotIn("\n", self.results[0].name)
        watcher.stopService()

    def test_when_ready_is_marker_then_a_file_waits_for_its_marker(self) -> None:
        watcher = self.watcher(SynchronousBlocking(), ready="marker")
        self.put("d.dat")
        watcher.startService()
        self.assertEqual(self.results, [])
        (self.outbox / "d.dat.end").write_bytes(b"")
        self.clock.advance(30)
        self.assertEqual([r.outcome for r in self.results], ["queued"])
        self.assertEqual(os.listdir(self.outbox), [])
        watcher.stopService()

    def test_when_a_standardised_systems_file_is_degenerated_then_each_replacement_is_counted_by_flow(self) -> None:
        self.outbox.mkdir(parents=True, exist_ok=True)
        data = b"".join(generate_file(get_layout("jnks-payments"), 100, seed=2, today=today_in_jst(START),
                                      lg_code="131041", encoding="utf-8", mj_rate=0.2))
        (self.outbox / "std.dat").write_bytes(data)
        watcher = self.watcher(SynchronousBlocking(), encoding="utf-8", gaiji="degenerate")
        watcher.startService()
        [result] = self.results
        self.assertEqual(result.outcome, "queued")
        self.assertGreater(result.degenerated, 0)
        self.assertEqual(self.registry.get_sample_value(
            "kei_gateway_degenerated_characters_total", {"flow": "jnks-payments"}), result.degenerated)
        watcher.stopService()

    # -- two nodes watch one shared outbox (SPEC §14): a scan runs under the outbox's lease, its commits fenced

    def node(self, name: str, blocking: Any, lease_blocking: Any = None) -> tuple[OutboxWatcher, Any]:
        from kei_gateway.runtime.leases import NodeLeases
        from kei_gateway.testing import InMemoryLeases

        store = InMemoryLeases(self.ledger.leases, name, 15.0)
        store.join(f"inc-{name}", datetime.datetime.fromtimestamp(self.clock.seconds(), datetime.timezone.utc),
                   name, 1)
        leases = NodeLeases(store=store, incarnation=f"inc-{name}", clock=self.clock,
                            blocking=lease_blocking or SynchronousBlocking(),
                            metrics=GatewayMetrics(CollectorRegistry(), process=False))
        leases.startService()
        watcher = self.watcher(blocking, registry=CollectorRegistry())
        watcher.leases = leases
        return watcher, leases

    def test_when_a_scan_ends_then_the_next_scan_claims_only_after_the_release(self) -> None:
        """A release landing after the next scan's claim (the same node, the same token) would free the lease under
        that scan, and its commits would be fenced: seen as a quarantine refused with lease.fenced under load."""
        self.put("a.dat")
        lease_door = DeferredBlocking()
        watcher, _ = self.node("a", SynchronousBlocking(), lease_door)
        watcher.startService()
        while not self.ledger.rows and lease_door.waiting:  # the first heartbeat, the claim; the scan runs at once
            lease_door.finish_one()
        self.assertEqual([row.local_name for row in self.ledger.rows.values()], ["a.dat"])
        self.put("b.dat")
        watcher.scan_soon()  # once more after the scan in flight
        self.assertEqual([f.__name__ for _, f, _ in lease_door.waiting], ["release"],
                         "the next scan waits for the release of the lease")
        lease_door.finish_one()
        while lease_door.waiting:
            lease_door.finish_one()
        self.assertEqual(sorted(row.local_name for row in self.ledger.rows.values()), ["a.dat", "b.dat"])
        watcher.stopService()

    def test_when_a_stalled_node_ingests_after_the_other_took_the_outbox_over_then_its_commit_is_fenced_and_the_file_is_ingested_once(
            self) -> None:
        from twisted.logger import globalLogPublisher

        logged: list[dict[str, Any]] = []
        globalLogPublisher.addObserver(logged.append)
        self.addCleanup(globalLogPublisher.removeObserver, logged.append)
        self.put("a.dat")
        blocking_a, blocking_b = DeferredBlocking(), DeferredBlocking()
        watcher_a, leases_a = self.node("a", blocking_a)
        watcher_a.startService()
        self.assertEqual(len(blocking_a.waiting), 1, "a holds the outbox's lease; its scan is under way")
        leases_a._loop.stop()  # a stalls
        watcher_a._rescan.stop()
        watcher_b, _ = self.node("b", blocking_b)
        watcher_b.startService()
        self.assertEqual(blocking_b.waiting, [], "a's lease is live: b does not scan")
        self.clock.advance(16)
        watcher_b.scan_soon()
        self.assertEqual(len(blocking_b.waiting), 1, "b took the outbox over")
        blocking_a.finish_one()  # a wakes up and ingests: refused at its commit
        self.assertEqual(self.ledger.rows, {})
        self.assertIn("lease.fenced", [e.get("kei_event") for e in logged])
        self.assertTrue((self.outbox / "a.dat").exists(), "the file stays for the lease holder")
        blocking_b.finish_one()
        self.assertEqual([(row.local_name, row.state) for row in self.ledger.rows.values()], [("a.dat", "QUEUED")])
        self.assertFalse((self.outbox / "a.dat").exists())
        watcher_b.stopService()
