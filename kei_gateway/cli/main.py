"""The ``kei-gateway`` command line: one parser, one sub-command per module.

Each module in :data:`COMMAND_MODULES` exposes ``register(subparsers)``, which
adds its sub-commands and sets ``func`` (``(args) -> exit code``) on them.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
from collections.abc import Callable, Sequence

from kei_gateway import __version__
from kei_gateway.cli import exitcodes

__all__ = ["main", "build_parser", "DEFAULT_CONFIG_PATH", "config_path_from"]

DEFAULT_CONFIG_PATH = "/etc/kei-gateway/kei-gateway.toml"
CONFIG_ENV = "KEI_GATEWAY_CONFIG"

COMMANDS = {
    "run": "kei_gateway.cli.daemon",
    "reload": "kei_gateway.cli.reload",
    "check-config": "kei_gateway.cli.config",
    "db": "kei_gateway.cli.database",
    "validate": "kei_gateway.cli.layouts",
    "generate": "kei_gateway.cli.layouts",
    "systemd-allowlist": "kei_gateway.cli.allowlist",
    "status": "kei_gateway.cli.transfers",
    "transfers": "kei_gateway.cli.transfers",
    "results": "kei_gateway.cli.results",
    "demo": "kei_gateway.cli.demo",
    "sim": "kei_gateway.cli.sim",
    "keys": "kei_gateway.cli.keys",
    "audit": "kei_gateway.cli.audit",
    "airis": "kei_gateway.cli.airis",
    "purge": "kei_gateway.cli.purge",
}
"""Sub-command → the module that registers it. Only the module of the command being run is
imported, so ``kei-gateway validate`` does not load Twisted, SQLAlchemy and the rest."""
COMMAND_MODULES = tuple(dict.fromkeys(COMMANDS.values()))


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


def show_usage(parser: argparse.ArgumentParser) -> Callable[[argparse.Namespace], int]:
    """What a sub-command given without its action runs: its help on stderr, exit 2."""
    def usage(args: argparse.Namespace) -> int:
        parser.print_help(sys.stderr)
        return exitcodes.USAGE

    return usage


def _command_of(argv: Sequence[str]) -> str | None:
    """The sub-command named in *argv* (skipping options and the value of ``-c``), if any."""
    skip = False
    for token in argv:
        if skip:
            skip = False
            continue
        if token in ("-c", "--config"):
            skip = True
            continue
        if token.startswith("-"):
            continue
        return token
    return None


def build_parser(command: str | None = None) -> argparse.ArgumentParser:
    """The parser; with *command*, only the module of that sub-command is imported."""
    parser = _Parser(
        prog="kei-gateway",
        description="LGWAN/intranet boundary gateway for 軽JNKS and the MPN 収納機関共同利用センター.",
    )
    parser.add_argument("--version", action="version", version=f"kei-gateway {__version__}")
    _add_config_option(parser, default=None)
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    module = COMMANDS.get(command or "")
    for name in (module,) if module is not None else COMMAND_MODULES:
        importlib.import_module(name).register(subparsers)
    _config_option_everywhere(parser)
    return parser


def _add_config_option(parser: argparse.ArgumentParser, default: object) -> None:
    parser.add_argument(
        "-c", "--config", metavar="FILE", default=default,
        help=f"configuration file (default: ${CONFIG_ENV}, else {DEFAULT_CONFIG_PATH})",
    )


def _config_option_everywhere(parser: argparse.ArgumentParser) -> None:
    """Accept ``-c/--config`` after every sub-command too, nested ones included.

    Sysadmins type the option where ``nginx -t -c`` and ``journalctl -u`` taught them to:
    after the command. The sub-commands' copy has no default (``SUPPRESS``), so it sets
    ``args.config`` only when given and never hides a ``-c`` given before the command;
    given in both places, the later one wins, as with any repeated option.
    """
    for action in parser._actions:
        if not isinstance(action, argparse._SubParsersAction):
            continue
        for sub in dict.fromkeys(action.choices.values()):  # aliases map to the same parser
            if "--config" not in sub._option_string_actions:
                _add_config_option(sub, default=argparse.SUPPRESS)
            _config_option_everywhere(sub)


def main(argv: Sequence[str] | None = None) -> int:
    from kei_gateway.runtime.malloc import keep_block_buffers

    keep_block_buffers()  # validation's per-block buffers: reuse pages instead of faulting them in again
    arguments = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser(_command_of(arguments))
    args = parser.parse_args(arguments)
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
    except BrokenPipeError:  # e.g. '| head -1' closed the output: stop quietly, without a traceback
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # the exit's own flush must not fail again
        print("kei-gateway: the output was closed before the command finished (broken pipe)", file=sys.stderr)
        return exitcodes.FAILED
