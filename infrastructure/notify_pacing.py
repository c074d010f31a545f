"""PUBLISH first: how much of the store process's time the notifier's steps may take.

One store process decides every PUBLISH and records every NOTIFY. Without a limit, a
resource with ten watchers costs ten NOTIFY records per change, and under a steady
PUBLISH stream the notifier's steps (each tens of milliseconds of work) sit between the
batches: every PUBLISH waits for them, and the publishers see it (bench/notify_bench.py
measured PUBLISH p50 64 ms, p99 192 ms at 1,000 PUBLISH/s with 10,000 watchers before
this existed).

The pacer lets NOTIFY steps have whatever time the PUBLISHes do not need. Each batch
tells it how long its oldest request waited before the store began to decide it (queue
on the SIP side, pipe, steps in front of it). Every `PERIOD` (at least `MIN_BATCHES`
batches) it judges: if more than 2% of the batches waited longer than `target`, the
steps' share of the store's time is cut to 70% (never below `min_share`, so watchers
are never starved); otherwise a tenth is given back, up to all of it. Below a share of 1
the share is enforced as a token bucket of seconds; each step is cut to what its tokens
pay for at the measured cost per NOTIFY (at 1, to one burst), so a step never holds a
waiting batch for much more than `burst`. Changes the steps cannot tell meanwhile wait
in their subscriptions and fold into the next NOTIFY (latest state wins, as with a
NOTIFY in flight). Without PUBLISHes for `window`, the steps run unlimited.

Judging single batches did worse in bench/notify_bench.py: cutting the share for every
late batch (with a small give-back per on-time one) held NOTIFYs back at 500 PUBLISH/s,
where 1-2% of batches are late for reasons of their own (NOTIFY p50 0.4 s where it had
been 3 ms), and a larger give-back let a tenth of the batches be late at 4,000/s
(PUBLISH p99 33-67 ms over six runs).

Pure bookkeeping on a monotonic clock (the one asyncio's loop and the SIP side use, the
same in both processes on Linux): no I/O, no threads.
"""

from __future__ import annotations

import time
from typing import Callable

#: Seconds of batches judged together.
PERIOD = 0.5
#: The share of a period's batches that may wait past the target before the NOTIFY
#: share is cut: rare spikes (an fsync, a collection) are not the NOTIFYs' doing.
LATE_ALLOWED = 0.02
#: A period with too many late batches cuts the share to this fraction of itself...
DECREASE = 0.7
#: ...and one without gives this much back.
INCREASE = 0.1
#: Fewest batches that make a period's verdict (fewer: the period goes on).
MIN_BATCHES = 20
#: A wait this long or longer (or below 0) says the two processes' monotonic clocks
#: differ (they are one clock on Linux), not that the batch waited: not counted.
MAX_WAITED = 60.0


class NotifyPacer:
    def __init__(self, target: float = 0.010, min_share: float = 0.05,
                 burst: float = 0.005, window: float = 0.1,
                 clock: Callable[[], float] = time.monotonic) -> None:
        if target <= 0 or not 0 < min_share <= 1 or burst <= 0:
            raise ValueError("target and burst must be positive, min_share in (0, 1]")
        self.target = target
        self.min_share = min_share
        self.burst = burst
        self.window = window
        self.clock = clock
        self.share = 1.0
        self._busy_until = float("-inf")  # PUBLISHes flow until then
        self._tokens = burst
        self._refilled_at = clock()
        self._cost = 0.0001  # seconds per NOTIFY recorded; measured as steps run
        self.yielded = 0  # periods with too many late batches (each cut the share)
        self.late = 0  # batches that waited past the target
        self._period_started = clock()
        self._period_batches = 0
        self._period_late = 0
        self.paced_steps = 0  # steps cut short or put off while PUBLISHes flowed

    def publishes(self, waited: float | None = None) -> None:
        """A PUBLISH batch was decided; its oldest request had waited `waited` seconds
        (None: not known) before the store began to decide it."""
        now = self.clock()
        if now >= self._busy_until:  # a new busy spell starts with a full bucket
            self._tokens, self._refilled_at = self.burst, now
        else:
            self._refill(now)  # at the old share, up to now
        self._busy_until = now + self.window
        if waited is None or not 0 <= waited < MAX_WAITED:
            return  # not known, or not on one clock with ours: not counted
        self._period_batches += 1
        if waited > self.target:
            self._period_late += 1
            self.late += 1
        if now - self._period_started < PERIOD or self._period_batches < MIN_BATCHES:
            return
        if self._period_late > LATE_ALLOWED * self._period_batches:
            self.share = max(self.min_share, self.share * DECREASE)
            self.yielded += 1
        else:
            self.share = min(1.0, self.share + INCREASE)
        self._period_started, self._period_batches, self._period_late = now, 0, 0

    def _refill(self, now: float) -> None:
        self._tokens = min(self.burst,
                           self._tokens + (now - self._refilled_at) * self.share)
        self._refilled_at = now

    def room(self, wanted: int) -> int:
        """How many of `wanted` NOTIFYs the next step may record now (0: not yet)."""
        if wanted <= 0:
            return 0
        now = self.clock()
        if now >= self._busy_until:
            return wanted
        self._refill(now)
        if self._tokens <= 0:
            self.paced_steps += 1
            return 0
        # At a share of 1 the bucket refills as fast as time passes: the step is still
        # cut to a burst, so a batch that arrives meanwhile waits little (whole steps of
        # 256 held batches for 20-25 ms each when PUBLISHes began at 2,000/s).
        budget = self.burst if self.share >= 1.0 else self._tokens
        allowed = max(1, int(budget / self._cost))
        if allowed < wanted:
            self.paced_steps += 1
            return allowed
        return wanted

    def spent(self, seconds: float, notifies: int) -> None:
        """A step took `seconds` and recorded `notifies` NOTIFYs."""
        if notifies > 0 and seconds > 0:
            # A moving average: one slow step (a checkpoint, a page fault) does not
            # halve the next steps.
            self._cost = 0.8 * self._cost + 0.2 * (seconds / notifies)
        now = self.clock()
        if now < self._busy_until:
            self._refill(now)
            # (a debt of at most one burst: a whole step taken at a share of 1 does not
            # hold the next ones back for long once the share falls)
            self._tokens = max(-self.burst, self._tokens - seconds)

    def ready_in(self) -> float:
        """Seconds until a step may run (0: now)."""
        now = self.clock()
        if now >= self._busy_until:
            return 0.0
        self._refill(now)
        if self._tokens > 0:
            return 0.0
        # Tokens come back at `share` per second; PUBLISHes may also stop first.
        return min(-self._tokens / self.share + 1e-4, self._busy_until - now)
