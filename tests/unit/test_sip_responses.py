"""The hot-path response writer must produce what make_response + serialize produce."""

from __future__ import annotations


import pytest

from sip_adapter.protocol.parser import ParseError, parse_message
from sip_adapter.protocol.responses import make_response, render_response
from sip_adapter.protocol.serializer import serialize
from tests.conformance_data import RFC4475

TORTURE = RFC4475

PUBLISH = (b"PUBLISH sip:alice@example.com SIP/2.0\r\n"
           b"Via: SIP/2.0/UDP 192.0.2.1:5060;branch=z9hG4bK1;rport, SIP/2.0/TCP proxy.example.com\r\n"
           b"v: SIP/2.0/UDP 192.0.2.9;branch=z9hG4bK0\r\n"
           b"From: \"Alice\" <sip:alice@example.com>;tag=1\r\n"
           b"t: <sip:alice@example.com>\r\n"
           b"i: abc@host\r\nCSeq: 7 PUBLISH\r\nEvent: presence\r\nContent-Length: 0\r\n\r\n")


def both(request, status, headers=()):
    general = serialize(make_response(request, status, None, list(headers), to_tag="T",
                                      server="esc/test"))
    fast = render_response(request, status, None, list(headers), to_tag="T", server="esc/test")
    return general, fast


@pytest.mark.parametrize("status", [100, 200, 400, 412, 423, 489, 503])
def test_same_bytes_as_the_general_path(status):
    request = parse_message(PUBLISH)
    general, fast = both(request, status, [("SIP-ETag", "x.y"), ("Expires", "60")])
    assert fast == general
    assert b"To: <sip:alice@example.com>" + (b";tag=T" if status != 100 else b"") in fast


def test_existing_to_tag_is_kept():
    request = parse_message(PUBLISH.replace(b"t: <sip:alice@example.com>",
                                            b"t: <sip:alice@example.com>;tag=abc"))
    general, fast = both(request, 200)
    assert fast == general and b";tag=T" not in fast


def torture_requests():
    for path in sorted(TORTURE.glob("*.dat")):
        try:
            message = parse_message(path.read_bytes())
        except ParseError as error:
            message = error.partial
        if message is not None and hasattr(message, "method"):
            yield pytest.param(message, id=path.name)


@pytest.mark.parametrize("request_", list(torture_requests()))
def test_same_bytes_for_torture_requests(request_):
    general, fast = both(request_, 400)
    assert fast == general


def test_top_via_replaces_only_the_first_via_parm_and_leaves_the_request_alone():
    request = parse_message(PUBLISH)
    stamped = request.top_via.with_params(received="198.51.100.7", rport="40000")
    data = render_response(request, 200, to_tag="T", top_via=stamped)
    answer = parse_message(data)
    assert [v.raw for v in answer.vias] == [
        "SIP/2.0/UDP 192.0.2.1:5060;branch=z9hG4bK1;rport=40000;received=198.51.100.7",
        "SIP/2.0/TCP proxy.example.com",
        "SIP/2.0/UDP 192.0.2.9;branch=z9hG4bK0",
    ]
    # the request keeps what it arrived with (a retransmission is matched against it)
    assert request.top_via.raw == "SIP/2.0/UDP 192.0.2.1:5060;branch=z9hG4bK1;rport"
    assert render_response(request, 200, to_tag="T") == \
        render_response(request, 200, to_tag="T", top_via=None)
