"""``kei-gateway check-config``: every configuration problem at once, or OK and a summary."""

from __future__ import annotations

import argparse

from kei_gateway.cli import exitcodes
from kei_gateway.cli.main import config_path_from
from kei_gateway.config import load_config

__all__ = ["register", "check_config"]


def register(subparsers: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    parser = subparsers.add_parser(
        "check-config", help="check the configuration file and the keys and certificates it names")
    parser.set_defaults(func=check_config)


def check_config(args: argparse.Namespace) -> int:
    path = config_path_from(args)
    config = load_config(path)
    print(f"OK: {path}")
    print(config.summary())
    return exitcodes.OK
