"""SIP and SIPS URIs (RFC 3261 19.1) and other absolute URIs, and the address of record.

The address of record is the domain's decision (domain/resource.py: which spellings name one
resource); `SipUri.aor` and `AbsoluteUri.aor` hand it the parts this parser found.

`parse_uri` accepts what may appear as a Request-URI or inside a name-addr: a SIP/SIPS URI,
which must match the RFC 3261 grammar, or any other scheme, which only has to be an RFC 2396
absoluteURI (RFC 3261 19.1.1 leaves those to their own specifications). Everything here raises
`ParseError` (status 400, or 416 from `parse_sip_uri` for another scheme) and nothing else.

Parsed URIs are immutable and memoised: the same few AORs recur in every message.
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass, field
from functools import lru_cache
from types import MappingProxyType
from typing import Mapping
from urllib.parse import unquote

from domain.resource import (
    InvalidResource, canonical_user, other_address_of_record, sip_address_of_record,
)

from . import abnf
from .errors import ParseError

__all__ = [
    "SipUri", "AbsoluteUri", "parse_uri", "parse_sip_uri", "check_uri", "aor", "canonical_user",
]

_EMPTY: Mapping[str, str | None] = MappingProxyType({})

def _unescape(text: str) -> str:
    # Escapes may encode any octet; bytes that are not UTF-8 survive as surrogates.
    return unquote(text, encoding="utf-8", errors="surrogateescape") if "%" in text else text


@dataclass(frozen=True, slots=True)
class SipUri:
    """A sip: or sips: URI.

    scheme: "sip" or "sips" (lower-cased). user, password: as written (escaped), or None.
    host: lower-cased (hosts compare case-insensitively). port: int or None.
    params: uri-parameters, names lower-cased, names and values unescaped; None for a
        parameter without a value (";lr"). headers: (hname, hvalue) pairs, unescaped.
    raw: the URI exactly as written; str(uri) gives it back.
    """

    scheme: str
    user: str | None
    password: str | None
    host: str
    port: int | None
    params: Mapping[str, str | None] = field(compare=False)
    headers: tuple[tuple[str, str], ...] = field(compare=False)
    raw: str = field(compare=False)

    def __str__(self) -> str:
        return self.raw

    @property
    def unescaped_user(self) -> str | None:
        """The user part with every %XX escape decoded (may contain NUL, "@", ";")."""
        return None if self.user is None else _unescape(self.user)

    @property
    def transport(self) -> str | None:
        value = self.params.get("transport")
        return value.lower() if value else None

    @property
    def aor(self) -> str:
        """scheme:user@host - user case-sensitive with escapes of unreserved characters
        decoded, host lower-cased without a trailing dot; no password, port, parameters or
        headers (domain.resource.sip_address_of_record)."""
        return sip_address_of_record(self.scheme, self.user, self.host)


@dataclass(frozen=True, slots=True)
class AbsoluteUri:
    """A URI of any other scheme (tel:, pres:, im:, http:, ...), kept opaque.

    scheme: lower-cased. rest: everything after the first ":" as written.
    """

    scheme: str
    rest: str
    raw: str = field(compare=False)

    def __str__(self) -> str:
        return self.raw

    @property
    def aor(self) -> str:
        """scheme:rest lower-cased, without ";" parameters or "?" headers
        (domain.resource.other_address_of_record). ParseError(400) when nothing is left."""
        try:
            return other_address_of_record(self.scheme, self.rest)
        except InvalidResource:
            raise _bad("URI without an address of record") from None


def _bad(what: str = "Malformed URI") -> ParseError:
    return ParseError(400, what)


def parse_uri(text: str) -> SipUri | AbsoluteUri:
    """Parse a SIP/SIPS URI strictly, or any other absoluteURI loosely. Raises ParseError(400)."""
    if type(text) is not str:
        if not isinstance(text, str):
            raise _bad()
        text = str(text)
    if len(text) > _CACHED_LENGTH:
        return _parse_uri.__wrapped__(text)
    return _parse_uri(text)


# URIs longer than this are parsed every time rather than memoised: the cache holds the few
# AORs that recur, and must not hold 4,096 hostile 8 KB strings.
_CACHED_LENGTH = 512


def check_uri(text: str, max_params: int | None = None) -> None:
    """Check a URI as parse_uri does, without building it (the parser validates every Contact
    and Route this way; only the ones read later are built). ParseError(400) when malformed;
    ParseError(413) when it has more than `max_params` uri-parameters or headers."""
    prefix = _SCHEME_PREFIX_MATCH(text)
    if prefix is None:
        raise _bad()
    scheme = prefix.group(1).lower()
    if scheme != "sip" and scheme != "sips":
        if _ABSOLUTE_URI_FULLMATCH(text) is None:
            raise _bad()
        return
    m = _match_sip(text)
    if max_params is not None:
        if m.group("params").count(";") > max_params:
            raise ParseError(413, "Too many URI parameters")
        headers = m.group("headers")
        if headers is not None and headers.count("&") >= max_params:
            raise ParseError(413, "Too many URI headers")


_SCHEME_PREFIX_MATCH = abnf.SCHEME_PREFIX_RE.match
_ABSOLUTE_URI_FULLMATCH = abnf.ABSOLUTE_URI_RE.fullmatch
_SIP_URI_FULLMATCH = abnf.SIP_URI_RE.fullmatch


def _match_sip(text: str) -> re.Match[str]:
    """The SIP-URI grammar's match, with what a regular expression cannot check (an IPv6
    reference's address, a port's range) checked too. Raises ParseError(400)."""
    m = _SIP_URI_FULLMATCH(text)
    if m is None:
        raise _bad()
    host = m.group("host")
    if host[0] == "[":
        try:
            ipaddress.IPv6Address(host[1:-1])
        except ValueError:
            raise _bad() from None
    port_text = m.group("port")
    if port_text is not None and abnf.bounded_int(port_text, 65535) is None:
        raise _bad()
    return m


@lru_cache(maxsize=4096)
def _parse_uri(text: str) -> SipUri | AbsoluteUri:
    prefix = _SCHEME_PREFIX_MATCH(text)
    if prefix is None:
        raise _bad()
    scheme = prefix.group(1).lower()
    if scheme != "sip" and scheme != "sips":
        m = _ABSOLUTE_URI_FULLMATCH(text)
        if m is None:
            raise _bad()
        return AbsoluteUri(scheme, m.group("rest"), text)
    m = _match_sip(text)
    host = m.group("host").lower()
    port_text = m.group("port")
    port = None if port_text is None else abnf.bounded_int(port_text, 65535)
    params_text = m.group("params")
    params: Mapping[str, str | None] = _EMPTY
    if params_text:
        found: dict[str, str | None] = {}
        for pm in abnf.URI_PARAM_RE.finditer(params_text):
            name = _unescape(pm.group(1)).lower()
            if name not in found:
                value = pm.group(2)
                found[name] = None if value is None else _unescape(value)
        params = MappingProxyType(found)
    headers_text = m.group("headers")
    headers: tuple[tuple[str, str], ...] = ()
    if headers_text:
        pairs = []
        for item in headers_text.split("&"):
            hname, _, hvalue = item.partition("=")
            pairs.append((_unescape(hname), _unescape(hvalue)))
        headers = tuple(pairs)
    return SipUri(
        scheme, m.group("user"), m.group("password"), host, port, params, headers, text
    )


def parse_sip_uri(text: str) -> SipUri:
    """Parse a URI that must be sip: or sips:. Other schemes: ParseError(416); bad: 400."""
    uri = parse_uri(text)
    if isinstance(uri, SipUri):
        return uri
    raise ParseError(416, "Unsupported URI Scheme")


def aor(text: str) -> str:
    """The address of record of a URI (domain.resource decides; see SipUri.aor and
    AbsoluteUri.aor), for a URI this module's grammar accepts. Raises ParseError(400)."""
    return parse_uri(text).aor
