"""ダミーデータ: deterministic dummy records for demos, tests and benchmarks, and rule violations.

Everything generated is obviously fake: names come from a small list of
invented names (ダミー 太郎 ...), plates, chassis and slip numbers are made up
from counters and the random generator.  Never real personal data.

Values follow the layout table: each field's kind and rules decide what is
generated, with a few field keys given realistic shapes (names, plate offices,
chassis numbers).  :func:`violations` lists, for a layout, one way to break
each rule, so tests and ``--invalid-rate`` share one source of bad data.
"""

from __future__ import annotations

import datetime
import random
import re
import string
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from functools import lru_cache
from typing import Final

from kei_gateway.layouts.checkdigits import gs1_check_digit, lg_code_check_digit
from kei_gateway.layouts.encoding import IDEOGRAPHIC_SPACE, JISX0208_CHARS, InputEncoding
from kei_gateway.layouts.engine import Record, render_record
from kei_gateway.layouts.fields import (
    Blank, Codes, Field, FieldRule, Gs1CvsCode, IntRange, Kind, Layout, LgCode, NotAllLetters, NotAllZero,
    NotBefore, NotBlank, NotInFuture, SumEquals, Unique, Value, When, WideChars,
)

__all__ = [
    "DUMMY_FAMILY_NAMES",
    "DUMMY_GIVEN_NAMES",
    "DUMMY_MJ_CHARS",
    "DUMMY_PLATE_OFFICES",
    "DEFAULT_LG_CODE",
    "generate_record",
    "generate_records",
    "generate_file",
    "Violation",
    "violations",
]

DUMMY_FAMILY_NAMES: Final = ("ダミー", "試験", "見本", "仮名", "例示", "テスト")
DUMMY_GIVEN_NAMES: Final = ("太郎", "花子", "一郎", "次郎", "さくら", "ハナ", "検証用データ")
DUMMY_PLATE_OFFICES: Final = ("練馬", "品川", "足立", "多摩", "八王子", "横浜", "札幌", "富士山", "袖ヶ浦")
DEFAULT_LG_CODE: Final = "131202"
"""練馬区 (a valid code from SPEC §2.5), used when no ``lg_code`` is given."""

_EPOCH: Final = datetime.date(2020, 4, 1)


@lru_cache(maxsize=None)
def _x_chars(allowed: str) -> str:
    chars = [c for c in string.printable[:95] if re.fullmatch(f"[{allowed}]", c)]
    return "".join(c for c in chars if c != " ")


def _random_date(rng: random.Random, low: datetime.date, high: datetime.date) -> datetime.date:
    return low + datetime.timedelta(days=rng.randint(0, max(0, (high - low).days)))


def _gs1_code(rng: random.Random, number: int) -> str:
    body = "91" + f"{rng.randrange(10 ** 11):011d}" + f"{number:020d}" + f"{rng.randrange(10 ** 10):010d}"
    return body + str(gs1_check_digit(body))


@lru_cache(maxsize=None)
def _wide_pool(rule: WideChars | None) -> tuple[str, ...]:
    return tuple(sorted(c for c in JISX0208_CHARS if c != IDEOGRAPHIC_SPACE and (rule is None or rule.chars(c))))


def _wide_text(rng: random.Random, rule: WideChars | None, length: int) -> str:
    pool = _wide_pool(rule)
    return "".join(rng.choice(pool) for _ in range(length))


def _field_value(item: Field, rng: random.Random, number: int, today: datetime.date, lg_code: str) -> Value:
    """A value that satisfies the field's kind and own rules (record rules are fixed up afterwards)."""
    key = item.key
    if key == "payer_name":
        return f"{rng.choice(DUMMY_FAMILY_NAMES)}{IDEOGRAPHIC_SPACE}{rng.choice(DUMMY_GIVEN_NAMES)}"
    if key == "plate_office":
        return rng.choice(DUMMY_PLATE_OFFICES)
    if key == "chassis_no":
        return f"DMY{rng.randint(0, 99):02d}-{number:0{min(12, item.width - 6)}d}"[:item.width]
    if key == "slip_no":
        return f"{rng.randrange(1, 10 ** 11):011d}{number % 10 ** 9:09d}"
    rules = {type(rule): rule for rule in item.rules}
    codes = rules.get(Codes)
    if isinstance(codes, Codes):
        return rng.choice(sorted(codes.table))
    if LgCode in rules:
        return lg_code
    span = rules.get(IntRange)
    if isinstance(span, IntRange):
        value = rng.randint(span.low, span.high)
        return value if item.as_int else f"{value:0{item.width}d}"
    if item.kind is Kind.N:
        digits = rng.choice((1, 2, 3, item.width // 2, item.width))
        value = rng.randrange(1 if NotAllZero in rules else 0, 10 ** digits)
        return value if item.as_int else f"{value:0{item.width}d}"
    if item.kind is Kind.X:
        if NotBlank not in rules and rng.random() < 0.3:
            return ""
        pool = _x_chars(item.allowed)
        text = "".join(rng.choice(pool) for _ in range(rng.randint(1, item.width)))
        if NotAllLetters in rules and not any(c.isdigit() for c in text):
            text = text[:-1] + str(rng.randint(0, 9))
        return text
    if item.kind is Kind.K:
        wide = rules.get(WideChars)
        wide_rule = wide if isinstance(wide, WideChars) else None
        limit = item.width // 2 if wide_rule is None or wide_rule.max_chars is None else wide_rule.max_chars
        if NotBlank not in rules and rng.random() < 0.3:
            return ""
        return _wide_text(rng, wide_rule, rng.randint(1, limit))
    if item.kind is Kind.D:
        return _random_date(rng, _EPOCH, today + datetime.timedelta(days=0 if NotInFuture in rules else 700))
    return datetime.datetime.combine(_random_date(rng, _EPOCH, today), datetime.time(
        rng.randint(0, 23), rng.randint(0, 59), rng.randint(0, 59)))


def _satisfy(rule: FieldRule, item: Field, rng: random.Random, number: int) -> Value | None:
    """A value for a target field of a :class:`When` rule, or ``None`` to keep what is there."""
    if isinstance(rule, Codes):
        return rng.choice(sorted(rule.table))
    if isinstance(rule, Blank):
        return ""
    if isinstance(rule, NotAllZero):
        return f"{rng.randint(1, 10 ** item.width - 1):0{item.width}d}"
    if isinstance(rule, Gs1CvsCode):
        return _gs1_code(rng, number)
    return None


def generate_record(layout: Layout, rng: random.Random, number: int, today: datetime.date,
                    lg_code: str = DEFAULT_LG_CODE) -> Record:
    """One valid dummy record; ``number`` (1-based) keeps unique keys unique within a file."""
    record: Record = {item.key: _field_value(item, rng, number, today, lg_code) for item in layout.fields}
    for rule in layout.record_rules:
        if isinstance(rule, SumEquals):
            first, second = (record[key] for key in rule.parts)
            assert isinstance(first, int) and isinstance(second, int)
            limit = 10 ** layout[rule.total].width - 1
            if first + second > limit:
                record[rule.parts[0]] = first = first // 2
                record[rule.parts[1]] = second = min(second, limit - first)
            record[rule.total] = first + second
        elif isinstance(rule, NotBefore):
            later, earlier = record[rule.later], record[rule.earlier]
            assert isinstance(later, datetime.date) and isinstance(earlier, datetime.date)
            if later < earlier:
                record[rule.later] = earlier + datetime.timedelta(days=rng.randint(0, 400))
        elif isinstance(rule, When):
            for field_rule in rule.applicable(record):
                value = _satisfy(field_rule, layout[rule.then_key], rng, number)
                if value is not None:
                    record[rule.then_key] = value
    return record


def generate_records(layout: Layout, count: int, *, seed: int = 0, today: datetime.date,
                     lg_code: str = DEFAULT_LG_CODE) -> Iterator[Record]:
    """``count`` valid dummy records, the same for the same ``seed``."""
    rng = random.Random(seed)
    for number in range(1, count + 1):
        yield generate_record(layout, rng, number, today, lg_code)


DUMMY_MJ_CHARS: Final = (("髙", "高"), ("﨑", "崎"), ("德", "徳"), ("濵", "浜"), ("﨔", "欅"),
                          ("𠮷", "吉"), ("𡈽", "土"), ("𠀋", "丈"), ("圡", "土"), ("鷗", "鴎"))
"""行政事務標準文字 (MJ) characters outside JIS X 0208 with their unique 縮退 (checked by the tests):
the first five are CP932 extension characters (NEC/IBM extended kanji), the rest are outside CP932."""


def _name_field(layout: Layout) -> Field | None:
    """The field where dummy MJ characters go: a ``*_name`` ``K`` field, else the first ``K`` field."""
    wide = [item for item in layout.fields if item.kind is Kind.K]
    names = [item for item in wide if item.key.endswith("_name")]
    return (names or wide)[0] if wide else None


def generate_file(layout: Layout, count: int, *, seed: int = 0, today: datetime.date,
                  invalid_rate: float = 0.0, lg_code: str = DEFAULT_LG_CODE, encoding: InputEncoding = "cp932",
                  mj_rate: float = 0.0) -> Iterator[bytes]:
    """Record bytes of a dummy file; about ``invalid_rate`` of the records break one rule each.

    ``encoding = "utf-8"`` writes what a standardised system (標準準拠システム) writes.  About
    ``mj_rate`` of the records get one MJ character outside JIS X 0208 (:data:`DUMMY_MJ_CHARS`)
    as the first character of their name field (in CP932, only those CP932 can encode), in
    place of the character it degenerates (縮退) to: ``gaiji = "degenerate"`` turns the file
    into the same records with JIS X 0208 names.
    """
    rng = random.Random(seed)
    broken = random.Random(seed ^ 0x5EED)
    marked = random.Random(seed ^ 0x3A7)
    ways = violations(layout, today) if invalid_rate > 0 else []
    name = _name_field(layout) if mj_rate > 0 else None
    mj_chars = tuple(pair for pair in DUMMY_MJ_CHARS if encoding == "utf-8" or _in_cp932(pair[0]))
    previous: bytes | None = None
    for number in range(1, count + 1):
        record = generate_record(layout, rng, number, today, lg_code)
        mj: str | None = None
        if name is not None and marked.random() < mj_rate:
            mj, target = marked.choice(mj_chars)
            record[name.key] = target + str(record[name.key])[1:]
        data = render_record(layout, record)
        if ways and broken.random() < invalid_rate:
            way = broken.choice(ways)
            if way.needs_previous and previous is None:
                way = next(w for w in ways if not w.needs_previous)
            data = way.apply(data, previous or data)
        previous = data
        if mj is not None and name is not None:  # the target character's two bytes become the MJ character
            start = layout.offsets[name.key]
            data = data[:start] + mj.encode("cp932") + data[start + 2:] if encoding == "cp932" else \
                (data[:start].decode("cp932") + mj + data[start + 2:].decode("cp932")).encode("utf-8")
        elif encoding == "utf-8":
            data = data.decode("cp932").encode("utf-8")
        yield data


def _in_cp932(char: str) -> bool:
    try:
        char.encode("cp932")
    except UnicodeEncodeError:
        return False
    return True


# --------------------------------------------------------------------------- rule violations


@dataclass(frozen=True)
class Violation:
    """One way to break one rule of a layout in a valid record."""

    key: str
    """The field the error must be reported at."""
    description: str
    apply: Callable[[bytes, bytes], bytes]
    """``(record, previous record) → broken record`` (CRLF included)."""
    needs_previous: bool = False


def _put(layout: Layout, record: bytes, key: str, raw: bytes) -> bytes:
    start = layout.offsets[key]
    assert len(raw) == layout[key].width, (key, raw)
    return record[:start] + raw + record[start + len(raw):]


def _get(layout: Layout, record: bytes, key: str) -> bytes:
    start = layout.offsets[key]
    return record[start:start + layout[key].width]


def _pad(item: Field, text: str) -> bytes:
    if item.kind is Kind.K:
        return text.ljust(item.width // 2, IDEOGRAPHIC_SPACE).encode("cp932")
    if item.kind is Kind.N:
        return text.rjust(item.width, "0").encode("ascii")
    return text.ljust(item.width).encode("ascii")


def _breaking_values(item: Field, rule: FieldRule, today: datetime.date) -> list[tuple[str, bytes]]:
    """Raw field values that are well-formed for the kind but break ``rule``."""
    width = item.width
    if isinstance(rule, Codes):
        pool = (f"{n:0{width}d}" for n in range(10 ** min(width, 3))) if item.kind is Kind.N else iter(
            string.digits + string.ascii_uppercase)
        bad = next(code for code in pool if code not in rule.table and code.strip())
        return [(f"code {bad!r} not in the table", _pad(item, bad))]
    if isinstance(rule, IntRange):
        found = []
        if rule.low > 0:
            found.append((f"{rule.low - 1} below the range", _pad(item, str(rule.low - 1))))
        if rule.high < 10 ** width - 1:
            found.append((f"{rule.high + 1} above the range", _pad(item, str(rule.high + 1))))
        return found
    if isinstance(rule, NotBlank):
        return [("blank", _pad(item, ""))]
    if isinstance(rule, Blank):
        return [("not blank", _pad(item, "Ｘ" if item.kind is Kind.K else ("1" if item.allowed != "A-Z0-9" else "E1")))]
    if isinstance(rule, NotAllZero):
        return [("all zeros", b"0" * width)]
    if isinstance(rule, NotAllLetters):
        return [("letters only", _pad(item, "ABC"[:width]))]
    if isinstance(rule, WideChars):
        other = next(c for c in sorted(JISX0208_CHARS) if not rule.chars(c) and c != IDEOGRAPHIC_SPACE)
        return [(f"character {other!r} not allowed", _pad(item, other))]
    if isinstance(rule, LgCode):
        code = "13104"
        wrong = (lg_code_check_digit(code) + 1) % 10
        return [("wrong check digit", (code + str(wrong)).encode("ascii"))]
    if isinstance(rule, NotInFuture):
        return [("tomorrow", (today + datetime.timedelta(days=1)).strftime("%Y%m%d").encode("ascii"))]
    if isinstance(rule, Gs1CvsCode):
        good = _gs1_code(random.Random(0), 1)
        return [("wrong check digit", (good[:-1] + str((int(good[-1]) + 1) % 10)).encode("ascii")),
                ("blank", _pad(item, ""))]
    return []


def _kind_breakers(item: Field) -> list[tuple[str, bytes]]:
    width = item.width
    if item.kind is Kind.N:
        return [("a letter among digits", b"A" + b"0" * (width - 1)), ("a space", b" " * width)]
    if item.kind is Kind.X:
        found = [("a control character", b"\x7f" + b" " * (width - 1)), ("a non-ASCII byte", b"\xb1" * width)]
        if width >= 2:
            found += [("not left-aligned", b" " * (width - 1) + b"1"),
                      ("a full-width character", "Ａ".encode("cp932") + b" " * (width - 2))]
        return found
    if item.kind is Kind.K:
        return [("a half-width character", b"A " + b"\x81\x40" * (width // 2 - 1)),
                ("a 外字 (①)", b"\x87\x40" * (width // 2)),
                ("a user-defined character", b"\xf0\x40" * (width // 2)),
                ("not left-aligned", b"\x81\x40" * (width // 2 - 1) + "亜".encode("cp932")) if width > 2 else
                ("a cut double-byte character", b"\x81\x40"[:1] + b"A")]
    if item.kind is Kind.D:
        return [("30 February", b"20230230"), ("month 13", b"20231301")]
    return [("hour 24", b"20230101240000"), ("30 February", b"20230230120000")]


def violations(layout: Layout, today: datetime.date) -> list[Violation]:
    """One or more ways to break every kind check and every rule of ``layout``."""
    found: list[Violation] = []

    def replace(key: str, raw: bytes) -> Callable[[bytes, bytes], bytes]:
        return lambda record, previous: _put(layout, record, key, raw)

    for item in layout.fields:
        for description, raw in _kind_breakers(item):
            found.append(Violation(item.key, f"{item.key}: {description}", replace(item.key, raw)))
        for rule in item.rules:
            for description, raw in _breaking_values(item, rule, today):
                found.append(Violation(item.key, f"{item.key}: {description}", replace(item.key, raw)))
    for record_rule in layout.record_rules:
        if isinstance(record_rule, SumEquals):
            total = record_rule.total

            def off_by_one(record: bytes, previous: bytes, key: str = total) -> bytes:
                value = int(_get(layout, record, key))
                value = value + 1 if value < 10 ** layout[key].width - 1 else value - 1
                return _put(layout, record, key, f"{value:0{layout[key].width}d}".encode("ascii"))

            found.append(Violation(total, f"{total} is not the sum", off_by_one))
        elif isinstance(record_rule, NotBefore):
            rule_nb = record_rule

            def before(record: bytes, previous: bytes, rule: NotBefore = rule_nb) -> bytes:
                earlier = _get(layout, record, rule.earlier)
                day = datetime.date(int(earlier[:4]), int(earlier[4:6]), int(earlier[6:8]))
                return _put(layout, record, rule.later,
                            (day - datetime.timedelta(days=1)).strftime("%Y%m%d").encode("ascii"))

            found.append(Violation(rule_nb.later, f"{rule_nb.later} before {rule_nb.earlier}", before))
        elif isinstance(record_rule, When):
            cond = layout[record_rule.key]
            target = layout[record_rule.then_key]
            inside = sorted(record_rule.codes)[0]
            outside = next(code for code in sorted(_codes_of(cond)) if code not in record_rule.codes)
            for code, rules in ((inside, record_rule.then_rules), (outside, record_rule.else_rules)):
                for rule in rules:
                    for description, raw in _breaking_values(target, rule, today):
                        if isinstance(rule, Blank) and target.kind is Kind.X and target.allowed == "0-9":
                            raw = _pad(target, _gs1_code(random.Random(1), 2))

                        def both(record: bytes, previous: bytes, c: str = code, r: bytes = raw,
                                 w: When = record_rule) -> bytes:
                            record = _put(layout, record, w.key, _pad(layout[w.key], c))
                            return _put(layout, record, w.then_key, r)

                        found.append(Violation(target.key, f"{record_rule.key}={code}, {target.key}: {description}",
                                               both))
        elif isinstance(record_rule, Unique):
            keys = record_rule.keys

            def repeat(record: bytes, previous: bytes, ks: tuple[str, ...] = keys) -> bytes:
                for key in ks:
                    record = _put(layout, record, key, _get(layout, previous, key))
                return record

            found.append(Violation(keys[0], f"({', '.join(keys)}) repeated", repeat, needs_previous=True))
    return found


def _codes_of(item: Field) -> Sequence[str]:
    for rule in item.rules:
        if isinstance(rule, Codes):
            return list(rule.table)
    return []

