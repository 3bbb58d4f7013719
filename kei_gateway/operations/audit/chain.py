"""The audit chain, pure: canonical bytes of a record, its HMAC, and walking a chain.

Each record's MAC is ``HMAC-SHA256(key, DOMAIN || previous_mac || 0x00 || canonical(record))``
where ``previous_mac`` is the MAC of the record before it (``GENESIS_MAC`` for the very first
one). The record stores ``previous_mac`` too, so a walk can tell *what* happened at the first
break, not only *where*:

* **changed** — the record's own MAC does not match its content (a field, its MAC or its
  link was edited);
* **inserted** — the record does not belong (its MAC is wrong, or it is a copy of a valid
  record) and the record after it links straight to the record before it;
* **deleted** — a valid record links to a MAC that is not the one before it (records are
  missing: a gap in sequence numbers, or records removed and the rest renumbered), or the
  chain ends before the head, or starts later than the last purge anchor says;
* **reordered** — a valid record links to a record that comes *after* it.

The sequence number orders the records but is not under the MAC: the links are the order.
A purge (:meth:`kei_gateway.operations.audit.AuditLog.purge_before`) deletes the oldest records and
appends an *anchor* record (event ``audit.purged``) that carries the sequence and MAC of the
last record it deleted; the first kept record must link to exactly that MAC (or to
``GENESIS_MAC`` when nothing was ever purged).

**The head is authenticated.** The head row (newest sequence and MAC) carries its own MAC,
``HMAC-SHA256(key, HEAD_DOMAIN || sequence || 0x00 || mac)`` (:func:`head_mac`), so cutting
records off the end and moving the head back to match needs the key; a head that does not
match its MAC is reported **truncated**. Records written since the head was authenticated
use the record domain ``v2`` (records written before — schema 0005 — use ``v1``, and are
accepted only before the first ``v2`` record): a chain holding a ``v2`` record must have an
authenticated head, so removing the head's MAC is tampering too, not a legacy head. A head
written before the upgrade (no MAC yet, only ``v1`` records) verifies with a warning until
the first append authenticates it. An append that finds the head not matching its MAC does
not authenticate the new head: it writes :data:`BROKEN_HEAD_PREFIX` and the sequence it was
appending, so the next appends cannot hide the break (see :meth:`AuditLog.append_batch`).
"""

from __future__ import annotations

import hashlib
import hmac
import json
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, fields
from datetime import datetime, timezone

__all__ = [
    "AuditRecord", "StoredRecord", "ChainHead", "ChainProblem", "ChainReport",
    "canonical", "mac", "chain", "verify_chain", "utc", "GENESIS_MAC", "ANCHOR_EVENT", "KINDS",
    "head_mac", "head_authentic", "record_version", "BROKEN_HEAD_PREFIX", "UNAUTHENTICATED_HEAD",
]

GENESIS_MAC = "0" * 64
"""What the first record ever written links to."""
ANCHOR_EVENT = "audit.purged"
"""The event of a purge's anchor record."""
KINDS = ("changed", "deleted", "inserted", "reordered", "truncated")
BROKEN_HEAD_PREFIX = "broken:"
"""A head MAC that says: an append found the head forged; ``broken:<the first sequence appended then>``."""
UNAUTHENTICATED_HEAD = "head not yet authenticated"
"""The start of the warning for a head written before schema 0006 (no MAC yet)."""
_DOMAINS = {1: b"kei-gateway audit v1\x00", 2: b"kei-gateway audit v2\x00"}
_HEAD_DOMAIN = b"kei-gateway audit head v1\x00"
_REASON_MAX = 255


def utc(when: datetime) -> datetime:
    """*when* in UTC; a naive value (SQLite returns those) is taken to be UTC already."""
    if when.tzinfo is None:
        return when.replace(tzinfo=timezone.utc)
    return when.astimezone(timezone.utc)


@dataclass(frozen=True)
class AuditRecord:
    """What one audit record says (SPEC §7, issue 6): never a personal value, never a file name.

    ``count`` is the number of records or files the event concerns; ``listener`` and
    ``source`` name a listener and the address a connection came from (denials);
    ``anchor_sequence``/``anchor_mac`` are set on purge anchors only.
    """

    time: datetime
    actor: str
    event: str
    flow: str | None = None
    peer: str | None = None
    listener: str | None = None
    source: str | None = None
    transfer_id: int | None = None
    sha256: str | None = None
    count: int | None = None
    reason: str | None = None
    anchor_sequence: int | None = None
    anchor_mac: str | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "time", utc(self.time))
        for name in ("actor", "event", "flow", "peer", "listener", "source", "sha256", "reason", "anchor_mac"):
            value = getattr(self, name)
            if isinstance(value, str) and not value.isascii():
                # A lone surrogate (an undecodable file name in an OS error) cannot be encoded or stored:
                # the record would fail every append, and the observer would retry its batch forever.
                object.__setattr__(self, name, value.encode("utf-8", "surrogatepass").decode("utf-8", "replace"))
        if self.reason is not None and len(self.reason) > _REASON_MAX:
            object.__setattr__(self, "reason", self.reason[:_REASON_MAX - 1] + "…")


FIELD_NAMES = tuple(f.name for f in fields(AuditRecord))


@dataclass(frozen=True)
class StoredRecord:
    """A record in the chain: its sequence number, what it says, its link and its MAC."""

    sequence: int
    record: AuditRecord
    previous_mac: str
    mac: str


@dataclass(frozen=True)
class ChainHead:
    """The newest record's sequence and MAC, kept in one row that every append updates.

    ``head_mac`` authenticates the two (:func:`head_mac`); ``None`` on a head written before
    schema 0006 that no append has authenticated yet, or a :data:`BROKEN_HEAD_PREFIX` mark.
    """

    sequence: int
    mac: str
    head_mac: str | None = None


@dataclass(frozen=True)
class ChainProblem:
    """The first break of a chain: the record (by sequence), the kind (:data:`KINDS`) and what it means."""

    sequence: int
    kind: str
    detail: str


@dataclass(frozen=True)
class ChainReport:
    """What a walk found: OK with the number of records, or the first problem.

    ``warning`` is set on an OK walk that could not check everything (a head not yet authenticated).
    """

    count: int
    problem: ChainProblem | None = None
    warning: str | None = None

    @property
    def ok(self) -> bool:
        return self.problem is None

    def text(self) -> str:
        if self.problem is None:
            return f"OK, {self.count} records" + (f" (warning: {self.warning})" if self.warning else "")
        return f"TAMPERED: record {self.problem.sequence} {self.problem.kind}: {self.problem.detail}"


def canonical(record: AuditRecord) -> bytes:
    """The bytes the MAC covers: compact JSON with sorted keys, UTF-8, time as UTC with microseconds."""
    data: dict[str, object] = {"v": 1}
    for name in FIELD_NAMES:
        value = getattr(record, name)
        if name == "time":
            value = utc(value).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
        data[name] = value
    return json.dumps(data, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode("utf-8")


def mac(key: bytes, record: AuditRecord, previous_mac: str, version: int = 2) -> str:
    """The record's HMAC-SHA256 (hex) under *key*, chained to *previous_mac* (*version* 1: before schema 0006)."""
    message = _DOMAINS[version] + previous_mac.encode("ascii") + b"\x00" + canonical(record)
    return hmac.new(key, message, hashlib.sha256).hexdigest()


def head_mac(key: bytes, sequence: int, last_mac: str) -> str:
    """The head row's HMAC-SHA256 (hex) under *key*: it ends at *sequence*, whose MAC is *last_mac*."""
    message = _HEAD_DOMAIN + str(int(sequence)).encode("ascii") + b"\x00" + last_mac.encode("ascii")
    return hmac.new(key, message, hashlib.sha256).hexdigest()


def head_authentic(key: bytes, head: ChainHead) -> bool:
    """Whether *head* carries the MAC of its sequence and last MAC (``False`` without one, or when marked broken)."""
    if head.head_mac is None or head.head_mac.startswith(BROKEN_HEAD_PREFIX):
        return False
    return hmac.compare_digest(head_mac(key, head.sequence, head.mac), head.head_mac)


def record_version(key: bytes, stored: StoredRecord) -> int:
    """2 or 1 when *stored*'s MAC matches its content and link under that domain, 0 when it matches neither."""
    for version in (2, 1):
        if hmac.compare_digest(mac(key, stored.record, stored.previous_mac, version), stored.mac):
            return version
    return 0


def chain(key: bytes, records: Iterable[AuditRecord], head: ChainHead, version: int = 2) -> list[StoredRecord]:
    """*records* chained after *head*: sequence numbers and MACs, in order (*version* 1 only to build old chains in tests)."""
    stored: list[StoredRecord] = []
    sequence, previous = head.sequence, head.mac
    for record in records:
        sequence += 1
        value = mac(key, record, previous, version)
        stored.append(StoredRecord(sequence, record, previous, value))
        previous = value
    return stored


class _Versions:
    """Which record domain a walk accepts: ``v1`` only until the first ``v2`` record."""

    def __init__(self, key: bytes) -> None:
        self.key = key
        self.newest = 0
        self.v2_up_to_head = False

    def consistent(self, stored: StoredRecord) -> bool:
        version = record_version(self.key, stored)
        return version == 2 or (version == 1 and self.newest < 2)

    def accept(self, stored: StoredRecord, head: ChainHead | None) -> None:
        version = record_version(self.key, stored)
        self.newest = max(self.newest, version)
        if version == 2 and (head is None or stored.sequence <= head.sequence):
            self.v2_up_to_head = True


class _Peekable:
    def __init__(self, items: Iterable[StoredRecord]) -> None:
        self._it: Iterator[StoredRecord] = iter(items)
        self._next: list[StoredRecord] = []

    def __iter__(self) -> _Peekable:
        return self

    def __next__(self) -> StoredRecord:
        if self._next:
            return self._next.pop()
        return next(self._it)

    def peek(self) -> StoredRecord | None:
        if not self._next:
            try:
                self._next.append(next(self._it))
            except StopIteration:
                return None
        return self._next[0]


def verify_chain(records: Iterable[StoredRecord], key: bytes, head: ChainHead | None = None) -> ChainReport:
    """Walk *records* (in sequence order) and report the first break, or OK with the count.

    *head* (the stored head row) lets the walk notice records deleted from the end and
    records inserted after it; records after the head that chain correctly were appended
    while the walk read (they count). The head must carry its MAC (:func:`head_mac`), except
    a head written before schema 0006 with only ``v1`` records up to it: that walk is OK with
    a warning. Reads *records* once, in bounded memory.
    """
    versions = _Versions(key)
    at_head: str | None = None
    items = _Peekable(records)
    count = 0
    previous: StoredRecord | None = None
    first: StoredRecord | None = None
    anchor: tuple[int, str] | None = None
    for record in items:
        following = items.peek()
        if previous is None:
            if not versions.consistent(record):
                if following is not None and following.previous_mac == record.previous_mac:
                    return ChainReport(count, ChainProblem(record.sequence, "inserted",
                                                           "it is not part of the chain (its MAC does not match, and the next record links past it)"))
                return ChainReport(count, ChainProblem(record.sequence, "changed",
                                                       "its content or MAC was changed (the MAC does not match what it says)"))
            first = record
        else:
            expected = previous.mac
            links_past = ((following is not None and following.previous_mac == expected)
                          or (following is None and head is not None and head.mac == expected
                              and head.sequence == previous.sequence))
            if not versions.consistent(record):
                if links_past:
                    return ChainReport(count, ChainProblem(record.sequence, "inserted",
                                                           f"it is not part of the chain (its MAC does not match, and the next "
                                                           f"record links straight to record {previous.sequence})"))
                return ChainReport(count, ChainProblem(record.sequence, "changed",
                                                       "its content or MAC was changed (the MAC does not match what it says)"))
            if record.previous_mac != expected:
                if record.sequence > previous.sequence + 1:
                    missing = (str(previous.sequence + 1) if record.sequence == previous.sequence + 2
                               else f"{previous.sequence + 1}..{record.sequence - 1}")
                    return ChainReport(count, ChainProblem(previous.sequence + 1, "deleted",
                                                           f"record(s) {missing} are missing between {previous.sequence} and {record.sequence}"))
                later = _find_later(items, record.previous_mac)
                if later is not None:
                    return ChainReport(count, ChainProblem(record.sequence, "reordered",
                                                           f"it is out of order: it belongs after record {later}"))
                if links_past:
                    return ChainReport(count, ChainProblem(record.sequence, "inserted",
                                                           f"it is a copy of a valid record put in the chain (the next record "
                                                           f"links straight to record {previous.sequence})"))
                return ChainReport(count, ChainProblem(record.sequence, "deleted",
                                                       f"record(s) between {previous.sequence} and {record.sequence} were deleted "
                                                       f"(and the rest renumbered): it links to a record that is gone"))
        if record.record.event == ANCHOR_EVENT and record.record.anchor_mac is not None:
            anchor = (record.record.anchor_sequence or 0, record.record.anchor_mac)
        versions.accept(record, head)
        if head is not None and record.sequence == head.sequence:
            at_head = record.mac
        count += 1
        previous = record
    # where the chain must start: after the last purge's anchor, else at the genesis
    start_sequence, start_mac = anchor if anchor is not None else (0, GENESIS_MAC)
    if first is not None and first.previous_mac != start_mac:
        where = f"after the last purge (which kept from {start_sequence + 1})" if anchor else "at the start of the chain"
        return ChainReport(count, ChainProblem(start_sequence + 1, "deleted",
                                               f"records {where} up to {first.sequence - 1} were deleted outside a purge; "
                                               f"the first record left is {first.sequence}"))
    warning: str | None = None
    if head is not None:
        last_sequence = previous.sequence if previous is not None else start_sequence
        last_kept = min(last_sequence, head.sequence)
        cut = (f"the newest records after {last_kept} were deleted, or the head was changed "
               f"(the head row says the chain ends at {head.sequence})")
        if head.head_mac is not None and head.head_mac.startswith(BROKEN_HEAD_PREFIX):
            marked = head.head_mac[len(BROKEN_HEAD_PREFIX):]
            return ChainReport(count, ChainProblem(int(marked) if marked.isdigit() else head.sequence, "truncated",
                                                   f"the head did not match its MAC when record {marked} was appended: "
                                                   f"records before {marked} were deleted, or the head was changed"))
        if head.head_mac is not None and not head_authentic(key, head):
            return ChainReport(count, ChainProblem(last_kept + 1, "truncated",
                                                   f"the head row does not match its MAC: {cut}"))
        if head.head_mac is None:
            if versions.v2_up_to_head:
                return ChainReport(count, ChainProblem(last_kept + 1, "truncated",
                                                       f"the head row's MAC was removed (records written since the "
                                                       f"upgrade to schema 0006 are in the chain): {cut}"))
            if head.sequence > 0:
                warning = (f"{UNAUTHENTICATED_HEAD}: it was written before schema 0006, so records cut off after "
                           f"{head.sequence} are not detected until the next record is written")
        if at_head is not None and at_head != head.mac:
            return ChainReport(count, ChainProblem(head.sequence, "truncated",
                                                   f"record {head.sequence} is not the one the head names: {cut}"))
        if previous is None and head.sequence > 0 and head.mac != GENESIS_MAC:
            return ChainReport(count, ChainProblem(1, "deleted", f"every record up to {head.sequence} was deleted"))
        if last_sequence < head.sequence:
            return ChainReport(count, ChainProblem(last_sequence + 1, "deleted",
                                                   f"record(s) {last_sequence + 1}..{head.sequence} at the end of the chain were deleted "
                                                   f"(the head says it ends at {head.sequence})"))
    return ChainReport(count, warning=warning)


def _find_later(items: _Peekable, wanted: str) -> int | None:
    """The sequence of a record still to come whose MAC is *wanted* (consumes the rest)."""
    for candidate in items:
        if candidate.mac == wanted:
            return candidate.sequence
    return None

