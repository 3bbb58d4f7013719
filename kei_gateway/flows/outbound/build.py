"""The builder of an outbound flow: an outbox watcher and an upload sender, from the config source."""

from __future__ import annotations

import os
from collections.abc import Callable

from twisted.application import service

from kei_gateway.config import Config
from kei_gateway.flows.dependencies import FlowDependencies
from kei_gateway.flows.outbound.ingest import IngestResult
from kei_gateway.flows.outbound.outbox import OutboxWatcher
from kei_gateway.flows.outbound.sender import UploadSender
from kei_gateway.flows.peer_link import LivePeerLink

__all__ = ["build_outbound_flow"]


def build_outbound_flow(flow: str, config_source: Callable[[], Config],
                        deps: FlowDependencies) -> list[service.Service]:
    """The services of outbound *flow* (``[flows.<flow>]`` of the current configuration), in start order."""
    config = config_source()
    settings = config.flows[flow]
    link = LivePeerLink(config_source, settings.peer, deps.make_client)
    sender = UploadSender(flow=flow, lg_code=config.gateway.lg_code, link=link, ledger=deps.ledger,
                          store=deps.store, blocking=deps.blocking, clock=deps.clock, metrics=deps.metrics)

    def ingested(result: IngestResult) -> None:
        deps.status_soon()
        if result.outcome == "queued":
            sender.kick()

    watcher = OutboxWatcher(
        flow=flow, settings=settings, outbox_dir=config.spool_path(settings.outbox),
        quarantine_dir=config.spool_path(os.path.join("quarantine", flow)), lg_code=config.gateway.lg_code,
        clock=deps.clock, blocking=deps.blocking, ledger=deps.ledger, store=deps.store, metrics=deps.metrics,
        on_ingested=ingested, use_inotify=deps.use_inotify,
        max_file_size=lambda: config_source().gateway.max_file_size)
    sender.leases = watcher.leases = deps.leases
    return [watcher, sender]
