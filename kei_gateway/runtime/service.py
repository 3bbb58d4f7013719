"""The composition root: :func:`make_service` builds the whole service tree from a config."""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from datetime import datetime, timezone
from functools import partial
from typing import Any, cast

from prometheus_client import CollectorRegistry
from twisted.application import service
from twisted.application.internet import TimerService
from twisted.internet import defer
from twisted.internet.endpoints import TCP4ServerEndpoint, TCP6ServerEndpoint
from twisted.internet.interfaces import IListeningPort, IStreamServerEndpoint
from twisted.internet.protocol import Factory
from twisted.logger import Logger
from twisted.python.threadpool import ThreadPool

from kei_gateway.adapters.ledger import Ledger, TransferLedger
from kei_gateway.adapters.ledger.db import is_database_failure
from kei_gateway.adapters.ledger.results import ResultLedger
from kei_gateway.adapters.ports import TransferLedgerPort
from kei_gateway.adapters.store.blobs import BlobStore
from kei_gateway.adapters.transport import WebDavClient
from kei_gateway.config import INBOUND_FLOWS, LOCAL_FLOWS, OUTBOUND_FLOWS, Config, HostPort, load_config, restart_needed
from kei_gateway.core.results import ResultKeyer
from kei_gateway.core.lease import LeaseKind
from kei_gateway.core.transfer import longest_wait
from kei_gateway.flows.dependencies import FlowDependencies
from kei_gateway.flows.inbound.build import build_inbound_flow, build_push_listener
from kei_gateway.flows.inbound.downloads import DownloadPoller
from kei_gateway.flows.inbound.mpn_results import ResultRelay, orphan_age
from kei_gateway.flows.inbound.push_routing import DENIAL_REASONS
from kei_gateway.flows.inbound.receipts import ReceiptRecorder
from kei_gateway.flows.inbound.relay import InboxRelay, Relay
from kei_gateway.flows.outbound.build import build_outbound_flow
from kei_gateway.flows.outbound.held import HeldWatch
from kei_gateway.flows.outbound.sender import SEND_POLL_INTERVAL, UploadSender
from kei_gateway.operations.audit import AuditLog
from kei_gateway.operations.audit.observer import VERIFY_INTERVAL, AuditObserver, verify_now
from kei_gateway.operations.audit.operator_action import record_from_fields
from kei_gateway.operations.audit.log import DAEMON_ACTOR
from kei_gateway.operations.audit.spool import AuditSpool
from kei_gateway.operations.certificates import CertificateWatch
from kei_gateway.operations.purge.execute import append_input_erasures, reports_directory
from kei_gateway.operations.status import StatusLine
from kei_gateway.runtime import events
from kei_gateway.runtime.blocking import Blocking, ThreadPoolBlocking
from kei_gateway.runtime.health import HealthChecks
from kei_gateway.runtime.listeners import AllowListFactory, metrics_site
from kei_gateway.runtime.leases import NodeIdentity, NodeLeases
from kei_gateway.runtime.metrics import GatewayMetrics
from kei_gateway.runtime.reload_outcome import ReloadOutcome, outcome_path, write_outcome
from kei_gateway.runtime.sdnotify import Notifier, Watchdog, reloading_message
from kei_gateway.runtime.timeline import TIMELINE, GcWatch, StallWatch

__all__ = ["make_service", "GatewayService", "ListenerService"]


def server_endpoint(reactor: Any, address: HostPort) -> IStreamServerEndpoint:
    if ":" in address.host:
        return TCP6ServerEndpoint(reactor, address.port, interface=address.host)
    return TCP4ServerEndpoint(reactor, address.port, interface=address.host)


class ListenerService(service.Service):
    """Listens on an endpoint while running; :attr:`listening` fires with the port."""

    def __init__(self, name: str, endpoint: IStreamServerEndpoint, factory: Factory) -> None:
        self.setName(name)
        self._endpoint = endpoint
        self._factory = factory
        self.port: IListeningPort | None = None
        self.listening: defer.Deferred[IListeningPort] = defer.Deferred()

    def startService(self) -> None:
        super().startService()

        def bound(port: IListeningPort) -> IListeningPort:
            self.port = port
            return port

        d = self._endpoint.listen(self._factory)
        d.addCallback(bound)
        d.chainDeferred(self.listening)

    def stopService(self) -> defer.Deferred[None] | None:
        super().stopService()
        if self.port is not None:
            port, self.port = self.port, None
            return defer.maybeDeferred(port.stopListening)  # type: ignore[call-overload, no-any-return]
        return None

    def bound_address(self) -> str:
        if self.port is None:
            return "(not bound)"
        host = self.port.getHost()
        return str(HostPort(getattr(host, "host", "?"), getattr(host, "port", 0)))


class GatewayService(service.MultiService):
    """The running gateway: its service tree and its live configuration.

    :attr:`ready` fires (with the bound listener addresses) once every listener is
    bound; only then is ``READY=1`` sent.
    """

    log = Logger()

    def __init__(self, config: Config, clock: Any, ledger: Ledger, blocking: Blocking,
                 metrics: GatewayMetrics, notifier: Notifier, environ: Mapping[str, str],
                 on_log_level: Callable[[str], None]) -> None:
        super().__init__()
        self.config = config
        self.clock = clock
        self.ledger = ledger
        self.blocking = blocking
        self.metrics = metrics
        self.notifier = notifier
        self.environ = environ
        self._reload_outcome_path = outcome_path(environ)
        self._reloads = 0
        self.on_log_level = on_log_level
        self.ready: defer.Deferred[list[str]] = defer.Deferred()
        self.listeners: list[ListenerService] = []
        self.health = HealthChecks(clock, blocking, ledger.ping, os.path.join(config.gateway.state_dir, "store"))
        self.certificates = CertificateWatch(lambda: self.config, clock, blocking, metrics, environ)
        """Certificate expiry: gauges, warnings and the ``certificate`` readiness check (its own service)."""
        self.certificates.setServiceParent(self)
        self.health.readiness_checks.append(self.certificates.readiness)
        self.status = StatusLine(lambda: self.config, ledger, clock, blocking, metrics, notifier)
        """systemd's STATUS= line and the queue gauges (its own service; :func:`make_service` adds it to the tree)."""
        self.watchdog: Watchdog | None = None
        self.pool: ThreadPool | None = None
        self.intake_pool: ThreadPool | None = None
        """The store writers of pushes and downloads (they wait on the network): kept apart, so
        their waits never hold back the ledger, the health checks or the watchdog's ping."""
        """The blocking-work pool: started first, stopped only after every service has finished."""
        self.senders: list[UploadSender] = []
        self.pollers: list[DownloadPoller] = []
        self.relay: ResultRelay | None = None
        self.audit: AuditObserver | None = None
        self.audit_log: AuditLog | None = None
        self.leases: NodeLeases | None = None
        """This node's leases in a shared ledger (SPEC §14); None for a tree built without a node (tests)."""
        """The audit trail (docs/audit.md): the observer starts writing at start and is flushed last at stop."""
        self.audit_spool: AuditSpool | None = None
        """Where the observer's records wait until chained (they survive kill -9): the daemon's pending file."""

    # -- start and stop ---------------------------------------------------

    def add_listener(self, listener: ListenerService) -> None:
        self.listeners.append(listener)
        listener.setServiceParent(self)

    def startService(self) -> None:
        for pool in (self.pool, self.intake_pool):
            if pool is not None:
                pool.start()
        if self.audit is not None and self.audit_log is not None:
            self.audit.start(self.audit_log, self.blocking, self.metrics, spool=self.audit_spool)
        super().startService()
        # The certificate is read before READY=1, so /readyz and the expiry metric are right from the start.
        waits: list[defer.Deferred[Any]] = [listener.listening for listener in self.listeners]
        bound = defer.gatherResults(waits + [self.certificates.first_check], consumeErrors=True)
        bound.addCallbacks(self._listeners_bound, self._listeners_failed)

    def _listeners_bound(self, _: object) -> None:
        addresses = [f"{listener.name} {listener.bound_address()}" for listener in self.listeners]
        for listener in self.listeners:
            events.emit(self.log, events.LISTENER_BOUND, listener=listener.name, address=listener.bound_address())
        self.notifier.notify("READY=1")
        self.status.update()
        events.emit(self.log, events.DAEMON_READY, listeners=", ".join(addresses), schema=self._schema)
        self.ready.callback(addresses)

    def _listeners_failed(self, failure: Any) -> None:
        error = failure.value
        while isinstance(error, defer.FirstError):
            error = error.subFailure.value
        self.ready.errback(error)

    _schema = "?"

    def stopService(self) -> defer.Deferred[None]:
        self.notifier.notify("STOPPING=1")
        events.emit(self.log, events.DAEMON_STOPPING)
        if self.watchdog is not None:
            self.watchdog.stop()
        stopping = super().stopService
        stopped: defer.Deferred[Any] = defer.maybeDeferred(lambda: stopping())

        def stop_pool(result: object) -> object:
            # Only now: until every service has finished, its last ledger writes still need the pool.
            for pool in (self.intake_pool, self.pool):
                if pool is not None and pool.started:
                    pool.stop()
            return result

        def flush_audit(result: Any) -> Any:
            # After every service has stopped (their last events are queued), before the pool goes.
            if self.audit is None:
                return result
            return self.audit.stop().addBoth(lambda _: result)

        return stopped.addBoth(flush_audit).addBoth(stop_pool)

    # -- reload -----------------------------------------------------------

    def export_queue_age_limits(self) -> None:
        """``kei_gateway_queue_age_limit_seconds{flow}`` of each outbound flow, from its peer's current settings."""
        for sender in self.senders:
            peer = self.config.peers.get(sender.peer)
            if peer is not None:
                self.metrics.queue_age_limit.labels(flow=sender.flow).set(
                    longest_wait(peer.retry, peer.transfer_timeout, SEND_POLL_INTERVAL))

    def reload_from(self, path: str) -> defer.Deferred[bool]:
        """SIGHUP: re-read *path*; apply what can change live, or keep the old config."""
        self.notifier.notify(reloading_message())

        def loaded(new: Config) -> defer.Deferred[bool]:
            def apply(recorded: bool) -> bool:
                self.apply(new, audit_recorded=recorded)
                return True

            return self._record_reload_first(new).addCallback(apply)

        refusal: list[str] = []

        def failed(failure: Any) -> bool:
            reason = failure.getErrorMessage().replace("\n", "; ")
            refusal.append(reason)
            events.emit(self.log, events.CONFIG_RELOAD_FAILED, config_path=path, reason=reason)
            self.status.extra = ". Last reload refused: run 'kei-gateway check-config'"
            return False

        def done(result: bool) -> defer.Deferred[bool] | bool:
            self.notifier.notify("READY=1")
            self.status.update()
            return self._record_reload(result, refusal[0] if refusal else "")

        d = self.blocking.run(load_config, path, self.environ)
        return d.addCallbacks(loaded, failed).addCallback(done)

    def _record_reload_first(self, new: Config) -> defer.Deferred[bool]:
        """Chain ``config.reloaded`` before the new configuration takes effect (issue 11: a kill -9 cannot leave
        a reload without its record); False when there is no audit trail or it cannot be written now (the
        event's record then goes through the observer, whose pending file survives a kill)."""
        if self.audit_log is None:
            return defer.succeed(False)
        audit_log = self.audit_log
        now = datetime.fromtimestamp(self.clock.seconds(), timezone.utc)
        reason = f"changes: {', '.join(describe_changes(self.config, new)) or 'no live changes'}"
        pending = restart_needed(self.config, new)
        if pending:
            reason += f"; after a restart: {', '.join(pending)}"
        record = record_from_fields(events.CONFIG_RELOADED.name, DAEMON_ACTOR, now, {"reason": reason})
        d = self.blocking.run(audit_log.append, record)
        return d.addCallbacks(lambda _: True, lambda failure: False)

    def _record_reload(self, accepted: bool, reason: str) -> defer.Deferred[bool] | bool:
        """Write the verdict where ``kei-gateway reload`` (the unit's ExecReload=) waits for it."""
        if self._reload_outcome_path is None:
            return accepted
        self._reloads += 1
        outcome = ReloadOutcome(os.getpid(), self._reloads, accepted, reason)
        path = self._reload_outcome_path

        def unwritten(failure: Any) -> None:
            self.log.warn("cannot record the reload verdict in {path}: {error}; 'systemctl reload' will time out",
                          path=path, error=failure.getErrorMessage())

        d = self.blocking.run(write_outcome, path, outcome)
        return d.addErrback(unwritten).addCallback(lambda _: accepted)

    def apply(self, new: Config, audit_recorded: bool = False) -> list[str]:
        """Switch to *new*; return the keys that need a restart to take effect.

        *audit_recorded*: ``config.reloaded`` was chained already (:meth:`reload_from`)."""
        old, self.config = self.config, new
        self.status.extra = ""
        self.on_log_level(new.gateway.log_level)
        pending = restart_needed(old, new)
        if pending:
            events.emit(self.log, events.CONFIG_RESTART_NEEDED, keys=", ".join(pending))
        changes = describe_changes(old, new)
        for sender in self.senders:
            sender.resume()  # whatever was paused for a person is tried again with the new settings
        self.export_queue_age_limits()
        events.emit(self.log, events.CONFIG_RELOADED, config_path=new.source, changes=", ".join(changes) or "no live changes",
                    audit_recorded=audit_recorded)
        return pending


def describe_changes(old: Config, new: Config) -> list[str]:
    """What a reload from *old* to *new* applies live, for the log line and the audit record."""
    changes = []
    if old.listeners.metrics.allow != new.listeners.metrics.allow:
        changes.append("metrics allow-list")
    if old.gateway.log_level != new.gateway.log_level:
        changes.append(f"log level {new.gateway.log_level}")
    if dict(old.peers) != dict(new.peers):
        changes.append("peers")
    return changes


class _Relays:
    """The relay of each inbound flow, built on first use and put in the service tree then (one per flow:
    the pull poller and the push listener of ``mpn-results`` share it)."""

    def __init__(self, gateway: GatewayService, ledger: TransferLedgerPort, store: BlobStore, blocking: Blocking,
                 metrics: GatewayMetrics) -> None:
        self.gateway, self.ledger, self.store, self.blocking, self.metrics = gateway, ledger, store, blocking, metrics
        self._relays: dict[str, Relay] = {}

    def relay_for(self, flow: str) -> Relay:
        if flow not in self._relays:
            self._relays[flow] = self._build(flow)
        return self._relays[flow]

    def _build(self, flow: str) -> Relay:
        config, gateway = self.gateway.config, self.gateway
        if flow == "mpn-results":  # payment results: deduplicated result by result first
            keyring = getattr(self.store, "keyring", None)
            if keyring is None:
                raise ValueError("payment results need the store's keyring (their dedupe keys derive from it)")
            settings = config.flows.get(flow)
            inbox = settings.inbox if settings is not None else "inbox/mpn-results"
            ledger = cast(TransferLedger, self.ledger)
            relay = ResultRelay(
                inbox_dir=config.spool_path(inbox), marker=bool(settings and settings.marker),
                lg_code=config.gateway.lg_code, ledger=self.ledger,
                results=ResultLedger(ledger.engine, audit_writer=ledger.audit_writer),
                keyer=ResultKeyer.from_keyring(keyring), store=self.store, blocking=self.blocking,
                clock=gateway.clock, metrics=self.metrics,
                unconfirmed_after=getattr(settings, "unconfirmed_after", 3 * 86400.0),
                orphan_age=orphan_age(ledger.engine.dialect.name, config.database.lease))
            relay.leases = gateway.leases  # its pending pass runs under the flow's relay lease, each file under its own
            gateway.relay = relay
            relay.setServiceParent(gateway)
            return relay
        settings = config.flows[flow]
        after = ReceiptRecorder(self.ledger, self.blocking, self.metrics, gateway.clock) \
            if flow == "jnks-receipts" else None
        inbox_relay = InboxRelay(flow=flow, peer=settings.peer, inbox_dir=config.spool_path(settings.inbox),
                                 marker=settings.marker, ledger=self.ledger, store=self.store, blocking=self.blocking,
                                 clock=gateway.clock, metrics=self.metrics, after=after)
        inbox_relay.leases = gateway.leases  # a relay under a received file's lease ends it
        return inbox_relay


def make_service(config: Config, reactor: Any, ledger: TransferLedger, *, notifier: Notifier,
                 registry: CollectorRegistry | None = None, blocking: Blocking | None = None,
                 environ: Mapping[str, str] = os.environ, watchdog_interval: float | None = None,
                 on_log_level: Callable[[str], None] = lambda level: None, schema: str = "?",
                 store: BlobStore | None = None, use_inotify: bool = True,
                 client_factory: Callable[[Any, Config, str, Blocking], Any] | None = None,
                 audit: AuditObserver | None = None, audit_log: AuditLog | None = None,
                 audit_spool: str | None = None, node: NodeIdentity | None = None) -> GatewayService:
    """Build the gateway's service tree from *config*.

    The caller owns the reactor and the process; everything the tree needs is
    passed in, so tests build it with a fake clock, a synchronous blocking door,
    a recording notifier and their own registry. *audit_spool* is the path of the observer's
    pending file (:mod:`kei_gateway.operations.audit.spool`; the daemon passes it). *node* (SPEC §14) is this
    node as registered in the ledger: its leases are renewed by a service of the tree, and every door claims
    its work with them.

    The order of the children is the order of start (and the reverse of stop): leases first, then the
    listeners and flows, the held watch, the purge, the audit verification, the status line.
    """
    registry = registry if registry is not None else CollectorRegistry()
    metrics = GatewayMetrics(registry)
    pool: ThreadPool | None = None
    intake_pool: ThreadPool | None = None
    if blocking is None:
        pool, blocking, intake_pool, intake_blocking = _thread_pools(reactor)
    else:
        intake_blocking = blocking  # the caller's own door (tests): the tree owns no thread pool
    gateway = GatewayService(config, reactor, ledger, blocking, metrics, notifier, environ, on_log_level)
    gateway._schema = schema
    gateway.pool, gateway.intake_pool = pool, intake_pool
    leases = _node_leases(gateway, node) if node is not None else None
    if audit_log is not None and isinstance(ledger, TransferLedger):
        # An action's audit record is chained in the action's own transaction (issue 11, STYLE 14).
        ledger.audit_writer = audit_log.append_in
    _add_metrics_listener(gateway, registry)

    deps: FlowDependencies | None = None
    if store is not None:
        deps = _flow_dependencies(gateway, ledger, store, intake_blocking, client_factory, use_inotify, leases)
    _add_flows(gateway, deps, leases)
    gateway.export_queue_age_limits()
    if config.listeners.push is not None:
        if deps is None:
            raise ValueError("the push listener needs the encrypted store")
        _add_push_listener(gateway, deps)

    # Controls (issue 6): a HELD transfer waiting more than 24 h is warned about, once a day.
    # Always on (holds made under an earlier config still count); a bare Ledger (tests) has no transfers to list.
    if isinstance(ledger, TransferLedger):
        HeldWatch(ledger, blocking, reactor).setServiceParent(gateway)
    if store is not None and isinstance(ledger, TransferLedger):
        _add_purge(gateway, ledger, store, leases)
    if audit is not None and audit_log is not None:
        _add_audit(gateway, audit, audit_log, audit_spool, leases)
    gateway.status.setServiceParent(gateway)
    if TIMELINE.enabled:  # bench/relay.py only ($KEI_BENCH_TIMELINE)
        _watch_stalls(gateway)
    if watchdog_interval is not None:
        _add_watchdog(gateway, watchdog_interval)
    return gateway


def _thread_pools(reactor: Any) -> tuple[ThreadPool, Blocking, ThreadPool, Blocking]:
    """The daemon's two thread pools and their doors: general blocking work, and the store writers."""
    # Up to 8: an upload takes a reader and a hasher; the ledger, health checks and pollers the rest.
    pool = ThreadPool(minthreads=1, maxthreads=8, name="kei-gateway-blocking")
    # The store writers of pushes and downloads: two of each at once, a writer and a feeder each.
    intake_pool = ThreadPool(minthreads=0, maxthreads=8, name="kei-gateway-intake")
    return pool, ThreadPoolBlocking(reactor, pool), intake_pool, ThreadPoolBlocking(reactor, intake_pool)


def _node_leases(gateway: GatewayService, node: NodeIdentity) -> NodeLeases:
    """This node's leases (SPEC §14): the first child after the certificates, so it stops after every door
    (their last commits need the leases)."""
    leases = NodeLeases(store=node.store, incarnation=node.incarnation, clock=gateway.clock,
                        blocking=gateway.blocking, metrics=gateway.metrics)
    leases.setServiceParent(gateway)
    gateway.leases = leases
    gateway.health.readiness_checks.append(leases.readiness)
    return leases


def _add_metrics_listener(gateway: GatewayService, registry: CollectorRegistry) -> None:
    """``/metrics``, ``/healthz`` and ``/readyz`` behind the metrics allow-list."""
    metrics = gateway.metrics

    def denied(listener: str, source: str) -> None:
        metrics.denied_connections.labels(listener=listener, reason="address").inc()

    site = metrics_site(registry, gateway.health)
    guarded = AllowListFactory(site, "metrics", lambda: gateway.config.listeners.metrics.allow, denied)
    metrics.denied_connections.labels(listener="metrics", reason="address")  # exported as 0 from the start
    gateway.add_listener(ListenerService(
        "metrics", server_endpoint(gateway.clock, gateway.config.listeners.metrics.address), guarded))


def _flow_dependencies(gateway: GatewayService, ledger: TransferLedgerPort, store: BlobStore, intake_blocking: Blocking,
                       client_factory: Callable[[Any, Config, str, Blocking], Any] | None, use_inotify: bool,
                       leases: NodeLeases | None) -> FlowDependencies:
    """The shared pieces every flow builder takes."""
    reactor, blocking, environ = gateway.clock, gateway.blocking, gateway.environ
    if client_factory is None:
        # Controls (issue 6): each verified handshake reports the peer's certificate expiry.
        def client_factory(reactor: Any, config: Config, peer: str, blocking: Blocking) -> Any:
            return WebDavClient.from_config(reactor, config, peer, blocking, environ=environ,
                                            on_certificate=gateway.certificates.peer_certificate_seen)
    factory = client_factory

    def make_client(config: Config, peer: str) -> Any:
        return factory(reactor, config, peer, blocking)

    relays = _Relays(gateway, ledger, store, blocking, gateway.metrics)
    return FlowDependencies(clock=reactor, ledger=ledger, store=store, blocking=blocking,
                            intake_blocking=intake_blocking, metrics=gateway.metrics, environ=environ,
                            make_client=make_client, relay_for=relays.relay_for, status_soon=gateway.status.soon,
                            note_erased=partial(append_input_erasures, reports_directory(gateway.config)),
                            use_inotify=use_inotify, leases=leases)


def _add_flows(gateway: GatewayService, deps: FlowDependencies | None, leases: NodeLeases | None) -> None:
    """Each configured flow, built by its own builder from the config source and the shared dependencies."""
    config = gateway.config

    def source() -> Config:
        return gateway.config

    for kind, flows, build in (("outbound flows", OUTBOUND_FLOWS, build_outbound_flow),
                               ("inbound flows", INBOUND_FLOWS, build_inbound_flow),
                               ("local flows", LOCAL_FLOWS, _build_local_flow)):
        for flow in flows:
            if flow not in config.flows:
                continue
            if deps is None:
                raise ValueError(f"{kind} need the encrypted store")
            for child in build(flow, source, deps):
                if isinstance(child, UploadSender):
                    gateway.senders.append(child)
                elif isinstance(child, DownloadPoller):
                    gateway.pollers.append(child)
                if leases is not None:
                    # Claiming is possible again (first heartbeat, the database back): look for work at once.
                    for door in ("kick", "scan_soon", "poll"):
                        if hasattr(child, door):
                            leases.on_may_claim.append(getattr(child, door))
                child.setServiceParent(gateway)


def _build_local_flow(flow: str, config_source: Callable[[], Any], deps: FlowDependencies) -> list[service.Service]:
    """The AIRIS 突合 flow's builder, imported only when such a flow is configured: its ZIP reader (pyzipper,
    PyCryptodome) and the 突合 stay out of the daemons that do not run it (docs/performance.md, "Daemon
    memory at READY")."""
    from kei_gateway.flows.airis_flow import build_airis_flow

    return build_airis_flow(flow, config_source, deps)


def _add_push_listener(gateway: GatewayService, deps: FlowDependencies) -> None:
    """The push listener (SPEC §5), its refusals exported as 0 from the start."""
    push = build_push_listener(lambda: gateway.config, deps)
    for reason in DENIAL_REASONS:
        gateway.metrics.denied_connections.labels(listener="push", reason=reason)
    address = gateway.config.listeners.push
    assert address is not None
    gateway.add_listener(ListenerService("push", server_endpoint(gateway.clock, address.address), push.factory))


def _add_purge(gateway: GatewayService, ledger: TransferLedger, store: BlobStore, leases: NodeLeases | None) -> None:
    """The daily purge (issue 6, docs/purge.md): at gateway.purge_at JST, and at start when the last run was
    missed. Found by name ("purge"); append to its after_purge list to act after each run (audit verify)."""
    from kei_gateway.operations.purge.service import make_purge_service

    make_purge_service(config=lambda: gateway.config, clock=gateway.clock, engine=ledger.engine, store=store,
                       blocking=gateway.blocking, metrics=gateway.metrics, environ=gateway.environ,
                       leases=leases).setServiceParent(gateway)


def _add_audit(gateway: GatewayService, audit: AuditObserver, audit_log: AuditLog, audit_spool: str | None,
               leases: NodeLeases | None) -> None:
    """The audit trail (issue 6, docs/audit.md): *audit* is already on the log publisher (the entry point
    installs it); here it gets the ledger and the blocking door. The chain is verified at start and after
    each daily purge (kei_gateway_audit_chain_ok); without a purge service, every 24 h; on one node only."""
    gateway.audit, gateway.audit_log = audit, audit_log
    gateway.audit_spool = AuditSpool(audit_spool) if audit_spool is not None else None
    reactor, blocking, metrics = gateway.clock, gateway.blocking, gateway.metrics

    def verify_now_here() -> defer.Deferred[Any]:
        return verify_now(audit_log, blocking, metrics, clock=reactor)

    def verify_audit_chain() -> defer.Deferred[Any]:
        if leases is None:
            return verify_now_here()
        node_leases = leases

        def claimed(fence: Any) -> Any:
            if fence is None:
                return None  # another node verifies it now (one verification of one shared chain)
            # The lease is free before the verification counts as done (a next one must not race the release).
            return verify_now_here().addBoth(lambda result: node_leases.release(fence).addCallback(lambda _: result))

        return node_leases.claim(LeaseKind.VERIFY, "audit").addCallback(claimed)

    purge_service: Any = next((child for child in gateway if child.name == "purge"), None)
    if purge_service is not None:
        purge_service.after_purge.append(verify_audit_chain)
        gateway.ready.addCallback(lambda addresses: (verify_audit_chain(), addresses)[1])
    else:
        verifier = TimerService(VERIFY_INTERVAL, verify_audit_chain)
        verifier.clock = reactor
        verifier.setServiceParent(gateway)


def _watch_stalls(gateway: GatewayService) -> None:
    """bench/relay.py only: reactor ticks later than 5 ms and GC pauses, from the moment the tree is ready."""
    stalls = StallWatch(gateway.clock, TIMELINE)

    def start_stall_watch(addresses: list[str]) -> list[str]:
        stalls.start()
        GcWatch(TIMELINE).install()
        return addresses

    gateway.ready.addCallback(start_stall_watch)


def _add_watchdog(gateway: GatewayService, interval: float) -> None:
    """systemd's watchdog: pinged while the reactor turns and a ledger check through the blocking pool ends within the
    interval — answered or refused: a database that is down keeps it fed (issue 15); started once ready."""
    metrics, blocking, ledger = gateway.metrics, gateway.blocking, gateway.ledger

    def healthy(ok: bool) -> None:
        metrics.database_up.set(1 if ok else 0)

    watchdog = Watchdog(gateway.clock, gateway.notifier, lambda: blocking.run(ledger.ping), interval, healthy,
                        is_database_failure=is_database_failure)
    gateway.watchdog = watchdog

    def start_watchdog(addresses: list[str]) -> list[str]:
        watchdog.start()
        return addresses

    gateway.ready.addCallback(start_watchdog)
