"""The AIRIS 突合 matcher (SPEC §13): the tax register against AIRIS's 車検証情報. Pure, no I/O.

Both sides come in as sequences of small tuples (the register's :class:`RegisterVehicle`,
AIRIS's :class:`~kei_gateway.layouts.airis.AirisVehicle`); the result is one
:class:`MatchRow` per vehicle and category, naming the vehicles by their index on each
side, so the caller renders values it already holds.  Memory: one normalised 車台番号
per vehicle and a dictionary over AIRIS's unique ones — linear, no pairwise work.

Normalisations (each step applies only when the previous one left the values different;
the ``normalised`` code is the step that made them equal, the highest over the vehicle's
compared values):

* ``01`` — NFKC (full/half width), upper case for 車台番号, spaces removed (and hyphens,
  for 車台番号); 標板番号 compared part by part after NFKC, the 一連番号 as a number;
* ``02`` — 縮退: each character mapped through the MJ縮退マップ, else the 国税庁 JIS縮退マップ
  (:mod:`kei_gateway.layouts.degenerate`, the project's one wrapper);
* ``03`` — addresses only: kanji numerals → digits (十二 → 12), 丁目/番地/番/号 → ``-``, a
  trailing ``-`` dropped (一丁目二番三号 = 1-2-3).
"""

from __future__ import annotations

import re
import unicodedata
from collections import Counter, defaultdict
from collections.abc import Iterable, Mapping, Sequence
from typing import Final, NamedTuple, Protocol

from kei_gateway.layouts.airis import CATEGORIES
from kei_gateway.layouts.degenerate import degenerate_text

__all__ = [
    "MatchRow",
    "RegisterVehicle",
    "VehicleValues",
    "category_counts",
    "match_vehicles",
    "normalise_address",
    "normalise_chassis",
    "normalise_name",
    "register_vehicle",
]


class VehicleValues(Protocol):
    """What both sides have (the register's and AIRIS's tuples)."""

    @property
    def plate_office(self) -> str: ...

    @property
    def plate_class(self) -> str: ...

    @property
    def plate_kana(self) -> str: ...

    @property
    def plate_serial(self) -> str: ...

    @property
    def chassis_no(self) -> str: ...

    @property
    def owner_name(self) -> str: ...

    @property
    def owner_address(self) -> str: ...


class RegisterVehicle(NamedTuple):
    """What the matcher needs of one register record (padding already stripped)."""

    taxpayer_id: str
    plate_office: str
    plate_class: str
    plate_kana: str
    plate_serial: str
    chassis_no: str
    owner_name: str
    owner_address: str
    deregistered: bool


class MatchRow(NamedTuple):
    """One output row: category, the vehicle's index on each side (``None`` where absent), normalisation."""

    category: str
    register: int | None
    airis: int | None
    normalised: str


# --------------------------------------------------------------------------- normalisations

_SPACES: Final = re.compile(r"\s+")
_CHASSIS_DROP: Final = re.compile(r"[\s\-\u2010-\u2015\u2212\u30fc\uff70]+")


def _nfkc(text: str) -> str:
    return text if text.isascii() else unicodedata.normalize("NFKC", text)


def normalise_chassis(chassis: str) -> str:
    """車台番号 as compared: NFKC, upper case, spaces and hyphens removed."""
    return _CHASSIS_DROP.sub("", _nfkc(chassis).upper())


def normalise_name(text: str) -> str:
    """Step 01 of names and addresses: NFKC, all spaces removed."""
    return _SPACES.sub("", _nfkc(text))


def _degenerated(text: str) -> str:
    """Step 02: characters outside JIS X 0208 through the 縮退 maps (ASCII stays as it is)."""
    return text if text.isascii() else degenerate_text(text)[0]


_KANJI_DIGIT: Final = {char: value for value, char in enumerate("〇一二三四五六七八九")}
_KANJI_UNIT: Final = {"十": 10, "百": 100, "千": 1000}
_KANJI_NUMBER: Final = re.compile("[〇一二三四五六七八九十百千]+")
_ADDRESS_MARKS: Final = re.compile("丁目|番地|番|号|[\u2010-\u2015\u2212]|(?<=[0-9])[ー－]")
_REPEATED_DASH: Final = re.compile("-{2,}")


def _kanji_to_digits(match: re.Match[str]) -> str:
    text = match.group()
    if not any(char in _KANJI_UNIT for char in text):
        return "".join(str(_KANJI_DIGIT[char]) for char in text)  # 一二三 → 123
    total = current = 0
    for char in text:
        if char in _KANJI_DIGIT:
            current = current * 10 + _KANJI_DIGIT[char]
        else:
            total += (current or 1) * _KANJI_UNIT[char]
            current = 0
    return str(total + current)


def normalise_address(text: str) -> str:
    """Step 03 of addresses (on the step-02 text): kanji numerals → digits, 丁目/番地/番/号 → ``-``."""
    text = _KANJI_NUMBER.sub(_kanji_to_digits, text)
    text = _REPEATED_DASH.sub("-", _ADDRESS_MARKS.sub("-", text))
    return text[:-1] if text.endswith("-") else text


def _compare_text(left: str, right: str, *, address: bool) -> str | None:
    """The normalisation code that makes two names (addresses) equal, or ``None`` if none does."""
    if left == right:
        return "00"
    left, right = normalise_name(left), normalise_name(right)
    if left == right:
        return "01"
    left, right = _degenerated(left), _degenerated(right)
    if left == right:
        return "02"
    if address and normalise_address(left) == normalise_address(right):
        return "03"
    return None


def _plate(vehicle: VehicleValues) -> tuple[str, str, str, int]:
    serial = _nfkc(vehicle.plate_serial).strip()
    return (_nfkc(vehicle.plate_office).strip(), _nfkc(vehicle.plate_class).strip().upper(),
            _nfkc(vehicle.plate_kana).strip(), int(serial) if serial.isdigit() else -1)


def _compare_plate(left: VehicleValues, right: VehicleValues) -> str | None:
    if (left.plate_office, left.plate_class, left.plate_kana) == (
            right.plate_office, right.plate_class, right.plate_kana) and _same_number(
            left.plate_serial, right.plate_serial):
        return "00"
    return "01" if _plate(left) == _plate(right) else None


def _same_number(left: str, right: str) -> bool:
    return left == right or (left.isdigit() and right.isdigit() and int(left) == int(right))


def _compare(register: RegisterVehicle, airis: VehicleValues, index: int, airis_index: int) -> list[MatchRow]:
    """The rows of a vehicle found on both sides: 01, or one of 02/03/04 for each difference."""
    codes = ["00" if register.chassis_no == airis.chassis_no else "01"]
    differs = []
    for category, code in (("02", _compare_text(register.owner_name, airis.owner_name, address=False)),
                           ("03", _compare_text(register.owner_address, airis.owner_address, address=True)),
                           ("04", _compare_plate(register, airis))):
        if code is None:
            differs.append(category)
        else:
            codes.append(code)
    normalised = max(codes)
    return [MatchRow(category, index, airis_index, normalised) for category in differs or ["01"]]


# --------------------------------------------------------------------------- the match


def _tail_key(chassis: str, vehicle: VehicleValues) -> tuple[str, tuple[str, str, str, int]]:
    return chassis[-7:], _plate(vehicle)


def match_vehicles(register: Sequence[RegisterVehicle], airis: Sequence[VehicleValues], *,
                   register_chassis: Iterable[str] | None = None,
                   airis_chassis: Iterable[str] | None = None) -> list[MatchRow]:
    """Every output row of SPEC §13's categories, ordered by category, then as found (register, then AIRIS).

    The register is walked twice in order (its 車台番号 first, to find its duplicates, then its
    vehicles) and never held here. *register_chassis* and *airis_chassis*, when given, are each
    side's 車台番号 in order, for a caller that has them cheaper than the whole vehicles (both
    sides are kept packed and read when looked at).

    * the same normalised 車台番号 twice on one side: ``08`` for each of those rows, none matched;
    * found on both sides: ``01``, or ``02``/``03``/``04`` for each value that differs;
    * unmatched on both sides with the same last 7 characters and the same plate, one each:
      ``07`` (one row, both indexes);
    * left over: ``05`` (register only, deregistered or not), ``06`` (AIRIS only).
    """
    if airis_chassis is None:
        airis_chassis = (vehicle.chassis_no for vehicle in airis)
    airis_keys = list(map(normalise_chassis, airis_chassis))
    airis_by_key, airis_repeated = _index(airis_keys)
    if register_chassis is None:
        register_chassis = (vehicle.chassis_no for vehicle in register)
    register_repeated = _index(map(normalise_chassis, register_chassis))[1]
    matched_airis = bytearray(len(airis))
    rows: list[MatchRow] = []
    register_left: dict[int, str] = {}
    """Register vehicles not found in AIRIS, with their key (the keys of all are not kept: memory)."""
    for index, vehicle in enumerate(register):
        key = normalise_chassis(vehicle.chassis_no)
        if key in register_repeated:
            rows.append(MatchRow("08", index, None, "00"))
            continue
        found = airis_by_key.get(key)
        if found is None or key in airis_repeated:
            register_left[index] = key
            continue
        matched_airis[found] = 1
        rows.extend(_compare(vehicle, airis[found], index, found))
    airis_left: list[int] = []
    for index, key in enumerate(airis_keys):
        if key in airis_repeated:
            rows.append(MatchRow("08", None, index, "00"))
        elif not matched_airis[index]:
            airis_left.append(index)
    rows.extend(_by_tail(register, airis, airis_keys, register_left, airis_left))
    by_category: dict[str, list[MatchRow]] = {code: [] for code in CATEGORIES}
    for row in rows:  # each category keeps the order rows were made in: register order, then AIRIS order
        by_category[row.category].append(row)
    return [row for code in CATEGORIES for row in by_category[code]]


def _index(keys: Iterable[str]) -> tuple[dict[str, int], set[str]]:
    """Each key's first index, and the keys seen more than once (less memory than a Counter)."""
    first: dict[str, int] = {}
    repeated: set[str] = set()
    for index, key in enumerate(keys):
        if first.setdefault(key, index) != index:
            repeated.add(key)
    return first, repeated


def _by_tail(register: Sequence[RegisterVehicle], airis: Sequence[VehicleValues], airis_keys: list[str],
             register_left: dict[int, str], airis_left: list[int]) -> Iterable[MatchRow]:
    """07 for the unambiguous pairs of leftovers (last 7 and plate equal), 05 and 06 for the rest."""
    register_tails: defaultdict[tuple[str, tuple[str, str, str, int]], list[int]] = defaultdict(list)
    airis_tails: defaultdict[tuple[str, tuple[str, str, str, int]], list[int]] = defaultdict(list)
    for index, key in register_left.items():
        register_tails[_tail_key(key, register[index])].append(index)
    for index in airis_left:
        airis_tails[_tail_key(airis_keys[index], airis[index])].append(index)
    paired_airis: set[int] = set()
    for index, key in register_left.items():
        tail = _tail_key(key, register[index])
        candidates = airis_tails.get(tail, [])
        if len(candidates) == 1 and len(register_tails[tail]) == 1:
            other = candidates[0]
            paired_airis.add(other)
            yield MatchRow("07", index, other, _compare_plate(register[index], airis[other]) or "00")
        else:
            yield MatchRow("05", index, None, "00")
    for index in airis_left:
        if index not in paired_airis:
            yield MatchRow("06", None, index, "00")


def category_counts(rows: Iterable[MatchRow]) -> dict[str, int]:
    """Rows per category, every category present (zeros included), in code order."""
    counts = Counter(row.category for row in rows)
    return {code: counts.get(code, 0) for code in CATEGORIES}


def register_vehicle(record: Mapping[str, object]) -> RegisterVehicle:
    """A parsed ``tax-register-2w`` record (typed values, K padding stripped) as the matcher's tuple."""
    return RegisterVehicle(
        str(record["taxpayer_id"]), str(record["plate_office"]), str(record["plate_class"]),
        str(record["plate_kana"]), str(record["plate_serial"]), str(record["chassis_no"]),
        str(record["owner_name"]), str(record["owner_address"]), record["deregistered"] == "1")
