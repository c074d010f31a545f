"""What the store process tells the SIP process about itself, about once a second.

The figures live in the store process (store_process.py): how large each committed batch
was, how late each expiry was recorded, how many publications are live per event
package, how far the change feed has come, how many subscriptions the notifier holds.
`StoreStats` keeps them as plain numbers and lists (cumulative histogram buckets, sums,
counts) and `snapshot` turns them into one picklable dict, sent as a `("stats", dict)`
frame; the SIP process's metrics (sip_adapter/aio/metrics.py) turn that into Prometheus
families at scrape time.

Cost: observing a batch size is a bisect and two additions per decided batch; an expiry
lag the same per expired publication (from the expiry scheduler's thread, under a lock).
Counting live publications per package scans the view's (aor, event) index (0.24 s for a
million rows), so it runs in a thread of its own on its own read-only connection, never in
the store's loop, and at most every `LIVE_INTERVAL` seconds, or less often when the count
is slow (never more than ~5% of one core).
"""

from __future__ import annotations

import logging
import os
import sqlite3
import threading
import time
from bisect import bisect_left
from typing import TYPE_CHECKING, Any, Sequence

if TYPE_CHECKING:
    from .compositor import Compositor
    from .notifier import Notifier

log = logging.getLogger("esc.store")

#: Seconds between two ("stats", dict) frames.
STATS_INTERVAL = 1.0
#: Seconds between two counts of the live publications (at least).
LIVE_INTERVAL = 1.0
#: Upper bounds of the commit batch size histogram (requests per decided batch).
BATCH_BUCKETS: tuple[float, ...] = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 2048)
#: Upper bounds of the expiry lag histogram (seconds between expires_at and the Expired).
LAG_BUCKETS: tuple[float, ...] = (0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
                                  300.0, 3600.0)

LIVE_BY_EVENT = "SELECT event, COUNT(*) FROM publications GROUP BY event"


class Buckets:
    """A histogram as plain numbers: counts per bucket (the last one is +Inf, not
    cumulative), their sum."""

    __slots__ = ("bounds", "counts", "sum")

    def __init__(self, bounds: Sequence[float]) -> None:
        self.bounds = tuple(bounds)
        self.counts = [0] * (len(self.bounds) + 1)
        self.sum = 0.0

    def observe(self, value: float) -> None:
        self.counts[bisect_left(self.bounds, value)] += 1
        self.sum += value

    def as_dict(self) -> dict[str, Any]:
        return {"bounds": self.bounds, "counts": list(self.counts), "sum": self.sum}


class StoreStats:
    def __init__(self, compositor: "Compositor", notifier: "Notifier | None" = None,
                 expiry: Any = None) -> None:
        self.compositor = compositor
        self.notifier = notifier
        self.expiry = expiry  # the ExpiryScheduler, for its count of expired publications
        self.batch_size = Buckets(BATCH_BUCKETS)
        self.expiry_lag = Buckets(LAG_BUCKETS)
        self._lag_lock = threading.Lock()
        self._live = _LiveCounter(compositor)

    def start(self) -> "StoreStats":
        self._live.start()
        return self

    def stop(self) -> None:
        self._live.stop()

    # ---- observed as they happen ---------------------------------------------------------

    def batch(self, size: int) -> None:
        """A batch of `size` requests was decided (one transaction)."""
        self.batch_size.observe(size)

    def expired(self, lag: float) -> None:
        """An Expired was recorded `lag` seconds after its publication's expiry time (the
        expiry scheduler's thread calls this)."""
        with self._lag_lock:
            self.expiry_lag.observe(max(0.0, lag))

    # ---- the frame ----------------------------------------------------------------------

    def snapshot(self) -> dict[str, Any]:
        with self._lag_lock:
            lag = self.expiry_lag.as_dict()
        stats: dict[str, Any] = {
            "pid": os.getpid(),
            "batch_size": self.batch_size.as_dict(),
            "expiry_lag": lag,
            "live": dict(self._live.counts),
            "feed_position": self._feed_position(),
        }
        if self.expiry is not None:
            stats["expired"] = int(self.expiry.expired)
        notifier = self.notifier
        if notifier is not None:
            stats["subscriptions"] = len(notifier.subscriptions)
            stats["notifies_in_flight"] = len(notifier.in_flight)
            stats["notifier_position"] = int(notifier.position)
            stats["notifier"] = dict(notifier.stats)
            stats["notifies_waiting"] = len(notifier.dirty)
            if notifier.pacer is not None:
                stats["notify_share"] = round(notifier.pacer.share, 3)
        return stats

    def _feed_position(self) -> int:
        try:
            return int(self.compositor.app.recorder.max_notification_id() or 0)
        except Exception:  # the store is down: the next frame tells again
            return -1


class _LiveCounter:
    """Counts the view's publications per event package from a daemon thread, on a
    read-only connection of its own (WAL: it never holds up the store's writes). With an
    in-memory view there is no second connection: it counts through the view's own."""

    def __init__(self, compositor: "Compositor") -> None:
        self.view = compositor.view
        self.counts: dict[str, int] = {}
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="esc-live-count", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()

    def _run(self) -> None:
        conn = None
        path = getattr(self.view, "path", None)
        if path:
            try:
                conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True,
                                       check_same_thread=False, timeout=5)
            except sqlite3.Error as error:
                log.warning("live publication count: cannot open the view: %s", error)
        delay = LIVE_INTERVAL
        while not self._stop.is_set():
            started = time.monotonic()
            try:
                if conn is not None:
                    rows = conn.execute(LIVE_BY_EVENT).fetchall()
                else:
                    with self.view._lock:
                        rows = self.view.db.execute(LIVE_BY_EVENT).fetchall()
                self.counts = {str(event): int(count) for event, count in rows}
                # A slow count (a very large view) runs less often: at most ~5% of a core.
                delay = max(LIVE_INTERVAL, 20 * (time.monotonic() - started))
            except Exception as error:
                log.debug("live publication count failed: %s", error)
                delay = LIVE_INTERVAL
            self._stop.wait(delay)
        if conn is not None:
            conn.close()
