"""Routing a push request (pure): which flow and peer it is for, or why it is refused (SPEC §5)."""

from __future__ import annotations

from collections.abc import Collection, Mapping
from dataclasses import dataclass, field


from kei_gateway.adapters.spool import NAME_PATTERN
from kei_gateway.config import Config

__all__ = ["PUSH_FLOWS", "DENIAL_REASONS", "MAX_PUSH_BYTES", "PushTarget", "Refusal", "Response", "route_push"]


PUSH_FLOWS = ("mpn-results",)
"""Inbound flows a peer may push to."""
DENIAL_REASONS = ("address", "connections", "handshake", "no_certificate", "certificate", "pin", "header_timeout",
                  "header_size", "header_count", "bad_request", "path", "method", "flow", "too_large", "busy",
                  "slow_body", "idle_timeout")
"""The ``reason`` label values of ``kei_gateway_denied_connections_total{listener="push"}``, in the order of the
checks (docs/push.md): the request checks of :func:`route_push`, and those of the listener itself —
``connections`` (per-source limit), ``header_timeout``/``slow_body`` (408), ``header_size``/``header_count``
(431), ``bad_request`` (Twisted's own 400), ``busy`` (503) and ``idle_timeout`` (a silent connection closed)."""
MAX_PUSH_BYTES = 256 * 1024 * 1024
"""Largest body accepted (about a million 258-byte MPN result records)."""
_PATH_PREFIX = b"/push/"
# --------------------------------------------------------------------------- pure routing


@dataclass(frozen=True)
class PushTarget:
    """Where an acceptable push goes."""

    flow: str
    name: str
    peer: str


@dataclass(frozen=True)
class Refusal:
    """A push refused before its body is taken. *reason* is in :data:`DENIAL_REASONS` (or ``busy``)."""

    status: int
    reason: str
    detail: str


@dataclass(frozen=True)
class Response:
    """What the peer is told."""

    status: int
    body: str = ""
    headers: Mapping[str, str] = field(default_factory=dict)


def route_push(method: bytes, path: bytes, peers: Collection[str], config: Config,
               content_length: int | None, max_bytes: int = MAX_PUSH_BYTES) -> PushTarget | Refusal:
    """Decide what to do with a request from a connection identified as *peers* (pure).

    The order is path (404), method (405), flow ownership (403), size (413).
    """
    if not path.startswith(_PATH_PREFIX):
        return Refusal(404, "path", "not /push/<flow>/<name>")
    parts = path[len(_PATH_PREFIX):].split(b"/")
    if len(parts) != 2:
        return Refusal(404, "path", "not /push/<flow>/<name>")
    try:
        flow, name = (part.decode("ascii") for part in parts)
    except UnicodeDecodeError:
        return Refusal(404, "path", "not /push/<flow>/<name>")
    if flow not in PUSH_FLOWS or flow not in config.flows:
        return Refusal(404, "path", "no such push flow")
    if not NAME_PATTERN.fullmatch(name):
        return Refusal(404, "path", "file name not allowed ([A-Za-z0-9][A-Za-z0-9._-]{0,127})")
    if method != b"PUT":
        return Refusal(405, "method", "only PUT is served")
    owner = config.flows[flow].peer
    if owner not in peers:
        return Refusal(403, "flow", f"flow {flow} belongs to another peer")
    if content_length is not None and content_length > max_bytes:
        return Refusal(413, "too_large", f"body over {max_bytes} bytes")
    return PushTarget(flow, name, owner)
