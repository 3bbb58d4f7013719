"""The MPN centre simulator: its independent slip check, result records, planning, personality and push client."""

from __future__ import annotations

import datetime
import json
import os
import random
from collections import Counter
from dataclasses import replace
from typing import Any

from twisted.internet import defer, task
from twisted.internet.defer import Deferred
from twisted.internet.error import ConnectionRefusedError
from twisted.internet.testing import MemoryReactorClock
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase
from twisted.web.client import ResponseDone
from twisted.web.http_headers import Headers

from kei_gateway.adapters.transport import parse_retry_after as retry_after_seconds
from kei_gateway.layouts import ValidationOptions, generate_file, get_layout, gs1_check_digit as layouts_gs1
from kei_gateway.layouts import validate_bytes
from kei_gateway.layouts.generator import violations
from kei_gateway.sim import pki
from kei_gateway.sim import MpnOptions, RunningSim, start_mpn_simulator
from kei_gateway.sim.dav import DavPath, DavStore
from kei_gateway.sim.mpn import (
    BOTH, CANCELLED, CHANNEL_PAY_METHODS, CONFIRMED, PRELIMINARY, PULL, PUSH, PUSH_FAILED, RESULT_BYTES, RESULTS,
    SLIPS, MpnPersonality, PaymentResult, Plan, check_slip, check_slips, cvs_code, gs1_check_digit, plan_results,
)
from kei_gateway.sim.push_client import PushClient, PushOutcome, push_backoff
from kei_gateway.testing import SynchronousBlocking
from tests.unit.helpers import temporary_directory

TODAY = datetime.date(2026, 11, 20)
NOW = datetime.datetime(2026, 11, 20, 3, 0, tzinfo=datetime.timezone.utc).timestamp()
PUSH_OPTIONS: dict[str, Any] = dict(push_url="https://127.0.0.1:9/push/mpn-results", push_cert="c", push_key="k", push_ca="a")


def slips_file(records: int, seed: int = 5) -> bytes:
    return b"".join(generate_file(get_layout("mpn-slips"), records, seed=seed, today=TODAY))


def slips_of(data: bytes) -> list[bytes]:
    return [data[i:i + 156] for i in range(0, len(data), 158)]


def plan(records: int = 200, name: str = "slips.dat", **options: Any) -> Plan:
    return plan_results(slips_of(slips_file(records)), name, MpnOptions(**options), NOW)


def every_file(p: Plan) -> list[Any]:
    return [f for b in p.batches for f in (b.preliminary, *b.followups)]


def valid_results(data: bytes) -> bool:
    report = validate_bytes(data, get_layout("mpn-results"), ValidationOptions(today=TODAY))
    return report.valid and report.records == len(data) // RESULT_BYTES


class SlipCheckTests(SynchronousTestCase):
    def test_when_the_layout_generator_makes_slips_then_the_independent_check_accepts_them(self) -> None:
        checks = check_slips(slips_file(500))
        self.assertEqual(len(checks), 500)
        self.assertEqual([c for c in checks if not c.valid], [])

    def test_when_a_generated_slip_breaks_a_rule_then_the_check_rejects_it_at_that_field(self) -> None:
        layout = get_layout("mpn-slips")
        first, second = list(generate_file(layout, 2, seed=9, today=TODAY))
        known_gaps = {"payer_name: a 外字 (①)"}  # the JIS X 0208 repertoire is not checked (docstring)
        for way in violations(layout, TODAY):
            if way.description in known_gaps:
                continue
            with self.subTest(way=way.description):
                broken = way.apply(second, first)
                checks = check_slips(first + broken if way.needs_previous else broken)
                problems = checks[-1].problems
                self.assertTrue(problems, way.description)
                self.assertIn(problems[0], (way.key, "duplicate", "encoding"))

    def test_when_records_have_the_wrong_length_or_no_final_crlf_then_they_are_rejected(self) -> None:
        data = slips_file(2)
        self.assertEqual(check_slip(data[:155]), ("length",))
        self.assertEqual([c.valid for c in check_slips(data[:-2])], [True, False])
        self.assertEqual(check_slip(b"\x81" + data[1:156]), ("encoding",))
        self.assertEqual(check_slips(b""), [])


class ResultRecordTests(SynchronousTestCase):
    def test_when_a_gs1_check_digit_is_computed_then_it_follows_spec_2_5(self) -> None:
        # 9 at position 44 (even: A = 9), 1 at position 43 (odd: B = 1): (10 - 28 mod 10) mod 10 = 2
        self.assertEqual(gs1_check_digit("91" + "0" * 41), 2)
        rng = random.Random(3)
        for _ in range(200):
            body = "91" + "".join(str(rng.randrange(10)) for _ in range(41))
            self.assertEqual(gs1_check_digit(body), layouts_gs1(body))
        code = cvs_code(random.Random(1))
        self.assertEqual((len(code), code[:2], int(code[-1])), (44, "91", gs1_check_digit(code[:-1])))

    def test_when_a_result_is_rendered_then_it_is_258_bytes_with_the_slip_unchanged(self) -> None:
        slip = slips_of(slips_file(1))[0]
        result = PaymentResult(slip, 1200, 34, "01", "20261120120000", PRELIMINARY, "05", "0000", "000",
                               cvs_code(random.Random(2)))
        data = result.render()
        self.assertEqual(len(data), RESULT_BYTES)
        self.assertEqual(data[:156], slip)
        self.assertEqual(data[156:186], b"0000001234" + b"0000001200" + b"0000000034")
        self.assertEqual(data[186:212], b"01" + b"20261120120000" + b"1" + b"05" + b"0000" + b"000")
        self.assertTrue(data.endswith(b"\r\n"))
        self.assertTrue(valid_results(data))
        self.assertEqual(result.identity[4:], ("05", "20261120120000", "1"))
        self.assertRaises(ValueError, replace(result, channel="123").render)

    def test_when_results_are_planned_then_every_file_validates_with_the_gateways_layout_engine(self) -> None:
        p = plan(300, cancel_share=0.2, mismatch_share=0.2, missing_share=0.1, duplicate_share=0.2, batch_size=40)
        data = b"".join(f.render() for f in every_file(p))
        self.assertTrue(valid_results(data))
        non_cvs = [r for f in every_file(p) for r in f.records if r.channel != "05"]
        self.assertTrue(non_cvs and all(r.render()[212:256] == b" " * 44 for r in non_cvs))


class PlanTests(SynchronousTestCase):
    def test_when_seed_and_name_are_the_same_then_the_plan_is_the_same(self) -> None:
        self.assertEqual(plan(seed=4), plan(seed=4))
        self.assertNotEqual(plan(seed=4), plan(seed=5))
        self.assertNotEqual(plan(seed=4).truth, plan(seed=4, name="other.dat").truth)

    def test_when_results_share_is_set_then_about_that_share_of_slips_is_paid(self) -> None:
        self.assertEqual(plan(results_share=0.0).batches, ())
        self.assertEqual(len(plan(500, results_share=1.0).truth.confirmed), 500)
        paid = sum(len(b.preliminary.records) for b in plan(1000, results_share=0.3).batches)
        self.assertTrue(240 < paid < 360, paid)

    def test_when_many_slips_are_paid_then_channels_and_pay_methods_spread_over_the_code_lists(self) -> None:
        records = [r for r in plan(500).batches[0].preliminary.records] + [
            r for b in plan(500).batches[1:] for r in b.preliminary.records]
        self.assertEqual({r.channel for r in records}, set(CHANNEL_PAY_METHODS))
        self.assertEqual({r.pay_method for r in records}, {"01", "02", "03", "04", "05"})
        for r in records:
            self.assertIn(r.pay_method, CHANNEL_PAY_METHODS[r.channel])
            self.assertEqual(r.bank_code == "0000", r.channel not in {"01", "02", "03", "04"})
            self.assertEqual(r.cvs_code != "", r.channel == "05")

    def test_when_batch_size_is_set_then_速報_come_in_files_of_that_size(self) -> None:
        p = plan(250, batch_size=100)
        self.assertEqual([len(b.preliminary.records) for b in p.batches], [100, 100, 50])
        self.assertEqual([b.preliminary.name for b in p.batches],
                         ["slips.dat.sokuho-001", "slips.dat.sokuho-002", "slips.dat.sokuho-003"])
        self.assertEqual({b.preliminary.kind for b in p.batches}, {PRELIMINARY})
        self.assertEqual([[f.name for f in b.followups] for b in p.batches][0], ["slips.dat.kakuho-001"])

    def test_when_every_速報_is_cancelled_then_取消_files_replace_the_確報(self) -> None:
        p = plan(50, cancel_share=1.0)
        kinds = Counter(f.kind for f in every_file(p))
        self.assertEqual(kinds, Counter({PRELIMINARY: 1, CANCELLED: 1}))
        self.assertEqual(len(p.truth.cancelled), 50)
        self.assertEqual(p.truth.confirmed, frozenset())
        [cancellation] = p.batches[0].followups
        for sokuho, torikeshi in zip(p.batches[0].preliminary.records, cancellation.records):
            self.assertEqual(torikeshi.identity[:6], sokuho.identity[:6])
            self.assertEqual(torikeshi.render()[:202], sokuho.render()[:202])

    def test_when_amounts_mismatch_then_the_確報_has_the_same_identity_and_another_amount(self) -> None:
        p = plan(50, mismatch_share=1.0)
        [confirmation] = p.batches[0].followups
        self.assertEqual(confirmation.kind, CONFIRMED)
        self.assertEqual(len(p.truth.mismatched), 50)
        for sokuho, kakuho in zip(p.batches[0].preliminary.records, confirmation.records):
            self.assertEqual(kakuho.identity[:6], sokuho.identity[:6])
            self.assertEqual(kakuho.render()[:156], sokuho.render()[:156])
            self.assertNotEqual(kakuho.render()[156:166], sokuho.render()[156:166])
        self.assertTrue(valid_results(confirmation.render()))

    def test_when_確報_are_missing_then_no_followups_and_the_速報_are_unconfirmed(self) -> None:
        p = plan(50, missing_share=1.0)
        self.assertEqual(p.batches[0].followups, ())
        self.assertEqual(len(p.truth.unconfirmed), 50)
        self.assertEqual(len(p.truth.results), 50)

    def test_when_every_速報_is_duplicated_then_it_is_repeated_in_the_next_file_and_not_a_new_result(self) -> None:
        p = plan(30, duplicate_share=1.0, batch_size=20)
        self.assertEqual([len(b.preliminary.records) for b in p.batches], [20, 20 + 10, 10])
        self.assertEqual(p.batches[1].preliminary.records[:20], p.batches[0].preliminary.records)
        self.assertEqual(p.batches[2].followups, ())  # the extra batch only repeats
        self.assertEqual(p.truth.duplicates, 30)
        self.assertEqual(len(p.truth.results), 60)  # 30 速報 + 30 確報

    def test_when_delivery_shares_are_set_then_files_are_pushed_pulled_or_both(self) -> None:
        self.assertEqual({b.preliminary.delivery for b in plan(200, batch_size=10).batches}, {PULL})
        spread = Counter(b.preliminary.delivery for b in plan(
            1000, batch_size=10, push_share=0.3, both_share=0.3, **PUSH_OPTIONS).batches)
        self.assertEqual(set(spread), {PUSH, PULL, BOTH})
        pushed = plan(100, batch_size=10, push_share=1.0, push_confirmations=True, **PUSH_OPTIONS)
        self.assertEqual({f.delivery for b in pushed.batches for f in b.followups}, {BOTH})

    def test_when_the_slips_differ_then_the_deliveries_are_the_same(self) -> None:
        options = MpnOptions(batch_size=10, push_share=0.3, both_share=0.3, repeat_push_share=0.5,
                             mismatch_share=0.5, **PUSH_OPTIONS)

        def deliveries(seed: int) -> list[tuple[str, bool]]:
            p = plan_results(slips_of(slips_file(100, seed=seed)), "slips.dat", options, NOW)
            return [(b.preliminary.delivery, b.preliminary.repeat_push) for b in p.batches[:8]]

        self.assertEqual(deliveries(5), deliveries(6))
        self.assertNotEqual(slips_file(100, seed=5), slips_file(100, seed=6))

    def test_when_options_are_inconsistent_then_they_are_refused(self) -> None:
        for bad in (dict(push_share=0.6, both_share=0.6, **PUSH_OPTIONS), dict(cancel_share=0.5, missing_share=0.6),
                    dict(push_share=0.1), dict(push_url="https://x/"), dict(batch_size=0),
                    dict(results_share=1.5), dict(confirm_after=-1)):
            with self.subTest(bad=bad):
                self.assertRaises(ValueError, MpnOptions, **bad)


class FakePusher:
    """Answers each push with the next of *outcomes* (True: delivered, False: failed after retries)."""

    def __init__(self, *outcomes: bool) -> None:
        self.outcomes = list(outcomes)
        self.pushed: list[tuple[str, bytes]] = []

    def push(self, name: str, data: bytes) -> Deferred[PushOutcome]:
        self.pushed.append((name, data))
        ok = self.outcomes.pop(0) if self.outcomes else True
        statuses = ("204",) if any(n == name for n, _ in self.pushed[:-1]) else ("201",) if ok else ("503",) * 3
        return defer.succeed(PushOutcome(name, f"https://gw/push/{name}", statuses, ok))


class PersonalityTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.base = temporary_directory(self)
        self.store = DavStore(self.base, (SLIPS, RESULTS))
        self.clock = task.Clock()
        self.clock.advance(NOW)

    def personality(self, pusher: FakePusher | None = None, report: str | None = None,
                    **options: Any) -> MpnPersonality:
        if pusher is not None:
            options = {**PUSH_OPTIONS, **options}
        return MpnPersonality(self.store, self.clock, SynchronousBlocking(), MpnOptions(**options), pusher, report)

    def upload(self, mpn: MpnPersonality, name: str, data: bytes) -> None:
        self.store.write_bytes(DavPath(SLIPS, name), data)
        mpn.on_stored(DavPath(SLIPS, name))

    def results(self) -> list[str]:
        return sorted(os.listdir(os.path.join(self.base, RESULTS)))

    def test_when_slips_arrive_then_速報_come_first_and_確報_only_after_confirm_after(self) -> None:
        mpn = self.personality(confirm_after=600, batch_size=10)
        self.upload(mpn, "s.dat", slips_file(15))
        self.clock.advance(0)
        self.assertEqual(self.results(), ["s.dat.sokuho-001", "s.dat.sokuho-002"])
        self.assertFalse(mpn.idle)
        self.clock.advance(599)
        self.assertEqual(len(self.results()), 2)
        self.clock.advance(1)
        self.assertEqual(self.results(), ["s.dat.kakuho-001", "s.dat.kakuho-002", "s.dat.sokuho-001",
                                          "s.dat.sokuho-002"])
        self.assertTrue(mpn.idle)
        self.assertEqual([(p.name, p.kind, p.records, p.delivery) for p in mpn.produced], [
            ("s.dat.sokuho-001", PRELIMINARY, 10, PULL), ("s.dat.sokuho-002", PRELIMINARY, 5, PULL),
            ("s.dat.kakuho-001", CONFIRMED, 10, PULL), ("s.dat.kakuho-002", CONFIRMED, 5, PULL)])
        self.assertEqual(len(mpn.truth.results), 30)
        data = b"".join((self.store.root / RESULTS / n).read_bytes() for n in self.results())
        self.assertTrue(valid_results(data))

    def test_when_batch_interval_is_set_then_速報_files_are_that_far_apart(self) -> None:
        mpn = self.personality(batch_size=10, batch_interval=60, confirm_after=1000)
        self.upload(mpn, "s.dat", slips_file(25))
        self.clock.advance(0)
        self.assertEqual(self.results(), ["s.dat.sokuho-001"])
        self.clock.advance(60)
        self.assertEqual(self.results(), ["s.dat.sokuho-001", "s.dat.sokuho-002"])

    def test_when_a_batch_is_pushed_only_then_it_is_not_left_in_results(self) -> None:
        pusher = FakePusher()
        mpn = self.personality(pusher, push_share=1.0, missing_share=1.0)
        self.upload(mpn, "s.dat", slips_file(5))
        self.clock.advance(0)
        self.assertEqual(self.results(), [])
        self.assertEqual([n for n, _ in pusher.pushed], ["s.dat.sokuho-001"])
        self.assertTrue(valid_results(pusher.pushed[0][1]))
        self.assertEqual(mpn.produced[0].delivery, PUSH)
        self.assertEqual(mpn.push_statuses, Counter({"201": 1}))

    def test_when_a_push_keeps_failing_then_the_file_is_left_in_results_for_pull(self) -> None:
        pusher = FakePusher(False)
        mpn = self.personality(pusher, push_share=1.0, missing_share=1.0)
        self.upload(mpn, "s.dat", slips_file(5))
        self.clock.advance(0)
        self.assertEqual(self.results(), ["s.dat.sokuho-001"])
        self.assertEqual(mpn.produced[0].delivery, PUSH_FAILED)
        self.assertEqual((self.store.root / RESULTS / "s.dat.sokuho-001").read_bytes(), pusher.pushed[0][1])
        self.assertEqual(mpn.push_statuses, Counter({"503": 3}))

    def test_when_a_batch_goes_both_ways_then_the_same_bytes_are_pushed_and_left_in_results(self) -> None:
        pusher = FakePusher()
        mpn = self.personality(pusher, both_share=1.0, push_confirmations=True)
        self.upload(mpn, "s.dat", slips_file(5))
        self.clock.advance(0)
        self.assertEqual(self.results(), ["s.dat.kakuho-001", "s.dat.sokuho-001"])
        pushed = dict(pusher.pushed)
        for name in self.results():
            self.assertEqual(pushed[name], (self.store.root / RESULTS / name).read_bytes())
        self.assertEqual({p.delivery for p in mpn.produced}, {BOTH})

    def test_when_repeat_push_is_set_then_the_same_file_is_put_again_and_answered_204(self) -> None:
        pusher = FakePusher()
        mpn = self.personality(pusher, push_share=1.0, repeat_push_share=1.0, missing_share=1.0)
        self.upload(mpn, "s.dat", slips_file(5))
        self.clock.advance(0)
        self.assertEqual([n for n, _ in pusher.pushed], ["s.dat.sokuho-001"] * 2)
        self.assertEqual(pusher.pushed[0][1], pusher.pushed[1][1])
        self.assertEqual(mpn.push_statuses, Counter({"201": 1, "204": 1}))

    def test_when_a_slips_file_has_a_broken_record_then_it_gets_no_results(self) -> None:
        mpn = self.personality()
        data = slips_file(3)
        self.upload(mpn, "bad.dat", data[:158] + b"9" + data[159:])  # 税目 "95"
        self.clock.advance(0)
        self.assertEqual(self.results(), [])
        [receipt] = mpn.slips
        self.assertEqual((receipt.records, receipt.rejected, receipt.results), (3, 1, 0))
        self.assertTrue(mpn.idle)

    def test_when_part_files_or_a_repeated_name_are_stored_then_they_are_ignored(self) -> None:
        mpn = self.personality()
        self.upload(mpn, "s.dat.part", slips_file(3))
        self.assertEqual(mpn.slips, [])
        self.upload(mpn, "s.dat", slips_file(3))
        self.upload(mpn, "s.dat", slips_file(3))
        self.clock.advance(0)
        self.assertEqual(len(mpn.slips), 1)

    def test_when_everything_is_delivered_then_the_report_holds_produced_files_and_the_truth(self) -> None:
        report = os.path.join(self.base, "report.json")
        mpn = self.personality(report=report, cancel_share=0.5, seed=2)
        self.upload(mpn, "s.dat", slips_file(20))
        self.assertFalse(os.path.exists(report))
        self.clock.advance(0)
        with open(report, encoding="utf-8") as f:
            written = json.load(f)
        self.assertEqual(written["pending"], 0)
        self.assertEqual([p["name"] for p in written["produced"]], [p.name for p in mpn.produced])
        self.assertEqual(len(written["truth"]["results"]), len(mpn.truth.results))
        self.assertEqual(len(written["truth"]["cancelled"]) + len(written["truth"]["confirmed"]), 20)

    def test_when_the_simulator_stops_then_pending_deliveries_are_cancelled(self) -> None:
        mpn = self.personality(confirm_after=600)
        self.upload(mpn, "s.dat", slips_file(3))
        self.clock.advance(0)
        mpn.stop()
        self.clock.advance(600)
        self.assertEqual(self.results(), ["s.dat.sokuho-001"])

    def test_when_options_push_but_no_client_is_given_then_the_personality_refuses(self) -> None:
        self.assertRaises(ValueError, MpnPersonality, self.store, self.clock, SynchronousBlocking(),
                          MpnOptions(push_share=1.0, **PUSH_OPTIONS), None)


class FakeResponse:
    def __init__(self, code: int, headers: dict[bytes, list[bytes]] | None = None) -> None:
        self.code = code
        self.headers = Headers(headers or {})

    def deliverBody(self, protocol: Any) -> None:
        protocol.dataReceived(b"body")
        protocol.connectionLost(Failure(ResponseDone()))


class FakeAgent:
    """Answers requests with the next of *answers*: a FakeResponse or an exception."""

    def __init__(self, *answers: Any) -> None:
        self.answers = list(answers)
        self.requests: list[tuple[bytes, bytes, bytes]] = []

    def request(self, method: bytes, uri: bytes, headers: Headers | None = None, body: Any = None) -> Deferred[Any]:
        sink: list[bytes] = []

        class Consumer:
            write = sink.append

        body.startProducing(Consumer())
        self.requests.append((method, uri, b"".join(sink)))
        answer = self.answers.pop(0)
        return defer.fail(answer) if isinstance(answer, Exception) else defer.succeed(answer)


class PushClientTests(SynchronousTestCase):
    def client(self, agent: FakeAgent, clock: task.Clock, attempts: int = 4) -> PushClient:
        return PushClient(clock, "https://gw.example:8443/push/mpn-results/", agent=agent,  # type: ignore[arg-type]
                          attempts=attempts, first_delay=1.0, max_delay=8.0)

    def test_when_the_backoff_is_computed_then_it_doubles_up_to_the_maximum(self) -> None:
        self.assertEqual([push_backoff(n, 1.0, 8.0) for n in range(1, 6)], [1.0, 2.0, 4.0, 8.0, 8.0])
        self.assertEqual(retry_after_seconds(b"7", 0.0), 7.0)
        self.assertEqual(retry_after_seconds(b"Thu, 01 Jan 1970 00:01:40 GMT", 40.0), 60.0)
        self.assertIsNone(retry_after_seconds(b"soon", 0.0))

    def test_when_the_gateway_answers_201_then_the_file_is_put_once_under_its_name(self) -> None:
        agent = FakeAgent(FakeResponse(201))
        outcome = self.successResultOf(self.client(agent, task.Clock()).push("a.sokuho-001", b"data"))
        self.assertEqual(agent.requests, [(b"PUT", b"https://gw.example:8443/push/mpn-results/a.sokuho-001",
                                           b"data")])
        self.assertEqual((outcome.statuses, outcome.delivered), (("201",), True))

    def test_when_the_gateway_answers_503_then_retry_after_is_honoured_before_the_next_attempt(self) -> None:
        clock = task.Clock()
        agent = FakeAgent(FakeResponse(503, {b"retry-after": [b"5"]}), FakeResponse(204))
        d = self.client(agent, clock).push("a", b"x")
        self.assertNoResult(d)
        clock.advance(4.9)
        self.assertEqual(len(agent.requests), 1)
        clock.advance(0.1)
        outcome = self.successResultOf(d)
        self.assertEqual((outcome.statuses, outcome.delivered), (("503", "204"), True))

    def test_when_connections_keep_failing_then_it_gives_up_after_the_attempts(self) -> None:
        clock = task.Clock()
        agent = FakeAgent(*(ConnectionRefusedError() for _ in range(3)))
        d = self.client(agent, clock, attempts=3).push("a", b"x")
        clock.advance(1.0)
        self.assertNoResult(d)
        clock.advance(2.0)
        outcome = self.successResultOf(d)
        self.assertEqual(outcome.statuses, ("error:ConnectionRefusedError",) * 3)
        self.assertFalse(outcome.delivered)

    def test_when_the_gateway_refuses_with_another_status_then_there_is_no_retry(self) -> None:
        agent = FakeAgent(FakeResponse(409))
        outcome = self.successResultOf(self.client(agent, task.Clock()).push("a", b"x"))
        self.assertEqual((outcome.statuses, outcome.delivered), (("409",), False))


class StartTests(SynchronousTestCase):
    def test_when_started_then_it_listens_with_mutual_tls_and_serves_slips_and_results(self) -> None:
        base = temporary_directory(self)
        ca = pki.make_ca("unit CA")
        server = pki.issue(ca, "unit server", client=False)
        paths = {n: os.path.join(base, n) for n in ("ca.pem", "server.crt", "server.key")}
        with open(paths["ca.pem"], "wb") as f:
            f.write(ca.certificate_pem())
        with open(paths["server.crt"], "wb") as f:
            f.write(server.certificate_pem() + ca.certificate_pem())
        pki.write_secret(paths["server.key"], server.key_pem())
        reactor = MemoryReactorClock()
        d = start_mpn_simulator(reactor, "127.0.0.1:8444", os.path.join(base, "root"), paths["server.crt"],
                                paths["server.key"], paths["ca.pem"], options=MpnOptions(seed=3),
                                blocking=SynchronousBlocking())
        running: RunningSim = self.successResultOf(d)
        [(port, _, contexts, _, interface)] = reactor.sslServers
        self.assertEqual((port, interface, running.url), (8444, "127.0.0.1", "https://127.0.0.1:8444/"))
        self.assertTrue(os.path.isdir(os.path.join(base, "root", "slips")))
        self.assertTrue(os.path.isdir(os.path.join(base, "root", "results")))
        self.assertEqual(running.personality.options.seed, 3)
        self.assertEqual(contexts.serverConnectionForTLS(None).get_context().get_verify_mode() & 0x3, 0x3)
        self.successResultOf(running.stop())

    def test_when_the_push_files_are_missing_then_the_deferred_fails(self) -> None:
        base = temporary_directory(self)
        d = start_mpn_simulator(MemoryReactorClock(), "127.0.0.1:0", base, os.path.join(base, "none"),
                                os.path.join(base, "none"), os.path.join(base, "none"),
                                options=MpnOptions(push_share=1.0, **PUSH_OPTIONS))
        self.failureResultOf(d, OSError)


class CommandTests(SynchronousTestCase):
    def test_when_a_push_share_is_given_without_a_push_url_then_the_command_exits_2_and_says_so(self) -> None:
        import contextlib
        import io

        from kei_gateway.cli.main import main

        err = io.StringIO()
        with contextlib.redirect_stderr(err):
            code = main(["sim", "mpn", "--root", temporary_directory(self), "--make-pki",
                         os.path.join(temporary_directory(self), "pki"), "--push-share", "0.5"])
        self.assertEqual(code, 2)
        self.assertIn("need push-url", err.getvalue())

    def test_when_mpn_options_are_parsed_then_they_reach_the_arguments(self) -> None:
        from kei_gateway.cli.main import build_parser

        args = build_parser("sim").parse_args(
            ["sim", "mpn", "--root", "r", "--both-share", "0.25", "--confirm-after", "30", "--batch-size", "7",
             "--push-confirmations"])
        self.assertEqual((args.both_share, args.confirm_after, args.batch_size, args.push_confirmations),
                         (0.25, 30.0, 7, True))
        self.assertRaises(SystemExit, build_parser("sim").parse_args, ["sim", "mpn", "--root", "r",
                                                                        "--batch-size", "0"])
