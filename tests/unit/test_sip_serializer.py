"""serialize() and make_response() (RFC 3261 7, 8.2.6)."""

from __future__ import annotations


import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sip_adapter.protocol.headers import Headers
from sip_adapter.protocol.messages import Request, Response
from sip_adapter.protocol.parser import ParseError, parse_message
from sip_adapter.protocol.responses import REASON_PHRASES, make_response, reason_phrase
from sip_adapter.protocol.serializer import serialize
from tests.conformance_data import RFC4475

TORTURE = RFC4475

REQUEST = (
    b"PUBLISH sip:alice@example.com SIP/2.0\r\n"
    b"Via: SIP/2.0/UDP 192.0.2.10:5060;branch=z9hG4bK1;rport, SIP/2.0/UDP 192.0.2.99;branch=z9hG4bK0\r\n"
    b"v: SIP/2.0/UDP 192.0.2.98;branch=z9hG4bKz\r\n"
    b"Max-Forwards: 70\r\n"
    b'f: "Alice" <sip:alice@example.com>;tag=abc\r\n'
    b"t: <sip:alice@example.com>\r\n"
    b"i: cid@example.com\r\n"
    b"CSeq: 7 PUBLISH\r\n"
    b"Timestamp: 54.2\r\n"
    b"Event: presence\r\n"
    b"Content-Type: application/pidf+xml\r\n"
    b"l: 5\r\n\r\nhello"
)


def without_length(message):
    return [f for f in message.headers if f[0] != "Content-Length"]


# --- serialize -----------------------------------------------------------------------------------


def test_serialize_request():
    m = Request("PUBLISH", "sip:a@example.com",
                [("Via", "SIP/2.0/UDP h;branch=z9hG4bK1"), ("i", "x"), ("Content-Length", "999")],
                b"body")
    assert serialize(m) == (
        b"PUBLISH sip:a@example.com SIP/2.0\r\nVia: SIP/2.0/UDP h;branch=z9hG4bK1\r\n"
        b"Call-ID: x\r\nContent-Length: 4\r\n\r\nbody")


def test_serialize_response_appends_content_length():
    r = Response(200, "OK", [("Call-ID", "x")])
    assert serialize(r) == b"SIP/2.0 200 OK\r\nCall-ID: x\r\nContent-Length: 0\r\n\r\n"


def test_duplicate_content_length_lines_collapse_into_one_correct_value():
    r = Response(200, "OK", [("l", "1"), ("X-Y", "y"), ("Content-Length", "2")], b"abc")
    assert serialize(r) == b"SIP/2.0 200 OK\r\nContent-Length: 3\r\nX-Y: y\r\n\r\nabc"


def test_serialize_refuses_line_breaks():
    m = Request("PUBLISH", "sip:a@b", [("Subject", "ok")])
    m.uri = "sip:a@b SIP/2.0\r\nVia: x"
    with pytest.raises(ValueError):
        serialize(m)
    r = Response(200, "OK\r\nX: y")
    with pytest.raises(ValueError):
        serialize(r)
    with pytest.raises(TypeError):
        serialize("not a message")  # type: ignore[arg-type]


def test_round_trip_expands_compact_names_and_keeps_everything_else():
    m = parse_message(REQUEST)
    data = serialize(m)
    assert b"\r\nCall-ID: cid@example.com\r\n" in data and b"\r\ni:" not in data
    assert b"\r\nContent-Length: 5\r\n\r\nhello" in data
    again = parse_message(data)
    assert again == m
    assert serialize(again) == data


@pytest.mark.parametrize("path", sorted(TORTURE.glob("*.dat")), ids=lambda p: p.name)
def test_round_trip_torture_messages(path):
    try:
        m = parse_message(path.read_bytes())
    except ParseError:
        return
    again = parse_message(serialize(m))
    assert type(again) is type(m)
    assert without_length(again) == without_length(m)
    assert again.body == m.body
    if isinstance(m, Request):
        assert (again.method, again.uri) == (m.method, m.uri)
    else:
        assert (again.status, again.reason) == (m.status, m.reason)
    assert again.content_length == len(m.body)


_VALUE = st.text(alphabet=st.characters(blacklist_characters="\r\n", blacklist_categories=("Cs",)),
                 max_size=30).map(str.strip)


@settings(max_examples=300, deadline=None)
@given(st.lists(st.tuples(st.sampled_from(["Subject", "X-A", "Event", "User-Agent", "s", "k"]),
                          _VALUE), max_size=8),
       st.binary(max_size=200))
def test_round_trip_property(extra, body):
    headers = Headers([("Via", "SIP/2.0/UDP h;branch=z9hG4bK1"), ("From", "<sip:a@b>;tag=1"),
                       ("To", "<sip:a@b>"), ("Call-ID", "c"), ("CSeq", "1 PUBLISH")] + extra)
    m = Request("PUBLISH", "sip:a@b", headers, body)
    again = parse_message(serialize(m))
    assert without_length(again) == without_length(m) and again.body == body


# --- make_response (8.2.6) ---------------------------------------------------------------------


def test_make_response_copies_per_8_2_6():
    request = parse_message(REQUEST)
    response = make_response(request, 200, headers=[("SIP-ETag", "e1"), ("Expires", "60")],
                             to_tag="srv1")
    assert response.status == 200 and response.reason == "OK"
    assert list(response.headers) == [
        ("Via", "SIP/2.0/UDP 192.0.2.10:5060;branch=z9hG4bK1;rport, SIP/2.0/UDP 192.0.2.99;branch=z9hG4bK0"),
        ("Via", "SIP/2.0/UDP 192.0.2.98;branch=z9hG4bKz"),
        ("From", '"Alice" <sip:alice@example.com>;tag=abc'),
        ("To", "<sip:alice@example.com>;tag=srv1"),
        ("Call-ID", "cid@example.com"),
        ("CSeq", "7 PUBLISH"),
        ("SIP-ETag", "e1"),
        ("Expires", "60"),
        ("Server", "esc"),
        ("Content-Length", "0"),
    ]
    back = parse_message(serialize(response))
    assert [v.branch for v in back.vias] == ["z9hG4bK1", "z9hG4bK0", "z9hG4bKz"]
    assert back.to.tag == "srv1" and back.from_.tag == "abc" and back.cseq == (7, "PUBLISH")


def test_existing_to_tag_is_kept():
    request = parse_message(REQUEST.replace(b"t: <sip:alice@example.com>", b"t: <sip:alice@example.com>;tag=old"))
    assert make_response(request, 200, to_tag="new").to.tag == "old"


def test_100_trying_gets_no_tag_and_copies_timestamp():
    response = make_response(parse_message(REQUEST), 100, to_tag="x")
    assert response.reason == "Trying"
    assert response.to.tag is None and response.headers.get("Timestamp") == "54.2"
    assert "Timestamp" not in make_response(parse_message(REQUEST), 200, to_tag="x").headers


def test_body_reason_and_server():
    response = make_response(parse_message(REQUEST), 489, "Unknown Event Package",
                             headers=[("Allow-Events", "presence")], body=b"{}", to_tag="t",
                             server=None)
    assert response.reason == "Unknown Event Package" and response.body == b"{}"
    assert "Server" not in response.headers
    assert serialize(response).endswith(b"Content-Length: 2\r\n\r\n{}")


def test_to_without_brackets_gets_its_tag_as_a_header_parameter():
    request = parse_message(REQUEST.replace(b"t: <sip:alice@example.com>", b"t: sip:alice@example.com"))
    response = parse_message(serialize(make_response(request, 200, to_tag="z")))
    assert response.to.tag == "z" and response.to.uri == "sip:alice@example.com"


@pytest.mark.parametrize("code", [100, 200, 400, 401, 403, 404, 405, 407, 412, 413, 414, 415,
                                  416, 420, 423, 480, 481, 482, 483, 489, 500, 501, 503, 504, 505, 513])
def test_reason_phrases(code):
    assert REASON_PHRASES[code] and reason_phrase(code) == REASON_PHRASES[code]


def test_reason_phrase_fallbacks_and_bad_status():
    assert reason_phrase(299) == "OK" and reason_phrase(499) == "Client Error"
    assert REASON_PHRASES[412] == "Conditional Request Failed"
    assert REASON_PHRASES[423] == "Interval Too Brief" and REASON_PHRASES[489] == "Bad Event"
    with pytest.raises(ValueError):
        make_response(parse_message(REQUEST), 99, to_tag="t")


def test_response_to_a_partial_request():
    data = REQUEST.replace(b"CSeq: 7 PUBLISH", b"CSeq: 7 OPTIONS")
    with pytest.raises(ParseError) as caught:
        parse_message(data)
    error = caught.value
    response = make_response(error.partial, error.status, error.reason, to_tag="t")
    back = parse_message(serialize(response))
    assert back.status == 400 and back.cseq == (7, "OPTIONS") and back.to.tag == "t"
    assert len(back.vias) == 3
