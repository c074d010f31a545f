"""SIP message value types: Headers, Request, Response, and the structured header values
Via, NameAddr and CSeq.

Text encoding: header names and values, the method, Request-URI and reason phrase are `str`,
decoded from UTF-8 with errors="surrogateescape" (bytes that are not UTF-8 become lone
surrogates U+DC80..U+DCFF, so decoding never fails and the serializer writes the original
bytes back). Bodies stay `bytes`. Code that must print or re-encode a value strictly should
use `value.encode("utf-8", "surrogateescape")`.

Structured values are derived from the header text on demand and cached per message until the
headers change; the parser fills the cache with what it had to validate anyway.
"""

from __future__ import annotations

import ipaddress
from functools import lru_cache
from types import MappingProxyType
from typing import Any, Callable, Iterable, Iterator, Mapping, NamedTuple

from . import abnf
from .limits import ParseError
from .abnf import UINT32_MAX, bounded_int, delta_seconds, parse_digits
from .uri import AbsoluteUri, SipUri, check_uri, parse_sip_uri, parse_uri

__all__ = [
    "Headers",
    "Request",
    "Response",
    "Message",
    "Via",
    "NameAddr",
    "CSeq",
    "canonical_name",
    "split_list",
    "count_elements",
    "check_name_addr",
    "bounded_int",
    "LIST_HEADERS",
]

# --- Header names -----------------------------------------------------------------------------

_KNOWN_NAMES = (
    "Accept", "Accept-Contact", "Accept-Encoding", "Accept-Language", "Alert-Info", "Allow",
    "Allow-Events", "Authentication-Info", "Authorization", "Call-ID", "Call-Info", "Contact",
    "Content-Disposition", "Content-Encoding", "Content-Language", "Content-Length",
    "Content-Transfer-Encoding", "Content-Type", "CSeq", "Date", "Error-Info", "Event",
    "Expires", "From", "History-Info", "Identity", "Identity-Info", "In-Reply-To",
    "Max-Forwards", "MIME-Version", "Min-Expires", "Min-SE", "Organization",
    "P-Asserted-Identity", "P-Preferred-Identity", "Path", "Priority", "Privacy",
    "Proxy-Authenticate", "Proxy-Authorization", "Proxy-Require", "RAck", "Reason",
    "Record-Route", "Refer-To", "Referred-By", "Reject-Contact", "Reply-To",
    "Request-Disposition", "Require", "Retry-After", "Route", "RSeq", "Security-Client",
    "Security-Server", "Security-Verify", "Server", "Service-Route", "Session-Expires",
    "SIP-ETag", "SIP-If-Match", "Subject", "Subscription-State", "Supported", "Timestamp",
    "To", "Unsupported", "User-Agent", "Via", "Warning", "WWW-Authenticate",
)

# RFC 3261 7.3.3 and later RFCs' compact forms.
_COMPACT = {
    "i": "Call-ID", "m": "Contact", "e": "Content-Encoding", "l": "Content-Length",
    "c": "Content-Type", "f": "From", "s": "Subject", "k": "Supported", "t": "To", "v": "Via",
    "o": "Event", "u": "Allow-Events", "r": "Refer-To", "b": "Referred-By",
    "x": "Session-Expires", "y": "Identity", "n": "Identity-Info", "a": "Accept-Contact",
    "j": "Reject-Contact", "d": "Request-Disposition",
}

# lower-cased spelling (full or compact) -> (canonical name, index key)
_NAMES: dict[str, tuple[str, str]] = {n.lower(): (n, n.lower()) for n in _KNOWN_NAMES}
_NAMES.update({k: (v, v.lower()) for k, v in _COMPACT.items()})

# Headers whose grammar is a comma-separated list (RFC 3261 7.3.1): get_all() splits them.
# Authorization-style headers, Date, SIP-If-Match and the name-addr singletons are not lists.
LIST_HEADERS = frozenset(
    n.lower()
    for n in (
        "Accept", "Accept-Contact", "Accept-Encoding", "Accept-Language", "Alert-Info",
        "Allow", "Allow-Events", "Call-Info", "Contact", "Content-Encoding",
        "Content-Language", "Error-Info", "History-Info", "In-Reply-To",
        "P-Asserted-Identity", "P-Preferred-Identity", "Path", "Proxy-Require", "Reason",
        "Record-Route", "Reject-Contact", "Request-Disposition", "Require", "Route",
        "Security-Client", "Security-Server", "Security-Verify", "Service-Route",
        "Supported", "Unsupported", "Via", "Warning",
    )
)


def canonical_name(name: str) -> str:
    """The canonical spelling of a header name: compact forms expanded, known names in their
    RFC capitalisation, unknown names unchanged."""
    known = _NAMES.get(name.lower())
    return known[0] if known is not None else name


_KEYS: dict[str, str] = {}


def _key(name: str) -> str:
    # Called for every header lookup: memoise the spellings seen (bounded, so hostile
    # traffic with random header names cannot grow it without limit).
    key = _KEYS.get(name)
    if key is None:
        lowered = name.lower()
        known = _NAMES.get(lowered)
        key = known[1] if known is not None else lowered
        if len(_KEYS) < 4096:
            _KEYS[name] = key
    return key


_LIST_FINDALL = abnf.LIST_ELEMENT_RE.findall
_QUOTED_OR_ANGLED_SUB = abnf.QUOTED_OR_ANGLED_RE.sub


def split_list(value: str) -> list[str]:
    """Split a header value at the commas that separate list elements: not inside a
    quoted-string (with its backslash escapes) nor inside <...>. Elements are stripped; empty
    elements are kept (callers decide whether that is an error). Linear, with no Python loop
    per character: plain str.split when there is nothing to skip, else one findall."""
    if "," not in value:
        return [value.strip(" \t")]
    if '"' not in value and "<" not in value:
        return [element.strip(" \t") for element in value.split(",")]
    found = _LIST_FINDALL(value)
    # findall ends with an empty match at the end of the value, which is an element only
    # when the value ends with a separating comma (then the match before it has sep ",").
    if len(found) > 1 and not found[-2][1]:
        del found[-1]
    return [element.strip(" \t") for element, _ in found]


def count_elements(value: str) -> int:
    """len(split_list(value)), without building the elements (str.count, in C)."""
    if '"' in value or "<" in value:
        value = _QUOTED_OR_ANGLED_SUB("", value)
    return value.count(",") + 1


def replace_first_via_parm(line: str, value: str) -> str:
    """A Via header line with its first via-parm replaced by `value`, the others kept."""
    if "," not in line:
        return value
    elements = split_list(line)
    elements[0] = value
    return ", ".join(elements)


def _check_text(name: str, value: str) -> None:
    if "\r" in value or "\n" in value or "\r" in name or "\n" in name or ":" in name:
        raise ValueError("header name or value contains CR, LF or (in the name) ':'")


class Headers:
    """Ordered header fields. Names are case-insensitive and compact forms are aliases
    ("i" and "call-id" both mean Call-ID); stored names are canonical.

    Iteration yields one (name, value) pair per header line, in order. `get_all` splits the
    values of list headers (LIST_HEADERS) at their commas; `lines` does not.
    """

    __slots__ = ("_fields", "_index", "_version")

    def __init__(self, fields: Iterable[tuple[str, str]] = ()) -> None:
        self._fields: list[tuple[str, str]] = []
        self._index: dict[str, list[str]] | None = None
        self._version = 0
        for name, value in fields:
            self.add(name, value)

    @classmethod
    def _trusted(cls, fields: list[tuple[str, str]], index: dict[str, list[str]]) -> Headers:
        # The parser's fast path: names already canonical, values already checked.
        self = cls.__new__(cls)
        self._fields = fields
        self._index = index
        self._version = 0
        return self

    def _idx(self) -> dict[str, list[str]]:
        index = self._index
        if index is None:
            index = {}
            for name, value in self._fields:
                key = _key(name)
                bucket = index.get(key)
                if bucket is None:
                    index[key] = [value]
                else:
                    bucket.append(value)
            self._index = index
        return index

    def _changed(self) -> None:
        self._index = None
        self._version += 1

    # -- reading --

    def get(self, name: str, default: str | None = None) -> str | None:
        """The first value: for a list header the first list element, otherwise the first
        line's value. `default` when absent."""
        key = _key(name)
        values = self._idx().get(key)
        if not values:
            return default
        if key in LIST_HEADERS:
            for value in values:
                for element in split_list(value):
                    if element:
                        return element
            return default
        return values[0]

    def get_all(self, name: str) -> list[str]:
        """Every value in order; list headers split at their commas, empty elements dropped."""
        key = _key(name)
        values = self._idx().get(key)
        if not values:
            return []
        if key in LIST_HEADERS:
            return [e for value in values for e in split_list(value) if e]
        return list(values)

    def by_key(self) -> Mapping[str, list[str]]:
        """Every header line's value by lower-cased canonical name ("call-id", "event"), in
        order, unsplit: the index the lookups use, for code that reads several headers of
        every message. A view to read, not to change."""
        return self._idx()

    def lines(self, name: str) -> list[str]:
        """The value of each header line with this name, unsplit."""
        return list(self._idx().get(_key(name), ()))

    def count_lines(self, name: str) -> int:
        """How many header lines carry this name (e.g. to detect several SIP-If-Match)."""
        return len(self._idx().get(_key(name), ()))

    def __contains__(self, name: object) -> bool:
        return isinstance(name, str) and _key(name) in self._idx()

    def __iter__(self) -> Iterator[tuple[str, str]]:
        return iter(list(self._fields))

    def __len__(self) -> int:
        return len(self._fields)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Headers):
            return NotImplemented
        if len(self._fields) != len(other._fields):
            return False
        return all(
            a[1] == b[1] and _key(a[0]) == _key(b[0])
            for a, b in zip(self._fields, other._fields)
        )

    def __repr__(self) -> str:
        return f"Headers({self._fields!r})"

    def copy(self) -> Headers:
        return Headers._trusted(list(self._fields), None)  # type: ignore[arg-type]

    # -- writing --

    def add(self, name: str, value: str) -> None:
        """Append a header line (the name is canonicalised)."""
        _check_text(name, value)
        self._fields.append((canonical_name(name), value))
        self._changed()

    def set(self, name: str, value: str) -> None:
        """Replace every line of this name by one line, at the position of the first."""
        _check_text(name, value)
        key = _key(name)
        new: list[tuple[str, str]] = []
        placed = False
        for field_name, field_value in self._fields:
            if _key(field_name) == key:
                if not placed:
                    new.append((canonical_name(name), value))
                    placed = True
            else:
                new.append((field_name, field_value))
        if not placed:
            new.append((canonical_name(name), value))
        self._fields = new
        self._changed()

    def remove(self, name: str) -> int:
        """Remove every line of this name; returns how many were removed."""
        key = _key(name)
        kept = [f for f in self._fields if _key(f[0]) != key]
        removed = len(self._fields) - len(kept)
        if removed:
            self._fields = kept
            self._changed()
        return removed


# --- Structured header values -----------------------------------------------------------------


class CSeq(NamedTuple):
    number: int
    method: str

    def __str__(self) -> str:
        return f"{self.number} {self.method}"


_GENERIC_PARAMS_FINDALL = abnf.GENERIC_PARAM_RE.findall
_VIA_FULLMATCH = abnf.VIA_PARM_RE.fullmatch


def _params(text: str) -> list[tuple[str, str | None]]:
    # gen-value is never empty, so findall's "" for an absent value means "no value"
    return [(name, value or None) for name, value in _GENERIC_PARAMS_FINDALL(text)]


def too_many_params(text: str, maximum: int) -> bool:
    """Does this `*( SEMI generic-param )` text hold more than `maximum` parameters? (One
    str.count; the exact count, a findall, only when a quoted value may hold semicolons.)"""
    return text.count(";") > maximum and len(_GENERIC_PARAMS_FINDALL(text)) > maximum


def _params_dict(pairs: list[tuple[str, str | None]]) -> dict[str, str | None]:
    out: dict[str, str | None] = {}
    for name, value in pairs:
        out.setdefault(name.lower(), value)
    return out


class Via:
    """One via-parm. Parameters are parsed on first access.

    protocol: "SIP/2.0" (name and version as written, LWS removed). transport: upper-cased.
    host: as written. port: int or None. params: names lower-cased, values as written
    (quoted strings keep their quotes), None for a parameter without value.
    """

    __slots__ = ("protocol", "transport", "host", "port", "_params_text", "_params", "raw")

    def __init__(
        self, protocol: str, transport: str, host: str, port: int | None,
        params_text: str = "", raw: str | None = None,
    ) -> None:
        self.protocol = protocol
        self.transport = transport
        self.host = host
        self.port = port
        self._params_text = params_text
        self._params: dict[str, str | None] | None = None
        self.raw = raw if raw is not None else self._render(_params(params_text))

    @classmethod
    def parse(cls, text: str) -> Via:
        """Raises ParseError(400)."""
        m = _VIA_FULLMATCH(text)
        if m is None:
            raise ParseError(400, "Malformed Via header field")
        name, version, transport, host, port_text, params_text = m.groups()
        if host[0] == "[":
            _check_ipv6(host, "Malformed Via header field")
        port = None
        if port_text is not None:
            port = bounded_int(port_text, 65535)
            if port is None:
                raise ParseError(400, "Malformed Via header field")
        via = cls.__new__(cls)
        via.protocol = f"{name}/{version}"
        via.transport = transport.upper()
        via.host = host
        via.port = port
        via._params_text = params_text
        via._params = None
        via.raw = text
        return via

    @property
    def params(self) -> Mapping[str, str | None]:
        if self._params is None:
            self._params = _params_dict(_params(self._params_text))
        return MappingProxyType(self._params)

    @property
    def branch(self) -> str | None:
        return self.params.get("branch")

    @property
    def received(self) -> str | None:
        return self.params.get("received")

    @property
    def rport(self) -> str | None:
        """None when absent, "" when present without a value (RFC 3581 request)."""
        params = self.params
        if "rport" not in params:
            return None
        return params["rport"] or ""

    @property
    def maddr(self) -> str | None:
        return self.params.get("maddr")

    @property
    def ttl(self) -> str | None:
        return self.params.get("ttl")

    @property
    def sent_by(self) -> str:
        """"host:port", or "host" when the Via names no port."""
        return self.host if self.port is None else f"{self.host}:{self.port}"

    def _render(self, pairs: list[tuple[str, str | None]]) -> str:
        head = f"{self.protocol}/{self.transport} {self.sent_by}"
        return head + "".join(f";{n}" if v is None else f";{n}={v}" for n, v in pairs)

    def with_params(self, changes: Mapping[str, str | None] | None = None, **kw: str | None) -> str:
        """This via-parm as header text with parameters set (added, or replaced in place).
        A value None writes a parameter without value: `with_params(received="192.0.2.1",
        rport="5060")`, `with_params({"rport": None})`."""
        updates = {k.lower(): (k, v) for k, v in {**(changes or {}), **kw}.items()}
        pairs = []
        for name, value in _params(self._params_text):
            low = name.lower()
            if low in updates:
                pairs.append((name, updates.pop(low)[1]))
            else:
                pairs.append((name, value))
        pairs.extend(updates.values())
        return self._render(pairs)

    def __str__(self) -> str:
        return self.raw

    def __repr__(self) -> str:
        return f"Via({self.raw!r})"

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Via):
            return NotImplemented
        return (
            self.protocol.upper() == other.protocol.upper()
            and self.transport == other.transport
            and self.host.lower() == other.host.lower()
            and self.port == other.port
            and dict(self.params) == dict(other.params)
        )

    __hash__ = None  # type: ignore[assignment]


def _check_ipv6(host: str, reason: str) -> None:
    try:
        ipaddress.IPv6Address(host[1:-1])
    except ValueError:
        raise ParseError(400, reason) from None


class NameAddr(NamedTuple):
    """A name-addr or addr-spec with header parameters (From, To, Contact, Route, ...).

    display: the display name (quoted-string unquoted and unescaped; a token sequence as
        written), or None. uri: the URI text (already checked against the URI grammar).
    params: header parameters, names lower-cased, values as written (a quoted value keeps its
        quotes), None for a parameter without value.
    """

    display: str | None
    uri: str
    params: Mapping[str, str | None] = MappingProxyType({})

    @property
    def tag(self) -> str | None:
        return self.params.get("tag")

    @property
    def parsed_uri(self) -> SipUri | AbsoluteUri:
        return parse_uri(self.uri)

    @property
    def aor(self) -> str:
        return parse_uri(self.uri).aor

    @classmethod
    def parse(cls, text: str, *, brackets_required: bool = False) -> NameAddr:
        """Raises ParseError(400). Memoised: To and From values recur."""
        if type(text) is not str:
            raise ParseError(400, "Malformed name-addr")
        if len(text) > _CACHED_LENGTH:
            return cls._parse(text, brackets_required)
        return _parse_name_addr(text, brackets_required)

    @classmethod
    def _parse(cls, text: str, brackets_required: bool) -> NameAddr:
        m = _NAME_ADDR_FULLMATCH(text)
        if m is None:
            raise ParseError(400, "Malformed name-addr")
        quoted, tokens, uri, bare, params_text = m.groups()
        if uri is None:
            if brackets_required:
                raise ParseError(400, "Malformed name-addr")
            uri = bare
        parse_uri(uri)  # raises ParseError(400); memoised, as parsed_uri reads it again
        if quoted is not None:
            display: str | None = quoted[1:-1]
            if "\\" in display:
                display = abnf.QUOTED_PAIR_RE.sub(r"\1", display)
        else:
            display = tokens
        if params_text:
            return cls(display, uri, MappingProxyType(_params_dict(_params(params_text))))
        return cls(display, uri, _NO_PARAMS)

    def __str__(self) -> str:
        if self.display is None:
            head = f"<{self.uri}>"
        else:
            escaped = self.display.replace("\\", "\\\\").replace('"', '\\"')
            head = f'"{escaped}" <{self.uri}>'
        return head + "".join(
            f";{n}" if v is None else f";{n}={v}" for n, v in self.params.items()
        )


_NAME_ADDR_FULLMATCH = abnf.NAME_ADDR_RE.fullmatch
_parse_name_addr = lru_cache(maxsize=4096)(NameAddr._parse)
_NO_PARAMS: Mapping[str, str | None] = MappingProxyType({})
# Longer values are parsed every time: the memo is for the To and From values that recur,
# and must not pin 4,096 hostile 8 KB strings.
_CACHED_LENGTH = 512


def check_name_addr(text: str, brackets_required: bool = False,
                    max_params: int | None = None) -> None:
    """Check a name-addr / addr-spec (and its URI) as NameAddr.parse does, without building
    it: what the parser does for every Contact, Route and Record-Route element, whose
    parameters nothing may ever read. ParseError(400) when malformed; ParseError(413) when
    the header parameters, or the URI's parameters or headers, number more than
    `max_params`."""
    m = _NAME_ADDR_FULLMATCH(text)
    if m is None:
        raise ParseError(400, "Malformed name-addr")
    uri = m.group("uri")
    if uri is None:
        if brackets_required:
            raise ParseError(400, "Malformed name-addr")
        uri = m.group("bare")
    check_uri(uri, max_params)
    if max_params is not None and too_many_params(m.group("params"), max_params):
        raise ParseError(413, "Too many header field parameters")


# --- Messages ---------------------------------------------------------------------------------

_MISSING = object()


class Message:
    """What requests and responses share: headers, body and the derived header values."""

    __slots__ = ("headers", "body", "version", "_cache", "_cache_version")

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
        self._cache: dict[str, Any] = {}
        self._cache_version = headers._version

    def _cached(self, key: str, compute: Callable[[], Any]) -> Any:
        if self._cache_version != self.headers._version:
            self._cache.clear()
            self._cache_version = self.headers._version
        value = self._cache.get(key, _MISSING)
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
        uri = self._cache.get("parsed-uri")  # the parser's, when it read a SIP URI
        if uri is None or self._cache_version != self.headers._version:
            uri = parse_uri(self.uri)
        return uri.aor

    def set_top_via(self, value: str) -> None:
        """Replace the first via-parm (e.g. with `request.top_via.with_params(received=...)`),
        keeping any others that share its header line."""
        lines = self.headers.lines("Via")
        if not lines:
            raise ValueError("request has no Via")
        first = replace_first_via_parm(lines[0], value)
        fields = self.headers._fields
        for i, (name, _) in enumerate(fields):
            if name == "Via":
                fields[i] = (name, first)
                break
        self.headers._changed()

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

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        return f"<Response {self.status} {self.reason} ({len(self.headers)} headers, {len(self.body)} bytes)>"
