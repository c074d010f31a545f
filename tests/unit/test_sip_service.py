"""The sans-I/O SIP service: requests in, responses out, time passed in."""

from __future__ import annotations

import pytest

from domain import ConditionalRequestFailed, IntervalTooBrief
from infrastructure.records import Accepted
from sip_adapter.protocol.parser import parse_message
from sip_adapter.protocol.routing import Origin
from sip_adapter.protocol.service import ServiceConfig, SipService


UDP = Origin("udp", ("198.51.100.7", 40000), None, ("192.0.2.1", 5060))
TCP = Origin("tcp", ("198.51.100.7", 40001), 1, ("192.0.2.1", 5060))  # connection serial 1


def request(method="PUBLISH", uri="sip:alice@example.com", branch="z9hG4bK1", extra=(),
            body=b"", via="SIP/2.0/UDP 203.0.113.9:5070", cseq=None):
    lines = [f"{method} {uri} SIP/2.0", f"Via: {via};branch={branch}",
             "From: <sip:alice@example.com>;tag=f", "To: <sip:alice@example.com>",
             "Call-ID: c1", f"CSeq: {cseq or 1} {method}", *extra,
             f"Content-Length: {len(body)}"]
    return parse_message(("\r\n".join(lines) + "\r\n\r\n").encode() + body)


PIDF = b'<presence xmlns="urn:ietf:params:xml:ns:pidf" entity="sip:alice@example.com"/>'


def publish(**kwargs):
    extra = ["Event: presence", "Content-Type: application/pidf+xml", "Expires: 60",
             *kwargs.pop("extra", ())]
    return request(extra=extra, body=kwargs.pop("body", PIDF), **kwargs)


def status(received):
    assert len(received.replies) == 1, received
    return int(received.replies[0].data.split(b" ", 2)[1])


def header(received, name):
    for line in received.replies[0].data.decode().split("\r\n"):
        if line.lower().startswith(name.lower() + ":"):
            return line.split(":", 1)[1].strip()
    return None


def test_options_lists_capabilities():
    service = SipService()
    answer = service.receive(request("OPTIONS"), UDP, 0.0)
    assert status(answer) == 200
    assert "PUBLISH" in header(answer, "Allow")
    assert header(answer, "Allow-Events") == "presence, dialog, message-summary"
    assert "application/pidf+xml" in header(answer, "Accept")
    assert header(answer, "Supported") == ""


@pytest.mark.parametrize("method,expected", [("INVITE", 405), ("SUBSCRIBE", 405),
                                             ("FROBNICATE", 501)])
def test_other_methods(method, expected):
    answer = SipService().receive(request(method), UDP, 0.0)
    assert status(answer) == expected and "PUBLISH" in header(answer, "Allow")


def test_ack_is_absorbed_and_responses_ignored():
    service = SipService()
    assert service.receive(request("ACK"), UDP, 0.0).replies == []
    response = parse_message(b"SIP/2.0 200 OK\r\nVia: SIP/2.0/UDP h;branch=z9hG4bKx\r\n"
                             b"From: <sip:a@b>;tag=1\r\nTo: <sip:a@b>\r\nCall-ID: x\r\n"
                             b"CSeq: 1 PUBLISH\r\nContent-Length: 0\r\n\r\n")
    assert service.receive(response, UDP, 0.0).replies == []


def test_unknown_require_is_420_with_unsupported():
    answer = SipService().receive(publish(extra=["Require: foo, bar"]), UDP, 0.0)
    assert status(answer) == 420 and header(answer, "Unsupported") == "foo, bar"


def test_non_sip_request_uri_is_416():
    answer = SipService().receive(request("OPTIONS", uri="http://example.com/x"), UDP, 0.0)
    assert status(answer) == 416


def test_publish_becomes_pending_with_audit_then_200_with_etag():
    service = SipService()
    received = service.receive(publish(), UDP, 1.0)
    assert received.replies == [] and received.pending is not None
    publish_request = received.pending.publish
    assert publish_request.aor == "sip:alice@example.com"
    assert publish_request.audit.source == "198.51.100.7:40000"
    assert publish_request.audit.transport == "udp"
    assert publish_request.audit.cseq == "1 PUBLISH"
    out = service.complete(received.pending, Accepted("t.1", 60), 1.1)
    text = out.data.decode()
    assert text.startswith("SIP/2.0 200 OK") and "SIP-ETag: t.1" in text
    assert "Expires: 60" in text and ";tag=" in text.split("To:")[1].split("\r\n")[0]


def test_responses_go_only_to_the_source_address():
    service = SipService()
    received = service.receive(publish(via="SIP/2.0/UDP evil.example.org:9;maddr=192.0.2.66"),
                               UDP, 0.0)
    out = service.complete(received.pending, Accepted("t.1", 60), 0.0)
    assert out.destination == ("198.51.100.7", 9)  # source IP; the Via's port (no rport)
    assert b"received=198.51.100.7" in out.data
    received = service.receive(publish(branch="z9hG4bK2",
                                       via="SIP/2.0/UDP 10.0.0.1:5060;rport"), UDP, 0.0)
    out = service.complete(received.pending, Accepted("t.2", 60), 0.0)
    assert out.destination == ("198.51.100.7", 40000)
    assert b"rport=40000" in out.data


def test_refusals_map_to_statuses_and_headers():
    service = SipService()
    pending = service.receive(publish(), UDP, 0.0).pending
    out = service.complete(pending, IntervalTooBrief(60), 0.0)
    assert out.data.startswith(b"SIP/2.0 423 ") and b"Min-Expires: 60" in out.data
    pending = service.receive(publish(branch="z9hG4bK9"), UDP, 0.0).pending
    out = service.complete(pending, ConditionalRequestFailed("x"), 0.0)
    assert out.data.startswith(b"SIP/2.0 412 Conditional Request Failed")


def test_retransmission_gets_the_stored_response_and_no_second_pending():
    service = SipService()
    first = service.receive(publish(), UDP, 0.0)
    assert service.receive(publish(), UDP, 0.1).pending is None  # still in progress: absorbed
    out = service.complete(first.pending, Accepted("t.1", 60), 0.2)
    again = service.receive(publish(), UDP, 1.0)
    assert again.pending is None and again.replies[0].data == out.data
    service.tick(0.2 + 32.1)  # Timer J
    assert service.receive(publish(), UDP, 40.0).pending is not None


@pytest.mark.parametrize("extra,expected", [
    (["SIP-If-Match: a.1", "SIP-If-Match: b.2"], 400),
    (["SIP-If-Match: a.1, b.2"], 400),
    (["Expires: soon"], 400),
])
def test_malformed_publish_headers_are_400(extra, expected):
    answer = SipService().receive(publish(extra=extra), UDP, 0.0)
    assert status(answer) == expected


def test_missing_event_is_489_with_allow_events():
    answer = SipService().receive(request(extra=["Content-Type: application/pidf+xml"],
                                          body=PIDF), UDP, 0.0)
    assert status(answer) == 489 and "presence" in header(answer, "Allow-Events")


def test_domains_outside_the_served_ones_are_404():
    service = SipService(ServiceConfig(domains=("example.com",)))
    assert service.receive(publish(), UDP, 0.0).pending is not None
    answer = service.receive(publish(uri="sip:bob@other.example", branch="z9hG4bK5"), UDP, 0.0)
    assert status(answer) == 404


def test_rate_limit_is_asked_before_parsing_and_refusals_are_503_with_retry_after():
    from sip_adapter.protocol.rate_limit import Verdict

    service = SipService(ServiceConfig(rate_limit=1, rate_burst=2))

    def offer(branch: str, now: float) -> int | None:
        verdict = service.admit(UDP.address[0], now)
        if verdict is Verdict.DROP:
            return None
        received = service.receive(request("OPTIONS", branch=branch), UDP, now,
                                   refused=verdict is Verdict.REFUSE)
        return status(received)

    codes = [offer(f"z9hG4bK{i}", 0.0) for i in range(4)]
    assert codes == [200, 200, 503, None]  # one answered refusal per second, then silence
    assert offer("z9hG4bKw", 1.0) == 200  # a second later: one token back
    verdict = service.admit(UDP.address[0], 1.0)
    answer = service.receive(request("OPTIONS", branch="z9hG4bKz"), UDP, 1.0,
                             refused=verdict is Verdict.REFUSE)
    assert status(answer) == 503 and header(answer, "Retry-After") == "1"
    # A refusal keeps nothing: the same branch, admitted later, is a new transaction.
    assert offer("z9hG4bKz", 3.5) == 200


def test_while_the_store_is_away_publish_and_options_get_503_with_retry_after():
    service = SipService()
    service.store_available = False
    for message in (request("OPTIONS", branch="z9hG4bKa"), publish(branch="z9hG4bKb")):
        answer = service.receive(message, UDP, 0.0)
        assert status(answer) == 503 and header(answer, "Retry-After") is not None
        assert answer.pending is None
    service.store_available = True
    assert status(service.receive(request("OPTIONS", branch="z9hG4bKc"), UDP, 0.0)) == 200


def test_body_over_the_package_limit_is_413():
    service = SipService(ServiceConfig(max_body_per_package=(("presence", 16),)))
    assert status(service.receive(publish(), UDP, 0.0)) == 413


def test_unaddressable_garbage_is_dropped():
    from sip_adapter.protocol.parser import ParseError

    service = SipService()
    try:
        parse_message(b"\x00\x01garbage")
    except ParseError as error:
        assert service.receive(error, UDP, 0.0).replies == []


def test_a_fault_while_handling_a_request_is_answered_500_and_closes_its_transaction():
    class Exploding:
        realm = "example.com"

        def authenticate(self, request, now):
            raise RuntimeError("a bug")

    service = SipService(ServiceConfig(authenticator=Exploding()), wall_clock=lambda: 0.0)
    message = publish(branch="z9hG4bKboom")
    answer = service.receive(message, UDP, 0.0)
    assert status(answer) == 500 and answer.pending is None
    # The retransmission is answered from the table with the same 500.
    again = service.receive(message, UDP, 0.1)
    assert again.replies[0].data == answer.replies[0].data


def test_cancel_matching_a_transaction_is_200_and_an_unmatched_one_481():
    service = SipService()
    original = request("OPTIONS", branch="z9hG4bKorig")
    assert status(service.receive(original, UDP, 0.0)) == 200
    cancel = request("CANCEL", branch="z9hG4bKorig")
    assert status(service.receive(cancel, UDP, 0.1)) == 200
    stray = request("CANCEL", branch="z9hG4bKnothing")
    assert status(service.receive(stray, UDP, 0.1)) == 481
    # From another address the same CANCEL matches nothing (transactions are per source).
    other = Origin("udp", ("192.0.2.66", 5060))
    assert status(service.receive(request("CANCEL", branch="z9hG4bKorig"), other, 0.2)) == 481


def test_a_replayed_request_from_another_address_never_gets_the_stored_answer():
    service = SipService()
    victim = publish(branch="z9hG4bKvictim")
    pending = service.receive(victim, UDP, 0.0).pending
    assert pending is not None
    attacker = Origin("udp", ("192.0.2.66", 5060))
    # While the victim's request is being decided, and after it was answered, the same
    # bytes from elsewhere are a transaction of their own.
    assert service.receive(publish(branch="z9hG4bKvictim"), attacker, 0.1).pending is not None
    from infrastructure.records import Accepted
    answer = service.complete(pending, Accepted("victims-tag", 60), 0.2)
    assert b"victims-tag" in answer.data
    replay = service.receive(publish(branch="z9hG4bKvictim"), attacker, 0.3)
    assert all(b"victims-tag" not in r.data for r in replay.replies)
    # The victim's own retransmission still gets its answer.
    again = service.receive(publish(branch="z9hG4bKvictim"), UDP, 0.4)
    assert again.replies and b"victims-tag" in again.replies[0].data


def test_when_the_transaction_table_is_full_new_requests_get_503_and_nothing_is_kept():
    from sip_adapter.protocol.transactions import TransactionTable

    service = SipService(transactions=TransactionTable(max_entries=2))
    for n in range(2):
        assert status(service.receive(request("OPTIONS", branch=f"z9hG4bK{n}"), UDP, 0.0)) == 200
    answer = service.receive(request("OPTIONS", branch="z9hG4bKfull"), UDP, 0.0)
    assert status(answer) == 503 and header(answer, "Retry-After") is not None
    assert len(service.transactions) == 2


def test_every_final_answer_is_told_to_the_request_listener_once():
    from sip_adapter.protocol.routing import Origin
    from sip_adapter.protocol.service import ServiceConfig, SipService
    from sip_adapter.protocol.parser import parse_message

    service = SipService(ServiceConfig())
    done = []
    service.on_done = done.append
    origin = Origin("udp", ("192.0.2.9", 5062), None, ("127.0.0.1", 5060))
    options = (b"OPTIONS sip:alice@example.com SIP/2.0\r\n"
               b"Via: SIP/2.0/UDP 192.0.2.9:5062;branch=z9hG4bKo1\r\nMax-Forwards: 70\r\n"
               b"From: <sip:bob@example.com>;tag=1\r\nTo: <sip:alice@example.com>\r\n"
               b"Call-ID: opt-1\r\nCSeq: 1 OPTIONS\r\nContent-Length: 0\r\n\r\n")
    service.receive(parse_message(options), origin, 10.0)
    service.receive(parse_message(options), origin, 10.5)  # a retransmission: not told
    [record] = done
    assert (record.method, record.status, record.resource, record.call_id) == (
        "OPTIONS", 200, "sip:alice@example.com", "opt-1")
    assert record.origin == origin and record.duration == 0.0

    publish = (b"PUBLISH sip:alice@example.com SIP/2.0\r\n"
               b"Via: SIP/2.0/UDP 192.0.2.9:5062;branch=z9hG4bKp1\r\nMax-Forwards: 70\r\n"
               b"From: <sip:alice@example.com>;tag=1\r\nTo: <sip:alice@example.com>\r\n"
               b"Call-ID: pub-1\r\nCSeq: 1 PUBLISH\r\nEvent: presence\r\nExpires: 60\r\n"
               b"Content-Length: 0\r\n\r\n")
    received = service.receive(parse_message(publish), origin, 20.0)
    assert len(done) == 1 and received.pending is not None  # not answered yet

    class Accepted:
        etag, expires = "tag", 60

    service.complete(received.pending, Accepted(), 20.25)
    record = done[-1]
    assert (record.method, record.status, record.event, record.duration) == (
        "PUBLISH", 200, "presence", 0.25)
