"""SIP/SIPS URIs (RFC 3261 19.1), other absolute URIs, and the address of record."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sip_adapter.protocol.errors import ParseError
from sip_adapter.protocol.uri import AbsoluteUri, SipUri, aor, canonical_user, parse_sip_uri, parse_uri


def test_full_sip_uri():
    u = parse_uri("SIPS:Alice:secret@Atlanta.Example.COM:5061;Transport=TLS;lr;maddr=239.255.255.1?Subject=Hi%20there&Priority=urgent")
    assert isinstance(u, SipUri)
    assert (u.scheme, u.user, u.password, u.host, u.port) == (
        "sips", "Alice", "secret", "atlanta.example.com", 5061)
    assert dict(u.params) == {"transport": "TLS", "lr": None, "maddr": "239.255.255.1"}
    assert u.transport == "tls"
    assert u.headers == (("Subject", "Hi there"), ("Priority", "urgent"))
    assert str(u) == u.raw and u.raw.startswith("SIPS:Alice")


@pytest.mark.parametrize("text, user, host, port", [
    ("sip:example.com", None, "example.com", None),
    ("sip:192.0.2.4", None, "192.0.2.4", None),
    ("sip:alice@192.0.2.4:5080", "alice", "192.0.2.4", 5080),
    ("sip:[2001:db8::10]", None, "[2001:db8::10]", None),
    ("sip:bob@[2001:DB8::10]:5070", "bob", "[2001:db8::10]", 5070),
    ("sip:+1-212-555-1212:1234@gateway.com;user=phone", "+1-212-555-1212", "gateway.com", None),
    ("sip:alice;day=tuesday@atlanta.com", "alice;day=tuesday", "atlanta.com", None),
    ("sip:host.example.com.", None, "host.example.com.", None),
    ("sip:a-b--c.x1.example", None, "a-b--c.x1.example", None),
    ("sip:%61lice@atlanta.com", "%61lice", "atlanta.com", None),
])
def test_sip_uri_forms(text, user, host, port):
    u = parse_uri(text)
    assert (u.user, u.host, u.port) == (user, host, port)


@pytest.mark.parametrize("text", [
    "sip:", "sip:@host", "sip:alice@", "sip:alice@-host.com", "sip:alice@host-.com", "sip:alice@ho_st",
    "sip:alice@example.123", "sip:alice@host:", "sip:alice@host:65536", "sip:alice@host:abc",
    "sip:alice@[1::2::3]", "sip:alice@[::1", "sip:al ice@host", "sip:alice@host;", "sip:alice@host;a=",
    "sip:alice@host?", "sip:alice@host?a", "sip:%zz@host", "sip:a@b@c", "sip:alice:pa:ss@host",
    "sip:alice@host#frag", "sip://host", "sip:alice@host;p=<x>", "sip:alice@ho\u00e9st",
])
def test_invalid_sip_uris(text):
    with pytest.raises(ParseError) as caught:
        parse_uri(text)
    assert caught.value.status == 400


@pytest.mark.parametrize("text, scheme", [
    ("tel:+1-201-555-0123;phone-context=example.com", "tel"),
    ("pres:Alice@Example.com", "pres"), ("im:alice@example.com", "im"),
    ("http://www.example.com/a?b=c", "http"), ("urn:uuid:f81d4fae-7dec-11d0-a765-00a0c91e6bf6", "urn"),
    ("soap.beep://192.0.2.103:3002", "soap.beep"), ("x-y+z:opaque", "x-y+z"),
])
def test_other_schemes_need_only_be_absolute_uris(text, scheme):
    u = parse_uri(text)
    assert isinstance(u, AbsoluteUri) and u.scheme == scheme and str(u) == text
    with pytest.raises(ParseError) as caught:
        parse_sip_uri(text)
    assert caught.value.status == 416


@pytest.mark.parametrize("text", ["", ":x", "1x:y", "tel:", "tel:a b", "tel:<x>", "no-colon", "tel:\"x\""])
def test_invalid_absolute_uris(text):
    with pytest.raises(ParseError):
        parse_uri(text)


@pytest.mark.parametrize("text, expected", [
    ("sip:Alice@Atlanta.COM", "sip:Alice@atlanta.com"),
    ("sip:alice:pw@atlanta.com:5060;transport=tcp?h=v", "sip:alice@atlanta.com"),
    ("SIPS:alice@atlanta.com", "sips:alice@atlanta.com"),
    ("sip:atlanta.com;lr", "sip:atlanta.com"),
    ("sip:%61lice@atlanta.com", "sip:alice@atlanta.com"),
    ("sip:%75se%72@example.com", "sip:user@example.com"),
    ("sip:null-%00-null@example.com", "sip:null-%00-null@example.com"),
    # "/" and "?" are reserved: their escapes are not the characters (RFC 3261 19.1.4)
    ("sip:a%2fb%3f@example.com", "sip:a%2Fb%3F@example.com"),
    ("sip:a/b?@example.com", "sip:a/b?@example.com"),
    # "?" in the user part is the user's; URI headers start after the host
    ("sip:alice?x=1@example.org?h=v", "sip:alice?x=1@example.org"),
    ("sip:alice;day=tuesday@Atlanta.com;lr", "sip:alice;day=tuesday@atlanta.com"),
    # the fully qualified spelling of a host is the same host
    ("sip:alice@example.com.", "sip:alice@example.com"),
    ("sip:alice@[2001:DB8:0:0::1]", "sip:alice@[2001:db8::1]"),
    ("sip:a%40b@example.com", "sip:a%40b@example.com"),
    ("sip:a%c3%a9@example.com", "sip:a%C3%A9@example.com"),
    ("sip:[2001:DB8::1]:5060", "sip:[2001:db8::1]"),
    ("tel:+1-201-555-0123;phone-context=example.com", "tel:+1-201-555-0123"),
    ("pres:Alice@Example.com;x=1", "pres:alice@example.com"),
    ("IM:Alice@Example.com", "im:alice@example.com"),
])
def test_aor(text, expected):
    assert aor(text) == expected
    assert parse_uri(text).aor == expected


def test_canonical_user_is_idempotent():
    for user in ("%75se%72", "null-%00-null", "a%2Fb", "x%C3%A9", "plain"):
        once = canonical_user(user)
        assert canonical_user(once) == once


def test_unescaped_user_and_params():
    u = parse_uri("sip:sips%3Auser%40example.com@example.net;n%61me=v%61lue%25%34%31")
    assert u.unescaped_user == "sips:user@example.com"
    assert dict(u.params) == {"name": "value%41"}


def test_equality_ignores_raw_spelling_of_host_and_scheme():
    assert parse_uri("SIP:alice@EXAMPLE.com") == parse_uri("sip:alice@example.com")
    assert parse_uri("sip:alice@example.com") != parse_uri("sip:Alice@example.com")


def test_non_string_input_is_a_parse_error():
    for bad in (None, b"sip:a@b", 12):
        with pytest.raises(ParseError):
            parse_uri(bad)  # type: ignore[arg-type]
        with pytest.raises(ParseError):
            aor(bad)  # type: ignore[arg-type]


@settings(max_examples=2000, deadline=None)
@given(st.text(max_size=80) | st.from_regex(r"(sips?|tel|x):[a-zA-Z0-9@:;=%?&.\[\]+-]{0,40}", fullmatch=True))
def test_aor_raises_only_parse_error(text):
    try:
        result = aor(text)
    except ParseError as error:
        assert error.status == 400
    else:
        assert isinstance(result, str) and ":" in result
