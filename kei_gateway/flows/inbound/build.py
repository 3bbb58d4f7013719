"""The builders of the inbound doors: the results poller of a flow, and the push listener."""

from __future__ import annotations

import os
from collections.abc import Callable

from twisted.application import service

from kei_gateway.config import Config
from kei_gateway.flows.dependencies import FlowDependencies
from kei_gateway.flows.inbound.downloads import DownloadPoller
from kei_gateway.flows.inbound.push_listener import PushListener, make_push_listener
from kei_gateway.flows.peer_link import LivePeerLink

__all__ = ["build_inbound_flow", "build_push_listener", "PUSHED_FLOW"]

PUSHED_FLOW = "mpn-results"
"""The flow whose relay takes what the push listener commits."""


def build_inbound_flow(flow: str, config_source: Callable[[], Config],
                       deps: FlowDependencies) -> list[service.Service]:
    """The results poller of inbound *flow*, handing each file to the flow's relay."""
    config = config_source()
    settings = config.flows[flow]
    poller = DownloadPoller(
        flow=flow, layout_name=flow, link=LivePeerLink(config_source, settings.peer, deps.make_client),
        quarantine_dir=config.spool_path(os.path.join("quarantine", flow)), relay=deps.relay_for(flow),
        ledger=deps.ledger, store=deps.store, blocking=deps.blocking, clock=deps.clock, metrics=deps.metrics,
        poll_interval=settings.poll_interval, intake_blocking=deps.intake_blocking)
    poller.leases = deps.leases
    return [poller]


def build_push_listener(config_source: Callable[[], Config], deps: FlowDependencies) -> PushListener:
    """The push listener's protocol factory; what it commits goes to the relay of :data:`PUSHED_FLOW`."""
    listener = make_push_listener(config_source, deps.clock, ledger=deps.ledger, store=deps.store,
                                  blocking=deps.blocking, metrics=deps.metrics, environ=deps.environ,
                                  relay=deps.relay_for(PUSHED_FLOW), intake_blocking=deps.intake_blocking)
    listener.receiver.leases = deps.leases  # a push is relayed under the received lease of its accepting commit
    return listener
