"""The peer transport (SPEC §3): WebDAV over mutual TLS, outbound allow-list, deterministic names.

A library: the flows call :class:`WebDavClient` and turn its typed errors into
events, metrics and transfer states (each error's ``kind`` is the metric reason).
"""

from kei_gateway.adapters.transport._dav import RemoteEntry, parse_multistatus, parse_retry_after, file_url
from kei_gateway.adapters.transport.errors import (
    BodySourceError,
    HttpError,
    OutboundDenied,
    PeerIdentityError,
    RemoteConflict,
    TransientError,
    TransportError,
)
from kei_gateway.adapters.transport.names import JST, content_digest, part_name, remote_name
from kei_gateway.adapters.transport.outbound import (
    PeerEndpoint,
    Resolver,
    checked_addresses,
    reactor_resolver,
)
from kei_gateway.adapters.transport.tls import PeerTLS, server_context, spki_pin
from kei_gateway.adapters.transport.webdav import (
    DEFAULT_IDLE_TIMEOUT,
    BodySource,
    PutResult,
    Sink,
    WebDavClient,
)

__all__ = [
    "WebDavClient", "PutResult", "RemoteEntry", "BodySource", "Sink", "DEFAULT_IDLE_TIMEOUT",
    "TransportError", "TransientError", "OutboundDenied", "PeerIdentityError", "HttpError", "RemoteConflict",
    "BodySourceError", "PeerTLS", "server_context", "spki_pin", "PeerEndpoint", "Resolver", "reactor_resolver",
    "checked_addresses", "remote_name", "part_name", "content_digest", "JST", "parse_multistatus",
    "parse_retry_after", "file_url",
]
