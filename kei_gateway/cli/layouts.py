"""``validate`` and ``generate``: record layouts from the command line.

``kei-gateway validate FILE --layout L`` checks a file against a layout of
SPEC §2 without any configuration file; ``kei-gateway generate --layout L
--records N`` writes ダミーデータ (dummy data) for demos, tests and benchmarks.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import sys
from collections.abc import Iterator
from functools import partial
from typing import BinaryIO

from kei_gateway.adapters.scratch import ScratchError, scratch_in
from kei_gateway.cli import exitcodes
from kei_gateway.cli._args import share
from kei_gateway.layouts import (
    DEFAULT_MAX_ERRORS, LAYOUTS, ValidationOptions, ValidationReport, generate_file, get_layout, is_valid_lg_code,
    validate_stream,
)
from kei_gateway.layouts.encoding import CHARSETS, GAIJI_POLICIES, INPUT_ENCODINGS
from kei_gateway.layouts.gaiji import GAIJI_FALLBACKS
from kei_gateway.layouts.generator import DEFAULT_LG_CODE

from kei_gateway.core.jst import today_in_jst

__all__ = ["register", "validate_file", "generate_dummy_file"]

_READ_SIZE = 1 << 16


def _date(text: str) -> datetime.date:
    try:
        return datetime.date.fromisoformat(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a date YYYY-MM-DD") from None


def _lg_code(text: str) -> str:
    if not is_valid_lg_code(text):
        raise argparse.ArgumentTypeError(
            f"{text!r} is not a valid 全国地方公共団体コード (six digits, check digit per SPEC §2.5), e.g. 131041")
    return text


def _positive(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = -1
    if value < 0:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number ≥ 0")
    return value


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    layouts = sorted(LAYOUTS)
    validate = subparsers.add_parser(
        "validate", help="check a record file against a layout (no config file needed)",
        description="Check a fixed-length record file against a layout of SPEC §2. Exit 0 when valid, "
                    "3 when invalid (every error is printed with record, byte and field), 2 on usage errors. "
                    "Personal values in the output are masked.")
    validate.add_argument("file", metavar="FILE", help="the file to check ('-' for standard input)")
    validate.add_argument("--layout", required=True, choices=layouts, help="the record layout (flow name)")
    validate.add_argument("--encoding", choices=INPUT_ENCODINGS, default="cp932",
                          help="encoding of FILE (default: cp932)")
    validate.add_argument("--charset", choices=CHARSETS, default="jisx0208",
                          help="characters accepted in full-width fields (default: jisx0208)")
    validate.add_argument("--gaiji", choices=GAIJI_POLICIES, default="reject",
                          help="外字 policy: reject, substitute with 〓, or degenerate (縮退 by the MJ縮退マップ, "
                               "else the 国税庁 JIS縮退マップ) (default: reject)")
    validate.add_argument("--gaiji-fallback", choices=GAIJI_FALLBACKS, default="reject",
                          help="with --gaiji degenerate: a 外字 with no unique 縮退 candidate is rejected or "
                               "substituted with 〓 (default: reject)")
    validate.add_argument("--lg-code", type=_lg_code, metavar="CODE",
                          help="the gateway's 全国地方公共団体コード; jnks-payments records must carry it "
                               "(default: only the check digit is verified)")
    validate.add_argument("--max-errors", type=_positive, default=DEFAULT_MAX_ERRORS, metavar="N",
                          help=f"errors to list (default: {DEFAULT_MAX_ERRORS}); validation stops after the "
                               "record that reaches them (duplicate keys aside)")
    validate.add_argument("--today", type=_date, metavar="YYYY-MM-DD",
                          help="the date 'not in the future' is checked against (default: today in JST)")
    validate.add_argument("--json", action="store_true", help="print the report as JSON")
    validate.set_defaults(func=validate_file)

    generate = subparsers.add_parser(
        "generate", help="write a file of dummy records (ダミーデータ) for demos, tests and benchmarks",
        description="Write dummy records (invented names, generated plates and numbers; never real data). "
                    "The same --seed and --today give the same file.")
    generate.add_argument("--layout", required=True, choices=layouts, help="the record layout (flow name)")
    generate.add_argument("--records", required=True, type=_positive, metavar="N", help="how many records")
    generate.add_argument("--seed", type=int, default=0, help="random seed (default: 0)")
    generate.add_argument("--invalid-rate", type=share, default=0.0, metavar="R",
                          help="share of records that break one rule each, 0–1 (default: 0)")
    generate.add_argument("--encoding", choices=INPUT_ENCODINGS, default="cp932",
                          help="encoding of the output (default: cp932)")
    generate.add_argument("--mj-rate", type=share, default=0.0, metavar="R",
                          help="share of records whose name gets one MJ character outside JIS X 0208 "
                               "(行政事務標準文字, e.g. 髙, 𠮷) that 縮退 maps back, 0–1 (default: 0); "
                               "with --encoding cp932 only CP932 extension characters (髙, 﨑) are used")
    generate.add_argument("--lg-code", type=_lg_code, default=DEFAULT_LG_CODE, metavar="CODE",
                          help=f"全国地方公共団体コード put in jnks-payments records (default: {DEFAULT_LG_CODE})")
    generate.add_argument("--today", type=_date, metavar="YYYY-MM-DD",
                          help="the day the data is generated for (default: today in JST)")
    generate.add_argument("--output", "-o", metavar="FILE", help="write here instead of standard output")
    generate.set_defaults(func=generate_dummy_file)


def _chunks(source: BinaryIO) -> Iterator[bytes]:
    return iter(partial(source.read, _READ_SIZE), b"")


def _file_chunks(path: str) -> Iterator[bytes]:
    with open(path, "rb") as source:
        yield from _chunks(source)


def _print_report(args: argparse.Namespace, report: ValidationReport) -> None:
    if args.json:
        json.dump({
            "file": args.file,
            "layout": report.layout,
            "valid": report.valid,
            "records": report.records,
            "error_count": report.error_count,
            "errors": [error.as_dict() for error in report.errors],
            "errors_truncated": report.truncated,
            "stopped_after_record": report.stopped_at,
            "gaiji_substituted": report.gaiji_substituted,
            "degenerated": report.degenerated,
        }, sys.stdout, ensure_ascii=False, indent=2)
        sys.stdout.write("\n")
        return
    if report.valid:
        substituted = f", {report.gaiji_substituted} 外字 substituted with 〓" if report.gaiji_substituted else ""
        substituted += f", {report.degenerated} 外字 degenerated (縮退)" if report.degenerated else ""
        print(f"OK: {args.file}: {report.records} records valid ({report.layout}{substituted})")
        return
    for error in report.errors:
        print(f"{args.file}: {error.message()}")
    shown = f" (first {len(report.errors)} listed)" if report.truncated else ""
    shown += f"; {report.stop_note}" if report.stopped_at is not None else ""
    print(f"INVALID: {args.file}: {report.error_count} errors in {report.records} records{shown} "
          f"({report.layout}). Correct these records in the system that wrote the file and send it again; "
          "check --encoding/--charset/--gaiji if the errors are about characters.", file=sys.stderr)


def validate_file(args: argparse.Namespace) -> int:
    """``kei-gateway validate``: exit 0 valid, 3 invalid, 2 when the file cannot be read, 1 when the scratch fails."""
    options = ValidationOptions(
        today=args.today or today_in_jst(),
        encoding=args.encoding,
        charset=args.charset,
        gaiji=args.gaiji,
        gaiji_fallback=args.gaiji_fallback,
        lg_code=args.lg_code,
        max_errors=args.max_errors,
    )
    layout = get_layout(args.layout)
    try:
        if args.file == "-":
            report = validate_stream(_chunks(sys.stdin.buffer), layout, options)
        else:
            # A regular file is read a second time when the uniqueness filter leaves suspect keys
            # (fixed memory); a pipe or device cannot be, so its keys are kept in memory.
            regular = os.path.isfile(args.file)
            reread = (lambda: _file_chunks(args.file)) if regular else None
            report = validate_stream(_file_chunks(args.file), layout, options, reread=reread,
                                     expected_size=os.path.getsize(args.file) if regular else None,
                                     scratch=scratch_in())
    except ScratchError as exc:
        print(f"kei-gateway validate: {args.file}: {exc.strerror}", file=sys.stderr)
        return exitcodes.FAILED
    except ValueError as exc:  # the file changed between the two reads
        print(f"kei-gateway validate: {args.file}: {exc}", file=sys.stderr)
        return exitcodes.USAGE
    except OSError as exc:
        print(f"kei-gateway validate: cannot read {args.file}: {exc.strerror or exc}; "
              "check the path and its permissions", file=sys.stderr)
        return exitcodes.USAGE
    _print_report(args, report)
    return exitcodes.OK if report.valid else exitcodes.INVALID


def generate_dummy_file(args: argparse.Namespace) -> int:
    """``kei-gateway generate``: dummy records to a file or standard output."""
    layout = get_layout(args.layout)
    records = generate_file(layout, args.records, seed=args.seed, today=args.today or today_in_jst(),
                            invalid_rate=args.invalid_rate, lg_code=args.lg_code, encoding=args.encoding,
                            mj_rate=args.mj_rate)
    try:
        if args.output is None:
            _write(sys.stdout.buffer, records)
        else:
            with open(args.output, "wb") as target:
                _write(target, records)
    except OSError as exc:
        print(f"kei-gateway generate: cannot write {args.output or 'standard output'}: {exc.strerror or exc}; "
              "check the path and free space", file=sys.stderr)
        return exitcodes.FAILED
    return exitcodes.OK


def _write(target: BinaryIO, records: Iterator[bytes]) -> None:
    batch: list[bytes] = []
    for record in records:
        batch.append(record)
        if len(batch) >= 1000:
            target.write(b"".join(batch))
            batch.clear()
    target.write(b"".join(batch))
    target.flush()
