"""A fixed-size Bloom filter over fixed-width record keys, for the uniqueness check of large files.

Pure: no clock, no files.  The filter answers "maybe seen before" or "surely
not seen"; the :class:`~kei_gateway.layouts.engine.Validator` keeps the
"maybe" keys (the suspects) exactly and settles them in a second read of the
file, so the result is exact while memory stays fixed whatever the file size.

Keys are the unique fields' bytes, zero-padded to a multiple of 8 bytes and
read as little-endian 64-bit lanes.  A key's fingerprint is a keyed 64-bit mix
of its lanes (the murmur3 finalizer, started from a random per-filter salt), so
nothing kept in the filter is a plain function of a personal value; its bit
positions come from double hashing of the fingerprint's two halves.  A block of
keys is handled with whole-array numpy operations; :meth:`KeyFilter.add_one` is
the same arithmetic in plain Python for the record-by-record path (tests check
that both give the same positions).
"""

from __future__ import annotations

import math
import mmap
import secrets
from typing import Final

import numpy as np
import numpy.typing as npt

__all__ = ["KeyFilter", "DEFAULT_FILTER_BITS_LOG2", "DEFAULT_HASHES", "MIN_FILTER_BITS_LOG2", "lane_width",
           "filter_bits_for"]

DEFAULT_FILTER_BITS_LOG2: Final = 27
"""2^27 bits = 16 MiB: about 1 in 10^6 false suspects at 1 M keys, a few thousand in all at 7.7 M."""
DEFAULT_HASHES: Final = 6
MIN_FILTER_BITS_LOG2: Final = 16
BITS_PER_KEY: Final = 128
"""When the number of keys is known, the filter takes this many bits per key (up to the default size)."""

_MASK64: Final = (1 << 64) - 1
_C1: Final = 0xFF51AFD7ED558CCD
_C2: Final = 0xC4CEB9FE1A85EC53

Fingerprints = npt.NDArray[np.uint64]


def lane_width(key_width: int) -> int:
    """Bytes one key takes in a packed block: its width rounded up to whole 64-bit lanes."""
    return -(-key_width // 8) * 8


def filter_bits_for(records: int | None, largest: int = DEFAULT_FILTER_BITS_LOG2) -> int:
    """log2 of the filter size for about ``records`` keys (``None``: unknown, the largest)."""
    if records is None:
        return largest
    wanted = max(1, records * BITS_PER_KEY)
    return min(largest, max(MIN_FILTER_BITS_LOG2, math.ceil(math.log2(wanted))))


def _fmix(h: Fingerprints) -> Fingerprints:
    h = h ^ (h >> np.uint64(33))
    h = h * np.uint64(_C1)
    h = h ^ (h >> np.uint64(33))
    h = h * np.uint64(_C2)
    return h ^ (h >> np.uint64(33))


def _fmix_int(h: int) -> int:
    h ^= h >> 33
    h = (h * _C1) & _MASK64
    h ^= h >> 33
    h = (h * _C2) & _MASK64
    return h ^ (h >> 33)


class KeyFilter:
    """A Bloom filter of ``2 ** bits_log2`` bits with ``hashes`` positions per key; its memory never grows."""

    def __init__(self, bits_log2: int = DEFAULT_FILTER_BITS_LOG2, hashes: int = DEFAULT_HASHES,
                 salt: int | None = None) -> None:
        if not 6 <= bits_log2 <= 34:
            raise ValueError("bits_log2 must be between 6 and 34")
        self.hashes = hashes
        self.size_bits = 1 << bits_log2
        self._mask = self.size_bits - 1
        self._salt = secrets.randbits(64) if salt is None else salt & _MASK64
        # Anonymous pages, zero until touched and returned to the system when the filter goes
        # (a heap allocation of this size could stay in the process after it is freed).
        self._pages = mmap.mmap(-1, max(self.size_bits >> 3, 1))
        self.bits = np.frombuffer(self._pages, dtype=np.uint8)
        self._steps = np.arange(hashes, dtype=np.uint64)

    @property
    def nbytes(self) -> int:
        return int(self.bits.nbytes)

    def fingerprints(self, packed: bytes | bytearray, lane: int) -> Fingerprints:
        """The fingerprint of each key in ``packed`` (keys of ``lane`` bytes each, ``lane`` a multiple of 8)."""
        lanes = np.frombuffer(packed, dtype="<u8").reshape(-1, lane // 8)
        h = np.full(lanes.shape[0], self._salt, dtype=np.uint64)
        for column in range(lanes.shape[1]):
            h = _fmix(h ^ lanes[:, column])
        return h

    def _positions(self, h: Fingerprints) -> npt.NDArray[np.uint64]:
        first = h & np.uint64(0xFFFFFFFF)
        second = (h >> np.uint64(32)) | np.uint64(1)
        return (first[:, None] + self._steps[None, :] * second[:, None]) & np.uint64(self._mask)

    def add_block(self, packed: bytes | bytearray, lane: int) -> npt.NDArray[np.intp]:
        """Add every key of a packed block; return the indices of the suspects, in order.

        A key is a suspect when all its bits were already set before the block
        (perhaps an earlier key, perhaps chance) or when its fingerprint occurs
        twice in the block.  Every key equal to an earlier one is a suspect.
        """
        h = self.fingerprints(packed, lane)
        positions = self._positions(h)
        index = (positions >> np.uint64(3)).astype(np.intp)
        bit = np.left_shift(np.uint8(1), (positions & np.uint64(7)).astype(np.uint8))
        seen = np.all((self.bits[index] & bit) != 0, axis=1)
        if h.size > 1:
            ordered = np.sort(h)
            repeated = ordered[1:][ordered[1:] == ordered[:-1]]
            if repeated.size:
                seen |= np.isin(h, repeated)
        flat, flat_bit = index.ravel(), bit.ravel()
        self.bits[flat] |= flat_bit  # buffered: of two positions in one byte, only the last one's bit may stick
        missed = (self.bits[flat] & flat_bit) == 0
        if missed.any():  # rare: those positions again, unbuffered
            np.bitwise_or.at(self.bits, flat[missed], flat_bit[missed])
        return np.flatnonzero(seen)

    def add_one(self, key: bytes) -> bool:
        """Add one key (unpadded); ``True`` when it is a suspect.  Plain Python, same arithmetic as the block."""
        padded = key.ljust(lane_width(len(key)), b"\x00")
        h = self._salt
        for start in range(0, len(padded), 8):
            h = _fmix_int(h ^ int.from_bytes(padded[start:start + 8], "little"))
        first, second = h & 0xFFFFFFFF, (h >> 32) | 1
        bits = self.bits
        suspect = True
        for step in range(self.hashes):
            position = (first + step * second) & self._mask
            byte, bit = position >> 3, 1 << (position & 7)
            if not bits[byte] & bit:
                suspect = False
                bits[byte] |= bit
        return suspect
