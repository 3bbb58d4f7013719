"""The allow-list guard and the metrics/health resources."""

from __future__ import annotations

import ipaddress
import json

from prometheus_client import CollectorRegistry
from twisted.internet import defer, task
from twisted.internet.address import IPv4Address, IPv6Address
from twisted.internet.protocol import Factory, Protocol
from twisted.trial.unittest import SynchronousTestCase
from twisted.web.test.requesthelper import DummyRequest

from kei_gateway.core.allowlist import address_allowed
from kei_gateway.runtime.health import HealthChecks
from kei_gateway.runtime.listeners import AllowListFactory, HealthResource, MetricsResource
from kei_gateway.runtime.metrics import GatewayMetrics, exposition
from tests.unit.helpers import temporary_directory
from kei_gateway.testing import SynchronousBlocking

LOOPBACK = (ipaddress.ip_network("127.0.0.1/32"), ipaddress.ip_network("::1/128"))


class AllowListTests(SynchronousTestCase):
    def test_when_addresses_are_checked_then_mapped_ipv6_and_garbage_are_handled(self) -> None:
        self.assertTrue(address_allowed("127.0.0.1", LOOPBACK))
        self.assertTrue(address_allowed("::ffff:127.0.0.1", LOOPBACK))
        self.assertTrue(address_allowed("::1", LOOPBACK))
        self.assertFalse(address_allowed("127.0.0.2", LOOPBACK))
        self.assertFalse(address_allowed("/run/socket", LOOPBACK))
        self.assertFalse(address_allowed("10.0.0.1", ()))

    def test_when_a_connection_comes_from_outside_then_no_protocol_is_built_and_it_is_counted(self) -> None:
        denied: list[tuple[str, str]] = []
        allow = [LOOPBACK]
        factory = AllowListFactory(Factory.forProtocol(Protocol), "metrics", lambda: allow[0],
                                   lambda listener, source: denied.append((listener, source)))
        self.assertIsNone(factory.buildProtocol(IPv4Address("TCP", "127.0.0.2", 5555)))
        self.assertIsInstance(factory.buildProtocol(IPv4Address("TCP", "127.0.0.1", 5555)), Protocol)
        self.assertIsInstance(factory.buildProtocol(IPv6Address("TCP", "::1", 5555)), Protocol)
        self.assertEqual(denied, [("metrics", "127.0.0.2")])
        allow[0] = (ipaddress.ip_network("127.0.0.0/8"),)  # a reload widens the list
        self.assertIsInstance(factory.buildProtocol(IPv4Address("TCP", "127.0.0.2", 5555)), Protocol)


class ResourceTests(SynchronousTestCase):
    def render(self, resource: object) -> DummyRequest:
        request = DummyRequest([b""])
        resource.render_GET(request)  # type: ignore[attr-defined]
        return request

    def test_when_metrics_are_scraped_then_the_text_exposition_is_served(self) -> None:
        registry = CollectorRegistry()
        metrics = GatewayMetrics(registry, process=False)
        metrics.denied_connections.labels(listener="metrics", reason="address").inc()
        request = DummyRequest([b""])
        body = MetricsResource(registry).render_GET(request)
        self.assertIn(b'kei_gateway_denied_connections_total{listener="metrics",reason="address"} 1.0', body)
        self.assertIn(b'kei_gateway_build_info{version="', body)
        self.assertEqual(body, exposition(registry))
        self.assertNotIn(b"_created", body)

    def test_when_every_check_passes_then_healthz_is_200_with_json(self) -> None:
        checks = HealthChecks(task.Clock(), SynchronousBlocking(), lambda: None, temporary_directory(self))
        request = self.render(HealthResource(checks.healthz))
        self.assertEqual(request.responseCode, 200)
        body = json.loads(b"".join(request.written))
        self.assertEqual(body["status"], "ok")
        self.assertEqual(set(body["checks"]), {"process", "database", "store"})

    def test_when_the_database_fails_then_healthz_is_503_and_names_it(self) -> None:
        def broken() -> None:
            raise RuntimeError("unable to open database file")

        checks = HealthChecks(task.Clock(), SynchronousBlocking(), broken, temporary_directory(self))
        request = self.render(HealthResource(checks.healthz))
        self.assertEqual(request.responseCode, 503)
        body = json.loads(b"".join(request.written))
        self.assertEqual(body["checks"]["database"], {"ok": False, "detail": "unable to open database file"})

    def test_when_the_database_hangs_then_the_check_times_out_as_failed(self) -> None:
        clock = task.Clock()

        class Hanging:
            def run(self, f: object, *args: object) -> defer.Deferred[None]:
                return defer.Deferred()

        checks = HealthChecks(clock, Hanging(), lambda: None, temporary_directory(self), timeout=5)
        request = DummyRequest([b""])
        HealthResource(checks.healthz).render_GET(request)
        self.assertEqual(request.finished, 0)
        clock.advance(5)
        self.assertEqual(request.responseCode, 503)
        body = json.loads(b"".join(request.written))
        self.assertEqual(body["checks"]["database"]["detail"], "no answer within 5s")

    def test_when_a_readiness_check_fails_then_readyz_is_503_but_healthz_is_200(self) -> None:
        from kei_gateway.runtime.health import CheckResult

        checks = HealthChecks(task.Clock(), SynchronousBlocking(), lambda: None, temporary_directory(self))
        checks.readiness_checks.append(lambda: CheckResult("certificate", False, "expired"))
        self.assertEqual(self.render(HealthResource(checks.healthz)).responseCode, 200)
        self.assertEqual(self.render(HealthResource(checks.readyz)).responseCode, 503)


class DescribeErrorTests(SynchronousTestCase):
    def test_when_a_library_error_quotes_data_then_only_its_type_reaches_the_log(self) -> None:
        from kei_gateway.runtime.events import describe_error

        self.assertEqual(describe_error(ValueError("invalid literal for int(): 'ダミー 太郎'")), "ValueError")
        self.assertEqual(describe_error(FileNotFoundError(2, "No such file or directory", "/x/y")),
                         "FileNotFoundError: No such file or directory (/x/y)")
        # A name outside the spool pattern (here a person's name, or undecodable CP932) is withheld.
        for name in ("/spool/outbox/jnks/ダミー太郎.dat", b"/spool/outbox/jnks/\x83_\x83~.dat"):
            text = describe_error(PermissionError(13, "Permission denied", name))
            self.assertEqual(text, "PermissionError: Permission denied (/spool/outbox/jnks/<name withheld>)")

    def test_when_a_database_error_carries_sql_parameters_then_they_are_left_out(self) -> None:
        from sqlalchemy.exc import OperationalError

        from kei_gateway.runtime.events import describe_error

        error = OperationalError("INSERT INTO t VALUES (?)", ("ダミー 太郎",), Exception("database is locked"))
        text = describe_error(error)
        self.assertEqual(text, "OperationalError: Exception: database is locked")
        self.assertNotIn("ダミー", text)


class PerSourceLimitTests(SynchronousTestCase):
    def test_when_one_source_opens_more_than_the_limit_then_the_extra_is_refused_and_others_still_connect(
            self) -> None:
        from twisted.internet.testing import StringTransport

        from kei_gateway.runtime.listeners import PerSourceLimit

        refused: list[tuple[str, int]] = []
        limit = [2]
        factory = PerSourceLimit(Factory.forProtocol(Protocol), lambda: limit[0],
                                 lambda source, most: refused.append((source, most)))
        hostile = IPv4Address("TCP", "10.0.0.1", 5555)
        opened = []
        for _ in range(2):
            protocol = factory.buildProtocol(hostile)
            assert protocol is not None
            protocol.makeConnection(StringTransport(peerAddress=hostile))
            opened.append(protocol)
        self.assertIsNone(factory.buildProtocol(hostile))
        self.assertEqual(refused, [("10.0.0.1", 2)])
        self.assertIsNotNone(factory.buildProtocol(IPv4Address("TCP", "10.0.0.2", 5555)))
        opened[0].connectionLost(None)  # type: ignore[arg-type]  # one closes: the source may open one more
        self.assertIsNotNone(factory.buildProtocol(hostile))
        opened[1].connectionLost(None)  # type: ignore[arg-type]
        self.assertEqual(dict(factory.open_by_source), {"10.0.0.2": 1, "10.0.0.1": 1})


class BurstLogTests(SynchronousTestCase):
    def test_when_refusals_repeat_then_the_first_is_logged_at_once_and_the_rest_as_one_summary(self) -> None:
        from twisted.logger import globalLogPublisher

        from kei_gateway.runtime import events
        from kei_gateway.runtime.bursts import BurstLog

        logged: list[dict[str, object]] = []
        globalLogPublisher.addObserver(logged.append)
        self.addCleanup(globalLogPublisher.removeObserver, logged.append)
        clock = task.Clock()
        bursts = BurstLog(clock, window=60.0, max_bursts=2)

        def refuse(source: str, reason: str = "slow_body") -> bool:
            return bursts.refused(events.PUSH_REFUSED, listener="push", source=source, reason=reason,
                                  fields={"status": 408, "detail": "slow", "peer": "mpn"})

        self.assertEqual([refuse("10.0.0.1") for _ in range(50)], [True] + [False] * 49)
        self.assertTrue(refuse("10.0.0.2"))
        self.assertTrue(refuse("10.0.0.3"))  # over max_bursts: one shared burst, source "(many)"
        self.assertFalse(refuse("10.0.0.4"))
        kinds = [(e["kei_event"], e["source"]) for e in logged if "kei_event" in e]
        self.assertEqual(kinds, [("push.refused", "10.0.0.1"), ("push.refused", "10.0.0.2"),
                                 ("push.refused", "10.0.0.3")])  # the first of the shared burst, as it came
        clock.advance(60)
        summaries = [(e["source"], e["count"], e["reason"]) for e in logged
                     if e.get("kei_event") == "listener.refusals_repeated"]
        self.assertEqual(sorted(summaries), [("(many)", 1, "slow_body"), ("10.0.0.1", 49, "slow_body")])
        self.assertTrue(refuse("10.0.0.1"), "a new burst starts after the window")
        bursts.flush()
        self.assertEqual(clock.getDelayedCalls(), [])
