"""Argument types and output helpers shared by several sub-commands."""

from __future__ import annotations

import argparse
import sys

__all__ = ["share", "save_csv"]


def share(text: str) -> float:
    """A rate or share between 0 and 1 (``--invalid-rate``, ``--reject-rate``)."""
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not 0.0 <= value <= 1.0:
        raise argparse.ArgumentTypeError(f"{text!r} is not a share between 0 and 1, e.g. 0.01")
    return value


def save_csv(path: str, data: bytes) -> bool:
    """Write a report's ``--csv FILE``; False (the reason on stderr) when it cannot be written."""
    try:
        with open(path, "wb") as out:
            out.write(data)
    except OSError as error:
        print(f"cannot write {path}: {error.strerror}; choose a writable path for --csv", file=sys.stderr)
        return False
    print(f"CSV: {path}")
    return True
