"""``audit report``'s sections: records of single items (issue 11) stay out of the weekly review."""

from __future__ import annotations

from datetime import datetime, timezone

from kei_gateway.operations.audit import AuditRecord, StoredRecord
from kei_gateway.operations.audit.report import section_of

NOW = datetime(2026, 12, 2, 8, 0, tzinfo=timezone.utc)


def stored(event: str, actor: str) -> StoredRecord:
    return StoredRecord(1, AuditRecord(time=NOW, actor=actor, event=event, transfer_id=7), "0" * 64, "1" * 64)


def test_when_a_manual_purge_erases_items_then_each_erasure_is_not_listed_but_the_run_is() -> None:
    assert section_of(stored("purge.erased", "ope-dummy")) is None
    assert section_of(stored("operator.purged", "ope-dummy")) == "purges"


def test_when_the_airis_flow_stores_a_transfer_then_its_record_is_not_listed() -> None:
    assert section_of(stored("airis.stored", "kei-gateway")) is None
    assert section_of(stored("operator.transfer_approved", "ope-dummy")) == "holds"
