"""The bench-only per-push timeline and reactor stall watch (issue 16): inert when off, exact when on."""

from __future__ import annotations

import io
import json

from twisted.internet import task

from kei_gateway.runtime.timeline import GcWatch, StallWatch, Timeline


class FakeNow:
    def __init__(self) -> None:
        self.value = 100.0

    def __call__(self) -> float:
        return self.value


def lines(out: io.StringIO) -> list[dict]:
    return [json.loads(line) for line in out.getvalue().splitlines()]


def test_when_the_timeline_is_off_then_stamps_keep_nothing_and_write_nothing() -> None:
    timeline = Timeline(None)
    push = object()
    timeline.stamp(push, "received")
    timeline.rekey(push, 7)
    timeline.close(7, "done")
    assert not timeline.enabled and timeline._open == {}


def test_when_a_push_is_relayed_then_one_line_holds_its_stages_under_its_transfer_id() -> None:
    out, now = io.StringIO(), FakeNow()
    timeline = Timeline(out, now)
    push = object()
    timeline.stamp(push, "received")
    now.value = 100.25
    timeline.stamp(push, "committed")
    timeline.rekey(push, 7)
    timeline.drop(push)  # the slot's release after the re-key must not lose the stamps
    now.value = 100.5
    timeline.stamp(7, "published")
    now.value = 101.0
    timeline.close(7, "done")
    assert lines(out) == [{"push": 7, "received": 100.0, "committed": 100.25, "published": 100.5, "done": 101.0}]


def test_when_a_file_was_not_pushed_then_its_relay_writes_no_line() -> None:
    out = io.StringIO()
    timeline = Timeline(out, FakeNow())
    timeline.stamp(9, "relay_start")  # a pulled file: opened by the relay itself
    timeline.drop(9)
    timeline.close(9, "done")
    assert out.getvalue() == ""


def test_when_a_reactor_tick_comes_late_then_the_stall_is_written_with_its_lateness() -> None:
    out, now, clock = io.StringIO(), FakeNow(), task.Clock()
    watch = StallWatch(clock, Timeline(out, now), now, interval=0.005, threshold=0.005)
    watch.start()
    now.value += 0.005
    clock.advance(0.005)  # on time
    now.value += 0.035  # the reactor was blocked 30 ms past the next tick
    clock.advance(0.035)
    watch.stop()
    assert lines(out) == [{"stall": 0.03, "at": now.value}]
    assert clock.getDelayedCalls() == []


def test_when_the_timeline_is_off_then_the_stall_watch_never_ticks() -> None:
    clock = task.Clock()
    StallWatch(clock, Timeline(None)).start()
    assert clock.getDelayedCalls() == []


def test_when_a_collection_takes_longer_than_the_threshold_then_it_is_written_with_its_generation() -> None:
    out, now = io.StringIO(), FakeNow()
    watch = GcWatch(Timeline(out, now), now, threshold=0.005)
    watch("start", {"generation": 0})
    now.value += 0.001  # a short one: not written
    watch("stop", {"generation": 0})
    watch("start", {"generation": 2})
    now.value += 0.04
    watch("stop", {"generation": 2})
    assert lines(out) == [{"gc": 0.04, "generation": 2, "at": now.value}]


def test_when_the_timeline_is_off_then_no_gc_callback_is_installed() -> None:
    import gc

    watch = GcWatch(Timeline(None))
    watch.install()
    assert watch not in gc.callbacks
