"""RFC 4475 torture messages, driven by tests/data/rfc4475/manifest.json.

- `syntax: valid`: parse_message returns the message of the manifest's kind, and the fields the
  RFC singles out come out right.
- `syntax: invalid` requests: ParseError whose status is the first status code the manifest's
  `server_expectation` names (400 when it names none: "respond with an error", "acceptable to
  reject as malformed"). So badvers -> 505 and mismatch02 -> 501 ("501 preferred").
- `syntax: invalid` responses: ParseError with no partial (a response is dropped, never
  answered).
- Messages the RFC calls well formed but that an application rejects (unkscm, novelsc: 416;
  unksm2: 400 at a registrar; bext01: 420; invut: 415; zeromf: 483 at a proxy) parse, and the
  accessors expose what that decision needs.
- Nothing raises anything but ParseError, for the files and for mutations of them.
"""

from __future__ import annotations

import hashlib
import json
import re

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from sip_adapter.protocol.framer import StreamFramer
from sip_adapter.protocol.values import NameAddr
from sip_adapter.protocol.messages import Request, Response
from sip_adapter.protocol.parser import ParseError, parse_message
from sip_adapter.protocol.responses import make_response
from sip_adapter.protocol.serializer import serialize
from sip_adapter.protocol.transactions import transaction_key
from sip_adapter.protocol.uri import AbsoluteUri, SipUri, parse_sip_uri
from tests.conformance_data import RFC4475

DIR = RFC4475
MANIFEST = json.loads((DIR / "manifest.json").read_bytes())
BY_FILE = {entry["file"]: entry for entry in MANIFEST}
VALID = [e for e in MANIFEST if e["syntax"] == "valid"]
INVALID = [e for e in MANIFEST if e["syntax"] == "invalid"]


def raw(name: str) -> bytes:
    return (DIR / name).read_bytes()


def parse(name: str) -> Request | Response:
    return parse_message(raw(name))


def expected_status(entry: dict) -> int:
    found = re.search(r"\b([1-6][0-9][0-9])\b", entry["server_expectation"])
    return int(found.group(1)) if found else 400


def test_manifest_is_complete_and_files_intact():
    assert len(MANIFEST) == 49
    for entry in MANIFEST:
        data = raw(entry["file"])
        assert len(data) == entry["bytes"], entry["file"]
        assert hashlib.sha256(data).hexdigest() == entry["sha256"], entry["file"]


@pytest.mark.parametrize("entry", VALID, ids=lambda e: e["file"])
def test_valid_messages_parse(entry):
    message = parse(entry["file"])
    if entry["kind"] == "request":
        assert isinstance(message, Request)
        assert message.method == entry["method"]
        assert message.cseq.method == entry["method"]
    else:
        assert isinstance(message, Response)
        assert message.status == int(entry["status_code"])
    # the structured values every message has are readable
    assert message.vias and message.top_via is not None
    assert message.call_id and message.from_ is not None and message.to is not None
    # and the message survives a serialize/parse round trip
    again = parse_message(serialize(message))
    assert again.headers.get_all("Via") == message.headers.get_all("Via")
    assert again.body == message.body


@pytest.mark.parametrize("entry", INVALID, ids=lambda e: e["file"])
def test_invalid_messages_are_rejected(entry):
    with pytest.raises(ParseError) as caught:
        parse(entry["file"])
    error = caught.value
    if entry["kind"] == "response":
        assert error.partial is None
    else:
        assert error.status == expected_status(entry)
        if error.partial is not None:
            # the error can be answered, addressed by the Via (From, To, Call-ID and CSeq are
            # echoed as received, even when they are what was wrong)
            response = serialize(make_response(error.partial, error.status, to_tag="x"))
            assert response.startswith(b"SIP/2.0 %d " % error.status)
            for via in error.partial.headers.lines("Via"):
                assert b"\r\nVia: " + via.encode() + b"\r\n" in response


def test_expected_statuses_follow_the_manifest():
    statuses = {e["file"]: expected_status(e) for e in INVALID if e["kind"] == "request"}
    assert statuses["badvers.dat"] == 505
    assert statuses["mismatch02.dat"] == 501
    assert {s for f, s in statuses.items() if f not in ("badvers.dat", "mismatch02.dat")} == {400}


# --- 3.1.1 valid messages: the interesting fields ------------------------------------------


def test_wsinv_whitespace_folding_and_compact_forms():
    m = parse("wsinv.dat")
    assert m.uri == "sip:vivekg@chair-dnrc.example.com;unknownparam"
    assert m.to.uri == "sip:vivekg@chair-dnrc.example.com" and m.to.tag == "1918181833n"
    assert m.from_.display == 'J Rosenberg \\"' and m.from_.tag == "98asjd8"
    assert m.max_forwards == 68
    assert m.cseq == (9, "INVITE")
    assert [(v.transport, v.host, v.branch) for v in m.vias] == [
        ("UDP", "192.0.2.2", "390skdjuw"),
        ("TCP", "spindle.example.com", "z9hG4bK9ikj8"),
        ("UDP", "192.168.255.111", "z9hG4bK30239"),
    ]
    assert all(v.protocol == "SIP/2.0" for v in m.vias)
    assert m.headers.get("Subject") == ""
    assert m.headers.get("NewFangledHeader") == "newfangled value continued newfangled value"
    assert m.headers.get("UnknownHeaderWithUnusualValue") == ";;,,;;,;"
    contact = NameAddr.parse(m.headers.get("Contact"))
    assert contact.display == 'Quoted string ""'
    assert contact.params == {"newparam": "newvalue", "secondparam": None, "q": "0.33"}
    assert m.headers.get("Route") == "<sip:services.example.com;lr;unknownwith=value;unknown-no-value>"
    assert m.content_length == 150 and len(m.body) == 150


def test_intmeth_wide_range_of_valid_characters():
    m = parse("intmeth.dat")
    uri = m.parsed_uri
    assert uri.user == "1_unusual.URI~(to-be!sure)&isn't+it$/crazy?,/;;*"
    assert uri.password == "&it+has=1,weird!*pas$wo~d_too.(doesn't-it)"
    assert uri.host == "example.com"
    assert m.top_via.branch == "z9hG4bK-.!%66*_+`'~"
    assert m.to.display == "BEL:\x07 NUL:\x00 DEL:\x7f"
    assert m.from_.display == "token1~` token2'+_ token3*%!.-"
    assert m.from_.params["fromparam''~+*_!.-%"] == '"работающий"'
    assert m.from_.tag == "_token~1'+`*%!-."
    assert m.call_id == "intmeth.word%ZK-!.*_+'@word`~)(><:\\/\"][?}{"
    assert m.max_forwards == 255
    assert m.headers.get("extensionHeader-!.%*+_`'~") == "\ufeff大停電"


def test_esc01_escapes_are_equivalent_to_their_characters():
    m = parse("esc01.dat")
    assert m.parsed_uri.unescaped_user == "sips:user@example.com"
    assert m.to.aor == "sip:user@example.com"
    assert m.from_.parsed_uri.unescaped_user == "I have spaces"
    contact = NameAddr.parse(m.headers.get("Contact")).parsed_uri
    assert contact.unescaped_user == "caller"
    assert dict(contact.params) == {"lr": None, "name": "value%41"}
    assert m.content_type == "application/sdp"


def test_escnull_keeps_escaped_nulls():
    m = parse("escnull.dat")
    assert m.to.aor == "sip:null-%00-null@example.com"
    assert m.to.parsed_uri.unescaped_user == "null-\x00-null"
    contacts = [NameAddr.parse(c).aor for c in m.headers.get_all("Contact")]
    assert contacts == ["sip:%00@host5.example.com", "sip:%00%00@host5.example.com"]
    assert m.content_length == 0


def test_esc02_percent_that_is_not_an_escape():
    m = parse("esc02.dat")
    assert m.method == "RE%47IST%45R"
    assert m.to.display == "%Z%45"
    assert m.top_via.branch == "z9hG4bK209%fzsnel234"
    # "C%6Fntact" is an unknown header, not a Contact
    assert m.headers.get_all("Contact") == ["<sip:alias1@host1.example.com>", "<sip:alias3@host3.example.com>"]
    assert m.headers.get("C%6Fntact") == "<sip:alias2@host2.example.com>"


def test_lwsdisp_token_display_name_without_space():
    m = parse("lwsdisp.dat")
    assert m.from_.display == "caller" and m.from_.uri == "sip:caller@example.com"


def test_longreq_long_values():
    m = parse("longreq.dat")
    assert len(m.vias) == 34
    assert m.vias[0].host == "sip33.example.com"
    assert m.vias[-1].received == "192.0.2.5"
    assert m.vias[-1].branch.startswith("verylong") and m.vias[-1].branch.endswith("branchvalue")
    assert m.to.display.startswith("I have a user name of extremeextreme")
    assert m.to.parsed_uri.port == 6000
    assert "verylonglonglonglonglonglonglonglonglonglonglonglonglonglonglonglonglonglonglonglonglonglonglonglonglongparameternamewithnovalue" in m.to.parsed_uri.params
    assert len(m.from_.tag) == 155 and m.from_.tag.endswith("982424")
    assert m.call_id.endswith("reallylongcallid")
    assert m.content_length == 150


def test_dblreq_extra_octets_in_a_datagram_are_ignored():
    m = parse("dblreq.dat")
    assert m.method == "REGISTER" and m.body == b""
    assert m.call_id == "dblreq.0ha0isndaksdj99sdfafnl3lk233412"
    assert b"INVITE" not in serialize(m)


def test_semiuri_user_part_with_semicolons():
    m = parse("semiuri.dat")
    assert m.parsed_uri.unescaped_user == "user;par=u@example.net"
    assert m.parsed_uri.host == "example.com" and not m.parsed_uri.params
    assert m.headers.get_all("Accept") == [
        "application/sdp", "application/pkcs7-mime", "multipart/mixed",
        "multipart/signed", "message/sip", "message/sipfrag",
    ]


def test_transports_varied_and_unknown():
    m = parse("transports.dat")
    assert [v.transport for v in m.vias] == ["UDP", "SCTP", "TLS", "UNKNOWN", "TCP"]
    assert m.call_id == "transports.kijh4akdnaqjkwendsasfdj"


def test_mpart01_binary_body_framed_by_content_length():
    m = parse("mpart01.dat")
    assert len(m.body) == 553 and b"\x00" in m.body
    assert m.content_type == "multipart/mixed"
    assert m.top_via.rport == ""


def test_unreason_and_noreason():
    assert parse("unreason.dat").reason == "= 2**3 * 5**2 но сто девяносто девять - простое"
    r = parse("noreason.dat")
    assert r.status == 100 and r.reason == ""


# --- 3.2, 3.3, 3.4: parseable, decided above the parser ------------------------------------


def test_badbranch_falls_back_to_rfc2543_matching():
    m = parse("badbranch.dat")
    assert m.top_via.branch == "z9hG4bK"
    assert transaction_key(m)[0] == "2543"


def test_unkscm_and_novelsc_answer_416():
    for name, scheme in (("unkscm.dat", "nobodyknowsthisscheme"), ("novelsc.dat", "soap.beep")):
        m = parse(name)
        with pytest.raises(ParseError) as caught:
            m.parsed_uri
        assert caught.value.status == 416
        assert m.uri.lower().startswith(scheme + ":")
    assert parse("unkscm.dat").aor == "nobodyknowsthisscheme:totallyopaquecontent"


def test_unksm2_unknown_schemes_in_header_fields():
    m = parse("unksm2.dat")
    to = m.to.parsed_uri
    assert isinstance(to, AbsoluteUri) and to.scheme == "isbn"  # a registrar answers 400
    with pytest.raises(ParseError):
        parse_sip_uri(m.to.uri)
    assert m.from_.uri == "http://www.example.com"
    assert NameAddr.parse(m.headers.get("Contact")).uri == "name:John_Smith"


def test_bext01_require_lists():
    m = parse("bext01.dat")
    assert m.headers.get_all("Require") == ["nothingSupportsThis", "nothingSupportsThisEither"]
    assert m.headers.get_all("Proxy-Require") == ["noProxiesSupportThis", "norDoAnyProxiesSupportThis"]


def test_invut_unknown_content_type():
    m = parse("invut.dat")
    assert m.content_type == "application/unknownformat" and len(m.body) == 40


def test_regaut01_authorization_kept_verbatim():
    m = parse("regaut01.dat")
    assert m.headers.get_all("Authorization") == ["NoOneKnowsThisScheme opaque-data=here"]


def test_bcast_broadcast_via():
    m = parse("bcast.dat")
    assert m.vias[1].host == "255.255.255.255"


def test_zeromf_max_forwards_zero():
    assert parse("zeromf.dat").max_forwards == 0


def test_cparam01_contact_param_is_not_a_uri_param():
    contact = NameAddr.parse(parse("cparam01.dat").headers.get("Contact"))
    assert contact.params == {"unknownparam": None}
    assert dict(contact.parsed_uri.params) == {}


def test_cparam02_url_param():
    contact = NameAddr.parse(parse("cparam02.dat").headers.get("Contact"))
    assert dict(contact.params) == {}
    assert dict(contact.parsed_uri.params) == {"unknownparam": None}


def test_regescrt_escaped_header_in_contact_uri():
    contact = NameAddr.parse(parse("regescrt.dat").headers.get("Contact")).parsed_uri
    assert isinstance(contact, SipUri)
    assert contact.headers == (("Route", "<sip:sip.example.com>"),)


def test_sdp01_accept():
    assert parse("sdp01.dat").headers.get_all("Accept") == ["text/nobodyKnowsThis"]


def test_inv2543_rfc2543_syntax():
    m = parse("inv2543.dat")
    assert m.headers.get("Content-Length") is None and m.content_length is None
    assert m.body == raw("inv2543.dat").split(b"\r\n\r\n", 1)[1]
    assert m.from_.tag is None and m.top_via.branch is None and m.max_forwards is None
    assert transaction_key(m)[0] == "2543"


# --- 3.1.2 / 3.3 invalid: the reasons ------------------------------------------------------


@pytest.mark.parametrize(
    "name, words",
    [
        ("badinv01.dat", "Via"),
        ("clerr.dat", "Content-Length"),
        ("ncl.dat", "Content-Length"),
        ("scalar02.dat", "CSeq"),
        ("quotbal.dat", "To"),
        ("ltgtruri.dat", "Request-URI"),
        ("lwsruri.dat", "Request-Line"),
        ("lwsstart.dat", "Request-Line"),
        ("trws.dat", "Request-Line"),
        ("escruri.dat", "Request-URI"),
        ("baddate.dat", "Date"),
        ("regbadct.dat", "Contact"),
        ("badaspec.dat", "To"),
        ("mismatch01.dat", "CSeq"),
        ("insuf.dat", "From"),
        ("multi01.dat", "Multiple"),
        ("mcl01.dat", "Content-Length"),
    ],
)
def test_invalid_reasons_name_the_problem(name, words):
    with pytest.raises(ParseError) as caught:
        parse(name)
    assert words in caught.value.reason


def test_baddn_is_rejected_for_its_display_name_too():
    # the file lacks the empty line ending the header section; with it, the unquoted display
    # name containing a comma is still rejected
    with pytest.raises(ParseError) as caught:
        parse_message(raw("baddn.dat") + b"\r\n")
    assert caught.value.status == 400 and "From" in caught.value.reason


def test_insuf_partial_can_still_be_answered():
    with pytest.raises(ParseError) as caught:
        parse("insuf.dat")
    partial = caught.value.partial
    assert partial.top_via.branch == "z9hG4bKkdj.insuf" and partial.from_ is None
    response = make_response(partial, 400, to_tag="t")
    assert response.headers.get("CSeq") == "193942 INVITE" and "To" not in response.headers


def test_invalid_over_a_stream_break_the_framer_when_framing_is_lost():
    for name in ("ncl.dat", "mcl01.dat"):
        framer = StreamFramer()
        results = framer.feed(raw(name))
        assert len(results) == 1 and isinstance(results[0], ParseError)
        assert framer.broken
    # clerr: on a stream, wait for the rest of the body
    framer = StreamFramer()
    assert framer.feed(raw("clerr.dat")) == [] and not framer.broken


# --- robustness ------------------------------------------------------------------------------

ALL = [raw(e["file"]) for e in MANIFEST]


@st.composite
def mutated(draw):
    data = bytearray(draw(st.sampled_from(ALL)))
    for _ in range(draw(st.integers(1, 6))):
        i = draw(st.integers(0, len(data)))
        op = draw(st.integers(0, 3))
        if op == 0 and data:
            data[min(i, len(data) - 1)] = draw(st.sampled_from(b'\r\n \t:;,<>"\\@%=/0\x00\xff'))
        elif op == 1:
            data[i:i] = draw(st.binary(min_size=1, max_size=8))
        elif op == 2:
            del data[i:i + draw(st.integers(1, 40))]
        else:
            j = draw(st.integers(0, len(data)))
            data[i:i] = data[j:j + draw(st.integers(1, 40))]
    return bytes(data)


@settings(max_examples=1500, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(mutated())
def test_mutated_torture_messages_raise_only_parse_error(data):
    try:
        message = parse_message(data)
    except ParseError as error:
        if error.partial is not None:
            serialize(make_response(error.partial, error.status, to_tag="t"))
        return
    parse_message(serialize(message))  # what we accepted, we can write and read back
