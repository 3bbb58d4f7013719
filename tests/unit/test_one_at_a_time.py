"""OneAtATime: the coalescing of the watcher's scans, the sender's passes and the AIRIS checks."""

from __future__ import annotations

from collections.abc import Callable

from twisted.internet import defer

from kei_gateway.runtime.one_at_a_time import OneAtATime


class _Jobs:
    def __init__(self) -> None:
        self.started: list[defer.Deferred[object]] = []

    def __call__(self) -> defer.Deferred[object]:
        d: defer.Deferred[object] = defer.Deferred()
        self.started.append(d)
        return d


def _runner(jobs: _Jobs, allowed: list[bool] | None = None, more: Callable[[object], bool] = lambda _: False,
            schedule: Callable[[Callable[[], object]], object] | None = None) -> OneAtATime:
    gate = allowed if allowed is not None else [True]
    return OneAtATime(jobs, may_start=lambda: gate[0], more=more, schedule=schedule)


def test_when_requests_arrive_during_a_run_then_exactly_one_more_run_follows_it() -> None:
    jobs = _Jobs()
    runner = _runner(jobs)
    first = runner.request()
    assert runner.request() is first and runner.request() is first
    assert len(jobs.started) == 1
    jobs.started[0].callback(None)
    assert len(jobs.started) == 2  # the three requests became one more run
    jobs.started[1].callback(None)
    assert len(jobs.started) == 2 and runner.in_flight is None


def test_when_it_may_not_start_then_nothing_runs_and_none_is_returned() -> None:
    jobs = _Jobs()
    allowed = [False]
    runner = _runner(jobs, allowed)
    assert runner.request() is None and jobs.started == []


def test_when_it_stops_during_a_run_then_the_asked_for_run_does_not_follow() -> None:
    jobs = _Jobs()
    allowed = [True]
    runner = _runner(jobs, allowed)
    runner.request()
    runner.request()
    allowed[0] = False
    jobs.started[0].callback(None)
    assert len(jobs.started) == 1 and runner.in_flight is None


def test_when_a_result_asks_for_more_then_the_next_run_goes_through_the_scheduler() -> None:
    jobs = _Jobs()
    scheduled: list[Callable[[], object]] = []
    runner = _runner(jobs, more=lambda result: result is True, schedule=scheduled.append)
    runner.request()
    jobs.started[0].callback(True)
    assert len(jobs.started) == 1 and len(scheduled) == 1  # not started recursively
    scheduled.pop()()
    assert len(jobs.started) == 2
    jobs.started[1].callback(False)
    assert scheduled == []


def test_when_a_run_fails_then_the_runner_is_free_again() -> None:
    jobs = _Jobs()
    runner = _runner(jobs)
    d = runner.request()
    assert d is not None
    jobs.started[0].errback(RuntimeError("boom"))
    assert runner.in_flight is None
    assert runner.request() is not None and len(jobs.started) == 2
