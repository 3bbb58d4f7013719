"""Payment-result identity by keyed digests (SPEC §2.4, §6, §7). Pure: no clock, no I/O.

The ledger must not hold personal values in clear, yet it must recognise a result
it has already relayed (the dedupe key of SPEC §6) and pair a 確報 with its 速報.
So a result is recorded by HMAC-SHA256 digests under a key derived from the store
key, never by its items:

- ``identity_key`` over the seven identity items (tax_item, slip_no, confirm_no,
  pay_class, channel, received_at, result_kind): equal results, equal key;
- ``match_key`` over the first six: a 確報 (kind 2) confirms and a 速報取消 (kind 3)
  cancels the 速報 (kind 1) with the same match key;
- ``amount_key`` over (match_key, 支払金額): the amounts of a 速報 and its 確報 can be
  compared for equality without storing either.

Every item is a fixed-width string of ASCII digits (§2.3, §2.4), so joining them with
``|`` is an unambiguous encoding; each digest also starts with a label of what it is,
so an identity key can never equal a match key.

The key: ``HKDF-SHA256(store key, info=b"kei-gateway payment-result identity v1")``,
32 bytes. With store-key rotation, new rows use the current key, and every digest is
also computed under each previous key (:attr:`ResultFacts.variants`) so lookups find
results recorded before the rotation.
"""

from __future__ import annotations

import dataclasses
import datetime
import hmac
from collections.abc import Collection, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from kei_gateway.core.jst import JST

__all__ = ["HKDF_INFO", "IDENTITY_ITEMS", "MATCH_ITEMS", "KIND_PROVISIONAL", "KIND_FINAL", "KIND_CANCEL",
           "Digests", "KeptResult", "KEPT_FIELDS", "ResultFacts", "ResultKeyer", "earlier_match_keys", "under_recorded_keys", "facts_of", "facts_from_records", "fresh_results", "slip_hint",
           "canonical_items", "raw_fields", "RAW_FIELDS"]

HKDF_INFO = b"kei-gateway payment-result identity v1"

IDENTITY_ITEMS = ("tax_item", "slip_no", "confirm_no", "pay_class", "channel", "received_at", "result_kind")
"""A result's identity (SPEC §2.4), in the order they are encoded."""
MATCH_ITEMS = IDENTITY_ITEMS[:-1]
"""What a 確報 or 速報取消 shares with its 速報: the identity without the 収納区分."""

KIND_PROVISIONAL = 1
"""収納区分 ``1`` 速報."""
KIND_FINAL = 2
"""収納区分 ``2`` 確報."""
KIND_CANCEL = 3
"""収納区分 ``3`` 速報取消."""

_WIDTHS = {"tax_item": 2, "slip_no": 20, "confirm_no": 6, "pay_class": 4, "channel": 2, "result_kind": 1,
           "pay_method": 2}
_TIME_FORMAT = "%Y%m%d%H%M%S"
SLIP_HINT_DIGITS = 4


class _Keyring(Protocol):
    """What :meth:`ResultKeyer.from_keyring` needs of :class:`kei_gateway.adapters.store.keys.StoreKeyring`."""

    @property
    def ids(self) -> tuple[str, ...]: ...

    def key_for(self, key_id: str) -> bytes | None: ...


@dataclass(frozen=True)
class Digests:
    """The three digests of one result under one key (hex, 64 characters each)."""

    identity_key: str
    match_key: str
    amount_key: str


@dataclass(frozen=True)
class KeptResult:
    """What the ledger keeps of one payment result: digests, codes and times, nothing personal.

    The part shared by the facts of a result just read (:class:`ResultFacts`) and a result
    as recorded (:class:`~kei_gateway.core.results.reconcile.StoredResult`).
    """

    identity_key: str
    match_key: str
    amount_key: str
    kind: int
    """収納区分: 1 速報, 2 確報, 3 速報取消."""
    channel: str
    """チャネル区分 code, two digits."""
    tax_item: str
    pay_method: str
    received_at: datetime.datetime
    """収納日時, timezone-aware in JST."""
    slip_hint: str
    """The 納付書番号 masked but for its last 4 digits (see :func:`slip_hint`)."""

    def kept(self) -> dict[str, Any]:
        """The :data:`KEPT_FIELDS` by name (to record these facts, or to make a stored result of them)."""
        return {name: getattr(self, name) for name in KEPT_FIELDS}


KEPT_FIELDS = tuple(f.name for f in dataclasses.fields(KeptResult))


@dataclass(frozen=True)
class ResultFacts(KeptResult):
    """The facts of one payment result read from a file: what the ledger keeps, and where it was.

    ``identity_key``, ``match_key`` and ``amount_key`` are under the current key;
    ``variants`` holds the digests under every key, the current one first, for lookups
    (see :meth:`ResultKeyer.identity_candidates`) and to keep a 確報 under the key its
    速報 was recorded with (:meth:`under`).
    """

    record_index: int
    """0-based position of the record in its file (so the relay can copy its bytes)."""
    variants: tuple[Digests, ...] = dataclasses.field(default=(), repr=False, compare=False)

    def under(self, variant: int) -> ResultFacts:
        """These facts with the digests of key number *variant* (0 = current) as the recorded ones."""
        digests = self.variants[variant]
        return dataclasses.replace(self, identity_key=digests.identity_key, match_key=digests.match_key,
                                   amount_key=digests.amount_key)


def earlier_match_keys(results: Iterable[ResultFacts]) -> set[str]:
    """The match keys of *results* under every previous store key (what the ledger must be asked about)."""
    return {d.match_key for r in results for d in r.variants[1:]}


def under_recorded_keys(results: Sequence[ResultFacts], found: Collection[str]) -> list[ResultFacts]:
    """*results*, each under the key its match group was first recorded with (current if none).

    *found*: the match keys, current or earlier, that the ledger already holds. A group already
    recorded under the current key stays there; otherwise the first earlier key found wins, so a
    確報 joins its 速報 across a key rotation.
    """
    chosen = []
    for facts in results:
        variant = 0
        if facts.match_key not in found:
            variant = next((v for v, d in enumerate(facts.variants) if v and d.match_key in found), 0)
        chosen.append(facts.under(variant) if variant else facts)
    return chosen


class ResultKeyer:
    """Computes the keyed digests of results under the current key and every previous one.

    *keys* are the store keys (raw bytes, the current one first); the HMAC keys are
    derived from them with HKDF, so the store key itself never signs anything here.
    """

    def __init__(self, keys: Sequence[bytes]) -> None:
        if not keys:
            raise ValueError("a result keyer needs at least one key (the current store key)")
        self._keys = tuple(_derive(key) for key in keys)

    @classmethod
    def from_keyring(cls, keyring: _Keyring) -> ResultKeyer:
        """The keyer of a :class:`~kei_gateway.adapters.store.keys.StoreKeyring` (its ``ids`` list the current key first)."""
        keys = [keyring.key_for(key_id) for key_id in keyring.ids]
        return cls([key for key in keys if key is not None])

    @property
    def key_count(self) -> int:
        return len(self._keys)

    def __repr__(self) -> str:  # never the keys
        return f"ResultKeyer({len(self._keys)} keys)"

    def digests(self, items: Mapping[str, str], amount_paid: int) -> tuple[Digests, ...]:
        """The digests of canonical *items* (see :func:`canonical_items`) under every key, current first."""
        identity = "|".join(["identity", *(items[name] for name in IDENTITY_ITEMS)]).encode("ascii")
        match = "|".join(["match", *(items[name] for name in MATCH_ITEMS)]).encode("ascii")
        result = []
        for key in self._keys:
            match_key = _hmac(key, match)
            amount_key = _hmac(key, f"amount|{match_key}|{amount_paid:d}".encode("ascii"))
            result.append(Digests(_hmac(key, identity), match_key, amount_key))
        return tuple(result)

    def identity_candidates(self, facts: ResultFacts) -> set[str]:
        """The identity key of *facts* under every key: what a dedupe lookup searches for."""
        candidates = {variant.identity_key for variant in facts.variants}
        candidates.add(facts.identity_key)
        return candidates

    def match_candidates(self, facts: ResultFacts) -> set[str]:
        """The match key of *facts* under every key."""
        candidates = {variant.match_key for variant in facts.variants}
        candidates.add(facts.match_key)
        return candidates


def _derive(store_key: bytes) -> bytes:
    return HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=HKDF_INFO).derive(store_key)


def _hmac(key: bytes, message: bytes) -> str:
    return hmac.digest(key, message, "sha256").hex()  # the one-shot C path: hmac.new(...).hexdigest(), faster


def slip_hint(slip_no: str) -> str:
    """The 納付書番号 with all but its last 4 digits hidden: ``…0123`` (one ellipsis, U+2026).

    Short enough to read aloud and to search for in the tax system together with the
    税目, チャネル and 収納日時 shown beside it; 4 digits out of 20 identify nobody.
    """
    return "…" + slip_no[-SLIP_HINT_DIGITS:]


def _code(record: Mapping[str, object], name: str) -> str:
    value = record[name]
    if isinstance(value, int) and not isinstance(value, bool):
        text = f"{value:0{_WIDTHS[name]}d}"
    elif isinstance(value, str):
        text = value.strip()
    else:
        raise ValueError(f"field {name} has a {type(value).__name__}, not a code")
    if len(text) != _WIDTHS[name] or not text.isascii() or not text.isdigit():
        raise ValueError(f"field {name} is not {_WIDTHS[name]} digits")
    return text


def _received_at(record: Mapping[str, object]) -> datetime.datetime:
    value = record["received_at"]
    if isinstance(value, str):
        if len(value) != 14 or not value.isascii() or not value.isdigit():
            raise ValueError("field received_at is not YYYYMMDDhhmmss")
        try:  # what strptime(value, _TIME_FORMAT) gives for 14 digits, a tenth of its cost (issue 16)
            return datetime.datetime(int(value[:4]), int(value[4:6]), int(value[6:8]), int(value[8:10]),
                                     int(value[10:12]), int(value[12:]), tzinfo=JST)
        except ValueError:
            raise ValueError("field received_at is not a valid date and time") from None
    if not isinstance(value, datetime.datetime):
        raise ValueError("field received_at is not a date-time")
    if value.tzinfo is None:  # the layouts parse T fields as naive JST wall-clock time
        return value.replace(tzinfo=JST)
    return value.astimezone(JST)


def _amount(record: Mapping[str, object]) -> int:
    value = record["amount_paid"]
    if isinstance(value, str):
        if not value.isascii() or not value.isdigit():
            raise ValueError("field amount_paid is not digits")
        return int(value)
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    raise ValueError("field amount_paid is not a number")


def canonical_items(record: Mapping[str, object]) -> dict[str, str]:
    """The identity items of *record* as fixed-width digit strings (the raw field values).

    *record* is a typed record from :func:`kei_gateway.layouts.parse_records` (codes as
    strings, 収納日時 as a naive JST datetime) or the raw strings of the fields. A
    :class:`ValueError` names the field, never its value.
    """
    return _canonical(record, _received_at(record))


def _canonical(record: Mapping[str, object], received_at: datetime.datetime) -> dict[str, str]:
    items = {name: _code(record, name) for name in IDENTITY_ITEMS if name != "received_at"}
    raw = record["received_at"]  # raw digits (checked by _received_at) are their own canonical form
    items["received_at"] = raw if isinstance(raw, str) else received_at.strftime(_TIME_FORMAT)
    return items


def facts_of(record: Mapping[str, object], index: int, keyer: ResultKeyer) -> ResultFacts:
    """The facts of one parsed ``mpn-results`` record at 0-based *index* in its file."""
    received_at = _received_at(record)
    items = _canonical(record, received_at)
    kind = int(items["result_kind"])
    if kind not in (KIND_PROVISIONAL, KIND_FINAL, KIND_CANCEL):
        raise ValueError("field result_kind is not 1, 2 or 3")
    variants = keyer.digests(items, _amount(record))
    current = variants[0]
    return ResultFacts(identity_key=current.identity_key, match_key=current.match_key,
                       amount_key=current.amount_key, kind=kind, channel=items["channel"],
                       tax_item=items["tax_item"], pay_method=_code(record, "pay_method"),
                       received_at=received_at, slip_hint=slip_hint(items["slip_no"]),
                       record_index=index, variants=variants)


def facts_from_records(records: Iterable[Mapping[str, object]], keyer: ResultKeyer) -> list[ResultFacts]:
    """The facts of every record of a stored file, in file order (``record_index`` 0, 1, ...)."""
    return [facts_of(record, index, keyer) for index, record in enumerate(records)]


def fresh_results(facts: Iterable[ResultFacts], known: Collection[str]) -> list[ResultFacts]:
    """The results not recorded yet, in file order.

    Drops a result whose identity key under any key is in *known* (from
    ``ResultLedger.known_identities`` of the candidates) and every repeat of an identity
    within the file after its first occurrence.
    """
    seen: set[str] = set()
    fresh = []
    for item in facts:
        candidates = {item.identity_key, *(v.identity_key for v in item.variants)}
        if item.identity_key in seen or not candidates.isdisjoint(known):
            continue
        seen.add(item.identity_key)
        fresh.append(item)
    return fresh


RAW_FIELDS = (*IDENTITY_ITEMS, "amount_paid", "pay_method")
"""What :func:`facts_of` reads of a record; :func:`raw_fields` slices only these."""


def raw_fields(chunks: Iterable[bytes], offsets: Mapping[str, int], widths: Mapping[str, int],
               record_length: int) -> Iterator[dict[str, str]]:
    """The :data:`RAW_FIELDS` of each fixed-length record of an already validated file, as raw strings.

    For files the gateway has validated and stored (AEAD-verified on reading): a second
    full validation would cost ten times as much (bench/relay.py), and this never decodes
    a name. The fields read are ASCII digits by the layout; anything else raises
    :class:`ValueError` naming the field (in :func:`facts_of`).
    """
    spans = [(name, offsets[name], offsets[name] + widths[name]) for name in RAW_FIELDS]
    pending = b""
    for chunk in chunks:
        pending += chunk
        whole = len(pending) - len(pending) % record_length
        for start in range(0, whole, record_length):
            yield {name: pending[start + a:start + b].decode("ascii") for name, a, b in spans}
        pending = pending[whole:]
    if pending:
        raise ValueError(f"the file ends with {len(pending)} bytes that are not a whole record")
