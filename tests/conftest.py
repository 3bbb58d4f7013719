"""Fixtures shared by all tests: the ledger database on SQLite and on PostgreSQL.

``ledger_url``
    A fresh, empty ledger database URL, once on SQLite (a file in ``tmp_path``) and
    once on PostgreSQL (a new database in the session's throwaway cluster, see
    :mod:`tests.pg`): a test taking it runs on both. Migrate it yourself
    (``upgrade(create_ledger_engine(ledger_url))``).

``postgresql_url``
    A fresh, empty PostgreSQL database URL only.

The cluster is started once per session, on first use. If PostgreSQL cannot be
started the PostgreSQL variants are skipped with the reason (listed by ``-ra`` and
in the summary) — except when ``CI`` is set, where that is an error: CI must run them.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from typing import Any
from pathlib import Path

import pytest

from tests.pg import Cluster, start_cluster, unavailable

_pg_problem: list[str] = []


def _cannot_run_postgresql(reason: str) -> None:
    _pg_problem.append(reason)
    if os.environ.get("CI"):
        pytest.fail(f"PostgreSQL tests cannot run under CI: {reason}", pytrace=False)
    pytest.skip(f"PostgreSQL not available: {reason}")


@pytest.fixture(scope="session")
def pg_cluster() -> Iterator[Cluster]:
    if _pg_problem:
        _cannot_run_postgresql(_pg_problem[0])
    reason = unavailable()
    if reason is not None:
        _cannot_run_postgresql(reason)
    try:
        cluster = start_cluster()
    except RuntimeError as error:
        _cannot_run_postgresql(f"the throwaway cluster did not start: {error}")
        raise  # not reached
    try:
        yield cluster
    finally:
        cluster.stop()


@pytest.fixture
def postgresql_url(pg_cluster: Cluster) -> Iterator[str]:
    url = pg_cluster.create_database()
    yield url
    pg_cluster.drop_database(url)


@pytest.fixture(params=["sqlite", "postgresql"])
def ledger_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path}/ledger.sqlite3"
    url: str = request.getfixturevalue("postgresql_url")
    return url


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    if _pg_problem:
        terminalreporter.write_line(f"PostgreSQL tests were SKIPPED: {_pg_problem[0]}", yellow=True, bold=True)


# --------------------------------------------------------------------------- the tiers

_INTEGRATION_DIR = Path(__file__).parent / "integration"
_DATABASE_FIXTURES = {"ledger_url", "postgresql_url", "pg_cluster"}
"""A test taking one of these runs on a real database (a SQLite file, PostgreSQL): an integration test."""


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Every test under tests/integration/, and every test on a real database (:data:`_DATABASE_FIXTURES`),
    is an integration test, marked or not (a forgotten mark cannot smuggle a process into the unit tier)."""
    for item in items:
        if _INTEGRATION_DIR in Path(str(item.fspath)).parents or _DATABASE_FIXTURES & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.integration)


class UnitTierViolation(AssertionError):
    """A unit test did what only an integration test may (start a process, open a network socket)."""


@pytest.fixture(autouse=True)
def _unit_tier_guard(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> None:
    """A test without ``@pytest.mark.integration`` fails if it starts a process, binds or connects a network
    socket, or opens a SQLite file.

    Unit tests take milliseconds: twins (kei_gateway.testing), ``task.Clock``, no process,
    no socket, no real clock, no SQLite file. What needs the real thing is an integration test.
    """
    if request.node.get_closest_marker("integration") is not None:
        return
    import socket
    import subprocess

    where = request.node.nodeid

    def refuse(what: str) -> UnitTierViolation:
        return UnitTierViolation(f"{where}: a unit test {what}; use the twins of kei_gateway.testing, "
                                 "or mark the test @pytest.mark.integration")

    def no_process(*args: object, **kwargs: object) -> None:
        raise refuse("started a process")

    monkeypatch.setattr(subprocess.Popen, "__init__", no_process)
    monkeypatch.setattr(os, "fork", no_process)
    monkeypatch.setattr(os, "posix_spawn", no_process)
    monkeypatch.setattr(os, "posix_spawnp", no_process)

    real_bind, real_connect = socket.socket.bind, socket.socket.connect

    def inet(sock: socket.socket) -> bool:
        return sock.family in (socket.AF_INET, socket.AF_INET6)

    def bind(sock: socket.socket, address: Any) -> None:
        if inet(sock):
            raise refuse(f"bound a network socket to {address!r}")
        real_bind(sock, address)

    def connect(sock: socket.socket, address: Any) -> None:
        if inet(sock):
            raise refuse(f"connected a network socket to {address!r}")
        real_connect(sock, address)

    monkeypatch.setattr(socket.socket, "bind", bind)
    monkeypatch.setattr(socket.socket, "connect", connect)

    import sqlite3

    real_sqlite_connect = sqlite3.connect

    def sqlite_connect(database: Any, *args: Any, **kwargs: Any) -> sqlite3.Connection:
        if str(database) not in (":memory:", "") and not str(database).startswith("file::memory:"):
            raise refuse(f"opened the SQLite file {database}")
        return real_sqlite_connect(database, *args, **kwargs)

    monkeypatch.setattr(sqlite3, "connect", sqlite_connect)
    monkeypatch.setattr(sqlite3.dbapi2, "connect", sqlite_connect)  # what SQLAlchemy calls
