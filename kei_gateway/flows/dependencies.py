"""What the composition root hands every flow builder (:func:`kei_gateway.runtime.service.make_service`)."""

from __future__ import annotations

import datetime
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from kei_gateway.adapters.ports import BlobStore, PeerClient, TransferLedgerPort
from kei_gateway.config import Config
from kei_gateway.flows.inbound.relay import Relay
from kei_gateway.runtime.blocking import Blocking
from kei_gateway.runtime.leases import NodeLeases
from kei_gateway.runtime.metrics import GatewayMetrics

__all__ = ["FlowDependencies"]


@dataclass(frozen=True)
class FlowDependencies:
    """The shared pieces a flow is built from; the configuration itself is read through the config source."""

    clock: Any
    """The reactor (``IReactorTime``; tests pass a clock)."""
    ledger: TransferLedgerPort
    store: BlobStore
    blocking: Blocking
    intake_blocking: Blocking
    """The door of the store writers of downloads and pushes (they wait on the network)."""
    metrics: GatewayMetrics
    environ: Mapping[str, str]
    make_client: Callable[[Config, str], PeerClient]
    """A client for ``[peers.<name>]`` of a configuration."""
    relay_for: Callable[[str], Relay]
    """The relay of an inbound flow (one per flow, shared by its pull and push doors)."""
    status_soon: Callable[[], None]
    """Refresh the status line soon (after an ingest)."""
    note_erased: Callable[[Sequence[Any], datetime.datetime], object]
    """List plaintext inputs a flow erased (AIRIS 突合) in the day's 消去報告 (the purge's report)."""
    use_inotify: bool = True
    leases: NodeLeases | None = None
    """This node's leases (SPEC §14): the sender, the outbox watcher and the poller claim their work with them.
    None: the ledger is this process's alone."""
