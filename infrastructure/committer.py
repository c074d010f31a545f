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
from concurrent.futures import ThreadPoolExecutor
from typing import Protocol, Sequence

from domain import CompositorError, PublishRequest, StoreUnavailable

from .records import Accepted

log = logging.getLogger("esc.committer")

Result = Accepted | CompositorError


class Committer(Protocol):
    """Decides and durably commits batches of PUBLISH requests, in submission order."""

    def submit(self, requests: Sequence[PublishRequest]) -> asyncio.Future[list[Result]]:
        """Hand over a batch; the future gets one result per request, in order."""
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
    """A compositor in this process. One worker thread keeps batches in order and keeps
    the blocking store off the event loop."""

    def __init__(self, compositor, loop: asyncio.AbstractEventLoop | None = None) -> None:
        self.compositor = compositor
        self._loop = loop or asyncio.get_running_loop()
        self._executor = ThreadPoolExecutor(1, thread_name_prefix="esc-commit")
        self._failure: asyncio.Future[str] = self._loop.create_future()

    @property
    def failure(self) -> asyncio.Future[str]:
        return self._failure

    def submit(self, requests: Sequence[PublishRequest]) -> asyncio.Future[list[Result]]:
        future: asyncio.Future[list[Result]] = self._loop.create_future()
        batch = list(requests)
        if self._failure.done():
            future.set_result(unavailable(len(batch)))
            return future
        done = self._loop.run_in_executor(self._executor, self._process, batch)

        def deliver(outcome: asyncio.Future) -> None:
            if future.done():
                return
            if outcome.cancelled() or outcome.exception() is not None:
                future.set_result(unavailable(len(batch)))
            else:
                future.set_result(outcome.result())

        done.add_done_callback(deliver)
        return future

    def _process(self, batch: list[PublishRequest]) -> list[Result]:
        try:
            return self.compositor.process_many(batch)
        except Exception as error:  # never let a batch go unanswered
            log.error("compositor failed on a batch: %s", error)
            return unavailable(len(batch), f"compositor failed: {error}")

    async def close(self) -> None:
        await self._loop.run_in_executor(None, self._executor.shutdown, True)
        if not self._failure.done():
            self._failure.set_result("closed")

    def kill(self) -> None:
        if not self._failure.done():
            self._failure.set_result("killed")
        self._executor.shutdown(wait=False, cancel_futures=True)
