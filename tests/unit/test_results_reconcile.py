"""Reconciliation of 速報 against 確報 and 速報取消, and its text and CSV reports (kei_gateway.core.results.reconcile)."""

from __future__ import annotations

import csv
import io
import itertools
from datetime import datetime, timedelta, timezone

from hypothesis import given, settings, strategies as st

from kei_gateway.core.jst import JST
from kei_gateway.core.results import StoredResult, reconcile, render_csv, render_text, unconfirmed_counts

NOW = datetime(2026, 11, 24, 9, 0, tzinfo=JST)
LIMIT = 3 * 86400.0
OLD = datetime(2026, 11, 20, 10, 30, tzinfo=JST)  # four days before NOW: past the limit
NEW = datetime(2026, 11, 23, 10, 30, tzinfo=JST)  # one day before NOW
_ids = itertools.count(1)


def row(match: str, kind: int, *, amount: str = "a", channel: str = "02", received_at: datetime = OLD,
        slip: str = "0123") -> StoredResult:
    number = next(_ids)
    return StoredResult(identity_key=f"id-{number}", match_key=match, amount_key=f"{match}-{amount}", kind=kind,
                        channel=channel, tax_item="02", pay_method="01", received_at=received_at,
                        slip_hint="…" + slip, transfer_id=1, relay_name="r.dat",
                        recorded_at=received_at.astimezone(timezone.utc))


def single(rows: list[StoredResult]):  # type: ignore[no-untyped-def]
    report = reconcile(rows, NOW, LIMIT)
    assert len(report.channels) == 1
    return report, report.channels[0]


def test_when_a_provisional_has_a_final_of_equal_amount_then_it_is_confirmed_and_nothing_needs_a_person() -> None:
    report, channel = single([row("m1", 1), row("m1", 2)])
    assert (channel.provisional, channel.final, channel.confirmed) == (1, 1, 1)
    assert channel.unconfirmed == channel.mismatched == channel.final_without_provisional == 0
    assert report.problems == () and not report.needs_attention


def test_when_a_provisional_is_cancelled_then_it_counts_as_cancelled() -> None:
    report, channel = single([row("m1", 1), row("m1", 3)])
    assert (channel.provisional, channel.cancel, channel.cancelled, channel.confirmed) == (1, 1, 1, 0)
    assert report.problems == ()


def test_when_a_provisional_has_neither_then_it_is_pending_before_the_limit_and_unconfirmed_after() -> None:
    report, channel = single([row("old", 1, received_at=OLD, slip="1111"), row("new", 1, received_at=NEW)])
    assert (channel.unconfirmed, channel.pending) == (1, 1)
    assert [(p.problem, p.slip_hint) for p in report.problems] == [("unconfirmed", "…1111")]
    assert unconfirmed_counts([row("a", 1, received_at=OLD), row("b", 1, received_at=NEW), row("c", 1, received_at=NEW),
                               row("c", 2, received_at=NEW)], NOW, LIMIT) == {"pending": 1, "overdue": 1}


def test_when_exactly_at_the_limit_then_it_is_still_pending() -> None:
    at_limit = NOW - timedelta(seconds=LIMIT)
    assert unconfirmed_counts([row("a", 1, received_at=at_limit)], NOW, LIMIT) == {"pending": 1, "overdue": 0}
    assert unconfirmed_counts([row("a", 1, received_at=at_limit - timedelta(seconds=1))], NOW, LIMIT) == {
        "pending": 0, "overdue": 1}


def test_when_the_final_amount_differs_then_it_is_a_mismatch_to_check() -> None:
    report, channel = single([row("m1", 1, amount="a"), row("m1", 2, amount="b", slip="2222")])
    assert (channel.mismatched, channel.confirmed) == (1, 0)
    assert [p.problem for p in report.problems] == ["mismatched"]


def test_when_a_final_or_cancellation_has_no_provisional_then_it_is_an_orphan_to_check() -> None:
    report, channel = single([row("f", 2, slip="3333"), row("c", 3, slip="4444")])
    assert (channel.final_without_provisional, channel.cancel_without_provisional) == (1, 1)
    assert sorted((p.problem, p.slip_hint) for p in report.problems) == [
        ("cancel_without_provisional", "…4444"), ("final_without_provisional", "…3333")]


def test_when_a_provisional_is_both_confirmed_and_cancelled_then_it_is_a_conflict() -> None:
    report, channel = single([row("m", 1), row("m", 2), row("m", 3)])
    assert (channel.conflicting, channel.confirmed, channel.cancelled) == (1, 0, 0)
    assert [p.problem for p in report.problems] == ["conflicting"]


def test_when_results_come_from_several_channels_then_each_is_counted_apart_and_in_the_total() -> None:
    rows = [row("a", 1, channel="05"), row("a", 2, channel="05"), row("b", 1, channel="01"),
            row("c", 1, channel="05", received_at=NEW)]
    report = reconcile(rows, NOW, LIMIT, scope="収納日 2026-11-20")
    assert [(c.channel, c.channel_name) for c in report.channels] == [("01", "金融機関窓口"), ("05", "コンビニエンスストア")]
    first, fifth = report.channels
    assert (first.provisional, first.unconfirmed, first.confirmed) == (1, 1, 0)
    assert (fifth.provisional, fifth.final, fifth.confirmed, fifth.pending) == (2, 1, 1, 1)
    assert (report.total.provisional, report.total.final, report.total.confirmed, report.total.unconfirmed,
            report.total.pending) == (3, 1, 1, 1, 1)


KINDS = st.lists(st.tuples(st.sampled_from(["m1", "m2", "m3", "m4"]), st.sampled_from([1, 2, 3]),
                           st.sampled_from(["a", "b"]), st.sampled_from(["01", "05"]), st.booleans()),
                 max_size=24, unique_by=lambda t: (t[0], t[1]))


@settings(max_examples=200, deadline=None)
@given(KINDS)
def test_when_any_results_are_reconciled_then_every_provisional_and_orphan_lands_in_exactly_one_outcome(
        specs: list[tuple[str, int, str, str, bool]]) -> None:
    channel_of = {match: channel for match, _, _, channel, _ in specs}  # a match key lives in one channel
    rows = [row(m, k, amount=a, channel=channel_of[m], received_at=OLD if old else NEW) for m, k, a, _, old in specs]
    total = reconcile(rows, NOW, LIMIT).total
    assert total.provisional + total.final + total.cancel == len(rows)
    assert total.provisional == (total.confirmed + total.cancelled + total.pending + total.unconfirmed
                                 + total.mismatched + total.conflicting)
    groups_without_provisional = {m for m, *_ in specs} - {m for m, k, *_ in specs if k == 1}
    assert total.final_without_provisional == sum(1 for m, k, *_ in specs if k == 2 and m in groups_without_provisional)
    counts = unconfirmed_counts(rows, NOW, LIMIT)
    assert (counts["pending"], counts["overdue"]) == (total.pending, total.unconfirmed)


def sample_report():  # type: ignore[no-untyped-def]
    rows = [row("a", 1, channel="05"), row("a", 2, channel="05"), row("b", 1, channel="01", slip="0042"),
            row("c", 1, channel="02", amount="x", slip="0777"), row("c", 2, channel="02", amount="y", slip="0777")]
    return reconcile(rows, NOW, LIMIT, scope="収納日 2026-11-20")


def test_when_rendered_as_text_then_headings_are_bilingual_and_problems_are_listed_with_the_slip_hint() -> None:
    text = render_text(sample_report(), notes=["note: default limit"])
    assert "納付結果の突合 (payment-result reconciliation): 収納日 2026-11-20" in text
    assert "note: default limit" in text and "収納日時から 3日 (3d)" in text
    assert "05 コンビニエンスストア" in text and "01 金融機関窓口" in text
    provisional_line = next(line for line in text.splitlines() if line.startswith("速報 (provisional)"))
    assert provisional_line.split()[-4:] == ["1", "1", "1", "3"], "01, 02, 05, then the total"
    assert "要確認 (to check): 2 件" in text
    assert "…0042" in text and "未確報" in text and "…0777" in text and "金額不一致" in text
    assert "2026-11-20 10:30:00" in text


def test_when_there_is_nothing_then_the_text_says_so() -> None:
    text = render_text(reconcile([], NOW, LIMIT, scope="収納日 2026-11-20"))
    assert "no payment results in this period" in text
    confirmed = render_text(reconcile([row("a", 1), row("a", 2)], NOW, LIMIT))
    assert "要確認 (to check): なし (none)" in confirmed


def test_when_rendered_as_csv_then_it_is_utf8_with_a_bom_and_holds_the_counts_and_the_problems() -> None:
    data = render_csv(sample_report())
    assert data.startswith(b"\xef\xbb\xbf") and b"\r\n" in data
    rows = list(csv.reader(io.StringIO(data.decode("utf-8-sig"), newline="")))
    assert rows[1][:4] == ["チャネル区分 (channel)", "チャネル名 (channel name)", "速報 (provisional)", "確報 (final)"]
    by_channel = {r[0]: r for r in rows[2:6]}
    assert set(by_channel) == {"01", "02", "05", ""}
    assert by_channel[""][1] == "合計 (total)" and by_channel[""][2] == "3"
    blank = rows.index([])
    problems = rows[blank + 3:]
    assert [(p[1], p[4], p[5]) for p in problems] == [("01", "…0042", "unconfirmed"), ("02", "…0777", "mismatched")]
    assert problems[0][0] == "2026-11-20 10:30:00"
