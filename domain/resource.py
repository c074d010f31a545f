"""The resource a PUBLISH is about: the address of record of its Request-URI.

RFC 3903 keys event state by the Request-URI's address of record. Like NkSIP we keep the
scheme, user and host and drop the password, port, parameters and headers. This module is the
one place that decides when two URIs name the same resource; the SIP side (SipUri.aor) calls
`sip_address_of_record` on the parts its parser found, everything else calls
`address_of_record` on text. The rules (RFC 3261 section 19.1.4):

- scheme and host are case-insensitive: lower-cased;
- a host's trailing dot is dropped: `example.com.` is the fully qualified spelling of
  `example.com`, and a service that serves example.com serves it (the SIP side's domain
  check strips it the same way);
- an IPv6 reference is written in its canonical (RFC 5952, compressed, lower-case) form;
- the user part is case-sensitive and kept as written, except that %-escapes of unreserved
  characters are decoded (`%61lice` is `alice`) and every other escape is written with
  upper-case hex (`%2f` is `%2F`): RFC 3261 19.1.4 makes an escaped character equal to
  itself only outside the reserved set, so `a%2Fb` and `a/b` stay different users;
- the user part may hold `?`, `;`, `/`, `&`, `=`, ... (RFC 3261 `user-unreserved`): the
  userinfo ends at the `@`, and `?` starts URI headers only after the host, so
  `sip:alice?x=1@example.org` is the user `alice?x=1` at example.org (never the host
  `alice`).
- other schemes (tel:, pres:, im:, ...) have no host part to find: scheme ":" and the rest
  up to the first ";" or "?", lower-cased.

Normalising is idempotent: the address of record of an address of record is itself.
"""

from __future__ import annotations

import ipaddress
import re

__all__ = ["InvalidResource", "address_of_record", "sip_address_of_record",
           "other_address_of_record", "canonical_user"]


class InvalidResource(ValueError):
    """The string is not a URI whose address of record we can take."""


# --- RFC 3261 section 25.1, the parts of a SIP-URI ------------------------------------------
# (The domain layer does not import the SIP adapter, so the grammar of the few parts it needs
# is here; tests/unit/test_resource.py holds it to the adapter's parser on generated URIs.)

#   unreserved  =  alphanum / mark
#   mark        =  "-" / "_" / "." / "!" / "~" / "*" / "'" / "(" / ")"
#   escaped     =  "%" HEXDIG HEXDIG
_UNRESERVED = r"A-Za-z0-9\-_.!~*'()"
_ESCAPED = r"%[0-9A-Fa-f]{2}"
#   user             =  1*( unreserved / escaped / user-unreserved )
#   user-unreserved  =  "&" / "=" / "+" / "$" / "," / ";" / "?" / "/"
#   password         =  *( unreserved / escaped / "&" / "=" / "+" / "$" / "," )
_USER = rf"(?:[{_UNRESERVED}&=+$,;?/]++|{_ESCAPED})++"
_PASSWORD = rf"(?:[{_UNRESERVED}&=+$,]++|{_ESCAPED})*+"
#   host           =  hostname / IPv4address / IPv6reference
#   hostname       =  *( domainlabel "." ) toplabel [ "." ]
#   domainlabel    =  alphanum / alphanum *( alphanum / "-" ) alphanum
#   toplabel       =  ALPHA / ALPHA *( alphanum / "-" ) alphanum
#   IPv4address    =  1*3DIGIT "." 1*3DIGIT "." 1*3DIGIT "." 1*3DIGIT
#   IPv6reference  =  "[" IPv6address "]"   (checked with the ipaddress module)
_DOMAINLABEL = r"[A-Za-z0-9]++(?:-++[A-Za-z0-9]++)*+"
_TOPLABEL = r"[A-Za-z][A-Za-z0-9]*+(?:-++[A-Za-z0-9]++)*+"
_HOST = (rf"(?:\[[0-9A-Fa-f:.]++\]|(?:{_DOMAINLABEL}\.)*{_TOPLABEL}\.?"
         r"|[0-9]{1,3}\.[0-9]{1,3}\.[0-9]{1,3}\.[0-9]{1,3})")
#   uri-parameters  =  *( ";" uri-parameter)
#   uri-parameter   =  pname [ "=" pvalue ]   (all named parameters are other-params)
#   paramchar       =  param-unreserved / unreserved / escaped
#   param-unreserved  =  "[" / "]" / "/" / ":" / "&" / "+" / "$"
#   headers  =  "?" header *( "&" header ) ;  header  =  hname "=" hvalue
#   hnv-unreserved  =  "[" / "]" / "/" / "?" / ":" / "+" / "$"
_PARAMCHARS = rf"(?:[{_UNRESERVED}\[\]/:&+$]++|{_ESCAPED})++"
_HNVCHARS = rf"(?:[{_UNRESERVED}\[\]/?:+$]++|{_ESCAPED})"
_HEADER = rf"{_HNVCHARS}++={_HNVCHARS}*+"
#   SIP-URI  =  "sip:" [ userinfo ] hostport uri-parameters [ headers ]
#   userinfo =  ( user / telephone-subscriber ) [ ":" password ] "@"
#   hostport =  host [ ":" port ]
_SIP_URI_FULLMATCH = re.compile(
    r"(?P<scheme>[Ss][Ii][Pp][Ss]?):"
    rf"(?:(?P<user>{_USER})(?::{_PASSWORD})?@)?"
    rf"(?P<host>{_HOST})(?::[0-9]++)?"
    rf"(?:;{_PARAMCHARS}(?:={_PARAMCHARS})?)*+"
    rf"(?:\?{_HEADER}(?:&{_HEADER})*+)?"
).fullmatch
#   absoluteURI  =  scheme ":" ( hier-part / opaque-part ), every character a uric
#   scheme       =  ALPHA *( ALPHA / DIGIT / "+" / "-" / "." )
_ABSOLUTE_URI_FULLMATCH = re.compile(
    rf"(?P<scheme>[A-Za-z][A-Za-z0-9+\-.]*+):(?P<rest>(?:[{_UNRESERVED};/?:@&=+$,\[\]]++"
    rf"|{_ESCAPED})++)"
).fullmatch
_SCHEME_IS_SIP = re.compile(r"[Ss][Ii][Pp][Ss]?:").match

_ESCAPE_RE = re.compile(r"%([0-9A-Fa-f]{2})")
_UNRESERVED_CHARS = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789"
                              "-_.!~*'()")


def _escape(match: re.Match[str]) -> str:
    char = chr(int(match.group(1), 16))
    return char if char in _UNRESERVED_CHARS else "%" + match.group(1).upper()


def canonical_user(user: str) -> str:
    """A user part with its escapes normalised: those of unreserved characters decoded, the
    others in upper-case hex (`%61lice` -> `alice`, `a%2fb` -> `a%2Fb`, `null-%00-null` kept:
    RFC 4475 3.1.1.4, never shorten a user at an escaped NUL)."""
    return _ESCAPE_RE.sub(_escape, user) if "%" in user else user


def _canonical_host(host: str) -> str:
    if host[0] == "[":
        try:
            return f"[{ipaddress.IPv6Address(host[1:-1]).compressed}]"
        except ValueError:
            raise InvalidResource(f"bad IPv6 reference {host!r}") from None
    host = host.lower()
    return host[:-1] if host[-1] == "." else host


def sip_address_of_record(scheme: str, user: str | None, host: str) -> str:
    """`scheme:user@host` (or `scheme:host`) from the parts of a SIP or SIPS URI that the
    URI grammar already delimited (user as written, still escaped; host as written).
    Raises InvalidResource for an IPv6 reference that is not an address."""
    host = _canonical_host(host)
    if not user:
        return f"{scheme.lower()}:{host}"
    return f"{scheme.lower()}:{canonical_user(user)}@{host}"


def other_address_of_record(scheme: str, rest: str) -> str:
    """`scheme:rest` of a URI of another scheme (tel:, pres:, im:, ...), lower-cased, without
    its ";" parameters or "?" headers. Raises InvalidResource when nothing is left."""
    for separator in ";?":
        cut = rest.find(separator)
        if cut >= 0:
            rest = rest[:cut]
    if not rest:
        raise InvalidResource(f"empty {scheme}: URI")
    return f"{scheme.lower()}:{rest.lower()}"


def address_of_record(uri: str) -> str:
    """`sip:Alice@Example.COM:5070;transport=tcp` -> `sip:Alice@example.com`.

    Takes a URI as text (in a name-addr's brackets or not, blanks around it ignored).
    Raises InvalidResource, and nothing else, for anything that is not a URI."""
    if not isinstance(uri, str):
        raise InvalidResource(f"not a URI: {uri!r}")
    text = uri.strip(" \t")
    if text.startswith("<") and text.endswith(">"):
        text = text[1:-1].strip(" \t")
    if _SCHEME_IS_SIP(text):
        m = _SIP_URI_FULLMATCH(text)
        if m is None:
            raise InvalidResource(f"not a SIP URI: {_shown(uri)}")
        return sip_address_of_record(m.group("scheme"), m.group("user"), m.group("host"))
    m = _ABSOLUTE_URI_FULLMATCH(text)
    if m is None:
        raise InvalidResource(f"not a URI: {_shown(uri)}")
    return other_address_of_record(m.group("scheme"), m.group("rest"))


def _shown(text: str) -> str:
    return repr(text if len(text) <= 80 else text[:77] + "...")
