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
