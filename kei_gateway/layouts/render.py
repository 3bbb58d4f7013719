"""Parse records into typed values and render typed values into CP932 records."""

from __future__ import annotations

import datetime
from collections.abc import Iterable, Iterator, Mapping

from kei_gateway.layouts.encoding import IDEOGRAPHIC_SPACE
from kei_gateway.layouts.errors import InvalidFileError, LayoutError
from kei_gateway.layouts.fields import Field, Kind, Layout, Value
from kei_gateway.layouts.precise import Record, RecordChecker
from kei_gateway.layouts.report import ValidationOptions
from kei_gateway.layouts.validator import Validator

__all__ = ["parse_record", "parse_records", "render_record", "render_records"]


def parse_record(data: bytes, layout: Layout, options: ValidationOptions, number: int = 1) -> Record:
    """Parse one CP932 record (with or without its CRLF) into typed values; ``InvalidFileError`` if invalid."""
    body = data[:-2] if data.endswith(b"\r\n") else data
    if len(body) != layout.data_length:
        raise InvalidFileError([LayoutError(number, 0, f"is {len(body)} bytes long without CR LF, expected "
                                                       f"{layout.data_length}")])
    result = RecordChecker(layout, options).check(body, number, 0)
    if result.errors:
        raise InvalidFileError(result.errors)
    return result.values


def parse_records(chunks: Iterable[bytes], layout: Layout, options: ValidationOptions) -> Iterator[Record]:
    """Stream typed records out of a CP932 (or UTF-8, per ``options``) file given in chunks.

    Each record is validated precisely; at the first invalid record (or a
    broken file structure) :class:`InvalidFileError` is raised with its errors.
    Uniqueness across records is not checked here — validate the file first.
    """
    pending: list[bytes] = []
    validator = Validator(layout, options, pending.append)  # it checks and converts; records come out of pending
    checker = RecordChecker(layout, options)
    number = 0

    def drain() -> Iterator[Record]:
        nonlocal number
        if validator.report.error_count:
            raise InvalidFileError(validator.report.errors)
        size = layout.record_length
        for output in pending:  # one record, or a whole block from the fast path
            for start in range(0, len(output), size):
                number += 1
                yield checker.check(output[start:start + size - 2], number, 0).values
        pending.clear()

    for chunk in chunks:
        validator.feed(chunk)
        yield from drain()
    validator.close()
    yield from drain()


def _render_field(item: Field, value: Value) -> bytes:
    if item.kind is Kind.N:
        text = f"{value:0{item.width}d}" if isinstance(value, int) else str(value).rjust(item.width, "0")
        data = text.encode("ascii")
    elif item.kind is Kind.X:
        data = str(value).ljust(item.width).encode("ascii")
    elif item.kind is Kind.K:
        data = str(value).ljust(item.width // 2, IDEOGRAPHIC_SPACE).encode("cp932")
    elif item.kind is Kind.D:
        assert isinstance(value, datetime.date)
        data = value.strftime("%Y%m%d").encode("ascii")
    else:
        assert isinstance(value, datetime.datetime)
        data = value.strftime("%Y%m%d%H%M%S").encode("ascii")
    if len(data) != item.width:
        raise ValueError(f"{item.name} ({item.key}): value does not fit in {item.width} bytes")
    return data


def render_record(layout: Layout, record: Mapping[str, Value]) -> bytes:
    """The CP932 bytes of one record, CRLF included.  Renders; does not validate (use the validator)."""
    return b"".join(_render_field(item, record[item.key]) for item in layout.fields) + b"\r\n"


def render_records(layout: Layout, records: Iterable[Mapping[str, Value]]) -> Iterator[bytes]:
    """Render records one by one (stream them to a file or a transport)."""
    for record in records:
        yield render_record(layout, record)
