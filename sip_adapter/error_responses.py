"""The one table that turns the compositor's refusals into SIP responses.

Each domain error already knows the header it implies (Min-Expires, Allow-Events, Accept,
Retry-After); this table fixes the status code and reason phrase that go on the wire, so
they can be read (and changed) in one place.
"""

from __future__ import annotations

from domain import (BadEvent, CompositorError, ConditionalRequestFailed, IntervalTooBrief,
                    InternalError, InvalidBody, MissingBody, StoreUnavailable, TooManyPublications,
                    UnsupportedMediaType)

#: error class -> (status, reason phrase)
RESPONSES: dict[type[CompositorError], tuple[int, str]] = {
    ConditionalRequestFailed: (412, "Conditional Request Failed"),
    IntervalTooBrief: (423, "Interval Too Brief"),
    BadEvent: (489, "Bad Event"),
    UnsupportedMediaType: (415, "Unsupported Media Type"),
    MissingBody: (400, "Missing Body"),
    InvalidBody: (400, "Invalid Body"),
    TooManyPublications: (403, "Too Many Publications For Resource"),
    StoreUnavailable: (503, "Service Unavailable"),
    InternalError: (500, "Server Internal Error"),
}


def response_for(error: CompositorError) -> tuple[int, str, list[tuple[str, str]]]:
    """(status, reason, extra headers) for a refusal; unknown ones are a 500."""
    for cls in type(error).__mro__:
        if cls in RESPONSES:
            status, reason = RESPONSES[cls]  # type: ignore[index]
            return status, reason, error.headers()
    return 500, "Server Internal Error", []
