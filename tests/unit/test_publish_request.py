"""PUBLISH message -> PublishRequest (sip_adapter/publish_request.py): what each header field
becomes, and which values are a BadPublish with the status to answer."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sip_adapter.protocol.parser import ParseError, parse_message
from sip_adapter.protocol.publish_request import BadPublish, to_publish_request
from sip_adapter.protocol.routing import Origin

ORIGIN = Origin("udp", ("192.0.2.7", 5060))
PIDF = b'<presence xmlns="urn:ietf:params:xml:ns:pidf" entity="sip:alice@example.com"/>'


def publish(*extra: str, uri: str = "sip:alice@example.com", body: bytes = PIDF):
    lines = [f"PUBLISH {uri} SIP/2.0", "Via: SIP/2.0/UDP 192.0.2.7;branch=z9hG4bK1",
             "From: <sip:alice@example.com>;tag=f", "To: <sip:alice@example.com>",
             "Call-ID: c1", "CSeq: 1 PUBLISH", "Event: presence",
             "Content-Type: application/pidf+xml", *extra, f"Content-Length: {len(body)}"]
    return parse_message(("\r\n".join(lines) + "\r\n\r\n").encode() + body)


def convert(*extra: str, **kwargs):
    return to_publish_request(publish(*extra, **kwargs), ORIGIN)


# --- Expires: read by abnf.delta_seconds, as Message.expires reads it ------------------------


@pytest.mark.parametrize("value, expected", [
    ("60", 60), ("0", 0), ("007", 7), ("0" * 5000 + "60", 60),
    ("4294967295", 2**32 - 1), ("4294967296", 2**32 - 1), ("9" * 5000, 2**32 - 1),
])
def test_expires(value, expected):
    assert convert(f"Expires: {value}").expires == expected


def test_expires_absent_is_none():
    assert convert().expires is None


@pytest.mark.parametrize("value", [
    "\u00b2",                  # superscript two: str.isdigit() is True, int() raises
    "\u0661\u0662\u0663",      # Arabic-Indic 123: int() reads 123
    "\uff11\uff12\uff13",      # fullwidth 123: int() reads 123
    "\U0001d7d8",              # mathematical double-struck zero
    "-1", "+5", "1.5", "6 0", "0x10", "1e3", "soon", "",
])
def test_an_expires_that_is_not_ascii_digits_is_400(value):
    with pytest.raises(BadPublish) as caught:
        convert(f"Expires: {value}")
    assert (caught.value.status, caught.value.reason) == (400, "Bad Expires")


def test_several_expires_are_400():
    with pytest.raises(BadPublish) as caught:
        convert("Expires: 60", "Expires: 60")
    assert caught.value.status == 400


@pytest.mark.parametrize("value", ["\u00b2", "\u0661\u0662\u0663", "9" * 5000 + "x"])
def test_the_service_answers_a_bad_expires_with_400(value):
    # (before: "²" raised ValueError inside the service and the request was never answered)
    from sip_adapter.protocol.service import SipService
    received = SipService().receive(publish(f"Expires: {value}"), ORIGIN, 0.0)
    assert received.pending is None and len(received.replies) == 1
    assert received.replies[0].data.startswith(b"SIP/2.0 400 Bad Expires\r\n")


@settings(max_examples=500, deadline=None)
@given(st.text(alphabet="0123456789 -+.x\u00b2\u0661\uff11\U0001d7d8", max_size=14)
       | st.integers(0, 2**40).map(str))
def test_the_publish_conversion_and_message_expires_agree(value):
    try:
        request = publish(f"Expires: {value}")
    except ParseError:
        return
    try:
        expected = request.expires
    except ParseError:
        expected = None
    try:
        got = to_publish_request(request, ORIGIN).expires
    except BadPublish as refused:
        assert refused.status == 400
        got = None
    assert got == expected
