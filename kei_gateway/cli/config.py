"""``kei-gateway check-config``: every configuration problem at once, or OK and a summary."""

from __future__ import annotations

import argparse
import sys

from kei_gateway.cli import exitcodes
from kei_gateway.cli.main import config_path_from
from kei_gateway.config import Config, load_config

__all__ = ["register", "check_config", "key_problem"]


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = subparsers.add_parser(
        "check-config", help="check the configuration file and the keys and certificates it names")
    parser.set_defaults(func=check_config)


def check_config(args: argparse.Namespace) -> int:
    path = config_path_from(args)
    config = load_config(path)
    problem = key_problem(config)
    if problem is not None:
        print(f"{path}: {problem}", file=sys.stderr)
        return exitcodes.USAGE
    print(f"OK: {path}")
    print(config.summary())
    return exitcodes.OK


def key_problem(config: Config) -> str | None:
    """What ``run`` would refuse in the keys themselves (length, encoding), by the very functions it uses."""
    from kei_gateway.adapters.store.errors import StoreError
    from kei_gateway.adapters.store.keys import keyring_from_config
    from kei_gateway.operations.audit import AuditError, audit_key_from_config

    try:
        keyring_from_config(config)
        audit_key_from_config(config)
    except (StoreError, AuditError, OSError) as error:
        return str(error)
    return None
