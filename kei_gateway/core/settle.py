"""Settling a received inbound file (SPEC §3 "Download", §5): the one decision for pull and push. Pure.

A file taken from a peer — pulled by the results poller
(:mod:`kei_gateway.flows.inbound.downloads`) or pushed to the push listener
(:mod:`kei_gateway.flows.inbound.push`) — has been stored encrypted and validated as it
streamed in (:class:`~kei_gateway.flows.inbound.intake.StreamIntake`). :func:`settle`
says what it is, from what the ledger already knows under its name:

============================  ==========================================  ===========================
settlement                    pull (the poller)                           push (the listener answers)
============================  ==========================================  ===========================
``NEW``                       committed VALIDATED, relayed                committed VALIDATED, ``201``
``IDENTICAL_REPEAT``          —                                           new blob dropped, ``204``
``SAME_NAME_OTHER_CONTENT``   — (a name is fetched and judged anew)       new blob dropped, ``409``
``INVALID``                   quarantined (blob kept, errors file)        quarantined, ``422``
``KNOWN_INVALID``             —                                           new blob dropped, ``422``
============================  ==========================================  ===========================

A pulled name is "judged anew" because a peer's results directory reuses names:
payment results are deduplicated result by result downstream, and a receipt replaces
its namesake. Whether a pulled file was already relayed ("known and done") is decided
before it is fetched, from its ETag and size: :func:`kei_gateway.core.transfer.on_remote_entry`.
"""

from __future__ import annotations

import enum
from collections.abc import Iterable
from dataclasses import dataclass

from kei_gateway.core.transfer import KnownTransfer
from kei_gateway.core.transfer import TransferState as S

__all__ = ["Door", "Settlement", "SettleDecision", "settle"]


class Door(enum.Enum):
    """How the file came in."""

    PULL = "download"
    """Fetched by the results poller (``GET``)."""
    PUSH = "push"
    """Pushed by the peer (``PUT /push/<flow>/<name>``)."""


class Settlement(enum.Enum):
    NEW = "new"
    """Valid and not a repeat: commit it as a VALIDATED inbound transfer and hand it to the relay."""
    IDENTICAL_REPEAT = "identical_repeat"
    """The same content under the same name was received before: nothing to do; drop the new blob."""
    SAME_NAME_OTHER_CONTENT = "same_name_other_content"
    """The name is taken by other content: refused; drop the new blob."""
    INVALID = "invalid"
    """Invalid: quarantine it (blob kept encrypted, errors file for a person, QUARANTINED transfer)."""
    KNOWN_INVALID = "known_invalid"
    """The same invalid file again: quarantined once is enough; drop the new blob."""


@dataclass(frozen=True)
class SettleDecision:
    settlement: Settlement
    transfer_id: int | None = None
    """The known transfer it repeats or conflicts with (IDENTICAL_REPEAT, SAME_NAME_OTHER_CONTENT)."""

    @property
    def keeps_blob(self) -> bool:
        """Whether the new blob is kept (committed or quarantined); otherwise it is deleted."""
        return self.settlement in (Settlement.NEW, Settlement.INVALID)


def settle(door: Door, known: Iterable[KnownTransfer], sha256: str, valid: bool) -> SettleDecision:
    """What a received file is, from the transfers *known* under its name (newest first), its SHA-256 and validity.

    The table is in the module docstring. A quarantined transfer never blocks a name: a
    corrected file may follow a broken one.
    """
    rows = list(known)
    if door is Door.PUSH:
        kept = [row for row in rows if S(row.state) is not S.QUARANTINED]
        same = next((row for row in kept if row.sha256 == sha256), None)
        if same is not None:
            return SettleDecision(Settlement.IDENTICAL_REPEAT, same.id)
        if kept:
            return SettleDecision(Settlement.SAME_NAME_OTHER_CONTENT, kept[0].id)
        if not valid and any(row.sha256 == sha256 for row in rows):
            return SettleDecision(Settlement.KNOWN_INVALID)
    if not valid:
        return SettleDecision(Settlement.INVALID)
    return SettleDecision(Settlement.NEW)
