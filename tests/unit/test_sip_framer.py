"""StreamFramer: delimiting SIP messages on a byte stream (RFC 3261 7.5, 18.3; RFC 5626 3.5.1)."""

from __future__ import annotations


import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from sip_adapter.protocol.framer import StreamFramer
from sip_adapter.protocol.limits import Limits
from sip_adapter.protocol.messages import Request, Response
from sip_adapter.protocol.parser import ParseError, parse_message
from sip_adapter.protocol.serializer import serialize
from tests.conformance_data import RFC4475

BODY = b'<presence xmlns="urn:ietf:params:xml:ns:pidf" entity="sip:a@example.com"/>\r\n'


def publish(n: int, body: bytes = BODY, length: object = "auto", extra: str = "") -> bytes:
    cl = "" if length is None else f"Content-Length: {len(body) if length == 'auto' else length}\r\n"
    return (
        f"PUBLISH sip:a@example.com SIP/2.0\r\n"
        f"Via: SIP/2.0/TCP 192.0.2.1:5060;branch=z9hG4bK{n}\r\n"
        f"From: <sip:a@example.com>;tag={n}\r\nTo: <sip:a@example.com>\r\n"
        f"Call-ID: c{n}@example.com\r\nCSeq: {n} PUBLISH\r\nEvent: presence\r\n{extra}{cl}\r\n"
    ).encode() + body


def ok(results):
    assert all(isinstance(r, (Request, Response)) for r in results), results
    return results


def test_one_message():
    framer = StreamFramer()
    [m] = ok(framer.feed(publish(1)))
    assert m.cseq.number == 1 and m.body == BODY
    assert framer.buffered == 0 and not framer.broken


def test_pipelined_messages_in_one_read():
    framer = StreamFramer()
    results = ok(framer.feed(publish(1) + publish(2) + publish(3, body=b"")))
    assert [m.cseq.number for m in results] == [1, 2, 3]
    assert results[2].body == b""


def test_message_split_at_every_byte_boundary():
    data = publish(1) + publish(2)
    for cut in range(1, len(data)):
        framer = StreamFramer()
        results = ok(framer.feed(data[:cut]) + framer.feed(data[cut:]))
        assert [m.cseq.number for m in results] == [1, 2], cut


def test_message_fed_one_byte_at_a_time():
    framer = StreamFramer()
    results = []
    for byte in publish(7) + b"\r\n\r\n" + publish(8):
        results += framer.feed(bytes([byte]))
    assert [m.cseq.number for m in ok(results)] == [7, 8]
    assert framer.take_pings() == 1


def test_response_on_a_stream():
    data = (b"SIP/2.0 200 OK\r\nVia: SIP/2.0/TCP h;branch=z9hG4bK1\r\nFrom: <sip:a@b>;tag=1\r\n"
            b"To: <sip:a@b>;tag=2\r\nCall-ID: x\r\nCSeq: 1 PUBLISH\r\nContent-Length: 0\r\n\r\n")
    [r] = ok(StreamFramer().feed(data))
    assert r.status == 200


def test_body_containing_blank_lines_and_nul():
    body = b"\r\n\r\nINVITE sip:x SIP/2.0\r\n\r\n\x00"
    [m] = ok(StreamFramer().feed(publish(1, body=body)))
    assert m.body == body


# --- keep-alives -------------------------------------------------------------------------------


def test_crlf_keepalives_are_skipped_and_pings_counted():
    framer = StreamFramer()
    assert framer.feed(b"\r\n\r\n") == []
    assert framer.take_pings() == 1 and framer.take_pings() == 0
    assert framer.feed(b"\r\n") == []  # a single CRLF (pong) is not a ping
    assert framer.take_pings() == 0
    assert framer.feed(b"\r\n\r\n\r\n\r\n") == []
    assert framer.take_pings() == 2
    assert framer.pings == 3


def test_ping_split_across_reads():
    framer = StreamFramer()
    for piece in (b"\r", b"\n\r", b"\n"):
        assert framer.feed(piece) == []
    assert framer.take_pings() == 1


def test_crlf_between_and_before_messages():
    framer = StreamFramer()
    results = ok(framer.feed(b"\r\n" + publish(1) + b"\r\n\r\n" + publish(2) + b"\r\n"))
    assert [m.cseq.number for m in results] == [1, 2]
    assert framer.take_pings() == 1 and framer.buffered == 0


# --- errors ------------------------------------------------------------------------------------


def test_missing_content_length_breaks_the_stream():
    framer = StreamFramer()
    [error] = framer.feed(publish(1, length=None))
    assert isinstance(error, ParseError) and error.status == 400
    assert "Content-Length" in error.reason
    assert error.partial is not None and error.partial.cseq.number == 1
    assert framer.broken
    assert framer.feed(publish(2)) == []  # unusable from now on


@pytest.mark.parametrize("value", ["-5", "abc", "1, 2"])
def test_malformed_content_length_breaks_the_stream(value):
    framer = StreamFramer()
    [error] = framer.feed(publish(1, length=value))
    assert isinstance(error, ParseError) and error.status == 400 and framer.broken


def test_duplicate_content_length_breaks_the_stream():
    framer = StreamFramer()
    [error] = framer.feed(publish(1, extra="Content-Length: 3\r\n"))
    assert error.status == 400 and framer.broken


def test_body_too_large_is_413_and_breaks():
    framer = StreamFramer(Limits(max_body_size=10))
    [error] = framer.feed(publish(1))
    assert error.status == 413 and framer.broken


def test_header_section_too_large_is_413_and_breaks():
    framer = StreamFramer(Limits(max_message_size=1000))
    assert framer.feed(b"PUBLISH sip:a@example.com SIP/2.0\r\n" + b"X-Filler: y\r\n" * 50) == []
    [error] = framer.feed(b"X-Filler: y\r\n" * 40)
    assert error.status == 413 and framer.broken and framer.buffered == 0


def test_whole_message_too_large_is_413():
    framer = StreamFramer(Limits(max_message_size=250))
    [error] = framer.feed(publish(1))
    assert error.status == 413 and framer.broken


def test_error_in_a_delimited_message_does_not_break_the_stream():
    bad = publish(1).replace(b"CSeq: 1 PUBLISH", b"CSeq: 1 OPTIONS")
    framer = StreamFramer()
    results = framer.feed(bad + publish(2))
    assert isinstance(results[0], ParseError) and results[0].status == 400
    assert results[0].partial is not None
    assert isinstance(results[1], Request) and results[1].cseq.number == 2
    assert not framer.broken


def test_bad_start_line_with_content_length_is_skipped():
    bad = publish(1).replace(b"PUBLISH sip:a@example.com SIP/2.0", b"GARBAGE LINE")
    results = StreamFramer().feed(bad + publish(2))
    assert isinstance(results[0], ParseError) and isinstance(results[1], Request)


def test_incomplete_body_waits():
    framer = StreamFramer()
    data = publish(1)
    assert framer.feed(data[:-5]) == [] and framer.buffered == len(BODY) - 5
    [m] = framer.feed(data[-5:])
    assert m.body == BODY


def test_stream_matches_datagram_parsing():
    data = publish(3)
    [m] = StreamFramer().feed(data)
    assert m == parse_message(data)


# --- robustness ----------------------------------------------------------------------------------

TORTURE = sorted(RFC4475.glob("*.dat"))
STREAMABLE = [publish(i) for i in range(3)] + [
    serialize(parse_message(p.read_bytes()))
    for p in TORTURE
    if p.name in {"wsinv.dat", "intmeth.dat", "esc01.dat", "longreq.dat", "mpart01.dat",
                  "unreason.dat", "noreason.dat", "transports.dat", "bcast.dat"}
]


def _chunks(data: bytes, cuts: list[int]) -> list[bytes]:
    points = sorted({c % (len(data) + 1) for c in cuts})
    out, last = [], 0
    for p in points:
        out.append(data[last:p])
        last = p
    out.append(data[last:])
    return out


def _outcome(results):
    return [r.status if isinstance(r, ParseError) else serialize(r) for r in results]


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.sampled_from(STREAMABLE), min_size=1, max_size=4),
       st.lists(st.sampled_from([b"", b"\r\n", b"\r\n\r\n"]), min_size=4, max_size=4),
       st.lists(st.integers(min_value=0), max_size=12))
def test_any_chunking_gives_the_same_messages(messages, gaps, cuts):
    stream = b"".join(gap + m for gap, m in zip(gaps, messages))
    whole = StreamFramer()
    expected = whole.feed(stream)
    assert len(expected) == len(messages) and all(isinstance(r, (Request, Response)) for r in expected)
    chunked = StreamFramer()
    got = []
    for chunk in _chunks(stream, cuts):
        got += chunked.feed(chunk)
    assert _outcome(got) == _outcome(expected)
    assert chunked.pings == whole.pings


@settings(max_examples=500, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.sampled_from([p.read_bytes() for p in TORTURE]) | st.binary(max_size=300),
                min_size=1, max_size=4),
       st.lists(st.integers(min_value=0), max_size=10))
def test_feed_returns_only_messages_and_parse_errors(pieces, cuts):
    framer = StreamFramer()
    for chunk in _chunks(b"".join(pieces), cuts):
        for result in framer.feed(chunk):
            assert isinstance(result, (Request, Response, ParseError))
