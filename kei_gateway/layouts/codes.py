"""The code tables of SPEC §2 (税目, 車種コード §2.6, 支払方法, 収納区分, チャネル区分, 納付状況コード ...)."""

from __future__ import annotations

from typing import Final

__all__ = [
    "RECORD_KINDS",
    "VEHICLE_TYPES",
    "PAYMENT_STATUSES",
    "DEREGISTERED_FLAGS",
    "RECEIPT_RESULTS",
    "TAX_ITEMS",
    "PAY_METHODS",
    "RESULT_KINDS",
    "CHANNELS",
    "BANK_CHANNELS",
    "CVS_CHANNEL",
    "KEI_CAR_TAX_ITEM",
    "PLATE_KANA_LETTERS",
]

RECORD_KINDS: Final[dict[str, str]] = {"1": "登録", "2": "変更", "3": "削除"}
"""納税情報登録区分 (JNKS §2.1)."""

VEHICLE_TYPES: Final[dict[str, str]] = {
    "11": "二輪の小型自動車（小型二輪）",
    "21": "軽三輪",
    "31": "軽四輪乗用・自家用",
    "32": "軽四輪乗用・営業用",
    "33": "軽四輪貨物・自家用",
    "34": "軽四輪貨物・営業用",
}
"""車種コード (§2.6)."""

PAYMENT_STATUSES: Final[dict[str, str]] = {
    "1": "納付済", "2": "未納", "3": "減免", "4": "非課税", "5": "課税保留",
}
"""納付状況コード (JNKS §2.1)."""

DEREGISTERED_FLAGS: Final[dict[str, str]] = {"0": "有効", "1": "抹消"}
"""抹消フラグ (JNKS §2.1)."""

RECEIPT_RESULTS: Final[dict[str, str]] = {"0": "受付", "9": "エラー"}
"""結果区分 (JNKS 受付結果 §2.2)."""

TAX_ITEMS: Final[dict[str, str]] = {
    "01": "特別区民税・都民税（普通徴収）",
    "02": "軽自動車税（種別割）",
    "03": "国民健康保険料",
    "99": "その他",
}
"""税目 (MPN §2.3)."""

KEI_CAR_TAX_ITEM: Final = "02"
"""The 税目 whose 期別 can only be ``01``."""

PAY_METHODS: Final[dict[str, str]] = {
    "01": "現金", "02": "口座引落", "03": "クレジットカード", "04": "電子マネー", "05": "電子決済（その他）",
}
"""支払方法 (MPN §2.4)."""

RESULT_KINDS: Final[dict[str, str]] = {"1": "速報", "2": "確報", "3": "速報取消"}
"""収納区分 (MPN §2.4)."""

CHANNELS: Final[dict[str, str]] = {
    "01": "金融機関窓口",
    "02": "ATM（ペイジー）",
    "03": "インターネットバンキング",
    "04": "モバイルバンキング",
    "05": "コンビニエンスストア",
    "06": "モバイルレジ",
    "07": "モバイルレジクレジット",
    "08": "電子マネー",
    "09": "地方税お支払サイト",
}
"""チャネル区分 (MPN §2.4)."""

BANK_CHANNELS: Final[frozenset[str]] = frozenset({"01", "02", "03", "04"})
"""チャネル区分 codes that are a bank channel (金融機関コード is a real bank code, not ``0000``)."""

CVS_CHANNEL: Final = "05"
"""チャネル区分 コンビニエンスストア: the only channel with a コンビニ収納連携情報コード."""

PLATE_KANA_LETTERS: Final = "ＡＢＥＨＫＭＴＹ"
"""The full-width letters allowed as かな文字 besides hiragana."""
