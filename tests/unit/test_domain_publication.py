"""The Publication aggregate: its commands, invariants, events and topics.

Every command gets `now` (and the new entity-tag) from the test; the aggregate must never
read a clock or a random source, so replaying its events rebuilds exactly the same state.
"""

from __future__ import annotations

import re
import time
from pathlib import Path
from uuid import uuid4

import pytest
from eventsourcing.utils import get_topic, resolve_topic

import domain
from domain import Audit, ConditionalRequestFailed, Publication, body_hash
from domain.publication import EVENT_TYPES, EXPIRED, LIVE, REMOVED

NOW = 1_000_000.0
AOR = "sip:alice@example.com"
PRESENCE = "presence"
PIDF = b'<presence xmlns="urn:ietf:params:xml:ns:pidf" entity="sip:alice@example.com"/>'
PIDF2 = b'<presence xmlns="urn:ietf:params:xml:ns:pidf" entity="sip:alice@example.com"><tuple id="x"/></presence>'
AUDIT = Audit(source="203.0.113.5:5060", transport="udp", call_id="c1@host", cseq="1 PUBLISH",
              identity="alice")


def tag(publication_id, secret: str) -> str:
    return f"{publication_id.hex}.{secret}"


def new_publication(expires_in: float = 60.0, now: float = NOW, audit: Audit = AUDIT):
    pid = uuid4()
    return Publication.publish(id=pid, aor=AOR, event_package=PRESENCE, etag=tag(pid, "secret-0"),
                               content_type="application/pidf+xml", body=PIDF,
                               expires_at=now + expires_in, now=now, audit=audit)


def refresh(p, if_match, secret, now, expires_in=60.0, **kw):
    new = tag(p.id, secret)
    p.refresh(aor=kw.get("aor", AOR), event_package=kw.get("event_package", PRESENCE),
              if_match=if_match, new_etag=new, expires_at=now + expires_in, now=now)
    return new


def modify(p, if_match, secret, now, body=PIDF2, expires_in=60.0):
    new = tag(p.id, secret)
    p.modify(aor=AOR, event_package=PRESENCE, if_match=if_match, new_etag=new,
             content_type="application/pidf+xml", body=body, expires_at=now + expires_in,
             now=now)
    return new


def pending_types(p) -> list[str]:
    return [type(e).__name__ for e in p.collect_events()]


def state_of(p) -> dict:
    return {k: v for k, v in vars(p).items() if k != "_pending_events"}


# ---- publish ----------------------------------------------------------------------------------

def test_publish_records_the_state_and_the_audit_facts():
    p = new_publication()
    assert (p.aor, p.event_package, p.content_type, p.body) == (AOR, PRESENCE,
                                                                "application/pidf+xml", PIDF)
    assert p.etag == tag(p.id, "secret-0")
    assert p.expires_at == NOW + 60 and p.published_at == NOW and p.updated_at == NOW
    assert p.state == LIVE and p.version == 1
    [published] = p.collect_events()
    assert isinstance(published, Publication.Published)
    assert published.at == NOW and published.expires_at == NOW + 60
    assert (published.source, published.transport, published.call_id, published.cseq,
            published.identity) == ("203.0.113.5:5060", "udp", "c1@host", "1 PUBLISH", "alice")


@pytest.mark.parametrize("expires_in", [0, -1])
def test_an_initial_publication_must_expire_in_the_future(expires_in):
    with pytest.raises(ValueError):
        new_publication(expires_in=expires_in)


# ---- refresh / modify / remove ----------------------------------------------------------------

def test_refresh_extends_the_expiry_replaces_the_tag_and_keeps_the_state():
    p = new_publication()
    p.collect_events()
    new = refresh(p, p.etag, "secret-1", now=NOW + 30, expires_in=120)
    assert p.etag == new != tag(p.id, "secret-0")
    assert p.expires_at == NOW + 150 and p.updated_at == NOW + 30
    assert p.body == PIDF and p.content_type == "application/pidf+xml" and p.state == LIVE
    [refreshed] = p.collect_events()
    assert isinstance(refreshed, Publication.Refreshed)
    assert refreshed.etag_before == tag(p.id, "secret-0") and refreshed.etag == new
    # a refresh carries the hash of the state it keeps, not the state itself
    assert refreshed.body_sha256 == body_hash(PIDF) and not hasattr(refreshed, "body")


def test_modify_replaces_the_body_and_the_tag():
    p = new_publication()
    p.collect_events()
    new = modify(p, p.etag, "secret-1", now=NOW + 10)
    assert p.body == PIDF2 and p.etag == new and p.expires_at == NOW + 70
    [modified] = p.collect_events()
    assert isinstance(modified, Publication.Modified)
    assert modified.body == PIDF2 and modified.etag_before == tag(p.id, "secret-0")


def test_remove_ends_the_publication():
    p = new_publication()
    p.collect_events()
    p.remove(aor=AOR, event_package=PRESENCE, if_match=p.etag, now=NOW + 5)
    assert p.state == REMOVED and not p.is_live(NOW + 5)
    [removed] = p.collect_events()
    assert isinstance(removed, Publication.Removed)
    assert removed.etag_before == tag(p.id, "secret-0") and removed.body_sha256 == body_hash(PIDF)


@pytest.mark.parametrize("case", ["unknown tag", "other resource", "other package",
                                  "at expiry", "after expiry"])
def test_commands_need_a_matching_live_publication(case):
    p = new_publication()
    p.collect_events()
    if_match, aor, package, now = p.etag, AOR, PRESENCE, NOW + 1
    if case == "unknown tag":
        if_match = tag(p.id, "guessed")
    elif case == "other resource":
        aor = "sip:bob@example.com"
    elif case == "other package":
        package = "dialog"
    elif case == "at expiry":
        now = NOW + 60
    elif case == "after expiry":
        now = NOW + 61
    with pytest.raises(ConditionalRequestFailed):
        p.refresh(aor=aor, event_package=package, if_match=if_match,
                  new_etag=tag(p.id, "s1"), expires_at=now + 60, now=now)
    with pytest.raises(ConditionalRequestFailed):
        p.modify(aor=aor, event_package=package, if_match=if_match, new_etag=tag(p.id, "s2"),
                 content_type="application/pidf+xml", body=PIDF2, expires_at=now + 60, now=now)
    with pytest.raises(ConditionalRequestFailed):
        p.remove(aor=aor, event_package=package, if_match=if_match, now=now)
    # a refusal leaves no trace
    assert p.collect_events() == [] and p.etag == tag(p.id, "secret-0") and p.body == PIDF


def test_an_old_tag_is_refused_after_refresh_and_after_modify():
    p = new_publication()
    first = p.etag
    second = refresh(p, first, "s1", now=NOW + 1)
    with pytest.raises(ConditionalRequestFailed):
        refresh(p, first, "s2", now=NOW + 2)
    modify(p, second, "s3", now=NOW + 3)
    with pytest.raises(ConditionalRequestFailed):
        modify(p, second, "s4", now=NOW + 4)


def test_nothing_applies_to_a_removed_publication():
    p = new_publication()
    current = p.etag
    p.remove(aor=AOR, event_package=PRESENCE, if_match=current, now=NOW + 1)
    p.collect_events()
    for command in (lambda: refresh(p, current, "s1", now=NOW + 2),
                    lambda: modify(p, current, "s2", now=NOW + 2),
                    lambda: p.remove(aor=AOR, event_package=PRESENCE, if_match=current,
                                     now=NOW + 2)):
        with pytest.raises(ConditionalRequestFailed):
            command()
    assert p.expire(NOW + 1000) is False
    assert p.collect_events() == [] and p.state == REMOVED


# ---- expire -----------------------------------------------------------------------------------

def test_expire_is_a_no_op_before_the_expiry_time():
    p = new_publication(expires_in=60)
    p.collect_events()
    assert p.expire(NOW) is False
    assert p.expire(NOW + 59.999) is False
    assert p.collect_events() == [] and p.state == LIVE


def test_expire_at_the_expiry_time_emits_expired_stamped_with_its_own_expiry():
    p = new_publication(expires_in=60)
    p.collect_events()
    assert p.expire(NOW + 60) is True
    [expired] = p.collect_events()
    assert isinstance(expired, Publication.Expired)
    assert expired.at == expired.expires_at == NOW + 60 and expired.noticed_at == NOW + 60
    assert p.state == EXPIRED and p.updated_at == NOW + 60


def test_a_late_expiry_is_still_stamped_with_the_expiry_time_and_a_duplicate_is_harmless():
    p = new_publication(expires_in=60)
    refresh(p, p.etag, "s1", now=NOW + 50, expires_in=60)  # now expires at NOW + 110
    p.collect_events()
    assert p.expire(NOW + 100) is False  # the old expiry time no longer counts
    assert p.expire(NOW + 5000) is True
    [expired] = p.collect_events()
    assert expired.at == NOW + 110 and expired.noticed_at == NOW + 5000
    assert p.expire(NOW + 5000) is False
    assert p.expire(NOW + 9000) is False
    assert p.collect_events() == []


def test_nothing_applies_to_an_expired_publication():
    p = new_publication(expires_in=60)
    current = p.etag
    p.expire(NOW + 60)
    p.collect_events()
    # even with a `now` before the expiry time: the state is final
    with pytest.raises(ConditionalRequestFailed):
        refresh(p, current, "s1", now=NOW + 10)
    with pytest.raises(ConditionalRequestFailed):
        p.remove(aor=AOR, event_package=PRESENCE, if_match=current, now=NOW + 10)
    assert p.collect_events() == []


# ---- topics -----------------------------------------------------------------------------------

def test_event_topics_are_explicit_and_stable():
    p = new_publication(expires_in=60)
    etag = refresh(p, p.etag, "s1", now=NOW + 1)
    etag = modify(p, etag, "s2", now=NOW + 2)
    p.remove(aor=AOR, event_package=PRESENCE, if_match=etag, now=NOW + 3)
    q = new_publication(expires_in=60)
    q.expire(NOW + 60)
    topics = [get_topic(type(e)) for e in p.collect_events() + q.collect_events()]
    assert topics == ["esc:Publication.Published", "esc:Publication.Refreshed",
                      "esc:Publication.Modified", "esc:Publication.Removed",
                      "esc:Publication.Published", "esc:Publication.Expired"]
    assert get_topic(Publication.Snapshot) == "esc:Publication.Snapshot"
    assert get_topic(Publication) == "esc:Publication"
    # the stored names resolve back to the classes, whatever module defines them
    for topic in [*EVENT_TYPES, "esc:Publication.Snapshot", "esc:Publication"]:
        assert get_topic(resolve_topic(topic)) == topic
    assert set(EVENT_TYPES.values()) == {"Published", "Refreshed", "Modified", "Removed",
                                         "Expired"}


# ---- no clock, no randomness ----------------------------------------------------------------

def _lifecycle():
    p = new_publication(expires_in=60)
    etag = refresh(p, p.etag, "s1", now=NOW + 10, expires_in=30)
    etag = modify(p, etag, "s2", now=NOW + 20, expires_in=30)
    p.expire(NOW + 500)
    return p


def test_replaying_the_events_rebuilds_the_same_state():
    p = _lifecycle()
    events = p.collect_events()
    replayed = None
    for e in events:
        replayed = e.mutate(replayed)
    assert state_of(replayed) == state_of(p)
    assert replayed.expires_at == NOW + 50 and replayed.state == EXPIRED
    assert replayed.updated_at == NOW + 50 and replayed.published_at == NOW


def test_a_snapshot_rebuilds_the_same_state():
    p = _lifecycle()
    p.collect_events()
    restored = Publication.Snapshot.take(p).mutate(None)
    assert state_of(restored) == state_of(p)


def test_commands_and_replay_never_read_the_clock(monkeypatch):
    def no_clock(*_):
        raise AssertionError("the domain read the clock")

    monkeypatch.setattr(time, "time", no_clock)
    monkeypatch.setattr(time, "time_ns", no_clock)
    monkeypatch.setattr(time, "monotonic", no_clock)
    p = _lifecycle()
    replayed = None
    for e in p.collect_events():
        replayed = e.mutate(replayed)
    assert state_of(replayed) == state_of(p)


def test_domain_sources_use_no_clock_and_no_random_source():
    forbidden = re.compile(r"\btime\.time\b|\bdatetime\.now\b|\butcnow\b|\bimport random\b|"
                           r"\bimport secrets\b|\buuid4\b|\bimport time\b|\bmonotonic\b")
    package = Path(domain.__file__).parent
    offenders = {path.name: forbidden.findall(path.read_text())
                 for path in package.glob("*.py") if forbidden.search(path.read_text())}
    assert offenders == {}
