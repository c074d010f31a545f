"""The SIP server's one way to the store: admission, batching and supervision.

Every PUBLISH that the protocol core accepted is `offer`ed here. The gateway

- admits it or refuses it at once (the caller answers 503 with Retry-After): when the
  store is restarting, when the server is stopping, or when the work waiting for the
  store is at its bound in requests or in bytes. A flood therefore costs a counter check,
  and memory stays flat however fast requests arrive;
- groups what waits into batches (group commit) and hands them to the `Committer` in
  arrival order, with at most `pipeline_depth` batches in flight; a request that waited
  longer than `max_wait` is answered 503 rather than committed late;
- supervises the committer: when it dies, or leaves a batch unanswered for
  `store_timeout` seconds (hung), the gateway answers what was waiting with 503, kills it,
  starts a new one (which recovers from the event store, expiry included) and serves
  again; when starting keeps failing it gives up, and the server exits so that its
  service manager can restart it.

Isolation of one request from the others is the committer's job (the compositor answers
a faulty request alone); a batch answered with the wrong number of results never reaches
a client (the store process refuses the exchange instead). Asyncio code: time comes from
the loop, given as `clock`.
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from dataclasses import dataclass
from typing import Any, Awaitable, Callable, Sequence

from domain import NotifyJob, NotifyOutcome, StoreUnavailable
from infrastructure.committer import Committer, Result

from ..protocol.service import Pending

log = logging.getLogger("esc.gateway")


@dataclass(frozen=True)
class GatewayConfig:
    """Bounds and timings. The defaults are sized from the benchmark: at this machine's
    full rate (about 5,000 PUBLISH/s) 4,096 waiting requests are well under a second of
    work, so a request admitted at full load waits less than a second."""

    max_batch: int = 512  # most requests handed to the store at once
    pipeline_depth: int = 2  # batches in flight at once
    max_queue: int = 4096  # requests waiting for the store (not yet handed over)
    max_queue_bytes: int = 16 * 1024 * 1024  # their size, in bytes of SIP message
    max_wait: float = 5.0  # seconds a request may wait before it is answered 503
    store_timeout: float = 5.0  # a batch unanswered this long: the store is hung
    restart_attempts: int = 5  # consecutive failed starts before giving up
    max_restarts_per_minute: int = 10  # deaths within 60 s before giving up
    retry_after: int = 2  # seconds, in the 503s the gateway causes


class StoreGateway:
    def __init__(self, start_committer: Callable[[], Awaitable[Committer]],
                 config: GatewayConfig, *,
                 answer: Callable[[Pending, Result], None],
                 on_availability: Callable[[bool], None] = lambda available: None,
                 on_give_up: Callable[[str], None] = lambda why: None,
                 on_notifies: Callable[[list[NotifyJob]], None] | None = None,
                 clock: Callable[[], float] | None = None) -> None:
        self.config = config
        self._start_committer = start_committer
        self._answer = answer
        self._on_availability = on_availability
        self._on_give_up = on_give_up
        self._on_notifies = on_notifies
        self._clock = clock
        self._loop: asyncio.AbstractEventLoop | None = None
        self._committer: Committer | None = None
        self._queue: deque[tuple[Pending, int]] = deque()
        self._queued_bytes = 0
        # batches handed over: (when, the batch), oldest first
        self._in_flight: deque[tuple[float, list[Pending]]] = deque()
        self._pump_scheduled = False
        self._available = False
        self._stopping = False
        self._restarting: asyncio.Task | None = None
        self._watchdog: asyncio.Task | None = None
        self._deaths: deque[float] = deque()
        self.stats = {"refused_overload": 0, "refused_unavailable": 0, "timed_out": 0,
                      "restarts": 0, "store_deaths": 0}
        # The store process's latest ("stats", dict) frame (store_stats.py; {} from a
        # committer that sends none), and who else is told of each (the metrics).
        self.store_stats: dict[str, Any] = {}
        self.on_store_stats: Callable[[dict[str, Any]], None] | None = None
        self._why_unavailable = "store starting"

    # ---- lifecycle ------------------------------------------------------------------------

    async def start(self) -> None:
        """Start the first committer; a store that cannot be opened raises."""
        self._loop = asyncio.get_running_loop()
        if self._clock is None:
            self._clock = self._loop.time
        self._adopt(await self._start_committer())
        self._watchdog = asyncio.create_task(self._watch(), name="esc-store-watchdog")

    @property
    def available(self) -> bool:
        return self._available and not self._stopping

    @property
    def unavailable_reason(self) -> str | None:
        """Why no PUBLISH is accepted now, in a few words (None: the store accepts
        commits). Read by the health check, from another thread."""
        if self.available:
            return None
        if self._stopping and not self._why_unavailable.startswith("gave up"):
            return "server stopping"
        return self._why_unavailable

    @property
    def queued(self) -> int:
        return len(self._queue)

    @property
    def queued_bytes(self) -> int:
        return self._queued_bytes

    @property
    def in_flight(self) -> int:
        return sum(len(batch) for _, batch in self._in_flight)

    async def drain(self, timeout: float) -> None:
        """Refuse new work; wait until what was admitted is answered (or `timeout`)."""
        self._stopping = True
        assert self._loop is not None
        deadline = self._loop.time() + timeout
        while (self._queue or self._in_flight) and self._loop.time() < deadline:
            await asyncio.sleep(0.01)

    async def close(self) -> None:
        self._stopping = True
        for task in (self._watchdog, self._restarting):
            if task is not None:
                task.cancel()
        committer, self._committer = self._committer, None
        self._set_available(False)
        if committer is not None:
            await committer.close()
        self._refuse_queued("server stopping")

    # ---- admission --------------------------------------------------------------------------

    def offer(self, pending: Pending, size: int) -> StoreUnavailable | None:
        """Queue a PUBLISH for the store, or say why not (answer it 503 at once)."""
        if not self.available:
            self.stats["refused_unavailable"] += 1
            why = "server stopping" if self._stopping else "store restarting"
            return StoreUnavailable(why, retry_after=self.config.retry_after)
        if len(self._queue) >= self.config.max_queue or \
                self._queued_bytes + size > self.config.max_queue_bytes:
            self.stats["refused_overload"] += 1
            return StoreUnavailable("overloaded", retry_after=self.config.retry_after)
        self._queue.append((pending, size))
        self._queued_bytes += size
        if not self._pump_scheduled:
            # Hand over on the next turn of the loop, so that everything read in this
            # one (a burst of datagrams, a pipelined TCP read) goes as one batch.
            self._pump_scheduled = True
            assert self._loop is not None
            self._loop.call_soon(self._pump)
        return None

    # ---- batching ---------------------------------------------------------------------------

    def _pump(self) -> None:
        """Hand queued requests to the committer, a batch at a time, while there is room
        in the pipeline."""
        self._pump_scheduled = False
        committer = self._committer
        if committer is None or not self._available:
            return
        assert self._clock is not None
        while self._queue and len(self._in_flight) < self.config.pipeline_depth:
            now = self._clock()
            batch: list[Pending] = []
            while self._queue and len(batch) < self.config.max_batch:
                pending, size = self._queue.popleft()
                self._queued_bytes -= size
                if now - pending.received_at > self.config.max_wait:
                    # Its client has retransmitted for seconds; committing it now would
                    # only lengthen the queue for requests that can still be served.
                    self.stats["timed_out"] += 1
                    self._deliver(pending, StoreUnavailable(
                        "waited too long for the store", retry_after=self.config.retry_after))
                    continue
                batch.append(pending)
            if not batch:
                continue
            entry = (now, batch)
            self._in_flight.append(entry)
            future = committer.submit([pending.command for pending in batch],
                                      waiting_since=batch[0].received_at)
            future.add_done_callback(lambda done, entry=entry: self._batch_done(entry, done))

    def _batch_done(self, entry: tuple[float, list[Pending]],
                    done: asyncio.Future[list[Result]]) -> None:
        try:
            self._in_flight.remove(entry)
        except ValueError:
            pass
        batch = entry[1]
        if done.cancelled() or done.exception() is not None:
            results: Sequence[Result] = [StoreUnavailable("store unavailable")] * len(batch)
        else:
            results = done.result()
        # Hand the store its next batch before spending time on these answers, so that
        # it does not sit idle while this process renders and sends them.
        self._pump()
        for pending, result in zip(batch, results):
            self._deliver(pending, result)

    def _deliver(self, pending: Pending, result: Result) -> None:
        try:
            self._answer(pending, result)
        except Exception:  # one answer's failure never touches the others
            log.exception("failed to answer a PUBLISH")

    def _refuse_queued(self, why: str) -> None:
        queued, self._queue = self._queue, deque()
        self._queued_bytes = 0
        for pending, _ in queued:
            self._deliver(pending, StoreUnavailable(why, retry_after=self.config.retry_after))

    # ---- supervision -------------------------------------------------------------------------

    def report(self, outcomes: Sequence[NotifyOutcome]) -> None:
        """Hand NOTIFY outcomes to the store's notifier. While the store restarts they are
        dropped: the new notifier has nothing in flight and reads the feed again."""
        committer = self._committer
        if committer is not None and self._available:
            committer.report(outcomes)

    def _adopt(self, committer: Committer) -> None:
        self._committer = committer
        committer.notify_sink = self._on_notifies
        if hasattr(committer, "stats_sink"):  # StoreProcess (InProcessCommitter: none)
            committer.stats_sink = self._store_stats
        committer.failure.add_done_callback(
            lambda failure, committer=committer: self._on_failure(committer, failure))
        self._set_available(True)
        self._pump()

    def _store_stats(self, stats: dict[str, Any]) -> None:
        self.store_stats = stats
        if self.on_store_stats is not None:
            self.on_store_stats(stats)

    def _set_available(self, available: bool) -> None:
        if available != self._available:
            self._available = available
            try:
                self._on_availability(available)
            except Exception:
                log.exception("availability callback failed")

    def _on_failure(self, committer: Committer, failure: asyncio.Future[str]) -> None:
        if committer is not self._committer or self._stopping:
            return
        why = failure.result() if not failure.cancelled() else "cancelled"
        self.stats["store_deaths"] += 1
        self._why_unavailable = f"store restarting after: {why}"
        log.error("store failed (%s): answering 503 and restarting it", why)
        self._set_available(False)
        self._refuse_queued("store restarting")
        assert self._loop is not None
        now = self._loop.time()
        self._deaths.append(now)
        while self._deaths and now - self._deaths[0] > 60.0:
            self._deaths.popleft()
        if len(self._deaths) > self.config.max_restarts_per_minute:
            self._give_up(f"the store failed {len(self._deaths)} times within a minute "
                          f"(last: {why})")
            return
        self._restarting = asyncio.create_task(self._restart(committer),
                                               name="esc-store-restart")

    async def _restart(self, dead: Committer) -> None:
        try:
            await asyncio.wait_for(dead.close(), timeout=5.0)
        except Exception as error:  # a corpse that will not be reaped cleanly
            log.warning("closing the failed store: %s", error)
        delay, last_error = 0.25, "unknown"
        for attempt in range(1, self.config.restart_attempts + 1):
            if self._stopping:
                return
            try:
                committer = await self._start_committer()
            except Exception as error:
                last_error = str(error) or type(error).__name__
                log.error("store restart %d of %d failed: %s", attempt,
                          self.config.restart_attempts, last_error)
                await asyncio.sleep(delay)
                delay = min(delay * 2, 4.0)
                continue
            if self._stopping:
                await committer.close()
                return
            self.stats["restarts"] += 1
            log.info("store restarted; serving again")
            self._adopt(committer)
            return
        self._give_up(f"the store could not be restarted: {last_error}")

    def _give_up(self, why: str) -> None:
        log.critical("giving up: %s", why)
        self._why_unavailable = f"gave up: {why}"
        self._stopping = True
        self._set_available(False)
        try:
            self._on_give_up(why)
        except Exception:
            log.exception("give-up callback failed")

    async def _watch(self) -> None:
        """Declare the store hung when a batch stays unanswered for store_timeout."""
        assert self._clock is not None
        period = max(0.05, min(0.5, self.config.store_timeout / 4))
        while True:
            await asyncio.sleep(period)
            if not self._in_flight or self._committer is None:
                continue
            waited = self._clock() - self._in_flight[0][0]
            if waited > self.config.store_timeout:
                log.error("the store left a batch unanswered for %.1f s: killing it", waited)
                self._committer.kill()
