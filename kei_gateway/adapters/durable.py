"""Durability on a POSIX filesystem: the one :func:`fsync_directory` (a rename or unlink is durable only after it)."""

from __future__ import annotations

import os

__all__ = ["fsync_directory"]


def fsync_directory(directory: str) -> None:
    """fsync *directory* itself, so the names created, renamed or removed in it survive a crash (blocking)."""
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
