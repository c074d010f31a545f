"""Building a response to a request: RFC 3261 section 8.2.6."""

from __future__ import annotations

from typing import Iterable

from .errors import ParseError
from .headers import Headers
from .values import NameAddr, replace_first_via_parm
from .messages import Request, Response

__all__ = ["make_response", "REASON_PHRASES", "reason_phrase"]

REASON_PHRASES: dict[int, str] = {
    100: "Trying",
    180: "Ringing",
    200: "OK",
    202: "Accepted",
    400: "Bad Request",
    401: "Unauthorized",
    403: "Forbidden",
    404: "Not Found",
    405: "Method Not Allowed",
    407: "Proxy Authentication Required",
    408: "Request Timeout",
    412: "Conditional Request Failed",
    413: "Request Entity Too Large",
    414: "Request-URI Too Long",
    415: "Unsupported Media Type",
    416: "Unsupported URI Scheme",
    420: "Bad Extension",
    421: "Extension Required",
    423: "Interval Too Brief",
    480: "Temporarily Unavailable",
    481: "Call/Transaction Does Not Exist",
    482: "Loop Detected",
    483: "Too Many Hops",
    489: "Bad Event",
    500: "Server Internal Error",
    501: "Not Implemented",
    503: "Service Unavailable",
    504: "Server Time-out",
    505: "Version Not Supported",
    513: "Message Too Large",
}

_CLASS_PHRASES = {1: "Provisional", 2: "OK", 3: "Redirection", 4: "Client Error",
                  5: "Server Error", 6: "Global Failure"}


def reason_phrase(status: int) -> str:
    """The default reason phrase: the table's, else one for the status class."""
    return REASON_PHRASES.get(status) or _CLASS_PHRASES.get(status // 100, "Unknown")


def make_response(
    request: Request,
    status: int,
    reason: str | None = None,
    headers: Iterable[tuple[str, str]] = (),
    body: bytes = b"",
    *,
    to_tag: str,
    server: str | None = "esc",
) -> Response:
    """A response to `request` (RFC 3261 8.2.6): every Via line copied in order, then From,
    To, Call-ID and CSeq copied; a To without a tag gets ";tag=<to_tag>" (except in 100
    Trying, 8.2.6.2); a 100 copies Timestamp (8.2.6.1). Then `headers`, then Server (unless
    `server` is None or empty), then Content-Length.

    Works on a ParseError's `partial` request too: a header that is missing is left out, one
    that was malformed is copied as it is.
    """
    if not 100 <= status <= 699:
        raise ValueError(f"status {status} out of range")
    source = request.headers
    out: list[tuple[str, str]] = [("Via", value) for value in source.lines("Via")]
    from_value = source.get("From")
    if from_value is not None:
        out.append(("From", from_value))
    to_value = source.get("To")
    if to_value is not None:
        if status != 100 and _lacks_tag(to_value):
            to_value = f"{to_value};tag={to_tag}"
        out.append(("To", to_value))
    for name in ("Call-ID", "CSeq"):
        value = source.get(name)
        if value is not None:
            out.append((name, value))
    if status == 100:
        timestamp = source.get("Timestamp")
        if timestamp is not None:
            out.append(("Timestamp", timestamp))
    out.extend(headers)
    if server:
        out.append(("Server", server))
    out.append(("Content-Length", str(len(body))))
    return Response(status, reason if reason is not None else reason_phrase(status),
                    Headers(out), body)


def _lacks_tag(value: str) -> bool:
    try:
        return NameAddr.parse(value).tag is None
    except ParseError:
        return False  # unreadable To (partial request): copy it untouched


def render_response(
    request: Request,
    status: int,
    reason: str | None = None,
    headers: Iterable[tuple[str, str]] = (),
    *,
    to_tag: str,
    server: str | None = "esc",
    top_via: str | None = None,
) -> bytes:
    """`serialize(make_response(...))` for a body-less response, written straight to bytes.

    `top_via`, when given, replaces the request's first via-parm in the copy (the server
    passes it with `received` / `rport` set, RFC 3261 18.2.1), leaving the request as it is.

    This is the server's hot path (every PUBLISH is answered through it), so it skips the
    intermediate Headers object; `tests/unit/test_sip_responses.py` holds it to the same
    output as the general path."""
    if not 100 <= status <= 699:
        raise ValueError(f"status {status} out of range")
    source = request.headers
    lines = [f"SIP/2.0 {status} {reason if reason is not None else reason_phrase(status)}"]
    vias = source.lines("Via")
    if top_via is not None and vias:
        vias[0] = replace_first_via_parm(vias[0], top_via)
    lines.extend(f"Via: {value}" for value in vias)
    from_value = source.get("From")
    if from_value is not None:
        lines.append(f"From: {from_value}")
    to_value = source.get("To")
    if to_value is not None:
        if status != 100:
            try:
                parsed = request.to
                lacks = parsed is not None and parsed.tag is None
            except ParseError:
                lacks = False
            if lacks:
                to_value = f"{to_value};tag={to_tag}"
        lines.append(f"To: {to_value}")
    for name in ("Call-ID", "CSeq"):
        value = source.get(name)
        if value is not None:
            lines.append(f"{name}: {value}")
    if status == 100:
        timestamp = source.get("Timestamp")
        if timestamp is not None:
            lines.append(f"Timestamp: {timestamp}")
    for name, value in headers:
        if "\r" in value or "\n" in value:
            raise ValueError("CR or LF inside a header field")
        lines.append(f"{name}: {value}")
    if server:
        lines.append(f"Server: {server}")
    lines.append("Content-Length: 0\r\n\r\n")
    return "\r\n".join(lines).encode("utf-8", "surrogateescape")
