"""The layout engine's public surface (kept for imports of ``kei_gateway.layouts.engine``).

The engine is split by concern: :mod:`~kei_gateway.layouts.report` (options and report),
:mod:`~kei_gateway.layouts.precise` (the per-record checker),
:mod:`~kei_gateway.layouts.columnar` (the column-wise fast path),
:mod:`~kei_gateway.layouts.utf8` (UTF-8 input), :mod:`~kei_gateway.layouts.uniqueness`,
:mod:`~kei_gateway.layouts.validator` (the streaming validator) and
:mod:`~kei_gateway.layouts.render` (parse and render).
"""

from kei_gateway.layouts.precise import Record
from kei_gateway.layouts.render import parse_record, parse_records, render_record, render_records
from kei_gateway.layouts.report import (
    DEFAULT_MAX_DEGENERATIONS, DEFAULT_MAX_ERRORS, Degenerated, ValidationOptions, ValidationReport,
    parse_degenerations,
)
from kei_gateway.layouts.validator import Validator, validate_bytes, validate_stream

__all__ = [
    "DEFAULT_MAX_DEGENERATIONS",
    "DEFAULT_MAX_ERRORS",
    "Degenerated",
    "Record",
    "ValidationOptions",
    "ValidationReport",
    "Validator",
    "parse_degenerations",
    "parse_record",
    "parse_records",
    "render_record",
    "render_records",
    "validate_bytes",
    "validate_stream",
]
