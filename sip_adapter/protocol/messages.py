"""SIP messages: `Request` and `Response`, immutable once built (the parser builds them).

Text encoding: header names and values, the method, Request-URI and reason phrase are `str`,
decoded from UTF-8 with errors="surrogateescape" (bytes that are not UTF-8 become lone
surrogates U+DC80..U+DCFF, so decoding never fails and the serializer writes the original
bytes back). Bodies stay `bytes`. Code that must print or re-encode a value strictly should
use `value.encode("utf-8", "surrogateescape")`.

Structured values (values.py) are derived from the header text on demand and cached per
message; the parser fills the cache with what it had to validate anyway.
"""

from __future__ import annotations

from typing import Any, Callable, Iterable, TypeVar

from . import abnf
from .abnf import UINT32_MAX, bounded_int, delta_seconds, parse_digits
from .errors import ParseError
from .headers import Headers
from .uri import AbsoluteUri, SipUri, parse_sip_uri, parse_uri
from .values import CSeq, NameAddr, Via

__all__ = ["Message", "Request", "Response"]

# --- Messages ---------------------------------------------------------------------------------

# (Typed Any so that a lookup with it as the default is typed by the cached value.)
_MISSING: Any = object()
_T = TypeVar("_T")


class Message:
    """What requests and responses share: headers, body and the derived header values."""

    __slots__ = ("headers", "body", "version", "_cache")

    headers: Headers
    body: bytes
    version: str

    def __init__(self, headers: Headers | Iterable[tuple[str, str]] | None, body: bytes,
                 version: str) -> None:
        if headers is None:
            headers = Headers()
        elif not isinstance(headers, Headers):
            headers = Headers(headers)
        self.headers = headers
        self.body = bytes(body)
        self.version = version
        # Derived values, computed once: a message does not change after it is built. Each
        # key holds its own type ("vias": list[Via], "cseq": CSeq | None, ...), which the
        # accessors and the parser write and read; a dict type cannot say that, hence Any.
        self._cache: dict[str, Any] = {}

    def _cached(self, key: str, compute: Callable[[], _T]) -> _T:
        value: _T = self._cache.get(key, _MISSING)
        if value is _MISSING:
            value = compute()
            self._cache[key] = value
        return value

    # -- derived values; each raises ParseError(400) when its header is malformed --

    @property
    def vias(self) -> list[Via]:
        """Every via-parm, top first."""
        def compute() -> list[Via]:
            return [Via.parse(e) for e in self.headers.get_all("Via")]
        return list(self._cached("vias", compute))

    @property
    def top_via(self) -> Via | None:
        vias = self._cached("vias", lambda: [Via.parse(e) for e in self.headers.get_all("Via")])
        return vias[0] if vias else None

    @property
    def cseq(self) -> CSeq | None:
        def compute() -> CSeq | None:
            value = self.headers.get("CSeq")
            if value is None:
                return None
            m = abnf.CSEQ_RE.fullmatch(value)
            if m is None:
                raise ParseError(400, "Malformed CSeq header field")
            number = bounded_int(m.group("number"), UINT32_MAX)
            if number is None:
                raise ParseError(400, "CSeq number out of range")
            return CSeq(number, m.group("method"))
        return self._cached("cseq", compute)

    @property
    def call_id(self) -> str | None:
        return self.headers.get("Call-ID")

    @property
    def from_(self) -> NameAddr | None:
        return self._name_addr("From")

    @property
    def to(self) -> NameAddr | None:
        return self._name_addr("To")

    def _name_addr(self, name: str) -> NameAddr | None:
        def compute() -> NameAddr | None:
            value = self.headers.get(name)
            return None if value is None else NameAddr.parse(value)
        return self._cached(name, compute)

    @property
    def content_length(self) -> int | None:
        """The Content-Length header's value (None when absent)."""
        def compute() -> int | None:
            value = self.headers.get("Content-Length")
            if value is None:
                return None
            if abnf.DIGITS_RE.fullmatch(value) is None:
                raise ParseError(400, "Malformed Content-Length header field")
            number = bounded_int(value, UINT32_MAX)
            if number is None:
                raise ParseError(400, "Content-Length out of range")
            return number
        return self._cached("content-length", compute)

    @property
    def content_type(self) -> str | None:
        """"type/subtype" lower-cased, without parameters; None when absent."""
        def compute() -> str | None:
            value = self.headers.get("Content-Type")
            if value is None:
                return None
            m = abnf.MEDIA_TYPE_RE.fullmatch(value)
            if m is None:
                raise ParseError(400, "Malformed Content-Type header field")
            return f"{m.group('type')}/{m.group('subtype')}".lower()
        return self._cached("content-type", compute)

    @property
    def expires(self) -> int | None:
        """The Expires header field in delta-seconds; None when absent. The one place its
        value is read (the PUBLISH handling uses this). Several lines, or a value that is not
        1*DIGIT in ASCII (an empty value, a sign, a fraction, "²", "١٢٣", "１２３"):
        ParseError(400). Values above 2**32-1, of any length, read as 2**32-1."""
        def compute() -> int | None:
            values = self.headers._idx().get("expires")
            if not values:
                return None
            if len(values) > 1:
                raise ParseError(400, "Multiple Expires header fields")
            number = delta_seconds(values[0])
            if number is None:
                raise ParseError(400, "Malformed Expires header field")
            return number
        return self._cached("expires", compute)

    @property
    def max_forwards(self) -> int | None:
        def compute() -> int | None:
            value = self.headers.get("Max-Forwards")
            if value is None:
                return None
            number = parse_digits(value, 255)
            if number is None:
                raise ParseError(400, "Malformed Max-Forwards header field")
            return number
        return self._cached("max-forwards", compute)


class Request(Message):
    """A SIP request. `uri` is the Request-URI text."""

    __slots__ = ("method", "uri")

    def __init__(self, method: str, uri: str,
                 headers: Headers | Iterable[tuple[str, str]] | None = None,
                 body: bytes = b"", version: str = "SIP/2.0") -> None:
        super().__init__(headers, body, version)
        self.method = method
        self.uri = uri

    @property
    def parsed_uri(self) -> SipUri:
        """The Request-URI as a SipUri; ParseError(416) for another scheme, 400 if malformed."""
        return self._cached("parsed-uri", lambda: parse_sip_uri(self.uri))

    @property
    def aor(self) -> str:
        """The Request-URI's address of record, any scheme (domain.resource decides which
        spellings name one resource; see uri.aor). ParseError(400) for a malformed URI."""
        # The parser's, when it read a SIP URI.
        uri: SipUri | AbsoluteUri | None = self._cache.get("parsed-uri")
        if uri is None:
            uri = parse_uri(self.uri)
        return uri.aor

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Request):
            return NotImplemented
        return (
            self.method == other.method
            and self.uri == other.uri
            and self.version == other.version
            and self.headers == other.headers
            and self.body == other.body
        )

    # Unhashable, as it defines __eq__; typeshed types object.__hash__ as a method only.
    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        return f"<Request {self.method} {self.uri} ({len(self.headers)} headers, {len(self.body)} bytes)>"


class Response(Message):
    """A SIP response."""

    __slots__ = ("status", "reason")

    def __init__(self, status: int, reason: str = "",
                 headers: Headers | Iterable[tuple[str, str]] | None = None,
                 body: bytes = b"", version: str = "SIP/2.0") -> None:
        super().__init__(headers, body, version)
        self.status = status
        self.reason = reason

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Response):
            return NotImplemented
        return (
            self.status == other.status
            and self.reason == other.reason
            and self.version == other.version
            and self.headers == other.headers
            and self.body == other.body
        )

    # Unhashable, as it defines __eq__; typeshed types object.__hash__ as a method only.
    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        return f"<Response {self.status} {self.reason} ({len(self.headers)} headers, {len(self.body)} bytes)>"
