"""The ``kei-gateway`` command line: one parser, one sub-command per module.

Each module in :data:`COMMAND_MODULES` exposes ``register(subparsers)``, which
adds its sub-commands and sets ``func`` (``(args) -> exit code``) on them.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
from collections.abc import Sequence

from kei_gateway import __version__, exitcodes

__all__ = ["main", "build_parser", "DEFAULT_CONFIG_PATH", "config_path_from"]

DEFAULT_CONFIG_PATH = "/etc/kei-gateway/kei-gateway.toml"
CONFIG_ENV = "KEI_GATEWAY_CONFIG"

COMMAND_MODULES = (
    "kei_gateway.commands.daemon",
    "kei_gateway.commands.config",
    "kei_gateway.commands.database",
    "kei_gateway.commands.layouts",
    "kei_gateway.commands.allowlist",
    "kei_gateway.commands.transfers",
    "kei_gateway.commands.demo",
    "kei_gateway.commands.sim",
    "kei_gateway.commands.keys",
)


def config_path_from(args: argparse.Namespace, environ: os._Environ[str] | dict[str, str] = os.environ) -> str:
    """The config file to read: ``-c``, else ``$KEI_GATEWAY_CONFIG``, else the default path."""
    explicit = getattr(args, "config", None)
    if explicit:
        return str(explicit)
    return environ.get(CONFIG_ENV) or DEFAULT_CONFIG_PATH


class _Parser(argparse.ArgumentParser):
    """argparse exits 2 on usage errors, which is our USAGE code; keep it explicit."""

    def error(self, message: str) -> None:  # type: ignore[override]
        self.print_usage(sys.stderr)
        self.exit(exitcodes.USAGE, f"{self.prog}: error: {message}\n"
                                   f"Run '{self.prog} --help' for the commands and options.\n")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="kei-gateway",
        description="LGWAN/intranet boundary gateway for 軽JNKS and the MPN 収納機関共同利用センター.",
    )
    parser.add_argument("--version", action="version", version=f"kei-gateway {__version__}")
    parser.add_argument(
        "-c", "--config", metavar="FILE",
        help=f"configuration file (default: ${CONFIG_ENV}, else {DEFAULT_CONFIG_PATH})",
    )
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    for name in COMMAND_MODULES:
        importlib.import_module(name).register(subparsers)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    func = getattr(args, "func", None)
    if func is None:
        parser.print_help(sys.stderr)
        return exitcodes.USAGE
    from kei_gateway.config import ConfigError

    try:
        return int(func(args))
    except ConfigError as error:  # any command that reads the configuration: every problem, exit 2
        print(error.render(), file=sys.stderr)
        return exitcodes.USAGE
    except KeyboardInterrupt:
        return exitcodes.FAILED
