"""Scratch space for a large file's uniqueness check: an unnamed temporary file, encrypted with a key kept in memory.

Validating a file of more than about 2 M records, the key log (8 bytes a record: each key's
keyed 64-bit fingerprint, :class:`kei_gateway.layouts._keyfilter.SpilledLog`) goes to a file
instead of the process's memory, so the peak RSS stays flat whatever the file size.

What is written, and why it is safe (SPEC §7, docs/decisions.md "Issue 13, fourth sitting"):

* only fingerprints: a keyed 64-bit mix of the key fields (e.g. chassis number and tax year),
  keyed with a random salt that never leaves the process;
* sealed with AES-256-GCM under a random key made for this one file and never written anywhere
  (a nonce per chunk: its offset), so the bytes on disk are ciphertext even to someone who knows
  records of the file, and a change of them is an error, not a wrong answer;
* in a file that never has a name (``O_TMPFILE``; else created and unlinked at once): nothing
  is left to find or clean up after the ingest, a crash or a ``kill -9``.

The directory is ``$TMPDIR`` (else ``/tmp``); the systemd units set ``TMPDIR=/var/tmp``, which
``PrivateTmp=yes`` makes private to the service and keeps on the local disk.
"""

from __future__ import annotations

import errno
import os
import tempfile
import weakref
from collections.abc import Callable

from kei_gateway.layouts import Scratch

__all__ = ["EncryptedScratch", "ScratchError", "scratch_in"]

_TAG = 16


class ScratchError(OSError):
    """The scratch file could not be made, written or read back (a full or read-only ``$TMPDIR``)."""

    def __init__(self, directory: str, error: OSError) -> None:
        super().__init__(error.errno, f"the scratch file of the uniqueness check in {directory} ($TMPDIR) failed: "
                                      f"{error.strerror or error}; free space there or point TMPDIR elsewhere")


class EncryptedScratch:
    """:class:`~kei_gateway.layouts._keyfilter.Scratch` in an unnamed file of ``directory``, AES-256-GCM sealed."""

    def __init__(self, directory: str | None = None) -> None:
        # Imported here, not with the module: `cryptography` is 8 MB of RSS, which `kei-gateway validate`
        # of a file small enough for the in-memory log (most files) must not pay (the daemon has it anyway).
        from cryptography.hazmat.primitives.ciphers.aead import AESGCM

        where = directory or tempfile.gettempdir()
        try:
            try:
                fd = os.open(where, os.O_TMPFILE | os.O_RDWR | os.O_CLOEXEC, 0o600)
            except OSError as error:  # a filesystem without O_TMPFILE: a name for an instant
                if error.errno not in (errno.EOPNOTSUPP, errno.EISDIR, errno.EINVAL):
                    raise
                fd, path = tempfile.mkstemp(prefix=".kei-gateway-scratch-", dir=where)
                os.unlink(path)
        except OSError as error:
            raise ScratchError(where, error) from error
        self.directory = where
        self._fd = fd
        self._close = weakref.finalize(self, os.close, fd)
        self._cipher = AESGCM(AESGCM.generate_key(bit_length=256))
        self._end = 0

    @property
    def size(self) -> int:
        """Bytes written so far (ciphertext and tags)."""
        return self._end

    def append(self, data: bytes) -> int:
        handle = self._end
        sealed = self._cipher.encrypt(handle.to_bytes(12, "big"), data, None)  # a handle is never used twice
        view = memoryview(sealed)
        try:
            while view:
                view = view[os.pwrite(self._fd, view, self._end + len(sealed) - len(view)):]
        except OSError as error:
            raise ScratchError(self.directory, error) from error
        self._end += len(sealed)
        return handle

    def read(self, handle: int, size: int) -> bytes:
        wanted = size + _TAG
        parts = []
        while wanted:
            try:
                part = os.pread(self._fd, wanted, handle + size + _TAG - wanted)
            except OSError as error:
                raise ScratchError(self.directory, error) from error
            if not part:
                raise ScratchError(self.directory, OSError(errno.EIO, "shorter than what was written"))
            parts.append(part)
            wanted -= len(part)
        return self._cipher.decrypt(handle.to_bytes(12, "big"), b"".join(parts), None)

    def close(self) -> None:
        self._close()


def scratch_in(directory: str | None = None) -> Callable[[], Scratch]:
    """A factory of :class:`EncryptedScratch` in ``directory`` (``None``: ``$TMPDIR``, else ``/tmp``)."""
    return lambda: EncryptedScratch(directory)
