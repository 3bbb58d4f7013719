"""In-memory twins shipped with the package (as treq ships ``StubTreq``), so every consumer tests against the same doubles.

Each twin stands for a port of :mod:`kei_gateway.adapters.ports`; the unit tests of the
flows use them instead of SQLite files, sockets and processes.
"""

from typing import TYPE_CHECKING

from kei_gateway.testing.leases import InMemoryLeases, LeaseTable
from kei_gateway.testing.ledger import InMemoryLedger, InMemoryResultLedger
from kei_gateway.testing.peer import InMemoryPeer
from kei_gateway.testing.runtime import RecordingNotifier, SynchronousBlocking
from kei_gateway.testing.store import DUMMY_STORE_KEY, InMemoryBlobStore

__all__ = ["SynchronousBlocking", "RecordingNotifier", "InMemoryBlobStore", "DUMMY_STORE_KEY", "InMemoryLedger",
           "InMemoryResultLedger", "InMemoryPeer", "InMemoryLeases", "LeaseTable"]

if TYPE_CHECKING:  # mypy proves each twin fits its port
    from kei_gateway.adapters.ports import BlobStore, PeerClient, ResultLedgerPort, TransferLedgerPort

    _ledger: TransferLedgerPort = InMemoryLedger()
    _results: ResultLedgerPort = InMemoryResultLedger(InMemoryLedger())
    _store: BlobStore = InMemoryBlobStore()
    _peer: PeerClient = InMemoryPeer()
    from kei_gateway.adapters.ledger.leases import LeaseLedger
    from kei_gateway.runtime.leases import LeaseStore

    _leases: LeaseStore = InMemoryLeases(LeaseTable(), "a", 15.0)
    _real_leases: LeaseStore = LeaseLedger(None, "a", 15.0)  # type: ignore[arg-type]
