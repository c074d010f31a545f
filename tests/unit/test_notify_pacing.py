"""The notifier's pacer (infrastructure/notify_pacing.py): NOTIFY steps take what the
PUBLISHes leave, on a fake monotonic clock."""

from __future__ import annotations

import pytest

from infrastructure.notify_pacing import (DECREASE, INCREASE, MIN_BATCHES, PERIOD,
                                          NotifyPacer)


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock():
    return Clock()


def period(p: NotifyPacer, clock: Clock, late: int, on_time: int) -> None:
    """One judged period: `late` batches past the target, `on_time` within it."""
    step = PERIOD * 1.01 / (late + on_time)  # judged at the last one
    for n in range(late + on_time):
        clock.now += step
        p.publishes(waited=0.050 if n < late else 0.001)


def pacer(clock, **kw) -> NotifyPacer:
    kw.setdefault("target", 0.010)
    kw.setdefault("min_share", 0.05)
    kw.setdefault("burst", 0.005)
    kw.setdefault("window", 0.1)
    return NotifyPacer(clock=clock, **kw)


def test_without_publishes_every_step_runs_whole(clock):
    p = pacer(clock)
    assert p.room(5000) == 5000 and p.ready_in() == 0.0
    p.spent(10.0, 5000)  # even a long step: nothing waits for the store
    assert p.room(5000) == 5000


def test_steps_are_cut_to_a_burst_and_too_many_late_batches_cut_the_share(clock):
    p = pacer(clock)
    p.spent(0.1, 1000)  # measured: 100 us per NOTIFY
    period(p, clock, late=1, on_time=99)  # 1% late: not the NOTIFYs' doing
    assert p.share == 1.0 and p.late == 1
    # 5 ms of burst at 100 us each: a waiting batch is held up at most about that long.
    assert p.room(1000) == 50
    assert p.room(10) == 10
    period(p, clock, late=5, on_time=95)  # 5% late: NOTIFYs yield
    assert p.share == pytest.approx(DECREASE) and p.yielded == 1
    assert 0 < p.room(1000) <= 50


def test_the_share_falls_to_its_floor_and_comes_back_a_tenth_a_period(clock):
    p = pacer(clock)
    for _ in range(20):
        period(p, clock, late=10, on_time=10)
    assert p.share == 0.05  # watchers are never starved
    period(p, clock, late=0, on_time=MIN_BATCHES)
    assert p.share == pytest.approx(0.05 + INCREASE)
    for _ in range(10):
        period(p, clock, late=0, on_time=MIN_BATCHES)
    assert p.share == 1.0
    late = p.late
    p.publishes(waited=None)  # not known: not counted
    p.publishes(waited=-3.0)  # another clock than ours: not counted either
    p.publishes(waited=1e9)
    assert p._period_batches == 0 and p.late == late


def test_a_period_needs_enough_batches_to_be_judged(clock):
    p = pacer(clock)
    for _ in range(MIN_BATCHES - 1):
        clock.now += PERIOD
        p.publishes(waited=0.050)
    assert p.share == 1.0  # too few to judge yet (they stay in the period)
    clock.now += 0.01
    p.publishes(waited=0.050)
    assert p.share == pytest.approx(DECREASE)


def test_the_share_is_a_token_bucket_of_the_store_time(clock):
    p = pacer(clock)
    for _ in range(20):
        period(p, clock, late=10, on_time=10)
    assert p.share == 0.05  # at its floor
    p.spent(0.010, 50)  # the 5 ms burst used up and 5 ms more, by one long step
    assert p.room(10) == 0 and p.paced_steps == 1
    # 5 ms owed at 5% of the elapsed time: 100 ms until the next step may run.
    assert p.ready_in() == pytest.approx(0.1, abs=0.001)
    clock.now += 0.050
    p.publishes(waited=0.050)  # still flowing
    assert p.room(10) == 0
    clock.now += 0.060
    p.publishes(waited=0.050)
    assert 0 < p.room(1000) <= 50
    assert p.ready_in() == 0.0


def test_once_publishes_stop_for_the_window_the_steps_are_unlimited_again(clock):
    p = pacer(clock)
    for _ in range(20):
        period(p, clock, late=10, on_time=10)
    p.spent(0.5, 100)
    assert p.room(10) == 0
    assert p.ready_in() == pytest.approx(0.1)  # the window ends before the debt is paid
    clock.now += 0.1
    assert p.room(10) == 10 and p.ready_in() == 0.0
    # A new busy spell starts with a full bucket, at the share it had.
    p.publishes(waited=0.001)
    assert p.room(1) == 1


def test_bad_settings_are_refused():
    for kw in ({"target": 0}, {"min_share": 0}, {"min_share": 1.5}, {"burst": 0}):
        with pytest.raises(ValueError):
            NotifyPacer(**kw)
