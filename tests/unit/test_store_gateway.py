"""The store gateway: admission bounds, batching in order, late requests, and supervision
(a dead or hung committer is replaced; one that cannot be restarted makes the server give
up). Driven with committers whose answers the test controls, on a real event loop."""

from __future__ import annotations

import asyncio

from domain import PublishRequest, StoreUnavailable
from infrastructure.records import Accepted
from sip_adapter.protocol.routing import Origin
from sip_adapter.protocol.service import PendingPublish
from sip_adapter.aio.store_gateway import GatewayConfig, StoreGateway


class ManualCommitter:
    """Answers a batch only when the test says so (or at once with `auto`)."""

    def __init__(self, loop, auto: bool = True) -> None:
        self.loop = loop
        self.auto = auto
        self.batches: list[tuple[list[PublishRequest], asyncio.Future]] = []
        self.failure = loop.create_future()
        self.killed = False
        self.closed = False

    def submit(self, requests, waiting_since=None):
        future = self.loop.create_future()
        if self.failure.done():
            future.set_result([StoreUnavailable("gone")] * len(requests))
            return future
        self.batches.append((list(requests), future))
        if self.auto:
            future.set_result([Accepted(f"tag-{r.aor}", 60) for r in requests])
        return future

    def answer_all(self) -> None:
        for requests, future in self.batches:
            if not future.done():
                future.set_result([Accepted(f"tag-{r.aor}", 60) for r in requests])

    def die(self, why: str = "exited") -> None:
        for requests, future in self.batches:
            if not future.done():
                future.set_result([StoreUnavailable("gone")] * len(requests))
        if not self.failure.done():
            self.failure.set_result(why)

    def kill(self) -> None:
        self.killed = True
        self.die("killed")

    async def close(self) -> None:
        self.closed = True


def pending(n: int, at: float = 0.0, size: int = 100) -> PendingPublish:
    publish = PublishRequest(f"sip:u{n}@example.com", "presence", None, None, 60, "x")
    return PendingPublish(None, publish, Origin("udp", ("127.0.0.1", 5060)), None, at, size)


class Harness:
    def __init__(self, config: GatewayConfig, *, auto=True, fail_starts: int = 0) -> None:
        self.answers: list[tuple[str, object]] = []
        self.availability: list[bool] = []
        self.gave_up: list[str] = []
        self.committers: list[ManualCommitter] = []
        self.fail_starts = fail_starts
        self.auto = auto
        self.now = 0.0
        self.gateway = StoreGateway(self.start, config, answer=self.answer,
                                    on_availability=self.availability.append,
                                    on_give_up=self.gave_up.append, clock=lambda: self.now)

    async def start(self):
        if self.committers and self.fail_starts > 0:
            self.fail_starts -= 1
            raise RuntimeError("store will not open")
        committer = ManualCommitter(asyncio.get_running_loop(), self.auto)
        self.committers.append(committer)
        return committer

    def answer(self, item, result) -> None:
        self.answers.append((item.publish.aor, result))


async def turn(times: int = 3) -> None:
    for _ in range(times):
        await asyncio.sleep(0)


def test_requests_are_batched_in_arrival_order_and_answered():
    async def main():
        h = Harness(GatewayConfig(max_batch=2))
        await h.gateway.start()
        for n in range(5):
            assert h.gateway.offer(pending(n), 100) is None
        await turn()
        await h.gateway.close()
        return h

    h = asyncio.run(main())
    assert [len(requests) for requests, _ in h.committers[0].batches] == [2, 2, 1]
    assert [aor for aor, _ in h.answers] == [f"sip:u{n}@example.com" for n in range(5)]
    assert all(isinstance(result, Accepted) for _, result in h.answers)


def test_past_the_queue_bounds_offers_are_refused_at_once_with_retry_after():
    async def main():
        h = Harness(GatewayConfig(max_queue=3, max_queue_bytes=1000, pipeline_depth=1,
                                  max_batch=1), auto=False)
        await h.gateway.start()
        offers = [h.gateway.offer(pending(n), 100) for n in range(5)]
        await turn()  # one goes to the store; the queue now holds the next ones
        offers += [h.gateway.offer(pending(n), 100) for n in range(5, 7)]
        big = h.gateway.offer(pending(9), 2000)  # over the byte bound on its own
        h.committers[0].answer_all()
        await h.gateway.close()
        return offers, big, h

    offers, big, h = asyncio.run(main())
    accepted = [o for o in offers if o is None]
    refused = [o for o in offers if o is not None]
    assert len(accepted) == 4  # three queued plus the one handed over
    assert all(isinstance(r, StoreUnavailable) and r.retry_after >= 1 for r in refused)
    assert isinstance(big, StoreUnavailable)
    assert h.gateway.stats["refused_overload"] == len(refused) + 1


def test_a_request_that_waited_too_long_is_answered_503_not_committed():
    async def main():
        h = Harness(GatewayConfig(max_wait=2.0))
        await h.gateway.start()
        h.gateway.offer(pending(1, at=0.0), 100)
        h.gateway.offer(pending(2, at=9.0), 100)
        h.now = 10.0
        await turn()
        await h.gateway.close()
        return h

    h = asyncio.run(main())
    results = dict(h.answers)
    assert isinstance(results["sip:u1@example.com"], StoreUnavailable)
    assert isinstance(results["sip:u2@example.com"], Accepted)
    assert [len(b) for b, _ in h.committers[0].batches] == [1]


def test_a_dead_store_is_restarted_and_meanwhile_everything_is_refused():
    async def main():
        h = Harness(GatewayConfig(), auto=False)
        await h.gateway.start()
        h.gateway.offer(pending(1), 100)
        await turn()
        h.committers[0].die()
        await turn()
        during = h.gateway.available
        for _ in range(100):
            if h.gateway.available:
                break
            await asyncio.sleep(0.01)
        h.committers[-1].auto = True
        after = h.gateway.offer(pending(2), 100)
        await turn()
        await h.gateway.close()
        return h, during, after

    h, during, after = asyncio.run(main())
    assert len(h.committers) == 2 and h.committers[0].closed
    assert isinstance(dict(h.answers)["sip:u1@example.com"], StoreUnavailable)
    assert isinstance(dict(h.answers)["sip:u2@example.com"], Accepted)
    assert during is False and after is None
    assert h.availability[:3] == [True, False, True]
    assert h.gateway.stats["restarts"] == 1


def test_a_hung_store_is_killed_after_the_store_timeout_and_replaced():
    async def main():
        h = Harness(GatewayConfig(store_timeout=0.2), auto=False)
        await h.gateway.start()
        h.gateway.offer(pending(1), 100)
        await turn()
        h.now = 1.0  # the batch has been waiting for 1 s
        for _ in range(100):
            if len(h.committers) == 2 and h.gateway.available:
                break
            await asyncio.sleep(0.02)
        await h.gateway.close()
        return h

    h = asyncio.run(main())
    assert h.committers[0].killed
    assert len(h.committers) == 2
    assert isinstance(dict(h.answers)["sip:u1@example.com"], StoreUnavailable)


def test_when_restarting_keeps_failing_the_gateway_gives_up():
    async def main():
        h = Harness(GatewayConfig(restart_attempts=3), fail_starts=10)
        await h.gateway.start()
        h.committers[0].die()
        for _ in range(400):
            if h.gave_up:
                break
            await asyncio.sleep(0.01)
        offer = h.gateway.offer(pending(1), 100)
        await h.gateway.close()
        return h, offer

    h, offer = asyncio.run(main())
    assert h.gave_up and "could not be restarted" in h.gave_up[0]
    assert isinstance(offer, StoreUnavailable)
