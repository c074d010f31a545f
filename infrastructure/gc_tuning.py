"""Garbage-collector settings for the long-running server processes.

Under load the SIP process allocates several container objects per request and keeps
each transaction for Timer J (32 s), so hundreds of thousands of objects are alive at
any time; with CPython's default thresholds (a young collection every 700 allocations,
older ones scanning that whole population) a profile of `esc serve` showed about a sixth
of the SIP process's time in the collector. Almost none of it is cyclic garbage: requests,
transactions and events are freed by reference counting. So the collector runs less often
and never rescans what start-up built (modules, configuration, the compositor's caches).
"""

from __future__ import annotations

import gc

# Young-generation threshold: a collection per 50,000 net allocations instead of 700.
# Cyclic garbage still gets collected, just in larger, rarer passes.
YOUNG_THRESHOLD = 50_000


def tune_for_throughput() -> None:
    """Call once start-up is done: freeze what exists and collect less often."""
    gc.collect()
    gc.freeze()  # start-up objects move to a permanent generation the collector skips
    _, middle, old = gc.get_threshold()
    gc.set_threshold(YOUNG_THRESHOLD, middle, old)
