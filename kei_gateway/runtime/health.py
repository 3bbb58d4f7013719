"""Health (``/healthz``) and readiness (``/readyz``) checks.

healthz: the process answers, the database answers, the store directory is writable.
readyz: healthz, plus the gateway's certificate is valid and every peer answered its
last check (peers come with the transfer flows; until then there is none to check).
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field

from twisted.internet import defer
from twisted.internet.interfaces import IReactorTime

from kei_gateway.runtime.blocking import Blocking

__all__ = ["CheckResult", "HealthReport", "HealthChecks", "probe_writable"]


@dataclass(frozen=True)
class CheckResult:
    name: str
    ok: bool
    detail: str = "ok"


@dataclass(frozen=True)
class HealthReport:
    checks: list[CheckResult] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return all(check.ok for check in self.checks)

    def as_json(self) -> dict[str, object]:
        return {"status": "ok" if self.ok else "fail",
                "checks": {c.name: {"ok": c.ok, "detail": c.detail} for c in self.checks}}


def probe_writable(directory: str) -> None:
    """Create, fsync and remove a probe file in *directory* (blocking); raise if that fails."""
    os.makedirs(directory, mode=0o700, exist_ok=True)
    fd, path = tempfile.mkstemp(prefix=".probe-", dir=directory)
    try:
        os.write(fd, b"ok")
        os.fsync(fd)
    finally:
        os.close(fd)
        os.unlink(path)


Check = Callable[[], "defer.Deferred[object]"]
StateCheck = Callable[[], CheckResult]


class HealthChecks:
    """Runs the checks, each bounded by *timeout* seconds on *clock*."""

    def __init__(self, clock: IReactorTime, blocking: Blocking, database_ping: Callable[[], None],
                 store_dir: str, timeout: float = 5.0) -> None:
        self._clock = clock
        self._blocking = blocking
        self._database_ping = database_ping
        self._store_dir = store_dir
        self._timeout = timeout
        self.readiness_checks: list[StateCheck] = []
        """Synchronous checks that only readiness needs (certificates, peers)."""

    def _bounded(self, name: str, d: defer.Deferred[object]) -> defer.Deferred[CheckResult]:
        d.addTimeout(self._timeout, self._clock)

        def failed(failure: object) -> CheckResult:
            message = getattr(failure, "getErrorMessage", lambda: str(failure))()
            if "TimeoutError" in repr(failure) or "timed out" in message.lower():
                message = f"no answer within {self._timeout:g}s"
            return CheckResult(name, False, message)

        return d.addCallbacks(lambda _: CheckResult(name, True), failed)

    def healthz(self) -> defer.Deferred[HealthReport]:
        checks = [
            defer.succeed(CheckResult("process", True)),
            self._bounded("database", self._blocking.run(self._database_ping)),
            self._bounded("store", self._blocking.run(probe_writable, self._store_dir)),
        ]
        gathered = defer.gatherResults(checks)
        return gathered.addCallback(lambda results: HealthReport(list(results)))

    def readyz(self) -> defer.Deferred[HealthReport]:
        def more(report: HealthReport) -> HealthReport:
            return HealthReport(report.checks + [check() for check in self.readiness_checks])

        return self.healthz().addCallback(more)
