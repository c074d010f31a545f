import pytest

from sip_adapter.protocol.rate_limit import RateLimiter


def test_burst_then_refill_at_the_rate():
    limiter = RateLimiter(rate=10, burst=5)
    assert all(limiter.allow("a", 0.0) for _ in range(5))
    assert not limiter.allow("a", 0.0)
    assert limiter.retry_after("a", 0.0) == 1
    assert limiter.allow("a", 0.1)  # one token back after 1/rate seconds
    assert not limiter.allow("a", 0.1)
    assert all(limiter.allow("a", 10.0) for _ in range(5))


def test_sources_are_independent_and_memory_is_bounded():
    limiter = RateLimiter(rate=1, burst=1, max_sources=3)
    assert limiter.allow("a", 0) and not limiter.allow("a", 0)
    assert limiter.allow("b", 0)
    for source in "cdef":
        limiter.allow(source, 0)
    assert len(limiter) == 3
    assert limiter.allow("a", 0)  # evicted, so it starts with a full bucket


def test_rate_must_be_positive():
    with pytest.raises(ValueError):
        RateLimiter(0)


def test_beyond_the_limit_only_rate_refusals_per_second_are_answered():
    from sip_adapter.protocol.rate_limit import Verdict

    limiter = RateLimiter(rate=10, burst=5)
    verdicts = [limiter.check("a", 0.0) for _ in range(100)]
    assert verdicts.count(Verdict.ADMIT) == 5
    assert verdicts.count(Verdict.REFUSE) == 5  # a burst of answered refusals ...
    assert verdicts.count(Verdict.DROP) == 90   # ... and silence for the rest of the flood
    # A second later the source has both buckets back (10 each, capped at their bursts).
    later = [limiter.check("a", 1.0) for _ in range(20)]
    assert later.count(Verdict.ADMIT) == 5 and later.count(Verdict.REFUSE) == 5
