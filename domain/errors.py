"""The compositor's refusals: why a PUBLISH was not accepted, as facts.

A refusal carries what a publisher needs to do better: the shortest expiry allowed, the
event packages served, the content types accepted, when to try again. How it is answered
on the wire (status code, reason phrase, headers) is the SIP adapter's business:
sip_adapter/error_responses.py.

Refusals cross a process boundary (pickled from the store process to the SIP process).
Each one's `args` are exactly its constructor's arguments, so the standard pickling of
exceptions rebuilds it by calling the constructor with them: no hook of our own.
"""

from __future__ import annotations


class CompositorError(Exception):
    """Base of every refusal the compositor can give a publisher."""


class ConditionalRequestFailed(CompositorError):
    """SIP-If-Match names no live publication of this resource and event package."""


class IntervalTooBrief(CompositorError):
    """0 < requested expiry < the configured minimum (RFC 3903 section 6 step 4)."""

    def __init__(self, min_expires: int) -> None:
        super().__init__(min_expires)
        self.min_expires = min_expires

    def __str__(self) -> str:
        return f"expiry shorter than {self.min_expires} s"


class BadEvent(CompositorError):
    """The Event header names a package this compositor does not serve."""

    def __init__(self, allowed: list[str]) -> None:
        allowed = list(allowed)
        super().__init__(allowed)
        self.allowed = allowed

    def __str__(self) -> str:
        return f"event package not served; allowed: {', '.join(self.allowed)}"


class UnsupportedMediaType(CompositorError):
    """The body's Content-Type is not one the event package accepts."""

    def __init__(self, accepted: list[str]) -> None:
        accepted = list(accepted)
        super().__init__(accepted)
        self.accepted = accepted

    def __str__(self) -> str:
        return f"content type not accepted; accepted: {', '.join(self.accepted)}"


class MissingBody(CompositorError):
    """An initial publication must carry the event state (RFC 3903 section 6 step 5)."""


class InvalidBody(CompositorError):
    """The body is not a well-formed document of its content type."""


class TooManyPublications(CompositorError):
    """The resource already has as many live publications as the operator allows."""


class InternalError(CompositorError):
    """A fault of ours (a bug, in our code or a library's) while deciding this one request.
    Only this request fails; the rest of its batch is decided as if it were not there."""


class StoreUnavailable(CompositorError):
    """The event store could not durably record the change; nothing was stored. Worth
    trying again after `retry_after` seconds."""

    def __init__(self, detail: str = "event store unavailable", retry_after: int = 5) -> None:
        super().__init__(detail, retry_after)
        self.detail = detail
        self.retry_after = retry_after

    def __str__(self) -> str:
        return self.detail
