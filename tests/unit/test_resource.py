"""The resource is the Request-URI's address of record: scheme, user, host."""

import ipaddress
import os

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from domain import InvalidResource, address_of_record
from domain.resource import canonical_user, sip_address_of_record
from sip_adapter.protocol.errors import ParseError
from sip_adapter.protocol.uri import parse_uri


@pytest.mark.parametrize("uri, aor", [
    ("sip:alice@example.com", "sip:alice@example.com"),
    # scheme and host are case-insensitive; the user part is not
    ("SIP:Alice@EXAMPLE.COM", "sip:Alice@example.com"),
    ("sips:Bob@Example.Org", "sips:Bob@example.org"),
    # port, URI parameters and headers are not part of the AOR
    ("sip:alice@example.com:5070", "sip:alice@example.com"),
    ("sip:alice@example.com;transport=tcp;lr", "sip:alice@example.com"),
    ("sip:alice@example.com:5060;transport=udp?subject=hi&priority=urgent",
     "sip:alice@example.com"),
    ("sip:alice@example.com?to=bob%40example.org", "sip:alice@example.com"),
    # a password is not part of the AOR
    ("sip:alice:secret@example.com", "sip:alice@example.com"),
    # name-addr brackets and surrounding blanks
    ("  <sip:alice@Example.com:5060>  ", "sip:alice@example.com"),
    # %-escapes of unreserved characters are decoded so equivalent URIs match
    ("sip:%61lice@example.com", "sip:alice@example.com"),
    # IP hosts, with and without a port
    ("sip:alice@192.0.2.1:5060", "sip:alice@192.0.2.1"),
    ("sip:alice@[2001:DB8::1]:5060;transport=tcp", "sip:alice@[2001:db8::1]"),
    # a fully qualified host with its trailing dot is the same host
    ("sip:alice@example.com.", "sip:alice@example.com"),
    # a URI without a user part names the host itself
    ("sip:Example.COM:5060;transport=tls", "sip:example.com"),
    # the user part may hold "?", ";", "/", "&", "=": the userinfo ends at the "@", and "?"
    # starts URI headers only after the host (this was stored as the resource "sip:alice")
    ("sip:alice?x=1@example.org", "sip:alice?x=1@example.org"),
    ("sip:alice?x=1@example.org?subject=hi", "sip:alice?x=1@example.org"),
    ("sip:alice;day=tuesday@atlanta.com;lr", "sip:alice;day=tuesday@atlanta.com"),
    ("sip:+1-212-555-1212;postd=pp22@gateway.com;user=phone",
     "sip:+1-212-555-1212;postd=pp22@gateway.com"),
    ("sip:a/b&c=d@example.com", "sip:a/b&c=d@example.com"),
    # escapes of reserved characters are not the characters (RFC 3261 19.1.4): kept, with
    # upper-case hex; escapes of unreserved characters are
    ("sip:a%2fb@example.com", "sip:a%2Fb@example.com"),
    ("sip:a%2Fb@example.com", "sip:a%2Fb@example.com"),
    ("sip:%75se%72%3f@example.com", "sip:user%3F@example.com"),
    ("sip:null-%00-null@example.com", "sip:null-%00-null@example.com"),
    ("sip:a%c3%a9@example.com", "sip:a%C3%A9@example.com"),
    # IPv6 references in their canonical form
    ("sip:alice@[2001:db8:0:0:0:0:0:1]", "sip:alice@[2001:db8::1]"),
    ("sips:[::FFFF:192.0.2.1]:5061", "sips:[::ffff:c000:201]"),
    # other schemes: lower-cased, without parameters
    ("tel:+1-201-555-0123;phone-context=example.com", "tel:+1-201-555-0123"),
    ("pres:Alice@Example.com;x=1", "pres:alice@example.com"),
])
def test_address_of_record(uri, aor):
    assert address_of_record(uri) == aor


def test_user_part_case_is_kept_so_different_users_stay_different():
    assert address_of_record("sip:Alice@example.com") != address_of_record("sip:alice@example.com")


def test_equivalent_spellings_name_one_resource():
    spellings = ["sip:alice@example.com", "sip:alice@EXAMPLE.com:5060",
                 "SIP:alice@example.com;transport=tcp", "<sip:alice@Example.Com>",
                 "sip:alice@example.com?subject=x"]
    assert {address_of_record(s) for s in spellings} == {"sip:alice@example.com"}


def test_address_of_record_is_idempotent():
    aor = address_of_record("SIP:Alice@EXAMPLE.com:5070;transport=tcp")
    assert address_of_record(aor) == aor


@pytest.mark.parametrize("uri", ["", "alice", "alice@example.com", "sip:", ":alice@x",
                                 "sip:alice@", "sip:alice@:5060", "1sip:alice@example.com",
                                 "sip:alice@[2001:db8::1", "sip:a@b@c", "sip:al ice@example.com",
                                 "sip:alice@exa_mple.com", "sip:alice@[1::2::3]",
                                 "sip:alice@[zz::1]", "sip:alice@example.com?", "tel:;x=1",
                                 "sip:%zz@example.com", "sip:" + "a" * 9000 + "@",
                                 None, b"sip:alice@example.com", 42])
def test_not_a_resource(uri):
    with pytest.raises(InvalidResource):
        address_of_record(uri)


def test_canonical_user_is_idempotent():
    for user in ("%75se%72", "null-%00-null", "a%2fB", "x%c3%a9", "plain", "%41%7e%2e"):
        once = canonical_user(user)
        assert canonical_user(once) == once


# --- one rule on both sides: the domain's text normaliser and the SIP parser's SipUri.aor ---

# PROPERTY_EXAMPLES=20000 for a longer hunt
EXAMPLES = int(os.environ.get("PROPERTY_EXAMPLES", "400"))

_UNRESERVED = "abcXYZ019-_.!~*'()"
_HEX = "0123456789abcdefABCDEF"
escapes = st.builds(lambda a, b: f"%{a}{b}", st.sampled_from(_HEX), st.sampled_from(_HEX))
# escapes of unreserved characters, in either case, which must decode
unreserved_escapes = st.sampled_from(_UNRESERVED).map(
    lambda c: f"%{ord(c):02x}").flatmap(lambda e: st.sampled_from([e, e.upper()]))


def pieces(chars: str):
    return st.lists(st.sampled_from(chars) | escapes | unreserved_escapes, min_size=1,
                    max_size=8).map("".join)


label = st.from_regex(r"[a-zA-Z0-9]([a-zA-Z0-9-]{0,6}[a-zA-Z0-9])?", fullmatch=True)
toplabel = st.from_regex(r"[a-zA-Z]([a-zA-Z0-9-]{0,6}[a-zA-Z0-9])?", fullmatch=True)
hostnames = st.builds(lambda labels, top, dot: ".".join(labels + [top]) + dot,
                      st.lists(label, max_size=3), toplabel, st.sampled_from(["", "."]))
ipv4 = st.ip_addresses(v=4).map(str)
ipv6 = st.ip_addresses(v=6).flatmap(lambda a: st.sampled_from(
    [f"[{a.compressed}]", f"[{a.exploded}]", f"[{a.exploded.upper()}]"]))
paramchars = _UNRESERVED + "[]/:&+$"
hnvchars = _UNRESERVED + "[]/?:+$"


@st.composite
def sip_uris(draw):
    scheme = draw(st.sampled_from(["sip", "SIP", "sips", "SiPs"]))
    userinfo = ""
    if draw(st.booleans()):
        userinfo = draw(pieces(_UNRESERVED + "&=+$,;?/"))
        if draw(st.booleans()):
            userinfo += ":" + draw(pieces(_UNRESERVED + "&=+$,"))
        userinfo += "@"
    host = draw(hostnames | ipv4 | ipv6)
    port = draw(st.sampled_from(["", ":5060", ":0", ":065535", ":1"]))
    params = "".join(f";{n}" + (f"={v}" if v else "") for n, v in draw(st.lists(
        st.tuples(pieces(paramchars), st.none() | pieces(paramchars)), max_size=3)))
    headers = draw(st.lists(st.tuples(pieces(hnvchars), pieces(hnvchars) | st.just("")),
                            max_size=3))
    tail = ("?" + "&".join(f"{n}={v}" for n, v in headers)) if headers else ""
    return f"{scheme}:{userinfo}{host}{port}{params}{tail}"


@settings(max_examples=EXAMPLES, deadline=None)
@given(sip_uris())
def test_the_domain_and_the_sip_parser_name_the_same_resource(uri):
    aor = address_of_record(uri)
    parsed = parse_uri(uri)
    assert parsed.aor == aor
    # the parts the SIP parser found, normalised by the domain, give the same key
    assert sip_address_of_record(parsed.scheme, parsed.user, parsed.host) == aor
    # normalising is idempotent, on either side
    assert address_of_record(aor) == aor
    assert parse_uri(aor).aor == aor
    # and the key is a URI of the same resource: scheme and host lower-case, no port,
    # parameters or headers, no escaped unreserved character
    scheme, _, rest = aor.partition(":")
    assert scheme in ("sip", "sips")
    host = parse_uri(aor).host
    assert host == host.lower() and not host.endswith(".") and parse_uri(aor).port is None
    assert not parse_uri(aor).params and not parse_uri(aor).headers
    if host.startswith("["):
        assert host[1:-1] == ipaddress.IPv6Address(host[1:-1]).compressed


SPECIALS = st.sampled_from(list("@:;?&=%<>[] \t\"#/.-") + ["%4", "%zz", "\u00e9", "\x00"])


@settings(max_examples=EXAMPLES, deadline=None)
@given(sip_uris(), st.lists(st.tuples(st.integers(0, 80), SPECIALS), min_size=1, max_size=3))
def test_on_mutated_uris_both_sides_accept_and_refuse_alike(uri, mutations):
    for at, text in mutations:
        at = min(at, len(uri))
        uri = uri[:at] + text + uri[at:]
    try:
        expected = parse_uri(uri).aor
    except ParseError:
        expected = None
    try:
        aor = address_of_record(uri)
    except InvalidResource:
        aor = None
    if uri.strip(" \t") != uri or uri.startswith("<"):
        return  # the domain also takes a name-addr's brackets and surrounding blanks
    assert aor == expected


@settings(max_examples=EXAMPLES, deadline=None)
@given(st.text(max_size=60) | st.from_regex(r"(sips?|tel|x):[a-zA-Z0-9@:;=%?&.\[\]+-]{0,40}",
                                           fullmatch=True))
def test_junk_raises_only_invalid_resource(text):
    try:
        aor = address_of_record(text)
    except InvalidResource:
        return
    assert address_of_record(aor) == aor
