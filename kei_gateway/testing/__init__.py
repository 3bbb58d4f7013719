"""In-memory twins shipped with the package (as treq ships ``StubTreq``), so every consumer tests against the same doubles."""

from kei_gateway.testing.runtime import RecordingNotifier, SynchronousBlocking
from kei_gateway.testing.store import DUMMY_STORE_KEY, InMemoryBlobStore

__all__ = ["SynchronousBlocking", "RecordingNotifier", "InMemoryBlobStore", "DUMMY_STORE_KEY"]
