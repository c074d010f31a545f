"""parse_message on datagrams: RFC 3261 sections 7, 18.3, 20 and 25."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sip_adapter.protocol.limits import DEFAULT_LIMITS, Limits
from sip_adapter.protocol.headers import Headers, split_list
from sip_adapter.protocol.values import NameAddr, Via
from sip_adapter.protocol.messages import Request, Response
from sip_adapter.protocol.parser import ParseError, parse_message
from sip_adapter.protocol.serializer import serialize

PIDF = (
    b'<?xml version="1.0" encoding="UTF-8"?>\r\n'
    b'<presence xmlns="urn:ietf:params:xml:ns:pidf" entity="sip:alice@example.com">\r\n'
    b'<tuple id="a1"><status><basic>open</basic></status></tuple></presence>\r\n'
)

BASE = [
    ("Via", "SIP/2.0/UDP 192.0.2.10:5060;branch=z9hG4bK776asdhds;rport"),
    ("Max-Forwards", "70"),
    ("From", '"Alice" <sip:alice@example.com>;tag=1928301774'),
    ("To", "<sip:alice@example.com>"),
    ("Call-ID", "a84b4c76e66710@pc33.example.com"),
    ("CSeq", "314159 PUBLISH"),
    ("Event", "presence"),
    ("Expires", "3600"),
    ("Content-Type", "application/pidf+xml"),
]


# Numbers in header fields are DIGIT = %x30-39 only. Python's str.isdigit() and regex \d also
# accept superscripts, Arabic-Indic and fullwidth digits, and int() reads "١٢٣" as 123 and
# refuses "²": none of them may get through, and none may raise anything but ParseError.
NOT_ASCII_DIGITS = ["\u00b2", "\u0661\u0662\u0663", "\uff11\uff12\uff13", "1\u00b2",
                    "\u00a060", "\U0001d7d8"]


def build(headers=None, *, start="PUBLISH sip:alice@example.com SIP/2.0", body=PIDF,
          length: object = "auto", drop=(), extra=()) -> bytes:
    """A PUBLISH as bytes; `length` "auto" writes a correct Content-Length, None none."""
    fields = [(n, v) for n, v in (headers if headers is not None else BASE) if n not in drop]
    fields += list(extra)
    if length == "auto":
        fields.append(("Content-Length", str(len(body))))
    elif length is not None:
        fields.append(("Content-Length", str(length)))
    head = start + "\r\n" + "".join(f"{n}: {v}\r\n" for n, v in fields) + "\r\n"
    return head.encode("utf-8", "surrogateescape") + body


def error_of(data: bytes, limits: Limits = DEFAULT_LIMITS) -> ParseError:
    with pytest.raises(ParseError) as caught:
        parse_message(data, limits)
    return caught.value


# --- a typical request ---------------------------------------------------------------------


def test_typical_publish():
    m = parse_message(build())
    assert isinstance(m, Request)
    assert (m.method, m.uri, m.version) == ("PUBLISH", "sip:alice@example.com", "SIP/2.0")
    assert m.body == PIDF
    assert m.call_id == "a84b4c76e66710@pc33.example.com"
    assert m.cseq == (314159, "PUBLISH") and m.cseq.number == 314159
    assert m.from_ == NameAddr("Alice", "sip:alice@example.com", {"tag": "1928301774"})
    assert m.from_.tag == "1928301774" and m.to.tag is None
    assert m.to.aor == "sip:alice@example.com"
    assert m.content_length == len(PIDF)
    assert m.content_type == "application/pidf+xml"
    assert m.expires == 3600 and m.max_forwards == 70
    assert m.parsed_uri.user == "alice" and m.aor == "sip:alice@example.com"
    assert m.headers.get("Event") == "presence"
    via = m.top_via
    assert (via.protocol, via.transport, via.host, via.port) == ("SIP/2.0", "UDP", "192.0.2.10", 5060)
    assert via.branch == "z9hG4bK776asdhds" and via.rport == "" and via.received is None
    assert via.sent_by == "192.0.2.10:5060"


def test_response():
    data = build(start="SIP/2.0 412 Conditional Request Failed", body=b"")
    r = parse_message(data)
    assert isinstance(r, Response)
    assert (r.status, r.reason) == (412, "Conditional Request Failed")
    assert r.cseq.method == "PUBLISH"


def test_response_without_reason_phrase_separator_is_tolerated():
    r = parse_message(build(start="SIP/2.0 200", body=b""))
    assert r.status == 200 and r.reason == ""


@pytest.mark.parametrize("start", [
    "SIP/2.0 20 OK", "SIP/2.0 2000 OK", "SIP/2.0 099 Low", "SIP/2.0 700 High", "SIP/2.0 abc OK",
    "SIP/2.0 200 O\x01K", "SIP/2 200 OK",
])
def test_bad_status_lines(start):
    assert error_of(build(start=start, body=b"")).status == 400


def test_leading_crlf_before_start_line_is_ignored():
    assert parse_message(b"\r\n\r\n" + build()).method == "PUBLISH"


@pytest.mark.parametrize("data", [b"", b"\r\n", b"\r\n\r\n", b"\r\n\r\n\r\n"])
def test_empty(data):
    assert error_of(data).status == 400


# --- start line ------------------------------------------------------------------------------


def test_version_other_than_2_0_is_505_with_partial():
    error = error_of(build(start="PUBLISH sip:alice@example.com SIP/3.0"))
    assert error.status == 505 and error.partial is not None
    assert error.partial.method == "PUBLISH"


def test_version_is_case_insensitive():
    assert parse_message(build(start="PUBLISH sip:alice@example.com sip/2.0")).version == "SIP/2.0"


@pytest.mark.parametrize("start", [
    "PUBLISH  sip:alice@example.com SIP/2.0",
    "PUBLISH sip:alice@example.com SIP/2.0 ",
    "PUBLISH\tsip:alice@example.com SIP/2.0",
    "PUBLISH sip:alice@example.com",
    "PUB<LISH sip:alice@example.com SIP/2.0",
    "PUBLISH sip:alice@example.com HTTP/1.1",
    "PUBLISH sip:alice@exa mple.com SIP/2.0",
])
def test_malformed_request_line_is_400_with_partial(start):
    error = error_of(build(start=start))
    assert error.status == 400 and "Request-Line" in error.reason
    assert error.partial is not None and error.partial.top_via.branch == "z9hG4bK776asdhds"


@pytest.mark.parametrize("uri", [
    "sip:", "sip:@example.com", "sip:alice@", "sip:alice@exa_mple.com", "sip:alice@example.com:99999",
    "sip:alice@[::zz]", "<sip:alice@example.com>", "alice@example.com", "sip:alice@example.com;=x",
    "sip:alice@example.com;lr=", "tel:", "1tel:+123",
])
def test_bad_request_uri_is_400(uri):
    error = error_of(build(start=f"PUBLISH {uri} SIP/2.0"))
    assert error.status == 400 and error.partial is not None


@pytest.mark.parametrize("uri", [
    "sip:example.com", "SIP:Alice@Example.COM", "sips:alice@example.com:5061;transport=tls",
    "sip:alice@[2001:db8::1]:5060", "sip:+1-555-0100;phone-context=example.com@example.com;user=phone",
    "tel:+1-201-555-0123", "pres:alice@example.com", "im:alice@example.com", "urn:service:sos",
])
def test_good_request_uris(uri):
    assert parse_message(build(start=f"PUBLISH {uri} SIP/2.0")).uri == uri


def test_request_uri_with_headers_is_rejected():
    error = error_of(build(start="PUBLISH sip:alice@example.com?Subject=x SIP/2.0"))
    assert error.status == 400


def test_request_uri_too_long_is_414():
    uri = "sip:" + "a" * 300 + "@example.com"
    error = error_of(build(start=f"PUBLISH {uri} SIP/2.0"), Limits(max_header_length=200))
    assert error.status == 414 and error.partial is not None


def test_non_sip_request_uri_answers_416_from_the_accessor():
    m = parse_message(build(start="PUBLISH pres:Alice@Example.com;x=y SIP/2.0"))
    with pytest.raises(ParseError) as caught:
        m.parsed_uri
    assert caught.value.status == 416
    assert m.aor == "pres:alice@example.com"


# --- header names, folding, lists -----------------------------------------------------------


COMPACT = {
    "i": "Call-ID", "m": "Contact", "e": "Content-Encoding", "l": "Content-Length",
    "c": "Content-Type", "f": "From", "s": "Subject", "k": "Supported", "t": "To", "v": "Via",
    "o": "Event", "u": "Allow-Events", "r": "Refer-To", "b": "Referred-By",
    "x": "Session-Expires", "y": "Identity", "a": "Accept-Contact", "j": "Reject-Contact",
    "d": "Request-Disposition",
}


@pytest.mark.parametrize("compact, full", sorted(COMPACT.items()))
def test_compact_forms_are_canonicalised(compact, full):
    h = Headers([(compact, "x")])
    assert list(h) == [(full, "x")]
    assert h.get(full) == "x" and h.get(full.upper()) == "x" and h.get(compact.upper()) == "x"


def test_compact_forms_in_a_message():
    fields = [("v", BASE[0][1]), ("f", BASE[2][1]), ("t", BASE[3][1]), ("i", BASE[4][1]),
              ("CSeq", BASE[5][1]), ("o", "presence"), ("c", "application/pidf+xml")]
    m = parse_message(build(fields, extra=[("k", "100rel"), ("u", "presence")]).replace(
        b"Content-Length:", b"l:"))
    assert [n for n, _ in m.headers] == [
        "Via", "From", "To", "Call-ID", "CSeq", "Event", "Content-Type", "Supported",
        "Allow-Events", "Content-Length"]
    assert m.call_id == BASE[4][1] and m.content_length == len(PIDF)


def test_header_names_are_case_insensitive_and_may_have_space_before_colon():
    data = build().replace(b"Call-ID:", b"cALL-iD  :").replace(b"Event:", b"EVENT\t:")
    m = parse_message(data)
    assert m.call_id == BASE[4][1] and m.headers.get("event") == "presence"
    assert ("Call-ID", BASE[4][1]) in list(m.headers)


def test_unknown_header_names_keep_their_spelling():
    m = parse_message(build(extra=[("X-Custom-Thing", "v")]))
    assert ("X-Custom-Thing", "v") in list(m.headers)
    assert m.headers.get("x-custom-thing") == "v"


@pytest.mark.parametrize("line", [b"Bad Name: x", b"NoColon", b": empty name", b"Bad<Name>: x"])
def test_malformed_header_lines(line):
    data = build().replace(b"Event: presence", line)
    assert error_of(data).status == 400


def test_folding_continuation_lines():
    data = build().replace(
        b"Event: presence", b"Event:\r\n presence\r\nSubject: first\r\n\t second  \r\n   third"
    ).replace(b"From: ", b"From:\r\n  ")
    m = parse_message(data)
    assert m.headers.get("Event") == "presence"
    assert m.headers.get("Subject") == "first second third"
    assert m.from_.tag == "1928301774"


def test_continuation_before_first_header_is_rejected():
    data = build().replace(b"SIP/2.0\r\nVia", b"SIP/2.0\r\n Via")
    assert error_of(data).status == 400


@pytest.mark.parametrize("bad", [b"Event: pres\nence", b"Event: pres\rence", b"Event: presence\n"])
def test_bare_cr_or_lf_is_rejected(bad):
    assert error_of(build().replace(b"Event: presence", bad)).status == 400


def test_repeated_headers_and_comma_lists():
    m = parse_message(build(extra=[
        ("Via", "SIP/2.0/TCP proxy1.example.com;branch=z9hG4bKa, SIP/2.0/TCP proxy2.example.com;branch=z9hG4bKb"),
        ("Supported", "100rel, timer"), ("Supported", "path"),
        ("Contact", '"Doe, John" <sip:john@example.com;a=b>;q=0.5, <sip:j2@example.com>'),
        ("SIP-If-Match", "etag1"), ("SIP-If-Match", "etag2"),
        ("Allow", ""),
        ("Authorization", 'Digest username="a", realm="b"'),
    ]))
    assert [v.host for v in m.vias] == ["192.0.2.10", "proxy1.example.com", "proxy2.example.com"]
    assert m.headers.count_lines("Via") == 2
    assert m.headers.get_all("Supported") == ["100rel", "timer", "path"]
    assert m.headers.get("Supported") == "100rel"
    contacts = m.headers.get_all("Contact")
    assert contacts == ['"Doe, John" <sip:john@example.com;a=b>;q=0.5', "<sip:j2@example.com>"]
    assert NameAddr.parse(contacts[0]).display == "Doe, John"
    assert m.headers.get_all("SIP-If-Match") == ["etag1", "etag2"]
    assert m.headers.count_lines("SIP-If-Match") == 2
    assert m.headers.get_all("Allow") == [] and m.headers.count_lines("Allow") == 1
    assert m.headers.get_all("Authorization") == ['Digest username="a", realm="b"']


def test_split_list_respects_quotes_escapes_and_angle_brackets():
    assert split_list('"a,\\"b,c" <sip:x>, <sip:y?h=a,b>;p="1,2" , z') == [
        '"a,\\"b,c" <sip:x>', '<sip:y?h=a,b>;p="1,2"', "z"]
    assert split_list("a,,b,") == ["a", "", "b", ""]
    assert split_list('"unterminated, quote') == ['"unterminated, quote']
    assert split_list("<unterminated, bracket") == ["<unterminated, bracket"]


# --- name-addr, quoted strings, params ------------------------------------------------------


@pytest.mark.parametrize("value, display, uri, params", [
    ("<sip:a@b.com>", None, "sip:a@b.com", {}),
    ("sip:a@b.com;tag=x", None, "sip:a@b.com", {"tag": "x"}),
    ('"A \\"B\\" \\\\ C" <sip:a@b.com>', 'A "B" \\ C', "sip:a@b.com", {}),
    ('""<sip:a@b.com>', "", "sip:a@b.com", {}),
    ("Bob  Smith <sip:a@b.com> ;TAG = 1 ; lr ; x=\"q ; v\"", "Bob  Smith", "sip:a@b.com",
     {"tag": "1", "lr": None, "x": '"q ; v"'}),
    ("<tel:+1-555>;p=[2001:db8::1]", None, "tel:+1-555", {"p": "[2001:db8::1]"}),
    ('"Ünïcode" <sip:a@b.com>', "Ünïcode", "sip:a@b.com", {}),
])
def test_name_addr(value, display, uri, params):
    na = NameAddr.parse(value)
    assert (na.display, na.uri, dict(na.params)) == (display, uri, params)


@pytest.mark.parametrize("value", [
    '"unterminated <sip:a@b.com>', "< sip:a@b.com>", "<sip:a@b.com >", "Bell, A <sip:a@b.com>",
    "sip:a@b.com?h=v", "<sip:a@b.com>;", "<sip:a@b.com>;;tag=1", "<sip:a@b.com>;tag=", "",
    "<>", "<notauri>", "<sip:a@b.com>x", '"a" "b" <sip:a@b.com>', "sip:a@b.com, sip:c@d.com",
])
def test_malformed_name_addr(value):
    with pytest.raises(ParseError):
        NameAddr.parse(value)


@pytest.mark.parametrize("header", ["From", "To", "Contact"])
def test_malformed_name_addr_headers_are_400(header):
    fields = [(n, "Bad, Name <sip:a@b.com>" if n == header else v) for n, v in BASE]
    if header == "Contact":
        fields.append(("Contact", "<sip:ok@b.com>, sip:x@b.com?Route=%3Csip:y%3E"))
    error = error_of(build(fields))
    assert error.status == 400 and header in error.reason and error.partial is not None


def test_route_requires_angle_brackets():
    assert parse_message(build(extra=[("Route", "<sip:p1.example.com;lr>, <sip:p2.example.com;lr>")]))
    assert error_of(build(extra=[("Route", "sip:p1.example.com;lr")])).status == 400


def test_contact_star():
    m = parse_message(build(extra=[("Contact", "*")]))
    assert m.headers.get_all("Contact") == ["*"]


# --- mandatory and single-valued headers -----------------------------------------------------


@pytest.mark.parametrize("name", ["From", "To", "Call-ID", "CSeq"])
def test_missing_mandatory_header(name):
    error = error_of(build(drop=(name,)))
    assert error.status == 400 and name in error.reason
    assert error.partial is not None and error.partial.call_id == (None if name == "Call-ID" else BASE[4][1])


def test_missing_via_is_400_without_partial():
    error = error_of(build(drop=("Via",)))
    assert error.status == 400 and "Via" in error.reason and error.partial is None


def test_max_forwards_is_optional():
    assert parse_message(build(drop=("Max-Forwards",))).max_forwards is None


@pytest.mark.parametrize("name, value", [
    ("Call-ID", "other@example.com"), ("From", "<sip:bob@example.com>;tag=2"),
    ("To", "<sip:bob@example.com>"), ("CSeq", "1 PUBLISH"), ("Max-Forwards", "10"),
    ("Content-Type", "text/plain"),
])
def test_single_value_headers_may_not_repeat(name, value):
    error = error_of(build(extra=[(name, value)]))
    assert error.status == 400 and name in error.reason


def test_multiple_content_length():
    error = error_of(build(extra=[("Content-Length", str(len(PIDF)))]))
    assert error.status == 400 and "Content-Length" in error.reason


@pytest.mark.parametrize("value, reason", [
    ("4294967296 PUBLISH", "range"), ("PUBLISH", "CSeq"), ("-1 PUBLISH", "CSeq"),
    ("1PUBLISH", "CSeq"), ("1 PUBLISH extra", "CSeq"), ("9" * 5000 + " PUBLISH", "range"),
])
def test_bad_cseq(value, reason):
    fields = [(n, value if n == "CSeq" else v) for n, v in BASE]
    error = error_of(build(fields))
    assert error.status == 400 and reason in error.reason


def test_cseq_limits():
    fields = [(n, "4294967295 PUBLISH" if n == "CSeq" else v) for n, v in BASE]
    assert parse_message(build(fields)).cseq.number == 2**32 - 1
    fields = [(n, "0 PUBLISH" if n == "CSeq" else v) for n, v in BASE]
    assert parse_message(build(fields)).cseq.number == 0


def test_cseq_method_mismatch():
    assert error_of(build(start="OPTIONS sip:alice@example.com SIP/2.0")).status == 400
    error = error_of(build(start="FROBNICATE sip:alice@example.com SIP/2.0"))
    assert error.status == 501 and error.partial.method == "FROBNICATE"


def test_cseq_method_is_case_sensitive():
    fields = [(n, "1 publish" if n == "CSeq" else v) for n, v in BASE]
    assert error_of(build(fields)).status == 400


@pytest.mark.parametrize("name, value", [
    ("Call-ID", "has space@example.com"), ("Call-ID", "a@b@c"), ("Call-ID", ""),
    ("Max-Forwards", "256"), ("Max-Forwards", "seventy"), ("Max-Forwards", "-1"),
    ("Content-Type", "application"), ("Content-Type", "application/pidf+xml;charset"),
    ("Via", "SIP/2.0/UDP"), ("Via", "SIP/2.0/UDP host;branch=a b"), ("Via", "SIP/2.0 UDP host"),
    ("Via", "SIP/2.0/UDP host:70000"), ("Via", "SIP/2.0/UDP host, "), ("Via", "SIP/2.0/UDP [zz::1]"),
])
def test_malformed_checked_headers(name, value):
    fields = [(n, value if n == name else v) for n, v in BASE]
    assert error_of(build(fields)).status == 400


def test_date_must_be_rfc1123_gmt():
    assert parse_message(build(extra=[("Date", "Sat, 13 Nov 2010 23:29:00 GMT")]))
    assert error_of(build(extra=[("Date", "Sat, 13 Nov 2010 23:29:00 EST")])).status == 400


# --- Content-Length and the body on a datagram -----------------------------------------------


def test_body_shorter_than_content_length_is_400():
    error = error_of(build(length=len(PIDF) + 1))
    assert error.status == 400 and "Content-Length" in error.reason and error.partial is not None


def test_octets_beyond_content_length_are_discarded():
    m = parse_message(build(length=10))
    assert m.body == PIDF[:10] and m.content_length == 10


def test_without_content_length_the_rest_of_the_datagram_is_the_body():
    m = parse_message(build(length=None))
    assert m.body == PIDF and m.content_length is None


@pytest.mark.parametrize("value", ["-1", "abc", "1.5", "0x10", "", "1 2", "+5",
                                   *NOT_ASCII_DIGITS])
def test_malformed_content_length_is_400(value):
    error = error_of(build(length=value))
    assert error.status == 400 and "Content-Length" in error.reason


@pytest.mark.parametrize("value", ["70000", "9" * 5000])
def test_content_length_above_max_body_size_is_413(value):
    assert error_of(build(length=value)).status == 413


def test_leading_zeros_in_content_length():
    assert parse_message(build(length="000" + str(len(PIDF)))).body == PIDF


# --- limits -----------------------------------------------------------------------------------


def test_message_too_large():
    assert error_of(build(body=b"x" * 70000, length=None)).status == 413
    small = Limits(max_message_size=300)
    assert error_of(build(), small).status == 413


def test_body_too_large_without_content_length():
    assert error_of(build(body=b"x" * 200, length=None), Limits(max_body_size=100)).status == 413


def test_too_many_headers():
    extra = [(f"X-H{i}", "v") for i in range(100)]
    assert error_of(build(extra=extra)).status == 413
    assert parse_message(build(extra=extra[:50]))


def test_header_too_long():
    assert error_of(build(extra=[("X-Long", "v" * 9000)])).status == 413
    assert parse_message(build(extra=[("X-Long", "v" * 8000)]))


def test_many_short_header_lines_are_413_and_still_answerable():
    extra = [("X", "y")] * 10_000 + [("Subject", "kept out of the partial")]
    error = error_of(build(extra=extra, body=b"", length=None))
    assert error.status == 413 and error.partial is not None
    partial = error.partial
    assert partial.top_via.branch == "z9hG4bK776asdhds"
    assert (partial.call_id, partial.cseq.number) == (BASE[4][1], 314159)
    assert partial.from_.tag == "1928301774" and partial.to.tag is None
    # the partial request holds what a response copies, no more
    assert {name for name, _ in partial.headers} == {"Via", "From", "To", "Call-ID", "CSeq"}


def test_folded_and_compact_fields_in_a_too_large_section_are_read_for_the_answer():
    fields = [("v", "SIP/2.0/UDP a.example.com;branch=z9hG4bKa"),
              ("Via", "SIP/2.0/UDP\r\n b.example.com;branch=z9hG4bKb"),
              ("f", "<sip:alice@example.com>;tag=1"), ("t", "<sip:bob@example.com>"),
              ("i", "cid@x"), ("CSeq", "1 PUBLISH")]
    data = build(fields, body=b"", length=None, extra=[("X-Long", "v" * 9000)])
    error = error_of(data)
    assert error.status == 413 and error.partial is not None
    assert [via.host for via in error.partial.vias] == ["a.example.com", "b.example.com"]
    assert error.partial.call_id == "cid@x"


# --- limits on list elements and parameters (cost bounds, tests/unit/test_parse_cost.py) ------


def vias(count: int) -> list[tuple[str, str]]:
    return [("Via", ", ".join(f"SIP/2.0/UDP h{i}.example.com;branch=z9hG4bK{i}"
                              for i in range(count)))]


def test_list_element_defaults_leave_room_for_real_traffic():
    assert DEFAULT_LIMITS.max_list_elements >= 71  # Max-Forwards 70: the UAC and 70 proxies
    assert DEFAULT_LIMITS.max_params >= 32


def test_vias_up_to_the_limit_are_accepted():
    limit = DEFAULT_LIMITS.max_list_elements
    m = parse_message(build(vias(limit - 1) + BASE))
    assert len(m.vias) == limit and m.vias[0].host == "h0.example.com"


@pytest.mark.parametrize("split_over_lines", [False, True])
def test_too_many_vias_is_413_and_not_answered(split_over_lines):
    limit = DEFAULT_LIMITS.max_list_elements
    fields = vias(limit) if not split_over_lines else vias(limit // 2) + vias(limit - limit // 2)
    error = error_of(build(fields + BASE))  # + BASE's Via: one too many
    assert error.status == 413 and "Via" in error.reason
    # answering would mean echoing every Via to a possibly forged source: not done
    assert error.partial is None


def test_commas_inside_quotes_and_angle_brackets_do_not_count_as_elements():
    quoted = '"a' + "," * 500 + '" <sip:a' + ",b" * 200 + '@example.com>;p="' + "," * 300 + '"'
    m = parse_message(build(extra=[("Contact", quoted)]))
    assert m.headers.get_all("Contact") == [quoted]


@pytest.mark.parametrize("name, element", [
    ("Contact", "<sip:c{i}@example.com>"),
    ("Route", "<sip:p{i}.example.com;lr>"),
    ("Require", "ext{i}"),
    ("Supported", "x"),
    ("Allow", ""),
])
def test_too_many_list_elements_is_413_with_partial(name, element):
    limit = DEFAULT_LIMITS.max_list_elements
    values = [element.format(i=i) for i in range(limit)]
    # at the limit: accepted (Require and Supported are read by the server, not the parser)
    parse_message(build(extra=[(name, ", ".join(values))]))
    # one more, on a line of its own: refused, and answerable
    error = error_of(build(extra=[(name, ", ".join(values)), (name, element.format(i=0))]))
    assert error.status == 413 and name in error.reason
    assert error.partial is not None and error.partial.top_via.branch == "z9hG4bK776asdhds"


def test_list_element_limit_is_configurable():
    limits = Limits(max_list_elements=3)
    parse_message(build(extra=[("Supported", "a, b, c")]), limits)
    assert error_of(build(extra=[("Supported", "a, b"), ("Supported", "c, d")]), limits).status \
        == 413
    assert error_of(build(vias(3) + BASE), limits).status == 413


def test_via_params_up_to_the_limit_are_accepted():
    limit = DEFAULT_LIMITS.max_params
    via = "SIP/2.0/UDP h.example.com;branch=z9hG4bK1" + "".join(f";p{i}" for i in range(limit - 1))
    m = parse_message(build([("Via", via)] + BASE[1:]))
    assert len(m.top_via.params) == limit


def test_too_many_via_params_is_413_without_partial():
    limit = DEFAULT_LIMITS.max_params
    via = "SIP/2.0/UDP h.example.com;branch=z9hG4bK1" + ";p" * limit
    error = error_of(build([("Via", via)] + BASE[1:]))
    assert error.status == 413 and "Via" in error.reason and error.partial is None
    # semicolons inside a quoted value are not parameters
    quoted = "SIP/2.0/UDP h.example.com;branch=z9hG4bK1;q=\"" + ";" * 200 + "\""
    assert parse_message(build([("Via", quoted)] + BASE[1:])).top_via.params["q"]


@pytest.mark.parametrize("name, value", [
    ("Contact", "<sip:c@example.com>" + ";p" * 65),
    ("Contact", "<sip:c@example.com" + ";p" * 65 + ">"),
    ("Contact", "<sip:c@example.com?h=v" + "&h=v" * 64 + ">"),
    ("Route", "<sip:p.example.com;lr>" + ";p" * 65),
    ("To", "<sip:alice@example.com>" + ";p" * 65),
    ("From", "<sip:alice@example.com" + ";p" * 65 + ">;tag=1"),
])
def test_too_many_name_addr_or_uri_params_is_413_with_partial(name, value):
    fields = [(n, v) for n, v in BASE if n != name] + [(name, value)]
    error = error_of(build(fields))
    assert error.status == 413 and name in error.reason and error.partial is not None
    # 64 of each are fine
    fine = value.replace(";p" * 65, ";p" * 64).replace("&h=v" * 64, "&h=v" * 63)
    parse_message(build([(n, v) for n, v in BASE if n != name] + [(name, fine)]))


def test_too_many_request_uri_params_is_413_with_partial():
    error = error_of(build(start="PUBLISH sip:alice@example.com" + ";p" * 65 + " SIP/2.0"))
    assert error.status == 413 and error.partial is not None
    m = parse_message(build(start="PUBLISH sip:alice@example.com" + ";p" * 64 + " SIP/2.0"))
    assert len(m.parsed_uri.params) == 1  # ";p" 64 times is one parameter, named p


# --- text decoding ------------------------------------------------------------------------


def test_non_utf8_bytes_never_raise_and_round_trip():
    data = build(extra=[("Subject", "caf\udce9 \udcff")])
    assert b"caf\xe9 \xff" in data
    m = parse_message(data)
    assert m.headers.get("Subject") == "caf\udce9 \udcff"
    assert serialize(m) == data


def test_utf8_display_name():
    fields = [(n, '"Zoë" <sip:zoe@example.com>;tag=1' if n == "From" else v) for n, v in BASE]
    assert parse_message(build(fields)).from_.display == "Zoë"


# --- lazily checked accessors --------------------------------------------------------------


@pytest.mark.parametrize("value, expected", [("0", 0), ("3600", 3600), ("007", 7),
                                             ("0" * 5000 + "60", 60),
                                             ("4294967295", 2**32 - 1),
                                             ("4294967296", 2**32 - 1), ("9" * 6000, 2**32 - 1),
                                             ("9" * 5000, 2**32 - 1), (" 60\t", 60)])
def test_expires(value, expected):
    fields = [(n, value if n == "Expires" else v) for n, v in BASE]
    assert parse_message(build(fields)).expires == expected


@pytest.mark.parametrize("values", [["soon"], ["-1"], ["1.5"], ["3600", "60"], [""], ["+5"],
                                    ["6 0"], ["0x10"], ["1e3"], ["60;x"]]
                         + [[value] for value in NOT_ASCII_DIGITS])
def test_bad_expires_raises_400_from_the_accessor(values):
    fields = [f for f in BASE if f[0] != "Expires"] + [("Expires", v) for v in values]
    m = parse_message(build(fields))
    with pytest.raises(ParseError) as caught:
        m.expires
    assert caught.value.status == 400


@pytest.mark.parametrize("value", ["-1", "", "256", "1.5", "9" * 5000, *NOT_ASCII_DIGITS])
def test_malformed_max_forwards_is_400_with_partial(value):
    fields = [(n, value if n == "Max-Forwards" else v) for n, v in BASE]
    error = error_of(build(fields))
    assert error.status == 400 and "Max-Forwards" in error.reason and error.partial is not None


def test_max_forwards_with_leading_zeros():
    fields = [(n, "0" * 5000 + "70" if n == "Max-Forwards" else v) for n, v in BASE]
    assert parse_message(build(fields)).max_forwards == 70


@pytest.mark.parametrize("number", ["-1", "", "4294967296", "9" * 5000, *NOT_ASCII_DIGITS])
def test_malformed_cseq_number_is_400_with_partial(number):
    fields = [(n, f"{number} PUBLISH" if n == "CSeq" else v) for n, v in BASE]
    error = error_of(build(fields))
    assert error.status == 400 and "CSeq" in error.reason and error.partial is not None


def test_cseq_number_with_leading_zeros():
    fields = [(n, "0" * 5000 + "7 PUBLISH" if n == "CSeq" else v) for n, v in BASE]
    assert parse_message(build(fields)).cseq.number == 7


@pytest.mark.parametrize("port", ["65536", "9" * 5000, "", *NOT_ASCII_DIGITS])
def test_malformed_via_port_is_400(port):
    fields = [("Via", f"SIP/2.0/UDP 192.0.2.10:{port};branch=z9hG4bK1")] + BASE[1:]
    assert error_of(build(fields)).status == 400


@pytest.mark.parametrize("port", ["65536", "9" * 5000, "-1", *NOT_ASCII_DIGITS])
def test_malformed_request_uri_port_is_400(port):
    error = error_of(build(start=f"PUBLISH sip:alice@example.com:{port} SIP/2.0"))
    assert error.status == 400 and error.partial is not None


def test_ports_with_leading_zeros():
    fields = [("Via", "SIP/2.0/UDP 192.0.2.10:" + "0" * 5000 + "5060;branch=z9hG4bK1")] + BASE[1:]
    m = parse_message(build(fields, start="PUBLISH sip:alice@example.com:" + "0" * 5000
                            + "5070 SIP/2.0"))
    assert m.top_via.port == 5060 and m.parsed_uri.port == 5070


def test_expires_absent():
    assert parse_message(build(drop=("Expires",))).expires is None


def test_content_type_is_lower_cased_without_parameters():
    fields = [(n, 'Application/PIDF+XML ; charset="utf-8"' if n == "Content-Type" else v)
              for n, v in BASE]
    assert parse_message(build(fields)).content_type == "application/pidf+xml"


def test_messages_are_immutable_once_parsed():
    m = parse_message(build())
    assert m.expires == 3600
    for mutator in ("add", "set", "remove"):
        assert not hasattr(m.headers, mutator)
    with pytest.raises(AttributeError):
        m.headers._fields.append(("Expires", "60"))  # a tuple
    assert m.expires == 3600


# --- Via ---------------------------------------------------------------------------------------


def test_via_params_and_with_params():
    v = Via.parse("SIP/2.0/udp Host.Example.com;Branch=z9hG4bKx;RPORT;received=10.0.0.1;maddr=224.2.0.1;ttl=16")
    assert v.transport == "UDP" and v.port is None and v.sent_by == "Host.Example.com"
    assert dict(v.params) == {"branch": "z9hG4bKx", "rport": None, "received": "10.0.0.1",
                              "maddr": "224.2.0.1", "ttl": "16"}
    assert v.rport == "" and v.maddr == "224.2.0.1" and v.ttl == "16"
    assert v.with_params(received="192.0.2.7", rport="5062") == (
        "SIP/2.0/UDP Host.Example.com;Branch=z9hG4bKx;RPORT=5062;received=192.0.2.7;"
        "maddr=224.2.0.1;ttl=16")
    assert Via.parse("SIP/2.0/TCP h:5070").with_params({"received": "1.2.3.4", "rport": None}) == (
        "SIP/2.0/TCP h:5070;received=1.2.3.4;rport")
    assert Via.parse("SIP/2.0/UDP h;rport=5060").rport == "5060"
    assert Via.parse("SIP/2.0/UDP h").rport is None


def test_via_ipv6():
    v = Via.parse("SIP/2.0/UDP [2001:db8::9]:5060;branch=z9hG4bKq")
    assert v.host == "[2001:db8::9]" and v.port == 5060 and v.sent_by == "[2001:db8::9]:5060"


def test_replace_first_via_parm_keeps_the_others_on_its_line():
    from sip_adapter.protocol.values import replace_first_via_parm

    line = "SIP/2.0/UDP a.example.com;branch=z9hG4bK1, SIP/2.0/UDP b.example.com"
    assert replace_first_via_parm(line, "SIP/2.0/UDP a.example.com;branch=z9hG4bK1;"
                                        "received=198.51.100.1") == (
        "SIP/2.0/UDP a.example.com;branch=z9hG4bK1;received=198.51.100.1, "
        "SIP/2.0/UDP b.example.com")
    assert replace_first_via_parm("SIP/2.0/UDP a", "SIP/2.0/UDP z") == "SIP/2.0/UDP z"


# --- Headers ----------------------------------------------------------------------------------


def test_headers_api():
    h = Headers([("Via", "a"), ("v", "b, c"), ("Event", "presence"), ("X-A", "1"),
                 ("i", "cid")])
    assert len(h) == 5 and "VIA" in h and "x-a" in h and "Nope" not in h
    assert h.get("Via") == "a" and h.get_all("Via") == ["a", "b", "c"] and h.lines("v") == ["a", "b, c"]
    assert h.count_lines("Via") == 2 and h.get("Missing") is None and h.get("Missing", "d") == "d"
    assert h.get("Call-ID") == "cid" and list(h)[-1] == ("Call-ID", "cid")
    assert h == Headers([("Via", "a"), ("Via", "b, c"), ("Event", "presence"), ("x-a", "1"),
                         ("Call-ID", "cid")])


@pytest.mark.parametrize("name, value", [("Subject", "a\r\nVia: x"), ("Subject", "a\nb"),
                                         ("Sub\r\nject", "x"), ("A:B", "x")])
def test_headers_refuse_injection(name, value):
    with pytest.raises(ValueError):
        Headers([(name, value)])
    with pytest.raises(ValueError):
        Headers([("Subject", "ok"), (name, value)])


# --- robustness -------------------------------------------------------------------------------


@settings(max_examples=1000, deadline=None)
@given(st.binary(max_size=2000))
def test_any_bytes_give_a_message_or_parse_error(data):
    try:
        parse_message(data)
    except ParseError:
        pass


_TOKENS = st.sampled_from([
    "Via", "v", "From", "To", "Call-ID", "CSeq", "Content-Length", "l", "Contact", "Expires",
    "Max-Forwards", "Content-Type", "Date", "Route", "X", "SIP/2.0/UDP h;branch=z9hG4bK1",
    "<sip:a@b>;tag=1", "sip:a@b", "1 PUBLISH", "0", "-1", "99999999999", "\"q\\\"", "<", ">",
    ";", ",", ":", " ", "\t", "\r\n", "\r\n ", "a@b", "application/pidf+xml", "%00", "[::1]",
])


@settings(max_examples=1000, deadline=None)
@given(st.lists(st.tuples(_TOKENS, st.lists(_TOKENS, max_size=6)), max_size=12),
       st.binary(max_size=50))
def test_grammar_shaped_noise_gives_a_message_or_parse_error(fields, body):
    head = "PUBLISH sip:a@b SIP/2.0\r\n" + "".join(
        f"{name}: {''.join(value)}\r\n" for name, value in fields)
    try:
        message = parse_message(head.encode() + b"\r\n" + body)
    except ParseError:
        return
    parse_message(serialize(message))


def test_a_via_received_may_be_a_bare_ipv6_address():
    """RFC 3261 via-received = "received" EQUAL (IPv4address / IPv6address), without
    brackets (RFC 5118 section 4.5), as IPv6 proxies and phones write it."""
    from sip_adapter.protocol.values import Via

    via = Via.parse("SIP/2.0/UDP [2001:db8::9]:5060;branch=z9hG4bKx;"
                    "received=2001:db8::9;rport=5062")
    assert (via.received, via.rport, via.branch) == ("2001:db8::9", "5062", "z9hG4bKx")
    assert Via.parse("SIP/2.0/UDP 192.0.2.1;received=[2001:db8::1]").received == \
        "[2001:db8::1]"
    assert Via.parse("SIP/2.0/UDP 192.0.2.1;received=192.0.2.9;rport").rport == ""
