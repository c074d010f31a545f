"""Bytes -> SIP message (RFC 3261 sections 7, 18.3, 20 and 25). Sans-I/O.

`parse_message` takes one datagram. The stream framer (framer.py) uses the same three steps:

1. `_scan_head`: split the header section into unfolded (name, value) fields. Only this and
   Content-Length are needed to delimit a message on a stream.
2. `_content_length`: the body length the header section announces.
3. `_build`: the start line and every check that decides whether the message is acceptable.
   Once the top Via is readable, errors carry `partial` (the request so far) so that the
   server can still answer them.

Header names and values are decoded as UTF-8 with errors="surrogateescape" (see message.py).

What is checked eagerly, because a server must answer 400 (or 505 / 501 / 413 / 414) rather
than act on it: the start line; Via; From, To, Call-ID, CSeq (present, once each, well formed,
CSeq method = request method, CSeq number < 2**32); Content-Length, Max-Forwards and
Content-Type (once each, well formed); Contact, Route and Record-Route (name-addr syntax);
Date (rfc1123-date, GMT); the Request-URI (a SIP URI must match RFC 3261, any other scheme
must be an absoluteURI; no headers component). Other headers are kept as text and checked by
their accessors when used (`Message.expires` raises ParseError(400)). Numbers are ASCII
digits only (abnf.DIGITS_RE), read with abnf.bounded_int.

Cost: every step is linear in the message and does Python work per element only up to the
limits (Limits.max_list_elements elements per list header, Limits.max_params parameters per
via-parm, name-addr or URI; both answered with 413). Contact, Route and Record-Route elements
are checked with regular expressions and not built; From, To, the Request-URI and the Vias
are built. tests/unit/test_parse_cost.py holds the worst shapes to a few milliseconds.
"""

from __future__ import annotations

import re

from . import abnf
from .abnf import UINT32_MAX, bounded_int, parse_digits
from .limits import DEFAULT_LIMITS, Limits
from .errors import ParseError
from .headers import _NAMES, LIST_HEADERS, Headers, canonical_name, split_list
from .values import CSeq, NameAddr, Via, check_name_addr, too_many_params
from .messages import Request, Response
from .uri import SipUri, check_uri, parse_uri

__all__ = ["parse_message", "ParseError", "KNOWN_METHODS"]

# Methods a SIP element may know (RFC 3261 and the extensions in common use). An unknown
# method whose CSeq method differs is answered 501 rather than 400 (RFC 4475 3.1.2.18).
KNOWN_METHODS = frozenset({
    "INVITE", "ACK", "OPTIONS", "BYE", "CANCEL", "REGISTER", "PRACK", "SUBSCRIBE", "NOTIFY",
    "PUBLISH", "INFO", "REFER", "MESSAGE", "UPDATE",
})

# Single-valued headers that may appear once at most (RFC 4475 3.3.8, 3.3.9).
_SINGLETON_NAMES = {
    "call-id": "Call-ID", "from": "From", "to": "To", "cseq": "CSeq",
    "content-length": "Content-Length", "max-forwards": "Max-Forwards",
    "content-type": "Content-Type",
}
_MANDATORY = (("from", "From"), ("to", "To"), ("call-id", "Call-ID"), ("cseq", "CSeq"))
_HEADER_NAME_RE = abnf.HEADER_NAME_RE
_CALLID_FULLMATCH = abnf.CALLID_RE.fullmatch
_CSEQ_FULLMATCH = abnf.CSEQ_RE.fullmatch
_MEDIA_TYPE_FULLMATCH = abnf.MEDIA_TYPE_RE.fullmatch
# Every spelling seen in practice, as is and lower-cased: most lookups then skip .lower().
_NAMES_ANY_CASE = dict(_NAMES)
_NAMES_ANY_CASE.update({canonical: (canonical, key) for canonical, key in _NAMES.values()})
_NAMES_ANY_CASE.update({k.upper(): v for k, v in _NAMES.items() if len(k) == 1})


class _Head:
    """A scanned header section. `elements`: header lines plus commas, an upper bound on
    the elements of any list header; when it is within max_list_elements the parser skips
    counting them (a PUBLISH usually has no comma at all)."""

    __slots__ = ("start_line", "headers", "index", "elements")

    def __init__(self, start_line: str, headers: Headers, index: dict[str, list[str]],
                 elements: int = 1 << 62) -> None:
        self.start_line = start_line
        self.headers = headers
        self.index = index
        self.elements = elements


class _SectionTooLarge(ParseError):
    """413 for a header section with too many or too long fields, holding the section as
    _scan_head had unfolded and checked it, so that scan_head_for_partial need not do that
    again (on 64 KB of folded lines, unfolding is the costly part)."""

    def __init__(self, reason: str, start_line: str, rest: str) -> None:
        super().__init__(413, reason)
        self.section: tuple[str, str] | None = (start_line, rest)


# LWS  =  [*WSP CRLF] 1*WSP: a folded line break and the whitespace around it become one SP.
_FOLD_RE = re.compile(r"[ \t]*\r\n[ \t]++")


def _scan_head(data: bytes | bytearray, start: int, end: int, limits: Limits) -> _Head:
    """Decode data[start:end] (start line and header lines, without the final CRLFCRLF) into
    a start line and unfolded, name-canonicalised header fields."""
    # (str methods, not one big regex: on CPython split/partition/strip are several times
    # faster than a findall doing the same work.)
    text = data[start:end].decode("utf-8", "surrogateescape")
    start_line, _, rest = text.partition("\r\n")
    if not start_line:
        raise ParseError(400, "Empty start line")
    if not rest:
        if "\r" in start_line or "\n" in start_line:
            raise ParseError(400, "Bare CR or LF in header section")
        return _Head(start_line, Headers._trusted([], {}), {}, 0)
    if rest[0] == " " or rest[0] == "\t":
        raise ParseError(400, "Continuation line before the first header field")
    if "\r\n " in rest or "\r\n\t" in rest:
        rest = _FOLD_RE.sub(" ", rest)
    lines = rest.split("\r\n")
    breaks = len(lines) - 1
    if (
        rest.count("\r") != breaks
        or rest.count("\n") != breaks
        or "\r" in start_line
        or "\n" in start_line
    ):
        raise ParseError(400, "Bare CR or LF in header section")
    if len(lines) > limits.max_headers:
        raise _SectionTooLarge("Too many header fields", start_line, rest)
    max_len = limits.max_header_length
    if len(rest) > max_len and any(len(line) > max_len for line in lines):
        raise _SectionTooLarge("Header field too long", start_line, rest)
    fields: list[tuple[str, str]] = []
    index: dict[str, list[str]] = {}
    names = _NAMES_ANY_CASE
    for line in lines:
        name, colon, value = line.partition(":")
        if not colon:
            raise ParseError(400, "Malformed header field")
        known = names.get(name)
        if known is None:
            name = name.rstrip(" \t")
            known = names.get(name) or names.get(name.lower())
            if known is None:
                if _HEADER_NAME_RE.fullmatch(name) is None:
                    raise ParseError(400, "Malformed header field name")
                known = (name, name.lower())
        name, key = known
        value = value.strip(" \t")
        fields.append((name, value))
        bucket = index.get(key)
        if bucket is None:
            index[key] = [value]
        else:
            bucket.append(value)
    elements = len(lines) + rest.count(",") if "," in rest else len(lines)
    return _Head(start_line, Headers._trusted(fields, index), index, elements)


def _content_length(head: _Head, limits: Limits) -> int | None:
    values = head.index.get("content-length")
    if not values:
        return None
    if len(values) > 1:
        raise ParseError(400, "Multiple Content-Length header fields")
    value = values[0]
    if abnf.DIGITS_RE.fullmatch(value) is None:
        raise ParseError(400, "Malformed Content-Length header field")
    length = bounded_int(value, limits.max_body_size)
    if length is None:
        raise ParseError(413, "Message body too large")
    return length


def _build(head: _Head, body: bytes, limits: Limits,
           deferred: ParseError | None = None) -> Request | Response:
    """Turn a scanned head and its body into a message, or raise ParseError. `deferred` is a
    framing error found earlier; it is raised once `partial` can be attached to it."""
    line = head.start_line
    first, _, _ = line.partition(" ")
    if "/" in first:
        return _build_response(head, body, limits, deferred)

    # Request-Line  =  Method SP Request-URI SP SIP-Version CRLF
    parts = line.split(" ")
    if (
        len(parts) != 3
        or not parts[1]
        or abnf.METHOD_RE.fullmatch(parts[0]) is None
        or (parts[2] != "SIP/2.0" and abnf.SIP_VERSION_RE.fullmatch(parts[2]) is None)
    ):
        raise _malformed_request_line(head, parts, body, limits)
    method, uri, version = parts
    version_ok = version == "SIP/2.0"
    if not version_ok:
        version_ok = version.upper() == "SIP/2.0"
        if version_ok:
            version = "SIP/2.0"

    vias = _vias(head, limits)
    request = Request(method, uri, head.headers, body, version)
    request._cache["vias"] = vias

    def fail(status: int, reason: str) -> ParseError:
        return ParseError(status, reason, request)

    if not version_ok:
        raise fail(505, "Version Not Supported")
    if deferred is not None:
        raise fail(deferred.status, deferred.reason)
    if len(uri) > limits.max_header_length:
        raise fail(414, "Request-URI Too Long")
    try:
        if len(uri) > 2 * limits.max_params:
            check_uri(uri, limits.max_params)  # 413 before building what is too many
        parsed_uri = parse_uri(uri)
    except ParseError as exc:
        if exc.status == 413:
            raise fail(413, "Too many Request-URI parameters") from None
        raise fail(400, "Malformed Request-URI") from None
    if isinstance(parsed_uri, SipUri):
        if parsed_uri.headers:
            raise fail(400, "Request-URI must not contain headers")
        request._cache["parsed-uri"] = parsed_uri

    try:
        _check_common(request, head, limits)
    except ParseError as exc:
        raise fail(exc.status, exc.reason) from None

    cseq: CSeq = request._cache["cseq"]
    if cseq.method != method:
        if method not in KNOWN_METHODS:
            raise fail(501, "Not Implemented")
        raise fail(400, "CSeq method does not match the request method")
    return request


def _malformed_request_line(head: _Head, parts: list[str], body: bytes,
                            limits: Limits) -> ParseError:
    # RFC 4475 3.1.2.7-3.1.2.10: reject with 400. When the Via is readable the error still
    # carries a partial request (method as far as it is a token, Request-URI unknown: "") so
    # that the 400 can be addressed.
    try:
        vias = _vias(head, limits)
    except ParseError:
        return ParseError(400, "Malformed Request-Line")
    method = parts[0] if abnf.METHOD_RE.fullmatch(parts[0]) else ""
    partial = Request(method, "", head.headers, body, "SIP/2.0")
    partial._cache["vias"] = vias
    return ParseError(400, "Malformed Request-Line", partial)


def _build_response(head: _Head, body: bytes, limits: Limits,
                    deferred: ParseError | None) -> Response:
    # Status-Line  =  SIP-Version SP Status-Code SP Reason-Phrase CRLF
    # (a missing SP after the code is tolerated: RFC 4475 3.1.1.13 has one with an empty reason)
    version, _, rest = head.start_line.partition(" ")
    code, _, reason = rest.partition(" ")
    if (
        abnf.SIP_VERSION_RE.fullmatch(version) is None
        or abnf.STATUS_CODE_RE.fullmatch(code) is None
        or abnf.REASON_PHRASE_RE.fullmatch(reason) is None
    ):
        raise ParseError(400, "Malformed Status-Line")
    if version.upper() != "SIP/2.0":
        raise ParseError(505, "Version Not Supported")
    if deferred is not None:
        raise deferred
    vias = _vias(head, limits)
    response = Response(int(code), reason, head.headers, body, "SIP/2.0")
    response._cache["vias"] = vias
    _check_common(response, head, limits)
    return response


def _vias(head: _Head, limits: Limits) -> list[Via]:
    """Every via-parm, parsed. Raises ParseError: 400 when one is malformed, 413 when there
    are more than max_list_elements of them or one has more than max_params parameters. The
    request is then unanswerable (no `partial`): a response must copy every Via (RFC 3261
    8.2.6.2), and one that echoes 64 KB of them to a possibly forged source is not sent."""
    lines = head.index.get("via")
    if not lines:
        raise ParseError(400, "Missing Via header field")
    if head.elements > limits.max_list_elements and \
            _too_many_elements(lines, limits.max_list_elements):
        raise ParseError(413, "Too many Via header field values")
    max_params = limits.max_params
    vias = []
    for value in lines:
        for element in split_list(value):
            if not element:
                raise ParseError(400, "Malformed Via header field")
            via = Via.parse(element)
            # (a parameter takes two characters at least: shorter texts need no count)
            if len(via._params_text) > 2 * max_params and \
                    too_many_params(via._params_text, max_params):
                raise ParseError(413, "Too many Via parameters")
            vias.append(via)
    return vias


_ELEMENT_COMMA_MATCH = abnf.LIST_ELEMENT_COMMA_RE.match


def _too_many_elements(values: list[str], maximum: int) -> bool:
    """Do these lines of one list header hold more than `maximum` elements?"""
    # Each line holds at least one element and each comma may start another: one count per
    # line decides most cases. Above it, step over elements (commas inside quotes or <...>
    # do not count) and stop as soon as the bound is passed: at most maximum + 1 steps,
    # however many thousands of commas there are.
    if len(values) + sum(value.count(",") for value in values) <= maximum:
        return False
    remaining = maximum
    for value in values:
        remaining -= 1  # the element after the last separating comma
        if remaining < 0:
            return True
        if '"' not in value and "<" not in value:
            remaining -= value.count(",")
            if remaining < 0:
                return True
            continue
        pos = 0
        while True:
            match = _ELEMENT_COMMA_MATCH(value, pos)
            if match is None:
                break
            remaining -= 1
            if remaining < 0:
                return True
            pos = match.end()
    return False


def _check_common(message: Request | Response, head: _Head, limits: Limits) -> None:
    """The header checks requests and responses share; fills the message's cache."""
    index = head.index
    for key, values in index.items():
        if len(values) > 1 and key in _SINGLETON_NAMES:
            raise ParseError(400, f"Multiple {_SINGLETON_NAMES[key]} header fields")
    max_elements = limits.max_list_elements
    if head.elements > max_elements:
        for key, values in index.items():
            if key in LIST_HEADERS and _too_many_elements(values, max_elements):
                raise ParseError(413, f"Too many {canonical_name(key)} header field values")
    for key, name in _MANDATORY:
        if key not in index:
            raise ParseError(400, f"Missing {name} header field")

    max_params = limits.max_params
    cache = message._cache
    cache["From"] = _name_addr(index["from"][0], "From", max_params)
    cache["To"] = _name_addr(index["to"][0], "To", max_params)

    if _CALLID_FULLMATCH(index["call-id"][0]) is None:
        raise ParseError(400, "Malformed Call-ID header field")

    cseq = _CSEQ_FULLMATCH(index["cseq"][0])
    if cseq is None:
        raise ParseError(400, "Malformed CSeq header field")
    number = bounded_int(cseq.group(1), UINT32_MAX)
    if number is None:
        raise ParseError(400, "CSeq number out of range")
    cache["cseq"] = CSeq(number, cseq.group(2))

    max_forwards = index.get("max-forwards")
    if max_forwards is not None:
        hops = parse_digits(max_forwards[0], 255)
        if hops is None:
            raise ParseError(400, "Malformed Max-Forwards header field")
        cache["max-forwards"] = hops
    content_types = index.get("content-type")
    if content_types is not None:
        media = _MEDIA_TYPE_FULLMATCH(content_types[0])
        if media is None:
            raise ParseError(400, "Malformed Content-Type header field")
        cache["content-type"] = f"{media.group('type')}/{media.group('subtype')}".lower()
    for key, name, brackets_required in _NAME_ADDR_LISTS:
        for value in index.get(key, ()):
            for element in split_list(value):
                if element == "*" and key == "contact":
                    continue
                try:
                    check_name_addr(element, brackets_required,
                                    max_params if len(element) > 2 * max_params else None)
                except ParseError as exc:
                    if exc.status == 413:
                        raise ParseError(413, f"Too many {name} parameters") from None
                    raise ParseError(400, f"Malformed {name} header field") from None
    for value in index.get("date", ()):
        if abnf.DATE_RE.fullmatch(value) is None:
            raise ParseError(400, "Malformed Date header field")


# List headers whose every element the parser checks (name-addr syntax), without building.
_NAME_ADDR_LISTS = (("contact", "Contact", False), ("route", "Route", True),
                    ("record-route", "Record-Route", True))


def _name_addr(value: str, name: str, max_params: int) -> NameAddr:
    """From and To, built (and memoised: they recur)."""
    try:
        if len(value) > 2 * max_params:  # else it cannot hold more than max_params
            check_name_addr(value, max_params=max_params)  # 413 before building too much
        return NameAddr.parse(value)
    except ParseError as exc:
        if exc.status == 413:
            raise ParseError(413, f"Too many {name} parameters") from None
        raise ParseError(400, f"Malformed {name} header field") from None


# What a response copies from its request (RFC 3261 8.2.6.2), as header lines of a section
# already unfolded and prefixed with "\r\n" (so every line starts after a "\n"). The
# literal "\n" lets the regex engine skip to candidate lines in C.
_PARTIAL_VIA_RE = re.compile(r"(?i)\n(?:via|v)[ \t]*+:[ \t]*+([^\r\n]*+)")
_PARTIAL_SINGLETONS = tuple(
    (canonical, key, re.compile(rf"(?i)\n(?:{spelling})[ \t]*+:[ \t]*+([^\r\n]*+)"))
    for canonical, key, spelling in (
        ("From", "from", "from|f"), ("To", "to", "to|t"), ("Call-ID", "call-id", "call-id|i"),
        ("CSeq", "cseq", "cseq"),
    )
)


def scan_head_for_partial(data: bytes | bytearray, start: int, end: int, limits: Limits,
                          error: ParseError) -> _Head | None:
    """After `_scan_head` refused a header section as too large (413: too many or too long
    header fields), read from it what a response needs, so that the 413 can carry `partial`
    and be answered: the start line, every Via line and the first From, To, Call-ID and
    CSeq (the partial request's headers hold only these). None for any other error, when
    the section has a bare CR or LF, or when there are more Via lines than
    max_list_elements (the request is not answered, see _vias).

    Regular expressions find the lines, so a section of 10,000 short lines costs a few
    searches in C, not a Python step per line (it is bounded by max_message_size)."""
    if error.status != 413:
        return None
    if isinstance(error, _SectionTooLarge) and error.section is not None:
        (start_line, rest), error.section = error.section, None  # (unfolded and checked)
    else:
        text = data[start:end].decode("utf-8", "surrogateescape")
        start_line, _, rest = text.partition("\r\n")
        if not start_line or not rest or rest[0] == " " or rest[0] == "\t":
            return None
        if "\r\n " in rest or "\r\n\t" in rest:
            rest = _FOLD_RE.sub(" ", rest)
        breaks = rest.count("\r\n")
        if rest.count("\r") != breaks or rest.count("\n") != breaks or "\n" in start_line \
                or "\r" in start_line:
            return None
    rest = "\r\n" + rest
    fields: list[tuple[str, str]] = []
    vias: list[str] = []
    for match in _PARTIAL_VIA_RE.finditer(rest):
        if len(vias) >= limits.max_list_elements:
            return None
        vias.append(match.group(1).rstrip(" \t"))
    index: dict[str, list[str]] = {}
    if vias:
        index["via"] = vias
        fields.extend(("Via", value) for value in vias)
    for canonical, key, pattern in _PARTIAL_SINGLETONS:
        found = pattern.search(rest)
        if found is not None:
            value = found.group(1).rstrip(" \t")
            index[key] = [value]
            fields.append((canonical, value))
    return _Head(start_line, Headers._trusted(fields, index), index)


def _unterminated(data: bytes | bytearray, start: int, size: int, limits: Limits) -> ParseError:
    """A datagram whose header section lacks the empty line (RFC 4475 3.1.2.15, baddn): the
    datagram still delimits it, so reject it with 400 and, when the request's Via is readable,
    carry `partial` so that the 400 can be answered."""
    error = ParseError(400, "Header section not terminated by an empty line")
    end = size - 2 if data.endswith(b"\r\n") else size
    try:
        _build(_scan_head(data, start, end, limits), b"", limits, error)
    except ParseError as exc:
        if exc.partial is not None:
            return exc
    return error


def parse_message(data: bytes, limits: Limits = DEFAULT_LIMITS) -> Request | Response:
    """Parse one datagram (RFC 3261 18.3): octets beyond Content-Length are discarded, a
    body shorter than Content-Length is an error (400), and without Content-Length the rest
    of the datagram is the body. CRLFs before the start line are skipped (7.5).

    Raises ParseError (and nothing else) for anything that is not an acceptable message."""
    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise TypeError("parse_message() takes bytes")
    size = len(data)
    if size > limits.max_message_size:
        raise ParseError(413, "Message too large")
    if isinstance(data, memoryview):
        data = data.tobytes()
    start = 0
    while data.startswith(b"\r\n", start):
        start += 2
    end = data.find(b"\r\n\r\n", start)
    if end < 0:
        if start >= size:
            raise ParseError(400, "Empty message")
        raise _unterminated(data, start, size, limits)
    try:
        head = _scan_head(data, start, end, limits)
    except ParseError as exc:
        partial_head = scan_head_for_partial(data, start, end, limits, exc)
        if partial_head is None:
            raise
        _build(partial_head, b"", limits, exc)  # raises exc again, with `partial` when it can
        raise
    body_start = end + 4
    available = size - body_start
    deferred = None
    body = b""
    try:
        length = _content_length(head, limits)
    except ParseError as exc:
        deferred = exc
    else:
        if length is None:
            if available > limits.max_body_size:
                deferred = ParseError(413, "Message body too large")
            else:
                body = bytes(data[body_start:])
        elif length > available:
            deferred = ParseError(400, "Message body shorter than Content-Length")
        else:
            body = bytes(data[body_start:body_start + length])
    return _build(head, body, limits, deferred)
