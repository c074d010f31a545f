"""The compositor in its own process, exchanged with through the event loop: batches in
order, pipelined, each answered with its own results; a store process that dies answers
StoreUnavailable (never a wrong result) and says so through `failure`."""

from __future__ import annotations

import asyncio
import os
import signal

import pytest

from domain import ConditionalRequestFailed, PublishRequest, StoreUnavailable
from infrastructure import Compositor
from infrastructure.records import Accepted
from infrastructure.store_process import StoreProcess

PIDF = "application/pidf+xml"


def initial(user: str, body: bytes) -> PublishRequest:
    return PublishRequest(f"sip:{user}@example.com", "presence", body, PIDF, 600)


def with_store(store_url: str, use):
    """Start a store process on a fresh loop, run `use(store)` (a coroutine), close it."""
    async def run():
        store = await StoreProcess.start(store_url, expiry=False)
        try:
            return await use(store)
        finally:
            await store.close()

    return asyncio.run(run())


def test_batches_are_answered_in_order_with_their_own_results(store_url, pidf):
    async def use(store):
        first = await store.submit([initial("a", pidf("open")), initial("b", pidf("open"))])
        refresh = PublishRequest("sip:a@example.com", "presence", None, None, 600,
                                 first[0].etag)
        foreign = PublishRequest("sip:b@example.com", "presence", None, None, 600,
                                 first[0].etag)
        return first, await store.submit([refresh, foreign])

    first, second = with_store(store_url, use)
    assert all(isinstance(r, Accepted) for r in first)
    assert isinstance(second[0], Accepted) and second[0].etag != first[0].etag
    assert isinstance(second[1], ConditionalRequestFailed)


def test_batches_larger_than_the_pipe_are_pipelined(store_url, pidf):
    # ~2.5 MB per batch: the pipe takes far less at once, so writes go out in parts
    # from the loop's writer callback, and several batches are in flight together.
    def body(n: int) -> bytes:  # distinct objects: pickle would share one body
        return pidf("open") + b"<!--" + str(n).encode() * 250 + b"-->"

    batches = [[initial(f"u{b}-{i}", body(i)) for i in range(2500)] for b in range(3)]

    async def use(store):
        futures = [store.submit(batch) for batch in batches]
        return [await future for future in futures]

    answers = with_store(store_url, use)
    assert [len(a) for a in answers] == [2500, 2500, 2500]
    assert all(isinstance(r, Accepted) and r.expires == 600 for a in answers for r in a)
    compositor = Compositor.open(store_url)
    try:
        assert len(compositor.list()) == 7500
    finally:
        compositor.close()


def test_a_store_process_that_dies_answers_unavailable_and_reports_its_failure(store_url,
                                                                                pidf):
    async def use(store):
        ok = await store.submit([initial("alive", pidf("open"))])
        assert not store.failure.done()
        os.kill(store.pid, signal.SIGKILL)
        lost = await asyncio.wait_for(store.submit([initial("lost", pidf("open"))]), 10)
        why = await asyncio.wait_for(store.failure, 10)
        later = await store.submit([initial("later", pidf("open"))])
        return ok, lost, why, later

    ok, lost, why, later = with_store(store_url, use)
    assert isinstance(ok[0], Accepted)
    assert isinstance(lost[0], StoreUnavailable) and lost[0].retry_after == 5
    assert why  # the reason, in words (EOF or a reset pipe, whichever the kernel gives)
    assert isinstance(later[0], StoreUnavailable)


def test_a_store_that_cannot_be_opened_fails_to_start_with_its_reason(tmp_path):
    async def start():
        await StoreProcess.start(f"sqlite:///{tmp_path}/missing-dir/esc.sqlite3")

    with pytest.raises(RuntimeError):
        asyncio.run(start())


def test_batches_waiting_together_are_answered_each_with_its_own_results(store_url, pidf):
    # Sent back to back, these reach the store process together and may be committed in
    # one transaction; each batch must still get exactly its own answers, in order.
    stale = PublishRequest("sip:x@example.com", "presence", None, None, 60,
                           "00000000000000000000000000000000.nope")
    batches = [[initial("x", pidf("open"))], [stale, stale],
               [initial("y", pidf("open")), stale, initial("z", pidf("closed"))]]

    async def use(store):
        futures = [store.submit(batch) for batch in batches]
        return [await future for future in futures]

    first, second, third = with_store(store_url, use)
    assert len(first) == 1 and isinstance(first[0], Accepted)
    assert [type(r) for r in second] == [ConditionalRequestFailed] * 2
    assert isinstance(third[0], Accepted) and isinstance(third[1], ConditionalRequestFailed)
    assert isinstance(third[2], Accepted)


def test_a_pipe_that_is_never_idle_does_not_starve_the_notifiers_timer():
    """The store process's loop runs the notifier's timer when it is due even if a message
    is always waiting (before, the timer ran only when a wait timed out)."""
    import time

    from infrastructure.store_process import _serve

    class BusyPipe:
        def __init__(self) -> None:
            self.sent: list = []
            self.turns = 0

        def poll(self, timeout=None) -> bool:
            return True

        def recv(self):
            self.turns += 1
            if self.turns > 640:
                return None
            return ("outcomes", [])

        def send(self, message) -> None:
            self.sent.append(message)

    class Worker:
        ticks = 0

        def next_deadline(self):
            return time.time() - 1  # always overdue

        def tick(self):
            Worker.ticks += 1
            return []

        def after(self, recordings, outcomes):
            return []

    _serve(BusyPipe(), Worker(), lambda jobs: None)
    assert Worker.ticks >= 9  # one per turn of at most 64 messages
