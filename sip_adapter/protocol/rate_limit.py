"""Per-source request rate limiting: a token bucket per source address, time passed in.

It runs before a request is parsed or matched to a transaction (retransmissions count
too), so a flood costs one dictionary lookup per datagram. A source within `rate`
requests per second (after a burst of `burst`) is admitted. Beyond that it is refused:
answered 503 with Retry-After, but only `rate` such answers per second (a second bucket),
so that no source can draw more answers than it is allowed requests; the rest is
dropped unanswered, which also keeps the server from being used as a reflector.

Memory is bounded: at most `max_sources` buckets, least recently seen evicted first (an
evicted source starts again with full buckets, which errs on the side of serving it).
"""

from __future__ import annotations

from collections import OrderedDict
from enum import IntEnum


class Verdict(IntEnum):
    ADMIT = 0
    REFUSE = 1  # answer 503 with Retry-After
    DROP = 2  # over the limit and over the answers allowed for refusals: say nothing


class RateLimiter:
    def __init__(self, rate: float, burst: float | None = None, max_sources: int = 65536) -> None:
        if rate <= 0:
            raise ValueError("rate must be positive")
        self.rate = float(rate)
        self.burst = float(burst if burst is not None else max(1.0, rate))
        self.refusal_burst = max(1.0, min(self.burst, self.rate))
        self.max_sources = max_sources
        # source -> (tokens, refusal tokens, last seen)
        self._buckets: OrderedDict[str, tuple[float, float, float]] = OrderedDict()

    def check(self, source: str, now: float) -> Verdict:
        """Take one token for `source` and say what to do with its request."""
        tokens, refusals, last = self._buckets.pop(source, (self.burst, self.refusal_burst,
                                                            now))
        elapsed = max(0.0, now - last) * self.rate
        tokens = min(self.burst, tokens + elapsed)
        refusals = min(self.refusal_burst, refusals + elapsed)
        if tokens >= 1.0:
            tokens -= 1.0
            verdict = Verdict.ADMIT
        elif refusals >= 1.0:
            refusals -= 1.0
            verdict = Verdict.REFUSE
        else:
            verdict = Verdict.DROP
        self._buckets[source] = (tokens, refusals, now)
        if len(self._buckets) > self.max_sources:
            self._buckets.popitem(last=False)
        return verdict

    def allow(self, source: str, now: float) -> bool:
        """Take one token for `source`; False when it has none left."""
        return self.check(source, now) is Verdict.ADMIT

    def retry_after(self, source: str, now: float) -> int:
        """Whole seconds until `source` has a token again (at least 1)."""
        tokens, _, last = self._buckets.get(source, (self.burst, self.refusal_burst, now))
        tokens = min(self.burst, tokens + max(0.0, now - last) * self.rate)
        missing = max(0.0, 1.0 - tokens)
        return max(1, int(missing / self.rate + 0.999))

    def __len__(self) -> int:
        return len(self._buckets)
