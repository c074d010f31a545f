"""What the store URL chooses: the persistence module and what its recorders can do, the
settings the application reads, and the projection as the library sees it."""

from __future__ import annotations

import pytest
from eventsourcing.persistence import Tracking

from domain import PublishRequest
from infrastructure import Compositor
from infrastructure.application import SNAPSHOT_INTERVAL
from infrastructure.memory import EscPOPOFactory
from infrastructure.sqlite import EscSQLiteFactory

NOW = 1_700_000_000.0
PIDF = "application/pidf+xml"


def initial(aor: str, pidf, expires: int = 60) -> PublishRequest:
    return PublishRequest(aor, "presence", pidf(entity=aor), PIDF, expires)


@pytest.mark.parametrize("url, factory", [("sqlite:///{tmp}/e.sqlite3", EscSQLiteFactory),
                                          ("memory://", EscPOPOFactory)])
def test_each_scheme_chooses_its_persistence_module(open_compositor, tmp_path, url, factory):
    c = open_compositor(url.format(tmp=tmp_path))
    assert type(c.app.factory) is factory
    assert hasattr(c.recorder, "delete_all") and hasattr(c.snapshots.recorder, "delete_all")
    assert c.app.shared is False  # only PostgreSQL is written by other nodes as a rule


def test_the_process_environment_does_not_move_the_store(open_compositor, store_url, pidf,
                                                         monkeypatch, tmp_path):
    monkeypatch.setenv("PERSISTENCE_MODULE", "eventsourcing.popo")
    monkeypatch.setenv("SQLITE_DBNAME", str(tmp_path / "elsewhere.sqlite3"))
    c = open_compositor(store_url)
    tag = c.publish("sip:alice@example.com", "presence", body=pidf(), content_type=PIDF,
                    expires=600, now=NOW).etag
    c.close()
    assert not (tmp_path / "elsewhere.sqlite3").exists()
    assert open_compositor(store_url).find("sip:alice@example.com", tag, now=NOW) is not None


def test_a_store_that_cannot_delete_everything_refuses_clear(open_compositor, pidf):
    c = open_compositor("module:eventsourcing.popo")
    c.publish("sip:alice@example.com", "presence", body=pidf(), content_type=PIDF, now=NOW)
    with pytest.raises(NotImplementedError):
        c.clear()
    assert len(list(c.feed())) == 1  # nothing was deleted


def test_expiry_reads_uncached_publications_in_one_query(open_compositor, store_url, pidf):
    first = open_compositor(store_url)
    first.process_many([initial(f"sip:u{i}@example.com", pidf) for i in range(20)], now=NOW)
    # one publication with a long history: it has a snapshot and is loaded through it
    tag = first.publish("sip:long@example.com", "presence", body=pidf(), content_type=PIDF,
                        expires=60, now=NOW).etag
    for i in range(1, SNAPSHOT_INTERVAL + 5):
        tag = first.publish("sip:long@example.com", "presence", if_match=tag, expires=60,
                            now=NOW + i / 1000).etag
    first.close()

    c = open_compositor(store_url)  # a fresh cache
    batches: list[int] = []
    select_events_of = c.recorder.select_events_of

    def counted(ids):
        batches.append(len(ids))
        return select_events_of(ids)

    c.recorder.select_events_of = counted
    assert c.expire_due(now=NOW + 120) == 21
    assert batches == [20]
    assert c.list(now=NOW + 120) == [] and c.verify() == (0, 0, [])
    assert {r.version for r in c.feed() if r.type == "Expired"} == {2, SNAPSHOT_INTERVAL + 6}


def test_the_view_is_a_tracking_recorder_and_the_projection_a_library_projection(
        open_compositor, pidf):
    c = open_compositor("memory://")
    c.publish("sip:alice@example.com", "presence", body=pidf(), content_type=PIDF, now=NOW)
    assert c.view.max_tracking_id(c.app.name) == 1
    assert c.view.has_tracking_id(c.app.name, 1) and not c.view.has_tracking_id(c.app.name, 2)

    notifications = c.recorder.select_notifications(start=1, limit=10)
    c.rebuild_view()
    live = c.view.snapshot()
    c.view.reset(consumers=False)
    event = c.app.mapper.to_domain_event(notifications[0])
    c.projection.process_event(event, Tracking(c.app.name, notifications[0].id))
    c.projection.process_event(event, Tracking(c.app.name, notifications[0].id))  # again
    assert c.view.snapshot() == live and c.view.max_tracking_id(c.app.name) == 1
    assert c.verify() == (1, 1, [])


def test_the_compositor_is_a_context_manager_that_closes_its_store(store_url, pidf):
    with Compositor.open(store_url) as esc:  # as README's example uses it
        tag = esc.publish("sip:alice@example.com", "presence", body=pidf(), content_type=PIDF,
                          expires=600, now=NOW).etag
    assert esc.app.closing.is_set()
    with Compositor.open(store_url) as esc:
        assert esc.find("sip:alice@example.com", tag, now=NOW) is not None
