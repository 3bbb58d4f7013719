"""Fixed-length CP932 record layouts (SPEC §2): the tables and the pure engine around them.

The public surface::

    from kei_gateway.layouts import get_layout, ValidationOptions, validate_stream

    layout = get_layout("jnks-payments")
    options = ValidationOptions(today=today_in_jst, lg_code="131202")
    report = validate_stream(chunks, layout, options, sink=out.write)
    report.valid, report.records, report.error_count
    report.degenerated, report.degenerations   # gaiji = "degenerate": (record, key, from, to), personal
    for error in report.errors:
        log(error.message())                    # personal values masked
        quarantine(error.message(full_values=True))

    records = parse_records(chunks, layout, options)          # typed dicts
    data = b"".join(render_records(layout, records))          # CP932 bytes
    dummy = generate_file(layout, 1000, seed=1, today=today)  # ダミーデータ
"""

from kei_gateway.layouts._keyfilter import MemoryScratch, Scratch
from kei_gateway.layouts.checkdigits import (
    gs1_check_digit, is_valid_gs1_cvs_code, is_valid_lg_code, lg_code_check_digit,
)
from kei_gateway.layouts.engine import (
    DEFAULT_MAX_DEGENERATIONS, DEFAULT_MAX_ERRORS, Degenerated, Record, ValidationOptions, ValidationReport,
    Validator, parse_degenerations, parse_record, parse_records, render_record, render_records, validate_bytes,
    validate_stream,
)
from kei_gateway.layouts.errors import InvalidFileError, LayoutError, mask
from kei_gateway.layouts.fields import Field, Kind, Layout
from kei_gateway.layouts.generator import generate_file, generate_record, generate_records
from kei_gateway.layouts.tables import JNKS_PAYMENTS, JNKS_RECEIPTS, LAYOUTS, MPN_RESULTS, MPN_SLIPS, get_layout

__all__ = [
    "DEFAULT_MAX_DEGENERATIONS",
    "DEFAULT_MAX_ERRORS",
    "Degenerated",
    "Field",
    "InvalidFileError",
    "JNKS_PAYMENTS",
    "JNKS_RECEIPTS",
    "Kind",
    "LAYOUTS",
    "Layout",
    "LayoutError",
    "MPN_RESULTS",
    "MPN_SLIPS",
    "MemoryScratch",
    "Record",
    "Scratch",
    "ValidationOptions",
    "ValidationReport",
    "Validator",
    "generate_file",
    "generate_record",
    "generate_records",
    "get_layout",
    "gs1_check_digit",
    "is_valid_gs1_cvs_code",
    "is_valid_lg_code",
    "lg_code_check_digit",
    "mask",
    "parse_degenerations",
    "parse_record",
    "parse_records",
    "render_record",
    "render_records",
    "validate_bytes",
    "validate_stream",
]
