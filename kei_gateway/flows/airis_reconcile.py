"""One AIRIS 突合 run (SPEC §13): open the AIRIS ZIP in memory, check both inputs, match, write the results.

The one implementation behind the daemon flow ``airis-reconcile`` and the command
``kei-gateway airis reconcile``.  :func:`reconcile` is everything but the writing: it takes the
inputs as bytes (the ZIP as received, its key file, the register extract) and gives a
:class:`Reconciliation` — rows, counts, hashes and the three outputs rendered on demand.
:func:`write_outputs` puts the ``.dat``, ``.csv`` and ``.txt`` into a directory atomically:
all three are made durable under dotfile names first, then renamed; a failure before the
renames removes what was staged, so a reader sees all three or none.

Errors of the inputs are :class:`AirisInputError` (the CLI's exit 3), naming the file, row
or record, column or field and what to do; values are masked; nothing is written.
"""

from __future__ import annotations

import datetime
import hashlib
import operator
import os
import re
import unicodedata
import uuid
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Final, overload

from kei_gateway.adapters.airis_zip import AirisContainer, AirisContainerError, WinZipAesContainer, read_key
from kei_gateway.core.airis_match import (
    MatchRow, RegisterVehicle, category_counts, match_vehicles,
)
from kei_gateway.core.jst import JST
from kei_gateway.layouts import Kind, ValidationOptions, validate_stream
from kei_gateway.layouts.airis import (
    AIRIS_RECONCILE, CATEGORIES, NORMALISATIONS, OUTSIDE_JISX0208, TAX_REGISTER_2W, AirisCsvError, AirisVehicle,
    AirisVehicles, parse_airis_csv,
)
from kei_gateway.layouts.degenerate import clusters
from kei_gateway.layouts.fields import Value
from kei_gateway.layouts.encoding import GETA, IDEOGRAPHIC_SPACE, JISX0208_CHARS, widen_halfwidth_katakana
from kei_gateway.core.report_format import csv_rows
from kei_gateway.adapters.spool import fsync_directory, publish, write_durable
from kei_gateway.core.transfer import TransferState
from kei_gateway.layouts.encoding import GaijiPolicy
from kei_gateway.layouts.gaiji import GaijiFallback, apply_gaiji_policy
from kei_gateway.runtime import events
from kei_gateway.runtime.crashpoints import crashpoint

if TYPE_CHECKING:
    from kei_gateway.adapters.ledger import TransferRow
    from kei_gateway.adapters.ports import TransferLedgerPort
    from kei_gateway.adapters.store.blobs import BlobStore

__all__ = [
    "FLOW",
    "FlowPaths",
    "FlowRun",
    "MAX_INPUT_BYTES",
    "find_inputs",
    "ErasedInput",
    "RegisterRecords",
    "run_flow_once",
    "audit_fields",
    "AirisInputError",
    "Reconciliation",
    "output_names",
    "render_result",
    "reconcile",
    "write_outputs",
]

FLOW: Final = "airis-reconcile"
MAX_ERRORS_SHOWN: Final = 20
_CSV_BATCH: Final = 5000


class AirisInputError(ValueError):
    """An input is invalid: ``problems`` are lines naming file, row/record, column/field (values masked)."""

    def __init__(self, label: str, problems: Sequence[str], total: int | None = None) -> None:
        self.label = label
        self.problems = list(problems)
        self.total = total if total is not None else len(self.problems)
        super().__init__(f"{label}: " + "; ".join(self.problems[:3])
                         + (f" (and {self.total - 3} more)" if self.total > 3 else ""))


@dataclass
class Reconciliation:
    """The outcome of one 突合, in memory; nothing written yet."""

    lg_code: str
    at: datetime.datetime
    register: RegisterRecords
    airis: Sequence[AirisVehicle]
    rows: list[MatchRow]
    airis_sha256: str
    register_sha256: str
    airis_label: str
    register_label: str
    counts: dict[str, int] = field(default_factory=dict)
    degenerated: int = 0
    """AIRIS characters outside JIS X 0208 written as their 縮退 in the ``.dat``."""
    substituted: int = 0
    """AIRIS characters written as 〓 in the ``.dat`` (``gaiji = "substitute"``, or no unique 縮退)."""
    gaiji: GaijiPolicy = "degenerate"
    """What becomes of an AIRIS character outside JIS X 0208 in the ``.dat`` (SPEC §13: the flow's policy)."""
    gaiji_fallback: GaijiFallback = "substitute"
    _plates: dict[str, str] = field(default_factory=dict, repr=False)

    def __post_init__(self) -> None:
        self.counts = category_counts(self.rows)

    @property
    def stem(self) -> str:
        return f"{self.lg_code}_{FLOW}_{self.at.astimezone(JST).strftime('%Y%m%d%H%M%S')}"

    def dat_chunks(self) -> Iterator[bytes]:
        """The ``.dat``: 突合結果 records (226 bytes, CP932), in category order."""
        batch: list[bytes] = []
        for row in self.rows:
            batch.append(render_result(self._record(row)))
            if len(batch) >= _CSV_BATCH:
                yield b"".join(batch)
                batch.clear()
        if batch:
            yield b"".join(batch)

    def csv_chunks(self) -> Iterator[bytes]:
        """The ``.csv`` for Excel (the project's one CSV writer: BOM, CRLF, no formulas), both sides' values."""
        heading = ["突合区分", "区分名", "納税義務者番号", "車台番号（台帳）", "車台番号（AIRIS）", "標板番号（運輸支局等名）",
                   "分類番号", "かな文字", "一連番号", "所有者氏名（台帳）", "所有者氏名（AIRIS）", "所有者住所（台帳）",
                   "所有者住所（AIRIS）", "登録年月日（AIRIS）", "正規化", "正規化の内容", "AIRIS 行"]
        batch: list[Sequence[object]] = [heading]
        first = True
        for row in self.rows:
            ours = self.register[row.register] if row.register is not None else None
            theirs = self.airis[row.airis] if row.airis is not None else None
            plate = theirs if theirs is not None and row.category != "05" else ours
            assert plate is not None
            batch.append([
                row.category, CATEGORIES[row.category], ours.taxpayer_id if ours else "",
                ours.chassis_no if ours else "", theirs.chassis_no if theirs else "",
                plate.plate_office, plate.plate_class, plate.plate_kana, plate.plate_serial,
                ours.owner_name if ours else "", theirs.owner_name if theirs else "",
                ours.owner_address if ours else "", theirs.owner_address if theirs else "",
                theirs.registered_on if theirs else "", row.normalised, NORMALISATIONS[row.normalised],
                theirs.row if theirs else ""])
            if len(batch) >= _CSV_BATCH:
                yield csv_rows(batch, bom=first)
                first = False
                batch = []
        if batch:
            yield csv_rows(batch, bom=first)

    def text(self) -> str:
        """The ``.txt``: counts per category and the inputs' SHA-256 (no personal value)."""
        lines = [
            f"AIRIS 突合結果 (reconciliation) {self.stem}",
            f"実行日時 (run at): {self.at.astimezone(JST).isoformat(timespec='seconds')}",
            f"全国地方公共団体コード (lg_code): {self.lg_code}",
            f"AIRIS ファイル (as received): {self.airis_label}  SHA-256 {self.airis_sha256}",
            f"課税台帳 (register): {self.register_label}  SHA-256 {self.register_sha256}",
            f"車両数 (vehicles): 台帳 (register) {len(self.register)}, AIRIS {len(self.airis)}",
            "",
            "突合区分 (category)                 件数 (rows)",
        ]
        for code, name in CATEGORIES.items():
            lines.append(f"{code} {name}{' ' * max(1, 28 - 2 * len(name))}{self.counts[code]:>10}")
        lines.append(f"合計 (total){' ' * 25}{len(self.rows):>10}")
        normalised = {code: 0 for code in NORMALISATIONS}
        for row in self.rows:
            normalised[row.normalised] += 1
        lines += ["", "正規化 (normalisation): " + ", ".join(f"{code} {NORMALISATIONS[code]} {count}"
                                                          for code, count in normalised.items()),
                  f"外字 (AIRIS characters outside JIS X 0208, .dat only): 縮退 (degenerated) {self.degenerated}, "
                  f"〓 (substituted) {self.substituted}",
                  "", "区分ごとの対応は docs/airis.md を参照 (what to do with each category: docs/airis.md)."]
        return "\r\n".join(lines) + "\r\n"

    def _wide(self, text: str, chars: int) -> str:
        """An AIRIS value for a ``K`` field: full width, 外字 by the flow's ``gaiji`` policy, cut to *chars*."""
        if _HALF_WIDTH.search(text) is not None:
            text = widen_halfwidth_katakana(text).translate(_WIDEN_ASCII)
        if OUTSIDE_JISX0208.search(text) is not None:
            outcome = apply_gaiji_policy(clusters(text), JISX0208_CHARS, charset="jisx0208", gaiji=self.gaiji,
                                         fallback=self.gaiji_fallback)
            if outcome.problem is not None:  # reconcile() refused such an input before anything was written
                raise AssertionError("a 外字 the policy rejects reached the results")
            self.degenerated += len(outcome.replacements)
            self.substituted += outcome.substituted
            text = "".join(outcome.chars)
        return text[:chars]

    def _plate(self, text: str, chars: int) -> str:
        """:meth:`_wide` of a plate part; the few distinct ones without 外字 are kept (at most 4,096)."""
        known = self._plates.get(text)
        if known is not None:
            return known
        before = self.degenerated + self.substituted
        wide = self._wide(text, chars)
        if self.degenerated + self.substituted == before and len(self._plates) < 4096:
            self._plates[text] = wide
        return wide

    def _record(self, row: MatchRow) -> dict[str, Value]:
        theirs = self.airis[row.airis] if row.airis is not None else None
        if theirs is None or (row.category == "05"):
            assert row.register is not None
            ours = self.register[row.register]
            return {"category": row.category, "taxpayer_id": ours.taxpayer_id, "chassis_no": ours.chassis_no,
                    "plate_office": ours.plate_office, "plate_class": ours.plate_class,
                    "plate_kana": ours.plate_kana, "plate_serial": ours.plate_serial,
                    "airis_owner_name": "", "airis_owner_address": "", "airis_registered_on": "00000000",
                    "normalised": row.normalised}
        chassis = theirs.chassis_no
        if not chassis.isascii():
            chassis = unicodedata.normalize("NFKC", chassis)
        return {"category": row.category,
                "taxpayer_id": self.register.taxpayer_id(row.register) if row.register is not None else "0" * 15,
                "chassis_no": chassis.upper().replace(" ", ""),
                "plate_office": self._plate(theirs.plate_office, 4),
                "plate_class": theirs.plate_class, "plate_kana": self._plate(theirs.plate_kana, 1),
                "plate_serial": theirs.plate_serial,
                "airis_owner_name": self._wide(theirs.owner_name, 30),
                "airis_owner_address": self._wide(theirs.owner_address, 50),
                "airis_registered_on": theirs.registered_on, "normalised": row.normalised}


def _result_format() -> str:
    """One ``str.format`` template of the 突合結果 record, derived from its layout table.

    ``K`` fields are padded with U+3000 to w/2 characters, ``X`` with spaces, ``N`` with zeros;
    encoded as CP932 that is exactly the record's bytes, since every ``K`` character here is a
    double-byte JIS X 0208 character (register values are validated, AIRIS values made so).
    """
    parts = []
    for item in AIRIS_RECONCILE.fields:
        if item.kind is Kind.K:
            parts.append(f"{{{item.key}:{IDEOGRAPHIC_SPACE}<{item.width // 2}}}")
        elif item.kind is Kind.X:
            parts.append(f"{{{item.key}:<{item.width}}}")
        else:
            parts.append(f"{{{item.key}:0>{item.width}}}")
    return "".join(parts) + "\r\n"


_RESULT_FORMAT: Final = _result_format()


def render_result(record: Mapping[str, Value]) -> bytes:
    """One 突合結果 record, as :func:`~kei_gateway.layouts.render_record` renders it, in a fraction of the time.

    The values are made here (strings of the right kinds and widths), so the engine's general
    checks are not needed; a unit test holds the two renderings equal.
    """
    return _RESULT_FORMAT.format_map(record).encode("cp932")


_HALF_WIDTH: Final = re.compile("[ -~\uff61-\uff9f]")
_WIDEN_ASCII: Final = {code: code + 0xFEE0 for code in range(0x21, 0x7F)} | {0x20: ord(IDEOGRAPHIC_SPACE)}


def _register(data: bytes, label: str, today: datetime.date) -> RegisterRecords:
    options = ValidationOptions(today=today, max_errors=MAX_ERRORS_SHOWN)
    step = TAX_REGISTER_2W.record_length * _BLOCK_RECORDS

    def blocks() -> Iterator[bytes]:  # the validator copies what it is fed: a block at a time, not the file
        return (data[start:start + step] for start in range(0, len(data), step))

    report = validate_stream(blocks(), TAX_REGISTER_2W, options, reread=blocks, expected_size=len(data))
    if not report.valid:
        raise AirisInputError(label, [error.message() for error in report.errors], report.error_count)
    return RegisterRecords(data)


def _char_offsets() -> dict[str, tuple[int, int]]:
    """Each register field's span in a record decoded as text: a ``K`` field of w bytes is w/2 characters."""
    spans, position = {}, 0
    for item in TAX_REGISTER_2W.fields:
        chars = item.width // 2 if item.kind is Kind.K else item.width
        spans[item.key] = (position, position + chars)
        position += chars
    return spans


_REGISTER_SPANS: Final = _char_offsets()
_TAXPAYER_BYTES: Final = TAX_REGISTER_2W["taxpayer_id"].width
_CHASSIS_OFFSET: Final = TAX_REGISTER_2W.offsets["chassis_no"]
_CHASSIS_BYTES: Final = TAX_REGISTER_2W["chassis_no"].width
_REGISTER_CHARS: Final = max(end for _, end in _REGISTER_SPANS.values()) + 2
_BLOCK_RECORDS: Final = 4096
_CACHED_RECORDS: Final = 32
"""Records decoded together when one is looked up (the last such block is kept)."""


class RegisterRecords(Sequence[RegisterVehicle]):
    """The vehicles of a register the validator has passed, read from its bytes when asked for (streamed).

    Nothing but the extract's own bytes is held (229 a vehicle): iterating decodes a block of
    records at a time, indexing decodes one record; the matcher walks the register in order and
    the outputs look up the rows' records, so the register's vehicles never all exist as objects.

    A valid record's ``K`` fields hold double-byte characters only and the rest ASCII, so the
    decoded record has a fixed length in characters too: a block is decoded once (CP932, in C)
    and sliced at the layout's places, instead of the engine's parser, which re-checks every
    record precisely and costs ten times more on a 100,000-record register.
    """

    def __init__(self, data: bytes) -> None:
        self._data = data
        self._length = len(data) // TAX_REGISTER_2W.record_length
        self._cached_block = -1
        self._cached_text = ""

    def __len__(self) -> int:
        return self._length

    @overload
    def __getitem__(self, index: int) -> RegisterVehicle: ...

    @overload
    def __getitem__(self, index: slice) -> Sequence[RegisterVehicle]: ...

    def __getitem__(self, index: int | slice) -> RegisterVehicle | Sequence[RegisterVehicle]:
        if isinstance(index, slice):
            return [self[position] for position in range(*index.indices(self._length))]
        if index < 0:
            index += self._length
        if not 0 <= index < self._length:
            raise IndexError(index)
        block, within = divmod(index, _CACHED_RECORDS)
        if block != self._cached_block:  # the outputs look rows up in register order, category by category
            size = TAX_REGISTER_2W.record_length * _CACHED_RECORDS
            self._cached_text = self._data[block * size:(block + 1) * size].decode("cp932")
            self._cached_block = block
        return _vehicle(self._cached_text, within * _REGISTER_CHARS)

    def taxpayer_id(self, index: int) -> str:
        """The 納税義務者番号 of record *index* (ASCII at the record's start: no decode of the rest)."""
        start = index * TAX_REGISTER_2W.record_length
        return self._data[start:start + _TAXPAYER_BYTES].decode("ascii")

    def chassis_numbers(self) -> Iterator[str]:
        """Every record's 車台番号 (padding stripped), in order: the bytes at its fixed place, nothing else decoded."""
        size = TAX_REGISTER_2W.record_length
        data = self._data
        for start in range(_CHASSIS_OFFSET, self._length * size, size):
            yield data[start:start + _CHASSIS_BYTES].decode("ascii").rstrip(" ")

    def __iter__(self) -> Iterator[RegisterVehicle]:
        step = TAX_REGISTER_2W.record_length * _BLOCK_RECORDS
        for block_start in range(0, self._length * TAX_REGISTER_2W.record_length, step):
            text = self._data[block_start:block_start + step].decode("cp932")
            for start in range(0, len(text), _REGISTER_CHARS):
                yield _vehicle(text, start)


_FIELDS: Final = operator.itemgetter(*(slice(*_REGISTER_SPANS[key]) for key in RegisterVehicle._fields))
"""The register vehicle's fields of one decoded record, padded (one call in C)."""


def _vehicle(text: str, start: int) -> RegisterVehicle:
    """The register vehicle whose decoded record starts at *start* of *text* (padding stripped)."""
    taxpayer, office, plate_class, kana, serial, chassis, name, address, deregistered = _FIELDS(
        text[start:start + _REGISTER_CHARS])
    return RegisterVehicle(taxpayer, office.rstrip(IDEOGRAPHIC_SPACE), plate_class.rstrip(" "),
                           kana.rstrip(IDEOGRAPHIC_SPACE), serial, chassis.rstrip(" "),
                           name.rstrip(IDEOGRAPHIC_SPACE), address.rstrip(IDEOGRAPHIC_SPACE), deregistered == "1")


def _airis(container: AirisContainer, data: bytes, key: str, label: str) -> AirisVehicles:
    chunks = container.csv_chunks(data, key, label=label)
    try:
        return parse_airis_csv(chunks, max_errors=MAX_ERRORS_SHOWN)
    except AirisCsvError as error:
        for _ in chunks:
            pass  # the ZIP's own check (HMAC) comes at its end: a damaged file is named damaged, not garbled
        raise AirisInputError(f"{label} (its CSV)", [problem.message() for problem in error.problems],
                              error.total) from None


def reconcile(*, airis_zip: bytes, key_file: bytes, register: bytes, lg_code: str, at: datetime.datetime,
              airis_label: str = "AIRIS ZIP", key_label: str = "key file", register_label: str = "register",
              container: AirisContainer | None = None, gaiji: GaijiPolicy = "degenerate",
              gaiji_fallback: GaijiFallback = "substitute") -> Reconciliation:
    """Check both inputs and match them; :class:`AirisInputError` names what is wrong (nothing written).

    *gaiji* and *gaiji_fallback* say what becomes of an AIRIS value's character outside JIS X 0208
    in the ``.dat`` (SPEC §2 and §13); a policy that rejects makes such a value an input error,
    named by row and column like every other.
    """
    try:
        key = read_key(key_file, label=key_label)
    except AirisContainerError as error:
        raise AirisInputError(key_label, [str(error).removeprefix(f"{key_label}: ")]) from None
    try:
        vehicles = _airis(container or WinZipAesContainer(), airis_zip, key, airis_label)
    except AirisContainerError as error:
        raise AirisInputError(airis_label, [str(error).removeprefix(f"{airis_label}: ")]) from None
    if gaiji == "reject" or (gaiji == "degenerate" and gaiji_fallback == "reject"):
        _check_gaiji(vehicles, airis_label, gaiji, gaiji_fallback)
    register_vehicles = _register(register, register_label, at.astimezone(JST).date())
    rows = match_vehicles(register_vehicles, vehicles, register_chassis=register_vehicles.chassis_numbers(),
                          airis_chassis=vehicles.chassis_numbers())
    return Reconciliation(lg_code, at, register_vehicles, vehicles, rows, hashlib.sha256(airis_zip).hexdigest(),
                          hashlib.sha256(register).hexdigest(), airis_label, register_label, gaiji=gaiji,
                          gaiji_fallback=gaiji_fallback)


_WRITTEN_K: Final = ("plate_office", "plate_kana", "owner_name", "owner_address")
"""The AIRIS values the ``.dat`` writes into ``K`` (JIS X 0208) fields."""


def _check_gaiji(vehicles: AirisVehicles, label: str, gaiji: GaijiPolicy, fallback: GaijiFallback) -> None:
    """Every AIRIS value the ``.dat`` would hold with a 外字 the policy rejects, by row and column (masked)."""
    from kei_gateway.layouts.airis import AIRIS_VEHICLES
    from kei_gateway.layouts.errors import mask

    problems: list[str] = []
    total = 0
    for vehicle in vehicles:
        for key in _WRITTEN_K:
            text = getattr(vehicle, key)
            if _HALF_WIDTH.search(text) is not None:
                text = widen_halfwidth_katakana(text).translate(_WIDEN_ASCII)
            if OUTSIDE_JISX0208.search(text) is None:
                continue
            outcome = apply_gaiji_policy(clusters(text), JISX0208_CHARS, charset="jisx0208", gaiji=gaiji,
                                         fallback=fallback)
            if outcome.problem is None:
                continue
            total += 1
            if len(problems) < MAX_ERRORS_SHOWN:
                column = AIRIS_VEHICLES[key]
                where = outcome.problem.split(";")[0]
                remedy = ('gaiji_fallback = "substitute"' if gaiji == "degenerate"
                          else 'gaiji = "degenerate" (or "substitute")')
                problems.append(f"row {vehicle.row}: {column.name} ({key}): {where}, which the .dat (JIS X 0208) "
                                f"cannot hold: set [flows.airis-reconcile] {remedy} "
                                f"[value {mask(getattr(vehicle, key))!r}]")
    if total:
        raise AirisInputError(f"{label} (its CSV)", problems, total)


def output_names(stem: str) -> tuple[str, str, str]:
    return f"{stem}.dat", f"{stem}.csv", f"{stem}.txt"


def write_outputs(result: Reconciliation, directory: str, *, mode: int = 0o640,
                  before_publishing: Callable[[], object] = lambda: None) -> tuple[str, str, str]:
    """The ``.dat``, ``.csv`` and ``.txt`` into *directory*, all three or none (staged, fsynced, renamed).

    *before_publishing* runs once all three are staged and before any is renamed (the command's audit
    record: a kill -9 can then leave a record without results, never results without their record); if it
    raises, the staged files are removed and nothing is published.
    """
    names = output_names(result.stem)
    bodies: tuple[Iterable[bytes], ...] = (result.dat_chunks(), result.csv_chunks(),
                                           (result.text().encode("utf-8"),))
    staged: list[str] = []
    try:
        for name, body in zip(names, bodies):
            path = os.path.join(directory, f".{name}.part")
            staged.append(path)  # before writing: a write cut short is removed too
            write_durable(path, body, mode)
        before_publishing()
        for name, path in zip(names, staged):
            publish(path, os.path.join(directory, name))
    except BaseException:
        for path in staged:
            try:
                os.unlink(path)
            except FileNotFoundError:
                pass
        fsync_directory(directory)
        raise
    return names


# --------------------------------------------------------------------------- the daemon flow

MAX_INPUT_BYTES: Final = 2 << 30
"""An input over 2 GiB is refused unread (the command's limit; the flow's is ``[gateway] max_file_size``)."""
PEER: Final = "airis"
"""The ledger's peer column for this flow's transfers (AIRIS and the tax system are not LGWAN peers)."""
RECONCILED_EVENT: Final = "airis.reconciled"
"""The audit record of a run that wrote results (committed with the ``.dat``'s transfer)."""
REJECTED_EVENT: Final = "airis.rejected"
"""The audit record of a run refused for an invalid input (committed with its errors file's transfer)."""
RECENT_TRANSFERS: Final = 16
"""The flow's newest transfers a check reads to find an unfinished run: a run has at most 3 inputs and 3
results (runs are one at a time, so only the newest run can be unfinished)."""


@dataclass(frozen=True)
class FlowPaths:
    """The flow's directories: two outboxes, the inbox, its quarantine (errors files) and the reports."""

    airis_outbox: str
    register_outbox: str
    inbox: str
    quarantine: str
    airis_label: str = "outbox/airis"
    register_label: str = "outbox/airis-register"


@dataclass
class FlowRun:
    """What one run of the flow did, for the reactor side to log and count."""

    inputs: tuple[str, ...]
    reconciled: dict[str, object] | None = None
    """The ``airis.reconciled`` fields (hashes and counts, no personal value) when the results were published."""
    counts: dict[str, int] = field(default_factory=dict)
    """Rows per category of the published results."""
    rejected: str | None = None
    """The ``airis.rejected`` reason when an input was invalid."""
    names: tuple[str, ...] = ()
    errors_file: str | None = None
    resumed: bool = False
    """The run was found unfinished (a crash, a stop) and completed from what the ledger recorded."""


def _ready_names(directory: str) -> list[str]:
    from kei_gateway.adapters.spool import NAME_PATTERN, TEMP_SUFFIX, list_entries

    try:
        entries = list_entries(directory)
    except FileNotFoundError:
        return []
    return sorted(entry.name for entry in entries if entry.kind == "file" and NAME_PATTERN.fullmatch(entry.name)
                  and not entry.name.endswith(TEMP_SUFFIX))


def find_inputs(paths: FlowPaths) -> tuple[str, str, str] | None:
    """The first AIRIS file whose ``<name>.key`` is there too, and the first register extract; else None."""
    airis = _ready_names(paths.airis_outbox)
    present = set(airis)
    downloads = [name for name in airis if not name.endswith(".key") and name + ".key" in present]
    registers = _ready_names(paths.register_outbox)
    if not downloads or not registers:
        return None
    return downloads[0], downloads[0] + ".key", registers[0]


def _size(path: str) -> int:
    return os.lstat(path).st_size


def _read_input(path: str, limit: int) -> bytes:
    """The whole input (the ZIP is opened in memory; the register is read from its bytes), at most *limit*."""
    fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)
    with os.fdopen(fd, "rb") as file:
        data = file.read(limit + 1)
    if len(data) > limit:  # grew after it was measured: the next check refuses it unread
        raise OSError(f"{os.path.basename(path)} grew past {limit} bytes while it was read")
    return data


ErasedInput = tuple[str, str, int, int]
"""A plaintext input erased after a run: its path under ``spool_dir``, SHA-256, size, and the transfer
holding its encrypted copy — what the 消去報告 lists (written by the operations side, injected)."""


def _stem(lg_code: str, at: datetime.datetime) -> str:
    return f"{lg_code}_{FLOW}_{at.astimezone(JST).strftime('%Y%m%d%H%M%S')}"


def _run_fields(stem: str, airis_sha256: str, register_sha256: str, counts: Mapping[str, int]) -> dict[str, object]:
    listed = " ".join(f"{code}={count}" for code, count in counts.items())
    return {"flow": FLOW, "sha256": airis_sha256, "records": sum(counts.values()), "name": stem + ".dat",
            "reason": f"register sha256={register_sha256}; {listed}"}


def audit_fields(result: Reconciliation) -> dict[str, object]:
    """The audit record's and the log event's fields of a run: hashes and counts, never a personal value."""
    return _run_fields(result.stem, result.airis_sha256, result.register_sha256, result.counts)


def run_flow_once(paths: FlowPaths, *, lg_code: str, store: BlobStore, ledger: TransferLedgerPort,
                  now: datetime.datetime, note_erased: Callable[[Sequence[ErasedInput], datetime.datetime], object],
                  gaiji: GaijiPolicy = "degenerate", gaiji_fallback: GaijiFallback = "substitute",
                  max_input_bytes: int = MAX_INPUT_BYTES) -> FlowRun | None:
    """Blocking: finish the unfinished run, or run once if all three inputs are there (:func:`find_inputs`); else None.

    Exactly once, whatever step a crash (``kill -9``) cuts, because every step is recorded in
    the ledger before the next and is found again by the next check:

    1. each input is encrypted into the store and recorded (a ``DONE`` inbound transfer of this flow,
       ``remote_name`` its outbox path, ``source_removed`` false); the run's time — and so the
       results' names — is the first input's ``created_at``, so a run done again gives the same names;
    2. the 突合 runs in memory (deterministic for the inputs and that time); the results are encrypted
       into the store as they are rendered (never whole in memory) and recorded ``VALIDATED`` (no purge
       touches them until they are published), the ``.dat`` last, in one transaction with the run's
       audit record ``airis.reconciled`` (hashes, counts). An
       invalid input: ``quarantine/airis-reconcile/<stem>.errors.txt`` names every problem (values
       masked) and a ``QUARANTINED`` transfer records it with the audit record ``airis.rejected``;
    3. the results are staged in the inbox from the store, their names recorded (``relay_name``),
       then renamed into place — :func:`~kei_gateway.adapters.spool.publish_staged`, the inbound
       relays' exactly-once hand-off, so a result the tax system has taken is never written again —
       and marked ``DONE`` (from then on they follow ``retention.inbox`` and ``retention.payloads``);
    4. the time of the erasure is recorded on the inputs (``updated_at``), the plaintext inputs are
       erased from the outboxes, listed in that day's 消去報告 (once: an input listed already is
       recognised by its transfer), and their transfers marked ``source_removed``.
    """
    recent = ledger.list_transfers(flow=FLOW, limit=RECENT_TRANSFERS)
    pending = sorted((row for row in recent if row.remote_name is not None and not row.source_removed),
                     key=lambda row: row.id)
    if pending:
        outcome = _outcome(recent, pending[0])
        if outcome:
            return _finish(paths, ledger, store, pending, outcome, now, note_erased, resumed=True)
    found = find_inputs(paths)
    if found is None:  # inputs claimed by a run cut short wait with their files; others replacing them end them
        return None
    return _run(paths, found, pending, recent, lg_code=lg_code, store=store, ledger=ledger, now=now,
                note_erased=note_erased, gaiji=gaiji, gaiji_fallback=gaiji_fallback, max_input_bytes=max_input_bytes)


def _outcome(recent: Sequence[TransferRow], first_input: TransferRow) -> list[TransferRow]:
    """The recorded outcome of the run whose first input is *first_input*: its three results (the ``.dat``
    recorded) or its errors file; empty while nothing is recorded."""
    after = [row for row in recent if row.id > first_input.id and row.remote_name is None]
    if any(row.state == TransferState.QUARANTINED for row in after):
        return [row for row in after if row.state == TransferState.QUARANTINED]
    if not any(row.local_name.endswith(".dat") for row in after):
        return []
    return sorted(after, key=lambda row: _OUTPUT_ORDER[row.local_name.rsplit(".", 1)[1]])


_OUTPUT_ORDER: Final = {"dat": 0, "csv": 1, "txt": 2}


def _run(paths: FlowPaths, found: tuple[str, str, str], pending: list[TransferRow], recent: Sequence[TransferRow],
         *, lg_code: str, store: BlobStore, ledger: TransferLedgerPort, now: datetime.datetime,
         note_erased: Callable[[Sequence[ErasedInput], datetime.datetime], object], gaiji: GaijiPolicy,
         gaiji_fallback: GaijiFallback, max_input_bytes: int) -> FlowRun:
    zip_name, key_name, register_name = found
    sources = ((paths.airis_outbox, paths.airis_label, zip_name), (paths.airis_outbox, paths.airis_label, key_name),
               (paths.register_outbox, paths.register_label, register_name))
    sizes = [_size(os.path.join(directory, name)) for directory, _, name in sources]
    if any(size > max_input_bytes for size in sizes):
        return _refuse_unread(paths, ledger, recent, sources, sizes, max_input_bytes,
                              _stem(lg_code, _run_time(recent, (), now)), now, note_erased)
    data = [_read_input(os.path.join(directory, name), max_input_bytes) for directory, _, name in sources]
    present = [(f"{label}/{name}", hashlib.sha256(body).hexdigest()) for (_, label, name), body in zip(sources, data)]
    claimed = {(row.remote_name, row.sha256): row for row in pending if (row.remote_name, row.sha256) in present}
    for stale in pending:
        if (stale.remote_name, stale.sha256) not in claimed:  # claimed by a run cut short, then replaced: never used
            ledger.update(stale.id, now, source_removed=True, last_error="replaced before the 突合 ran")
    pending = list(claimed.values())
    at = _run_time(recent, pending, now)
    recorded = {row.local_name: row for row in recent  # results of this run recorded before a crash (not the .dat)
                if pending and row.id > min(p.id for p in pending) and row.remote_name is None}
    inputs: list[TransferRow] = []
    for (_, label, name), content, (remote_name, digest) in zip(sources, data, present):
        found_row = claimed.get((remote_name, digest))
        if found_row is None:
            blob = store.write(f"in-{uuid.uuid4().hex}", [content])
            found_row = ledger.add_transfer(
                flow=FLOW, direction="in", peer=PEER, local_name=name, state=TransferState.DONE, size=len(content),
                sha256=digest, record_count=0, blob_id=blob.blob_id, now=at, remote_name=remote_name,
                source_removed=False, audit=_stored_record("input", digest, 0))
        inputs.append(found_row)
    crashpoint("airis.inputs-recorded")
    stem = _stem(lg_code, at)
    try:
        result = reconcile(airis_zip=data[0], key_file=data[1], register=data[2], lg_code=lg_code, at=at,
                           airis_label=zip_name, key_label=key_name, register_label=register_name,
                           gaiji=gaiji, gaiji_fallback=gaiji_fallback)
    except AirisInputError as error:
        del data
        return _reject(paths, ledger, inputs, stem, error, now, note_erased)
    del data
    outcome: list[TransferRow] = []
    for name, body in zip(reversed(output_names(stem)), (  # the .dat last: its commit is the run's
            (result.text().encode("utf-8"),), result.csv_chunks(), result.dat_chunks())):
        if name in recorded:
            outcome.append(recorded[name])
            continue
        blob = store.write(f"in-{uuid.uuid4().hex}", body)
        is_dat = name.endswith(".dat")
        outcome.append(ledger.add_transfer(  # VALIDATED until published, as the inbound relays: never purged before
            flow=FLOW, direction="in", peer=PEER, local_name=name, state=TransferState.VALIDATED, size=blob.size,
            sha256=blob.sha256, record_count=len(result.rows) if is_dat else 0, blob_id=blob.blob_id, now=now,
            audit=(RECONCILED_EVENT, audit_fields(result)) if is_dat else _stored_record("result", blob.sha256, 0)))
    crashpoint("airis.recorded")
    return _finish(paths, ledger, store, inputs, outcome[::-1], now, note_erased, resumed=False,
                   counts=result.counts)


def _stored_record(role: str, sha256: str | None, records: int) -> tuple[str, dict[str, object]]:
    """The record committed with an input's or a ``.csv``/``.txt`` result's transfer (issue 11: no transfer
    without a record; the ``.dat``'s is the run's own, ``airis.reconciled``)."""
    return events.AIRIS_STORED.name, {"flow": FLOW, "sha256": sha256, "records": records, "reason": role}


def _run_time(recent: Sequence[TransferRow], pending: Sequence[TransferRow], now: datetime.datetime) -> datetime.datetime:
    """The run's time: its first input's, when a run cut short is done again (same result names); else now,
    moved past the newest transfer's second so two runs never share a stem."""
    if pending:
        return min(pending, key=lambda row: row.id).created_at
    whole = now.replace(microsecond=0)
    if recent and recent[0].created_at.replace(microsecond=0) >= whole:
        return recent[0].created_at.replace(microsecond=0) + datetime.timedelta(seconds=1)
    return now


def _reject(paths: FlowPaths, ledger: TransferLedgerPort, inputs: Sequence[TransferRow], stem: str,
            error: AirisInputError, now: datetime.datetime,
            note_erased: Callable[[Sequence[ErasedInput], datetime.datetime], object]) -> FlowRun:
    from kei_gateway.adapters.spool import QUARANTINE_DIR_MODE, ensure_directory, write_errors_file

    names = ", ".join(row.local_name for row in inputs)
    ensure_directory(paths.quarantine, QUARANTINE_DIR_MODE)
    errors_file = write_errors_file(paths.quarantine, stem, [
        f"{error.label}: {problem}" for problem in error.problems] + [
        f"{error.total} problem(s); inputs {names} were erased from the outboxes "
        "(encrypted copies kept until retention.payloads): correct them and put all three there again"])
    row = _record_rejection(ledger, errors_file, f"{error.total} problem(s) in {error.label}; see {errors_file}", now)
    crashpoint("airis.recorded")
    return _finish(paths, ledger, None, inputs, [row], now, note_erased, resumed=False)


def _record_rejection(ledger: TransferLedgerPort, errors_file: str, reason: str,
                      now: datetime.datetime) -> TransferRow:
    """A refused run as a ``QUARANTINED`` transfer named after its errors file, with its audit record."""
    return ledger.add_transfer(flow=FLOW, direction="in", peer=PEER, local_name=os.path.basename(errors_file),
                               state=TransferState.QUARANTINED, size=0, sha256=None, record_count=0, blob_id=None,
                               now=now, last_error=reason[:500],
                               audit=(REJECTED_EVENT, {"flow": FLOW, "reason": reason, "records": 0}))


def _refuse_unread(paths: FlowPaths, ledger: TransferLedgerPort, recent: Sequence[TransferRow],
                   sources: Sequence[tuple[str, str, str]], sizes: Sequence[int], limit: int, stem: str,
                   now: datetime.datetime,
                   note_erased: Callable[[Sequence[ErasedInput], datetime.datetime], object]) -> FlowRun:
    """An input over ``[gateway] max_file_size`` (SPEC §4): the run is refused unread, the inputs erased unkept.

    Recorded first (the ``QUARANTINED`` transfer named after its errors file, ``source_removed`` false), then the
    errors file, the erasure and its 消去報告 line, then ``source_removed``: a crash anywhere leaves the refusal
    recorded, and the next check finds it again by its reason (the same inputs, names and sizes) and finishes it
    under the same errors file — one transfer and one audit record per refusal (issue 11).
    """
    from kei_gateway.adapters.spool import ERRORS_SUFFIX, QUARANTINE_DIR_MODE, ensure_directory, write_errors_file

    problems = [f"{name}: {size:,} bytes, over [gateway] max_file_size ({limit:,} bytes): refused unread; an AIRIS "
                "download or register extract is far smaller — check the file"
                for (_, _, name), size in zip(sources, sizes) if size > limit]
    label = ", ".join(f"{name} ({size:,} bytes)" for (_, _, name), size in zip(sources, sizes) if size > limit)
    refusal = f"refused unread, over [gateway] max_file_size ({limit:,} bytes): {label}"
    leftover = next((row for row in recent if row.state == TransferState.QUARANTINED and row.remote_name is None
                     and not row.source_removed and (row.last_error or "").startswith((refusal + "; see ")[:500])), None)
    row = leftover or _record_rejection(ledger, os.path.join(paths.quarantine, stem + ERRORS_SUFFIX),
                                        f"{refusal}; see {os.path.join(paths.quarantine, stem + ERRORS_SUFFIX)}", now)
    errors_name = row.local_name.removesuffix(ERRORS_SUFFIX)
    ensure_directory(paths.quarantine, QUARANTINE_DIR_MODE)
    errors_file = write_errors_file(paths.quarantine, errors_name, problems + [
        f"inputs {', '.join(name for _, _, name in sources)} were erased from the outboxes unread (nothing kept): "
        "put correct ones there again"])
    for directory, _, name in sources:
        try:
            os.unlink(os.path.join(directory, name))
        except FileNotFoundError:
            pass
    for directory in {paths.airis_outbox, paths.register_outbox}:
        fsync_directory(directory)
    note_erased([(f"{label_}/{name}", "", size, row.id) for (_, label_, name), size in zip(sources, sizes)], now)
    ledger.update(row.id, now, source_removed=True)
    return FlowRun(tuple(name for _, _, name in sources), rejected=row.last_error or refusal, errors_file=errors_file)


def _finish(paths: FlowPaths, ledger: TransferLedgerPort, store: BlobStore | None, inputs: Sequence[TransferRow],
            outcome: Sequence[TransferRow], now: datetime.datetime,
            note_erased: Callable[[Sequence[ErasedInput], datetime.datetime], object], *, resumed: bool,
            counts: Mapping[str, int] | None = None) -> FlowRun:
    """Steps 3 and 4 of :func:`run_flow_once` for a recorded outcome; each safe to do again."""
    run = FlowRun(tuple(row.local_name for row in inputs), resumed=resumed)
    if outcome[0].state == TransferState.QUARANTINED:
        run.errors_file = os.path.join(paths.quarantine, outcome[0].local_name)
        run.rejected = outcome[0].last_error or "an input is invalid"
    else:
        assert store is not None
        from kei_gateway.adapters.spool import SHARED_DIR_MODE, ensure_directory, publish_staged, stage_for_inbox

        ensure_directory(paths.inbox, SHARED_DIR_MODE)
        unrecorded = [row for row in outcome if row.relay_name is None]
        for row in unrecorded:  # all three staged before any is recorded or renamed: all three appear, or none
            assert row.blob_id is not None
            stage_for_inbox(paths.inbox, row.local_name, store.read(row.blob_id))
        for row in unrecorded:
            ledger.update(row.id, now, relay_name=row.local_name)
        crashpoint("airis.staged")
        for index, row in enumerate(outcome):
            publish_staged(paths.inbox, row.local_name, False)
            if index == 0:
                crashpoint("airis.publishing")
        for row in outcome:
            if row.state != TransferState.DONE:
                ledger.transition(row.id, TransferState.DONE, now)
        crashpoint("airis.published")
        dat = outcome[0]
        run.names = tuple(row.local_name for row in outcome)
        run.counts = dict(counts) if counts is not None else _counts_of(store, dat)
        airis = next(row for row in inputs if not row.local_name.endswith(".key") and row.remote_name is not None
                     and row.remote_name.startswith(paths.airis_label + "/"))
        register = next((row for row in inputs if row.remote_name is not None
                         and row.remote_name.startswith(paths.register_label + "/")), airis)
        run.reconciled = _run_fields(dat.local_name.removesuffix(".dat"), airis.sha256 or "", register.sha256 or "",
                                     run.counts)
    # The erasure's time, recorded before anything is erased (updated_at of the inputs), so a run cut after
    # listing lists under the same time and day again, which the 消去報告 recognises: listed once.
    erased_at = max(row.updated_at for row in inputs) if inputs else now
    if inputs and erased_at <= max(row.created_at for row in inputs):  # not recorded yet
        erased_at = max(now, erased_at + datetime.timedelta(microseconds=1))
        inputs = [ledger.update(row.id, erased_at) for row in inputs]
    erased: list[ErasedInput] = []
    for row in inputs:
        assert row.remote_name is not None
        directory = paths.airis_outbox if row.remote_name.startswith(paths.airis_label + "/") else paths.register_outbox
        path = os.path.join(directory, row.local_name)
        if os.path.lexists(path) and _same_content(path, row.sha256):
            os.unlink(path)
        erased.append((row.remote_name, row.sha256 or "", row.size, row.id))
    for directory in {paths.airis_outbox, paths.register_outbox}:
        fsync_directory(directory)
    crashpoint("airis.erased")
    note_erased(erased, erased_at)
    crashpoint("airis.listed")
    for row in inputs:
        ledger.update(row.id, now, source_removed=True)
    return run


def _same_content(path: str, sha256: str | None) -> bool:
    """Whether the file at *path* is still the recorded input (a new file of the same name is left alone)."""
    digest = hashlib.sha256()
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)
    except OSError:
        return False
    with os.fdopen(fd, "rb") as file:
        for chunk in iter(lambda: file.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest() == sha256


def _counts_of(store: BlobStore, dat: TransferRow) -> dict[str, int]:
    """Rows per category of a stored ``.dat`` (its records' first field), for a run finished after a restart."""
    counts = {code: 0 for code in CATEGORIES}
    size = AIRIS_RECONCILE.record_length
    pending = b""
    assert dat.blob_id is not None
    for chunk in store.read(dat.blob_id):
        pending += chunk
        whole = len(pending) - len(pending) % size
        for start in range(0, whole, size):
            code = pending[start:start + 2].decode("ascii")
            counts[code] = counts.get(code, 0) + 1
        pending = pending[whole:]
    return counts
