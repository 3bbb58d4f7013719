"""Small helpers shared by the unit tests."""

from __future__ import annotations

import shutil
import tempfile

from twisted.trial.unittest import SynchronousTestCase


def temporary_directory(case: SynchronousTestCase) -> str:
    """An absolute temporary directory removed when *case* ends (trial's mktemp is cwd-relative)."""
    path = tempfile.mkdtemp(prefix="kei-gateway-test-")
    case.addCleanup(shutil.rmtree, path, True)
    return path
