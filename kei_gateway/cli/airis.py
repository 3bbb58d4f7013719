"""``kei-gateway airis reconcile``: one AIRIS 突合 by hand (SPEC §13), the same run as the daemon flow.

The inputs are read into memory (the ZIP is opened there; its plaintext never touches the
disk), the outputs go to ``--output`` (a directory only its owner can read), and the run is
recorded in the audit trail when a configuration is at hand (counts and hashes only).
"""

from __future__ import annotations

import argparse
import datetime
import os
import stat
import sys
from typing import TYPE_CHECKING, Any

from kei_gateway.cli import exitcodes
from kei_gateway.cli.main import show_usage

if TYPE_CHECKING:
    from kei_gateway.config import Config
    from kei_gateway.flows.airis_reconcile import Reconciliation

__all__ = ["register", "reconcile_command"]

_EPILOG = """\
Matches the 小型二輪 tax register (tax-register-2w, fixed-length CP932) against the
車検証情報 downloaded from AIRIS (an AES-256 ZIP holding one CP932 CSV; its key is a
separate one-line file from the AIRIS site). Writes <lg_code>_airis-reconcile_<time>.dat,
.csv and .txt into --output, all three or none. AIRIS characters outside JIS X 0208 are
written by 縮退 in the .dat (〓 when there is no unique candidate). See docs/airis.md.

Exit status: 0 the results were written (whatever they found); 3 an input is invalid
(every problem is printed with its file, row or record, column or field); 2 usage, or
an --output directory that group or others can read; 1 the results could not be written.
"""


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = subparsers.add_parser("airis", help="AIRIS 突合 for 小型二輪 (SPEC §13)")
    actions = parser.add_subparsers(dest="airis_command", metavar="ACTION", parser_class=type(parser))
    run = actions.add_parser(
        "reconcile", help="match the tax register against the AIRIS download and write the results",
        description="AIRIS 突合: the 小型二輪 tax register against AIRIS's 車検証情報.",
        epilog=_EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    run.add_argument("--airis", required=True, metavar="ZIP", help="the AIRIS download as received (AES-256 ZIP)")
    run.add_argument("--key", required=True, metavar="FILE", help="its key file (one line, from the AIRIS site)")
    run.add_argument("--register", required=True, metavar="FILE", help="the tax register extract (tax-register-2w)")
    run.add_argument("--output", required=True, metavar="DIR", help="directory for the results (mode 0700)")
    run.add_argument("--lg-code", metavar="CODE", help="全国地方公共団体コード (default: [gateway] lg_code of the config)")
    run.set_defaults(func=reconcile_command)
    parser.set_defaults(func=show_usage(parser))


def _read(path: str, what: str) -> bytes:
    from kei_gateway.flows.airis_reconcile import MAX_INPUT_BYTES

    try:
        size = os.stat(path).st_size
        if size > MAX_INPUT_BYTES:
            raise _Refused(f"{path}: {size} bytes, over the limit of {MAX_INPUT_BYTES}: not a {what}")
        with open(path, "rb") as file:
            return file.read(MAX_INPUT_BYTES + 1)
    except OSError as error:
        raise _Refused(f"{path}: cannot read the {what}: {error.strerror}") from None


class _Refused(Exception):
    pass


def _lg_code(args: argparse.Namespace) -> tuple[str | None, Config | None]:
    """The code (from --lg-code, else the config) and the config (for the audit record), if any."""
    from kei_gateway.cli.main import config_path_from
    from kei_gateway.config import ConfigError, load_config

    config: Config | None = None
    try:
        config = load_config(config_path_from(args))
    except (ConfigError, OSError):
        if not args.lg_code:
            raise
    code = args.lg_code or (config.gateway.lg_code if config is not None else None)
    return code, config


def _record_run(config: Config, result: Reconciliation, unrecorded: list[str]) -> None:
    """Chain ``airis.reconciled`` with the operator as actor. A trail that cannot be opened (no audit key, no
    table) is only noted in *unrecorded* (the results are still written and the gap said, as every command
    does); any other failure to record raises :class:`AuditError` (nothing is published)."""
    from kei_gateway.flows.airis_reconcile import audit_fields
    from kei_gateway.operations.audit import record_operator_action
    from kei_gateway.operations.audit.log import AuditKeyError, AuditUnavailable

    fields: dict[str, Any] = audit_fields(result)  # flow, sha256, records, name, reason: none is a keyword of its own
    try:
        record_operator_action(config, "airis.reconciled", **fields)
    except (AuditKeyError, AuditUnavailable) as error:
        unrecorded.append(str(error))


def reconcile_command(args: argparse.Namespace) -> int:
    from kei_gateway.flows.airis_reconcile import AirisInputError, reconcile, write_outputs
    from kei_gateway.operations.audit import AuditError
    from kei_gateway.layouts import is_valid_lg_code

    output = args.output
    try:
        info = os.stat(output)
    except OSError as error:
        print(f"error: --output {output}: {error.strerror}: create it with 'install -d -m 0700 {output}'",
              file=sys.stderr)
        return exitcodes.USAGE
    if not stat.S_ISDIR(info.st_mode):
        print(f"error: --output {output} is not a directory", file=sys.stderr)
        return exitcodes.USAGE
    if info.st_mode & 0o044:
        print(f"error: --output {output} is readable by group or others (mode {stat.S_IMODE(info.st_mode):04o}): the "
              f"results hold names and addresses; run 'chmod 0700 {output}' or choose another directory",
              file=sys.stderr)
        return exitcodes.USAGE
    lg_code, config = _lg_code(args)
    if lg_code is None or not is_valid_lg_code(lg_code):
        print(f"error: --lg-code {lg_code!r} is not a valid 全国地方公共団体コード (6 digits, check digit SPEC §2.5)",
              file=sys.stderr)
        return exitcodes.USAGE
    try:
        airis_zip = _read(args.airis, "AIRIS download")
        key_file = _read(args.key, "key file")
        register_data = _read(args.register, "tax register extract")
    except _Refused as error:
        print(f"error: {error}", file=sys.stderr)
        return exitcodes.INVALID
    try:
        result = reconcile(airis_zip=airis_zip, key_file=key_file, register=register_data, lg_code=lg_code,
                           at=datetime.datetime.now(datetime.timezone.utc), airis_label=args.airis,
                           key_label=args.key, register_label=args.register)
    except AirisInputError as error:
        for problem in error.problems:
            print(f"{error.label}: {problem}")
        more = f" (the first {len(error.problems)} shown)" if error.total > len(error.problems) else ""
        print(f"INVALID: {error.label}: {error.total} problem(s){more}; nothing was written. Correct the input "
              "(or download it from AIRIS again) and run again.", file=sys.stderr)
        return exitcodes.INVALID
    del airis_zip, key_file, register_data
    unrecorded: list[str] = []

    def record_the_run() -> None:
        """The run's audit record, once the results are staged and before they are published (issue 11)."""
        if config is not None:
            _record_run(config, result, unrecorded)

    try:
        names = write_outputs(result, output, mode=0o600, before_publishing=record_the_run)
    except OSError as error:
        print(f"error: cannot write the results into {output}: {error.strerror}; nothing was left half written",
              file=sys.stderr)
        return exitcodes.FAILED
    except AuditError as error:  # the record could not be chained: nothing was published
        print(f"error: nothing was written into {output}: the run's audit record could not be written: {error}",
              file=sys.stderr)
        return exitcodes.FAILED
    for name in names:
        print(os.path.join(output, name))
    print(", ".join(f"{code} {count}" for code, count in result.counts.items()), file=sys.stderr)
    for error_text in unrecorded:
        print(f"warning: done, but not recorded in the audit trail: {error_text}", file=sys.stderr)
    return exitcodes.OK
