"""The status line: systemd's ``STATUS=`` and the queue gauges, refreshed from the ledger.

:class:`StatusLine` runs every :data:`STATUS_INTERVAL` seconds, and soon after each
ingested file (:meth:`StatusLine.soon`, coalesced to one refresh per reactor turn).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Protocol

from twisted.application.internet import TimerService
from twisted.internet import defer

from kei_gateway.adapters.ledger import OPEN_STATES
from kei_gateway.config import Config
from kei_gateway.runtime.blocking import Blocking
from kei_gateway.runtime.metrics import GatewayMetrics
from kei_gateway.runtime.sdnotify import Notifier
from kei_gateway.core.transfer import TransferState as S

__all__ = ["StatusLine", "STATUS_INTERVAL", "QueueSource"]

STATUS_INTERVAL = 15.0


class QueueSource(Protocol):
    """What the status line reads from the transfer ledger (blocking)."""

    def queue_counts(self) -> dict[tuple[str, str], int]: ...

    def oldest_queued(self) -> dict[str, Any]: ...


class StatusLine(TimerService):
    """Refreshes the queue gauges and ``STATUS=`` every :data:`STATUS_INTERVAL` seconds (and at start).

    :attr:`extra` is appended to the line (a refused reload says so until the next good one).
    """

    def __init__(self, config_source: Callable[[], Config], ledger: QueueSource, clock: Any, blocking: Blocking,
                 metrics: GatewayMetrics, notifier: Notifier) -> None:
        super().__init__(STATUS_INTERVAL, self.update)
        self.setName("status")
        self.clock = clock  # the TimerService's loop runs on it
        self._clock = clock
        self.config_source = config_source
        self.ledger = ledger
        self.blocking = blocking
        self.metrics = metrics
        self.notifier = notifier
        self.extra = ""
        self._pending = False

    def update(self) -> defer.Deferred[None]:
        """Refresh the queue gauges and systemd's STATUS= line from the ledger."""

        def snapshot() -> tuple[dict[tuple[str, str], int], dict[str, Any]]:
            return self.ledger.queue_counts(), self.ledger.oldest_queued()

        def counted(result: tuple[dict[tuple[str, str], int], dict[str, Any]]) -> None:
            queue, oldest = result
            flows = set(self.config_source().flows) | {flow for flow, _ in queue}
            now = self._clock.seconds()
            for flow in flows:
                for state in OPEN_STATES:
                    self.metrics.queue_files.labels(flow=flow, state=state).set(queue.get((flow, state), 0))
                since = oldest.get(flow)
                age = max(0.0, now - since.timestamp()) if since is not None else 0.0
                self.metrics.oldest_queued_age.labels(flow=flow).set(age)
            totals: dict[str, int] = {}
            for (_, state), count in queue.items():
                totals[state] = totals.get(state, 0) + count
            summary = ", ".join(f"{totals.get(s, 0)} {s.lower().replace('_', '-')}"
                                for s in (S.QUEUED, S.SENDING, S.RETRY_WAIT, S.HELD, S.FAILED))
            self.metrics.database_up.set(1)
            self.notifier.notify(f"STATUS=Ready. Queue: {summary}{self.extra}")

        def failed(failure: Any) -> None:
            self.metrics.database_up.set(0)
            self.notifier.notify(f"STATUS=Database not answering: {failure.getErrorMessage()}")

        return self.blocking.run(snapshot).addCallbacks(counted, failed)

    def soon(self) -> None:
        """Refresh STATUS= and the queue gauges once the current reactor turn is over (coalesced)."""
        if not self._pending:
            self._pending = True

            def refresh() -> None:
                self._pending = False
                self.update()

            self._clock.callLater(0, refresh)
