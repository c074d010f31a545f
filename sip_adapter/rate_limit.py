"""Per-source request rate limiting: a token bucket per source address, time passed in.

A source that sends faster than `rate` requests per second (after a burst of `burst`)
gets 503 with Retry-After until its bucket refills. Memory is bounded: at most
`max_sources` buckets, least recently seen evicted first (an evicted source starts again
with a full bucket, which errs on the side of serving it).
"""

from __future__ import annotations

from collections import OrderedDict


class RateLimiter:
    def __init__(self, rate: float, burst: float | None = None, max_sources: int = 65536) -> None:
        if rate <= 0:
            raise ValueError("rate must be positive")
        self.rate = float(rate)
        self.burst = float(burst if burst is not None else max(1.0, rate))
        self.max_sources = max_sources
        self._buckets: OrderedDict[str, tuple[float, float]] = OrderedDict()

    def allow(self, source: str, now: float) -> bool:
        """Take one token for `source`; False when it has none left."""
        tokens, last = self._buckets.pop(source, (self.burst, now))
        tokens = min(self.burst, tokens + (now - last) * self.rate)
        allowed = tokens >= 1.0
        if allowed:
            tokens -= 1.0
        self._buckets[source] = (tokens, now)
        if len(self._buckets) > self.max_sources:
            self._buckets.popitem(last=False)
        return allowed

    def retry_after(self, source: str, now: float) -> int:
        """Whole seconds until `source` has a token again (at least 1)."""
        tokens, last = self._buckets.get(source, (self.burst, now))
        tokens = min(self.burst, tokens + (now - last) * self.rate)
        missing = max(0.0, 1.0 - tokens)
        return max(1, int(missing / self.rate + 0.999))

    def __len__(self) -> int:
        return len(self._buckets)
