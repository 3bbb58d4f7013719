"""One peer as a flow sees it: its current settings and a client for them, read through the config source.

A reload changes the configuration the source returns; a flow asks its link at each use,
and a changed ``[peers.<name>]`` gets a new client there. Nothing outside the flow
assigns anything to it (the one reload mechanism: every service reads the current
configuration through one source).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Protocol

from twisted.internet import defer

from kei_gateway.adapters.ports import PeerClient
from kei_gateway.config import Config, PeerSection, RetryPolicy

__all__ = ["PeerLink", "LivePeerLink", "FixedPeerLink"]


class PeerLink(Protocol):
    """The current settings of one peer and a client for them."""

    peer: str

    def settings(self) -> Any:
        """The peer's section (``url``, ``results_url``, ``retry``)."""
        ...

    def client(self) -> PeerClient: ...

    def close(self) -> defer.Deferred[Any]: ...


class LivePeerLink:
    """``[peers.<peer>]`` of *config_source()*; *make_client(config, peer)* builds a client when it changes.

    A peer removed by a reload keeps its last settings and client (its flow needs a restart anyway).
    """

    def __init__(self, config_source: Callable[[], Config], peer: str,
                 make_client: Callable[[Config, str], PeerClient]) -> None:
        self.peer = peer
        self._source = config_source
        self._make_client = make_client
        config = config_source()
        self._settings: PeerSection = config.peers[peer]
        self._client = make_client(config, peer)

    def _refresh(self) -> None:
        config = self._source()
        current = config.peers.get(self.peer)
        if current is not None and current != self._settings:
            self._settings, self._client = current, self._make_client(config, self.peer)

    def settings(self) -> PeerSection:
        self._refresh()
        return self._settings

    def client(self) -> PeerClient:
        self._refresh()
        return self._client

    def close(self) -> defer.Deferred[Any]:
        return defer.maybeDeferred(getattr(self._client, "close", lambda: None))


class _Settings:
    def __init__(self, url: str, results_url: str, retry: RetryPolicy | None) -> None:
        self.url, self.results_url = url, results_url
        self.retry = retry if retry is not None else RetryPolicy()


class FixedPeerLink:
    """A link that never changes: a given client and URLs (tests, tools)."""

    def __init__(self, peer: str, client: PeerClient, *, url: str = "", results_url: str = "",
                 retry: RetryPolicy | None = None) -> None:
        self.peer = peer
        self._client = client
        self._settings = _Settings(url, results_url, retry)

    def settings(self) -> Any:
        return self._settings

    def client(self) -> PeerClient:
        return self._client

    def close(self) -> defer.Deferred[Any]:
        return defer.maybeDeferred(getattr(self._client, "close", lambda: None))
