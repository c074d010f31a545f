"""Expiry (expire_due, state that lapsed while down, the scheduler thread), the change feed,
tracked consumers and the audit history."""

from __future__ import annotations

import hashlib
import time

import pytest

from domain import Audit, ConditionalRequestFailed, publication_id_of
from infrastructure import ExpiryScheduler

NOW = 1_700_000_000.0
PIDF = "application/pidf+xml"
ALICE, BOB = "sip:alice@example.com", "sip:bob@example.com"


def wait_until(predicate, timeout: float, step: float = 0.01):
    """Poll `predicate` until it returns something truthy or `timeout` s pass (bounded)."""
    deadline = time.monotonic() + timeout
    while True:
        result = predicate()
        if result or time.monotonic() >= deadline:
            return result
        time.sleep(step)


def expired_records(c):
    return [r for r in c.feed() if r.type == "Expired"]


# ---- expire_due ----------------------------------------------------------------------------------

def test_expire_due_expires_exactly_those_due(open_compositor, store_url, pidf):
    c = open_compositor(store_url)
    tags = {name: c.publish(f"sip:{name}@example.com", "presence", body=pidf(),
                            content_type=PIDF, expires=expires, now=NOW).etag
            for name, expires in [("p10", 10), ("p20", 20), ("p30", 30), ("r10", 10),
                                  ("gone", 10)]}
    c.publish("sip:r10@example.com", "presence", if_match=tags["r10"], expires=60, now=NOW + 5)
    c.publish("sip:gone@example.com", "presence", if_match=tags["gone"], expires=0, now=NOW + 5)

    assert c.expire_due(now=NOW + 9.999) == 0
    assert c.expire_due(now=NOW + 10) == 1  # the expiry instant itself is due
    assert [r.aor for r in expired_records(c)] == ["sip:p10@example.com"]
    assert c.expire_due(now=NOW + 10) == 0
    assert c.expire_due(now=NOW + 25) == 1
    records = expired_records(c)
    assert [(r.aor, r.at, r.expires_at) for r in records] == [
        ("sip:p10@example.com", NOW + 10, NOW + 10),
        ("sip:p20@example.com", NOW + 20, NOW + 20),  # stamped with its own expiry time
    ]
    assert {p.aor for p in c.list(now=NOW + 25)} == {"sip:p30@example.com",
                                                     "sip:r10@example.com"}
    assert c.verify() == (2, 2, [])
    assert c.expire_due(now=NOW + 65) == 2
    assert c.view.count() == 0 and c.expire_due(now=NOW + 10**6) == 0
    assert len(expired_records(c)) == 4  # the removed one never expires


def test_expire_due_pages_through_the_view_index(open_compositor, store_url, pidf, clock):
    """The scheduler's source of due work is the view (an index on expires_at), read in
    bounded pages, not a list of everything held in memory: a compositor that never loaded
    a publication still expires it."""
    writer = open_compositor(store_url)
    expirer = open_compositor(store_url, clock=clock)
    for i in range(25):
        writer.publish(f"sip:u{i}@example.com", "presence", body=pidf(), content_type=PIDF,
                       expires=10 + i % 3, now=NOW)
    writer.publish(ALICE, "presence", body=pidf(), content_type=PIDF, expires=3600, now=NOW)

    pages = []
    due = expirer.view.due
    expirer.view.due = lambda now, limit: pages.append((limit, due(now, limit))) or pages[-1][1]
    clock.set(NOW + 20)
    assert expirer.expire_due(batch=10) == 25
    assert [(limit, len(rows)) for limit, rows in pages] == [(10, 10), (10, 10), (10, 5)]
    assert [r.expires_at for _, rows in pages for r in rows] == \
        sorted(r.expires_at for _, rows in pages for r in rows)
    assert [p.aor for p in writer.list(now=NOW + 20)] == [ALICE]
    assert expirer.verify() == (1, 1, [])

    plan = expirer.view.db.execute("EXPLAIN QUERY PLAN SELECT * FROM publications "
                                   "WHERE expires_at <= ? ORDER BY expires_at LIMIT 10",
                                   [NOW]).fetchall()
    assert any("idx_publications_expires_at" in str(row) for row in plan), plan


def test_expire_due_decides_on_the_stored_state_not_a_stale_cache(open_compositor,
                                                                   store_url, pidf):
    """Another process shortened the expiry with a refresh; this one cached the old one."""
    writer = open_compositor(store_url)
    expirer = open_compositor(store_url)
    t = writer.publish(ALICE, "presence", body=pidf(), content_type=PIDF, expires=3600,
                       now=NOW).etag
    assert expirer.find(ALICE, t, now=NOW + 1) is not None  # cached: expires at NOW + 3600
    writer.publish(ALICE, "presence", if_match=t, expires=60, now=NOW + 10)  # NOW + 70 now
    assert expirer.expire_due(now=NOW + 100) == 1
    [expired] = expired_records(expirer)
    assert (expired.at, expired.version) == (NOW + 70, 3)
    assert writer.expire_due(now=NOW + 100) == 0 and writer.verify()[2] == []


def test_state_that_lapsed_while_the_process_was_down_expires_at_once_with_its_own_time(
        open_compositor, store_url, pidf, clock):
    c = open_compositor(store_url)
    short = c.publish(ALICE, "presence", body=pidf(), content_type=PIDF, expires=10, now=NOW)
    c.publish(BOB, "presence", body=pidf(), content_type=PIDF, expires=3600, now=NOW)
    c.close()

    clock.set(NOW + 1000)  # "later": the process was down past alice's expiry
    c = open_compositor(store_url, clock=clock)
    assert expired_records(c) == []
    assert c.find(ALICE, short.etag) is None  # not live, even before the expiry is recorded
    assert [p.aor for p in c.list()] == [BOB]
    assert c.expire_due() == 1
    [expired] = expired_records(c)
    assert (expired.aor, expired.at, expired.expires_at) == (ALICE, NOW + 10, NOW + 10)
    assert [r.type for r in c.history(ALICE)] == ["Published", "Expired"]
    assert c.expire_due() == 0
    with pytest.raises(ConditionalRequestFailed):
        c.publish(ALICE, "presence", if_match=short.etag)


def test_the_scheduler_expires_lapsed_state_on_start(open_compositor, store_url, pidf, clock):
    c = open_compositor(store_url)
    c.publish(ALICE, "presence", body=pidf(), content_type=PIDF, expires=10, now=NOW)
    c.close()
    clock.set(NOW + 5000)
    c = open_compositor(store_url, clock=clock)
    scheduler = ExpiryScheduler(c, interval=0.05).start()
    try:
        records = wait_until(lambda: expired_records(c), timeout=1.0)
    finally:
        scheduler.stop()
    assert [(r.aor, r.at) for r in records] == [(ALICE, NOW + 10)]


@pytest.mark.parametrize("url", ["memory://", "sqlite"])
def test_the_scheduler_thread_expires_a_publication_within_a_second(
        open_compositor, store_url, pidf, clock, url):
    c = open_compositor(store_url if url == "sqlite" else url, clock=clock)
    scheduler = ExpiryScheduler(c, interval=0.05).start()
    try:
        short = c.publish(ALICE, "presence", body=pidf(), content_type=PIDF, expires=30)
        c.publish(BOB, "presence", body=pidf(), content_type=PIDF, expires=3600)
        clock.advance(29.9)
        assert wait_until(lambda: expired_records(c), timeout=0.2) == []  # not yet due
        clock.advance(0.2)
        started = time.monotonic()
        records = wait_until(lambda: expired_records(c), timeout=1.0)
        assert time.monotonic() - started < 1.0
    finally:
        scheduler.stop()
    assert [(r.aor, r.at, r.etag_before) for r in records] == [(ALICE, NOW + 30, short.etag)]
    assert [p.aor for p in c.list()] == [BOB]
    assert scheduler.expired == 1
    assert c.verify()[2] == []


def test_the_scheduler_on_real_time(open_compositor, store_url, pidf):
    c = open_compositor(store_url, min_expires=1)
    scheduler = ExpiryScheduler(c).start()
    try:
        accepted = c.publish(ALICE, "presence", body=pidf(), content_type=PIDF, expires=1)
        expires_at = c.find(ALICE, accepted.etag).expires_at
        records = wait_until(lambda: expired_records(c), timeout=3.0, step=0.02)
        noticed = time.time()
    finally:
        scheduler.stop()
    assert records, "the publication was not expired"
    assert records[0].at == expires_at
    assert noticed - expires_at < 1.0


def test_a_stopped_scheduler_does_nothing_more(open_compositor, pidf, clock):
    c = open_compositor("memory://", clock=clock)
    scheduler = ExpiryScheduler(c, interval=0.02).start()
    scheduler.stop()
    c.publish(ALICE, "presence", body=pidf(), content_type=PIDF, expires=10)
    clock.advance(100)
    assert wait_until(lambda: expired_records(c), timeout=0.2) == []
    assert c.expire_due() == 1


class StoreDown:
    """Stands in for a compositor whose store refuses every expiry pass."""

    def __init__(self, clock) -> None:
        self.calls: list[float] = []
        self.clock = clock
        self.view = self

    def expire_due(self):
        self.calls.append(time.monotonic())
        raise OSError("store unavailable")

    def next_expiry(self) -> float:
        return self.clock() - 100  # something is overdue all the time

    def now(self) -> float:
        return self.clock()


def test_the_scheduler_backs_off_while_the_store_is_down(clock):
    down = StoreDown(clock)
    scheduler = ExpiryScheduler(down, interval=0.05).start()
    try:
        assert wait_until(lambda: len(down.calls) >= 4, timeout=2.0)
    finally:
        scheduler.stop()
    gaps = [b - a for a, b in zip(down.calls, down.calls[1:])]
    assert min(gaps) >= 0.04, gaps  # it waits an interval between failed passes


# ---- the change feed ----------------------------------------------------------------------------

@pytest.fixture
def busy(open_compositor, store_url, pidf):
    """A store with 17 events of every type."""
    c = open_compositor(store_url)
    t = c.publish(ALICE, "presence", body=pidf(), content_type=PIDF, expires=100, now=NOW).etag
    for i in range(5):
        t = c.publish(ALICE, "presence", if_match=t, expires=100, now=NOW + 1 + i).etag
    t = c.publish(ALICE, "presence", if_match=t, body=pidf("closed"), content_type=PIDF,
                  expires=100, now=NOW + 10).etag
    b = c.publish(BOB, "presence", body=pidf(), content_type=PIDF, expires=10, now=NOW + 11)
    c.publish(BOB, "presence", if_match=b.etag, expires=0, now=NOW + 12)
    for i in range(4):
        c.publish(f"sip:u{i}@example.com", "presence", body=pidf(), content_type=PIDF,
                  expires=20, now=NOW + 13)
    c.expire_due(now=NOW + 40)
    return c


def test_feed_gives_every_event_in_order_from_any_position(busy):
    everything = list(busy.feed())
    assert [r.position for r in everything] == list(range(1, 18))
    assert [r.type for r in everything] == (["Published"] + ["Refreshed"] * 5 + ["Modified"]
                                            + ["Published", "Removed"] + ["Published"] * 4
                                            + ["Expired"] * 4)
    for after in range(0, 19):
        assert list(busy.feed(after=after)) == everything[after:]
        assert list(busy.feed(after=after, page=3)) == everything[after:]
        assert list(busy.feed(after=after, limit=4, page=3)) == everything[after:after + 4]
    # within one publication, versions follow the global order
    alice = [r for r in everything if r.aor == ALICE]
    assert [r.version for r in alice] == list(range(1, 8))


def test_a_consumer_resumes_from_its_committed_position_across_reopen(busy, open_compositor,
                                                                      store_url, pidf):
    consumer = busy.consumer("blf-notifier")
    assert consumer.position == 0
    first = consumer.poll(limit=5)
    assert [r.position for r in first] == [1, 2, 3, 4, 5]
    consumer.commit(first[-1].position)
    assert [r.position for r in consumer.poll(limit=2)] == [6, 7]  # polled, not committed
    other = busy.consumer("analytics")
    other.commit(12)
    busy.close()

    c = open_compositor(store_url)
    consumer = c.consumer("blf-notifier")
    assert consumer.position == 5
    assert [r.position for r in consumer.poll()] == list(range(6, 18))
    assert c.consumer("analytics").position == 12
    c.publish(ALICE, "presence", body=pidf(), content_type=PIDF, now=NOW + 50)
    consumer.commit(17)
    assert [(r.position, r.type) for r in consumer.poll()] == [(18, "Published")]
    assert c.consumer("never-seen").position == 0
    # rebuilding the projection does not make consumers start over
    c.rebuild_view()
    assert consumer.position == 17 and c.consumer("analytics").position == 12
    assert c.view.position() == 18
    with pytest.raises(ValueError):
        c.consumer("view")  # the projection's own tracking record is not a consumer


# ---- history ------------------------------------------------------------------------------------

def test_history_gives_every_event_with_its_audit_facts(open_compositor, store_url, pidf):
    c = open_compositor(store_url, events=["presence", "dialog"])
    body1, body2 = pidf("open"), pidf("closed")
    audit = [Audit(source=f"203.0.113.{i}:5060", transport=t, call_id=f"call-{i}@ua",
                   cseq=f"{i} PUBLISH", identity="alice")
             for i, t in enumerate(["udp", "tcp", "tls", "udp"], start=1)]
    t1 = c.publish(ALICE, "presence", body=body1, content_type=PIDF, expires=60, now=NOW,
                   audit=audit[0]).etag
    t2 = c.publish(ALICE, "presence", if_match=t1, expires=120, now=NOW + 10,
                   audit=audit[1]).etag
    t3 = c.publish(ALICE, "presence", if_match=t2, body=body2, content_type=PIDF, expires=30,
                   now=NOW + 20, audit=audit[2]).etag
    t4 = c.publish(ALICE, "presence", body=body1, content_type=PIDF, expires=60, now=NOW + 21,
                   audit=audit[3]).etag
    c.publish(ALICE, "presence", if_match=t3, expires=0, now=NOW + 22,
              audit=Audit(source="198.51.100.9:5061", transport="tls", call_id="rm@ua",
                          cseq="9 PUBLISH"))
    c.publish(BOB, "presence", body=body1, content_type=PIDF, expires=60, now=NOW + 23)
    c.publish(ALICE, "dialog", content_type="application/dialog-info+xml", now=NOW + 24,
              body=b'<dialog-info xmlns="urn:ietf:params:xml:ns:dialog-info" version="0" '
                   b'state="full" entity="sip:alice@example.com"/>')
    c.expire_due(now=NOW + 100)  # t4 (NOW + 81), bob's and the dialog one
    c.close()
    c = open_compositor(store_url, events=["presence", "dialog"])

    history = c.history("SIP:alice@EXAMPLE.com:5060", "presence")
    rows = [(r.type, r.at, r.etag_before, r.etag, r.expires_at) for r in history]
    assert rows == [
        ("Published", NOW, None, t1, NOW + 60),
        ("Refreshed", NOW + 10, t1, t2, NOW + 130),
        ("Modified", NOW + 20, t2, t3, NOW + 50),
        ("Published", NOW + 21, None, t4, NOW + 81),
        ("Removed", NOW + 22, t3, None, NOW + 50),
        ("Expired", NOW + 81, t4, None, NOW + 81),
    ]
    assert {r.aor for r in history} == {ALICE} and {r.event for r in history} == {"presence"}
    assert all(r.content_type == PIDF for r in history)
    # the state itself on Published/Modified, its hash on Refreshed/Removed/Expired
    assert [r.body for r in history] == [body1, None, body2, body1, None, None]
    sha = lambda b: hashlib.sha256(b).hexdigest()  # noqa: E731
    assert [r.body_sha256 for r in history] == [None, sha(body1), None, None, sha(body2),
                                                sha(body1)]
    assert [(r.source, r.transport, r.call_id, r.cseq, r.identity) for r in history[:4]] == \
        [(a.source, a.transport, a.call_id, a.cseq, a.identity) for a in audit]
    assert (history[4].source, history[4].transport, history[4].call_id,
            history[4].cseq) == ("198.51.100.9:5061", "tls", "rm@ua", "9 PUBLISH")
    assert history[5].source is None  # the compositor expired it, nobody asked
    assert {r.publication for r in history} == {publication_id_of(t1).hex,
                                                publication_id_of(t4).hex}
    # both packages without the filter, nothing of bob's
    assert [r.event for r in c.history(ALICE)].count("dialog") == 2
    assert len(c.history(BOB)) == 2
    assert c.history("sip:nobody@example.com") == []
    # the JSON form carries the same facts
    data = history[0].as_json()
    assert data["body"] == body1.decode() and data["call_id"] == "call-1@ua"


def test_history_keeps_the_decided_order_of_events_with_the_same_time(open_compositor,
                                                                      store_url, pidf):
    """A batch decides at one `now`: a remove and the next publication of the same resource
    share their time, and history must still show the remove first."""
    from domain import PublishRequest

    c = open_compositor(store_url)
    aors = [f"sip:u{i}@example.com" for i in range(12)]
    for aor in aors:
        t = c.publish(aor, "presence", body=pidf(), content_type=PIDF, now=NOW).etag
        c.process_many([PublishRequest(aor, "presence", None, None, 0, t),
                        PublishRequest(aor, "presence", pidf("closed"), PIDF, 60)], now=NOW + 1)
    for aor in aors:
        assert [r.type for r in c.history(aor)] == ["Published", "Removed", "Published"], aor


def test_history_keeps_each_publications_versions_in_order_across_skewed_clocks(
        open_compositor, store_url, pidf):
    """Two nodes whose clocks disagree: the second refresh carries an earlier time."""
    c = open_compositor(store_url)
    t = c.publish(ALICE, "presence", body=pidf(), content_type=PIDF, now=NOW + 10).etag
    t = c.publish(ALICE, "presence", if_match=t, now=NOW + 20).etag
    c.publish(ALICE, "presence", if_match=t, now=NOW + 15)  # a node 5 s behind
    assert [(r.type, r.version) for r in c.history(ALICE)] == [
        ("Published", 1), ("Refreshed", 2), ("Refreshed", 3)]
