"""The allocator thresholds set at the entry point: block-sized buffers reuse pages (issue 13)."""

from __future__ import annotations

import subprocess
import sys

import pytest

pytestmark = pytest.mark.integration

PROGRAM = """
import resource, sys
if sys.argv[1] == "set":
    from kei_gateway.runtime.malloc import keep_block_buffers
    assert keep_block_buffers()
def block():  # what validating one block allocates and frees: the joined block, its classes, its rows, numbers
    a = bytearray(1 << 20); b = bytearray(512 << 10); c = bytearray(512 << 10); d = bytearray(300 << 10)
    del a, b, c, d
for _ in range(3):
    block()
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(20):
    block()
print(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
"""


def faults(mode: str) -> int:
    # A process of its own: the thresholds are process-wide and glibc adapts its defaults to what it saw.
    return int(subprocess.run([sys.executable, "-c", PROGRAM, mode], check=True, capture_output=True,
                              text=True).stdout)


def test_when_the_thresholds_are_set_then_freed_block_buffers_are_reused_without_page_faults() -> None:
    pages = 20 * ((1 << 20) + (1324 << 10)) >> 12  # every page of every block
    assert faults("default") > pages // 2  # glibc's defaults: most of them faulted in again each time
    assert faults("set") < pages // 20
