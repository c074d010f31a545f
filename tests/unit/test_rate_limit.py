import pytest

from sip_adapter.rate_limit import RateLimiter


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
