"""The one table from the compositor's refusals to SIP responses (status, reason phrase,
and the headers each refusal's data gives)."""

from __future__ import annotations

import pytest

from domain import (BadEvent, CompositorError, ConditionalRequestFailed, CSeqOutOfOrder,
                    SubscriptionNotActive, IntervalTooBrief,
                    InternalError, InvalidBody, MissingBody, StoreUnavailable, TooManyPublications,
                    UnsupportedMediaType)
from sip_adapter.protocol.error_responses import RESPONSES, response_for


@pytest.mark.parametrize("error, expected", [
    (ConditionalRequestFailed("gone"), (412, "Conditional Request Failed", [])),
    (IntervalTooBrief(30), (423, "Interval Too Brief", [("Min-Expires", "30")])),
    (BadEvent(["presence", "dialog"]), (489, "Bad Event",
                                        [("Allow-Events", "presence, dialog")])),
    (UnsupportedMediaType(["application/pidf+xml", "text/plain"]),
     (415, "Unsupported Media Type", [("Accept", "application/pidf+xml, text/plain")])),
    (MissingBody("none"), (400, "Missing Body", [])),
    (InvalidBody("bad"), (400, "Invalid Body", [])),
    (TooManyPublications("full"), (403, "Too Many Publications For Resource", [])),
    (StoreUnavailable(), (503, "Service Unavailable", [("Retry-After", "5")])),
    (StoreUnavailable("busy", retry_after=7), (503, "Service Unavailable",
                                               [("Retry-After", "7")])),
    (InternalError("boom"), (500, "Server Internal Error", [])),
    (SubscriptionNotActive("timeout"), (481, "Subscription Does Not Exist", [])),
    (CSeqOutOfOrder(3, 4), (500, "CSeq Out Of Order", [])),
])
def test_each_refusal_has_its_status_reason_and_headers(error, expected):
    assert response_for(error) == expected


def test_every_refusal_the_domain_defines_is_in_the_table():
    import domain.errors
    import domain.subscription

    defined = {cls for module in (domain.errors, domain.subscription)
               for cls in vars(module).values()
               if isinstance(cls, type) and issubclass(cls, CompositorError)
               and cls is not CompositorError}
    assert defined == set(RESPONSES)


def test_a_subclass_takes_its_parents_entry_and_an_unknown_refusal_is_a_500():
    class Stale(ConditionalRequestFailed):
        pass

    class Unknown(CompositorError):
        pass

    assert response_for(Stale())[:2] == (412, "Conditional Request Failed")
    assert response_for(Unknown()) == (500, "Server Internal Error", [])
