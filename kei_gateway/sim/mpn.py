"""The MPN 収納機関共同利用センター personality: slips in, payment results (速報, 確報, 速報取消) out.

The gateway uploads 納付書情報 files (SPEC §2.3) to ``/slips/`` (PUT ``.part`` +
MOVE). When a file arrives under its final name, the simulator checks it
independently and turns a share of its slips into 納付結果情報 (§2.4):

1. **速報** (収納区分 ``1``) first, in batches of ``batch_size`` records, one
   file per batch, ``batch_interval`` seconds apart. Each batch is *pushed*
   (``PUT {push_url}/{name}`` with the simulator's client certificate), left in
   ``/results/`` for the gateway to *pull*, or *both* — the same file both ways,
   as a real centre may do; the gateway must relay it once.
2. ``confirm_after`` seconds after a batch was delivered, its follow-ups: a
   **確報** (``2``, same identity items, amounts possibly different when
   ``mismatch_share`` picks it) file, and a **速報取消** (``3``) file for the
   results ``cancel_share`` picked, left in ``/results/`` (and pushed too with
   ``push_confirmations``). ``missing_share`` of the 速報 never get either.
3. ``duplicate_share`` of the 速報 are repeated in the next batch file (an extra
   batch after the last one if needed); ``repeat_push_share`` of the pushed
   files are PUT a second time after a successful push, as if the response had
   been lost (the gateway answers ``204``).

**A push that keeps failing loses nothing:** after the client's bounded retries
the file is written to ``/results/`` (delivery ``push-failed``), where the
gateway pulls it like any other.

Everything is deterministic from ``seed`` and the slips file name (channels,
pay methods, times, shares). For tests and the demo the personality keeps
:attr:`MpnPersonality.produced` (one :class:`Produced` per result file: name,
kind, record count, how delivered), :attr:`MpnPersonality.pushes` (every push
outcome) and :attr:`MpnPersonality.truth` (:class:`GroundTruth`: the distinct
result identities the gateway must relay exactly once, and which 速報 are
confirmed, cancelled, mismatched or left unconfirmed).

**Independent on purpose.** Like :mod:`kei_gateway.sim.jnks`, the slip check is
a fixed-offset reading of §2.3's 158-byte record that deliberately does not
import :mod:`kei_gateway.layouts`, so a bug in the gateway's layout engine is
not mirrored by the peer. It does not check the JIS X 0208 repertoire (a
CP932 extension character such as ① passes). A file with any broken record gets no results at all
(the centre refuses it; the count is in :attr:`MpnPersonality.slips`).
"""

from __future__ import annotations

import datetime
import functools
import hashlib
import json
import os
import random
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

from twisted.internet import defer
from twisted.internet.defer import Deferred, fail
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger

from kei_gateway.sim.dav import DavPath, DavStore
from kei_gateway.sim.faults import Faults
from kei_gateway.sim.jnks import ReactorThreads
from kei_gateway.sim.push_client import PushClient, PushOutcome, Pusher
from kei_gateway.sim.server import RunningSim, start_simulator
from kei_gateway.sim.tls import ServerIdentity

__all__ = [
    "SLIP_BYTES", "RESULT_BYTES", "SLIPS", "RESULTS", "MPN_COLLECTIONS",
    "PRELIMINARY", "CONFIRMED", "CANCELLED", "PUSH", "PULL", "BOTH", "PUSH_FAILED",
    "CHANNEL_PAY_METHODS", "BANK_CHANNELS", "CVS_CHANNEL",
    "MpnOptions", "SlipCheck", "PaymentResult", "Identity", "ResultFile", "PlannedBatch", "Plan", "GroundTruth",
    "Produced", "SlipsReceipt", "MpnPersonality",
    "check_slip", "check_slips", "gs1_check_digit", "cvs_code", "plan_results", "start_mpn_simulator",
]

SLIP_BYTES = 158
RESULT_BYTES = 258
SLIPS = "slips"
RESULTS = "results"
MPN_COLLECTIONS = (SLIPS, RESULTS)

PRELIMINARY, CONFIRMED, CANCELLED = "1", "2", "3"
"""収納区分: 速報, 確報, 速報取消."""
KIND_TAGS = {PRELIMINARY: "sokuho", CONFIRMED: "kakuho", CANCELLED: "torikeshi"}

PUSH, PULL, BOTH, PUSH_FAILED = "push", "pull", "both", "push-failed"
"""How a result file reached the gateway: pushed, left in ``/results/``, both, or pushed in vain then left."""

TAX_ITEMS = frozenset({"01", "02", "03", "99"})
KEI_CAR_TAX_ITEM = "02"
CHANNEL_PAY_METHODS: dict[str, tuple[str, ...]] = {
    "01": ("01",),          # 金融機関窓口: 現金
    "02": ("01", "02"),     # ATM（ペイジー）: 現金, 口座引落
    "03": ("02",),          # インターネットバンキング: 口座引落
    "04": ("02",),          # モバイルバンキング: 口座引落
    "05": ("01",),          # コンビニエンスストア: 現金
    "06": ("05", "02"),     # モバイルレジ: 電子決済（その他）, 口座引落
    "07": ("03",),          # モバイルレジクレジット: クレジットカード
    "08": ("04",),          # 電子マネー
    "09": ("03", "05"),     # 地方税お支払サイト: クレジットカード, 電子決済（その他）
}
"""チャネル区分 → the 支払方法 it plausibly uses; together they cover both code lists of §2.4."""
BANK_CHANNELS = frozenset({"01", "02", "03", "04"})
CVS_CHANNEL = "05"
JST = datetime.timezone(datetime.timedelta(hours=9), "JST")
IDEOGRAPHIC_SPACE = "\u3000"
LATEST_RECEIPT_SECONDS = 6 * 3600
"""A 速報's 収納日時 lies up to this long before the slips file arrived."""

Identity = tuple[str, str, str, str, str, str, str]
"""(tax_item, slip_no, confirm_no, pay_class, channel, received_at, result_kind): SPEC §2.4's result identity."""


def _share(name: str, value: float) -> None:
    if not 0.0 <= value <= 1.0:
        raise ValueError(f"{name} must be a share between 0 and 1, not {value!r}")


@dataclass(frozen=True)
class MpnOptions:
    """How the simulated centre answers slips; every share is between 0 and 1."""

    seed: int = 0
    results_share: float = 1.0
    """Share of the valid slips that get paid (a 速報)."""
    push_share: float = 0.0
    """Share of 速報 batches pushed only."""
    both_share: float = 0.0
    """Share of 速報 batches pushed *and* left in ``/results/`` (the rest are left for pull only)."""
    cancel_share: float = 0.0
    """Share of 速報 followed by a 速報取消 instead of a 確報."""
    mismatch_share: float = 0.0
    """Share of 速報 whose 確報 has a different amount."""
    missing_share: float = 0.0
    """Share of 速報 never followed by a 確報 (nor a 取消)."""
    duplicate_share: float = 0.0
    """Share of 速報 repeated in the next batch file."""
    repeat_push_share: float = 0.0
    """Share of pushed files PUT a second time after a successful push (the gateway should answer 204)."""
    batch_size: int = 100
    """速報 records per file."""
    batch_interval: float = 0.0
    """Seconds between one 速報 batch's delivery and the next."""
    confirm_after: float = 0.0
    """Seconds after a 速報 batch is delivered until its 確報/取消 files appear (0: right after)."""
    push_confirmations: bool = False
    """Push the 確報/取消 files too (they are always left in ``/results/``)."""
    push_url: str | None = None
    """Base URL pushed to: ``PUT {push_url}/{name}`` (e.g. ``https://gw:8443/push/mpn-results``)."""
    push_cert: str | None = None
    """The simulator's client certificate for pushing (PEM; leaf first)."""
    push_key: str | None = None
    """Its private key (PEM)."""
    push_ca: str | None = None
    """CA(s) the gateway's server certificate must chain to (PEM)."""
    push_attempts: int = 5
    push_first_delay: float = 1.0
    push_max_delay: float = 30.0

    def __post_init__(self) -> None:
        for name in ("results_share", "push_share", "both_share", "cancel_share", "mismatch_share",
                     "missing_share", "duplicate_share", "repeat_push_share"):
            _share(name, getattr(self, name))
        if self.push_share + self.both_share > 1.0 + 1e-9:
            raise ValueError("push_share + both_share must not exceed 1 (the rest is pull only)")
        if self.cancel_share + self.mismatch_share + self.missing_share > 1.0 + 1e-9:
            raise ValueError("cancel_share + mismatch_share + missing_share must not exceed 1")
        if self.batch_size < 1:
            raise ValueError("batch_size must be at least 1")
        if self.batch_interval < 0 or self.confirm_after < 0:
            raise ValueError("batch_interval and confirm_after must not be negative")
        if self.push_attempts < 1:
            raise ValueError("push_attempts must be at least 1")
        if self.pushes and not self.push_url:
            raise ValueError("push_share, both_share, repeat_push_share and push_confirmations need push_url")
        if self.push_url and not (self.push_cert and self.push_key and self.push_ca):
            raise ValueError("push_url needs push_cert, push_key and push_ca")

    @property
    def pushes(self) -> bool:
        """Whether anything is ever pushed."""
        return bool(self.push_share or self.both_share or self.repeat_push_share or self.push_confirmations)


# --------------------------------------------------------------------------- the independent slip check


@dataclass(frozen=True)
class SlipCheck:
    """One slip's verdict: ``problems`` (field keys, or ``length``/``encoding``/``duplicate``) empty if valid."""

    line_no: int
    problems: tuple[str, ...] = ()

    @property
    def valid(self) -> bool:
        return not self.problems


def _digits(raw: bytes) -> bool:
    return raw.isdigit()  # bytes.isdigit is ASCII digits only


def _date_ok(raw: bytes) -> bool:
    if len(raw) != 8 or not _digits(raw):
        return False
    try:
        datetime.date(int(raw[:4]), int(raw[4:6]), int(raw[6:]))
    except ValueError:
        return False
    return True


def check_slip(line: bytes) -> tuple[str, ...]:
    """Every problem of one §2.3 record *line* (156 bytes, without its CRLF), in field order."""
    if len(line) != SLIP_BYTES - 2:
        return ("length",)
    try:
        line.decode("cp932")
    except UnicodeDecodeError:
        return ("encoding",)
    if not (line[:32] + line[112:]).isascii():
        return ("encoding",)
    found: list[str] = []
    tax_item = line[0:2].decode()
    if tax_item not in TAX_ITEMS:
        found.append("tax_item")
    if not _digits(line[2:22]) or line[2:22].strip(b"0") == b"":
        found.append("slip_no")
    if not _digits(line[22:28]):
        found.append("confirm_no")
    if not _digits(line[28:32]):
        found.append("pay_class")
    try:
        name = line[32:112].decode("cp932")
    except UnicodeDecodeError:
        name = ""
    if (len(name) * 2 != 80 or not name.strip(IDEOGRAPHIC_SPACE) or name.startswith(IDEOGRAPHIC_SPACE)
            or any("\ue000" <= c <= "\uf8ff" for c in name)):  # blank, not left-aligned, user-defined (外字)
        found.append("payer_name")
    amounts = [line[a:a + 10] for a in (112, 122, 132)]
    for key, raw in zip(("amount_billed", "amount_tax", "amount_late"), amounts):
        if not _digits(raw):
            found.append(key)
    if all(_digits(raw) for raw in amounts) and int(amounts[0]) != int(amounts[1]) + int(amounts[2]):
        found.append("amount_billed")
    if not _date_ok(line[142:150]):
        found.append("due_date")
    if not _digits(line[150:154]) or not 2000 <= int(line[150:154]) <= 2099:
        found.append("fiscal_year")
    installment = line[154:156]
    if not _digits(installment) or not 1 <= int(installment) <= 12 or (
            tax_item == KEI_CAR_TAX_ITEM and installment != b"01"):
        found.append("installment")
    return tuple(found)


def check_slips(data: bytes) -> list[SlipCheck]:
    """One verdict per record of a slips file (split at CRLF); (slip_no, confirm_no) must be unique."""
    lines = data.split(b"\r\n")
    if lines and lines[-1] == b"":
        lines.pop()
    unterminated = not data.endswith(b"\r\n")
    seen: set[bytes] = set()
    checks: list[SlipCheck] = []
    for number, line in enumerate(lines, start=1):
        problems = check_slip(line)
        if number == len(lines) and unterminated and not problems:
            problems = ("length",)
        if not problems:
            key = line[2:28]
            if key in seen:
                problems = ("duplicate",)
            seen.add(key)
        checks.append(SlipCheck(number, problems))
    return checks


# --------------------------------------------------------------------------- result records


def gs1_check_digit(digits: str) -> int:
    """SPEC §2.5 GS1-128: from the right, check at position 1; A = Σ even positions, B = Σ odd ones (no check)."""
    with_check = digits + "0"
    reversed_digits = [int(d) for d in reversed(with_check)]
    a = sum(reversed_digits[1::2])      # positions 2, 4, ...
    b = sum(reversed_digits[2::2])      # positions 3, 5, ... (position 1 is the check digit)
    return (10 - (3 * a + b) % 10) % 10


def cvs_code(rng: random.Random) -> str:
    """A dummy 44-digit コンビニ収納連携情報コード: ``91`` + 41 random digits + check digit."""
    body = "91" + "".join(str(rng.randrange(10)) for _ in range(41))
    return body + str(gs1_check_digit(body))


@dataclass(frozen=True)
class PaymentResult:
    """One §2.4 record: the slip's 156 bytes unchanged, then the payment items."""

    slip: bytes
    paid_tax: int
    paid_late: int
    pay_method: str
    received_at: str
    """``YYYYMMDDhhmmss``, JST."""
    result_kind: str
    channel: str
    bank_code: str
    branch_code: str
    cvs_code: str

    @property
    def identity(self) -> Identity:
        s = self.slip
        return (s[0:2].decode(), s[2:22].decode(), s[22:28].decode(), s[28:32].decode(), self.channel,
                self.received_at, self.result_kind)

    def render(self) -> bytes:
        """258 CP932 bytes, CRLF included (ValueError if a value does not fit)."""
        paid = self.paid_tax + self.paid_late
        tail = (f"{paid:010d}{self.paid_tax:010d}{self.paid_late:010d}{self.pay_method}{self.received_at}"
                f"{self.result_kind}{self.channel}{self.bank_code}{self.branch_code}{self.cvs_code:<44}\r\n")
        data = self.slip + tail.encode("ascii")
        if len(self.slip) != SLIP_BYTES - 2 or len(data) != RESULT_BYTES:
            raise ValueError(f"a result record must be {RESULT_BYTES} bytes, this one is {len(data)}")
        return data


@dataclass(frozen=True)
class ResultFile:
    """One result file the simulator will deliver."""

    name: str
    kind: str
    """收納区分 of every record in it (``1``, ``2`` or ``3``)."""
    records: tuple[PaymentResult, ...]
    delivery: str
    """:data:`PUSH`, :data:`PULL` or :data:`BOTH`."""
    repeat_push: bool = False
    """PUT it once more after a successful push."""

    def render(self) -> bytes:
        return b"".join(r.render() for r in self.records)


@dataclass(frozen=True)
class PlannedBatch:
    """A 速報 file and the 確報/取消 files that follow it ``confirm_after`` seconds after its delivery."""

    preliminary: ResultFile
    followups: tuple[ResultFile, ...] = ()


@dataclass(frozen=True)
class GroundTruth:
    """What the gateway must end up with: every distinct result once, and how the 速報 reconcile.

    ``confirmed``/``cancelled``/``mismatched``/``unconfirmed`` hold 速報 identities
    (``result_kind`` ``1``); ``mismatched`` ones are also in ``confirmed``.
    """

    results: frozenset[Identity] = frozenset()
    confirmed: frozenset[Identity] = frozenset()
    cancelled: frozenset[Identity] = frozenset()
    mismatched: frozenset[Identity] = frozenset()
    unconfirmed: frozenset[Identity] = frozenset()
    duplicates: int = 0
    """速報 records repeated in a later file (not new results)."""

    def merged(self, other: GroundTruth) -> GroundTruth:
        return GroundTruth(self.results | other.results, self.confirmed | other.confirmed,
                           self.cancelled | other.cancelled, self.mismatched | other.mismatched,
                           self.unconfirmed | other.unconfirmed, self.duplicates + other.duplicates)


@dataclass(frozen=True)
class Plan:
    """Everything one slips file turns into, in delivery order."""

    slips_name: str
    batches: tuple[PlannedBatch, ...]
    truth: GroundTruth


def _delivery(rng: random.Random, options: MpnOptions) -> str:
    draw = rng.random()
    if draw < options.push_share:
        return PUSH
    if draw < options.push_share + options.both_share:
        return BOTH
    return PULL


def _result_name(slips_name: str, kind: str, batch: int) -> str:
    return f"{slips_name[:100]}.{KIND_TAGS[kind]}-{batch:03d}"


def _mismatched(result: PaymentResult, rng: random.Random) -> PaymentResult:
    """The same result with another 支払本税金額 (up or down, never negative, still 10 digits)."""
    delta = rng.randint(1, 1000)
    paid_tax = result.paid_tax - delta if result.paid_tax >= delta and rng.random() < 0.5 else result.paid_tax + delta
    if paid_tax + result.paid_late > 9_999_999_999:
        paid_tax = result.paid_tax - 1 if result.paid_tax > 0 else 0
    if paid_tax == result.paid_tax:  # only when both amounts are at the limits; change the late part instead
        return replace(result, paid_late=result.paid_late - 1 if result.paid_late else 1)
    return replace(result, paid_tax=paid_tax)


def plan_results(slips: Sequence[bytes], name: str, options: MpnOptions, now: float) -> Plan:
    """The result files for the valid 156-byte *slips* of file *name*, received at Unix time *now*.

    Pure and deterministic: the same slips, name, options and *now* give the same plan. How each
    batch is delivered (push, pull, both, repeated push) comes from a stream of its own, so it
    depends on the seed, the name and the batch's number only, never on the slips' contents (the
    amounts decide how many draws a mismatch takes, and dummy slips carry today's date).
    """
    rng = random.Random(f"{options.seed}/{name}")
    delivery_rng = random.Random(f"{options.seed}/{name}/delivery")
    arrived = datetime.datetime.fromtimestamp(now, JST)
    channels = sorted(CHANNEL_PAY_METHODS)
    paid: list[PaymentResult] = []
    for slip in slips:
        if rng.random() >= options.results_share:
            continue
        channel = rng.choice(channels)
        pay_method = rng.choice(CHANNEL_PAY_METHODS[channel])
        when = arrived - datetime.timedelta(seconds=rng.randint(0, LATEST_RECEIPT_SECONDS))
        bank = channel in BANK_CHANNELS
        paid.append(PaymentResult(
            slip=slip, paid_tax=int(slip[122:132]), paid_late=int(slip[132:142]), pay_method=pay_method,
            received_at=when.strftime("%Y%m%d%H%M%S"), result_kind=PRELIMINARY, channel=channel,
            bank_code=f"{rng.randint(1, 9999):04d}" if bank else "0000",
            branch_code=f"{rng.randint(1, 999):03d}" if bank else "000",
            cvs_code=cvs_code(rng) if channel == CVS_CHANNEL else ""))
    chunks = [paid[i:i + options.batch_size] for i in range(0, len(paid), options.batch_size)]
    confirmed: set[Identity] = set()
    cancelled: set[Identity] = set()
    mismatched: set[Identity] = set()
    unconfirmed: set[Identity] = set()
    carried: list[PaymentResult] = []  # duplicates repeated in the next batch
    duplicates = 0
    batches: list[PlannedBatch] = []
    number = 0
    while chunks or carried:
        chunk = chunks.pop(0) if chunks else []
        number += 1
        records = tuple(carried) + tuple(chunk)
        duplicates += len(carried)
        carried = []
        confirmations: list[PaymentResult] = []
        cancellations: list[PaymentResult] = []
        for result in chunk:
            fate = rng.random()
            if fate < options.cancel_share:
                cancellations.append(replace(result, result_kind=CANCELLED))
                cancelled.add(result.identity)
            elif fate < options.cancel_share + options.mismatch_share:
                confirmations.append(_mismatched(replace(result, result_kind=CONFIRMED), rng))
                confirmed.add(result.identity)
                mismatched.add(result.identity)
            elif fate < options.cancel_share + options.mismatch_share + options.missing_share:
                unconfirmed.add(result.identity)
            else:
                confirmations.append(replace(result, result_kind=CONFIRMED))
                confirmed.add(result.identity)
            if rng.random() < options.duplicate_share:
                carried.append(result)
        delivery = _delivery(delivery_rng, options)
        repeat = delivery != PULL and delivery_rng.random() < options.repeat_push_share
        followup_delivery = BOTH if options.push_confirmations else PULL
        followups = tuple(
            ResultFile(_result_name(name, kind, number), kind, tuple(group), followup_delivery)
            for kind, group in ((CONFIRMED, confirmations), (CANCELLED, cancellations)) if group)
        batches.append(PlannedBatch(
            ResultFile(_result_name(name, PRELIMINARY, number), PRELIMINARY, records, delivery, repeat), followups))
    every = {r.identity for b in batches for f in (b.preliminary, *b.followups) for r in f.records}
    truth = GroundTruth(frozenset(every), frozenset(confirmed), frozenset(cancelled), frozenset(mismatched),
                        frozenset(unconfirmed), duplicates)
    return Plan(name, tuple(batches), truth)


# --------------------------------------------------------------------------- the personality


@dataclass(frozen=True)
class Produced:
    """One delivered result file (no record contents): name, 収納区分, records, how it reached the gateway."""

    name: str
    kind: str
    records: int
    delivery: str
    """:data:`PUSH`, :data:`PULL`, :data:`BOTH` or :data:`PUSH_FAILED` (pushed in vain, left in ``/results/``)."""
    sha256: str


@dataclass(frozen=True)
class SlipsReceipt:
    """What the simulator made of one slips file."""

    name: str
    sha256: str
    records: int
    rejected: int
    """Records failing the check; a file with any is refused whole (no results)."""
    results: int
    """速報 planned (duplicates not counted)."""


@dataclass
class MpnPersonality:
    """Turns each file stored under ``/slips/<name>`` (not ``*.part``) into result files; see the module docstring.

    *blocking* runs the reading, checking and writing off the reactor
    (``kei_gateway.testing.SynchronousBlocking`` in unit tests); *pusher* is the
    push client (None when nothing is pushed); *report* a JSON file rewritten
    whenever all scheduled deliveries are done (for tests of the process).
    """

    store: DavStore
    clock: IReactorTime
    blocking: Any
    options: MpnOptions = field(default_factory=MpnOptions)
    pusher: Pusher | None = None
    report: str | None = None
    slips: list[SlipsReceipt] = field(default_factory=list)
    produced: list[Produced] = field(default_factory=list)
    pushes: list[PushOutcome] = field(default_factory=list)
    push_statuses: Counter[str] = field(default_factory=Counter)
    truth: GroundTruth = field(default_factory=GroundTruth)
    pending: int = 0
    """Slips files being processed plus result files scheduled and not yet delivered."""
    log: Logger = field(default_factory=lambda: Logger(namespace="kei_gateway.sim.mpn"))
    _seen: set[str] = field(default_factory=set)
    _calls: list[Any] = field(default_factory=list)

    def __post_init__(self) -> None:
        if self.options.pushes and self.pusher is None:
            raise ValueError("these MPN options push, but no push client was given")

    @property
    def idle(self) -> bool:
        """Nothing is being processed or waiting to be delivered."""
        return self.pending == 0

    def on_stored(self, where: DavPath) -> None:
        if where.collection != SLIPS or where.name is None or where.name.endswith(".part"):
            return
        name = where.name
        if name in self._seen:
            self.log.info("mpn: {name} stored again; already answered, ignored", name=name)
            return
        self._seen.add(name)
        self.pending += 1
        d: Deferred[tuple[SlipsReceipt, Plan | None]] = self.blocking.run(self.read_and_plan, name,
                                                                           self.clock.seconds())
        d.addCallback(self._planned)
        d.addErrback(lambda failure: self.log.failure("mpn: processing {name} failed", failure, name=name))
        d.addBoth(self._finished_one)

    def read_and_plan(self, name: str, now: float) -> tuple[SlipsReceipt, Plan | None]:
        """Read and check ``/slips/<name>``, plan its results (blocking; the plan is None if it is refused)."""
        data = self.store.path_of(DavPath(SLIPS, name)).read_bytes()
        checks = check_slips(data)
        rejected = sum(1 for c in checks if not c.valid)
        sha256 = hashlib.sha256(data).hexdigest()
        if rejected or not checks:
            return SlipsReceipt(name, sha256, len(checks), rejected, 0), None
        slips = [data[i * SLIP_BYTES:i * SLIP_BYTES + SLIP_BYTES - 2] for i in range(len(checks))]
        plan = plan_results(slips, name, self.options, now)
        planned = sum(len(b.preliminary.records) for b in plan.batches) - plan.truth.duplicates
        return SlipsReceipt(name, sha256, len(checks), rejected, planned), plan

    def _planned(self, outcome: tuple[SlipsReceipt, Plan | None]) -> None:
        receipt, plan = outcome
        self.slips.append(receipt)
        if plan is None:
            self.log.warn("mpn: {name} refused: {rejected} of {records} records fail the slip check; no results",
                          name=receipt.name, rejected=receipt.rejected, records=receipt.records,
                          sha256=receipt.sha256)
            return
        self.truth = self.truth.merged(plan.truth)
        self.log.info("mpn: {name} accepted: {records} slips, {results} paid, in {batches} 速報 batches",
                      name=receipt.name, records=receipt.records, results=receipt.results,
                      batches=len(plan.batches), sha256=receipt.sha256)
        self.pending += sum(1 + len(b.followups) for b in plan.batches)
        self._schedule(list(plan.batches), 0.0)

    def _schedule(self, batches: list[PlannedBatch], delay: float) -> None:
        if not batches:
            return
        batch, rest = batches[0], batches[1:]

        def run() -> None:
            d = self._deliver(batch.preliminary)
            d.addCallback(lambda _: self._after_preliminary(batch, rest))

        self._later(delay, run)

    def _after_preliminary(self, batch: PlannedBatch, rest: list[PlannedBatch]) -> None:
        for followup in batch.followups:
            self._later(self.options.confirm_after, functools.partial(self._deliver, followup))
        self._schedule(rest, self.options.batch_interval)

    def _later(self, delay: float, f: Callable[[], object]) -> None:
        call = self.clock.callLater(delay, f)
        self._calls.append(call)

    def _deliver(self, result_file: ResultFile) -> Deferred[None]:
        """Write and/or push one file; record it in :attr:`produced`. Never fails (errors are logged)."""
        data = result_file.render()
        sha256 = hashlib.sha256(data).hexdigest()
        d: Deferred[Any] = defer.succeed(None)
        if result_file.delivery in (PULL, BOTH):
            d.addCallback(lambda _: self.blocking.run(self._leave, result_file.name, data))
        if result_file.delivery in (PUSH, BOTH):
            d.addCallback(lambda _: self._push(result_file, data))
        else:
            d.addCallback(lambda _: result_file.delivery)

        def done(how: str) -> None:
            self.produced.append(Produced(result_file.name, result_file.kind, len(result_file.records), how,
                                          sha256))
            self.log.info("mpn: {name} delivered ({how}): {records} records of 収納区分 {kind}",
                          name=result_file.name, how=how, records=len(result_file.records), kind=result_file.kind,
                          sha256=sha256)

        d.addCallback(done)
        d.addErrback(lambda failure: self.log.failure("mpn: delivering {name} failed", failure,
                                                      name=result_file.name))
        d.addBoth(self._finished_one)
        return d

    def _leave(self, name: str, data: bytes) -> None:
        self.store.write_bytes(DavPath(RESULTS, name), data)

    def _push(self, result_file: ResultFile, data: bytes) -> Deferred[str]:
        assert self.pusher is not None
        d = self.pusher.push(result_file.name, data)

        def pushed(outcome: PushOutcome) -> Any:
            self._note_push(outcome)
            if not outcome.delivered:
                if result_file.delivery == BOTH:
                    return BOTH  # it is in /results/ already
                self.log.warn("mpn: push of {name} failed after {attempts} attempts ({statuses}); left in "
                              "/results/ for pull", name=result_file.name, attempts=outcome.attempts,
                              statuses=",".join(outcome.statuses))
                left = self.blocking.run(self._leave, result_file.name, data)
                return left.addCallback(lambda _: PUSH_FAILED)
            if result_file.repeat_push:
                again = self.pusher.push(result_file.name, data) if self.pusher is not None else None
                assert again is not None
                return again.addCallback(self._note_push).addCallback(lambda _: result_file.delivery)
            return result_file.delivery

        return d.addCallback(pushed)

    def _note_push(self, outcome: PushOutcome) -> None:
        self.pushes.append(outcome)
        self.push_statuses.update(outcome.statuses)

    def _finished_one(self, result: object) -> None:
        self.pending -= 1
        self._calls[:] = [c for c in self._calls if c.active()]
        if self.pending == 0 and self.report is not None:
            try:
                self.write_report(self.report)
            except OSError as error:
                self.log.error("mpn: cannot write the report {path}: {error}", path=self.report,
                               error=type(error).__name__)
        return None

    def stop(self) -> None:
        """Cancel every delivery not yet started (on simulator stop)."""
        for call in self._calls:
            if call.active():
                call.cancel()
        self._calls.clear()

    def snapshot(self) -> dict[str, Any]:
        """The bookkeeping as JSON-ready data (what :meth:`write_report` writes)."""
        t = self.truth

        def ids(identities: Iterable[Identity]) -> list[list[str]]:
            return sorted(list(i) for i in identities)

        return {
            "pending": self.pending,
            "slips": [vars(s) for s in self.slips],
            "produced": [vars(p) for p in self.produced],
            "pushes": [{"name": p.name, "statuses": list(p.statuses), "delivered": p.delivered}
                       for p in self.pushes],
            "push_statuses": dict(self.push_statuses),
            "truth": {"results": ids(t.results), "confirmed": ids(t.confirmed), "cancelled": ids(t.cancelled),
                      "mismatched": ids(t.mismatched), "unconfirmed": ids(t.unconfirmed),
                      "duplicates": t.duplicates},
        }

    def write_report(self, path: str) -> None:
        """Write :meth:`snapshot` to *path* atomically (dummy data only: identities include slip numbers)."""
        temp = f"{path}.tmp"
        with open(temp, "w", encoding="utf-8") as f:
            json.dump(self.snapshot(), f, ensure_ascii=False, indent=1)
        os.replace(temp, path)


def _read(path: str) -> bytes:
    with open(path, "rb") as f:
        return f.read()


def start_mpn_simulator(reactor: Any, listen: str | tuple[str, int], root: str | os.PathLike[str],
                        server_cert: str | os.PathLike[str], server_key: str | os.PathLike[str],
                        client_ca: str | os.PathLike[str], faults: Faults | None = None, *,
                        options: MpnOptions | None = None, blocking: Any = None, pusher: Pusher | None = None,
                        report: str | None = None) -> Deferred[RunningSim]:
    """The MPN centre simulator on *listen* (``"127.0.0.1:0"`` picks a free port: see ``RunningSim.port``).

    Arguments as :func:`~kei_gateway.sim.jnks.start_jnks_simulator`. Slips go to
    ``/slips/<name>.part`` then MOVE to ``/slips/<name>``; result files appear
    in ``/results/`` and/or are pushed to ``options.push_url`` (with
    ``options.push_cert``/``push_key``, trusting ``options.push_ca``), unless
    *pusher* replaces that client. ``RunningSim.personality`` is the
    :class:`MpnPersonality` (``.produced``, ``.pushes``, ``.truth``, ``.idle``).
    """
    options = options or MpnOptions()
    try:
        identity = ServerIdentity.from_files(os.fspath(server_cert), os.fspath(server_key))
        client_ca_pem = _read(os.fspath(client_ca))
        if pusher is None and options.push_url:
            assert options.push_cert and options.push_key and options.push_ca  # MpnOptions checks this
            pusher = PushClient.over_tls(
                reactor, options.push_url, _read(options.push_cert), _read(options.push_key),
                _read(options.push_ca), attempts=options.push_attempts, first_delay=options.push_first_delay,
                max_delay=options.push_max_delay)
    except Exception:
        return fail()
    runner = blocking if blocking is not None else ReactorThreads(reactor)

    def personality(store: DavStore) -> MpnPersonality:
        return MpnPersonality(store, reactor, runner, options, pusher, report)

    return start_simulator(reactor, "mpn", listen, root, identity, client_ca_pem, MPN_COLLECTIONS, faults,
                           personality)
