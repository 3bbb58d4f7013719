"""ResultRelay: each payment result reaches the inbox exactly once, whatever arrives twice or stops half way."""

from __future__ import annotations

import datetime as dt
import os
from pathlib import Path
from typing import Any

from prometheus_client import CollectorRegistry
from collections import Counter

from twisted.internet import defer, task
from twisted.logger import LogLevel, globalLogPublisher
from twisted.trial.unittest import SynchronousTestCase

from kei_gateway.adapters.ledger import TransferRow
from kei_gateway.adapters.ledger.results import RelayDecision
from kei_gateway.adapters.spool import MARKER_SUFFIX, staged_name
from kei_gateway.core.results import ResultKeyer, facts_from_records
from kei_gateway.core.results.identity import raw_fields
from kei_gateway.core.transfer import TransferState as S
from kei_gateway.flows.inbound.mpn_results import (
    UNCONFIRMED_CHECK_INTERVAL,
    RelayOutcome,
    ResultRelay,
    record_batches,
)
from kei_gateway.layouts import Record, ValidationOptions, generate_file, get_layout, parse_records, render_record
from kei_gateway.runtime.metrics import GatewayMetrics
from kei_gateway.testing import InMemoryBlobStore, InMemoryLedger, InMemoryResultLedger, SynchronousBlocking
from tests.unit.helpers import temporary_directory

LAYOUT = get_layout("mpn-results")
TODAY = dt.date(2026, 11, 21)
START = dt.datetime(2026, 11, 21, 3, 0, tzinfo=dt.timezone.utc).timestamp()
RECORDS: list[Record] = list(parse_records([b"".join(generate_file(LAYOUT, 12, seed=7, today=TODAY))], LAYOUT,
                                           ValidationOptions(today=TODAY)))


def with_kind(record: Record, kind: str) -> Record:
    return {**record, "result_kind": kind}


def data_of(records: list[Record]) -> bytes:
    return b"".join(render_record(LAYOUT, record) for record in records)


class RelayCase(SynchronousTestCase):
    """A relay over the twins, a fake clock and a temporary inbox."""

    def setUp(self) -> None:
        self.base = Path(temporary_directory(self))
        self.ledger = InMemoryLedger()
        self.results = InMemoryResultLedger(self.ledger)
        self.store = InMemoryBlobStore()
        self.clock = task.Clock()
        self.clock.advance(START)
        self.registry = CollectorRegistry()
        self.metrics = GatewayMetrics(self.registry, process=False)
        self.inbox = self.base / "inbox" / "mpn-results"
        self.logged: list[dict[str, Any]] = []
        globalLogPublisher.addObserver(self.logged.append)
        self.addCleanup(globalLogPublisher.removeObserver, self.logged.append)
        self.relay = self.make_relay()

    def make_relay(self, marker: bool = False) -> ResultRelay:
        return ResultRelay(inbox_dir=str(self.inbox), marker=marker, lg_code="131041", ledger=self.ledger,
                           results=self.results, keyer=ResultKeyer([b"\x05" * 32]), store=self.store,
                           blocking=SynchronousBlocking(), clock=self.clock, metrics=self.metrics,
                           unconfirmed_after=3 * 86400.0)

    def received(self, records: list[Record], name: str) -> TransferRow:
        data = data_of(records)
        blob = f"in-{name}"
        info = self.store.write(blob, [data])
        now = dt.datetime.fromtimestamp(self.clock.seconds(), dt.timezone.utc)
        return self.ledger.add_transfer(flow="mpn-results", direction="in", peer="mpn", local_name=name,
                                        state=S.VALIDATED, size=len(data), sha256=info.sha256,
                                        record_count=len(records), blob_id=blob, now=now, remote_name=name)

    def relayed(self, row: TransferRow, received_at: float | None = None) -> RelayOutcome:
        return self.successResultOf(self.relay.relay(row, received_at))

    def inbox_files(self) -> dict[str, bytes]:
        if not self.inbox.exists():
            return {}
        return {entry.name: entry.read_bytes() for entry in self.inbox.iterdir()}

    def counted(self, kind: str, outcome: str) -> float | None:
        return self.registry.get_sample_value("kei_gateway_payment_results_total", {"kind": kind, "outcome": outcome})



class RelayTests(RelayCase):
    def test_when_a_file_of_new_results_is_relayed_then_the_inbox_gets_its_records_and_the_transfer_is_done(self) -> None:
        records = RECORDS[:5]
        row = self.received(records, "r1.dat")
        outcome = self.relayed(row, received_at=self.clock.seconds())
        self.assertEqual(self.inbox_files(), {outcome.relay_name: data_of(records)})
        self.assertEqual(outcome.relay_name, f"131041_mpn-results_20261121120000_{row.id}.dat")
        after = self.ledger.get(row.id)
        self.assertEqual((after.state, after.relay_name), (S.DONE.value, outcome.relay_name))
        self.assertIn("新規 5, 重複 0", after.receipt_summary or "")
        kinds = [r["result_kind"] for r in records]
        self.assertEqual(self.counted("provisional", "relayed"), kinds.count("1"))
        self.assertEqual(self.registry.get_sample_value("kei_gateway_relay_latency_seconds_count"), 1)
        self.assertEqual([e["kei_event"] for e in self.logged if e.get("kei_event", "").startswith("results.")],
                         ["results.relayed"])

    def test_when_the_same_results_come_again_by_the_other_way_then_nothing_is_relayed_twice(self) -> None:
        records = [with_kind(r, "1") for r in RECORDS[:4]]
        first = self.relayed(self.received(records, "push-1.dat"))
        second_row = self.received(records, "pull-1.dat")
        second = self.relayed(second_row, received_at=self.clock.seconds())
        self.assertIsNone(second.relay_name)
        # Nothing was written to the inbox, so there is no relay latency to observe.
        self.assertEqual(self.registry.get_sample_value("kei_gateway_relay_latency_seconds_count"), 0)
        self.assertEqual(list(self.inbox_files()), [first.relay_name])
        self.assertEqual(self.ledger.get(second_row.id).state, S.DONE.value)
        self.assertEqual(self.counted("provisional", "relayed"), 4)
        self.assertEqual(self.counted("provisional", "duplicate"), 4)

    def test_when_a_file_mixes_known_and_new_results_then_only_the_new_records_are_relayed_byte_for_byte(self) -> None:
        provisional = [with_kind(r, "1") for r in RECORDS[:6]]
        self.relayed(self.received(provisional[:3], "a.dat"))
        final = [with_kind(r, "2") for r in RECORDS[:2]]
        mixed = [provisional[1], final[0], provisional[4], provisional[1], final[1]]  # a repeat inside the file too
        outcome = self.relayed(self.received(mixed, "b.dat"))
        self.assertEqual(self.inbox_files()[outcome.relay_name], data_of([final[0], provisional[4], final[1]]))
        self.assertEqual(outcome.relayed, {1: 1, 2: 2})
        self.assertEqual(outcome.duplicates, {1: 2})

    def test_when_repeats_and_known_results_fall_in_other_batches_then_each_result_is_still_relayed_once(self) -> None:
        from unittest import mock

        from kei_gateway.flows.inbound import mpn_results

        provisional = [with_kind(r, "1") for r in RECORDS[:8]]
        self.relayed(self.received(provisional[:2], "a.dat"))
        # batches of 3: [p0 p2 p3] [p4 p2 p1] [p5 p3] — a known one and repeats across batch boundaries
        later = [provisional[0], provisional[2], provisional[3], provisional[4], provisional[2], provisional[1],
                 provisional[5], provisional[3]]
        with mock.patch.object(mpn_results, "RELAY_BATCH", 3):
            outcome = self.relayed(self.received(later, "b.dat"))
        assert outcome.relay_name is not None
        self.assertEqual(self.inbox_files()[outcome.relay_name], data_of([provisional[i] for i in (2, 3, 4, 5)]))
        self.assertEqual((outcome.relayed, outcome.duplicates), ({1: 4}, {1: 4}))

    def test_when_every_result_of_a_file_is_known_then_no_staged_file_is_left_behind(self) -> None:
        records = [with_kind(r, "1") for r in RECORDS[:3]]
        first = self.relayed(self.received(records, "a.dat"))
        self.relayed(self.received(records, "b.dat"))
        self.assertEqual(sorted(self.inbox_files()), [first.relay_name])

    def test_when_the_relay_had_been_recorded_but_not_renamed_then_the_staged_file_is_published_not_rewritten(self) -> None:
        records = RECORDS[:3]
        row = self.received(records, "r.dat")
        self.inbox.mkdir(parents=True)
        name = "131041_mpn-results_20261121120000_1.dat"
        (self.inbox / staged_name(name)).write_bytes(b"as staged before the crash")
        self.results.record_relay(row.id, [], name, dt.datetime.now(dt.timezone.utc), "decided", done=False)
        outcome = self.relayed(self.ledger.get(row.id))  # as relay_pending reads it at start
        self.assertTrue(outcome.recovered)
        self.assertEqual(self.inbox_files(), {name: b"as staged before the crash"})
        self.assertEqual(self.ledger.get(row.id).state, S.DONE.value)

    def test_when_the_relayed_file_was_already_taken_by_the_tax_system_then_it_is_not_written_again(self) -> None:
        row = self.received(RECORDS[:3], "r.dat")
        self.results.record_relay(row.id, [], "gone.dat", dt.datetime.now(dt.timezone.utc), "decided", done=False)
        outcome = self.relayed(self.ledger.get(row.id))
        self.assertTrue(outcome.recovered)
        self.assertEqual(self.inbox_files(), {})
        self.assertEqual(self.ledger.get(row.id).state, S.DONE.value)

    def test_when_a_staged_file_was_left_before_anything_was_recorded_then_it_is_rewritten_and_relayed(self) -> None:
        records = RECORDS[:3]
        row = self.received(records, "r.dat")
        self.inbox.mkdir(parents=True)
        name = f"131041_mpn-results_20261121120000_{row.id}.dat"
        (self.inbox / staged_name(name)).write_bytes(b"half")
        self.relayed(row)
        self.assertEqual(self.inbox_files(), {name: data_of(records)})

    def test_when_results_are_relayed_then_the_relay_record_commits_with_done_and_is_not_queued_again(self) -> None:
        """Issue 11: results.relayed is chained in the transaction that makes the transfer DONE (new results
        or only duplicates), results.relay_finished in the one that finishes a relay cut off by a crash."""
        records = [with_kind(r, "1") for r in RECORDS[:4]]
        first = self.received(records, "push-1.dat")
        outcome = self.relayed(first)
        again = self.received(records, "pull-1.dat")
        self.relayed(again)
        cut_off = self.received([with_kind(r, "2") for r in RECORDS[:2]], "r.dat")
        self.results.record_relay(cut_off.id, [], "gone.dat", dt.datetime.now(dt.timezone.utc), "decided", done=False)
        self.relayed(self.ledger.get(cut_off.id))
        self.assertEqual(self.ledger.audit, [
            ("results.relayed", {"flow": "mpn-results", "name": outcome.relay_name, "records": 4, "duplicates": 0,
                                 "transfer_id": first.id}),
            ("results.relayed", {"flow": "mpn-results", "name": "-", "records": 0, "duplicates": 4,
                                 "transfer_id": again.id}),
            ("results.relay_finished", {"flow": "mpn-results", "name": "gone.dat", "transfer_id": cut_off.id})])
        said = [e for e in self.logged if e.get("kei_event", "").startswith("results.relay")]
        self.assertEqual([e.get("audit_recorded") for e in said], [True, True, True])

    def test_when_markers_are_asked_for_then_the_end_file_follows_the_data(self) -> None:
        self.relay = self.make_relay(marker=True)
        outcome = self.relayed(self.received(RECORDS[:2], "r.dat"))
        assert outcome.relay_name is not None
        self.assertEqual(self.inbox_files()[outcome.relay_name + MARKER_SUFFIX], b"")

    def test_when_the_service_starts_then_received_files_not_yet_relayed_are_relayed(self) -> None:
        rows = [self.received(RECORDS[:2], "a.dat"), self.received(RECORDS[2:4], "b.dat")]
        self.relay.startService()
        self.addCleanup(self.relay.stopService)
        self.assertEqual([self.ledger.get(r.id).state for r in rows], [S.DONE.value, S.DONE.value])
        self.assertEqual(len(self.inbox_files()), 2)

    def test_when_a_relay_fails_then_it_is_tried_again_at_the_next_check_without_a_restart(self) -> None:
        self.relay.startService()
        self.addCleanup(self.relay.stopService)
        self.inbox.parent.mkdir(parents=True)
        self.inbox.write_bytes(b"")  # a file where the inbox directory should be: the relay cannot write
        row = self.received(RECORDS[:2], "a.dat")
        self.failureResultOf(self.relay.relay(row))  # what the push listener's hook sees (it only logs it)
        self.assertEqual(self.ledger.get(row.id).state, S.VALIDATED.value)
        self.inbox.unlink()
        self.clock.advance(UNCONFIRMED_CHECK_INTERVAL)
        self.assertEqual(self.ledger.get(row.id).state, S.DONE.value)
        self.assertEqual(list(self.inbox_files().values()), [data_of(RECORDS[:2])])
        self.clock.advance(UNCONFIRMED_CHECK_INTERVAL)  # done once: nothing is relayed again
        self.assertEqual(len(self.inbox_files()), 1)
        self.assertEqual(self.counted("provisional", "relayed"), [r["result_kind"] for r in RECORDS[:2]].count("1"))

    def test_when_a_done_transfer_is_relayed_again_then_nothing_happens(self) -> None:
        row = self.received(RECORDS[:2], "a.dat")
        self.relayed(row)
        again = self.relayed(row)  # the stale snapshot of a poller that saw it VALIDATED
        self.assertTrue(again.already_done)
        self.assertEqual(len(self.inbox_files()), 1)

    def test_when_provisionals_stay_unconfirmed_past_the_limit_then_the_gauge_and_a_warning_say_so(self) -> None:
        week_ago = dt.datetime(2026, 11, 15, 10, 0)
        provisional = [with_kind({**r, "received_at": week_ago}, "1") for r in RECORDS[:3]]
        confirmed = [with_kind(provisional[0], "2")]
        self.relayed(self.received(provisional + confirmed, "r.dat"))
        self.relay.check_unconfirmed()
        self.assertEqual(self.registry.get_sample_value("kei_gateway_unconfirmed_results", {"age": "overdue"}), 2)
        warnings = [e for e in self.logged if e.get("kei_event") == "results.unconfirmed"]
        self.assertEqual(len(warnings), 1)
        self.assertEqual(warnings[0]["log_level"], LogLevel.warn)
        self.relay.check_unconfirmed()  # no new overdue ones: no second warning
        self.assertEqual(len([e for e in self.logged if e.get("kei_event") == "results.unconfirmed"]), 1)

    def test_when_a_provisional_is_older_than_the_window_then_the_gauge_no_longer_counts_it(self) -> None:
        old = [with_kind({**RECORDS[0], "received_at": dt.datetime(2026, 10, 1, 10, 0)}, "1")]
        recent = [with_kind({**RECORDS[1], "received_at": dt.datetime(2026, 11, 10, 10, 0)}, "1")]
        self.relayed(self.received(old + recent, "r.dat"))
        self.relay.check_unconfirmed()
        self.assertEqual(self.registry.get_sample_value("kei_gateway_unconfirmed_results", {"age": "overdue"}), 1)


class HeldBlocking:
    """A blocking door whose calls wait until the test runs them (to see what waits for what)."""

    def __init__(self) -> None:
        self.calls: list[tuple[Any, tuple[Any, ...], dict[str, Any], defer.Deferred[Any]]] = []

    def run(self, f: Any, *args: Any, **kwargs: Any) -> defer.Deferred[Any]:
        d: defer.Deferred[Any] = defer.Deferred()
        self.calls.append((f, args, kwargs, d))
        return d

    def names(self) -> list[str]:
        return [getattr(f, "__name__", repr(f)) for f, *_ in self.calls]

    def run_call(self, name: str) -> None:
        """Run the first waiting call of the function *name*."""
        index = self.names().index(name)
        f, args, kwargs, d = self.calls.pop(index)
        defer.maybeDeferred(f, *args, **kwargs).chainDeferred(d)

    def run_all(self) -> None:
        while self.calls:
            self.run_call(self.names()[0])


class CountingResults(InMemoryResultLedger):
    """Counts the commits of decisions (one per group, one per large file)."""

    def __init__(self, ledger: InMemoryLedger) -> None:
        super().__init__(ledger)
        self.group_commits: list[list[int]] = []

    def commit_relays(self, decisions: Any, now: dt.datetime) -> None:
        self.group_commits.append([d.transfer_id for d in decisions])
        super().commit_relays(decisions, now)


class LaneTests(RelayCase):
    """Issue 16: small files relayed in groups, one commit each; a large file in its own lane; the restart rule."""

    def setUp(self) -> None:
        super().setUp()
        self.results = CountingResults(self.ledger)
        self.held = HeldBlocking()
        self.relay = ResultRelay(inbox_dir=str(self.inbox), marker=False, lg_code="131041", ledger=self.ledger,
                                 results=self.results, keyer=ResultKeyer([b"\x05" * 32]), store=self.store,
                                 blocking=self.held, clock=self.clock, metrics=self.metrics,
                                 unconfirmed_after=3 * 86400.0)

    def test_when_files_wait_while_a_relay_runs_then_they_are_relayed_together_in_one_commit(self) -> None:
        provisional = [with_kind(r, "1") for r in RECORDS[:8]]
        first = self.relay.relay(self.received(provisional[:2], "a.dat"))
        self.assertEqual(self.held.names(), ["relay_small_files"], "a lone file starts at once")
        waiting = [self.relay.relay(self.received(records, name))
                   for records, name in ((provisional[2:4], "b.dat"), (provisional[3:6], "c.dat"))]
        self.assertEqual(self.held.names(), ["relay_small_files"], "the others wait for the lane")
        self.held.run_call("relay_small_files")
        self.successResultOf(first)
        self.held.run_call("relay_small_files")
        b, c = (self.successResultOf(d) for d in waiting)
        self.assertEqual(self.results.group_commits, [[1], [2, 3]])
        assert b.relay_name is not None and c.relay_name is not None
        files = self.inbox_files()
        self.assertEqual(files[b.relay_name], data_of(provisional[2:4]))
        self.assertEqual(files[c.relay_name], data_of(provisional[4:6]), "a result in two files of a group goes once")
        self.assertEqual((c.relayed, c.duplicates), ({1: 2}, {1: 1}))
        self.assertEqual([self.ledger.get(n).state for n in (1, 2, 3)], [S.DONE.value] * 3)
        self.assertEqual(self.registry.get_sample_value("kei_gateway_relay_latency_seconds_count"), 0)
        self.assertEqual(self.counted("provisional", "relayed"), 6)

    def test_when_a_large_file_is_being_relayed_then_a_small_one_does_not_wait_for_it(self) -> None:
        from unittest import mock

        from kei_gateway.flows.inbound import mpn_results

        with mock.patch.object(mpn_results, "SMALL_FILE", 3):
            large = self.relay.relay(self.received(RECORDS[:6], "large.dat"))
            small = self.relay.relay(self.received(RECORDS[6:8], "small.dat"))
        self.assertEqual(self.held.names(), ["relay_stored_results", "relay_small_files"])
        self.held.run_call("relay_small_files")  # while the large file's relay still runs
        outcome = self.successResultOf(small)
        self.assertNoResult(large)
        self.assertEqual(list(self.inbox_files()), [outcome.relay_name])
        self.held.run_call("relay_stored_results")
        self.assertEqual(len(self.inbox_files()), 2)
        self.assertEqual(self.successResultOf(large).relayed + outcome.relayed,
                         Counter(int(r["result_kind"]) for r in RECORDS[:8]))

    def test_when_a_file_of_a_group_was_relayed_meanwhile_then_the_others_are_still_relayed_one_by_one(self) -> None:
        blocker = self.relay.relay(self.received(RECORDS[:1], "first.dat"))
        stale = self.received(RECORDS[1:3], "stale.dat")
        fresh = self.received(RECORDS[3:5], "fresh.dat")
        group = [self.relay.relay(stale), self.relay.relay(fresh)]
        self.results.record_relay(stale.id, [], None, dt.datetime.now(dt.timezone.utc), "by the other node",
                                  done=True)  # DONE meanwhile: the group's commit refuses it
        self.held.run_all()
        self.successResultOf(blocker)
        stale_outcome, fresh_outcome = (self.successResultOf(d) for d in group)
        self.assertTrue(stale_outcome.already_done)
        assert fresh_outcome.relay_name is not None
        self.assertEqual(self.inbox_files()[fresh_outcome.relay_name], data_of(RECORDS[3:5]))
        self.assertEqual(self.ledger.get(fresh.id).state, S.DONE.value)

    def test_when_a_crash_came_after_the_commit_then_the_start_publishes_what_was_staged_and_drops_leftovers(
            self) -> None:
        decided = self.received(RECORDS[:2], "decided.dat")
        repeated = self.received(RECORDS[:2], "repeated.dat")
        pending = self.received(RECORDS[2:4], "pending.dat")
        self.inbox.mkdir(parents=True)
        name = f"131041_mpn-results_20261121120000_{decided.id}.dat"
        (self.inbox / staged_name(name)).write_bytes(b"as staged before the crash")
        (self.inbox / staged_name(name + MARKER_SUFFIX)).write_bytes(b"")
        self.results.commit_relays([RelayDecision(decided.id, [], name, "decided")], dt.datetime.now(dt.timezone.utc))
        left = f"131041_mpn-results_20261121120000_{repeated.id}.dat"
        (self.inbox / staged_name(left)).write_bytes(b"staged by an attempt before the decision")
        self.results.commit_relays([RelayDecision(repeated.id, [], None, "all repeated")],
                                   dt.datetime.now(dt.timezone.utc))
        undecided = f"131041_mpn-results_20261121120000_{pending.id}.dat"
        (self.inbox / staged_name(undecided)).write_bytes(b"half")
        self.relay.startService()
        self.addCleanup(self.relay.stopService)
        self.held.run_all()
        self.assertEqual(self.inbox_files(), {name: b"as staged before the crash", name + MARKER_SUFFIX: b"",
                                              undecided: data_of(RECORDS[2:4])})
        self.assertEqual(self.ledger.get(pending.id).state, S.DONE.value)


class RawFieldsTests(SynchronousTestCase):
    def test_when_identity_fields_are_sliced_raw_then_the_facts_equal_those_of_full_parsing(self) -> None:
        keyer = ResultKeyer([b"\x07" * 32])
        data = b"".join(generate_file(LAYOUT, 300, seed=11, today=TODAY))
        widths = {item.key: item.width for item in LAYOUT.fields}
        chunks = [data[i:i + 1000] for i in range(0, len(data), 1000)]  # records split across chunks
        raw = facts_from_records(raw_fields(chunks, LAYOUT.offsets, widths, LAYOUT.record_length), keyer)
        parsed = facts_from_records(parse_records([data], LAYOUT, ValidationOptions(today=TODAY)), keyer)
        self.assertEqual(raw, parsed)
        self.assertEqual(len(raw), 300)


class RecordBatchesTests(SynchronousTestCase):
    def test_when_chunks_split_records_anywhere_then_the_records_come_out_whole_in_batches(self) -> None:
        data = b"".join(bytes([65 + i]) * 10 for i in range(7))
        chunks = [data[i:i + 7] for i in range(0, len(data), 7)]
        self.assertEqual(list(record_batches(chunks, 10, 3)),
                         [[bytes([65 + i]) * 10 for i in range(3)], [bytes([65 + i]) * 10 for i in range(3, 6)],
                          [b"G" * 10]])

    def test_when_the_file_ends_mid_record_then_it_is_an_error(self) -> None:
        with self.assertRaises(ValueError):
            list(record_batches([b"x" * 15], 10, 3))


class UnreadableStore(InMemoryBlobStore):
    """A store the relay must not read: a file relayed in its accepting commit is staged from its bytes."""

    def read(self, blob_id: str) -> Any:
        raise AssertionError(f"blob {blob_id} read back")


class BrokenCommit(CountingResults):
    """The accepting transaction fails after the staging (a crash before the commit, as far as the ledger knows)."""

    def commit_relays(self, decisions: Any, now: dt.datetime) -> None:
        raise RuntimeError("the disk went away before the commit")


class AcceptTests(RelayCase):
    """Issue 16: a lone small push relayed in the commit that accepts it; the crash rules around that commit."""

    def setUp(self) -> None:
        super().setUp()
        self.results = CountingResults(self.ledger)
        self.store = UnreadableStore()
        self.held = HeldBlocking()
        self.relay = ResultRelay(inbox_dir=str(self.inbox), marker=True, lg_code="131041", ledger=self.ledger,
                                 results=self.results, keyer=ResultKeyer([b"\x05" * 32]), store=self.store,
                                 blocking=self.held, clock=self.clock, metrics=self.metrics,
                                 unconfirmed_after=3 * 86400.0)
        self.relay.running = True  # started, without its periodic pass

    def transfer(self, records: list[Record], name: str) -> tuple[Any, bytes]:
        from kei_gateway.adapters.ledger.ledger import NewTransfer

        data = data_of(records)
        return NewTransfer(flow="mpn-results", direction="in", peer="mpn", local_name=name, state=S.VALIDATED,
                           size=len(data), sha256=f"sha-{name}", record_count=len(records), blob_id=f"in-{name}",
                           now=dt.datetime.fromtimestamp(self.clock.seconds(), dt.timezone.utc),
                           remote_name=name), data

    def accepted(self, name: str) -> tuple[str, dict[str, Any]]:
        return "push.accepted", {"flow": "mpn-results", "peer": "mpn", "name": name}

    def test_when_the_lane_is_free_then_a_small_push_is_accepted_and_relayed_in_one_commit_without_a_read(
            self) -> None:
        records = RECORDS[:4]
        inline = self.relay.relay_on_accept(len(records), received_at=self.clock.seconds())
        assert inline is not None
        transfer, data = self.transfer(records, "p1.dat")
        row = inline(transfer, self.accepted("p1.dat"), data)
        name = f"131041_mpn-results_20261121120000_{row.id}.dat"
        self.assertEqual((row.state, row.relay_name), (S.DONE, name))
        self.assertEqual(self.ledger.get(row.id).state, S.DONE.value)
        self.assertEqual(self.inbox_files(), {name: data, name + MARKER_SUFFIX: b""}, "published, nothing staged")
        self.assertEqual(self.results.group_commits, [[row.id]], "one commit for the accept and the relay")
        self.assertEqual([(event, fields["transfer_id"]) for event, fields in self.ledger.audit],
                         [("push.accepted", row.id), ("results.relayed", row.id)])
        self.assertEqual(self.counted("provisional", "relayed"), 0, "counted on the reactor, at the end")
        inline.end(row)
        self.assertEqual(self.counted("provisional", "relayed"),
                         sum(1 for r in records if r["result_kind"] == "1"))
        self.assertEqual(self.registry.get_sample_value("kei_gateway_relay_latency_seconds_count"), 1)
        self.assertEqual([e["kei_event"] for e in self.logged if e.get("kei_event", "").startswith("results.")],
                         ["results.relayed"])

    def test_when_the_accept_holds_the_lane_then_other_files_wait_and_no_second_accept_is_offered(self) -> None:
        inline = self.relay.relay_on_accept(2)
        assert inline is not None
        self.assertIsNone(self.relay.relay_on_accept(2), "one accepting relay at a time")
        self.store = InMemoryBlobStore()
        self.relay.store = self.store
        waiting = self.relay.relay(self.received(RECORDS[4:6], "pulled.dat"))
        self.assertEqual(self.held.names(), [], "the lane is held by the accept")
        transfer, data = self.transfer(RECORDS[:2], "p1.dat")
        row = inline(transfer, None, data)
        inline.end(row)
        self.assertEqual(self.held.names(), ["relay_small_files"], "the lane free again: the waiting file goes")
        self.held.run_all()
        self.assertIsNotNone(self.successResultOf(waiting).relay_name)

    def test_when_the_lane_is_busy_or_the_file_large_then_it_is_committed_alone_and_relayed_after(self) -> None:
        from unittest import mock

        from kei_gateway.flows.inbound import mpn_results

        with mock.patch.object(mpn_results, "SMALL_FILE", 3):
            self.assertIsNone(self.relay.relay_on_accept(4), "a large file: never in the accepting commit")
        self.relay.store = InMemoryBlobStore()
        self.store = self.relay.store
        self.relay.relay(self.received(RECORDS[:1], "running.dat"))
        self.assertIsNone(self.relay.relay_on_accept(1), "the lane is relaying: the push does not wait for it")
        self.relay.running = False
        self.held.run_all()
        self.assertIsNone(self.relay.relay_on_accept(1), "a stopped relay takes nothing")

    def test_when_every_result_is_known_then_the_transfer_is_done_under_no_name_and_nothing_is_staged(self) -> None:
        first = self.relay.relay_on_accept(3)
        assert first is not None
        transfer, data = self.transfer(RECORDS[:3], "a.dat")
        first.end(first(transfer, None, data))
        again = self.relay.relay_on_accept(3)
        assert again is not None
        transfer, data = self.transfer(RECORDS[:3], "b.dat")
        row = again(transfer, None, data)
        again.end(row)
        self.assertEqual((row.state, row.relay_name), (S.DONE, None))
        self.assertEqual(len([n for n in self.inbox_files() if not n.endswith(MARKER_SUFFIX)]), 1)
        self.assertEqual(self.counted("provisional", "duplicate"),
                         sum(1 for r in RECORDS[:3] if r["result_kind"] == "1"))

    def test_when_a_result_was_recorded_meanwhile_then_nothing_is_written_and_the_staged_file_is_removed(
            self) -> None:
        from kei_gateway.adapters.ledger.results import DuplicateResult

        class Racing(CountingResults):
            def accept_relay(self, transfer: Any, audit: Any, decide: Any, now: dt.datetime) -> Any:
                return super().accept_relay(transfer, audit, lambda row, known: decide(row, lambda keys: set()), now)

        self.relay.results = Racing(self.ledger)
        earlier = self.relay.relay_on_accept(2)
        assert earlier is not None
        transfer, data = self.transfer(RECORDS[:2], "a.dat")
        earlier.end(earlier(transfer, None, data))
        audit_before, rows_before = list(self.ledger.audit), dict(self.ledger.rows)
        inline = self.relay.relay_on_accept(2)
        assert inline is not None
        transfer, data = self.transfer(RECORDS[:2], "b.dat")
        self.assertRaises(DuplicateResult, inline, transfer, self.accepted("b.dat"), data)
        inline.end(None)
        self.assertEqual((self.ledger.audit, self.ledger.rows), (audit_before, rows_before), "nothing written")
        self.assertEqual([n for n in self.inbox_files() if n.startswith(".")], [], "nothing left staged")

    def test_when_killed_before_the_commit_then_no_transfer_and_the_start_removes_the_staged_orphan(self) -> None:
        self.relay.results = BrokenCommit(self.ledger)
        inline = self.relay.relay_on_accept(2)
        assert inline is not None
        transfer, data = self.transfer(RECORDS[:2], "a.dat")
        self.assertRaises(RuntimeError, inline, transfer, self.accepted("a.dat"), data)
        inline.end(None)
        self.assertEqual((self.ledger.rows, self.ledger.audit), ({}, []), "no transfer, no record: the peer retries")
        orphan = [n for n in self.inbox_files() if n.startswith(".")]
        self.assertEqual(len(orphan), 2, "the staged file and its marker, left by the transaction cut off")
        self.relay.running = False
        self.relay.startService()
        self.addCleanup(self.relay.stopService)
        self.held.run_all()
        self.assertEqual(self.inbox_files(), {}, "the orphan removed at start")

    def test_when_killed_after_the_commit_then_the_start_publishes_the_staged_file_once(self) -> None:
        from unittest import mock

        from kei_gateway.flows.inbound import mpn_results

        inline = self.relay.relay_on_accept(2)
        assert inline is not None
        transfer, data = self.transfer(RECORDS[:2], "a.dat")
        with mock.patch.object(mpn_results, "publish_relays", side_effect=RuntimeError("killed before the rename")):
            self.assertRaises(RuntimeError, inline, transfer, self.accepted("a.dat"), data)
        inline.end(None)
        (row,) = self.ledger.rows.values()
        self.assertEqual((row.state, [e for e, _ in self.ledger.audit]), (S.DONE, ["push.accepted", "results.relayed"]))
        self.relay.running = False
        self.relay.startService()
        self.addCleanup(self.relay.stopService)
        self.held.run_all()
        self.assertEqual(self.inbox_files(), {row.relay_name: data, f"{row.relay_name}{MARKER_SUFFIX}": b""})

    def test_when_the_transaction_is_retried_after_a_commit_whose_answer_was_lost_then_its_file_is_published_once(
            self) -> None:
        class LostAnswer(CountingResults):
            """The first attempt commits, its answer is lost (a transient error), the retry runs again."""

            def accept_relay(self, transfer: Any, audit: Any, decide: Any, now: dt.datetime) -> Any:
                super().accept_relay(transfer, audit, decide, now)
                return super().accept_relay(transfer, audit, decide, now)

        self.relay.results = LostAnswer(self.ledger)
        inline = self.relay.relay_on_accept(2)
        assert inline is not None
        transfer, data = self.transfer(RECORDS[:2], "a.dat")
        retried = inline(transfer, None, data)
        inline.end(retried)
        first, second = sorted(self.ledger.rows.values(), key=lambda r: r.id)
        self.assertEqual((second.id, second.relay_name), (retried.id, None), "the retry found every result known")
        assert first.relay_name is not None
        self.assertEqual(self.inbox_files(), {staged_name(first.relay_name): data,
                                              staged_name(first.relay_name + MARKER_SUFFIX): b""},
                         "the committed attempt's file is not removed")
        self.relay.running = False
        self.relay.startService()
        self.addCleanup(self.relay.stopService)
        self.held.run_all()
        self.assertEqual(self.inbox_files(), {first.relay_name: data, first.relay_name + MARKER_SUFFIX: b""})

    def test_when_a_staged_file_has_no_transfer_then_it_is_removed_unless_being_accepted_or_recent_on_a_shared_ledger(
            self) -> None:
        from kei_gateway.flows.inbound.mpn_results import AcceptingNames, finish_published

        self.inbox.mkdir(parents=True)
        names = [f"131041_mpn-results_20261121120000_{n}.dat" for n in (7, 8)]
        for name in names:
            (self.inbox / staged_name(name)).write_bytes(b"staged")
        accepting = AcceptingNames()
        accepting.names.add(names[0])
        finish_published(ledger=self.ledger, inbox_dir=str(self.inbox), accepting=accepting)
        self.assertEqual(list(self.inbox_files()), [staged_name(names[0])], "the one being accepted is left")
        accepting.names.clear()
        staged_at = os.stat(self.inbox / staged_name(names[0])).st_mtime
        finish_published(ledger=self.ledger, inbox_dir=str(self.inbox), accepting=accepting, orphan_age=60.0,
                         now=staged_at + 59)
        self.assertEqual(list(self.inbox_files()), [staged_name(names[0])], "another node may be accepting it")
        finish_published(ledger=self.ledger, inbox_dir=str(self.inbox), accepting=accepting, orphan_age=60.0,
                         now=staged_at + 61)
        self.assertEqual(self.inbox_files(), {}, "older than the bound: an orphan")

    def test_when_the_ledger_is_sqlite_then_orphans_go_at_once_and_on_a_shared_one_after_some_leases(self) -> None:
        from kei_gateway.flows.inbound.mpn_results import ORPHAN_LEASES, orphan_age

        self.assertEqual(orphan_age("sqlite", 15.0), 0.0)
        self.assertEqual(orphan_age("postgresql", 15.0), ORPHAN_LEASES * 15.0)
