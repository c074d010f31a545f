"""Garbage-collector settings for the long-running server processes.

Under load the SIP process allocates several container objects per request, and with
CPython's default thresholds (a young collection every 700 net allocations) a profile of
`esc serve` showed about a sixth of its time in the collector. Almost none of that work
finds garbage: requests, transactions and events are freed by reference counting. So:

- start-up objects (modules, configuration, caches built while opening) are frozen into a
  generation the collector never scans again;
- young collections run every 5,000 net allocations instead of 700. Larger thresholds cost
  less in total but pause longer: each young collection scans every young object still
  alive, and at 50,000 those pauses (20-50 ms measured) set the p99 response time. With
  5,000 the SIPp benchmark's p99 at 5,000 PUBLISH/s was 44-48 ms against 120 ms at 50,000
  (same run, same machine).
Long-lived state is kept out of the collector's way where it matters (the transaction
table holds plain tuples, which the collector stops tracking after one look).

The store process freezes and keeps CPython's default young threshold: with the larger
one it ended the million-publication benchmark at 159 MB instead of 119 MB. Where that
memory goes was not found (a simulation of its loop leaves no cyclic garbage); it is
measured, not explained. Its full collections are made ten times rarer instead
(`OLD_THRESHOLD`): the subscriptions it holds are long-lived objects created after
start-up, so each full collection scans all of them, and with 10,000 subscriptions one
took 37-47 ms (measured in bench/notify_bench.py, about every 4 s at 4,000 PUBLISH/s),
a pause every waiting PUBLISH sat through. A full collection still runs when the
long-lived objects have grown by a quarter (CPython's own rule), so garbage cycles that
reach the oldest generation are still freed, later.
"""

from __future__ import annotations

import gc

YOUNG_THRESHOLD = 5_000
#: Collections of the middle generation between two full ones (CPython's default: 10).
OLD_THRESHOLD = 100


def tune_for_throughput(young_threshold: int | None = YOUNG_THRESHOLD,
                        old_threshold: int | None = None) -> None:
    """Call once start-up is done: freeze what exists and, unless `young_threshold` is
    None, collect young objects less often; with `old_threshold`, run full collections
    less often."""
    gc.collect()
    gc.freeze()  # start-up objects move to a permanent generation the collector skips
    young, middle, old = gc.get_threshold()
    gc.set_threshold(young if young_threshold is None else young_threshold, middle,
                     old if old_threshold is None else old_threshold)
