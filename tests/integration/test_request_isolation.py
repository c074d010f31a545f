"""One request's failure is its own (design decision 8): whatever deciding one PUBLISH
raises, that request alone is answered with an error and its batch-mates are decided and
committed exactly as if it were not there."""

from __future__ import annotations

from domain import EventPackage, EventPackages, InternalError, InvalidBody, PublishRequest
from domain.packages import BUILT_IN
from infrastructure.records import Accepted

PIDF = "application/pidf+xml"


def _explode(body: bytes) -> None:
    if b"boom" in body:
        raise ZeroDivisionError("a bug in a body validator")


def packages_with_a_buggy_one() -> EventPackages:
    buggy = EventPackage("buggy", ("text/plain",), validator=_explode)
    return EventPackages([*BUILT_IN.values(), buggy])


def test_a_request_that_raises_fails_alone_and_its_batch_mates_commit(open_compositor,
                                                                       store_url, pidf):
    compositor = open_compositor(store_url, events=packages_with_a_buggy_one())
    first = compositor.publish("sip:alice@example.com", "presence", body=pidf("open"),
                               content_type=PIDF, expires=600)
    batch = [
        # modifies alice's publication (its tag changes within the batch) ...
        PublishRequest("sip:alice@example.com", "presence", pidf("closed"), PIDF, 600,
                       first.etag),
        # ... a request whose decision raises a non-refusal exception ...
        PublishRequest("sip:bob@example.com", "buggy", b"boom", "text/plain", 600),
        # ... and requests after it, one of which depends on the batch's own earlier change
        PublishRequest("sip:carol@example.com", "buggy", b"fine", "text/plain", 600),
    ]
    results = compositor.process_many(batch)
    assert isinstance(results[0], Accepted)
    assert isinstance(results[1], InternalError)
    assert isinstance(results[2], Accepted)
    # The batch's changes are durable and consistent: alice modified once, carol created,
    # nothing of bob.
    alice = compositor.publications("sip:alice@example.com", "presence")
    assert [p.etag for p in alice] == [results[0].etag]
    assert compositor.publications("sip:bob@example.com", "buggy") == []
    assert len(compositor.publications("sip:carol@example.com", "buggy")) == 1
    types = [e.type for e in compositor.history("sip:alice@example.com")]
    assert types == ["Published", "Modified"]


def test_a_later_request_sees_the_batch_as_if_the_faulty_one_was_never_there(
        open_compositor, store_url, pidf):
    compositor = open_compositor(store_url, events=packages_with_a_buggy_one())
    first = compositor.publish("sip:alice@example.com", "presence", body=pidf("open"),
                               content_type=PIDF, expires=600)
    batch = [
        PublishRequest("sip:alice@example.com", "presence", None, None, 600, first.etag),
        PublishRequest("sip:bob@example.com", "buggy", b"boom", "text/plain", 600),
    ]
    refreshed, failed = compositor.process_many(batch)
    assert isinstance(refreshed, Accepted) and isinstance(failed, InternalError)
    # The refresh's new tag is the live one: re-deciding did not issue a second tag.
    again = compositor.process_many([PublishRequest("sip:alice@example.com", "presence",
                                                    None, None, 600, refreshed.etag)])
    assert isinstance(again[0], Accepted)
    types = [e.type for e in compositor.history("sip:alice@example.com")]
    assert types == ["Published", "Refreshed", "Refreshed"]


def test_an_xml_body_with_an_unknown_encoding_is_a_400_not_a_failed_batch(
        open_compositor, store_url, pidf):
    compositor = open_compositor(store_url)
    bad = b'<?xml version="1.0" encoding="nope"?><presence/>'
    results = compositor.process_many([
        PublishRequest("sip:a@example.com", "presence", pidf("open"), PIDF, 600),
        PublishRequest("sip:b@example.com", "presence", bad, PIDF, 600),
        PublishRequest("sip:c@example.com", "presence", pidf("open"), PIDF, 600),
    ])
    assert isinstance(results[0], Accepted) and isinstance(results[2], Accepted)
    assert isinstance(results[1], InvalidBody)
