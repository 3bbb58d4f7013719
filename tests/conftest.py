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
