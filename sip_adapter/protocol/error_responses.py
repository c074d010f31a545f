"""The one table that turns the compositor's refusals into SIP responses.

A refusal (domain/errors.py) carries facts only. Here each kind gets its status code, its
reason phrase, and the headers its facts imply (RFC 3903 section 6, RFC 3261): Min-Expires
for a 423, Allow-Events for a 489, Accept for a 415, Retry-After for a 503.
"""

from __future__ import annotations

from typing import Any, Callable

from domain import (BadEvent, CompositorError, ConditionalRequestFailed, CSeqOutOfOrder,
                    IntervalTooBrief, InternalError, InvalidBody, MissingBody, NoMoreNotifies,
                    NotTheSubscriber,
                    StoreUnavailable, SubscriptionNotActive, TooManyPublications,
                    UnsupportedMediaType)

Headers = list[tuple[str, str]]


def _no_headers(error: CompositorError) -> Headers:
    return []


#: error class -> (status, reason phrase, the headers its data gives). Each function takes an
#: instance of its own row's class (reading that class's facts), which a dict type cannot
#: say: hence Callable[[Any], ...].
RESPONSES: dict[type[CompositorError], tuple[int, str, Callable[[Any], Headers]]] = {
    ConditionalRequestFailed: (412, "Conditional Request Failed", _no_headers),
    IntervalTooBrief: (423, "Interval Too Brief",
                       lambda error: [("Min-Expires", str(error.min_expires))]),
    BadEvent: (489, "Bad Event",
               lambda error: [("Allow-Events", ", ".join(error.allowed))]),
    UnsupportedMediaType: (415, "Unsupported Media Type",
                           lambda error: [("Accept", ", ".join(error.accepted))]),
    MissingBody: (400, "Missing Body", _no_headers),
    InvalidBody: (400, "Invalid Body", _no_headers),
    TooManyPublications: (403, "Too Many Publications For Resource", _no_headers),
    StoreUnavailable: (503, "Service Unavailable",
                       lambda error: [("Retry-After", str(error.retry_after))]),
    InternalError: (500, "Server Internal Error", _no_headers),
    # SUBSCRIBE in a dialog that no longer exists (RFC 6665 section 4.1.2.2 / 4.2.1.2).
    SubscriptionNotActive: (481, "Subscription Does Not Exist", _no_headers),
    # RFC 3261 section 12.2.2: a request in a dialog with a lower CSeq is answered 500.
    CSeqOutOfOrder: (500, "CSeq Out Of Order", _no_headers),
    NoMoreNotifies: (500, "Server Internal Error", _no_headers),
    NotTheSubscriber: (403, "Not The Subscriber", _no_headers),
}


def response_for(error: CompositorError) -> tuple[int, str, Headers]:
    """(status, reason, extra headers) for a refusal; an unknown one is a 500."""
    for cls in type(error).__mro__:
        entry = RESPONSES.get(cls)
        if entry is not None:
            status, reason, headers = entry
            return status, reason, headers(error)
    return 500, "Server Internal Error", []
