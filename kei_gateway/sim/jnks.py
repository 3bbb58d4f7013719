"""The 軽JNKS personality: an independent check of uploads and the 受付結果 it writes.

**Independent on purpose.** The check below is a second opinion on SPEC §2.1 and
deliberately does not import :mod:`kei_gateway.layouts`: a bug in the gateway's
layout engine must not be mirrored by the peer that is supposed to catch it.
It is a small fixed-offset reading of the 70-byte record — record kind, digits,
the lg_code check digit, code lists, real dates — enough to accept every valid
file and reject clearly broken records, not a full re-implementation (it does
not check the JIS X 0208 repertoire, for instance).

The result file (§2.2, 100 bytes per record) has one record per uploaded
record: ``0`` 受付 or ``9`` エラー with the first problem found. For tests,
:class:`JnksOptions` rejects chosen lines (``reject_lines``) or a share of them
(``reject_rate``, deterministic per file name and ``seed``) with ``E900``.
"""

from __future__ import annotations

import datetime
import hashlib
import os
import random
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from twisted.internet.defer import Deferred, fail
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger

from kei_gateway.sim.dav import DavPath, DavStore
from kei_gateway.sim.faults import Faults
from kei_gateway.sim.server import RunningSim, start_simulator
from kei_gateway.sim.tls import ServerIdentity

from kei_gateway.core.jst import today_in_jst

__all__ = [
    "RECORD_BYTES", "RESULT_BYTES", "UPLOAD", "RESULTS", "ERROR_MESSAGES", "SIMULATED_REJECT",
    "Problem", "RecordOutcome", "JnksOptions", "Receipt", "JnksPersonality",
    "check_record", "check_file", "render_result_record", "render_result_file", "lg_code_ok", "jst_today",
    "JNKS_COLLECTIONS", "ReactorThreads", "start_jnks_simulator",
]

RECORD_BYTES = 70
RESULT_BYTES = 100
UPLOAD = "upload"
RESULTS = "results"
SIMULATED_REJECT = "E900"

ERROR_MESSAGES: dict[str, str] = {
    "E001": "レコード長が不正です",
    "E002": "文字コードが不正です",
    "E101": "納税情報登録区分が不正です",
    "E102": "標板番号（運輸支局等名）が不正です",
    "E103": "分類番号が不正です",
    "E104": "かな文字が不正です",
    "E105": "一連番号が不正です",
    "E106": "車台番号が不正です",
    "E107": "全国地方公共団体コードが不正です",
    "E108": "車種コードが不正です",
    "E109": "課税年度が不正です",
    "E110": "納付状況コードが不正です",
    "E111": "有効年月日が不正です",
    "E112": "抹消フラグが不正です",
    "E113": "更新年月日が不正です",
    "E114": "有効年月日が更新年月日より前です",
    "E115": "車台番号と課税年度が重複しています",
    "E116": "全国地方公共団体コードが登録団体と異なります",
    SIMULATED_REJECT: "シミュレータによる受付拒否です（試験用）",
}
"""Error code → エラー内容 (full-width, at most 33 characters)."""

_RECORD_KINDS = frozenset("123")
_VEHICLE_TYPES = frozenset({"11", "21", "31", "32", "33", "34"})
_PAYMENT_STATUSES = frozenset("12345")
_PLATE_KANA_LETTERS = frozenset("ＡＢＥＨＫＭＴＹ")
_OFFICE_CHAR = re.compile(r"[\u4e00-\u9fff\u3005\u3041-\u3096\u30a1-\u30f6\u30fc]")
_PLATE_CLASS = re.compile(r"([0-9A-Z]{1,3}) *")
_CHASSIS = re.compile(r"([A-Z0-9-]{1,20}) *")
_IDEOGRAPHIC_SPACE = "\u3000"


@dataclass(frozen=True)
class Problem:
    code: str

    @property
    def message(self) -> str:
        return ERROR_MESSAGES[self.code]


@dataclass(frozen=True)
class RecordOutcome:
    """One uploaded record's verdict: ``problems`` empty means 受付."""

    line_no: int
    chassis_no: str
    problems: tuple[Problem, ...] = ()

    @property
    def accepted(self) -> bool:
        return not self.problems


def lg_code_ok(code: str) -> bool:
    """SPEC §2.5: six digits, check = (11 − Σ dᵢ·(6,5,4,3,2) mod 11) mod 10."""
    if len(code) != 6 or not code.isascii() or not code.isdigit():
        return False
    total = sum(int(d) * w for d, w in zip(code[:5], (6, 5, 4, 3, 2)))
    return (11 - total % 11) % 10 == int(code[5])


def _digits(text: str, width: int) -> bool:
    return len(text) == width and text.isascii() and text.isdigit()


def _date(text: str) -> datetime.date | None:
    if not _digits(text, 8):
        return None
    try:
        return datetime.date(int(text[:4]), int(text[4:6]), int(text[6:]))
    except ValueError:
        return None


def _full_width(raw: bytes) -> str | None:
    """A K field's text if every character is two bytes in CP932, else None."""
    try:
        text = raw.decode("cp932")
    except UnicodeDecodeError:
        return None
    return text if len(text) * 2 == len(raw) else None


def _chassis_of(line: bytes) -> str:
    """The chassis number of a record for the result, or blank when unreadable."""
    m = _CHASSIS.fullmatch(line[18:38].decode("ascii", "replace")) if len(line) >= 38 else None
    return m.group(1) if m else ""


def check_record(line: bytes, today: datetime.date, lg_code: str | None = None) -> tuple[Problem, ...]:
    """Every problem of one record *line* (68 bytes, without its CRLF), in field order."""
    if len(line) != RECORD_BYTES - 2:
        return (Problem("E001"),)
    try:
        line.decode("cp932")
    except UnicodeDecodeError:
        return (Problem("E002"),)
    found: list[str] = []
    ascii_part = line[9:12] + line[14:68]
    if not ascii_part.isascii() or not line[:1].isascii():
        return (Problem("E002"),)
    text = {k: line[a:b].decode("ascii") for k, (a, b) in {
        "record_kind": (0, 1), "plate_class": (9, 12), "plate_serial": (14, 18), "chassis_no": (18, 38),
        "lg_code": (38, 44), "vehicle_type": (44, 46), "tax_year": (46, 50), "payment_status": (50, 51),
        "valid_until": (51, 59), "deregistered": (59, 60), "updated_on": (60, 68)}.items()}
    if text["record_kind"] not in _RECORD_KINDS:
        found.append("E101")
    office = _full_width(line[1:9])
    office_chars = office.rstrip(_IDEOGRAPHIC_SPACE) if office is not None else ""
    if not office_chars or not all(_OFFICE_CHAR.fullmatch(c) for c in office_chars):
        found.append("E102")
    plate_class = _PLATE_CLASS.fullmatch(text["plate_class"])
    if plate_class is None or plate_class.group(1).isalpha():
        found.append("E103")
    kana = _full_width(line[12:14])
    if kana is None or not ("\u3041" <= kana <= "\u3096" or kana in _PLATE_KANA_LETTERS):
        found.append("E104")
    if not _digits(text["plate_serial"], 4) or text["plate_serial"] == "0000":
        found.append("E105")
    if _CHASSIS.fullmatch(text["chassis_no"]) is None:
        found.append("E106")
    if not lg_code_ok(text["lg_code"]):
        found.append("E107")
    elif lg_code is not None and text["lg_code"] != lg_code:
        found.append("E116")
    if text["vehicle_type"] not in _VEHICLE_TYPES:
        found.append("E108")
    if not _digits(text["tax_year"], 4) or not 2000 <= int(text["tax_year"]) <= 2099:
        found.append("E109")
    if text["payment_status"] not in _PAYMENT_STATUSES:
        found.append("E110")
    valid_until = _date(text["valid_until"])
    if valid_until is None:
        found.append("E111")
    if text["deregistered"] not in ("0", "1"):
        found.append("E112")
    updated_on = _date(text["updated_on"])
    if updated_on is None or updated_on > today:
        found.append("E113")
    if valid_until is not None and updated_on is not None and valid_until < updated_on:
        found.append("E114")
    return tuple(Problem(code) for code in found)


@dataclass(frozen=True)
class JnksOptions:
    """How the simulated JNKS judges uploads."""

    lg_code: str | None = None
    """If set, every record's 全国地方公共団体コード must equal it (E116)."""
    reject_lines: frozenset[int] = frozenset()
    """Line numbers (1-based) rejected with E900 even when valid."""
    reject_rate: float = 0.0
    """Share of otherwise valid records rejected with E900 (deterministic per file name and seed)."""
    seed: int = 0


def check_file(data: bytes, today: datetime.date, options: JnksOptions = JnksOptions(),
               name: str = "") -> list[RecordOutcome]:
    """One outcome per record of an uploaded file (records are split at CRLF)."""
    lines = data.split(b"\r\n")
    if lines and lines[-1] == b"":
        lines.pop()  # the CRLF of the last record
    unterminated = not data.endswith(b"\r\n")
    rng = random.Random(f"{options.seed}/{name}")
    seen: set[tuple[str, str]] = set()
    outcomes: list[RecordOutcome] = []
    for number, line in enumerate(lines, start=1):
        problems = check_record(line, today, options.lg_code)
        if number == len(lines) and unterminated and not problems:
            problems = (Problem("E001"),)
        chassis = _chassis_of(line)
        if not problems:
            key = (chassis, line[46:50].decode("ascii"))
            if key in seen:
                problems = (Problem("E115"),)
            seen.add(key)
        chance = rng.random()
        if not problems and (number in options.reject_lines or chance < options.reject_rate):
            problems = (Problem(SIMULATED_REJECT),)
        outcomes.append(RecordOutcome(number, chassis, problems))
    return outcomes


def render_result_record(outcome: RecordOutcome) -> bytes:
    """SPEC §2.2: 100 CP932 bytes, CRLF included."""
    if outcome.line_no < 0 or outcome.line_no > 9_999_999:
        raise ValueError("line number does not fit 7 digits")
    chassis = outcome.chassis_no if _CHASSIS.fullmatch(outcome.chassis_no) else ""
    if outcome.accepted:
        result, code, message = "0", "", ""
    else:
        first = outcome.problems[0]
        result, code, message = "9", first.code, first.message[:33]
    data = (result + f"{outcome.line_no:07d}" + code.ljust(4) + chassis.ljust(20)).encode("ascii")
    data += message.ljust(33, _IDEOGRAPHIC_SPACE).encode("cp932") + b"\r\n"
    if len(data) != RESULT_BYTES:
        raise ValueError(f"result record is {len(data)} bytes, not {RESULT_BYTES} (message not full-width?)")
    return data


def render_result_file(outcomes: Sequence[RecordOutcome]) -> bytes:
    return b"".join(render_result_record(o) for o in outcomes)


def jst_today(clock: IReactorTime) -> datetime.date:
    return today_in_jst(clock.seconds())


@dataclass(frozen=True)
class Receipt:
    """What the simulator did with one upload (for tests and the demo; no record contents)."""

    name: str
    result_name: str
    sha256: str
    records: int
    accepted: int
    rejected: int


@dataclass
class JnksPersonality:
    """Turns each file that appears under ``/upload/<name>`` (not ``*.part``) into ``/results/<name>.result``.

    *blocking* runs the reading, checking and writing off the reactor
    (``kei_gateway.testing.SynchronousBlocking`` runs it at once in unit tests).
    """

    store: DavStore
    clock: IReactorTime
    blocking: Any
    options: JnksOptions = field(default_factory=JnksOptions)
    receipts: list[Receipt] = field(default_factory=list)
    log: Logger = field(default_factory=lambda: Logger(namespace="kei_gateway.sim.jnks"))

    def on_stored(self, where: DavPath) -> None:
        if where.collection != UPLOAD or where.name is None or where.name.endswith(".part"):
            return
        name = where.name
        d: Deferred[Receipt] = self.blocking.run(self.process, name, jst_today(self.clock))
        d.addCallback(self._done)
        d.addErrback(lambda failure: self.log.failure("jnks: processing {name} failed", failure, name=name))

    def _done(self, receipt: Receipt) -> Receipt:
        self.receipts.append(receipt)
        self.log.info("jnks: {name} checked: {records} records, {accepted} accepted, {rejected} rejected; "
                      "wrote /results/{result_name}", name=receipt.name, records=receipt.records,
                      accepted=receipt.accepted, rejected=receipt.rejected, result_name=receipt.result_name,
                      sha256=receipt.sha256)
        return receipt

    def process(self, name: str, today: datetime.date) -> Receipt:
        """Check ``/upload/<name>`` and write its result file (blocking)."""
        data = self.store.path_of(DavPath(UPLOAD, name)).read_bytes()
        outcomes = check_file(data, today, self.options, name)
        result_name = f"{name}.result"
        self.store.write_bytes(DavPath(RESULTS, result_name), render_result_file(outcomes))
        accepted = sum(1 for o in outcomes if o.accepted)
        return Receipt(name, result_name, hashlib.sha256(data).hexdigest(), len(outcomes), accepted,
                       len(outcomes) - accepted)


JNKS_COLLECTIONS = (UPLOAD, RESULTS)


class ReactorThreads:
    """Blocking work on the reactor's thread pool (the simulator's default door)."""

    def __init__(self, reactor: Any) -> None:
        self._reactor = reactor

    def run(self, f: Any, *args: Any, **kwargs: Any) -> Deferred[Any]:
        from twisted.internet.threads import deferToThreadPool

        return deferToThreadPool(self._reactor, self._reactor.getThreadPool(), f, *args, **kwargs)


def start_jnks_simulator(reactor: Any, listen: str | tuple[str, int], root: str | os.PathLike[str],
                         server_cert: str | os.PathLike[str], server_key: str | os.PathLike[str],
                         client_ca: str | os.PathLike[str], faults: Faults | None = None, *,
                         options: JnksOptions | None = None, blocking: Any = None) -> Deferred[RunningSim]:
    """The JNKS simulator on *listen* (``"127.0.0.1:0"`` picks a free port: see ``RunningSim.port``).

    *server_cert* is a PEM chain (leaf first), *server_key* its key, *client_ca*
    the PEM CA(s) a client certificate must chain to. Uploads go to
    ``/upload/<name>.part`` then MOVE to ``/upload/<name>``; results appear as
    ``/results/<name>.result``. ``RunningSim.personality`` is the
    :class:`JnksPersonality` (``.receipts``).
    """
    try:
        identity = ServerIdentity.from_files(os.fspath(server_cert), os.fspath(server_key))
        with open(client_ca, "rb") as f:
            client_ca_pem = f.read()
    except OSError:
        return fail()
    runner = blocking if blocking is not None else ReactorThreads(reactor)

    def personality(store: DavStore) -> JnksPersonality:
        return JnksPersonality(store, reactor, runner, options or JnksOptions())

    return start_simulator(reactor, "jnks", listen, root, identity, client_ca_pem, JNKS_COLLECTIONS, faults,
                           personality)
