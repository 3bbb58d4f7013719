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


def push_peers_config(ca_dir: str) -> str:
    """``[peers.mpn]`` and ``[peers.jnks]`` that may push from 127.0.0.1 (CAs ``<ca_dir>/<peer>-ca.pem``),
    with their inbound flows: the push listener's tests, unit and integration."""
    return f"""
[peers.mpn]
url = "https://127.0.0.1:9/upload/"
results_url = "https://127.0.0.1:9/mpn-results/"
ca = "{ca_dir}/mpn-ca.pem"
allow = ["127.0.0.0/8"]
push_allow = ["127.0.0.1/32"]

[peers.jnks]
url = "https://127.0.0.1:9/jnks/"
results_url = "https://127.0.0.1:9/results/"
ca = "{ca_dir}/jnks-ca.pem"
allow = ["127.0.0.0/8"]
push_allow = ["127.0.0.1/32"]

[flows.mpn-results]
peer = "mpn"
inbox = "inbox/mpn-results"

[flows.jnks-receipts]
peer = "jnks"
inbox = "inbox/jnks-receipts"
"""
