"""Argument types shared by several sub-commands."""

from __future__ import annotations

import argparse

__all__ = ["share"]


def share(text: str) -> float:
    """A rate or share between 0 and 1 (``--invalid-rate``, ``--reject-rate``)."""
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not 0.0 <= value <= 1.0:
        raise argparse.ArgumentTypeError(f"{text!r} is not a share between 0 and 1, e.g. 0.01")
    return value
