"""``validate`` and ``generate``: record layouts from the command line (filled in by the layouts work)."""

from __future__ import annotations

import argparse


def register(subparsers: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    """No layout commands yet."""
