"""Delimiting SIP messages on a byte stream (TCP, TLS): RFC 3261 sections 7.5 and 18.3,
RFC 5626 section 3.5.1 keep-alives. Sans-I/O: the transport feeds bytes and acts on results.

On a stream, Content-Length is the only way to find where a body ends, so it is mandatory
(18.3). When it is missing, malformed, duplicated or too large, or the header section cannot
be split into fields, the stream can no longer be delimited: `feed` reports the ParseError,
sets `broken`, and ignores any further data. The transport should then send the error
response if it has a `partial` request to address, and close the connection.

Any other error (bad start line, missing Call-ID, ...) concerns one well-delimited message:
it is reported and the framer carries on with the next one.
"""

from __future__ import annotations

from .limits import DEFAULT_LIMITS, Limits
from .errors import ParseError
from .messages import Request, Response
from .parser import _build, _content_length, _Head, _scan_head, scan_head_for_partial

__all__ = ["StreamFramer"]


class StreamFramer:
    """Feed it the bytes read from one connection; get back whole messages.

    `feed(data)` returns, in order, every message completed by `data`, each a Request, a
    Response or a ParseError. A message split over many reads comes out once it is whole;
    pipelined messages come out together.

    Keep-alives (RFC 5626 3.5.1): CRLFs before a start line are skipped. Each double CRLF
    ("ping") among them is counted; `take_pings()` returns how many arrived since the last
    call, and the transport answers each with a single CRLF ("pong"). A single CRLF (a pong, or
    the tail of a sloppy sender's message) is skipped without counting.
    """

    def __init__(self, limits: Limits = DEFAULT_LIMITS) -> None:
        self.limits = limits
        self.broken = False
        self.pings = 0  # total double-CRLF pings seen
        self._pings_untaken = 0
        self._crlf_run = 0  # CRLFs seen since the last message or ping
        self._buf = bytearray()
        self._scan_from = 0  # where to resume searching for the end of the header section
        self._head: _Head | None = None  # scanned head of the message whose body is awaited
        self._body_length = 0

    @property
    def buffered(self) -> int:
        """Bytes held back waiting for the rest of a message (once a header section has been
        scanned, only its body bytes so far)."""
        return len(self._buf)

    @property
    def mid_message(self) -> bool:
        """True while part of a message has arrived and the rest has not, including a
        complete header section still waiting for its body (a read timeout applies)."""
        return bool(self._buf) or self._head is not None

    def take_pings(self) -> int:
        """Pings (double CRLFs) received since the last call; answer each with one CRLF."""
        count = self._pings_untaken
        self._pings_untaken = 0
        return count

    def feed(self, data: bytes) -> list[Request | Response | ParseError]:
        if self.broken:
            return []
        buf = self._buf
        buf += data
        out: list[Request | Response | ParseError] = []
        pos = 0
        limits = self.limits
        while True:
            head = self._head
            if head is None:
                # Between messages: skip CRLFs (7.5), counting double-CRLF pings.
                while buf.startswith(b"\r\n", pos):
                    pos += 2
                    self._crlf_run += 1
                    if self._crlf_run == 2:
                        self._crlf_run = 0
                        self.pings += 1
                        self._pings_untaken += 1
                if pos >= len(buf) or (len(buf) - pos == 1 and buf[pos] == 0x0D):
                    break  # nothing, or half a CRLF: wait
                self._crlf_run = 0
                end = buf.find(b"\r\n\r\n", max(pos, self._scan_from))
                if end < 0:
                    self._scan_from = max(pos, len(buf) - 3)
                    if len(buf) - pos > limits.max_message_size:
                        out.append(self._break(ParseError(413, "Message too large")))
                        return out
                    break
                self._scan_from = 0
                try:
                    head = _scan_head(buf, pos, end, limits)
                    length = _content_length(head, limits)
                    if length is None:
                        raise ParseError(400, "Missing Content-Length on a stream transport")
                    if end + 4 - pos + length > limits.max_message_size:
                        raise ParseError(413, "Message too large")
                except ParseError as exc:
                    if head is None:
                        head = scan_head_for_partial(buf, pos, end, limits, exc)
                    out.append(self._break(self._with_partial(head, exc)))
                    return out
                self._head = head
                self._body_length = length
                pos = end + 4
            # Awaiting the body of self._head.
            length = self._body_length
            if len(buf) - pos < length:
                break
            body = bytes(buf[pos:pos + length])
            pos += length
            self._head = None
            try:
                out.append(_build(head, body, limits))
            except ParseError as exc:
                out.append(exc)
        if pos:
            del buf[:pos]
            if self._scan_from:
                self._scan_from = max(0, self._scan_from - pos)
        return out

    def _break(self, error: ParseError) -> ParseError:
        self.broken = True
        self._buf = bytearray()
        self._head = None
        return error

    def _with_partial(self, head: _Head | None, error: ParseError) -> ParseError:
        # Attach the request as far as it is readable, so the transport can answer before
        # closing (RFC 4475 3.1.2.3: respond with an error, then close).
        if head is None:
            return error
        try:
            _build(head, b"", self.limits, error)
        except ParseError as exc:
            if exc.status == error.status and exc.reason == error.reason:
                return exc
        return error
