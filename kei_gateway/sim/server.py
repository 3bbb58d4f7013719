"""Starting a simulator: the DAV site, mutual TLS, the listening port, and a handle to stop it."""

from __future__ import annotations

import os
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from twisted.internet import defer
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IAddress
from twisted.logger import Logger
from twisted.protocols.policies import WrappingFactory

from kei_gateway.sim.dav import DavPath, DavStore, dav_site
from kei_gateway.sim.faults import Faults, FaultState
from kei_gateway.sim.tls import MutualTLSContextFactory, ServerIdentity, make_server_context, parse_listen, wrong_identity

__all__ = ["RunningSim", "start_simulator"]

log = Logger(namespace="kei_gateway.sim")


class _TrackingFactory(WrappingFactory):
    """Keeps every open connection (to close them on stop) and counts wrong-certificate connections."""

    noisy = False

    def __init__(self, wrapped: Any, state: FaultState) -> None:
        super().__init__(wrapped)
        self._state = state

    def buildProtocol(self, addr: IAddress | None) -> Any:
        if self._state.faults.wrong_server_cert:
            self._state.note("wrong_server_cert")
        return super().buildProtocol(addr)


@dataclass
class RunningSim:
    """A listening simulator. ``faults`` may be changed while it runs; ``faults_fired`` counts firings."""

    name: str
    host: str
    port: int
    root: Path
    store: DavStore
    fault_state: FaultState
    personality: Any
    _listening: Any
    _connections: _TrackingFactory

    @property
    def url(self) -> str:
        """The base URL, ``https://host:port/``."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"https://{host}:{self.port}/"

    @property
    def faults(self) -> Faults:
        return self.fault_state.faults

    @property
    def faults_fired(self) -> Counter[str]:
        return self.fault_state.fired

    def stop(self) -> Deferred[None]:
        """Stop listening, close every open connection, and stop the personality's timers (if it has any)."""
        personality_stop = getattr(self.personality, "stop", None)
        if personality_stop is not None:
            personality_stop()
        for protocol in list(self._connections.protocols):
            protocol.transport.abortConnection()
        return defer.maybeDeferred(self._listening.stopListening)


def start_simulator(reactor: Any, name: str, listen: str | tuple[str, int], root: str | os.PathLike[str],
                    identity: ServerIdentity, client_ca_pem: bytes, collections: Sequence[str],
                    faults: Faults | None = None,
                    personality: Callable[[DavStore], Any] | None = None) -> Deferred[RunningSim]:
    """Listen on *listen* with mutual TLS and serve *collections* under *root*.

    *personality* builds the object whose ``on_stored(DavPath)`` is told of every
    stored file. The Deferred fails (CannotListenError, OpenSSL errors) when it
    cannot start.
    """
    try:
        host, port = parse_listen(listen) if isinstance(listen, str) else listen
        store = DavStore(root, collections)
        state = FaultState(faults if faults is not None else Faults())
        persona = personality(store) if personality is not None else None
        on_stored: Callable[[DavPath], None] | None = getattr(persona, "on_stored", None)
        site = dav_site(store, reactor, state, name, on_stored)
        right = make_server_context(identity, client_ca_pem)
        wrong = make_server_context(wrong_identity((host, "localhost")), client_ca_pem)
        contexts = MutualTLSContextFactory(right, wrong, lambda: state.faults.wrong_server_cert)
        tracking = _TrackingFactory(site, state)
        listening = reactor.listenSSL(port, tracking, contexts, interface=host)
    except Exception:
        return defer.fail()
    bound = listening.getHost()
    log.info("{sim} simulator listening on {host}:{port} (mutual TLS), root {root}, collections {collections}",
             sim=name, host=host, port=bound.port, root=str(root), collections=",".join(collections))
    return defer.succeed(RunningSim(name, host, bound.port, Path(root), store, state, persona, listening, tracking))
