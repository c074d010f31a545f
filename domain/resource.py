"""The resource a PUBLISH is about: the address of record of its Request-URI.

RFC 3903 keys event state by the Request-URI's address of record. Like NkSIP we keep the
scheme, user and host and drop port, parameters and headers. Scheme and host are
case-insensitive (RFC 3261 section 19.1.4); the user part is not, so it stays as written,
except that %-escapes of unreserved characters are decoded so equivalent URIs match.
"""

from __future__ import annotations

import re

_UNRESERVED_ESCAPE = re.compile(r"%([0-9A-Fa-f]{2})")
_UNRESERVED = set("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-_.!~*'()")
_SCHEME_FULLMATCH = re.compile(r"[a-z][a-z0-9+.-]*").fullmatch


class InvalidResource(ValueError):
    """The string is not a URI whose address of record we can take."""


def _unescape_unreserved(text: str) -> str:
    def repl(match: re.Match[str]) -> str:
        char = chr(int(match.group(1), 16))
        return char if char in _UNRESERVED else "%" + match.group(1).upper()

    return _UNRESERVED_ESCAPE.sub(repl, text)


def address_of_record(uri: str) -> str:
    """`sip:Alice@Example.COM:5070;transport=tcp` -> `sip:Alice@example.com`."""
    text = uri.strip()
    if text.startswith("<") and text.endswith(">"):
        text = text[1:-1].strip()
    scheme, sep, rest = text.partition(":")
    if not sep or not scheme or not rest:
        raise InvalidResource(f"not a URI: {uri!r}")
    scheme = scheme.lower()
    if scheme != "sip" and scheme != "sips" and not _SCHEME_FULLMATCH(scheme):
        raise InvalidResource(f"bad URI scheme in {uri!r}")
    if scheme not in ("sip", "sips"):
        # tel:, pres:, im: ... have no host part to normalise; drop parameters only.
        body = rest.split(";", 1)[0].split("?", 1)[0]
        if not body:
            raise InvalidResource(f"empty URI: {uri!r}")
        return f"{scheme}:{body.lower() if scheme != 'tel' else body}"
    rest = rest.split("?", 1)[0]
    userinfo, at, hostport = rest.rpartition("@")
    if not at:
        userinfo, hostport = "", rest
    hostport = hostport.split(";", 1)[0]
    user = userinfo.split(":", 1)[0]  # drop any password
    if "%" in user:
        user = _unescape_unreserved(user)
    if hostport.startswith("["):
        end = hostport.find("]")
        if end < 0:
            raise InvalidResource(f"bad IPv6 reference in {uri!r}")
        host = hostport[: end + 1]
    else:
        host = hostport.split(":", 1)[0]
    host = host.lower().rstrip(".") if not host.startswith("[") else host.lower()
    if not host:
        raise InvalidResource(f"no host in {uri!r}")
    return f"{scheme}:{user}@{host}" if user else f"{scheme}:{host}"
