"""Exit codes of the ``kei-gateway`` command (SPEC §10)."""

__all__ = ["OK", "FAILED", "USAGE", "INVALID"]

OK = 0
"""The operation succeeded."""
FAILED = 1
"""The operation failed (a peer, the database, a verification)."""
USAGE = 2
"""Wrong command-line usage or an invalid configuration."""
INVALID = 3
"""A validated file is invalid."""
