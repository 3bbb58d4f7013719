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
import os
import re
import unicodedata
import uuid
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Final

from kei_gateway.adapters.airis_zip import AirisContainer, AirisContainerError, WinZipAesContainer, read_key
from kei_gateway.core.airis_match import (
    MatchRow, RegisterVehicle, category_counts, match_vehicles,
)
from kei_gateway.core.jst import JST
from kei_gateway.layouts import Kind, ValidationOptions, validate_bytes
from kei_gateway.layouts.airis import (
    AIRIS_RECONCILE, CATEGORIES, NORMALISATIONS, OUTSIDE_JISX0208, TAX_REGISTER_2W, AirisCsvError, AirisVehicle,
    parse_airis_csv,
)
from kei_gateway.layouts.degenerate import degenerate_text
from kei_gateway.layouts.fields import Value
from kei_gateway.layouts.encoding import GETA, IDEOGRAPHIC_SPACE, JISX0208_CHARS, widen_halfwidth_katakana
from kei_gateway.core.report_format import csv_rows
from kei_gateway.adapters.spool import fsync_directory, publish, write_durable

__all__ = [
    "FLOW",
    "FlowPaths",
    "FlowRun",
    "MAX_INPUT_BYTES",
    "find_inputs",
    "ErasedInput",
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
    register: list[RegisterVehicle]
    airis: list[AirisVehicle]
    rows: list[MatchRow]
    airis_sha256: str
    register_sha256: str
    airis_label: str
    register_label: str
    counts: dict[str, int] = field(default_factory=dict)
    degenerated: int = 0
    """AIRIS characters outside JIS X 0208 written as their 縮退 in the ``.dat``."""
    substituted: int = 0
    """AIRIS characters with no unique 縮退, written as 〓 in the ``.dat``."""
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
        """An AIRIS value for a ``K`` field: full width, 外字 by 縮退 (fallback 〓), cut to *chars*."""
        if _HALF_WIDTH.search(text) is not None:
            text = widen_halfwidth_katakana(text).translate(_WIDEN_ASCII)
        if OUTSIDE_JISX0208.search(text) is not None:
            text, done, unresolved = degenerate_text(text)
            self.degenerated += len(done)
            if unresolved:
                self.substituted += len(unresolved)
                text = "".join(GETA if char not in JISX0208_CHARS else char for char in text)
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
        ours = self.register[row.register] if row.register is not None else None
        theirs = self.airis[row.airis] if row.airis is not None else None
        if theirs is None or (row.category == "05"):
            assert ours is not None
            return {"category": row.category, "taxpayer_id": ours.taxpayer_id, "chassis_no": ours.chassis_no,
                    "plate_office": ours.plate_office, "plate_class": ours.plate_class,
                    "plate_kana": ours.plate_kana, "plate_serial": ours.plate_serial,
                    "airis_owner_name": "", "airis_owner_address": "", "airis_registered_on": "00000000",
                    "normalised": row.normalised}
        chassis = theirs.chassis_no
        if not chassis.isascii():
            chassis = unicodedata.normalize("NFKC", chassis)
        return {"category": row.category, "taxpayer_id": ours.taxpayer_id if ours else "0" * 15,
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


def _register(data: bytes, label: str, today: datetime.date) -> list[RegisterVehicle]:
    options = ValidationOptions(today=today, max_errors=MAX_ERRORS_SHOWN)
    report = validate_bytes(data, TAX_REGISTER_2W, options)
    if not report.valid:
        raise AirisInputError(label, [error.message() for error in report.errors], report.error_count)
    return list(_register_vehicles(data))


def _char_offsets() -> dict[str, tuple[int, int]]:
    """Each register field's span in a record decoded as text: a ``K`` field of w bytes is w/2 characters."""
    spans, position = {}, 0
    for item in TAX_REGISTER_2W.fields:
        chars = item.width // 2 if item.kind is Kind.K else item.width
        spans[item.key] = (position, position + chars)
        position += chars
    return spans


_REGISTER_SPANS: Final = _char_offsets()
_REGISTER_CHARS: Final = max(end for _, end in _REGISTER_SPANS.values()) + 2


def _register_vehicles(data: bytes) -> Iterator[RegisterVehicle]:
    """The vehicles of a register the validator has passed, sliced out of the text at fixed places.

    A valid record's ``K`` fields hold double-byte characters only and the rest ASCII, so the
    decoded record has a fixed length in characters too: the file is decoded once (CP932, in C)
    and sliced, instead of the engine's parser, which re-checks every record precisely and costs
    ten times more on a 100,000-record register.
    """
    spans = [_REGISTER_SPANS[key] for key in RegisterVehicle._fields]
    (taxpayer, office, plate_class, kana, serial, chassis, name, address, deregistered) = spans
    interned: dict[str, str] = {}
    for block_start in range(0, len(data), TAX_REGISTER_2W.record_length * 4096):
        text = data[block_start:block_start + TAX_REGISTER_2W.record_length * 4096].decode("cp932")
        for start in range(0, len(text), _REGISTER_CHARS):
            office_text = text[start + office[0]:start + office[1]].rstrip(IDEOGRAPHIC_SPACE)
            yield RegisterVehicle(
                text[start + taxpayer[0]:start + taxpayer[1]],
                interned.setdefault(office_text, office_text),
                text[start + plate_class[0]:start + plate_class[1]].rstrip(" "),
                text[start + kana[0]:start + kana[1]].rstrip(IDEOGRAPHIC_SPACE),
                interned.setdefault(serial_text := text[start + serial[0]:start + serial[1]], serial_text),
                text[start + chassis[0]:start + chassis[1]].rstrip(" "),
                text[start + name[0]:start + name[1]].rstrip(IDEOGRAPHIC_SPACE),
                text[start + address[0]:start + address[1]].rstrip(IDEOGRAPHIC_SPACE),
                text[start + deregistered[0]:start + deregistered[1]] == "1")


def _airis(container: AirisContainer, data: bytes, key: str, label: str) -> list[AirisVehicle]:
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
              container: AirisContainer | None = None) -> Reconciliation:
    """Check both inputs and match them; :class:`AirisInputError` names what is wrong (nothing written)."""
    try:
        key = read_key(key_file, label=key_label)
        vehicles = _airis(container or WinZipAesContainer(), airis_zip, key, airis_label)
    except AirisContainerError as error:
        raise AirisInputError(airis_label, [str(error)]) from None
    register_vehicles = _register(register, register_label, at.astimezone(JST).date())
    rows = match_vehicles(register_vehicles, vehicles)
    return Reconciliation(lg_code, at, register_vehicles, vehicles, rows, hashlib.sha256(airis_zip).hexdigest(),
                          hashlib.sha256(register).hexdigest(), airis_label, register_label)


def output_names(stem: str) -> tuple[str, str, str]:
    return f"{stem}.dat", f"{stem}.csv", f"{stem}.txt"


def write_outputs(result: Reconciliation, directory: str, *, mode: int = 0o640) -> tuple[str, str, str]:
    """The ``.dat``, ``.csv`` and ``.txt`` into *directory*, all three or none (staged, fsynced, renamed)."""
    names = output_names(result.stem)
    bodies: tuple[Iterable[bytes], ...] = (result.dat_chunks(), result.csv_chunks(),
                                           (result.text().encode("utf-8"),))
    staged: list[str] = []
    try:
        for name, body in zip(names, bodies):
            path = os.path.join(directory, f".{name}.part")
            write_durable(path, body, mode)
            staged.append(path)
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


def audit_fields(result: Reconciliation) -> dict[str, object]:
    """The audit record's and the log event's fields of a run: hashes and counts, never a personal value."""
    counts = " ".join(f"{code}={count}" for code, count in result.counts.items())
    return {"flow": FLOW, "sha256": result.airis_sha256, "records": len(result.rows), "name": result.stem + ".dat",
            "reason": f"register sha256={result.register_sha256}; {counts}"}


# --------------------------------------------------------------------------- the daemon flow

MAX_INPUT_BYTES: Final = 2 << 30
"""An input over 2 GiB is refused unread."""
PEER: Final = "airis"
"""The ledger's peer column for this flow's transfers (AIRIS and the tax system are not LGWAN peers)."""


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

    inputs: tuple[str, str, str]
    result: Reconciliation | None = None
    error: AirisInputError | None = None
    names: tuple[str, ...] = ()
    errors_file: str | None = None


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


def _read_input(path: str) -> bytes:
    fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)
    with os.fdopen(fd, "rb") as file:
        data = file.read(MAX_INPUT_BYTES + 1)
    if len(data) > MAX_INPUT_BYTES:
        raise AirisInputError(os.path.basename(path), [f"over {MAX_INPUT_BYTES} bytes: not an AIRIS 突合 input"])
    return data


ErasedInput = tuple[str, str, int, int]
"""A plaintext input erased after a run: its path under ``spool_dir``, SHA-256, size, and the transfer
holding its encrypted copy — what the 消去報告 lists (written by the operations side, injected)."""


def run_flow_once(paths: FlowPaths, *, lg_code: str, store: Any, ledger: Any, now: datetime.datetime,
                  note_erased: Callable[[Sequence[ErasedInput], datetime.datetime], object]) -> FlowRun | None:
    """Blocking: one run if all three inputs are there (see :func:`find_inputs`), else None.

    1. each input is encrypted into the store (a ``DONE`` inbound transfer of this flow keeps it until
       ``retention.payloads``, then the purge erases it and lists it in the 消去報告);
    2. the 突合 runs in memory; on an invalid input ``quarantine/airis-reconcile/<name>.errors.txt``
       names every problem (values masked) and nothing reaches the inbox;
    3. the results are encrypted into the store, recorded as ``DONE`` transfers (so the purge erases
       them from the inbox after ``retention.inbox``), then written to the inbox all three or none;
    4. the plaintext inputs are erased from the outboxes and listed in the day's 消去報告 at once.
    """
    from kei_gateway.core.transfer import TransferState

    found = find_inputs(paths)
    if found is None:
        return None
    zip_name, key_name, register_name = found
    sources = ((paths.airis_outbox, paths.airis_label, zip_name), (paths.airis_outbox, paths.airis_label, key_name),
               (paths.register_outbox, paths.register_label, register_name))
    run = FlowRun(found)
    data = [_read_input(os.path.join(directory, name)) for directory, _, name in sources]
    stored: list[ErasedInput] = []
    for (_, label, name), body in zip(sources, data):
        blob_id = f"in-{uuid.uuid4().hex}"
        store.write(blob_id, [body])
        digest = hashlib.sha256(body).hexdigest()
        row = ledger.add_transfer(flow=FLOW, direction="in", peer=PEER, local_name=name, state=TransferState.DONE,
                                  size=len(body), sha256=digest, record_count=0, blob_id=blob_id, now=now,
                                  source_removed=True)
        stored.append((f"{label}/{name}", digest, len(body), row.id))
    try:
        run.result = reconcile(airis_zip=data[0], key_file=data[1], register=data[2], lg_code=lg_code, at=now,
                               airis_label=zip_name, key_label=key_name, register_label=register_name)
    except AirisInputError as error:
        run.error = error
        from kei_gateway.adapters.spool import QUARANTINE_DIR_MODE, ensure_directory, write_errors_file

        ensure_directory(paths.quarantine, QUARANTINE_DIR_MODE)
        stem = f"{lg_code}_{FLOW}_{now.astimezone(JST).strftime('%Y%m%d%H%M%S')}"
        run.errors_file = write_errors_file(paths.quarantine, stem, [
            f"{error.label}: {problem}" for problem in error.problems] + [
            f"{error.total} problem(s); inputs {zip_name}, {key_name}, {register_name} were erased from the outboxes "
            "(encrypted copies kept until retention.payloads): correct them and put all three there again"])
    del data
    if run.result is not None:
        result = run.result
        outputs = [b"".join(result.dat_chunks()), b"".join(result.csv_chunks()), result.text().encode("utf-8")]
        names = output_names(result.stem)
        for name, body in zip(names, outputs):
            blob_id = f"in-{uuid.uuid4().hex}"
            store.write(blob_id, [body])
            ledger.add_transfer(flow=FLOW, direction="in", peer=PEER, local_name=name, state=TransferState.DONE,
                                size=len(body), sha256=hashlib.sha256(body).hexdigest(),
                                record_count=len(result.rows) if name.endswith(".dat") else 0, blob_id=blob_id,
                                now=now)
        from kei_gateway.adapters.spool import SHARED_DIR_MODE, ensure_directory

        ensure_directory(paths.inbox, SHARED_DIR_MODE)
        run.names = _write_all(paths.inbox, names, outputs)
    for directory, _, name in sources:
        os.unlink(os.path.join(directory, name))
    for directory in {paths.airis_outbox, paths.register_outbox}:
        fsync_directory(directory)
    note_erased(stored, now)
    return run


def _write_all(directory: str, names: Sequence[str], bodies: Sequence[bytes]) -> tuple[str, ...]:
    staged: list[str] = []
    try:
        for name, body in zip(names, bodies):
            path = os.path.join(directory, f".{name}.part")
            write_durable(path, [body])
            staged.append(path)
        for name, path in zip(names, staged):
            publish(path, os.path.join(directory, name))
    except BaseException:
        for path in staged:
            if os.path.exists(path):
                os.unlink(path)
        raise
    return tuple(names)
