"""Uniqueness within a file (SPEC §2: e.g. (chassis_no, tax_year)), in fixed memory when the file can be re-read.

:class:`Columns` cuts the key fields out of a block of whole records with strided
slices; :class:`ExactKeys` keeps every key (input read once); :class:`FilteredKeys` puts
keys in a fixed-size log of fingerprints, a log spilled to a scratch (larger files), or a
Bloom filter, and keeps only the suspects (as fingerprints, at most :data:`MAX_SUSPECTS`),
which :class:`SuspectKeys` settles exactly in a second read.  Pure; the scratch is injected.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Final

import numpy as np
import numpy.typing as npt

from kei_gateway.layouts._keyfilter import (
    DEFAULT_FILTER_BITS_LOG2, KeyFilter, KeyLog, Scratch, SpilledLog, filter_bits_for, fingerprint, fingerprints,
    lane_width, log_capacity_for,
)
from kei_gateway.layouts.fields import Kind, Layout

__all__ = ["Columns", "ExactKeys", "FilteredKeys", "MAX_SUSPECTS", "SuspectKeys", "SuspectSet", "Uniqueness"]

MAX_SUSPECTS: Final = 1 << 16
"""Distinct suspect fingerprints kept for the second read (512 KiB; the second read keeps one key per
suspect, a few MB): a valid file of 7.7 M records leaves none with a log and ~2,900 with the Bloom
filter.  A file with more is refused without the second read (:attr:`SuspectSet.overflowed`)."""


class SuspectSet:
    """Distinct 64-bit fingerprints, sorted, at most ``limit`` of them: past it, :attr:`overflowed` and no more.

    Fingerprints are gathered and merged (``np.union1d``) once as many have come as are kept, so a
    key repeated on every record costs one entry, not one per record.
    """

    def __init__(self, limit: int = MAX_SUSPECTS) -> None:
        self.limit = limit
        self._sorted = np.zeros(0, dtype=np.uint64)
        self._pending: list[npt.NDArray[np.uint64]] = []
        self._pending_count = 0
        self._overflowed = False

    @property
    def overflowed(self) -> bool:
        """More than ``limit`` distinct fingerprints came: none is kept any more."""
        self._merge()
        return self._overflowed

    def add(self, found: npt.NDArray[np.uint64]) -> None:
        if self._overflowed or not found.size:
            return
        self._pending.append(found)
        self._pending_count += found.size
        if self._pending_count >= max(4096, self._sorted.size, self.limit // 16):
            self._merge()

    def _merge(self) -> None:
        if self._pending:
            self._sorted = np.union1d(self._sorted, np.concatenate(self._pending))
            self._pending, self._pending_count = [], 0
        if self._sorted.size > self.limit:
            self._overflowed = True
            self._sorted = np.zeros(0, dtype=np.uint64)

    @property
    def array(self) -> npt.NDArray[np.uint64]:
        """The fingerprints, sorted and distinct (empty once overflowed)."""
        self._merge()
        return self._sorted

    def __len__(self) -> int:
        return int(self.array.size)

    def __bool__(self) -> bool:
        return self.overflowed or len(self) > 0

    def __contains__(self, value: object) -> bool:
        if not isinstance(value, int):
            return False
        array = self.array
        at = int(np.searchsorted(array, np.uint64(value)))
        return at < array.size and int(array[at]) == value


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
    different key with odds of about n² / 2^65); for more records a :class:`SpilledLog`
    (the same log, partitioned on ``scratch()``: 8 bytes a record there, a few MiB in memory)
    when a scratch is given, else a :class:`KeyFilter` (a Bloom filter: a few false suspects
    per million keys at its largest).  Nothing is reported here; a key equal to an earlier one
    is always a suspect, so :class:`SuspectKeys` can settle uniqueness exactly in a second read.
    The suspects are a bounded :class:`SuspectSet`.
    """

    def __init__(self, layout: Layout, records: int | None = None,
                 largest_bits_log2: int = DEFAULT_FILTER_BITS_LOG2,
                 scratch: Callable[[], Scratch] | None = None, max_suspects: int | None = None) -> None:
        self.columns = layout.unique_keys or ()
        self.width = sum(layout[key].width for key in self.columns)
        self.lane = lane_width(self.width)
        capacity = log_capacity_for(records, largest_bits_log2)
        self.filter: KeyFilter | KeyLog | SpilledLog
        if capacity is not None:
            self.filter = KeyLog(capacity, largest_bits_log2=largest_bits_log2)
        elif scratch is not None:
            self.filter = SpilledLog(scratch(), records)
        else:
            self.filter = KeyFilter(filter_bits_for(records, largest_bits_log2))
        self.suspects = SuspectSet(MAX_SUSPECTS if max_suspects is None else max_suspects)
        """Fingerprints (with :attr:`salt`) of the keys the second read must follow."""

    @property
    def salt(self) -> int:
        return self.filter.salt

    @property
    def exact_index(self) -> bool:
        """Every suspect is a repeated 64-bit fingerprint (a log), not a Bloom filter's "maybe"."""
        return not isinstance(self.filter, KeyFilter)

    def block(self, columns: Columns, first_number: int) -> bool:
        h = self.filter.fingerprints(columns.packed_keys(self.columns, self.lane), self.lane)
        found = self.filter.add_fingerprints(h)
        if found.size:
            self.suspects.add(h[found])
        return True

    def record(self, key: bytes, number: int) -> bool:
        if self.filter.add_one(key):
            self.suspects.add(np.array([fingerprint(self.salt, key)], dtype=np.uint64))
        return False

    def finish(self) -> None:
        """The first read is over: the repeated fingerprints of a log join the suspects (until they overflow)."""
        if isinstance(self.filter, (KeyLog, SpilledLog)):
            repeated = self.filter.repeated()
            for found in repeated:
                self.suspects.add(found)
                if self.suspects.overflowed:
                    break
            repeated.close()


_CANDIDATE_FLAGS = 1 << 20


class SuspectKeys:
    """Second read: only the keys whose fingerprint is a suspect's are followed, exactly; a repeat is a duplicate."""

    def __init__(self, layout: Layout, suspects: SuspectSet, salt: int) -> None:
        self.columns = layout.unique_keys or ()
        self.suspects = suspects
        self.seen: set[bytes] = set()
        """One key per suspect fingerprint met (more only for distinct keys sharing one): bounded by the suspects."""
        self.width = sum(layout[key].width for key in self.columns)
        self.lane = lane_width(self.width)
        self._salt = salt  # the first read's: the suspects are its fingerprints
        # 2^20 flags (1 MiB) indexed by 20 bits of a fingerprint: a few candidates a block to look up exactly.
        self._flags = np.zeros(_CANDIDATE_FLAGS, dtype=np.bool_)
        self._flags[suspects.array & np.uint64(_CANDIDATE_FLAGS - 1)] = True

    def is_suspect(self, key: bytes) -> bool:
        return fingerprint(self._salt, key) in self.suspects

    def _candidates(self, columns: Columns) -> tuple[list[int], bytearray]:
        packed = columns.packed_keys(self.columns, self.lane)
        found = fingerprints(packed, self.lane, self._salt)
        flagged = np.flatnonzero(self._flags[found & np.uint64(_CANDIDATE_FLAGS - 1)])
        if not flagged.size:
            return [], packed
        suspects, candidates = self.suspects.array, found[flagged]
        at = np.minimum(np.searchsorted(suspects, candidates), suspects.size - 1)
        return flagged[suspects[at] == candidates].tolist(), packed

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
