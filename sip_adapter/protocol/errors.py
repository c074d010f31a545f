"""The error a SIP message that cannot be accepted raises, with the status to answer.

Every layer of the message code raises it (URI parsing, lazy header accessors, the parser,
the stream framer), so it sits below all of them.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:  # pragma: no cover
    from .messages import Request

__all__ = ["ParseError", "Refused"]


class Refused(Exception):
    """A well-formed request the server refuses before it reaches the store (a PUBLISH or
    SUBSCRIBE that cannot become a domain request): the status to answer, its reason
    phrase and the header fields the answer must carry (Allow-Events with a 489, ...)."""

    def __init__(self, status: int, reason: str,
                 headers: list[tuple[str, str]] | None = None) -> None:
        super().__init__(reason)
        self.status = status
        self.reason = reason
        self.headers = headers or []


class ParseError(Exception):
    """A message that cannot be accepted, with the status a server should answer.

    status: 400, 413, 414, 416, 501, 505, ...
    reason: a short, fixed text (never contains bytes of the offending message, so it is safe
        to use as a reason phrase).
    partial: for requests, the request as far as it was parsed, when it can be answered (its
        top Via was readable); None otherwise. Responses are never answered, so theirs is None.
    """

    def __init__(self, status: int, reason: str, partial: Request | None = None) -> None:
        super().__init__(status, reason)
        self.status = status
        self.reason = reason
        self.partial = partial

    def __str__(self) -> str:
        return f"{self.status} {self.reason}"

    def __repr__(self) -> str:
        return f"ParseError({self.status!r}, {self.reason!r})"
