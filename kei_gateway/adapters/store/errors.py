"""Errors of the encrypted store, each naming the blob or key file and what to do."""

from __future__ import annotations

from collections.abc import Sequence

__all__ = ["StoreError", "StoreKeyError", "InvalidBlobId", "BlobNotFound", "BlobExists", "BlobUnreadable",
    "BlobCorrupt", "UnknownStoreKey", "BlobBusy"]


# --- errors -------------------------------------------------------------------------

class StoreError(Exception):
    """Base of every error of the encrypted store."""


class StoreKeyError(StoreError):
    """A store key file is unusable; the message names the file and what to write."""


class InvalidBlobId(StoreError, ValueError):
    """A blob id that is not ``[A-Za-z0-9][A-Za-z0-9._-]{0,127}``."""


class BlobNotFound(StoreError, KeyError):
    """No blob has this id."""

    def __init__(self, blob_id: str) -> None:
        self.blob_id = blob_id
        super().__init__(blob_id)

    def __str__(self) -> str:
        return f"blob {self.blob_id}: not in the store"


class BlobExists(StoreError):
    """A write without ``replace=True`` found a blob under that id already."""

    def __init__(self, blob_id: str) -> None:
        self.blob_id = blob_id
        super().__init__(f"blob {blob_id}: already in the store; delete it first or write with replace=True")


class BlobBusy(StoreError):
    """A delete or re-encryption of a blob found it locked by another one for longer than the store waits."""

    def __init__(self, blob_id: str, waited: float) -> None:
        self.blob_id = blob_id
        super().__init__(f"blob {blob_id}: another process (on this node or another one sharing the store) is "
                         f"deleting or re-encrypting it and held it for more than {waited:g}s; nothing was changed. "
                         f"Try again later (the purge does at its next run); a node stopped (SIGSTOP, a paused VM) "
                         f"holds it until it continues or is killed")


class BlobUnreadable(StoreError):
    """A blob cannot be decrypted: corrupt, or written under a key not configured."""

    blob_id: str


class BlobCorrupt(BlobUnreadable):
    """A blob failed verification; :attr:`segment` is the failing segment (``None``: the header)."""

    def __init__(self, blob_id: str, segment: int | None, reason: str) -> None:
        self.blob_id = blob_id
        self.segment = segment
        self.reason = reason
        where = "header" if segment is None else f"segment {segment}"
        super().__init__(f"blob {blob_id}: {where}: {reason}; the blob is corrupt or was tampered with "
                         f"and cannot be used (no unverified data was returned)")


class UnknownStoreKey(BlobUnreadable):
    """A blob was written under a key that is neither ``keys.store`` nor in ``keys.store_previous``."""

    def __init__(self, blob_id: str, key_id: str, known: Sequence[str]) -> None:
        self.blob_id = blob_id
        self.key_id = key_id
        self.known = tuple(known)
        super().__init__(f"blob {blob_id}: written under store key id {key_id}, which is not configured "
                         f"(configured key ids: {', '.join(known) or 'none'}); add the key file it was written "
                         f"under to keys.store_previous, then run 'kei-gateway keys rotate'")
