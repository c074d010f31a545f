"""Properties of the sans-I/O parser and stream framer over arbitrary and mutated input, beyond
the ones in test_sip_parser.py (any bytes -> message or ParseError), test_sip_framer.py (valid
messages survive any chunking) and test_rfc4475.py (mutated torture messages):

- the framer gives the same results whatever the chunking, for *any* bytes (broken streams,
  partial heads and bodies, keep-alives), and never holds more than the size limit;
- a message the framer delimits exactly, the datagram parser reads the same way;
- whatever the parser accepts survives serialize -> parse unchanged, and the server's answer
  to it is itself a message the parser accepts;
- every ParseError that carries `partial` can be answered, with the request's Vias in order.
"""

from __future__ import annotations

import os

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from sip_adapter.protocol.framer import StreamFramer
from sip_adapter.protocol.limits import Limits
from sip_adapter.protocol.messages import Request, Response
from sip_adapter.protocol.headers import count_elements, split_list
from sip_adapter.protocol.parser import ParseError, parse_message
from sip_adapter.protocol.responses import make_response, render_response
from sip_adapter.protocol.serializer import serialize
from tests.conformance_data import RFC4475

TORTURE = [p.read_bytes() for p in sorted(RFC4475.glob("*.dat"))]
PUBLISH = (
    b"PUBLISH sip:alice@example.com SIP/2.0\r\n"
    b"Via: SIP/2.0/TCP 192.0.2.1:5060;branch=z9hG4bKprop1;rport\r\n"
    b"Max-Forwards: 70\r\nFrom: <sip:alice@example.com>;tag=1\r\nTo: <sip:alice@example.com>\r\n"
    b"Call-ID: prop@example.com\r\nCSeq: 7 PUBLISH\r\nEvent: presence\r\nExpires: 60\r\n"
    b"Content-Type: application/pidf+xml\r\nContent-Length: 22\r\n\r\n"
    b"<presence entity='x'/>"
)
SEEDS = TORTURE + [PUBLISH]
SPECIALS = b'\r\n \t:;,<>"\\@%=/0\x00\xff'
# PROPERTY_EXAMPLES=20000 for a longer hunt
SETTINGS = settings(max_examples=int(os.environ.get("PROPERTY_EXAMPLES", "400")), deadline=None,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])


@st.composite
def mutated(draw, seeds=SEEDS):
    data = bytearray(draw(st.sampled_from(seeds)))
    for _ in range(draw(st.integers(0, 5))):
        i = draw(st.integers(0, len(data)))
        op = draw(st.integers(0, 4))
        if op == 0 and data:
            data[min(i, len(data) - 1)] = draw(st.sampled_from(SPECIALS))
        elif op == 1:
            data[i:i] = draw(st.binary(min_size=1, max_size=8))
        elif op == 2:
            del data[i:i + draw(st.integers(1, 40))]
        elif op == 3:
            data[i:i] = draw(st.sampled_from([b"\r\n", b"\r\n\r\n", b"Content-Length: 5\r\n",
                                              b"l: 0\r\n", b"\r\n ", b"Via: x\r\n"]))
        else:
            del data[i:]
    return bytes(data)


anything = mutated() | st.binary(max_size=600)
streams = st.lists(st.sampled_from([b"", b"\r\n", b"\r\n\r\n"]) | anything, min_size=1, max_size=5)


def chunked(data: bytes, cuts: list[int]) -> list[bytes]:
    points = sorted({c % (len(data) + 1) for c in cuts})
    out, last = [], 0
    for point in points:
        out.append(data[last:point])
        last = point
    out.append(data[last:])
    return out


def outcome(results: list) -> list:
    return [("error", r.status, r.reason, r.partial is not None) if isinstance(r, ParseError)
            else ("message", serialize(r)) for r in results]


def feed_all(framer: StreamFramer, chunks: list[bytes]) -> list:
    results = []
    for chunk in chunks:
        results += framer.feed(chunk)
    return results


# --- the framer ----------------------------------------------------------------------------------


@SETTINGS
@given(streams, st.lists(st.integers(min_value=0), max_size=20))
def test_framer_results_do_not_depend_on_chunking(pieces, cuts):
    stream = b"".join(pieces)
    whole = StreamFramer()
    expected = whole.feed(stream)
    split = StreamFramer()
    got = feed_all(split, chunked(stream, cuts))
    assert outcome(got) == outcome(expected)
    assert split.broken == whole.broken
    assert split.buffered == whole.buffered
    assert split.pings == whole.pings


@SETTINGS
@given(streams, st.lists(st.integers(min_value=0), max_size=20),
       st.integers(min_value=64, max_value=2000))
def test_framer_never_holds_more_than_the_message_limit(pieces, cuts, limit):
    limits = Limits(max_message_size=limit, max_body_size=limit, max_header_length=limit)
    framer = StreamFramer(limits)
    for chunk in chunked(b"".join(pieces), cuts):
        for result in framer.feed(chunk):
            assert isinstance(result, (Request, Response, ParseError))
        # what is held is at most one message in progress (plus the chunk that completed
        # neither it nor a header section)
        assert framer.buffered <= limit + len(chunk)
        if framer.broken:
            assert framer.buffered == 0 and framer.feed(b"more") == []


@SETTINGS
@given(mutated())
def test_a_message_the_framer_delimits_the_datagram_parser_reads_alike(data):
    framer = StreamFramer()
    results = framer.feed(data)
    if len(results) != 1 or framer.buffered or framer.broken:
        return
    [streamed] = results
    try:
        datagram = parse_message(data)
    except ParseError as error:
        assert isinstance(streamed, ParseError), f"stream accepted what a datagram refused: {error}"
        assert error.status == streamed.status
        return
    assert not isinstance(streamed, ParseError), \
        f"datagram accepted what a stream refused: {streamed}"
    assert serialize(streamed) == serialize(datagram)


# --- list splitting -----------------------------------------------------------------------------


def _split_list_reference(value: str) -> list[str]:
    """The former per-character split_list, kept as the specification of the regex one."""
    out, start, i, n = [], 0, 0, len(value)
    while i < n:
        c = value[i]
        if c == '"':
            i += 1
            while i < n:
                c = value[i]
                if c == "\\":
                    i += 2
                    continue
                if c == '"':
                    break
                i += 1
        elif c == "<":
            close = value.find(">", i)
            i = n if close < 0 else close
        elif c == ",":
            out.append(value[start:i].strip(" \t"))
            start = i + 1
        i += 1
    out.append(value[start:].strip(" \t"))
    return out


@settings(max_examples=3000, deadline=None)
@given(st.text(alphabet='ab ,\t"\\<>;=', max_size=40))
def test_split_list_matches_the_per_character_definition(value):
    elements = split_list(value)
    assert elements == _split_list_reference(value)
    assert count_elements(value) == len(elements)


@settings(max_examples=2000, deadline=None)
@given(st.lists(st.text(alphabet='a,"\\<>', max_size=30), min_size=1, max_size=4),
       st.integers(0, 12))
def test_the_parsers_bounded_element_count_agrees_with_split_list(values, maximum):
    from sip_adapter.protocol.parser import _too_many_elements
    total = sum(len(split_list(value)) for value in values)
    assert _too_many_elements(values, maximum) == (total > maximum)


# --- the parser ----------------------------------------------------------------------------------


@SETTINGS
@given(anything)
def test_accepted_messages_round_trip_and_their_answers_parse(data):
    try:
        message = parse_message(data)
    except ParseError:
        return
    again = parse_message(serialize(message))
    assert serialize(again) == serialize(message)
    if isinstance(message, Request):
        answer = parse_message(render_response(message, 400, to_tag="t", server="esc"))
        assert isinstance(answer, Response) and answer.status == 400
        assert answer.headers.lines("Via") == message.headers.lines("Via")
        assert answer.call_id == message.call_id and answer.cseq == message.cseq


@SETTINGS
@given(anything)
def test_every_error_with_a_partial_request_can_be_answered(data):
    try:
        parse_message(data)
    except ParseError as error:
        assert 400 <= error.status <= 599
        assert "\r" not in error.reason and "\n" not in error.reason
        partial = error.partial
        if partial is None:
            return
        assert isinstance(partial, Request) and partial.top_via is not None
        for answer in (render_response(partial, error.status, error.reason, to_tag="t"),
                       serialize(make_response(partial, error.status, error.reason,
                                               to_tag="t"))):
            assert answer.startswith(b"SIP/2.0 %d " % error.status)
            head = answer.split(b"\r\n\r\n", 1)[0].decode("utf-8", "surrogateescape")
            vias = [line[5:] for line in head.split("\r\n") if line.startswith("Via: ")]
            assert vias == partial.headers.lines("Via")
