"""The expiry scheduler: ends lapsed publications on time.

It asks the view for due rows (an index on expires_at; nothing is held in memory) and
lets the compositor record `Expired` for them. The first pass runs at start, so state that
lapsed while the process was down is expired at once, stamped with its own expiry time.
Every process or node may run one: duplicates are no-ops and races are version conflicts.
"""

from __future__ import annotations

import logging
import threading
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .compositor import Compositor

log = logging.getLogger("esc.expiry")


class ExpiryScheduler:
    """A daemon thread that calls `compositor.expire_due()` at least every `interval` s."""

    def __init__(self, compositor: "Compositor", interval: float = 0.25) -> None:
        self.compositor = compositor
        self.interval = interval
        self.expired = 0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> "ExpiryScheduler":
        self._thread = threading.Thread(target=self._run, name="esc-expiry", daemon=True)
        self._thread.start()
        return self

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self.expired += self.compositor.expire_due()
                self.compositor.catch_up()  # see other processes' / nodes' writes
                delay = self._delay()
            except Exception as error:  # the store may be down: keep trying, not spinning
                log.warning("expiry pass failed: %s", error)
                delay = self.interval
            self._stop.wait(delay)

    def _delay(self) -> float:
        try:
            next_expiry = self.compositor.view.next_expiry()
        except Exception:
            return self.interval
        if next_expiry is None:
            return self.interval
        return max(0.0, min(self.interval, next_expiry - self.compositor.now()))

    def stop(self, timeout: float = 5.0) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout)
