"""The compositor's refusals, each carrying what its SIP response needs.

The domain knows nothing of SIP messages, but RFC 3903 ties every refusal to a status
code and, for some, to a header that tells the client how to do better (Min-Expires,
Allow-Events, Accept). Keeping that knowledge on the error keeps the one mapping table in
the SIP adapter trivial.
"""

from __future__ import annotations


class CompositorError(Exception):
    """Base of every refusal the compositor can give a publisher."""

    status: int = 500
    reason: str = "Server Internal Error"

    def headers(self) -> list[tuple[str, str]]:
        """Response headers this refusal implies (besides the usual ones)."""
        return []

    def __reduce__(self):
        # Refusals cross a process boundary (the server's store process): rebuild them
        # from their attributes, not by calling __init__ with the message as its argument.
        return (_rebuild, (type(self), self.args, dict(self.__dict__)))


def _rebuild(cls: type, args: tuple, state: dict) -> "CompositorError":
    error = cls.__new__(cls)
    error.args = args
    error.__dict__.update(state)
    return error


class ConditionalRequestFailed(CompositorError):
    """SIP-If-Match names no live publication of this resource and event package."""

    status = 412
    reason = "Conditional Request Failed"


class IntervalTooBrief(CompositorError):
    """0 < requested expiry < the configured minimum (RFC 3903 section 6 step 4)."""

    status = 423
    reason = "Interval Too Brief"

    def __init__(self, min_expires: int) -> None:
        super().__init__(f"expiry shorter than {min_expires} s")
        self.min_expires = min_expires

    def headers(self) -> list[tuple[str, str]]:
        return [("Min-Expires", str(self.min_expires))]


class BadEvent(CompositorError):
    """The Event header names a package this compositor does not serve."""

    status = 489
    reason = "Bad Event"

    def __init__(self, allowed: list[str]) -> None:
        super().__init__(f"event package not served; allowed: {', '.join(allowed)}")
        self.allowed = list(allowed)

    def headers(self) -> list[tuple[str, str]]:
        return [("Allow-Events", ", ".join(self.allowed))]


class UnsupportedMediaType(CompositorError):
    """The body's Content-Type is not one the event package accepts."""

    status = 415
    reason = "Unsupported Media Type"

    def __init__(self, accepted: list[str]) -> None:
        super().__init__(f"content type not accepted; accepted: {', '.join(accepted)}")
        self.accepted = list(accepted)

    def headers(self) -> list[tuple[str, str]]:
        return [("Accept", ", ".join(self.accepted))]


class MissingBody(CompositorError):
    """An initial publication must carry the event state (RFC 3903 section 6 step 5)."""

    status = 400
    reason = "Missing Body"


class InvalidBody(CompositorError):
    """The body is not a well-formed document of its content type."""

    status = 400
    reason = "Invalid Body"


class TooManyPublications(CompositorError):
    """The resource already has as many live publications as the operator allows."""

    status = 403
    reason = "Too Many Publications For Resource"


class InternalError(CompositorError):
    """A fault of ours (a bug, in our code or a library's) while deciding this one request.
    Only this request fails; the rest of its batch is decided as if it were not there."""

    status = 500
    reason = "Server Internal Error"


class StoreUnavailable(CompositorError):
    """The event store could not durably record the change; nothing was stored."""

    status = 503
    reason = "Service Unavailable"

    def __init__(self, detail: str = "event store unavailable", retry_after: int = 5) -> None:
        super().__init__(detail)
        self.retry_after = retry_after

    def headers(self) -> list[tuple[str, str]]:
        return [("Retry-After", str(self.retry_after))]
