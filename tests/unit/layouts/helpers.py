"""Shared dummy-data helpers for the layout tests (ダミーデータ only)."""

from __future__ import annotations

import datetime

from kei_gateway.layouts import Layout, ValidationOptions, ValidationReport, generate_file, validate_bytes

TODAY = datetime.date(2025, 6, 30)
OPTIONS = ValidationOptions(today=TODAY)


def dummy_file(layout: Layout, count: int = 5, seed: int = 7) -> bytes:
    return b"".join(generate_file(layout, count, seed=seed, today=TODAY))


def dummy_records(layout: Layout, count: int = 5, seed: int = 7) -> list[bytes]:
    return list(generate_file(layout, count, seed=seed, today=TODAY))


def validate(data: bytes, layout: Layout, options: ValidationOptions = OPTIONS) -> ValidationReport:
    return validate_bytes(data, layout, options)


def put(layout: Layout, record: bytes, key: str, raw: bytes) -> bytes:
    start = layout.offsets[key]
    assert len(raw) == layout[key].width
    return record[:start] + raw + record[start + len(raw):]


def places(report: ValidationReport) -> set[tuple[int | None, str | None]]:
    return {(error.record, error.key) for error in report.errors}
