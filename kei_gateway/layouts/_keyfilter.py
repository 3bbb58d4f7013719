"""Fixed-size key indexes for the uniqueness check: a Bloom filter, and a table of fingerprints.

Pure: no clock, no files.  Both answer "maybe seen before" or "surely not seen":
:class:`KeyTable` (32 bits of each key's fingerprint in an open-addressing table) when
the number of keys is known and fits, with about one false "maybe" in 2^31 keys;
:class:`KeyFilter` (a Bloom filter) for more or an unknown number.  The :class:`~kei_gateway.layouts.engine.Validator` keeps the
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

__all__ = ["KeyFilter", "KeyTable", "table_slots_for", "fingerprint", "fingerprints", "DEFAULT_FILTER_BITS_LOG2", "DEFAULT_HASHES", "MIN_FILTER_BITS_LOG2", "lane_width",
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


def fingerprints(packed: bytes | bytearray, lane: int, salt: int) -> Fingerprints:
    """The keyed fingerprint of each key in ``packed`` (keys of ``lane`` bytes each, ``lane`` a multiple of 8).

    Equal to :func:`fingerprint` of each key (unpadded) with the same salt.
    """
    lanes = np.frombuffer(packed, dtype="<u8").reshape(-1, lane // 8)
    h = np.full(lanes.shape[0], salt & _MASK64, dtype=np.uint64)
    for column in range(lanes.shape[1]):
        h = _fmix(h ^ lanes[:, column])
    return h


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
        return fingerprints(packed, lane, self._salt)

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
        h = fingerprint(self._salt, key)
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



def fingerprint(salt: int, key: bytes) -> int:
    """The fingerprint of one key (unpadded), in plain Python: the arithmetic of :func:`fingerprints`."""
    padded = key.ljust(lane_width(len(key)), b"\x00")
    h = salt
    for start in range(0, len(padded), 8):
        h = _fmix_int(h ^ int.from_bytes(padded[start:start + 8], "little"))
    return h


TABLE_ENTRY_BYTES: Final = 4
"""A :class:`KeyTable` slot: the high 32 bits of a fingerprint (its low bits chose the slot)."""
TABLE_MAX_LOAD: Final = 0.5
"""A table is sized for at most this share of its slots filled (short probe runs)."""
_TABLE_FULL: Final = 0.75
"""Past this share of slots filled (more keys than the table was made for), new keys go to an overflow filter."""


def table_slots_for(records: int | None, largest_bits_log2: int = DEFAULT_FILTER_BITS_LOG2) -> int | None:
    """Slots of a :class:`KeyTable` for ``records`` keys within the filter's memory, or None when they do not fit.

    The table takes at most the memory a :class:`KeyFilter` of ``largest_bits_log2`` bits would;
    for more keys than half its slots (or an unknown count) the Bloom filter is used instead.
    """
    if records is None:
        return None
    wanted = 1 << max(10, math.ceil(math.log2(max(1, records) / TABLE_MAX_LOAD)))
    if wanted * TABLE_ENTRY_BYTES > (1 << largest_bits_log2) >> 3:
        return None
    return wanted


class KeyTable:
    """An open-addressing hash set of key fingerprints in fixed memory: false suspects are very rare.

    The same keyed 64-bit fingerprints as :class:`KeyFilter`: their low bits choose the
    first slot (linear probing), their high 32 bits are what the slot keeps (0 means
    empty, so a high half of 0 is kept as 1).  A key equal to an earlier one has the same
    fingerprint, walks the same slots and meets its entry before any empty slot, so it is
    always a suspect; a different key is a (false) suspect only when its high half equals
    an entry on its probe run, about one key in 2^31.  It reads one or two slots a key where
    the Bloom filter reads and writes six bits, so it is used when the number of keys is
    known and fits (:func:`table_slots_for`).  Should more keys come than it was made for
    (the file grew while read), the table is only looked up from then on and the new keys
    go into a Bloom filter of a quarter of the largest size as well: memory stays bounded.
    """

    def __init__(self, slots: int, salt: int | None = None, *,
                 largest_bits_log2: int = DEFAULT_FILTER_BITS_LOG2) -> None:
        if slots < 2 or slots & (slots - 1):
            raise ValueError("slots must be a power of two")
        self._mask = slots - 1
        self._salt = secrets.randbits(64) if salt is None else salt & _MASK64
        self._pages = mmap.mmap(-1, slots * TABLE_ENTRY_BYTES)  # returned to the system when the table goes
        self.slots = np.frombuffer(self._pages, dtype=np.uint32)
        self.count = 0
        self._overflow_log2 = max(MIN_FILTER_BITS_LOG2, largest_bits_log2 - 2)
        self.overflow: KeyFilter | None = None

    @property
    def nbytes(self) -> int:
        return int(self.slots.nbytes) + (0 if self.overflow is None else self.overflow.nbytes)

    def fingerprints(self, packed: bytes | bytearray, lane: int) -> Fingerprints:
        return fingerprints(packed, lane, self._salt)

    def _split(self, h: Fingerprints) -> tuple[npt.NDArray[np.intp], npt.NDArray[np.uint32]]:
        entries = (h >> np.uint64(32)).astype(np.uint32)
        entries[entries == 0] = 1
        return (h & np.uint64(self._mask)).astype(np.intp), entries

    def add_block(self, packed: bytes | bytearray, lane: int) -> npt.NDArray[np.intp]:
        """Add every key of a packed block; return the indices of the suspects, in order.

        Suspects: keys whose entry is met on their probe run (an earlier key, or rarely
        chance), and every copy of a fingerprint that occurs more than once in the block.
        """
        h = self.fingerprints(packed, lane)
        slot, entry = self._split(h)
        suspect = np.zeros(h.size, dtype=np.bool_)
        pending = np.arange(h.size)
        if h.size > 1:
            ordered = np.sort(h)
            repeated = ordered[1:][ordered[1:] == ordered[:-1]]
            if repeated.size:  # the same fingerprint twice in the block: suspects, kept out of the table
                suspect = np.isin(h, repeated)
                pending = np.flatnonzero(~suspect)
        insert = self.overflow is None
        table, mask = self.slots, self._mask
        inserted = 0
        at, want = slot[pending], entry[pending]
        while pending.size > 32:  # distinct fingerprints: of two writes to one slot, one stays
            current = table[at]
            found = current == want
            empty = current == 0
            if insert:
                table[at[empty]] = want[empty]
                settled = found | (empty & (table[at] == want))  # the writes that stayed
                inserted += int(np.count_nonzero(settled)) - int(np.count_nonzero(found))
            else:
                settled = found | empty
            if found.any():
                suspect[pending[found]] = True
            # Another entry: go on to the next slot; a lost write: read the same slot again.
            at = np.where(found | empty, at, (at + 1) & mask)
            keep = ~settled
            pending, at, want = pending[keep], at[keep], want[keep]
        slot[pending], entry[pending] = at, want
        for index in pending.tolist():
            if self._probe(int(slot[index]), int(entry[index]), insert):
                suspect[index] = True
            else:
                inserted += insert
        self.count += inserted
        if self.overflow is not None:
            suspect[self.overflow.add_block(packed, lane)] = True
        elif self.count > _TABLE_FULL * (self._mask + 1):
            self.overflow = KeyFilter(self._overflow_log2, salt=self._salt)
        return np.flatnonzero(suspect)

    def _probe(self, at: int, want: int, insert: bool) -> bool:
        """Whether ``want`` is met on the run from slot ``at``; if not and ``insert``, it is kept."""
        table, mask = self.slots, self._mask
        while True:
            current = int(table[at])
            if current == want:
                return True
            if current == 0:
                if insert:
                    table[at] = want
                return False
            at = (at + 1) & mask

    def add_one(self, key: bytes) -> bool:
        """Add one key (unpadded); ``True`` when it is a suspect.  Plain Python, same arithmetic as the block."""
        h = fingerprint(self._salt, key)
        insert = self.overflow is None
        suspect = self._probe(h & self._mask, (h >> 32) or 1, insert)
        if not insert:
            assert self.overflow is not None
            return self.overflow.add_one(key) or suspect
        self.count += not suspect
        if self.count > _TABLE_FULL * (self._mask + 1):
            self.overflow = KeyFilter(self._overflow_log2, salt=self._salt)
        return suspect
