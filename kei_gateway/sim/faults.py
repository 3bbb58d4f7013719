"""Faults a simulator can inject, declared once, and how often each fired.

Options are plain data (:class:`Faults`); :class:`FaultState` holds the options
a running simulator uses (mutable, so a test can arm a fault between requests)
and counts every firing in :attr:`FaultState.fired` for tests to assert.
"""

from __future__ import annotations

import dataclasses
from collections import Counter
from dataclasses import dataclass, field

__all__ = ["Faults", "FaultState", "parse_fault", "FAULT_DOCS"]


@dataclass
class Faults:
    """Fault options of a simulator (all off by default)."""

    fail_put_503_times: int = 0
    """The first N PUTs are answered ``503`` with ``Retry-After``, nothing stored."""
    retry_after_seconds: int = 1
    """The ``Retry-After`` value of those 503s, in seconds."""
    reset_mid_body_times: int = 0
    """The first N PUT bodies are cut: the connection is aborted half-way through the body."""
    delay_seconds: float = 0.0
    """Every response waits this long (on the reactor clock) before it is handled."""
    delay_move_seconds: float = 0.0
    """Every MOVE waits this long before it is handled (an upload stays in flight while pulls go on)."""
    replay_412: int = 0
    """The first N successful MOVEs store the file, then answer ``412`` as if it had existed."""
    wrong_server_cert: bool = False
    """Serve a certificate from a CA no client trusts (every connection while set)."""


FAULT_DOCS: dict[str, str] = {
    "fail_put_503_times": "answer the first N PUTs 503 with Retry-After (nothing stored)",
    "retry_after_seconds": "the Retry-After value of those 503s, in seconds (default 1)",
    "reset_mid_body_times": "abort the connection half-way through the first N PUT bodies",
    "delay_seconds": "delay every response by this many seconds (reactor clock)",
    "delay_move_seconds": "delay every MOVE by this many seconds (the upload in flight, other requests not)",
    "replay_412": "store the first N MOVEs, then answer 412 as if the destination had existed",
    "wrong_server_cert": "serve a certificate from a CA the client does not trust",
}


@dataclass
class FaultState:
    """The options in force and how often each fault fired (``fired[name]``)."""

    faults: Faults = field(default_factory=Faults)
    fired: Counter[str] = field(default_factory=Counter)

    def take(self, name: str) -> bool:
        """Whether the counted fault *name* fires now (``fired[name] < faults.<name>``); counts it if so."""
        if self.fired[name] < int(getattr(self.faults, name)):
            self.fired[name] += 1
            return True
        return False

    def note(self, name: str) -> None:
        """Count one firing of an always-on fault (``delay_seconds``, ``wrong_server_cert``)."""
        self.fired[name] += 1


def parse_fault(text: str, faults: Faults) -> Faults:
    """Apply one ``--fault NAME[=VALUE]`` to *faults* (a copy); ValueError with a reason.

    A bare ``NAME`` means ``true`` for a flag and ``1`` for a count.
    """
    name, sep, value = text.partition("=")
    name = name.strip().replace("-", "_")
    fields = {f.name: f for f in dataclasses.fields(Faults)}
    if name not in fields:
        raise ValueError(f"unknown fault {name!r}; known: {', '.join(fields)}")
    kind = type(getattr(Faults(), name))
    raw = value.strip() if sep else ""
    try:
        parsed: object
        if kind is bool:
            if raw.lower() not in ("", "1", "true", "yes", "on", "0", "false", "no", "off"):
                raise ValueError(raw)
            parsed = raw.lower() in ("", "1", "true", "yes", "on")
        elif kind is int:
            parsed = int(raw) if raw else 1
            if parsed < 0:  # type: ignore[operator]
                raise ValueError(raw)
        else:
            parsed = float(raw)
            if parsed < 0:  # type: ignore[operator]
                raise ValueError(raw)
    except ValueError:
        raise ValueError(f"fault {name}: {raw!r} is not a valid {kind.__name__} (>= 0)") from None
    changed = dataclasses.replace(faults)
    setattr(changed, name, parsed)
    return changed
