"""The one interface between the SIP server and whatever decides and commits PUBLISHes.

A `Committer` takes batches of `PublishRequest`s and answers each request with an
`Accepted` or the `CompositorError` to answer with, strictly in submission order (so
per-resource order holds across batches), and never before the batch is durable. It never
raises for a batch: when it breaks, every outstanding and later batch is answered
`StoreUnavailable`, and its `failure` future says why, so that a supervisor can replace it.

Two implementations:
- `StoreProcess` (store_process.py): the compositor in a child process, for `esc serve`.
- `InProcessCommitter` (here): a compositor in this process, driven from one worker
  thread, for tests and embedding.
"""

from __future__ import annotations

import asyncio
import logging
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Callable, Protocol, Sequence

from domain import (CompositorError, NotifyJob, NotifyOutcome, PublishRequest,
                    StoreUnavailable, SubscribeAccepted, SubscribeRequest)

from .records import Accepted
from .store_worker import StoreWorker

log = logging.getLogger("esc.committer")

Result = Accepted | SubscribeAccepted | CompositorError
Request = PublishRequest | SubscribeRequest
NotifySink = Callable[[list[NotifyJob]], None]


class Committer(Protocol):
    """Decides and durably commits batches of PUBLISH and SUBSCRIBE requests, in
    submission order; hands the NOTIFYs its notifier produces to `notify_sink`."""

    notify_sink: NotifySink | None

    def submit(self, requests: Sequence[Request], waiting_since: float | None = None
               ) -> asyncio.Future[list[Result]]:
        """Hand over a batch; the future gets one result per request, in order.
        `waiting_since`: when (time.monotonic) its oldest request arrived, so the store
        can weigh its NOTIFY work against PUBLISH latency (notify_pacing.py)."""
        ...

    def report(self, outcomes: Sequence[NotifyOutcome]) -> None:
        """What became of NOTIFYs (the notifier sends the next ones or ends
        subscriptions)."""
        ...

    @property
    def failure(self) -> asyncio.Future[str]:
        """Completes (with the reason) when this committer can no longer be used."""
        ...

    async def close(self) -> None:
        """Finish what was submitted, then stop."""
        ...

    def kill(self) -> None:
        """Stop now (a hung committer): outstanding batches are answered unavailable."""
        ...


def unavailable(count: int, why: str = "store unavailable") -> list[Result]:
    return [StoreUnavailable(why)] * count


class InProcessCommitter:
    """A compositor (and optionally a notifier) in this process. One worker thread keeps
    batches in order and keeps the blocking store off the event loop."""

    def __init__(self, compositor: Any, loop: asyncio.AbstractEventLoop | None = None,
                 notifier: Any = None) -> None:
        self.compositor = compositor
        self.worker = StoreWorker(compositor, notifier)
        self.notify_sink: NotifySink | None = None
        self._loop = loop or asyncio.get_running_loop()
        self._executor = ThreadPoolExecutor(1, thread_name_prefix="esc-commit")
        self._failure: asyncio.Future[str] = self._loop.create_future()
        self._timer: asyncio.TimerHandle | None = None
        if notifier is not None:
            self._arm_timer()

    @property
    def failure(self) -> asyncio.Future[str]:
        return self._failure

    def submit(self, requests: Sequence[Request], waiting_since: float | None = None
               ) -> asyncio.Future[list[Result]]:
        future: asyncio.Future[list[Result]] = self._loop.create_future()
        batch = list(requests)
        if self._failure.done():
            future.set_result(unavailable(len(batch)))
            return future
        done = self._loop.run_in_executor(self._executor, self._process, batch,
                                          waiting_since)

        def deliver(outcome: asyncio.Future) -> None:
            if future.done():
                return
            if outcome.cancelled() or outcome.exception() is not None:
                future.set_result(unavailable(len(batch)))
            else:
                future.set_result(outcome.result())

        done.add_done_callback(deliver)
        return future

    def _process(self, batch: list[Request], waiting_since: float | None = None
                 ) -> list[Result]:
        waited = None if waiting_since is None else time.monotonic() - waiting_since
        try:
            results, recordings = self.worker.decide(batch, waited)
        except Exception as error:  # never let a batch go unanswered
            log.error("compositor failed on a batch: %s", error)
            return unavailable(len(batch), f"compositor failed: {error}")
        # (answered once the worker's `after` has run too: one thread, in order)
        self._hand_over(self.worker.after(recordings))
        return results

    def _hand_over(self, jobs: list[NotifyJob]) -> None:
        if jobs and self.notify_sink is not None and not self._loop.is_closed():
            self._loop.call_soon_threadsafe(self._deliver, jobs)

    def _deliver(self, jobs: list[NotifyJob]) -> None:
        if self.notify_sink is not None:
            try:
                self.notify_sink(jobs)
            except Exception:
                log.exception("handing NOTIFYs to the SIP side failed")

    def report(self, outcomes: Sequence[NotifyOutcome]) -> None:
        if self._failure.done() or not outcomes:
            return
        batch = list(outcomes)
        self._executor.submit(lambda: self._hand_over(self.worker.outcomes(batch)))

    def _arm_timer(self) -> None:
        """The notifier's timer (lapses, the feed poll), run on the worker thread."""
        if self._failure.done():
            return
        deadline = self.worker.next_deadline()
        delay = 1.0 if deadline is None else max(0.0, min(1.0, deadline - time.time()))
        self._timer = self._loop.call_later(delay, self._tick)

    def _tick(self) -> None:
        if self._failure.done():
            return
        try:
            done = self._loop.run_in_executor(
                self._executor, lambda: self._hand_over(self.worker.tick()))
        except RuntimeError:  # the executor is shut down
            return
        done.add_done_callback(lambda _: self._arm_timer())

    async def close(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
        await self._loop.run_in_executor(None, self._executor.shutdown, True)
        if not self._failure.done():
            self._failure.set_result("closed")

    def kill(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
        if not self._failure.done():
            self._failure.set_result("killed")
        self._executor.shutdown(wait=False, cancel_futures=True)
