"""The four record layouts of SPEC §2.1–§2.4, as data.

A real peer specification replaces a table here, not code.
"""

from __future__ import annotations

from typing import Final

from kei_gateway.layouts.codes import (
    BANK_CHANNELS, CHANNELS, CVS_CHANNEL, DEREGISTERED_FLAGS, KEI_CAR_TAX_ITEM, PAY_METHODS, PAYMENT_STATUSES,
    PLATE_KANA_LETTERS, RECEIPT_RESULTS, RECORD_KINDS, RESULT_KINDS, TAX_ITEMS, VEHICLE_TYPES,
)
from kei_gateway.layouts.fields import (
    Blank, Codes, Field, Gs1CvsCode, IntRange, Kind, Layout, LgCode, NotAllLetters, NotAllZero, NotBefore,
    NotBlank, NotInFuture, SumEquals, Unique, When, WideChars,
)

__all__ = ["JNKS_PAYMENTS", "JNKS_RECEIPTS", "MPN_SLIPS", "MPN_RESULTS", "LAYOUTS", "get_layout"]


def is_kanji_or_kana(char: str) -> bool:
    """Kanji (CJK ideographs, 々), hiragana, katakana (ヶ, ー included)."""
    return ("\u4e00" <= char <= "\u9fff" or "\uf900" <= char <= "\ufaff" or "\u3041" <= char <= "\u3096"
            or "\u30a1" <= char <= "\u30fa" or char in "\u3005\u30fc")


def is_plate_kana(char: str) -> bool:
    """One hiragana or one of ＡＢＥＨＫＭＴＹ."""
    return "\u3041" <= char <= "\u3093" or char in PLATE_KANA_LETTERS


JNKS_PAYMENTS: Final = Layout(
    name="jnks-payments",
    title="JNKS 納付情報",
    fields=(
        Field("納税情報登録区分", "record_kind", Kind.X, 1, (Codes(RECORD_KINDS),), allowed="0-9"),
        Field("標板番号（運輸支局等名）", "plate_office", Kind.K, 8,
              (NotBlank(), WideChars(is_kanji_or_kana, "1–4 kanji/kana")), personal=True),
        Field("分類番号", "plate_class", Kind.X, 3, (NotBlank(), NotAllLetters()), allowed="0-9A-Z",
              personal=True, note="1–3 of `0-9A-Z`, left-aligned"),
        Field("かな文字", "plate_kana", Kind.K, 2,
              (NotBlank(), WideChars(is_plate_kana, "one hiragana, or one of `ＡＢＥＨＫＭＴＹ`")), personal=True),
        Field("一連番号", "plate_serial", Kind.N, 4, (IntRange(1, 9999),), personal=True),
        Field("車台番号", "chassis_no", Kind.X, 20, (NotBlank(),), allowed="A-Z0-9\\-", personal=True,
              note="`[A-Z0-9-]`, 1–20, left-aligned"),
        Field("全国地方公共団体コード", "lg_code", Kind.N, 6, (LgCode(),)),
        Field("車種コード", "vehicle_type", Kind.N, 2, (Codes(VEHICLE_TYPES),)),
        Field("課税年度", "tax_year", Kind.N, 4, (IntRange(2000, 2099),), as_int=True),
        Field("納付状況コード", "payment_status", Kind.N, 1, (Codes(PAYMENT_STATUSES),)),
        Field("有効年月日", "valid_until", Kind.D, 8),
        Field("抹消フラグ", "deregistered", Kind.N, 1, (Codes(DEREGISTERED_FLAGS),)),
        Field("更新年月日", "updated_on", Kind.D, 8, (NotInFuture(),)),
    ),
    record_rules=(
        NotBefore("valid_until", "updated_on"),
        Unique(("chassis_no", "tax_year")),
    ),
)
"""JNKS 納付情報 (§2.1), 70 bytes per record incl. CRLF."""

JNKS_RECEIPTS: Final = Layout(
    name="jnks-receipts",
    title="JNKS 受付結果",
    fields=(
        Field("結果区分", "result", Kind.X, 1, (Codes(RECEIPT_RESULTS),), allowed="0-9"),
        Field("行番号", "line_no", Kind.N, 7, (IntRange(1, 9_999_999),), as_int=True,
              note="record number in the uploaded file"),
        Field("エラーコード", "error_code", Kind.X, 4, allowed="A-Z0-9"),
        Field("車台番号", "chassis_no", Kind.X, 20, allowed="A-Z0-9\\-", personal=True),
        Field("エラー内容", "message", Kind.K, 66),
    ),
    record_rules=(
        When("result", frozenset({"0"}), "error_code", then_rules=(Blank(),)),
        When("result", frozenset({"0"}), "message", then_rules=(Blank(),)),
    ),
)
"""JNKS 受付結果 (§2.2), 100 bytes per record incl. CRLF."""

_SLIP_FIELDS: Final = (
    Field("税目", "tax_item", Kind.N, 2, (Codes(TAX_ITEMS),)),
    Field("納付書番号", "slip_no", Kind.N, 20, (NotAllZero(),), personal=True, note="Pay-easy 納付番号"),
    Field("確認番号", "confirm_no", Kind.N, 6, personal=True),
    Field("納付区分", "pay_class", Kind.N, 4),
    Field("納税義務者氏名", "payer_name", Kind.K, 80, (NotBlank(),), personal=True),
    Field("請求金額", "amount_billed", Kind.N, 10, as_int=True, personal=True),
    Field("本税金額", "amount_tax", Kind.N, 10, as_int=True, personal=True),
    Field("延滞金額", "amount_late", Kind.N, 10, as_int=True, personal=True),
    Field("支払期限", "due_date", Kind.D, 8),
    Field("年度", "fiscal_year", Kind.N, 4, (IntRange(2000, 2099),), as_int=True),
    Field("期別", "installment", Kind.N, 2, (IntRange(1, 12),)),
)
_SLIP_RULES: Final = (
    SumEquals("amount_billed", ("amount_tax", "amount_late")),
    When("tax_item", frozenset({KEI_CAR_TAX_ITEM}), "installment", then_rules=(Codes({"01": "全期"}),)),
)

MPN_SLIPS: Final = Layout(
    name="mpn-slips",
    title="MPN 納付書情報",
    fields=_SLIP_FIELDS,
    record_rules=_SLIP_RULES + (Unique(("slip_no", "confirm_no")),),
)
"""MPN 納付書情報 (§2.3), 158 bytes per record incl. CRLF."""

MPN_RESULTS: Final = Layout(
    name="mpn-results",
    title="MPN 納付結果情報",
    fields=_SLIP_FIELDS + (
        Field("支払金額", "amount_paid", Kind.N, 10, as_int=True, personal=True),
        Field("支払本税金額", "paid_tax", Kind.N, 10, as_int=True, personal=True),
        Field("支払延滞金額", "paid_late", Kind.N, 10, as_int=True, personal=True),
        Field("支払方法", "pay_method", Kind.N, 2, (Codes(PAY_METHODS),)),
        Field("収納日時", "received_at", Kind.T, 14),
        Field("収納区分", "result_kind", Kind.N, 1, (Codes(RESULT_KINDS),)),
        Field("チャネル区分", "channel", Kind.N, 2, (Codes(CHANNELS),)),
        Field("金融機関コード", "bank_code", Kind.N, 4),
        Field("店舗コード", "branch_code", Kind.N, 3),
        Field("コンビニ収納連携情報コード", "cvs_code", Kind.X, 44, allowed="0-9", personal=True),
    ),
    record_rules=_SLIP_RULES + (
        SumEquals("amount_paid", ("paid_tax", "paid_late")),
        When("channel", BANK_CHANNELS, "bank_code", then_rules=(NotAllZero(),),
             else_rules=(Codes({"0000": "銀行以外"}),)),
        When("channel", frozenset({CVS_CHANNEL}), "cvs_code", then_rules=(Gs1CvsCode(),),
             else_rules=(Blank(),)),
    ),
)
"""MPN 納付結果情報 (§2.4), 258 bytes per record incl. CRLF.

There is no uniqueness rule inside a results file: the same slip can be paid
(速報) and confirmed (確報) in one file; the ledger dedupes by result identity.
"""

# The AIRIS 突合 layouts (SPEC §13) reuse the plate fields above, so they are imported here.
from kei_gateway.layouts.airis import AIRIS_RECONCILE, TAX_REGISTER_2W  # noqa: E402

LAYOUTS: Final[dict[str, Layout]] = {
    layout.name: layout
    for layout in (JNKS_PAYMENTS, JNKS_RECEIPTS, MPN_SLIPS, MPN_RESULTS, TAX_REGISTER_2W, AIRIS_RECONCILE)
}
"""Every layout by its flow name."""


def get_layout(name: str) -> Layout:
    """The layout of flow ``name``; ``KeyError`` names the known ones."""
    try:
        return LAYOUTS[name]
    except KeyError:
        raise KeyError(f"unknown layout {name!r}; known: {', '.join(LAYOUTS)}") from None
