"""What can go wrong talking to a peer, as typed errors with a metric reason.

Every error has :attr:`TransportError.kind`, a short, bounded string fit for a
metric label or ``KEI_REASON``, and :attr:`TransportError.retryable`: whether the
flow should schedule another attempt (``RETRY_WAIT``) or leave the transfer for a
human. None of the messages holds file content or personal values.
"""

from __future__ import annotations

__all__ = [
    "TransportError", "TransientError", "OutboundDenied", "PeerIdentityError", "HttpError",
    "RemoteConflict", "BodySourceError", "IDENTITY_KINDS", "TRANSIENT_KINDS",
]

IDENTITY_KINDS = ("ca", "hostname", "pin", "handshake")
""":class:`PeerIdentityError` kinds: untrusted chain, name/IP mismatch, SPKI pin mismatch, other handshake failure."""

TRANSIENT_KINDS = ("resolve", "connect", "connect_timeout", "idle_timeout", "transfer_timeout", "connection_lost")
""":class:`TransientError` kinds."""


class TransportError(Exception):
    """Base of every peer transport error."""

    kind: str = "error"
    retryable: bool = False

    def __init__(self, peer: str, detail: str) -> None:
        super().__init__(f"peer {peer}: {detail}")
        self.peer = peer
        self.detail = detail


class TransientError(TransportError):
    """The network failed us (DNS, refused, reset, a timeout): try again later."""

    retryable = True

    def __init__(self, peer: str, kind: str, detail: str) -> None:
        if kind not in TRANSIENT_KINDS:
            raise ValueError(f"unknown transient kind {kind!r}")
        super().__init__(peer, f"{kind}: {detail}")
        self.kind = kind


class OutboundDenied(TransportError):
    """Refused before connecting: the URL is not the peer's, or its address is outside the peer's ``allow``.

    *reason* is ``"address"`` (resolved outside ``allow``) or ``"host"`` (a URL not
    on the configured peer's host and port). Nothing was sent; keep the transfer
    queued for a human (``peer.denied``).
    """

    kind = "denied"

    def __init__(self, peer: str, reason: str, detail: str = "") -> None:
        super().__init__(peer, f"outbound connection refused ({reason}){': ' + detail if detail else ''}")
        self.reason = reason


class PeerIdentityError(TransportError):
    """The TLS handshake failed; for ``ca``, ``hostname`` and ``pin`` the peer is not who it should be.

    Nothing was sent (the request is written only after a verified handshake).
    :attr:`alert` is true for the identity kinds, which deserve ``peer.identity_failed``.
    """

    def __init__(self, peer: str, kind: str, detail: str) -> None:
        if kind not in IDENTITY_KINDS:
            raise ValueError(f"unknown identity kind {kind!r}")
        super().__init__(peer, f"TLS {kind} check failed: {detail}")
        self.kind = kind

    @property
    def alert(self) -> bool:
        return self.kind != "handshake"


class HttpError(TransportError):
    """The peer answered with an unexpected status.

    :attr:`retry_after` holds the ``Retry-After`` delay in seconds of a 429 or 503
    (``None`` when absent or unparseable): the flow must not try again sooner.
    """

    def __init__(self, peer: str, method: str, path: str, status: int, retry_after: float | None = None) -> None:
        super().__init__(peer, f"{method} {path} answered {status}"
                         + (f" (Retry-After {retry_after:g}s)" if retry_after is not None else ""))
        self.method = method
        self.path = path
        self.status = status
        self.retry_after = retry_after
        self.kind = {429: "throttled", 503: "unavailable"}.get(
            status, "server_error" if status >= 500 else "rejected")
        self.retryable = status >= 500 or status in (408, 425, 429)


class RemoteConflict(TransportError):
    """The final name already exists at the peer with other content (the 412 rule): a human decides."""

    kind = "conflict"

    def __init__(self, peer: str, name: str, local_sha256: str, remote_sha256: str) -> None:
        super().__init__(peer, f"{name} exists with SHA-256 {remote_sha256}, ours is {local_sha256}")
        self.name = name
        self.local_sha256 = local_sha256
        self.remote_sha256 = remote_sha256


class BodySourceError(TransportError):
    """The body being uploaded failed (a corrupt blob, a size or SHA-256 mismatch); the PUT was aborted.

    The upload never completed, so the final name was never created. :attr:`cause`
    is the original exception.
    """

    kind = "source"

    def __init__(self, peer: str, detail: str, cause: BaseException | None = None) -> None:
        super().__init__(peer, f"upload body failed: {detail}")
        self.cause = cause
