"""`Compositor.state`: the composed state now (from the view) and at any past moment
(replayed from the events), on a real SQLite store."""

from __future__ import annotations

import xml.etree.ElementTree as ET

import pytest

from domain import BadEvent

PIDF, DIALOG = "application/pidf+xml", "application/dialog-info+xml"
SUMMARY = "application/simple-message-summary"
ALICE = "sip:alice@example.com"
P = "{urn:ietf:params:xml:ns:pidf}"
D = "{urn:ietf:params:xml:ns:dialog-info}"


def statuses(body: bytes) -> list[tuple[str, str]]:
    root = ET.fromstring(body)
    assert root.tag == f"{P}presence" and root.get("entity") == ALICE
    return [(t.get("id"), t.findtext(f"{P}status/{P}basic")) for t in root.iter(f"{P}tuple")]


@pytest.fixture
def timeline(open_compositor, store_url, pidf):
    """Publish at 100, modify at 200, a second publication at 250, remove the first at 300
    (each for 1000 s), refreshing the second at 280 in between."""
    c = open_compositor(store_url, max_expires=10_000)
    first = c.publish(ALICE, "presence", body=pidf("open", "t1"), content_type=PIDF,
                      expires=1000, now=100)
    first_modified = c.publish(ALICE, "presence", if_match=first.etag, body=pidf("closed", "t1"),
                               content_type=PIDF, expires=1000, now=200)
    second = c.publish(ALICE, "presence", body=pidf("open", "t2"), content_type=PIDF,
                       expires=1000, now=250)
    second_refreshed = c.publish(ALICE, "presence", if_match=second.etag, expires=1000, now=280)
    c.publish(ALICE, "presence", if_match=first_modified.etag, expires=0, now=300)
    return c, {"first": first.etag, "first_modified": first_modified.etag,
               "second": second.etag, "second_refreshed": second_refreshed.etag}


def test_state_at_past_moments_is_rebuilt_from_the_events(timeline):
    c, tags = timeline
    before = c.state(ALICE, "presence", at=50)
    assert before.publications == () and statuses(before.body) == []
    assert (before.aor, before.event, before.at, before.content_type) == \
        (ALICE, "presence", 50.0, PIDF)

    at_150 = c.state(ALICE, "presence", at=150)
    assert at_150.publications == (tags["first"],)
    assert statuses(at_150.body) == [("t1", "open")]

    at_220 = c.state(ALICE, "presence", at=220)
    assert at_220.publications == (tags["first_modified"],)
    assert statuses(at_220.body) == [("t1", "closed")]  # the modified body

    at_260 = c.state(ALICE, "presence", at=260)
    assert at_260.publications == (tags["second"], tags["first_modified"])  # newest first
    assert statuses(at_260.body) == [("t2", "open"), ("t1", "closed")]

    at_290 = c.state(ALICE, "presence", at=290)  # after the refresh: its tag, same body
    assert at_290.publications == (tags["second_refreshed"], tags["first_modified"])
    assert statuses(at_290.body) == [("t2", "open"), ("t1", "closed")]

    at_310 = c.state(ALICE, "presence", at=310)
    assert at_310.publications == (tags["second_refreshed"],)
    assert statuses(at_310.body) == [("t2", "open")]

    # The exact moment of an event counts that event in.
    assert c.state(ALICE, "presence", at=100).publications == (tags["first"],)
    assert c.state(ALICE, "presence", at=300).publications == (tags["second_refreshed"],)


def test_state_now_comes_from_the_view_and_matches_a_replay_of_the_same_moment(timeline):
    c, tags = timeline
    now = c.state(ALICE, "presence", now=320)
    assert now.at == 320 and now.publications == (tags["second_refreshed"],)
    replayed = c.state(ALICE, "presence", at=320, now=9_999)
    assert (replayed.body, replayed.publications) == (now.body, now.publications)
    # compose() is the same composition (None when nothing is live).
    assert c.compose(ALICE, "presence", now=320) == (PIDF, now.body)
    assert c.compose(ALICE, "presence", now=5_000) is None


def test_lapsed_publications_are_not_in_the_state_whether_or_not_expiry_was_recorded(
        open_compositor, store_url, pidf):
    c = open_compositor(store_url)
    c.publish(ALICE, "presence", body=pidf(), content_type=PIDF, expires=60, now=1000)
    assert len(c.state(ALICE, "presence", at=1059).publications) == 1
    # Lapsed but no Expired event yet: neither the view nor the replay counts it.
    assert c.state(ALICE, "presence", now=1060).publications == ()
    assert c.state(ALICE, "presence", at=1060).publications == ()
    assert c.expire_due(now=2000) == 1
    assert c.state(ALICE, "presence", at=1059.5).publications != ()
    assert c.state(ALICE, "presence", at=1500).publications == ()


def test_dialog_state_is_full_with_version_zero(open_compositor, store_url):
    c = open_compositor(store_url)

    def dialogs(*ids: str) -> bytes:
        inner = "".join(f'<dialog id="{i}"><state>confirmed</state></dialog>' for i in ids)
        return (f'<dialog-info xmlns="urn:ietf:params:xml:ns:dialog-info" version="9" '
                f'state="partial" entity="{ALICE}">{inner}</dialog-info>').encode()

    c.publish(ALICE, "dialog", body=dialogs("a"), content_type=DIALOG, now=10)
    c.publish(ALICE, "dialog", body=dialogs("b", "c"), content_type=DIALOG, now=20)
    state = c.state(ALICE, "dialog", at=30)
    root = ET.fromstring(state.body)
    assert state.content_type == DIALOG
    assert (root.get("version"), root.get("state")) == ("0", "full")
    assert [d.get("id") for d in root.iter(f"{D}dialog")] == ["b", "c", "a"]
    assert ET.fromstring(c.state(ALICE, "dialog", version=4, now=30).body).get("version") == "4"


def test_message_summary_state_is_the_newest_body(open_compositor, store_url):
    c = open_compositor(store_url)
    c.publish(ALICE, "message-summary", body=b"Messages-Waiting: no\r\n",
              content_type=SUMMARY, now=10)
    newest = c.publish(ALICE, "message-summary", body=b"Messages-Waiting: yes\r\n",
                       content_type=SUMMARY, now=20)
    state = c.state(ALICE, "message-summary", at=30)
    assert (state.content_type, state.body, state.publications) == \
        (SUMMARY, b"Messages-Waiting: yes\r\n", (newest.etag,))
    nothing = c.state(ALICE, "message-summary", at=5)
    assert (nothing.content_type, nothing.body, nothing.publications) == (SUMMARY, b"", ())
    with pytest.raises(BadEvent):
        c.state(ALICE, "no-such-package", at=5)


def test_state_reads_the_resource_by_its_address_of_record(timeline):
    c, tags = timeline
    assert c.state("sip:alice@EXAMPLE.com:5060", "Presence", at=150).publications == \
        (tags["first"],)
