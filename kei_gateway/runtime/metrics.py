"""Prometheus metrics (SPEC §8), declared once on an injected registry.

Labels are bounded: flows, peers, listeners, reasons and roles come from the
configuration or fixed sets; never a file name, an id or a personal value.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, disable_created_metrics
from prometheus_client import GCCollector, PlatformCollector, ProcessCollector
from prometheus_client.exposition import CONTENT_TYPE_LATEST, generate_latest

from kei_gateway import __version__

# The *_created series double every counter for no use of ours (promtool also prefers them gone).
disable_created_metrics()

__all__ = ["GatewayMetrics", "CONTENT_TYPE_LATEST", "exposition"]


class GatewayMetrics:
    """All of the gateway's metrics on one registry."""

    def __init__(self, registry: CollectorRegistry, process: bool = True) -> None:
        self.registry = registry
        if process:
            ProcessCollector(registry=registry)
            PlatformCollector(registry=registry)
            GCCollector(registry=registry)
        self.build_info = Gauge("kei_gateway_build_info", "Version of the running kei-gateway (always 1).",
                                ["version"], registry=registry)
        self.build_info.labels(version=__version__).set(1)
        self.denied_connections = Counter(
            "kei_gateway_denied_connections_total",
            "Connections and requests refused by a listener, by reason (address: outside the allow-list; the push "
            "listener's reasons are in docs/push.md).",
            ["listener", "reason"], registry=registry)
        self.certificate_expiry = Gauge(
            "kei_gateway_certificate_expiry_timestamp_seconds",
            "When a certificate the gateway uses expires (Unix time).", ["role"], registry=registry)
        self.queue_files = Gauge(
            "kei_gateway_queue_files", "Transfers in the ledger by flow and state (not DONE).",
            ["flow", "state"], registry=registry)
        self.oldest_queued_age = Gauge(
            "kei_gateway_oldest_queued_age_seconds", "Age of the oldest transfer waiting to be sent, by flow.",
            ["flow"], registry=registry)
        self.queue_age_limit = Gauge(
            "kei_gateway_queue_age_limit_seconds",
            "How long a transfer of the outbound flow can wait before it is DONE or FAILED under its peer's retry "
            "policy and transfer_timeout; an oldest queued age above it means the flow is stuck.",
            ["flow"], registry=registry)
        self.records = Counter("kei_gateway_records_total",
                               "Records by flow and outcome (accepted, rejected, rejected_by_peer).",
                               ["flow", "outcome"], registry=registry)
        self.degenerated_characters = Counter(
            "kei_gateway_degenerated_characters_total",
            "外字 replaced by their 縮退 candidate at ingest (gaiji = \"degenerate\"), by flow.",
            ["flow"], registry=registry)
        self.transfers = Counter("kei_gateway_transfers_total", "Finished transfers by flow and outcome.",
                                 ["flow", "outcome"], registry=registry)
        self.transfer_bytes = Counter("kei_gateway_transfer_bytes_total", "Bytes delivered by flow.", ["flow"],
                                      registry=registry)
        self.last_success = Gauge("kei_gateway_last_success_timestamp_seconds",
                                  "When a transfer of the flow last succeeded (Unix time).", ["flow"], registry=registry)
        # No series for a peer until the first exchange with it since the start: 0 means a failed exchange,
        # never "not contacted yet" (an idle push-only peer would look down for ever).
        self.peer_up = Gauge("kei_gateway_peer_up", "1 when the last exchange with the peer succeeded, 0 when it failed.",
                             ["peer"], registry=registry)
        self.retries = Counter("kei_gateway_retries_total", "Failed attempts that will be retried, by peer.", ["peer"],
                               registry=registry)
        self.transfer_duration = Histogram(
            "kei_gateway_transfer_duration_seconds", "Time one transfer took, by flow.", ["flow"],
            buckets=(0.1, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600), registry=registry)
        self.payment_results = Counter(
            "kei_gateway_payment_results_total",
            "MPN payment results by kind (provisional 速報, final 確報, cancellation 速報取消) and outcome "
            "(relayed, duplicate, rejected).", ["kind", "outcome"], registry=registry)
        self.unconfirmed_results = Gauge(
            "kei_gateway_unconfirmed_results",
            "速報 with neither 確報 nor cancellation, by age: pending (within unconfirmed_after) or overdue.",
            ["age"], registry=registry)
        self.relay_latency = Histogram(
            "kei_gateway_relay_latency_seconds", "From a pushed results file's arrival to its new results durable in the inbox.",
            buckets=(0.005, 0.01, 0.02, 0.03, 0.04, 0.05, 0.075, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
            registry=registry)
        self.database_up = Gauge("kei_gateway_database_up",
                                 "1 when the ledger database answered its last health check.", registry=registry)
        # The AIRIS 突合 (kei_gateway.flows.airis_reconcile): category codes 01–08 only.
        self.airis_vehicles = Counter(
            "kei_gateway_airis_vehicles_total",
            "Rows of AIRIS 突合 results by category (01 一致 … 08 重複, SPEC §13).", ["category"], registry=registry)
        # The daily purge (kei_gateway.operations.purge).
        self.purged_files = Counter(
            "kei_gateway_purged_files_total",
            "Items the daily purge erased, by area (store, inbox, quarantine, ledger).", ["area"], registry=registry)
        self.last_purge = Gauge("kei_gateway_last_purge_timestamp_seconds",
                                "When the last purge run completed without failure (Unix time).", registry=registry)
        # The audit trail (kei_gateway.operations.audit): labels are event names, a fixed set.
        self.audit_events = Counter(
            "kei_gateway_audit_events_total", "Audit records the daemon appended to the audit chain, by event.",
            ["event"], registry=registry)
        self.audit_chain_ok = Gauge(
            "kei_gateway_audit_chain_ok",
            "1 when the last verification of the audit chain found it intact; 0 when it found a changed, deleted, "
            "inserted or reordered record, or could not run.", registry=registry)
        self.audit_chain_checked = Gauge(
            "kei_gateway_audit_chain_checked_timestamp_seconds",
            "When the daemon last finished a verification of the audit chain, whatever it found (Unix time; 0 before "
            "the first one since the start).", registry=registry)
        self.audit_dropped = Counter(
            "kei_gateway_audit_dropped_events_total",
            "Audited events the daemon could not keep while the database was unavailable (in journald only).",
            registry=registry)

        # Nodes sharing one ledger (SPEC §14): node ids are the configured few; kinds a fixed set.
        self.node_up = Gauge("kei_gateway_node_up",
                             "1 for each node whose heartbeat in the shared ledger is younger than a lease, 0 for one "
                             "known but silent.", ["node"], registry=registry)
        self.leases = Gauge("kei_gateway_leases", "Live leases in the shared ledger, whoever holds them, by kind.",
                            ["kind"], registry=registry)
        self.lease_takeovers = Counter("kei_gateway_lease_takeovers_total",
                                       "Leases this node took over from a node whose lease had expired, by kind.",
                                       ["kind"], registry=registry)


def exposition(registry: CollectorRegistry) -> bytes:
    """The text exposition of *registry*."""
    return generate_latest(registry)
