"""``kei-gateway run`` at start, before it serves: what it does to the ledger and the store."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest

from kei_gateway.adapters.store.blobs import FileBlobStore
from kei_gateway.adapters.store.keys import StoreKeyring
from kei_gateway.runtime import daemon
from kei_gateway.config import read_config
from kei_gateway.sim.harness import demo_config_text
from kei_gateway.testing import DUMMY_STORE_KEY, RecordingNotifier

AUDIT_KEY = bytes(range(101, 133))


@pytest.mark.integration  # opens a SQLite ledger file
def test_when_the_store_holds_a_blob_the_ledger_does_not_know_then_the_start_keeps_it_for_the_purge(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    credentials = tmp_path / "credentials"
    credentials.mkdir()
    for name, key in (("store.key", DUMMY_STORE_KEY), ("audit.key", AUDIT_KEY)):
        (credentials / name).write_bytes(key)
        os.chmod(credentials / name, 0o600)
    path = tmp_path / "k.toml"
    path.write_text(demo_config_text(str(tmp_path), 9464), encoding="utf-8")
    config = read_config(str(path))
    (tmp_path / "state" / "store").mkdir(parents=True)
    store = FileBlobStore(str(tmp_path / "state" / "store"), StoreKeyring(DUMMY_STORE_KEY))
    store.write("out-queued-elsewhere", [b"dummy payload\r\n"])  # e.g. database.url names a new, empty ledger
    served: list[Any] = []

    def serve(*args: Any, **kwargs: Any) -> bool:
        served.append(args)
        return True

    monkeypatch.setattr(daemon, "serve", serve)

    assert daemon.start(config, str(path), RecordingNotifier(), None)  # type: ignore[arg-type]

    assert served, "the start stopped before serving"
    assert store.exists("out-queued-elsewhere")


@pytest.mark.integration  # starts a process (the migration's child, and a clean interpreter)
def test_when_the_daemon_migrates_then_alembic_and_the_airis_reader_stay_out_of_its_process(tmp_path: Path) -> None:
    """The migration runs in a forked child (``migrate_apart``) and the AIRIS 突合 flow is imported only when
    configured: a fresh interpreter that imports what ``kei-gateway run`` imports and migrates a new ledger
    has neither Alembic, Mako nor pyzipper loaded (they cost the daemon ~11 MB for its whole life)."""
    import subprocess
    import sys

    script = f"""
import sys
from kei_gateway.adapters.ledger import create_ledger_engine
import kei_gateway.cli.daemon, kei_gateway.runtime.service
from kei_gateway.runtime.daemon import migrate_apart
revision = migrate_apart(create_ledger_engine("sqlite:///{tmp_path}/ledger.sqlite3"))
print(sorted(m.split(".")[0] for m in sys.modules if m.split(".")[0] in ("alembic", "mako", "pyzipper")))
print(revision)
"""
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    loaded, revision = result.stdout.splitlines()
    assert loaded == "[]"
    from kei_gateway.adapters.ledger.db import head_revision
    assert revision == head_revision()


@pytest.mark.integration  # opens a SQLite file and forks the migration's child
def test_when_the_ledger_file_is_not_a_database_then_the_migration_fails_with_the_drivers_words(tmp_path: Path) -> None:
    from kei_gateway.adapters.ledger import create_ledger_engine

    (tmp_path / "ledger.sqlite3").write_bytes(b"dummy, not a database\n" * 200)
    with pytest.raises(daemon.MigrationFailed, match="DatabaseError: file is not a database"):
        daemon.migrate_apart(create_ledger_engine(f"sqlite:///{tmp_path}/ledger.sqlite3"))


def test_when_the_daemon_starts_serving_then_what_exists_at_start_is_frozen_out_of_the_collector() -> None:
    """Issue 16: a full collection walked every module, layout table and service object (100–270 ms with every
    thread stopped, in the middle of relays); frozen at start, it walks only what was made since."""
    import gc

    class Cycle:
        def __init__(self) -> None:
            self.me = self

    Cycle()  # garbage in a cycle: collected first, not frozen with the living
    gc.unfreeze()
    try:
        frozen = daemon.freeze_startup_objects()
        assert frozen == gc.get_freeze_count() > 1000
        assert not [o for o in gc.get_objects() if isinstance(o, Cycle)], "garbage collected before the freeze"
    finally:
        gc.unfreeze()


class _PgError(Exception):
    """Stands for a psycopg error: ``sqlstate`` None when no server answered."""

    def __init__(self, message: str, sqlstate: str | None) -> None:
        super().__init__(message)
        self.sqlstate = sqlstate


def _operational(message: str, sqlstate: str | None) -> Exception:
    from sqlalchemy.exc import OperationalError

    return OperationalError("SELECT 1", {}, _PgError(message, sqlstate))


def test_when_postgresql_cannot_be_reached_at_start_then_the_start_waits_for_it_and_says_so() -> None:
    """Hosts and database back together after a power cut: the gateway's start waits (bounded) instead of spending
    the unit's five restarts in half a minute."""
    from kei_gateway.runtime.daemon import wait_for_database

    answers: list[Exception | None] = [_operational("connection refused", None),
                                       _operational("the database system is starting up", "57P03"), None]
    clock, naps = [0.0], []

    def probe() -> None:
        answer = answers.pop(0)
        if answer is not None:
            raise answer

    def sleep(seconds: float) -> None:
        naps.append(seconds)
        clock[0] += seconds

    notifier = RecordingNotifier()
    wait_for_database(probe, notifier, patience=60, sleep=sleep, monotonic=lambda: clock[0])
    assert answers == [] and naps == [1.0, 1.0]
    statuses = notifier.states("STATUS=")
    assert len(statuses) == 2 and all(m.startswith("STATUS=Waiting for the ledger database: ") for m in statuses)


def _raising(error: Exception) -> Any:
    def probe() -> None:
        raise error

    return probe


def test_when_the_database_answers_no_or_never_comes_then_the_start_fails_with_its_error() -> None:
    from kei_gateway.adapters.ledger.db import may_come_back
    from kei_gateway.runtime.daemon import wait_for_database

    clock = [0.0]

    def sleep(seconds: float) -> None:
        clock[0] += seconds

    wrong = _operational('password authentication failed for user "kei"', "28P01")
    with pytest.raises(type(wrong)):  # waiting will not change the answer: at once
        wait_for_database(_raising(wrong), RecordingNotifier(), patience=60, sleep=sleep, monotonic=lambda: clock[0])
    assert clock[0] == 0.0
    away = _operational("connection refused", None)
    with pytest.raises(type(away)):
        wait_for_database(_raising(away), RecordingNotifier(), patience=5, sleep=sleep, monotonic=lambda: clock[0])
    assert clock[0] == 5.0, "given up at its patience"
    assert may_come_back(_operational("server closed the connection", "08006"))
    assert not may_come_back(_operational('database "kg" does not exist', "3D000"))
    assert not may_come_back(RuntimeError("not the driver's"))
