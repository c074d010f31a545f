"""SIP message -> bytes.

Lines end in CRLF; header names are written in their canonical form (compact forms are
expanded); Content-Length is always written and always equals len(body): an existing
Content-Length line is rewritten in place (duplicates dropped), otherwise one is appended.
Text is encoded as UTF-8 with errors="surrogateescape", the inverse of the parser's decoding,
so a parsed message is written back byte for byte apart from unfolding and Content-Length.
"""

from __future__ import annotations

from .messages import Request, Response

__all__ = ["serialize"]


def serialize(msg: Request | Response) -> bytes:
    """Raises ValueError if a start-line element or header contains CR or LF (which would
    let one value inject header lines)."""
    if isinstance(msg, Request):
        start = f"{msg.method} {msg.uri} {msg.version}"
    elif isinstance(msg, Response):
        start = f"{msg.version} {msg.status} {msg.reason}"
    else:
        raise TypeError("serialize() takes a Request or a Response")
    body = msg.body
    lines = [start]
    wrote_length = False
    for name, value in msg.headers:
        if name == "Content-Length":
            if wrote_length:
                continue
            value = str(len(body))
            wrote_length = True
        lines.append(f"{name}: {value}")
    if not wrote_length:
        lines.append(f"Content-Length: {len(body)}")
    lines.append("")
    lines.append("")
    head = "\r\n".join(lines)
    breaks = len(lines) - 1
    if head.count("\n") != breaks or head.count("\r") != breaks:
        raise ValueError("CR or LF inside a start line or header field")
    return head.encode("utf-8", "surrogateescape") + body
