"""Fixed-size key indexes for the uniqueness check: a log of fingerprints, and a Bloom filter.

Pure: no clock, no files.  :class:`KeyLog` keeps every key's 64-bit fingerprint when the
number of keys is known and fits, and finds the repeated ones by one sort at the end (a
different key shares a fingerprint with odds of about n² / 2^65); :class:`KeyFilter` (a
Bloom filter) answers "maybe seen before" or "surely not seen" for more keys or an
unknown number.  The :class:`~kei_gateway.layouts.validator.Validator` keeps the
fingerprints of the repeated or "maybe" keys (the suspects) and settles them in a second
read of the file, so the result is exact while memory stays fixed whatever the file size.

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
from array import array
from collections.abc import Generator
from typing import Final, Protocol

import numpy as np
import numpy.typing as npt

__all__ = ["KeyFilter", "KeyLog", "Scratch", "MemoryScratch", "SpilledLog", "log_capacity_for", "fingerprint", "fingerprints", "DEFAULT_FILTER_BITS_LOG2",
           "DEFAULT_HASHES", "MIN_FILTER_BITS_LOG2", "lane_width", "filter_bits_for"]

DEFAULT_FILTER_BITS_LOG2: Final = 27
"""2^27 bits = 16 MiB: about 1 in 10^6 false suspects at 1 M keys, a few thousand in all at 7.7 M."""
DEFAULT_HASHES: Final = 4
"""Bits a key sets.  Six gave ~800 false suspects at 7.7 M keys in 16 MiB and four ~2,800, but
each position is a random read and write: four cost 40 % less, and the second read settles
the extra suspects in a tenth of that."""
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
        if not 6 <= bits_log2 <= 32:
            raise ValueError("bits_log2 must be between 6 and 32")
        self.hashes = hashes
        self.size_bits = 1 << bits_log2
        self._mask = np.uint32(self.size_bits - 1)
        self.salt = secrets.randbits(64) if salt is None else salt & _MASK64
        # Anonymous pages, zero until touched and returned to the system when the filter goes
        # (a heap allocation of this size could stay in the process after it is freed).
        self._pages = mmap.mmap(-1, max(self.size_bits >> 3, 1))
        self.bits = np.frombuffer(self._pages, dtype=np.uint8)

    @property
    def nbytes(self) -> int:
        return int(self.bits.nbytes)

    def fingerprints(self, packed: bytes | bytearray, lane: int) -> Fingerprints:
        """The fingerprint of each key in ``packed`` (keys of ``lane`` bytes each, ``lane`` a multiple of 8)."""
        return fingerprints(packed, lane, self.salt)

    def _positions(self, h: Fingerprints) -> npt.NDArray[np.uint32]:
        """``hashes × n`` bit positions: ``(low + i × (high | 1)) mod size`` of each fingerprint's 32-bit halves.

        In ``uint32`` (wrapping mod 2^32, which the size divides), one row per hash: half the
        memory traffic of ``uint64`` and rows that are contiguous.
        """
        second = (h >> np.uint64(32)).astype(np.uint32)
        second |= np.uint32(1)
        positions = np.empty((self.hashes, h.size), dtype=np.uint32)
        positions[0] = h.astype(np.uint32)  # the low half
        for row in range(1, self.hashes):
            np.add(positions[row - 1], second, out=positions[row])
        positions &= self._mask
        return positions

    def add_block(self, packed: bytes | bytearray, lane: int) -> npt.NDArray[np.intp]:
        """Add every key of a packed block; return the indices of the suspects, in order.

        A key is a suspect when all its bits were already set before the block
        (perhaps an earlier key, perhaps chance) or when its fingerprint occurs
        twice in the block.  Every key equal to an earlier one is a suspect.
        """
        return self.add_fingerprints(self.fingerprints(packed, lane))

    def add_fingerprints(self, h: Fingerprints) -> npt.NDArray[np.intp]:
        """:meth:`add_block` for keys given by their fingerprints (this filter's salt)."""
        positions = self._positions(h)
        index = positions >> np.uint32(3)
        bit = np.left_shift(np.uint8(1), (positions & np.uint32(7)).astype(np.uint8))
        found = self.bits[index]
        found &= bit
        seen = found.all(axis=0)
        if h.size > 1:
            ordered = np.sort(h)
            repeated = ordered[1:][ordered[1:] == ordered[:-1]]
            if repeated.size:
                seen |= np.isin(h, repeated)
        self.bits[index] |= bit  # buffered: of two positions in one byte, only the last one's bit may stick
        missed = (self.bits[index] & bit) == 0
        if missed.any():  # rare: those positions again, unbuffered
            np.bitwise_or.at(self.bits, index[missed], bit[missed])
        return np.flatnonzero(seen)

    def add_one(self, key: bytes) -> bool:
        """Add one key (unpadded); ``True`` when it is a suspect.  Plain Python, same arithmetic as the block."""
        h = fingerprint(self.salt, key)
        first, second = h & 0xFFFFFFFF, (h >> 32) | 1
        bits = self.bits
        suspect = True
        for step in range(self.hashes):
            position = (first + step * second) & int(self._mask)
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


LOG_ENTRY_BYTES: Final = 8
"""A :class:`KeyLog` entry: a key's whole 64-bit fingerprint."""
_NO_SUSPECTS: Final = np.zeros(0, dtype=np.intp)


def log_capacity_for(records: int | None, largest_bits_log2: int = DEFAULT_FILTER_BITS_LOG2) -> int | None:
    """Entries of a :class:`KeyLog` for ``records`` keys within the filter's memory, or None when they do not fit.

    The log takes at most the memory a :class:`KeyFilter` of ``largest_bits_log2`` bits would
    (16 MiB: 2,097,152 keys); for more keys (or an unknown count) the Bloom filter is used instead.
    """
    if records is None:
        return None
    wanted = max(1024, records)
    if wanted * LOG_ENTRY_BYTES > (1 << largest_bits_log2) >> 3:
        return None
    return wanted


class KeyLog:
    """Every key's keyed 64-bit fingerprint in arrival order, in fixed memory; repeats found by one sort at the end.

    Adding a block of keys is a copy of its fingerprints: no look-up, so nothing is a
    suspect while the file is read (:meth:`add_fingerprints` returns no index);
    :meth:`repeated` then sorts the log in place (a vectorised sort of a million 64-bit
    integers takes a few milliseconds, where a hash table's random slot reads cost a
    quarter of the validation) and returns the fingerprints that occur more than once.
    Every key equal to an earlier one has the same fingerprint, so its fingerprint is
    among them; a different key shares one with odds of about n² / 2^65 (10^-7 at two
    million keys).  Used when the number of keys is known and fits
    (:func:`log_capacity_for`).  Should more keys come than it was made for (the file
    grew while read), the log is sorted there and only looked up from then on, and the
    new keys go into a Bloom filter of a quarter of the largest size as well (they are
    then suspects at once): memory stays bounded.
    """

    def __init__(self, capacity: int, salt: int | None = None, *,
                 largest_bits_log2: int = DEFAULT_FILTER_BITS_LOG2) -> None:
        if capacity < 1:
            raise ValueError("capacity must be at least 1")
        self.capacity = capacity
        self.salt = secrets.randbits(64) if salt is None else salt & _MASK64
        self._pages = mmap.mmap(-1, capacity * LOG_ENTRY_BYTES)  # returned to the system when the log goes
        self.entries = np.frombuffer(self._pages, dtype=np.uint64)
        self.count = 0
        self._overflow_log2 = max(MIN_FILTER_BITS_LOG2, largest_bits_log2 - 2)
        self.overflow: KeyFilter | None = None

    @property
    def nbytes(self) -> int:
        return int(self.entries.nbytes) + (0 if self.overflow is None else self.overflow.nbytes)

    def fingerprints(self, packed: bytes | bytearray, lane: int) -> Fingerprints:
        return fingerprints(packed, lane, self.salt)

    def add_block(self, packed: bytes | bytearray, lane: int) -> npt.NDArray[np.intp]:
        """Add every key of a packed block; the indices of the suspects (none until the log is full)."""
        return self.add_fingerprints(self.fingerprints(packed, lane))

    def add_fingerprints(self, h: Fingerprints) -> npt.NDArray[np.intp]:
        taken = min(self.capacity - self.count, h.size)
        self.entries[self.count:self.count + taken] = h[:taken]
        self.count += taken
        if taken == h.size:
            return _NO_SUSPECTS
        if self.overflow is None:  # full: sorted once, looked up from now on
            self.entries.sort()
            self.overflow = KeyFilter(self._overflow_log2, salt=self.salt)
        rest = h[taken:]
        at = np.minimum(np.searchsorted(self.entries, rest), self.capacity - 1)
        suspect = self.entries[at] == rest
        suspect[self.overflow.add_fingerprints(rest)] = True
        return np.flatnonzero(suspect) + taken

    def add_one(self, key: bytes) -> bool:
        """Add one key (unpadded); ``True`` when it is a suspect (only once the log is full)."""
        return bool(self.add_fingerprints(np.array([fingerprint(self.salt, key)], dtype=np.uint64)).size)

    def repeated(self) -> Generator[Fingerprints, None, None]:
        """The fingerprints that occur more than once in the log (which this sorts in place): one sorted array."""
        entries = self.entries[:self.count]
        if self.overflow is None:
            entries.sort()
        same = entries[1:] == entries[:-1]
        if same.any():
            yield np.unique(entries[1:][same])


class Scratch(Protocol):
    """Where a :class:`SpilledLog` puts what does not fit in memory: append-only, read back by handle.

    The daemon's is an unnamed, encrypted temporary file (``kei_gateway.adapters.scratch``);
    :class:`MemoryScratch` is the in-memory twin.
    """

    def append(self, data: bytes) -> int:
        """Keep ``data``; return the handle :meth:`read` takes to give it back."""

    def read(self, handle: int, size: int) -> bytes:
        """The ``size`` bytes kept under ``handle``."""

    def close(self) -> None:
        """Nothing will be read any more: give the space back."""


class MemoryScratch:
    """:class:`Scratch` in a ``bytearray`` (tests, and callers whose input is in memory anyway)."""

    def __init__(self) -> None:
        self.data = bytearray()
        self.appended = 0
        self.closed = False

    def append(self, data: bytes) -> int:
        handle = len(self.data)
        self.data += data
        self.appended += 1
        return handle

    def read(self, handle: int, size: int) -> bytes:
        return bytes(self.data[handle:handle + size])

    def close(self) -> None:
        self.data = bytearray()
        self.closed = True


SPILL_STAGING: Final = (1 << 16, 1 << 18)
"""Fingerprints gathered (512 KiB to 2 MiB: about 1,024 a partition) before they are sorted, cut by
partition and appended to the scratch: chunks of ~8 KiB, ~30,000 of them for a 2 GiB file."""
SPILL_PASS_BYTES: Final = 1 << 20
"""Fingerprints sorted at once at the end (1 MiB): a partition larger than this is done in several passes.
With 4 MiB (and 2 MiB of staging) validating 7.7 M records peaked at 62 MB, with 1 MiB at 53 MB, same CPU."""
SPILL_UNKNOWN_RECORDS: Final = 1 << 25
"""Records assumed when the count is unknown, for the number of partitions (about 2 GiB of 70-byte records)."""
_MAX_PARTITIONS_LOG2: Final = 12


class SpilledLog:
    """Every key's keyed 64-bit fingerprint, in partitions on a :class:`Scratch`: exact like :class:`KeyLog`, at any size.

    Fingerprints are gathered in a fixed staging array; when it is full it is sorted, cut by the
    fingerprints' top bits into ``2 ** k`` partitions (enough that each holds about
    :data:`SPILL_PASS_BYTES` for the expected number of records), and each piece is appended to
    the scratch as a sorted chunk.  :meth:`repeated` then reads one partition at a time (a larger
    partition than expected in several passes, by ranges of its values) and sorts it: the memory
    is the staging array and one pass, whatever the number of records; the scratch takes 8 bytes a
    record.  Nothing is a suspect while the file is read; every key equal to an earlier one
    repeats its fingerprint, and a different key shares one with odds of about n² / 2^65.
    """

    def __init__(self, scratch: Scratch, records: int | None = None, salt: int | None = None, *,
                 staging: int | None = None, pass_bytes: int = SPILL_PASS_BYTES) -> None:
        self.scratch = scratch
        self.salt = secrets.randbits(64) if salt is None else salt & _MASK64
        expected = SPILL_UNKNOWN_RECORDS if records is None else max(records, 1)
        bits = 0
        while bits < _MAX_PARTITIONS_LOG2 and expected * LOG_ENTRY_BYTES > (pass_bytes << bits):
            bits += 1
        self.partitions = 1 << bits
        self._width = 1 << (64 - bits)  # values per partition (a Python int: 2^64 for one partition)
        self._edges = np.array([part * self._width for part in range(1, self.partitions)], dtype=np.uint64)
        self._chunks: list[array[int]] = [array("q") for _ in range(self.partitions)]
        """Per partition: handle, count, handle, count … of its chunks (16 bytes a chunk)."""
        if staging is None:
            staging = min(max(self.partitions << 10, SPILL_STAGING[0]), SPILL_STAGING[1])
        self._staged = np.empty(staging, dtype=np.uint64)
        self._fill = 0
        self._pass_entries = max(1, pass_bytes // LOG_ENTRY_BYTES)
        self.count = 0

    @property
    def nbytes(self) -> int:
        """Memory held (the staging array); the scratch holds 8 bytes a record besides."""
        return int(self._staged.nbytes)

    def fingerprints(self, packed: bytes | bytearray, lane: int) -> Fingerprints:
        return fingerprints(packed, lane, self.salt)

    def add_block(self, packed: bytes | bytearray, lane: int) -> npt.NDArray[np.intp]:
        return self.add_fingerprints(self.fingerprints(packed, lane))

    def add_fingerprints(self, h: Fingerprints) -> npt.NDArray[np.intp]:
        """Keep every fingerprint; nothing is a suspect before :meth:`repeated` (no index is returned)."""
        done = 0
        while done < h.size:
            taken = min(self._staged.size - self._fill, h.size - done)
            self._staged[self._fill:self._fill + taken] = h[done:done + taken]
            self._fill += taken
            done += taken
            if self._fill == self._staged.size:
                self._flush()
        self.count += h.size
        return _NO_SUSPECTS

    def add_one(self, key: bytes) -> bool:
        self.add_fingerprints(np.array([fingerprint(self.salt, key)], dtype=np.uint64))
        return False

    def _flush(self) -> None:
        staged = self._staged[:self._fill]
        staged.sort()
        cuts = [0, *np.searchsorted(staged, self._edges).tolist(), staged.size]
        for part, (start, end) in enumerate(zip(cuts, cuts[1:])):
            if end > start:
                self._chunks[part].extend((self.scratch.append(staged[start:end].tobytes()), end - start))
        self._fill = 0

    def _values(self, part: int, low: int, high: int) -> Fingerprints:
        """The partition's fingerprints in ``[low, high)`` (every chunk is sorted: a cut of each)."""
        pieces = []
        bounds = np.array([low, min(high, _MASK64)], dtype=np.uint64)
        chunks = self._chunks[part]
        for handle, count in zip(chunks[0::2], chunks[1::2]):
            chunk = np.frombuffer(self.scratch.read(handle, count * LOG_ENTRY_BYTES), dtype=np.uint64)
            start, end = np.searchsorted(chunk, bounds).tolist()
            if high > _MASK64:  # the last range takes the largest value too
                end = chunk.size
            pieces.append(chunk[start:end])
        return np.concatenate(pieces) if pieces else np.zeros(0, dtype=np.uint64)

    def repeated(self) -> Generator[Fingerprints, None, None]:
        """The fingerprints that occur more than once, partition by partition (each array sorted, distinct).

        The scratch is closed once the last partition is read.
        """
        if self._fill:
            self._flush()
        try:
            for part in range(self.partitions):
                total = sum(self._chunks[part][1::2])
                if total < 2:
                    continue
                passes = -(-total // self._pass_entries)
                low = part * self._width
                for step in range(passes):
                    values = self._values(part, low + self._width * step // passes,
                                          low + self._width * (step + 1) // passes)
                    values.sort()
                    same = values[1:] == values[:-1]
                    if same.any():
                        yield np.unique(values[1:][same])
        finally:
            self.close()

    def close(self) -> None:
        self._chunks = [array("q") for _ in range(self.partitions)]
        self.scratch.close()
