"""RFC 3903 section 6 rules: classification (Table 1), expiry policy, packages, bodies,
entity-tags and SIP-If-Match. Pure rules are tested on `classify`; the rules that need a
store (tags, If-Match lookups) on an in-memory compositor. Every call passes `now`."""

from __future__ import annotations

import pickle
import re
import time
from multiprocessing.reduction import ForkingPickler
from uuid import uuid4

import pytest

from domain import (BadEvent, CompositorError, ConditionalRequestFailed, EventPackages,
                    ExpiryPolicy, IntervalTooBrief, InternalError, InvalidBody, MissingBody,
                    Operation, PublishRequest, StoreUnavailable, TooManyPublications,
                    UnsupportedMediaType, classify, custom_package)
from domain.packages import DEFAULT_PACKAGES

NOW = 1_700_000_000.0
ALICE = "sip:alice@example.com"
BOB = "sip:bob@example.com"
PIDF_TYPE = "application/pidf+xml"
DIALOG_TYPE = "application/dialog-info+xml"
DIALOG = (b'<?xml version="1.0"?><dialog-info xmlns="urn:ietf:params:xml:ns:dialog-info" '
          b'version="0" state="full" entity="sip:alice@example.com">'
          b'<dialog id="d1"><state>confirmed</state></dialog></dialog-info>')
BILLION_LAUGHS = b"""<?xml version="1.0"?>
<!DOCTYPE lolz [
 <!ENTITY lol "lol">
 <!ENTITY lol1 "&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;">
 <!ENTITY lol2 "&lol1;&lol1;&lol1;&lol1;&lol1;&lol1;&lol1;&lol1;&lol1;&lol1;">
 <!ENTITY lol3 "&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;">
 <!ENTITY lol4 "&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;">
 <!ENTITY lol5 "&lol4;&lol4;&lol4;&lol4;&lol4;&lol4;&lol4;&lol4;&lol4;&lol4;">
 <!ENTITY lol6 "&lol5;&lol5;&lol5;&lol5;&lol5;&lol5;&lol5;&lol5;&lol5;&lol5;">
 <!ENTITY lol7 "&lol6;&lol6;&lol6;&lol6;&lol6;&lol6;&lol6;&lol6;&lol6;&lol6;">
 <!ENTITY lol8 "&lol7;&lol7;&lol7;&lol7;&lol7;&lol7;&lol7;&lol7;&lol7;&lol7;">
 <!ENTITY lol9 "&lol8;&lol8;&lol8;&lol8;&lol8;&lol8;&lol8;&lol8;&lol8;&lol8;">
]>
<presence xmlns="urn:ietf:params:xml:ns:pidf" entity="sip:alice@example.com">&lol9;</presence>"""
XXE = b"""<?xml version="1.0"?>
<!DOCTYPE presence [<!ENTITY xxe SYSTEM "file:///etc/passwd">]>
<presence xmlns="urn:ietf:params:xml:ns:pidf" entity="sip:a@b">&xxe;</presence>"""
TAG = re.compile(r"^([0-9a-f]{32})\.([A-Za-z0-9_-]+)$")


def request(body=b"<presence/>", content_type=PIDF_TYPE, expires=None, if_match=None,
            event="presence", aor=ALICE):
    return PublishRequest(aor, event, body, content_type, expires, if_match)


# ---- RFC 3903 Table 1 ---------------------------------------------------------------------------

@pytest.mark.parametrize("body, if_match, expires, operation", [
    (b"<presence/>", None, 3600, Operation.INITIAL),
    (b"<presence/>", None, None, Operation.INITIAL),
    (None, "tag", 3600, Operation.REFRESH),
    (None, "tag", None, Operation.REFRESH),
    (b"<presence/>", "tag", 3600, Operation.MODIFY),
    (None, "tag", 0, Operation.REMOVE),
    (b"<presence/>", None, 0, Operation.DISCARD),
])
def test_table_1(body, if_match, expires, operation):
    decided = classify(request(body=body, if_match=if_match, expires=expires),
                       DEFAULT_PACKAGES, ExpiryPolicy())
    assert decided.operation is operation
    assert decided.package.name == "presence"


@pytest.mark.parametrize("body", [None, b""])
def test_an_initial_publish_without_a_body_is_missing_body(body):
    with pytest.raises(MissingBody):
        classify(request(body=body), DEFAULT_PACKAGES, ExpiryPolicy())


# ---- expiry policy ------------------------------------------------------------------------------

def grant(expires, policy=ExpiryPolicy(), packages=DEFAULT_PACKAGES, event="presence",
          if_match=None, body=b"<presence/>"):
    return classify(request(expires=expires, event=event, if_match=if_match, body=body),
                    packages, policy).expires


def test_granted_expiry_is_the_requested_value():
    assert grant(1800) == 1800
    assert grant(1800, if_match="tag", body=None) == 1800


def test_without_expires_the_default_is_60_unless_configured():
    assert grant(None) == 60
    assert grant(None, if_match="tag", body=None) == 60
    assert grant(None, ExpiryPolicy(default_expires=300)) == 300
    # a package may carry its own default, which wins over the compositor's
    packages = EventPackages([custom_package("x-state", default_expires=900)])
    assert grant(None, packages=packages, event="x-state") == 900


def test_granted_expiry_is_shortened_to_max_expires():
    assert grant(7200, ExpiryPolicy(max_expires=3600)) == 3600
    assert grant(10**9, ExpiryPolicy(max_expires=3600)) == 3600
    assert grant(None, ExpiryPolicy(default_expires=120, max_expires=120)) == 120


@pytest.mark.parametrize("expires", [1, 29])
@pytest.mark.parametrize("if_match, body", [(None, b"<presence/>"), ("tag", None),
                                            ("tag", b"<presence/>")])
def test_too_brief_an_interval_is_423_with_min_expires(expires, if_match, body):
    policy = ExpiryPolicy(min_expires=30)
    with pytest.raises(IntervalTooBrief) as refused:
        grant(expires, policy, if_match=if_match, body=body)
    assert refused.value.min_expires == 30


def test_min_expires_itself_and_zero_are_not_too_brief():
    policy = ExpiryPolicy(min_expires=30)
    assert grant(30, policy) == 30
    assert grant(0, policy, if_match="tag", body=None) == 0


@pytest.mark.parametrize("bounds", [dict(min_expires=0), dict(min_expires=10, max_expires=5),
                                    dict(default_expires=5, min_expires=10),
                                    dict(default_expires=7200, max_expires=3600)])
def test_an_inconsistent_policy_is_refused(bounds):
    with pytest.raises(ValueError):
        ExpiryPolicy(**bounds)


# ---- event packages and content types -------------------------------------------------------------

def test_an_unconfigured_package_is_bad_event_with_the_allowed_list():
    packages = EventPackages.named(["presence", "dialog"])
    with pytest.raises(BadEvent) as refused:
        classify(request(event="message-summary"), packages, ExpiryPolicy())
    assert refused.value.allowed == ["presence", "dialog"]


def test_the_event_header_names_its_package_whatever_its_case_and_parameters():
    decided = classify(request(event="Presence;id=42"), DEFAULT_PACKAGES, ExpiryPolicy())
    assert decided.package.name == "presence"


@pytest.mark.parametrize("event, content_type, accepted", [
    ("presence", "text/plain", ["application/pidf+xml"]),
    ("presence", DIALOG_TYPE, ["application/pidf+xml"]),
    ("presence", None, ["application/pidf+xml"]),
    ("dialog", PIDF_TYPE, ["application/dialog-info+xml"]),
    ("message-summary", "text/plain", ["application/simple-message-summary"]),
])
def test_a_content_type_the_package_does_not_accept_is_415_with_the_accepted_list(
        event, content_type, accepted):
    for if_match in (None, "tag"):  # initial and modify
        with pytest.raises(UnsupportedMediaType) as refused:
            classify(request(event=event, content_type=content_type, if_match=if_match),
                     DEFAULT_PACKAGES, ExpiryPolicy())
        assert refused.value.accepted == accepted


def test_content_type_is_normalised():
    decided = classify(request(content_type="Application/PIDF+XML; charset=UTF-8"),
                       DEFAULT_PACKAGES, ExpiryPolicy())
    assert decided.content_type == PIDF_TYPE


@pytest.mark.parametrize("event, content_type, body", [
    ("presence", PIDF_TYPE, b"<presence><tuple></presence>"),
    ("presence", PIDF_TYPE, b"not xml at all"),
    ("presence", PIDF_TYPE, b"<presence/><presence/>"),
    ("presence", PIDF_TYPE, XXE),
    ("dialog", DIALOG_TYPE, b"<dialog-info"),
    ("dialog", DIALOG_TYPE, b"\xff\xfe<dialog-info/>"),
])
def test_a_malformed_xml_body_is_invalid_body(event, content_type, body):
    for if_match in (None, "tag"):
        with pytest.raises(InvalidBody):
            classify(request(event=event, content_type=content_type, body=body,
                             if_match=if_match), DEFAULT_PACKAGES, ExpiryPolicy())


def test_a_billion_laughs_pidf_is_refused_quickly():
    started = time.perf_counter()
    with pytest.raises(InvalidBody):
        classify(request(body=BILLION_LAUGHS), DEFAULT_PACKAGES, ExpiryPolicy())
    assert time.perf_counter() - started < 0.5


def test_well_formed_dialog_and_message_summary_bodies_are_accepted():
    assert classify(request(event="dialog", content_type=DIALOG_TYPE, body=DIALOG),
                    DEFAULT_PACKAGES, ExpiryPolicy()).operation is Operation.INITIAL
    summary = b"Messages-Waiting: yes\r\nVoice-Message: 2/8 (0/2)\r\n"
    assert classify(request(event="message-summary",
                            content_type="application/simple-message-summary", body=summary),
                    DEFAULT_PACKAGES, ExpiryPolicy()).operation is Operation.INITIAL


@pytest.mark.parametrize("content_type, body", [
    ("application/octet-stream", bytes(range(256))),
    ("text/plain", b"hello"),
    ("application/pidf+xml", b"not even xml"),
    (None, b"no content type at all"),
])
def test_a_custom_package_accepts_any_content_type(content_type, body):
    packages = EventPackages.named(["presence", "x-custom"])
    decided = classify(request(event="x-custom", content_type=content_type, body=body),
                       packages, ExpiryPolicy())
    assert decided.operation is Operation.INITIAL
    assert decided.package.name == "x-custom"


def test_a_custom_package_with_content_types_accepts_only_those():
    packages = EventPackages([custom_package("x-state", ["Text/Plain"])])
    assert classify(request(event="x-state", content_type="text/plain", body=b"x"),
                    packages, ExpiryPolicy()).content_type == "text/plain"
    with pytest.raises(UnsupportedMediaType) as refused:
        classify(request(event="x-state", content_type="text/html", body=b"x"), packages,
                 ExpiryPolicy())
    assert refused.value.accepted == ["text/plain"]


REFUSALS = [
    ConditionalRequestFailed(), ConditionalRequestFailed("no publication has that entity-tag"),
    IntervalTooBrief(30), BadEvent(["presence", "dialog"]),
    UnsupportedMediaType(("application/pidf+xml",)), MissingBody("an initial PUBLISH ..."),
    InvalidBody("not well-formed"), TooManyPublications("sip:a@b has 100"),
    InternalError("internal error: ZeroDivisionError"), StoreUnavailable(),
    StoreUnavailable("save failed", retry_after=7),
]


def facts(error: CompositorError) -> tuple:
    return type(error), error.args, vars(error), str(error)


@pytest.mark.parametrize("error", REFUSALS, ids=lambda e: f"{type(e).__name__}{e.args}")
def test_refusals_carry_facts_and_cross_a_process_boundary(error):
    """Pickled as the store process sends them (multiprocessing's pickler) and rebuilt from
    their constructor's arguments: the same class, data and message."""
    again = pickle.loads(ForkingPickler.dumps([error]))[0]
    assert facts(again) == facts(error)
    # facts, not SIP: status, reason and headers are the adapter's (error_responses.py)
    assert not any(hasattr(error, name) for name in ("status", "reason", "headers"))


def test_the_data_each_refusal_carries():
    assert IntervalTooBrief(30).min_expires == 30
    assert BadEvent(("presence",)).allowed == ["presence"]
    assert UnsupportedMediaType(["text/plain"]).accepted == ["text/plain"]
    unavailable = StoreUnavailable(retry_after=7)
    assert (unavailable.detail, unavailable.retry_after) == ("event store unavailable", 7)
    assert str(IntervalTooBrief(30)) == "expiry shorter than 30 s"
    assert str(StoreUnavailable("save failed")) == "save failed"


# ---- entity-tags (need a store: an in-memory compositor) -------------------------------------------

def test_every_success_returns_a_new_unguessable_tag_never_reused(compositor, pidf):
    seen: list[str] = []
    for aor in (ALICE, BOB, "sip:carol@example.com"):
        for round_ in range(3):  # publish, refresh, modify, remove; then publish again
            t = compositor.publish(aor, "presence", body=pidf(), content_type=PIDF_TYPE,
                                   expires=3600, now=NOW).etag
            seen.append(t)
            for i in range(25):
                t = compositor.publish(aor, "presence", if_match=t, now=NOW + i).etag
                seen.append(t)
                t = compositor.publish(aor, "presence", if_match=t, body=pidf(f"s{i}"),
                                       content_type=PIDF_TYPE, now=NOW + i).etag
                seen.append(t)
            compositor.publish(aor, "presence", if_match=t, expires=0, now=NOW + 30)
    assert len(seen) == 3 * 3 * 51
    assert len(set(seen)) == len(seen)
    secrets_ = [TAG.match(t).group(2) for t in seen]
    assert len(set(secrets_)) == len(secrets_)
    # at least 96 random bits: 16 base64url characters
    assert min(len(s) for s in secrets_) >= 16


def test_every_tag_in_the_feed_is_distinct(compositor, pidf):
    t = compositor.publish(ALICE, "presence", body=pidf(), content_type=PIDF_TYPE, now=NOW).etag
    for i in range(100):
        t = compositor.publish(ALICE, "presence", if_match=t, now=NOW + i).etag
    tags = [r.etag for r in compositor.feed() if r.etag]
    assert len(tags) == 101 == len(set(tags))


@pytest.fixture
def two_packages(open_compositor):
    return open_compositor("memory://", events=["presence", "dialog"])


def _live_tag(compositor, pidf, aor=ALICE):
    return compositor.publish(aor, "presence", body=pidf(), content_type=PIDF_TYPE,
                              expires=60, now=NOW).etag


def _bad_tag(case, compositor, pidf):
    """(aor, event, tag, now) for a SIP-If-Match that must not match anything live."""
    if case == "unknown tag":
        return ALICE, "presence", f"{uuid4().hex}.AAAAAAAAAAAAAAAA", NOW + 1
    if case == "foreign-shaped tag":
        return ALICE, "presence", "nonexistent.0", NOW + 1
    if case == "right id, guessed secret":
        live = _live_tag(compositor, pidf)
        return ALICE, "presence", live.split(".")[0] + ".guessedguessedgu", NOW + 1
    if case == "tag of another resource":
        return ALICE, "presence", _live_tag(compositor, pidf, BOB), NOW + 1
    if case == "user part in another case":
        return "sip:Alice@example.com", "presence", _live_tag(compositor, pidf), NOW + 1
    if case == "tag of another package":
        live = compositor.publish(ALICE, "dialog", body=DIALOG, content_type=DIALOG_TYPE,
                                  expires=60, now=NOW).etag
        return ALICE, "presence", live, NOW + 1
    if case == "old tag after a refresh":
        old = _live_tag(compositor, pidf)
        compositor.publish(ALICE, "presence", if_match=old, now=NOW + 1)
        return ALICE, "presence", old, NOW + 2
    if case == "old tag after a modify":
        old = _live_tag(compositor, pidf)
        compositor.publish(ALICE, "presence", if_match=old, body=pidf("closed"),
                           content_type=PIDF_TYPE, now=NOW + 1)
        return ALICE, "presence", old, NOW + 2
    if case == "tag after remove":
        old = _live_tag(compositor, pidf)
        compositor.publish(ALICE, "presence", if_match=old, expires=0, now=NOW + 1)
        return ALICE, "presence", old, NOW + 2
    if case == "tag at its expiry time":
        return ALICE, "presence", _live_tag(compositor, pidf), NOW + 60
    if case == "tag after expiry (not yet noticed)":
        return ALICE, "presence", _live_tag(compositor, pidf), NOW + 61
    if case == "tag after expiry (recorded)":
        live = _live_tag(compositor, pidf)
        assert compositor.expire_due(now=NOW + 61) == 1
        return ALICE, "presence", live, NOW + 62
    raise AssertionError(case)


BAD_TAG_CASES = ["unknown tag", "foreign-shaped tag", "right id, guessed secret",
                 "tag of another resource", "user part in another case",
                 "tag of another package", "old tag after a refresh", "old tag after a modify",
                 "tag after remove", "tag at its expiry time",
                 "tag after expiry (not yet noticed)", "tag after expiry (recorded)"]


@pytest.mark.parametrize("operation", ["refresh", "modify", "remove"])
@pytest.mark.parametrize("case", BAD_TAG_CASES)
def test_if_match_needs_a_live_publication_of_the_same_resource_and_package(
        two_packages, pidf, case, operation):
    c = two_packages
    aor, event, bad, now = _bad_tag(case, c, pidf)
    live_before = c.view.snapshot()
    kwargs = {"refresh": {}, "modify": {"body": pidf("away"), "content_type": PIDF_TYPE},
              "remove": {"expires": 0}}[operation]
    with pytest.raises(ConditionalRequestFailed):
        c.publish(aor, event, if_match=bad, now=now, **kwargs)
    assert c.find(aor, bad, event, now=now) is None
    # the refusal changed no live state (an unnoticed expiry may be recorded, nothing else)
    after = c.view.snapshot()
    assert set(after) <= set(live_before)
    assert all(after[pid] == live_before[pid] for pid in after)
    assert all(r.type in ("Published", "Refreshed", "Modified", "Removed", "Expired")
               for r in c.feed())
    assert c.verify()[2] == []


def test_a_match_needs_the_same_resource_not_the_same_spelling(compositor, pidf):
    t = compositor.publish("sip:alice@example.com", "presence", body=pidf(),
                           content_type=PIDF_TYPE, now=NOW).etag
    t = compositor.publish("SIP:alice@EXAMPLE.com:5060;transport=tcp", "Presence;id=1",
                           if_match=t, now=NOW + 1).etag
    assert compositor.find("<sip:alice@example.com>", t, "presence", now=NOW + 2) is not None


def test_a_refused_request_in_a_batch_does_not_stop_the_others(compositor, pidf):
    results = compositor.process_many([
        request(body=pidf(), expires=60),
        request(body=None, if_match="nonexistent.0"),
        request(body=pidf(), content_type="text/plain"),
        request(body=pidf(), expires=60, aor=BOB),
    ], now=NOW)
    assert [type(r).__name__ for r in results] == ["Accepted", "ConditionalRequestFailed",
                                                   "UnsupportedMediaType", "Accepted"]
    assert {p.aor for p in compositor.list(now=NOW)} == {ALICE, BOB}


# ---- the operations' effects, through the compositor -------------------------------------------------

def test_initial_with_expires_0_stores_nothing(compositor, pidf):
    accepted = compositor.publish(ALICE, "presence", body=pidf(), content_type=PIDF_TYPE,
                                  expires=0, now=NOW)
    assert accepted.expires == 0
    assert compositor.find(ALICE, accepted.etag, now=NOW) is None
    assert compositor.publications(ALICE, now=NOW) == []
    assert list(compositor.feed()) == []
    assert compositor.history(ALICE) == []
    with pytest.raises(ConditionalRequestFailed):
        compositor.publish(ALICE, "presence", if_match=accepted.etag, now=NOW)


def test_initial_with_expires_0_is_still_checked(compositor):
    with pytest.raises(MissingBody):
        compositor.publish(ALICE, "presence", expires=0, now=NOW)
    with pytest.raises(InvalidBody):
        compositor.publish(ALICE, "presence", body=b"<oops", content_type=PIDF_TYPE, expires=0,
                           now=NOW)


def test_granted_expiry_through_the_compositor(open_compositor, pidf):
    c = open_compositor("memory://", default_expires=120, min_expires=30, max_expires=600)
    a = c.publish(ALICE, "presence", body=pidf(), content_type=PIDF_TYPE, now=NOW)
    assert a.expires == 120 and c.find(ALICE, a.etag, now=NOW).expires_at == NOW + 120
    a = c.publish(ALICE, "presence", if_match=a.etag, expires=10**6, now=NOW + 10)
    assert a.expires == 600 and c.find(ALICE, a.etag, now=NOW + 10).expires_at == NOW + 610
    with pytest.raises(IntervalTooBrief) as refused:
        c.publish(ALICE, "presence", if_match=a.etag, expires=29, now=NOW + 20)
    assert refused.value.min_expires == 30
    # the refused refresh left the publication as it was
    assert c.find(ALICE, a.etag, now=NOW + 20).expires_at == NOW + 610


def test_default_expiry_is_60_seconds(compositor, pidf):
    a = compositor.publish(ALICE, "presence", body=pidf(), content_type=PIDF_TYPE, now=NOW)
    assert a.expires == 60
    assert compositor.find(ALICE, a.etag, now=NOW).expires_at == NOW + 60
    assert compositor.find(ALICE, a.etag, now=NOW + 60) is None


def test_refresh_extends_the_expiry_and_changes_nothing_else(compositor, pidf):
    body = pidf("open")
    a = compositor.publish(ALICE, "presence", body=body,
                           content_type="application/PIDF+xml;charset=utf-8", expires=60,
                           now=NOW)
    before = compositor.find(ALICE, a.etag, now=NOW)
    r = compositor.publish(ALICE, "presence", if_match=a.etag, expires=300, now=NOW + 50)
    after = compositor.find(ALICE, r.etag, now=NOW + 50)
    assert r.etag != a.etag
    assert after.expires_at == NOW + 350
    assert (after.body, after.content_type, after.aor, after.event, after.id) == \
        (before.body, before.content_type, before.aor, before.event, before.id) == \
        (body, PIDF_TYPE, ALICE, "presence", before.id)
    assert after.version == before.version + 1


def test_modify_replaces_the_body(compositor, pidf):
    a = compositor.publish(ALICE, "presence", body=pidf("open"), content_type=PIDF_TYPE,
                           now=NOW)
    m = compositor.publish(ALICE, "presence", if_match=a.etag, body=pidf("closed"),
                           content_type=PIDF_TYPE, expires=90, now=NOW + 5)
    found = compositor.find(ALICE, m.etag, now=NOW + 5)
    assert m.etag != a.etag and found.body == pidf("closed") and found.expires_at == NOW + 95
    assert [p.body for p in compositor.publications(ALICE, now=NOW + 5)] == [pidf("closed")]


def test_remove_ends_the_publication(compositor, pidf):
    a = compositor.publish(ALICE, "presence", body=pidf(), content_type=PIDF_TYPE, now=NOW)
    r = compositor.publish(ALICE, "presence", if_match=a.etag, expires=0, now=NOW + 1)
    assert r.expires == 0
    assert compositor.find(ALICE, a.etag, now=NOW + 1) is None
    assert compositor.publications(ALICE, now=NOW + 1) == []
    assert [e.type for e in compositor.feed()] == ["Published", "Removed"]
    assert compositor.expire_due(now=NOW + 10**6) == 0


def test_a_custom_package_stores_any_body(open_compositor):
    c = open_compositor("memory://", events=["presence", "x-custom"])
    body = bytes(range(256))
    a = c.publish(ALICE, "x-custom", body=body, content_type="application/octet-stream",
                  now=NOW)
    assert c.find(ALICE, a.etag, "x-custom", now=NOW).body == body
    with pytest.raises(BadEvent) as refused:
        c.publish(ALICE, "dialog", body=DIALOG, content_type=DIALOG_TYPE, now=NOW)
    assert refused.value.allowed == ["presence", "x-custom"]
