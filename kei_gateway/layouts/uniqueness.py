"""Uniqueness within a file (SPEC §2: e.g. (chassis_no, tax_year)), in fixed memory when the file can be re-read.

:class:`Columns` cuts the key fields out of a block of whole records with strided
slices; :class:`ExactKeys` keeps every key (input read once); :class:`FilteredKeys` puts
keys in a fixed-size log of fingerprints or Bloom filter and keeps only the suspects (as
fingerprints), which :class:`SuspectKeys` settles exactly in a second read.  Pure; no I/O.
"""

from __future__ import annotations

import numpy as np

from kei_gateway.layouts._keyfilter import (
    DEFAULT_FILTER_BITS_LOG2, KeyFilter, KeyLog, filter_bits_for, fingerprint, fingerprints, lane_width,
    log_capacity_for,
)
from kei_gateway.layouts.fields import Kind, Layout

__all__ = ["Columns", "ExactKeys", "FilteredKeys", "SuspectKeys", "Uniqueness"]


class Columns:
    """Columns of a block of valid-shaped records, cut out with strided slices (C speed, no per-record objects)."""

    def __init__(self, layout: Layout, block: bytes) -> None:
        self.layout = layout
        self.block = block
        self.count = len(block) // layout.record_length
        self._joined: dict[str, bytes] = {}
        self._values: dict[str, list[bytes]] = {}

    def joined(self, key: str) -> bytes:
        """The field of every record, each followed by LF (valid fields never contain LF)."""
        if key not in self._joined:
            width, start, size = self.layout[key].width, self.layout.offsets[key], self.layout.record_length
            column = bytearray(b"\n" * (self.count * (width + 1)))
            for index in range(width):
                column[index::width + 1] = self.block[start + index::size]
            self._joined[key] = bytes(column)
        return self._joined[key]

    def keys(self, keys: tuple[str, ...]) -> list[bytes]:
        """The named fields of every record concatenated, one ``bytes`` per record (unique keys)."""
        if len(keys) == 1:
            return self.values(keys[0])
        size = self.layout.record_length
        parts = [(self.layout.offsets[key], self.layout[key].width) for key in keys]
        lane = sum(width for _, width in parts) + 1
        column = bytearray(b"\n" * (self.count * lane))
        position = 0
        for start, width in parts:
            for index in range(width):
                column[position::lane] = self.block[start + index::size]
                position += 1
        return bytes(column).split(b"\n")[:-1]

    def packed_keys(self, keys: tuple[str, ...], lane: int) -> bytearray:
        """The named fields of every record concatenated, each record's key zero-padded to ``lane`` bytes."""
        size = self.layout.record_length
        column = np.zeros((self.count, lane), dtype=np.uint8)
        position = 0
        for key in keys:
            start, width = self.layout.offsets[key], self.layout[key].width
            column[:, position:position + width] = np.ndarray((self.count, width), dtype=np.uint8, buffer=self.block,
                                                              offset=start, strides=(size, 1))
            position += width
        return bytearray(column.data)

    def values(self, key: str) -> list[bytes]:
        """The field's raw bytes, one per record."""
        if key not in self._values:
            self._values[key] = self.joined(key).split(b"\n")[:-1]
        return self._values[key]


class ExactKeys:
    """Every key kept exactly in a set: the uniqueness check for input that can be read only once.

    About 95 bytes a record (an ``int`` when all unique fields are digits, else ``bytes``).
    """

    def __init__(self, layout: Layout) -> None:
        self.columns = layout.unique_keys or ()
        self.numeric = all(layout[key].kind is Kind.N for key in self.columns)
        self.seen: set[object] = set()

    def block(self, columns: Columns, first_number: int) -> bool:
        """Fast path: ``False`` (nothing recorded) when a key of the block repeats an earlier one."""
        joined = columns.keys(self.columns)
        keys: list[object] = list(map(int, joined)) if self.numeric else list(joined)
        if not self.seen.isdisjoint(keys):
            return False
        before = len(self.seen)
        self.seen.update(keys)
        if len(self.seen) - before != columns.count:  # a key repeats inside the block
            self.seen.difference_update(keys)  # none was there before (disjoint), so this undoes the update
            return False
        return True

    def record(self, key: bytes, number: int) -> bool:
        """``True`` when the record repeats an earlier key."""
        exact: object = int(key) if self.numeric else key
        if exact in self.seen:
            return True
        self.seen.add(exact)
        return False


class FilteredKeys:
    """First read: keys go into a fixed-size index; the fingerprints of the suspects are kept.

    The index is a :class:`KeyLog` of every key's 64-bit fingerprint when the number of
    records is known and fits in the memory of the largest filter (the repeated
    fingerprints, found at :meth:`finish`, are the suspects: every repeated key, and a
    different key with odds of about n² / 2^65), else a :class:`KeyFilter` (a Bloom
    filter: a few false suspects per million keys at its largest).  Nothing is reported
    here; a key equal to an earlier one is always a suspect, so :class:`SuspectKeys` can
    settle uniqueness exactly in a second read.
    """

    def __init__(self, layout: Layout, records: int | None = None,
                 largest_bits_log2: int = DEFAULT_FILTER_BITS_LOG2) -> None:
        self.columns = layout.unique_keys or ()
        self.width = sum(layout[key].width for key in self.columns)
        self.lane = lane_width(self.width)
        capacity = log_capacity_for(records, largest_bits_log2)
        self.filter: KeyFilter | KeyLog = KeyFilter(filter_bits_for(records, largest_bits_log2)) if capacity is None \
            else KeyLog(capacity, largest_bits_log2=largest_bits_log2)
        self.suspects: set[int] = set()
        """Fingerprints (with :attr:`salt`) of the keys the second read must follow."""

    @property
    def salt(self) -> int:
        return self.filter.salt

    def block(self, columns: Columns, first_number: int) -> bool:
        h = self.filter.fingerprints(columns.packed_keys(self.columns, self.lane), self.lane)
        found = self.filter.add_fingerprints(h)
        if found.size:
            self.suspects.update(h[found].tolist())
        return True

    def record(self, key: bytes, number: int) -> bool:
        if self.filter.add_one(key):
            self.suspects.add(fingerprint(self.salt, key))
        return False

    def finish(self) -> None:
        """The first read is over: the repeated fingerprints of the log join the suspects."""
        if isinstance(self.filter, KeyLog):
            self.suspects |= self.filter.repeated()


_CANDIDATE_FLAGS = 1 << 20


class SuspectKeys:
    """Second read: only the keys whose fingerprint is a suspect's are followed, exactly; a repeat is a duplicate."""

    def __init__(self, layout: Layout, suspects: set[int], salt: int) -> None:
        self.columns = layout.unique_keys or ()
        self.suspects = suspects
        self.seen: set[bytes] = set()
        self.width = sum(layout[key].width for key in self.columns)
        self.lane = lane_width(self.width)
        self._salt = salt  # the first read's: the suspects are its fingerprints
        # 2^20 flags (1 MiB) indexed by 20 bits of a fingerprint: a few candidates a block to look up exactly.
        self._flags = np.zeros(_CANDIDATE_FLAGS, dtype=np.bool_)
        self._flags[[suspect & (_CANDIDATE_FLAGS - 1) for suspect in suspects]] = True

    def is_suspect(self, key: bytes) -> bool:
        return fingerprint(self._salt, key) in self.suspects

    def _candidates(self, columns: Columns) -> tuple[list[int], bytearray]:
        packed = columns.packed_keys(self.columns, self.lane)
        found = fingerprints(packed, self.lane, self._salt)
        flagged = np.flatnonzero(self._flags[found & np.uint64(_CANDIDATE_FLAGS - 1)])
        return [int(index) for index in flagged if int(found[index]) in self.suspects], packed

    def candidates(self, columns: Columns) -> list[int]:
        """Indices of the block's records whose key's fingerprint is a suspect's (every one whose key is)."""
        return self._candidates(columns)[0]

    def block(self, columns: Columns, first_number: int) -> bool:
        indices, packed = self._candidates(columns)
        if not indices:
            return True
        lane, width = self.lane, self.width
        hits = [bytes(packed[index * lane:index * lane + width]) for index in indices]
        if len(set(hits)) != len(hits) or not self.seen.isdisjoint(hits):
            return False  # the record-by-record path reports it at its place
        self.seen.update(hits)
        return True

    def record(self, key: bytes, number: int) -> bool:
        if not self.is_suspect(key):
            return False
        if key in self.seen:
            return True
        self.seen.add(key)
        return False


Uniqueness = ExactKeys | FilteredKeys | SuspectKeys
