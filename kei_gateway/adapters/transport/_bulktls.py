"""TLS over a memory BIO that hands OpenSSL large writes whole.

Twisted's :class:`~twisted.protocols.tls.TLSMemoryBIOProtocol` feeds OpenSSL 16 KiB
at a time and reads the encrypted record back after each piece: two Python-level
calls per TLS record. For a 537 MB upload that is about 66,000 round trips through
pyOpenSSL on the reactor thread, which made the reactor thread, not the network
or the cipher, the limit of the upload speed (``bench/upload.py``).

:class:`BulkWriteTLSProtocol` overrides only the write path: OpenSSL gets up to
:data:`WRITE_PIECE` bytes per ``SSL_write`` (it splits them into records itself;
the memory BIO never blocks), and the encrypted records are drained with large
``bio_read`` calls. With pyOpenSSL's default ``SSL_MODE_ENABLE_PARTIAL_WRITE``, ``SSL_write`` still returns
after each record, so a piece takes several ``send`` calls but one drain.
The bytes on the wire are the same TLS records. Everything
else — handshake, reads, producers, shutdown — is Twisted's.
"""

from __future__ import annotations

from typing import Any

from OpenSSL.SSL import Error, WantReadError
from twisted.protocols.tls import TLSMemoryBIOFactory, TLSMemoryBIOProtocol
from twisted.python.failure import Failure

__all__ = ["BulkWriteTLSProtocol", "BulkWriteTLSFactory", "WRITE_PIECE"]

WRITE_PIECE = 256 * 1024
"""Plaintext bytes handed to ``SSL_write`` at once."""

_DRAIN = 1 << 20
"""Bytes asked of the send BIO per read: more than one piece's records and their overhead."""


class BulkWriteTLSProtocol(TLSMemoryBIOProtocol):
    """:class:`TLSMemoryBIOProtocol` with a write path for large application writes."""

    def _write(self, bytes: bytes) -> None:  # noqa: A002 - the name Twisted's signature uses
        if self._lostTLSConnection:
            return
        view = memoryview(bytes)
        sent_total = 0
        piece_end = 0
        while sent_total < len(view):
            if sent_total >= piece_end:
                piece_end = min(len(view), sent_total + WRITE_PIECE)
            try:
                sent_total += self._tlsConnection.send(view[sent_total:piece_end])
            except WantReadError:
                self._flushSendBIO()
                self._bufferedWrite(view[sent_total:].tobytes())
                return
            except Error:
                # As Twisted does: fail the TLS connection; the error reaches connectionLost.
                self._tlsShutdownFinished(Failure())
                return
            if sent_total >= piece_end:
                self._flushSendBIO()

    def _flushSendBIO(self) -> None:
        """Move every encrypted byte waiting in the send BIO to the transport."""
        while True:
            try:
                data = self._tlsConnection.bio_read(_DRAIN)
            except WantReadError:
                return
            self.transport.write(data)  # type: ignore[union-attr]  # connected while writing
            if len(data) < _DRAIN:
                return


class BulkWriteTLSFactory(TLSMemoryBIOFactory):
    """:class:`TLSMemoryBIOFactory` building :class:`BulkWriteTLSProtocol`."""

    protocol: Any = BulkWriteTLSProtocol
