"""Deterministic remote file names (SPEC §3). Pure: no clock, no I/O.

A transfer's remote name is fixed when the transfer is created, so a retry after a
lost response repeats exactly the same ``PUT name.part`` / ``MOVE name`` and the
412 rule can tell "already delivered" from "someone else's file".
"""

from __future__ import annotations

import datetime
import re

from kei_gateway.core.jst import JST

__all__ = ["JST", "remote_name", "part_name", "content_digest"]


_LG_CODE = re.compile(r"\d{6}")
_FLOW = re.compile(r"[a-z0-9][a-z0-9-]*")
_TRANSFER_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9-]{0,63}")
PART_SUFFIX = ".part"


def remote_name(lg_code: str, flow: str, when: datetime.datetime, transfer_id: int | str) -> str:
    """``<lg_code>_<flow>_<YYYYMMDDhhmmss>_<transfer id>.dat``, the timestamp in JST.

    *when* is the transfer's creation time and must be timezone-aware (a naive time
    would make the name depend on the host's zone).
    """
    if not _LG_CODE.fullmatch(lg_code):
        raise ValueError(f"lg_code must be 6 digits, got {lg_code!r}")
    if not _FLOW.fullmatch(flow):
        raise ValueError(f"not a flow name: {flow!r}")
    if when.tzinfo is None or when.utcoffset() is None:
        raise ValueError("the transfer's creation time must be timezone-aware")
    ident = str(transfer_id)
    if not _TRANSFER_ID.fullmatch(ident):
        raise ValueError(f"a transfer id is letters, digits and '-', at most 64: {ident!r}")
    stamp = when.astimezone(JST).strftime("%Y%m%d%H%M%S")
    return f"{lg_code}_{flow}_{stamp}_{ident}.dat"


def part_name(name: str) -> str:
    """The name a file is uploaded under before its ``MOVE``: ``name.part``."""
    return name + PART_SUFFIX


def content_digest(sha256_hex: str) -> str:
    """The RFC 9530 ``Content-Digest`` value for a SHA-256 given in hex: ``sha-256=:<base64>:``."""
    import base64

    raw = bytes.fromhex(sha256_hex)
    if len(raw) != 32:
        raise ValueError("a SHA-256 is 64 hex digits")
    return f"sha-256=:{base64.b64encode(raw).decode('ascii')}:"
