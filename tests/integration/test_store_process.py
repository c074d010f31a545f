"""The compositor in its own process: batches in order, through threads or through an
event loop, and a store process that dies answers StoreUnavailable, never a wrong result."""

from __future__ import annotations

import asyncio
import os
import signal

import pytest

from domain import PublishRequest, StoreUnavailable
from infrastructure import Compositor
from infrastructure.records import Accepted
from infrastructure.store_process import StoreProcess

PIDF = "application/pidf+xml"


def initial(user: str, body: bytes) -> PublishRequest:
    return PublishRequest(f"sip:{user}@example.com", "presence", body, PIDF, 600)


def exchange_through_a_loop(store: StoreProcess, batches: list[list[PublishRequest]]):
    """Attach `store` to a fresh event loop, send every batch back to back, collect the
    answers, detach."""
    async def exchange():
        store.attach(asyncio.get_running_loop())
        try:
            futures = [store.submit_async(batch) for batch in batches]
            return [await future for future in futures]
        finally:
            store.detach()

    return asyncio.run(exchange())


@pytest.fixture
def store(store_url):
    process = StoreProcess(store_url, expiry=False)
    yield process
    process.close()


def test_thread_mode_answers_each_batch_in_order(store, pidf):
    first = store.process_many([initial("a", pidf("open")), initial("b", pidf("open"))])
    assert all(isinstance(r, Accepted) for r in first)
    refresh = PublishRequest("sip:a@example.com", "presence", None, None, 600,
                             first[0].etag)
    foreign = PublishRequest("sip:b@example.com", "presence", None, None, 600,
                             first[0].etag)
    second = store.process_many([refresh, foreign])
    assert isinstance(second[0], Accepted) and second[0].etag != first[0].etag
    assert second[1].status == 412


def test_loop_mode_pipelines_batches_larger_than_the_pipe(store, store_url, pidf):
    # ~2.5 MB per batch: the pipe takes far less at once, so writes go out in parts
    # from the loop's writer callback, and several batches are in flight together.
    def body(n: int) -> bytes:  # distinct objects: pickle would share one body
        return pidf("open") + b"<!--" + str(n).encode() * 250 + b"-->"

    batches = [[initial(f"u{b}-{i}", body(i)) for i in range(2500)] for b in range(3)]

    answers = exchange_through_a_loop(store, batches)
    assert [len(a) for a in answers] == [2500, 2500, 2500]
    assert all(isinstance(r, Accepted) and r.expires == 600 for a in answers for r in a)
    # After detaching, the blocking form works again on the same process.
    refresh = PublishRequest("sip:u2-2499@example.com", "presence", None, None, 60,
                             answers[2][-1].etag)
    assert isinstance(store.process_many([refresh])[0], Accepted)
    store.close()
    compositor = Compositor.open(store_url)
    try:
        assert len(compositor.list()) == 7500
    finally:
        compositor.close()


def test_loop_mode_store_death_answers_unavailable_then_keeps_refusing(store, pidf):
    async def exchange():
        store.attach(asyncio.get_running_loop())
        try:
            ok = await store.submit_async([initial("alive", pidf("open"))])
            os.kill(store.process.pid, signal.SIGKILL)
            lost = await asyncio.wait_for(
                store.submit_async([initial("lost", pidf("open"))]), timeout=10)
            later = await store.submit_async([initial("later", pidf("open"))])
            return ok, lost, later
        finally:
            store.detach()

    ok, lost, later = asyncio.run(exchange())
    assert isinstance(ok[0], Accepted)
    assert isinstance(lost[0], StoreUnavailable) and lost[0].status == 503
    assert isinstance(later[0], StoreUnavailable)


def test_one_mode_at_a_time(store, pidf):
    store.process_many([initial("t", pidf("open"))])  # starts the receiver thread

    async def attach():
        store.attach(asyncio.get_running_loop())

    with pytest.raises(RuntimeError):
        asyncio.run(attach())


def test_batches_waiting_together_are_answered_each_with_its_own_results(store, pidf):
    # Sent back to back, these reach the store process together and may be committed in
    # one transaction; each batch must still get exactly its own answers, in order.
    stale = PublishRequest("sip:x@example.com", "presence", None, None, 60,
                           "00000000000000000000000000000000.nope")
    batches = [[initial("x", pidf("open"))], [stale, stale],
               [initial("y", pidf("open")), stale, initial("z", pidf("closed"))]]

    first, second, third = exchange_through_a_loop(store, batches)
    assert len(first) == 1 and isinstance(first[0], Accepted)
    assert [r.status for r in second] == [412, 412]
    assert isinstance(third[0], Accepted) and third[1].status == 412
    assert isinstance(third[2], Accepted)
