"""PUBLISH first: how much of the store process's time the notifier's steps may take.

One store process decides every PUBLISH and records every NOTIFY. Without a limit, a
resource with ten watchers costs ten NOTIFY records per change, and under a steady
PUBLISH stream the notifier's steps (each tens of milliseconds of work) sit between the
batches: every PUBLISH waits for them, and the publishers see it (bench/notify_bench.py
measured PUBLISH p50 64 ms, p99 192 ms at 1,000 PUBLISH/s with 10,000 watchers before
this existed).

The pacer lets NOTIFY steps have whatever time the PUBLISHes do not need. Each batch
tells it how long its oldest request waited before the store began to decide it (queue
on the SIP side, pipe, steps in front of it). While that stays under `target`, the steps'
share of the store's time grows back towards all of it; each batch that waited longer
cuts the share (to 70%, never below `min_share`, so watchers are never starved); each
on-time batch gives a little back. The
share is enforced as a token bucket of seconds, and each step is cut to what its tokens
pay for at the measured cost per NOTIFY, so a step never holds a waiting batch for much
more than `burst`. Changes the steps cannot tell meanwhile wait in their subscriptions
and fold into the next NOTIFY (latest state wins, as with a NOTIFY in flight). Without
PUBLISHes for `window`, the steps run unlimited.

Pure bookkeeping on a monotonic clock (the one asyncio's loop and the SIP side use, the
same in both processes on Linux): no I/O, no threads.
"""

from __future__ import annotations

import time
from typing import Callable

#: A batch that waited longer than the target cuts the share to this fraction of itself.
DECREASE = 0.7
#: A batch that waited less gives the share back this much. The ratio of the two sets
#: how many batches may be late: at a share s, one late batch takes 0.3 s back, so
#: about one in (1 + 0.3 s / INCREASE) is late at equilibrium (2% at s = 0.3). With 0.01
#: a tenth of the batches were late and PUBLISH p99 at 4,000/s with 10,000 watchers was
#: 33-67 ms over six runs; with 0.002 it was 26-27 ms in two (bench/notify_bench.py,
#: 2026-11-30), at the cost of NOTIFYs folding more.
INCREASE = 0.002


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
        self.yielded = 0  # batches that waited past the target (each cut the share)
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
        if waited is None:
            return
        if waited > self.target:
            self.share = max(self.min_share, self.share * DECREASE)
            self.yielded += 1
        else:
            self.share = min(1.0, self.share + INCREASE)

    def busy(self) -> bool:
        return self.clock() < self._busy_until

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
            self._tokens -= seconds

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
