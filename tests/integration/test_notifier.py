"""The notifier against a real SQLite store: SUBSCRIBE decisions, NOTIFYs from the change
feed with folding, outcomes, lapses, and exactly-once across a restart."""

from __future__ import annotations

import pytest

from domain import (CSeqOutOfOrder, IntervalTooBrief, NotifyOutcome, PublishRequest,
                    SubscribeAccepted, SubscribeRequest, SubscriptionNotActive,
                    SubscriptionPolicy)
from infrastructure import Compositor
from infrastructure.notifier import Notifier, NotifierConfig
from infrastructure.notify_pacing import NotifyPacer
from infrastructure.store_worker import StoreWorker

PIDF = (b'<?xml version="1.0"?><presence xmlns="urn:ietf:params:xml:ns:pidf" '
        b'entity="sip:alice@example.com"><tuple id="t1"><status><basic>%s</basic>'
        b'</status></tuple></presence>')
ALICE = "sip:alice@example.com"


class Clock:
    def __init__(self, now: float = 1_800_000_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock():
    return Clock()


def open_store(tmp_path, clock):
    compositor = Compositor.open(f"sqlite:///{tmp_path}/esc.sqlite3", clock=clock)
    notifier = Notifier(compositor, NotifierConfig(policy=SubscriptionPolicy(
        default_expires=3600, min_expires=60, max_expires=3600)), clock=clock)
    return compositor, notifier, StoreWorker(compositor, notifier)


def subscribe(cseq=1, expires=600, local_tag=None, call_id="call-1", event="presence"):
    return SubscribeRequest(aor=ALICE, event=event, call_id=call_id, remote_tag="w-tag",
                            cseq=cseq, watcher_uri="sip:bob@example.com",
                            watcher_contact="sip:bob@127.0.0.1:5070", transport="udp",
                            host="127.0.0.1", port=5070, local_tag=local_tag,
                            expires=expires, event_id="42")


def publish(status: bytes, if_match=None):
    return PublishRequest(ALICE, "presence", PIDF % status if status else None,
                          "application/pidf+xml" if status else None, 3600, if_match)


def delivered(job, status=200, retry_after=None):
    return NotifyOutcome(job.subscription_id, job.cseq, status, retry_after)


def test_subscribe_gets_the_current_state_then_every_change_folded_while_one_is_in_flight(
        tmp_path, clock):
    compositor, notifier, worker = open_store(tmp_path, clock)
    worker.after(worker.decide([publish(b"open")])[1])
    [accepted], _ = worker.decide([subscribe()])
    assert isinstance(accepted, SubscribeAccepted) and accepted.expires == 600
    first = accepted.notify
    assert first is not None and first.state == "active" and first.expires_in == 600
    assert b"<basic>open</basic>" in first.body and first.event_id == "42"
    assert first.host == "127.0.0.1" and first.port == 5070  # where it came from
    assert accepted.local_tag == first.local_tag

    # Two changes while the first NOTIFY is unanswered: nothing goes out yet.
    results, recordings = worker.decide([publish(b"closed")])
    assert worker.after(recordings) == []
    results, recordings = worker.decide([publish(b"busy")])
    assert worker.after(recordings) == []
    # The answer lets the next one go, with the latest state only (folded).
    [second] = worker.outcomes([delivered(first)])
    assert second.cseq == first.cseq + 1
    assert b"busy" in second.body and b"closed" in second.body  # three publications composed
    assert worker.outcomes([delivered(second)]) == []
    # A publication's refresh changes no composed state: no NOTIFY.
    etag = results[0].etag
    _, recordings = worker.decide([publish(b"", if_match=etag)])
    assert worker.after(recordings) == []
    # A removal does.
    _, recordings = worker.decide([PublishRequest(ALICE, "presence", None, None, 0,
                                                  compositor.list(ALICE)[0].etag)])
    [third] = worker.after(recordings)
    assert third.cseq == second.cseq + 1
    rows = compositor.watchers(ALICE)
    assert len(rows) == 1 and rows[0].notify_count == 3


def test_refresh_unsubscribe_and_in_dialog_refusals(tmp_path, clock):
    compositor, notifier, worker = open_store(tmp_path, clock)
    [accepted], _ = worker.decide([subscribe()])
    tag = accepted.local_tag
    worker.outcomes([delivered(accepted.notify)])
    with pytest.raises(IntervalTooBrief):
        notifier.policy.grant(30)
    [refused], _ = worker.decide([subscribe(cseq=2, expires=30, local_tag=tag)])
    assert isinstance(refused, IntervalTooBrief) and refused.min_expires == 60
    [refreshed], _ = worker.decide([subscribe(cseq=2, expires=7200, local_tag=tag)])
    assert refreshed.expires == 3600 and refreshed.notify.state == "active"
    worker.outcomes([delivered(refreshed.notify)])
    [stale], _ = worker.decide([subscribe(cseq=2, local_tag=tag)])
    assert isinstance(stale, CSeqOutOfOrder)
    [unknown], _ = worker.decide([subscribe(cseq=3, local_tag="0" * 32)])
    assert isinstance(unknown, SubscriptionNotActive)
    [wrong_call], _ = worker.decide([subscribe(cseq=3, local_tag=tag, call_id="other")])
    assert isinstance(wrong_call, SubscriptionNotActive)
    [ended], _ = worker.decide([subscribe(cseq=3, expires=0, local_tag=tag)])
    assert ended.expires == 0
    assert ended.notify.state == "terminated" and ended.notify.reason == "timeout"
    [gone], _ = worker.decide([subscribe(cseq=4, local_tag=tag)])
    assert isinstance(gone, SubscriptionNotActive)
    assert compositor.watchers(ALICE) == []
    [row] = compositor.watchers(ALICE, include_ended=True)
    assert row.state == "terminated" and row.reason == "timeout"


def test_a_fetch_gets_the_state_once_and_keeps_nothing(tmp_path, clock):
    compositor, notifier, worker = open_store(tmp_path, clock)
    [fetched], _ = worker.decide([subscribe(expires=0)])
    assert fetched.expires == 0 and fetched.notify.state == "terminated"
    assert compositor.watchers(ALICE, include_ended=True) == []


def test_a_lapsed_subscription_ends_with_a_final_notify(tmp_path, clock):
    compositor, notifier, worker = open_store(tmp_path, clock)
    [accepted], _ = worker.decide([subscribe(expires=60)])
    worker.outcomes([delivered(accepted.notify)])
    assert notifier.next_deadline() is not None
    clock.now += 61
    [final] = worker.tick()
    assert final.state == "terminated" and final.reason == "timeout"
    assert compositor.watchers(ALICE) == []
    assert worker.tick() == []


def test_a_failed_notify_ends_the_subscription_unless_it_says_retry_after(tmp_path, clock):
    compositor, notifier, worker = open_store(tmp_path, clock)
    [first], _ = worker.decide([subscribe(call_id="a")])
    [second], _ = worker.decide([subscribe(call_id="b")])
    assert worker.outcomes([delivered(first.notify, 503, retry_after=5),
                            delivered(second.notify, 481)]) == []
    [row] = compositor.watchers(ALICE)
    assert row.call_id == "a"
    [ended] = [r for r in compositor.watchers(ALICE, include_ended=True) if r.call_id == "b"]
    assert ended.state == "terminated"
    # "a" asked to wait 5 s: its state is told again then (and a change meanwhile folds
    # into that NOTIFY rather than going first).
    _, recordings = worker.decide([publish(b"open")])
    [job] = worker.after(recordings)
    assert job.call_id == "a"
    worker.outcomes([delivered(job, 503, retry_after=5)])
    assert worker.tick() == []
    clock.now += 6
    [again] = worker.tick()
    assert again.call_id == "a" and again.cseq == job.cseq + 1 and b"open" in again.body


def test_a_restart_tells_watchers_each_change_exactly_once(tmp_path, clock):
    compositor, notifier, worker = open_store(tmp_path, clock)
    [accepted], _ = worker.decide([subscribe()])
    worker.outcomes([delivered(accepted.notify)])
    # A change is committed, but the process dies before the notifier sees it.
    worker.decide([publish(b"open")])
    compositor.close()

    compositor, notifier, worker = open_store(tmp_path, clock)
    [told] = worker.tick()
    assert b"open" in told.body and told.cseq == accepted.notify.cseq + 1
    worker.outcomes([delivered(told)])
    compositor.close()

    # Started again: that change was told already (its position is recorded with the
    # NOTIFY), so nobody hears of it twice.
    compositor, notifier, worker = open_store(tmp_path, clock)
    assert worker.tick() == []
    _, recordings = worker.decide([publish(b"closed")])
    [next_one] = worker.after(recordings)
    assert next_one.cseq == told.cseq + 1
    compositor.close()


def test_subscriptions_are_bounded_in_count_and_in_bytes(tmp_path, clock):
    compositor = Compositor.open(f"sqlite:///{tmp_path}/esc.sqlite3", clock=clock)
    notifier = Notifier(compositor, NotifierConfig(max_subscriptions=3,
                                                   max_subscription_bytes=10 ** 9), clock=clock)
    worker = StoreWorker(compositor, notifier)
    results, _ = worker.decide([subscribe(call_id=f"c{n}") for n in range(4)])
    assert [type(r).__name__ for r in results] == ["SubscribeAccepted"] * 3 + [
        "StoreUnavailable"]
    assert results[3].retry_after > 0
    compositor.close()

    compositor = Compositor.open(f"sqlite:///{tmp_path}/other.sqlite3", clock=clock)
    notifier = Notifier(compositor, NotifierConfig(max_subscriptions=1000,
                                                   max_subscription_bytes=20_000), clock=clock)
    worker = StoreWorker(compositor, notifier)
    big = [SubscribeRequest(aor=ALICE, event="presence", call_id=f"big{n}", remote_tag="w",
                            cseq=1, watcher_uri="sip:bob@example.com",
                            watcher_contact="sip:bob@127.0.0.1:5070", transport="udp",
                            host="127.0.0.1", port=5070, expires=600,
                            route_set=("<sip:proxy.example.com;lr>" + "x" * 4000,))
           for n in range(10)]
    results, _ = worker.decide(big)
    accepted = sum(isinstance(r, SubscribeAccepted) for r in results)
    assert 2 <= accepted <= 4  # each holds about 6.4 KB of 20,000
    assert notifier.held_bytes <= 20_000 + 7_000
    compositor.close()


def test_the_failure_of_a_notify_a_later_one_replaced_ends_nothing(tmp_path, clock):
    """After a store restart the SIP side may still retransmit a NOTIFY the old store
    process handed out while the new one has sent a later one; the watcher refuses the
    older CSeq (500). That must not end the subscription."""
    compositor, notifier, worker = open_store(tmp_path, clock)
    [accepted], _ = worker.decide([subscribe()])
    first = accepted.notify
    compositor.close()
    compositor, notifier, worker = open_store(tmp_path, clock)  # a new store process
    _, recordings = worker.decide([publish(b"open")])
    [second] = worker.after(recordings)  # nothing in flight as far as it knows
    assert second.cseq == first.cseq + 1
    assert worker.outcomes([delivered(first, 500)]) == []
    [row] = compositor.watchers(ALICE)
    assert row.state == "active"
    worker.outcomes([delivered(second)])
    _, recordings = worker.decide([publish(b"closed")])
    assert len(worker.after(recordings)) == 1
    compositor.close()


def test_a_failed_save_keeps_the_change_waiting_and_it_is_told_later(tmp_path, clock,
                                                                       monkeypatch):
    compositor, notifier, worker = open_store(tmp_path, clock)
    [accepted], _ = worker.decide([subscribe()])
    worker.outcomes([delivered(accepted.notify)])
    _, recordings = worker.decide([publish(b"open")])
    real = compositor.app.save_batch
    monkeypatch.setattr(compositor.app, "save_batch",
                        lambda *a, **k: (_ for _ in ()).throw(OSError("disk full")))
    assert worker.after(recordings) == []  # could not be recorded: nothing sent
    assert notifier.in_flight == {} and len(notifier.dirty) == 1
    monkeypatch.setattr(compositor.app, "save_batch", real)
    assert worker.tick() == []  # a second's pause after a failed save
    clock.now += 1.5
    [told] = worker.tick()
    assert b"open" in told.body and told.cseq == accepted.notify.cseq + 1


def test_a_subscribe_whose_save_fails_leaves_nothing_in_flight(tmp_path, clock, monkeypatch):
    compositor, notifier, worker = open_store(tmp_path, clock)
    monkeypatch.setattr(compositor.app, "save_batch",
                        lambda *a, **k: (_ for _ in ()).throw(OSError("disk full")))
    [refused], _ = worker.decide([subscribe()])
    assert type(refused).__name__ == "StoreUnavailable"
    assert notifier.in_flight == {} and notifier.subscriptions == {}


def test_a_refused_refresh_changes_nothing_and_only_the_subscriber_may_refresh(tmp_path,
                                                                                clock):
    from dataclasses import replace

    from domain import NotTheSubscriber

    compositor, notifier, worker = open_store(tmp_path, clock)
    [accepted], _ = worker.decide([replace(subscribe(), identity="bob")])
    worker.outcomes([delivered(accepted.notify)])
    tag = accepted.local_tag
    [stale], _ = worker.decide([replace(subscribe(cseq=1, local_tag=tag), identity="bob")])
    assert isinstance(stale, CSeqOutOfOrder)
    [other], _ = worker.decide([replace(subscribe(cseq=2, local_tag=tag), identity="eve")])
    assert isinstance(other, NotTheSubscriber)
    held = notifier.subscriptions[next(iter(notifier.subscriptions))]
    assert not held.pending_events and held.remote_cseq == 1
    [ok], _ = worker.decide([replace(subscribe(cseq=2, local_tag=tag), identity="bob")])
    assert ok.expires == 600 and ok.notify is not None


def test_a_refresh_pushes_one_expiry_and_the_heap_stays_small(tmp_path, clock):
    compositor, notifier, worker = open_store(tmp_path, clock)
    [accepted], _ = worker.decide([subscribe()])
    tag = accepted.local_tag
    worker.outcomes([delivered(accepted.notify)])
    for cseq in range(2, 3000):
        clock.now += 0.001
        [refreshed], _ = worker.decide([subscribe(cseq=cseq, local_tag=tag)])
        worker.outcomes([delivered(refreshed.notify)])
    assert len(notifier._expiries) < 1100


def test_a_publish_and_a_subscribe_in_one_batch_give_one_notify(tmp_path, clock):
    compositor, notifier, worker = open_store(tmp_path, clock)
    [published, accepted], recordings = worker.decide([publish(b"open"), subscribe()])
    assert b"open" in accepted.notify.body  # its first NOTIFY has the PUBLISH already
    assert worker.after(recordings) == []  # so that change is not told again


def test_notifies_in_flight_are_bounded_and_the_rest_wait_and_fold(tmp_path, clock):
    compositor = Compositor.open(f"sqlite:///{tmp_path}/esc.sqlite3", clock=clock)
    notifier = Notifier(compositor, NotifierConfig(max_in_flight=3), clock=clock)
    worker = StoreWorker(compositor, notifier)
    results, _ = worker.decide([subscribe(call_id=f"c{n}") for n in range(5)])
    first = [r.notify for r in results if r.notify is not None]
    assert len(first) == 3 and len(notifier.in_flight) == 3  # two wait
    _, recordings = worker.decide([publish(b"open")])
    assert worker.after(recordings) == []  # still three out: the change waits
    more = worker.outcomes([delivered(job) for job in first])
    assert len(more) == 3 and len(notifier.in_flight) == 3
    assert all(b"open" in job.body for job in more)
    rest = worker.outcomes([delivered(job) for job in more])
    assert len(rest) == 2  # every watcher hears of the change once, none twice
    assert worker.outcomes([delivered(job) for job in rest]) == []
    compositor.close()


def test_notify_steps_yield_to_publishes_that_waited_and_the_rest_follow_folded(
        tmp_path, clock):
    """PUBLISH first: while PUBLISH batches wait past the target, a NOTIFY step gets only
    what the pacer's tokens pay for; the other watchers' changes wait and fold, and go
    out once the PUBLISHes let them (here: once none came for the pacer's window)."""
    compositor = Compositor.open(f"sqlite:///{tmp_path}/esc.sqlite3", clock=clock)
    notifier = Notifier(compositor, NotifierConfig(publish_wait_target=0.010), clock=clock)
    assert notifier.pacer is not None  # as `esc serve` runs it
    pace = Clock(0.0)
    notifier.pacer = NotifyPacer(target=0.010, min_share=0.05, burst=0.005, clock=pace)
    worker = StoreWorker(compositor, notifier)
    results, _ = worker.decide([subscribe(call_id=f"c{n}") for n in range(20)])
    assert worker.outcomes([delivered(r.notify) for r in results]) == []

    notifier.pacer._cost = 0.001  # measured: 1 ms per NOTIFY; a 5 ms burst pays for five
    for _ in range(10 * 20):  # ten half-second periods of PUBLISH batches, all late
        pace.now += 0.0255
        notifier.pacer.publishes(waited=0.050)
    assert notifier.pacer.share == 0.05
    _, recordings = worker.decide([publish(b"open")], waited=0.050)
    _, more = worker.decide([publish(b"busy")], waited=0.050)
    recordings += more
    first = worker.after(recordings)
    assert 1 <= len(first) <= 5  # the rest wait
    assert all(b"busy" in job.body for job in first)
    pace.now += 0.2  # no PUBLISH for the window: the steps run whole again
    rest = worker.outcomes([delivered(job) for job in first])
    assert len(first) + len(rest) == 20  # each watcher told once, of both changes folded
    assert {job.subscription_id for job in first} | {job.subscription_id for job in rest} \
        == {r.notify.subscription_id for r in results}
    assert all(b"busy" in job.body and b"open" in job.body for job in rest)
    assert notifier.stats["paced_steps"] >= 1
    compositor.close()
