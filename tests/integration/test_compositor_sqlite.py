"""The Compositor on its real store: SQLite files in the test's directory (and memory://).

Durability across reopen, the projection (rebuild, verify), stored topics, strongly
consistent lookups, group commit (one transaction, in-batch ordering, all-or-nothing on a
store failure), snapshots, and NkSIP's own example test.
"""

from __future__ import annotations

import sqlite3
from itertools import count

import pytest
from eventsourcing.persistence import OperationalError

import infrastructure.commands as commands_module
from domain import (ConditionalRequestFailed, PublishRequest, StoreUnavailable, compose_etag,
                    publication_id_of)
from infrastructure import Compositor
from infrastructure.application import SNAPSHOT_INTERVAL

NOW = 1_700_000_000.0
PIDF = "application/pidf+xml"
ALICE, BOB, CAROL = "sip:alice@example.com", "sip:bob@example.com", "sip:carol@example.com"


def sqlite_path(url: str) -> str:
    return url.removeprefix("sqlite:///").split("?")[0]


def stored_rows(url: str, sql: str) -> list[tuple]:
    with sqlite3.connect(sqlite_path(url)) as db:
        return db.execute(sql).fetchall()


def populate(c: Compositor, pidf) -> dict[str, str]:
    """A little of everything: live, refreshed, modified, removed; two packages."""
    tags = {}
    tags["alice"] = c.publish(ALICE, "presence", body=pidf("open"), content_type=PIDF,
                              expires=3600, now=NOW).etag
    tags["alice"] = c.publish(ALICE, "presence", if_match=tags["alice"], expires=3600,
                              now=NOW + 1).etag
    tags["alice2"] = c.publish(ALICE, "presence", body=pidf("closed", "t2"), content_type=PIDF,
                               expires=1800, now=NOW + 2).etag
    tags["bob"] = c.publish(BOB, "presence", body=pidf("open", entity=BOB), content_type=PIDF,
                            expires=600, now=NOW + 3).etag
    tags["bob"] = c.publish(BOB, "presence", if_match=tags["bob"], body=pidf("away", entity=BOB),
                            content_type=PIDF, expires=600, now=NOW + 4).etag
    gone = c.publish(CAROL, "presence", body=pidf(entity=CAROL), content_type=PIDF,
                     expires=600, now=NOW + 5).etag
    c.publish(CAROL, "presence", if_match=gone, expires=0, now=NOW + 6)
    tags["carol-removed"] = gone
    tags["dialog"] = c.publish(
        ALICE, "dialog", content_type="application/dialog-info+xml", expires=900, now=NOW + 7,
        body=b'<dialog-info xmlns="urn:ietf:params:xml:ns:dialog-info" version="1" '
             b'state="full" entity="sip:alice@example.com"/>').etag
    return tags


# ---- durability and the projection --------------------------------------------------------------

def test_a_new_compositor_on_the_same_file_sees_every_live_publication_and_its_history(
        open_compositor, store_url, pidf):
    first = open_compositor(store_url)
    tags = populate(first, pidf)
    live = first.list(now=NOW + 10)
    histories = {aor: first.history(aor) for aor in (ALICE, BOB, CAROL)}
    feed = list(first.feed())
    first.close()

    second = open_compositor(store_url)
    assert second.list(now=NOW + 10) == live
    assert len(live) == 4
    assert {aor: second.history(aor) for aor in (ALICE, BOB, CAROL)} == histories
    assert list(second.feed()) == feed
    for name in ("alice", "alice2", "bob"):
        aor = {"alice": ALICE, "alice2": ALICE, "bob": BOB}[name]
        assert second.find(aor, tags[name], "presence", now=NOW + 10) is not None
    assert second.find(ALICE, tags["dialog"], "dialog", now=NOW + 10) is not None
    assert second.find(CAROL, tags["carol-removed"], now=NOW + 10) is None
    # the reopened compositor continues the publications where they were
    refreshed = second.publish(BOB, "presence", if_match=tags["bob"], now=NOW + 11)
    assert second.find(BOB, refreshed.etag, now=NOW + 11).body == pidf("away", entity=BOB)
    assert second.verify() == (4, 4, [])


def test_the_rebuilt_projection_equals_the_live_one(open_compositor, store_url, pidf):
    c = open_compositor(store_url)
    populate(c, pidf)
    c.expire_due(now=NOW + 700)  # bob's ends by expiry
    live = c.view.snapshot()
    position = c.view.position()
    history = c.history(ALICE)
    assert c.rebuild_view() == position
    assert c.view.snapshot() == live
    assert c.view.position() == position
    assert c.history(ALICE) == history  # the resource index is rebuilt too
    assert c.verify() == (len(live), len(live), [])


def test_a_lost_view_file_is_rebuilt_on_open(open_compositor, store_url, pidf, tmp_path):
    c = open_compositor(store_url)
    populate(c, pidf)
    live = c.view.snapshot()
    c.close()
    view_files = list(tmp_path.glob("esc.sqlite3-view*"))
    assert view_files
    for path in view_files:
        path.unlink()
    reopened = open_compositor(store_url)
    assert reopened.view.snapshot() == live
    assert reopened.verify()[2] == []


def test_verify_finds_a_view_that_disagrees_with_the_events(open_compositor, store_url, pidf):
    c = open_compositor(store_url)
    tags = populate(c, pidf)
    assert c.verify()[2] == []
    pid = publication_id_of(tags["bob"]).hex
    with c.view.transaction() as conn:
        conn.execute("UPDATE publications SET etag = 'tampered' WHERE id = ?", [pid])
        conn.execute("DELETE FROM publications WHERE id = ?",
                     [publication_id_of(tags["alice2"]).hex])
    live, replayed, differences = c.verify()
    assert (live, replayed) == (3, 4)
    assert len(differences) == 2
    assert any(pid in d for d in differences)
    c.rebuild_view()
    assert c.verify() == (4, 4, [])


def test_stored_event_topics_are_the_explicit_ones(open_compositor, store_url, pidf):
    c = open_compositor(store_url)
    populate(c, pidf)
    c.expire_due(now=NOW + 700)
    topics = [row[0] for row in stored_rows(store_url,
                                            "SELECT topic FROM stored_events ORDER BY rowid")]
    assert topics == [
        "esc:Publication.Published", "esc:Publication.Refreshed",  # alice
        "esc:Publication.Published",  # alice2
        "esc:Publication.Published", "esc:Publication.Modified",  # bob
        "esc:Publication.Published", "esc:Publication.Removed",  # carol
        "esc:Publication.Published",  # dialog
        "esc:Publication.Expired",  # bob, at NOW + 604
    ]


def test_a_binary_body_round_trips_through_the_store(open_compositor, store_url):
    body = bytes(range(256)) * 4
    c = open_compositor(store_url, events=["presence", "x-binary"])
    a = c.publish(ALICE, "x-binary", body=body, content_type="application/octet-stream",
                  now=NOW)
    c.close()
    c = open_compositor(store_url, events=["presence", "x-binary"])
    assert c.find(ALICE, a.etag, "x-binary", now=NOW).body == body
    assert c.publications(ALICE, "x-binary", now=NOW)[0].body == body
    assert c.history(ALICE)[0].body == body


# ---- strong consistency across compositors sharing a store -----------------------------------------

def test_find_and_if_match_are_strongly_consistent_across_compositors(open_compositor,
                                                                      store_url, pidf):
    """Two compositors on one file (two processes or nodes): each must see the other's
    writes at once when it looks up an entity-tag, whatever its cache holds."""
    a = open_compositor(store_url)
    b = open_compositor(store_url)
    t1 = a.publish(ALICE, "presence", body=pidf(), content_type=PIDF, now=NOW).etag
    assert a.find(ALICE, t1, now=NOW) is not None  # a has it cached now
    t2 = b.publish(ALICE, "presence", if_match=t1, now=NOW + 1).etag
    assert a.find(ALICE, t1, now=NOW + 2) is None
    assert a.find(ALICE, t2, now=NOW + 2).etag == t2
    with pytest.raises(ConditionalRequestFailed):
        a.publish(ALICE, "presence", if_match=t1, now=NOW + 2)
    t3 = a.publish(ALICE, "presence", if_match=t2, now=NOW + 3).etag
    b.publish(ALICE, "presence", if_match=t3, expires=0, now=NOW + 4)
    assert a.find(ALICE, t3, now=NOW + 5) is None
    with pytest.raises(ConditionalRequestFailed):
        a.publish(ALICE, "presence", if_match=t3, now=NOW + 5)
    assert a.verify()[2] == [] and b.verify()[2] == []


# ---- group commit ----------------------------------------------------------------------------------

def counting_saves(c: Compositor) -> list[int]:
    """Counts the event store's transactions (one `insert_events` call is one transaction):
    the returned list gets the number of events each one wrote."""
    saves: list[int] = []
    insert_events = c.recorder.insert_events

    def counted(stored_events, **kwargs):
        saves.append(len(stored_events))
        return insert_events(stored_events, **kwargs)

    c.recorder.insert_events = counted
    return saves


@pytest.fixture
def predictable_secrets(monkeypatch):
    """Entity-tag secrets from a counter, so a batch can name a tag it will be given."""
    numbers = count()
    monkeypatch.setattr(commands_module, "new_secret", lambda _random: f"secret{next(numbers):010d}")
    return lambda n: f"secret{n:010d}"


def initial(aor, pidf, expires=3600):
    return PublishRequest(aor, "presence", pidf(), PIDF, expires)


def refresh(aor, etag, expires=3600):
    return PublishRequest(aor, "presence", None, None, expires, etag)


def test_a_batch_is_saved_in_one_transaction(open_compositor, store_url, pidf):
    c = open_compositor(store_url)
    a = c.publish(ALICE, "presence", body=pidf(), content_type=PIDF, now=NOW).etag
    saves = counting_saves(c)
    results = c.process_many([initial(BOB, pidf), initial(CAROL, pidf), refresh(ALICE, a),
                              initial("sip:dave@example.com", pidf)], now=NOW + 1)
    assert all(not isinstance(r, Exception) for r in results)
    assert saves == [4]
    positions = [r.position for r in c.feed()]
    assert positions == [1, 2, 3, 4, 5]
    assert c.verify() == (4, 4, [])


def test_a_later_request_in_a_batch_sees_the_earlier_ones_effect(open_compositor, store_url,
                                                                  pidf, predictable_secrets):
    c = open_compositor(store_url)
    t0 = c.publish(ALICE, "presence", body=pidf(), content_type=PIDF, now=NOW).etag  # secret 0
    pid = publication_id_of(t0)
    t1, t2 = compose_etag(pid, predictable_secrets(1)), compose_etag(pid, predictable_secrets(2))
    saves = counting_saves(c)
    results = c.process_many([
        refresh(ALICE, t0),            # -> t1
        refresh(ALICE, t1),            # sees the first refresh: -> t2
        refresh(ALICE, t0),            # the old tag after it: 412
        refresh(ALICE, t1),            # also old by now: 412
        PublishRequest(ALICE, "presence", pidf("closed"), PIDF, 600, t2),  # modify -> t3
    ], now=NOW + 1)
    assert [getattr(r, "etag", None) for r in results[:2]] == [t1, t2]
    assert isinstance(results[2], ConditionalRequestFailed)
    assert isinstance(results[3], ConditionalRequestFailed)
    t3 = results[4].etag
    assert t3 == compose_etag(pid, predictable_secrets(3))
    assert saves == [3]
    found = c.find(ALICE, t3, now=NOW + 1)
    assert found.body == pidf("closed") and found.version == 4
    assert [r.type for r in c.feed()] == ["Published", "Refreshed", "Refreshed", "Modified"]


def test_a_batch_that_creates_then_removes_in_order(open_compositor, store_url, pidf,
                                                    predictable_secrets):
    c = open_compositor(store_url)
    results = c.process_many([initial(ALICE, pidf)], now=NOW)
    pid = publication_id_of(results[0].etag)
    t1 = compose_etag(pid, predictable_secrets(1))
    results = c.process_many([refresh(ALICE, results[0].etag), refresh(ALICE, t1, expires=0),
                              refresh(ALICE, t1)], now=NOW + 1)
    assert results[0].etag == t1 and results[1].expires == 0
    assert isinstance(results[2], ConditionalRequestFailed)
    assert c.list(now=NOW + 1) == [] and c.verify() == (0, 0, [])


def test_a_failed_save_fails_every_request_of_the_batch_and_stores_nothing(
        open_compositor, tmp_path, pidf, predictable_secrets):
    """A real database failure: another connection holds the write lock longer than the
    compositor's lock timeout, so the batch's transaction cannot commit."""
    path = tmp_path / "locked.sqlite3"
    c = open_compositor(f"sqlite:///{path}?lock_timeout=1")
    a = c.publish(ALICE, "presence", body=pidf(), content_type=PIDF, now=NOW).etag   # secret 0
    b = c.publish(BOB, "presence", body=pidf(), content_type=PIDF, now=NOW).etag     # secret 1
    view_before, position_before = c.view.snapshot(), c.view.position()
    feed_before = list(c.feed())

    locker = sqlite3.connect(path, isolation_level=None)
    locker.execute("BEGIN IMMEDIATE")
    try:
        results = c.process_many([
            initial(CAROL, pidf),                                            # secret 2
            refresh(ALICE, a),                                               # secret 3
            PublishRequest(BOB, "presence", pidf("closed"), PIDF, 600, b),   # secret 4
            refresh(ALICE, compose_etag(publication_id_of(a), predictable_secrets(3))),  # 5
        ], now=NOW + 1)
    finally:
        locker.execute("ROLLBACK")
        locker.close()

    assert len(results) == 4
    assert all(isinstance(r, StoreUnavailable) for r in results)
    # nothing was stored, and the view did not move
    assert list(c.feed()) == feed_before
    assert c.view.snapshot() == view_before and c.view.position() == position_before
    would_be = [compose_etag(publication_id_of(a), predictable_secrets(3)),
                compose_etag(publication_id_of(b), predictable_secrets(4)),
                compose_etag(publication_id_of(a), predictable_secrets(5))]
    for tag in would_be:
        assert c.find(ALICE, tag, now=NOW + 2) is None
        assert c.find(BOB, tag, now=NOW + 2) is None
    assert c.publications(CAROL, now=NOW + 2) == []
    # nor was anything half-applied in memory: the old tags still work, the new ones never
    assert c.find(BOB, b, now=NOW + 2).body == pidf()
    for tag in would_be:
        with pytest.raises(ConditionalRequestFailed):
            c.publish(ALICE, "presence", if_match=tag, now=NOW + 2)
    assert c.publish(ALICE, "presence", if_match=a, now=NOW + 2).etag
    assert c.publish(BOB, "presence", if_match=b, now=NOW + 2).etag
    fresh = open_compositor(f"sqlite:///{path}")
    assert [r.type for r in fresh.feed()] == ["Published", "Published", "Refreshed", "Refreshed"]
    assert fresh.verify() == (2, 2, [])


# ---- snapshots ---------------------------------------------------------------------------------------

def test_a_publication_refreshed_hundreds_of_times_loads_from_its_snapshot(
        open_compositor, store_url, pidf):
    c = open_compositor(store_url)
    tag = c.publish(ALICE, "presence", body=pidf(), content_type=PIDF, expires=3600,
                    now=NOW).etag
    for i in range(1, 321):
        tag = c.publish(ALICE, "presence", if_match=tag, expires=3600, now=NOW + i).etag
    pid = publication_id_of(tag)
    c.close()

    snapshots = stored_rows(store_url, "SELECT originator_version, topic FROM stored_snapshots "
                                       "ORDER BY originator_version")
    assert [v for v, _ in snapshots] == list(range(SNAPSHOT_INTERVAL, 321, SNAPSHOT_INTERVAL))
    assert {t for _, t in snapshots} == {"esc:Publication.Snapshot"}

    c = open_compositor(store_url)  # a fresh cache: the aggregate comes from the store
    loaded = c.repository.get(pid)
    assert loaded.version == 321
    replayed = None
    for event in c.events.get(pid):
        replayed = event.mutate(replayed)
    assert {k: v for k, v in vars(loaded).items() if k != "_pending_events"} == \
        {k: v for k, v in vars(replayed).items() if k != "_pending_events"}
    found = c.find(ALICE, tag, now=NOW + 321)
    assert found.version == 321 and found.body == pidf() and found.expires_at == NOW + 320 + 3600
    nxt = c.publish(ALICE, "presence", if_match=tag, now=NOW + 322).etag
    assert c.find(ALICE, nxt, now=NOW + 322).version == 322
    assert len(c.history(ALICE)) == 322


class FailingInserts:
    """A recorder whose writes fail (the disk is full), reads pass through."""

    def __init__(self, inner) -> None:
        self.inner = inner

    def insert_events(self, *args, **kwargs):
        raise OperationalError("database or disk is full")

    def __getattr__(self, name):
        return getattr(self.inner, name)


def test_a_failed_snapshot_write_does_not_fail_a_durable_change(open_compositor, store_url,
                                                                pidf):
    c = open_compositor(store_url)
    tag = c.publish(ALICE, "presence", body=pidf(), content_type=PIDF, now=NOW).etag
    for i in range(1, SNAPSHOT_INTERVAL - 1):
        tag = c.publish(ALICE, "presence", if_match=tag, now=NOW + i).etag
    snapshots = c.snapshots.recorder
    c.snapshots.recorder = FailingInserts(snapshots)
    # this refresh makes version SNAPSHOT_INTERVAL: its events commit, its snapshot cannot
    accepted = c.publish(ALICE, "presence", if_match=tag, now=NOW + 100)
    assert c.find(ALICE, accepted.etag, now=NOW + 100).version == SNAPSHOT_INTERVAL
    c.snapshots.recorder = snapshots
    assert stored_rows(store_url, "SELECT COUNT(*) FROM stored_snapshots") == [(0,)]
    fresh = open_compositor(store_url)
    assert fresh.find(ALICE, accepted.etag, now=NOW + 101).version == SNAPSHOT_INTERVAL
    assert fresh.verify()[2] == []


# ---- NkSIP's own example (nksip_event_compositor test), with RFC 3903's tags --------------------------

def test_nksip_event_compositor_example(open_compositor, store_url):
    c = open_compositor(store_url, events=["nkpublish"])
    ruri = "sip:user1@127.0.0.1:5070"
    aor = "sip:user1@127.0.0.1"

    first = c.publish(ruri, "nkpublish", expires=5, body=b"data1", now=NOW)
    assert first.expires == 5
    assert c.find(aor, first.etag, now=NOW).body == b"data1"

    # "This ETag1 is not at the server"
    for foreign in ("other", "nonexistent.0"):
        with pytest.raises(ConditionalRequestFailed):
            c.publish(ruri, "nkpublish", if_match=foreign, now=NOW + 1)

    removed = c.publish(ruri, "nkpublish", expires=0, if_match=first.etag, now=NOW + 1)
    assert (removed.etag, removed.expires) == (first.etag, 0)
    assert c.find(aor, first.etag, now=NOW + 1) is None

    second = c.publish(ruri, "nkpublish", expires=60, body=b"data2", now=NOW + 2)
    assert second.expires == 60 and second.etag != first.etag
    assert c.find(aor, second.etag, now=NOW + 2).body == b"data2"

    # NkSIP answers a modify with the same tag; RFC 3903 section 6 step 6 wants a new one
    third = c.publish(ruri, "nkpublish", expires=1, if_match=second.etag, body=b"data3",
                      now=NOW + 3)
    assert third.expires == 1
    assert third.etag not in (first.etag, second.etag)
    assert c.find(aor, third.etag, now=NOW + 3).body == b"data3"
    assert c.find(aor, second.etag, now=NOW + 3) is None
    # and it lapses a second later
    assert c.find(aor, third.etag, now=NOW + 4) is None
    assert c.expire_due(now=NOW + 4) == 1
    assert [r.type for r in c.history(aor)] == ["Published", "Removed", "Published",
                                                 "Modified", "Expired"]


def test_clear_forgets_everything_including_cached_state(open_compositor, store_url, pidf):
    c = open_compositor(store_url)
    tags = populate(c, pidf)
    consumer = c.consumer("notifier")
    consumer.commit(3)
    c.clear()
    assert c.list() == [] and list(c.feed()) == [] and c.history(ALICE) == []
    assert consumer.position == 0
    assert stored_rows(store_url, "SELECT COUNT(*) FROM stored_events") == [(0,)]
    assert stored_rows(store_url, "SELECT COUNT(*) FROM stored_snapshots") == [(0,)]
    for name in ("alice", "bob"):
        aor = ALICE if name == "alice" else BOB
        assert c.find(aor, tags[name], now=NOW + 10) is None
        with pytest.raises(ConditionalRequestFailed):
            c.publish(aor, "presence", if_match=tags[name], now=NOW + 10)
    assert list(c.feed()) == []
    fresh = c.publish(ALICE, "presence", body=pidf(), content_type=PIDF, now=NOW + 20)
    assert [r.position for r in c.feed()] == [1] and c.verify() == (1, 1, [])
    c.close()
    reopened = open_compositor(store_url)
    assert [p.etag for p in reopened.list(now=NOW + 20)] == [fresh.etag]


# ---- memory:// ------------------------------------------------------------------------------------

def test_the_memory_store_serves_the_whole_api(open_compositor, pidf):
    c = open_compositor("memory://")
    tags = populate(c, pidf)
    assert len(c.list(now=NOW + 10)) == 4
    assert len(c.publications(ALICE, "presence", now=NOW + 10)) == 2
    assert c.find(BOB, tags["bob"], "presence", now=NOW + 10).body == pidf("away", entity=BOB)
    content_type, composed = c.compose(ALICE, "presence", now=NOW + 10)
    assert content_type == PIDF and b'id="t1"' in composed and b'id="t2"' in composed
    assert [r.type for r in c.history(CAROL)] == ["Published", "Removed"]
    assert [r.position for r in c.feed(after=3)] == list(range(4, 9))
    assert c.expire_due(now=NOW + 604) == 1  # bob
    assert c.verify() == (3, 3, [])
    assert c.rebuild_view() == 9 and c.verify() == (3, 3, [])
    consumer = c.consumer("notifier")
    consumer.commit(consumer.poll(limit=5)[-1].position)
    assert consumer.position == 5
    c.clear()
    assert c.list() == [] and list(c.feed()) == [] and c.history(ALICE) == []
    assert c.find(ALICE, tags["alice"], now=NOW + 10) is None
    with pytest.raises(ConditionalRequestFailed):
        c.publish(ALICE, "presence", if_match=tags["alice"], now=NOW + 10)
    again = c.publish(ALICE, "presence", body=pidf(), content_type=PIDF, now=NOW + 20)
    assert c.find(ALICE, again.etag, now=NOW + 20) is not None
    assert [r.position for r in c.feed()] == [1]


def test_a_view_left_from_another_store_is_rebuilt_not_trusted(tmp_path, pidf):
    """The store file was replaced but its view file stayed: the view has applied more
    events than the new store holds, so it is forgotten and rebuilt from this store."""
    import shutil

    from infrastructure import Compositor

    url = f"sqlite:///{tmp_path}/esc.sqlite3"
    with Compositor.open(url) as old:
        for n in range(5):
            old.publish(f"sip:old{n}@example.com", "presence", body=pidf("open"),
                        content_type=PIDF, expires=600)
    view = next(p for p in tmp_path.iterdir() if p.name.endswith("-view"))
    kept = tmp_path / "kept-view"
    shutil.copy(view, kept)
    for path in tmp_path.glob("esc.sqlite3*"):
        path.unlink()
    shutil.copy(kept, view)
    with Compositor.open(url) as new:
        new.publish("sip:new@example.com", "presence", body=pidf("open"),
                    content_type=PIDF, expires=600)
        assert [f.aor for f in new.list()] == ["sip:new@example.com"]
        assert [r.type for r in new.history("sip:new@example.com")] == ["Published"]
