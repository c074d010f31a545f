"""Structured header values: CSeq, Via and NameAddr (From, To, Contact, Route ...), each
parsed from its header text to its ABNF (abnf.py) once, where the grammar lives."""

from __future__ import annotations

import ipaddress
from functools import lru_cache
from types import MappingProxyType
from typing import Any, Callable, Mapping, NamedTuple

from . import abnf
from .abnf import bounded_int
from .errors import ParseError
from .headers import split_list
from .uri import AbsoluteUri, SipUri, check_uri, parse_uri

__all__ = ["CSeq", "Via", "NameAddr", "check_name_addr", "too_many_params",
           "replace_first_via_parm"]

# --- Structured header values -----------------------------------------------------------------


class CSeq(NamedTuple):
    number: int
    method: str

    def __str__(self) -> str:
        return f"{self.number} {self.method}"


_GENERIC_PARAMS_FINDALL = abnf.GENERIC_PARAM_RE.findall
_VIA_PARAMS_FINDALL = abnf.VIA_PARAM_RE.findall
_VIA_FULLMATCH = abnf.VIA_PARM_RE.fullmatch


def _params(text: str, findall: Callable[[str], list[Any]] = _GENERIC_PARAMS_FINDALL
            ) -> list[tuple[str, str | None]]:
    # gen-value is never empty, so findall's "" for an absent value means "no value"
    return [(name, value or None) for name, value in findall(text)]


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
        self.raw = raw if raw is not None else self._render(
            _params(params_text, _VIA_PARAMS_FINDALL))

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
            self._params = _params_dict(_params(self._params_text, _VIA_PARAMS_FINDALL))
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

    # Unhashable, as it defines __eq__; typeshed types object.__hash__ as a method only.
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
        display: str | None
        if quoted is not None:
            unquoted: str = quoted[1:-1]
            if "\\" in unquoted:
                unquoted = abnf.QUOTED_PAIR_RE.sub(r"\1", unquoted)
            display = unquoted
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


def replace_first_via_parm(line: str, value: str) -> str:
    """A Via header line with its first via-parm replaced by `value`, the others kept."""
    if "," not in line:
        return value
    elements = split_list(line)
    elements[0] = value
    return ", ".join(elements)
