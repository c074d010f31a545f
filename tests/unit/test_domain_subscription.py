"""The Subscription aggregate: its commands, invariants, events, topics and replay.

Every command gets `now`, the tags and the CSeq numbers from the test; the aggregate never
reads a clock or a random source, so replaying its events rebuilds exactly the same state.
"""

from __future__ import annotations

import pickle
import time
from uuid import uuid4

import pytest
from eventsourcing.application import Application
from eventsourcing.utils import get_topic, resolve_topic

from domain import (SUBSCRIPTION_EVENT_TYPES, CompositorError, CSeqOutOfOrder, NoMoreNotifies,
                    Notify, NotifyTarget, Subscription, SubscriptionNotActive)
from domain.subscription import ACTIVE, REASONS, TERMINATED

NOW = 1_000_000.0
AOR = "sip:alice@example.com"
ROUTES = ["<sip:p1.example.com;lr>", "<sip:p2.example.com;lr>"]


def new_subscription(expires_in: float = 600.0, now: float = NOW, **overrides) -> Subscription:
    args = dict(id=uuid4(), aor=AOR, event_package="dialog", call_id="c1@watcher",
                remote_tag="from-tag", local_tag="to-tag", watcher_uri="sip:bob@example.com",
                watcher_contact="<sip:bob@198.51.100.7:5070>", route_set=ROUTES,
                remote_cseq=1, transport="udp", host="203.0.113.5", port=5060,
                expires_at=now + expires_in, now=now, identity="bob")
    args.update(overrides)
    return Subscription.subscribe(**args)


def state_of(s: Subscription) -> dict:
    return {k: v for k, v in vars(s).items() if k != "_pending_events"}


def replay(events) -> Subscription:
    replayed = None
    for e in events:
        replayed = e.mutate(replayed)
    assert replayed is not None
    return replayed


# ---- subscribe ----------------------------------------------------------------------------------

def test_subscribe_records_the_dialog_the_target_and_the_expiry():
    s = new_subscription()
    assert (s.aor, s.event_package) == (AOR, "dialog")
    assert (s.call_id, s.remote_tag, s.local_tag) == ("c1@watcher", "from-tag", "to-tag")
    assert (s.watcher_uri, s.watcher_contact) == ("sip:bob@example.com",
                                                  "<sip:bob@198.51.100.7:5070>")
    assert s.route_set == tuple(ROUTES)
    assert s.remote_cseq == 1 and s.local_cseq == 0 and s.notify_count == 0
    # NOTIFYs go where the SUBSCRIBE came from, not to the Contact (DESIGN decision 11)
    assert s.target == NotifyTarget("udp", "203.0.113.5", 5060)
    assert s.expires_at == NOW + 600 and s.subscribed_at == s.updated_at == NOW
    assert s.identity == "bob" and s.state == ACTIVE and s.reason is None
    assert s.is_active(NOW) and not s.is_lapsed(NOW) and s.version == 1
    [subscribed] = s.collect_events()
    assert isinstance(subscribed, Subscription.Subscribed)
    assert subscribed.route_set == ROUTES and subscribed.at == NOW
    assert (subscribed.transport, subscribed.host, subscribed.port) == ("udp", "203.0.113.5", 5060)


def test_the_route_set_is_copied_not_shared():
    routes = list(ROUTES)
    s = new_subscription(route_set=routes)
    routes.append("<sip:evil.example.com;lr>")
    assert s.route_set == tuple(ROUTES)


def test_the_identity_is_optional_and_the_local_cseq_may_start_anywhere():
    s = new_subscription(identity=None, local_cseq=4000)
    assert s.identity is None
    assert s.notified(NOW) == Notify(cseq=4001, version=0, final=False)


@pytest.mark.parametrize("overrides", [
    {"expires_at": NOW}, {"expires_at": NOW - 1}, {"call_id": ""}, {"remote_tag": ""},
    {"local_tag": ""}, {"remote_cseq": -1}, {"local_cseq": -1}, {"transport": "sctp"},
    {"host": ""}, {"port": 0}, {"port": 65536}, {"route_set": "<sip:p1.example.com;lr>"},
])
def test_subscribe_refuses_what_no_caller_should_pass(overrides):
    with pytest.raises(ValueError):
        new_subscription(**overrides)


# ---- refresh ----------------------------------------------------------------------------------

def test_refresh_extends_the_expiry_and_records_the_cseq():
    s = new_subscription(expires_in=600)
    s.collect_events()
    s.refresh(now=NOW + 500, expires_at=NOW + 1100, remote_cseq=2)
    assert s.expires_at == NOW + 1100 and s.remote_cseq == 2 and s.updated_at == NOW + 500
    [refreshed] = s.collect_events()
    assert isinstance(refreshed, Subscription.Refreshed)
    assert refreshed.expires_before == NOW + 600 and refreshed.expires_at == NOW + 1100
    assert refreshed.remote_cseq == 2 and refreshed.at == NOW + 500
    assert not s.is_lapsed(NOW + 900)


@pytest.mark.parametrize("cseq", [1, 0])
def test_a_cseq_not_greater_than_the_last_is_refused(cseq):
    s = new_subscription()
    s.collect_events()
    with pytest.raises(CSeqOutOfOrder) as refused:
        s.refresh(now=NOW + 1, expires_at=NOW + 601, remote_cseq=cseq)
    assert (refused.value.cseq, refused.value.last_cseq) == (cseq, 1)
    assert "not greater" in str(refused.value)
    with pytest.raises(CSeqOutOfOrder):
        s.unsubscribe(now=NOW + 1, remote_cseq=cseq)
    assert s.collect_events() == [] and s.expires_at == NOW + 600 and s.state == ACTIVE


def test_cseq_gaps_are_fine_but_going_back_is_not():
    s = new_subscription()
    s.refresh(now=NOW + 1, expires_at=NOW + 601, remote_cseq=10)
    with pytest.raises(CSeqOutOfOrder):
        s.refresh(now=NOW + 2, expires_at=NOW + 602, remote_cseq=9)
    assert s.remote_cseq == 10


@pytest.mark.parametrize("now", [NOW + 600, NOW + 601])
def test_a_lapsed_subscription_cannot_be_refreshed(now):
    s = new_subscription(expires_in=600)
    s.collect_events()
    with pytest.raises(SubscriptionNotActive) as refused:
        s.refresh(now=now, expires_at=now + 600, remote_cseq=2)
    assert refused.value.reason == "timeout"
    with pytest.raises(SubscriptionNotActive):
        s.unsubscribe(now=now, remote_cseq=2)
    assert s.collect_events() == [] and s.remote_cseq == 1


def test_a_terminated_subscription_cannot_be_refreshed_even_before_its_expiry():
    s = new_subscription()
    s.terminate(NOW + 1, "rejected")
    s.collect_events()
    with pytest.raises(SubscriptionNotActive) as refused:
        s.refresh(now=NOW + 2, expires_at=NOW + 602, remote_cseq=2)
    assert refused.value.reason == "rejected"
    assert s.collect_events() == []


def test_a_refresh_must_expire_in_the_future():
    s = new_subscription()
    with pytest.raises(ValueError):
        s.refresh(now=NOW + 1, expires_at=NOW + 1, remote_cseq=2)


# ---- notified ---------------------------------------------------------------------------------

def test_each_notify_gets_the_next_cseq_and_dialog_info_version():
    s = new_subscription()
    s.collect_events()
    assert s.next_notify() == Notify(cseq=1, version=0, final=False)
    assert s.next_notify() == Notify(cseq=1, version=0, final=False)  # a query records nothing
    assert s.collect_events() == []
    sent = [s.notified(NOW + i) for i in range(3)]
    assert sent == [Notify(1, 0, False), Notify(2, 1, False), Notify(3, 2, False)]
    assert s.local_cseq == 3 and s.notify_count == 3 and s.updated_at == NOW + 2
    events = s.collect_events()
    assert [type(e) for e in events] == [Subscription.Notified] * 3
    assert [(e.cseq, e.version, e.final, e.at) for e in events] == [
        (1, 0, False, NOW), (2, 1, False, NOW + 1), (3, 2, False, NOW + 2)]


def test_versions_are_per_subscription():
    a, b = new_subscription(), new_subscription()
    a.notified(NOW)
    a.notified(NOW)
    assert b.notified(NOW).version == 0


def test_one_final_notify_after_termination_then_no_more():
    s = new_subscription()
    s.notified(NOW)
    s.terminate(NOW + 5, "deactivated")
    s.collect_events()
    assert s.next_notify() == Notify(cseq=2, version=1, final=True)
    assert s.notified(NOW + 5) == Notify(cseq=2, version=1, final=True)
    assert s.final_notified
    with pytest.raises(NoMoreNotifies):
        s.notified(NOW + 6)
    [final] = s.collect_events()
    assert final.final is True and final.cseq == 2


def test_the_final_notify_of_an_expired_subscription_may_be_sent_long_after():
    s = new_subscription(expires_in=60)
    s.expire(NOW + 3600)
    assert s.notified(NOW + 3601) == Notify(cseq=1, version=0, final=True)


def test_a_lapsed_subscription_is_expired_before_it_is_notified():
    s = new_subscription(expires_in=60)
    s.collect_events()
    with pytest.raises(SubscriptionNotActive):
        s.notified(NOW + 60)
    assert s.collect_events() == [] and s.local_cseq == 0


# ---- unsubscribe / terminate / expire ---------------------------------------------------------

def test_unsubscribe_ends_it_with_timeout_and_records_the_cseq():
    s = new_subscription()
    s.collect_events()
    s.unsubscribe(now=NOW + 10, remote_cseq=2)
    assert s.state == TERMINATED and s.reason == "timeout" and s.remote_cseq == 2
    assert s.terminated_at == s.updated_at == NOW + 10 and not s.is_active(NOW + 10)
    [terminated] = s.collect_events()
    assert isinstance(terminated, Subscription.Terminated)
    assert (terminated.reason, terminated.remote_cseq, terminated.at,
            terminated.noticed_at) == ("timeout", 2, NOW + 10, NOW + 10)
    with pytest.raises(SubscriptionNotActive):
        s.unsubscribe(now=NOW + 11, remote_cseq=3)


@pytest.mark.parametrize("reason", sorted(REASONS))
def test_terminate_with_any_rfc6665_reason(reason):
    s = new_subscription()
    s.collect_events()
    assert s.terminate(NOW + 10, reason) is True
    assert s.state == TERMINATED and s.reason == reason and s.terminated_at == NOW + 10
    [terminated] = s.collect_events()
    assert terminated.reason == reason and terminated.remote_cseq is None
    assert terminated.at == terminated.noticed_at == NOW + 10


def test_terminate_refuses_an_unknown_reason():
    s = new_subscription()
    with pytest.raises(ValueError):
        s.terminate(NOW, "bored")


def test_terminate_is_idempotent():
    s = new_subscription()
    assert s.terminate(NOW + 1, "noresource") is True
    s.collect_events()
    assert s.terminate(NOW + 2, "noresource") is False
    assert s.terminate(NOW + 3, "rejected") is False
    assert s.expire(NOW + 10_000) is False
    assert s.collect_events() == [] and s.reason == "noresource" and s.terminated_at == NOW + 1


def test_terminating_a_lapsed_subscription_records_the_timeout_it_already_was():
    s = new_subscription(expires_in=60)
    s.collect_events()
    assert s.terminate(NOW + 100, "deactivated") is True
    [terminated] = s.collect_events()
    assert terminated.reason == "timeout" and terminated.at == NOW + 60
    assert terminated.noticed_at == NOW + 100 and s.reason == "timeout"


def test_expire_is_a_no_op_before_the_expiry_time():
    s = new_subscription(expires_in=60)
    s.collect_events()
    assert s.expire(NOW) is False and s.expire(NOW + 59.999) is False
    assert s.collect_events() == [] and s.state == ACTIVE


def test_a_late_expiry_is_stamped_with_the_expiry_time_and_a_duplicate_is_harmless():
    s = new_subscription(expires_in=60)
    s.refresh(now=NOW + 50, expires_at=NOW + 110, remote_cseq=2)
    s.collect_events()
    assert s.expire(NOW + 100) is False  # the old expiry time no longer counts
    assert s.expire(NOW + 5000) is True
    [expired] = s.collect_events()
    assert isinstance(expired, Subscription.Terminated)
    assert expired.reason == "timeout" and expired.at == expired.expires_at == NOW + 110
    assert expired.noticed_at == NOW + 5000 and s.terminated_at == NOW + 110
    assert s.expire(NOW + 5000) is False and s.expire(NOW + 9000) is False
    assert s.terminate(NOW + 9000, "timeout") is False
    assert s.collect_events() == []


# ---- refusals ---------------------------------------------------------------------------------

@pytest.mark.parametrize("error", [SubscriptionNotActive("timeout"), CSeqOutOfOrder(3, 7),
                                   NoMoreNotifies()])
def test_refusals_are_compositor_errors_that_pickle_from_their_facts(error):
    assert isinstance(error, CompositorError)
    copy = pickle.loads(pickle.dumps(error))
    assert type(copy) is type(error) and copy.args == error.args and str(copy) == str(error)
    assert vars(copy) == vars(error)


# ---- topics -----------------------------------------------------------------------------------

def test_event_topics_are_explicit_and_stable():
    s = new_subscription(expires_in=60)
    s.refresh(now=NOW + 1, expires_at=NOW + 61, remote_cseq=2)
    s.notified(NOW + 2)
    s.terminate(NOW + 3, "rejected")
    topics = [get_topic(type(e)) for e in s.collect_events()]
    assert topics == ["esc:Subscription.Subscribed", "esc:Subscription.Refreshed",
                      "esc:Subscription.Notified", "esc:Subscription.Terminated"]
    assert get_topic(Subscription.Snapshot) == "esc:Subscription.Snapshot"
    assert get_topic(Subscription) == "esc:Subscription"
    for topic in [*SUBSCRIPTION_EVENT_TYPES, "esc:Subscription.Snapshot", "esc:Subscription"]:
        assert get_topic(resolve_topic(topic)) == topic
    assert set(SUBSCRIPTION_EVENT_TYPES.values()) == {"Subscribed", "Refreshed", "Notified",
                                                      "Terminated", "Adopted"}


# ---- replay -----------------------------------------------------------------------------------

def _lifecycle() -> Subscription:
    s = new_subscription(expires_in=60)
    s.notified(NOW)
    s.refresh(now=NOW + 30, expires_at=NOW + 90, remote_cseq=2)
    s.notified(NOW + 31)
    s.notified(NOW + 40)
    s.expire(NOW + 500)
    s.notified(NOW + 500)
    return s


def test_replaying_the_events_rebuilds_the_same_state():
    s = _lifecycle()
    replayed = replay(s.collect_events())
    assert state_of(replayed) == state_of(s)
    assert replayed.state == TERMINATED and replayed.reason == "timeout"
    assert replayed.terminated_at == NOW + 90 and replayed.final_notified


def test_a_snapshot_rebuilds_the_same_state():
    s = _lifecycle()
    s.collect_events()
    restored = Subscription.Snapshot.take(s).mutate(None)
    assert state_of(restored) == state_of(s)


def test_cseq_and_version_survive_a_reload_from_an_event_store():
    """Saved, then read back from the store (transcoded records, no aggregate cache): the
    next NOTIFY continues the sequence, so no CSeq or version is ever used twice."""
    app = Application()
    s = new_subscription()
    assert [s.notified(NOW + i) for i in range(2)] == [Notify(1, 0, False), Notify(2, 1, False)]
    app.save(s)
    stored = app.recorder.select_events(s.id)
    assert [r.topic for r in stored] == ["esc:Subscription.Subscribed",
                                         "esc:Subscription.Notified",
                                         "esc:Subscription.Notified"]
    loaded = app.repository.get(s.id)
    assert isinstance(loaded, Subscription) and loaded is not s
    assert state_of(loaded) == state_of(s)
    assert loaded.route_set == tuple(ROUTES) and loaded.target == s.target
    assert loaded.notified(NOW + 5) == Notify(cseq=3, version=2, final=False)
    app.save(loaded)
    again = app.repository.get(s.id)
    assert again.next_notify() == Notify(cseq=4, version=3, final=False)
    assert again.local_cseq == 3 and again.notify_count == 3


def test_commands_and_replay_never_read_the_clock(monkeypatch):
    def no_clock(*_):
        raise AssertionError("the domain read the clock")

    monkeypatch.setattr(time, "time", no_clock)
    monkeypatch.setattr(time, "time_ns", no_clock)
    monkeypatch.setattr(time, "monotonic", no_clock)
    s = _lifecycle()
    assert state_of(replay(s.collect_events())) == state_of(s)


def test_adopt_moves_ownership_once_and_never_for_an_ended_subscription():
    from uuid import uuid4

    from domain import Subscription

    subscription = Subscription.subscribe(
        id=uuid4(), aor="sip:alice@example.com", event_package="presence", call_id="c",
        remote_tag="r", local_tag="l", watcher_uri="sip:bob@example.com",
        watcher_contact="sip:bob@192.0.2.1", route_set=[], remote_cseq=1, transport="udp",
        host="192.0.2.1", port=5060, expires_at=100.0, now=0.0, owner="node-a")
    assert subscription.adopt("node-b", 1.0) is True
    assert subscription.owner == "node-b"
    assert subscription.adopt("node-b", 2.0) is False  # has it already
    events = subscription.collect_events()
    assert type(events[-1]).TOPIC == "esc:Subscription.Adopted"
    assert events[-1].previous_owner == "node-a"
    replayed = None
    for e in events:
        replayed = e.mutate(replayed)
    assert replayed.owner == "node-b"
    subscription.terminate(3.0, "deactivated")
    assert subscription.adopt("node-c", 4.0) is False
