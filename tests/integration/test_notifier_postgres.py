"""The notifier on several nodes sharing PostgreSQL: a change made on any node reaches the
watchers of every node, and the subscriptions of a node that stops are adopted by another
once its lease runs out."""

from __future__ import annotations

import time

import pytest

from domain import NotifyOutcome, SubscribeRequest, SubscriptionPolicy
from infrastructure.leases import leases_for
from infrastructure.notifier import Notifier, NotifierConfig
from infrastructure.store_worker import StoreWorker

from .test_postgres import nodes, pg, publish  # noqa: F401  (fixtures)

pytestmark = pytest.mark.postgres

ALICE = "sip:alice@example.com"


def subscribe(call_id: str) -> SubscribeRequest:
    return SubscribeRequest(aor=ALICE, event="presence", call_id=call_id, remote_tag="w",
                            cseq=1, watcher_uri="sip:bob@example.com",
                            watcher_contact="sip:bob@127.0.0.1:5070", transport="udp",
                            host="127.0.0.1", port=5070, expires=600)


def notifier_for(compositor, node: str) -> StoreWorker:
    config = NotifierConfig(policy=SubscriptionPolicy(), node=node, lease_interval=0.1,
                            lease_ttl=0.6)
    return StoreWorker(compositor, Notifier(compositor, config,
                                            leases=leases_for(compositor.app)))


def delivered(job) -> NotifyOutcome:
    return NotifyOutcome(job.subscription_id, job.cseq, 200)


def wait_for(worker: StoreWorker, timeout: float = 5.0) -> list:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        jobs = worker.tick()
        if jobs:
            return jobs
        time.sleep(0.05)
    return []


def test_a_change_on_one_node_notifies_the_watchers_of_another_and_a_stopped_node_is_adopted(
        nodes):  # noqa: F811
    compositor_a, compositor_b = nodes(2)
    node_a, node_b = notifier_for(compositor_a, "node-a"), notifier_for(compositor_b, "node-b")
    [accepted], _ = node_a.decide([subscribe("c1")])
    node_a.outcomes([delivered(accepted.notify)])
    node_b.tick()  # node-b holds none of node-a's subscriptions

    # Published on node-b: node-a's watcher is told, by node-a, from the shared feed.
    publish(compositor_b, ALICE)
    [told] = wait_for(node_a)
    assert told.subscription_id == accepted.subscription_id and b"tuple" in told.body
    assert node_b.tick() == []
    node_a.outcomes([delivered(told)])

    # node-a stops renewing its lease: node-b adopts the subscription and tells its
    # watcher the current state (node-a may have died before telling a change).
    [resync] = wait_for(node_b, timeout=5.0)
    assert resync.subscription_id == accepted.subscription_id
    assert resync.cseq == told.cseq + 1
    [row] = compositor_b.watchers(ALICE)
    assert row.owner == "node-b"
    node_b.outcomes([delivered(resync)])

    # node-a comes back: it sees the adoption and lets the subscription go, so the next
    # change is told once, by node-b.
    node_a.tick()
    publish(compositor_a, ALICE)
    [next_one] = wait_for(node_b)
    assert next_one.cseq == resync.cseq + 1
    time.sleep(0.3)
    assert node_a.tick() == []
