"""The allocator thresholds set at the entry point: block-sized buffers reuse pages (issue 13)."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from kei_gateway.runtime.malloc import ARENA_MAX

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


THREADS_PROGRAM = """
import re, sys, threading
if sys.argv[1] == "set":
    from kei_gateway.runtime.malloc import keep_block_buffers
    assert keep_block_buffers()
barrier = threading.Barrier(9)
def work():  # what a pool thread does to the C heap: blocks of a few tens of KiB, held for a while
    held = [bytearray(64 << 10) for _ in range(16)]
    barrier.wait()
threads = [threading.Thread(target=work) for _ in range(8)]
for thread in threads:
    thread.start()
barrier.wait()
maps = [re.match(r"([0-9a-f]+)-\\S+ (\\S+) \\S+ \\S+ \\d+\\s*(\\S*)", line).groups()
        for line in open("/proc/self/maps")]
# A glibc thread arena: an anonymous heap at a 64 MiB boundary, followed by its inaccessible reserve.
print(sum(1 for (start, perms, name), (_, after, after_name) in zip(maps, maps[1:])
          if not name and perms != "---p" and int(start, 16) % (64 << 20) == 0 and after == "---p" and not after_name))
for thread in threads:
    thread.join()
"""


def arenas(mode: str) -> int:
    return int(subprocess.run([sys.executable, "-c", THREADS_PROGRAM, mode], check=True, capture_output=True,
                              text=True, env={k: v for k, v in os.environ.items() if k != "MALLOC_ARENA_MAX"}).stdout)


def test_when_eight_threads_allocate_at_once_then_they_share_one_arena_besides_the_main_heap() -> None:
    """Issues 11/16: each arena keeps up to TRIM_THRESHOLD free, so their number must not follow the threads'."""
    assert arenas("default") >= 4  # glibc's default: up to 8 per core, one per thread here
    assert arenas("set") == ARENA_MAX - 1  # the main heap ([heap]) is the other one
