"""NotifyJob -> NOTIFY bytes (sip_adapter/protocol/notify.py): the request re-parses with
this repository's own parser and carries the job's values (RFC 6665 section 4.2.2)."""

from __future__ import annotations

import dataclasses
import itertools

import pytest

from domain.notification import ACTIVE, TERMINATED, NotifyJob
from sip_adapter.protocol.messages import Request
from sip_adapter.protocol.notify import new_branch, render_notify
from sip_adapter.protocol.parser import parse_message
from sip_adapter.protocol.values import NameAddr

PIDF = b'<presence xmlns="urn:ietf:params:xml:ns:pidf" entity="sip:alice@example.com"/>'
BRANCH = "z9hG4bK0123456789abcdef"

JOB = NotifyJob(
    subscription_id="s-1", aor="sip:alice@example.com", event="presence",
    call_id="call-1@192.0.2.7", local_tag="ourtag", remote_tag="fromtag1",
    watcher_uri="sip:bob@example.org", watcher_contact="sip:bob@192.0.2.7:5062;transport=udp",
    cseq=3, transport="udp", host="192.0.2.7", port=5062, state=ACTIVE, expires_in=599,
    content_type="application/pidf+xml", body=PIDF,
)


def render(job: NotifyJob = JOB, **kwargs: object) -> bytes:
    options: dict[str, object] = {"transport": "udp", "sent_by": ("192.0.2.1", 5060),
                                  "branch": BRANCH}
    options.update(kwargs)
    return render_notify(job, **options)  # type: ignore[arg-type]


def parse(data: bytes) -> Request:
    message = parse_message(data)
    assert isinstance(message, Request)
    return message


def test_a_notify_renders_and_reparses_with_its_values():
    data = render()
    request = parse(data)
    assert request.method == "NOTIFY"
    assert request.uri == "sip:bob@192.0.2.7:5062;transport=udp"
    assert request.call_id == "call-1@192.0.2.7"
    assert request.cseq is not None and tuple(request.cseq) == (3, "NOTIFY")
    assert request.from_ == NameAddr.parse("<sip:alice@example.com>;tag=ourtag")
    assert request.from_ is not None and request.from_.tag == "ourtag"
    assert request.to is not None and request.to.tag == "fromtag1"
    assert request.to.uri == "sip:bob@example.org"
    assert request.max_forwards == 70
    assert request.headers.get("Event") == "presence"
    assert request.headers.get("Subscription-State") == "active;expires=599"
    assert request.headers.get("User-Agent") == "esc/0.1"
    assert request.content_type == "application/pidf+xml"
    assert request.content_length == len(PIDF)
    assert request.body == PIDF
    assert request.headers.get_all("Route") == []


def test_the_exact_bytes():
    assert render() == (
        b"NOTIFY sip:bob@192.0.2.7:5062;transport=udp SIP/2.0\r\n"
        b"Via: SIP/2.0/UDP 192.0.2.1:5060;branch=z9hG4bK0123456789abcdef;rport\r\n"
        b"Max-Forwards: 70\r\n"
        b"From: <sip:alice@example.com>;tag=ourtag\r\n"
        b"To: <sip:bob@example.org>;tag=fromtag1\r\n"
        b"Call-ID: call-1@192.0.2.7\r\n"
        b"CSeq: 3 NOTIFY\r\n"
        b"Contact: <sip:192.0.2.1:5060>\r\n"
        b"Event: presence\r\n"
        b"Subscription-State: active;expires=599\r\n"
        b"User-Agent: esc/0.1\r\n"
        b"Content-Type: application/pidf+xml\r\n"
        b"Content-Length: " + str(len(PIDF)).encode() + b"\r\n\r\n" + PIDF)


def test_the_via_carries_transport_sent_by_branch_and_rport():
    via = parse(render()).top_via
    assert via is not None
    assert (via.transport, via.host, via.port) == ("UDP", "192.0.2.1", 5060)
    assert via.branch == BRANCH and via.rport == ""


@pytest.mark.parametrize("transport, contact, via_transport", [
    ("udp", "<sip:192.0.2.1:5060>", "UDP"),
    ("tcp", "<sip:192.0.2.1:5060;transport=tcp>", "TCP"),
    ("tls", "<sips:192.0.2.1:5060>", "TLS"),
])
def test_the_contact_and_via_follow_the_transport(transport, contact, via_transport):
    request = parse(render(transport=transport))
    assert request.headers.get("Contact") == contact
    assert request.top_via is not None and request.top_via.transport == via_transport


def test_an_ipv6_sent_by_is_bracketed():
    request = parse(render(transport="tcp", sent_by=("2001:db8::1", 5060)))
    assert request.top_via is not None and request.top_via.host == "[2001:db8::1]"
    assert request.headers.get("Contact") == "<sip:[2001:db8::1]:5060;transport=tcp>"


def test_one_route_line_per_route_set_entry_in_order():
    routes = ("<sip:p1.example.org;lr>", "<sip:p2.example.org;lr;x=1>",
              "<sip:[2001:db8::9]:5070;lr>")
    data = render(dataclasses.replace(JOB, route_set=routes))
    request = parse(data)
    assert request.headers.lines("Route") == list(routes)
    assert request.headers.get_all("Route") == list(routes)
    # between Max-Forwards and From
    text = data.decode()
    assert text.index("Max-Forwards:") < text.index("Route: <sip:p1") < \
        text.index("Route: <sip:p2") < text.index("From:")


def test_the_event_id_is_echoed():
    request = parse(render(dataclasses.replace(JOB, event="dialog", event_id="a-1")))
    assert request.headers.get("Event") == "dialog;id=a-1"


@pytest.mark.parametrize("reason, expected", [
    ("timeout", "terminated;reason=timeout"),
    ("noresource", "terminated;reason=noresource"),
    (None, "terminated"),
])
def test_a_terminated_subscription(reason, expected):
    job = dataclasses.replace(JOB, state=TERMINATED, reason=reason, expires_in=0, body=b"",
                              content_type=None)
    request = parse(render(job))
    assert request.headers.get("Subscription-State") == expected
    assert "Content-Type" not in request.headers
    assert request.content_length == 0 and request.body == b""


def test_an_empty_body_writes_no_content_type_even_with_a_type():
    request = parse(render(dataclasses.replace(JOB, body=b"")))
    assert "Content-Type" not in request.headers and request.content_length == 0


def test_user_agent_and_max_forwards_are_the_callers():
    request = parse(render(user_agent="esc/9", max_forwards=5))
    assert request.headers.get("User-Agent") == "esc/9" and request.max_forwards == 5


def test_a_body_without_a_content_type_is_refused():
    with pytest.raises(ValueError):
        render(dataclasses.replace(JOB, content_type=None))


def test_an_unknown_state_is_refused():
    with pytest.raises(ValueError):
        render(dataclasses.replace(JOB, state="pending"))


def test_a_value_with_a_line_break_is_refused():
    with pytest.raises(ValueError):
        render(dataclasses.replace(JOB, call_id="x\r\nEvil: 1"))


def test_new_branch_uses_the_injected_random_source():
    calls: list[int] = []

    def source(n: int) -> bytes:
        calls.append(n)
        return bytes(range(n))

    assert new_branch(source) == "z9hG4bK0001020304050607"
    assert calls == [8]
    counter = itertools.count()
    branches = {new_branch(lambda n: next(counter).to_bytes(n, "big")) for _ in range(100)}
    assert len(branches) == 100
    assert all(len(b) == len("z9hG4bK") + 16 for b in branches)


def test_new_branch_refuses_a_short_random_source():
    with pytest.raises(ValueError):
        new_branch(lambda n: b"\x00")


def test_a_subscribes_dialog_facts_reach_its_notify():
    from sip_adapter.protocol.routing import Origin
    from sip_adapter.protocol.subscribe_request import to_subscribe_request

    subscribe = parse(
        b"SUBSCRIBE sip:alice@example.com SIP/2.0\r\n"
        b"Via: SIP/2.0/TCP 198.51.100.4:5060;branch=z9hG4bKs1\r\n"
        b"Record-Route: <sip:p2.example.org;lr>\r\n"
        b"Record-Route: <sip:p1.example.org;lr>\r\n"
        b"From: <sip:bob@example.org>;tag=w1\r\n"
        b"To: <sip:alice@example.com>\r\n"
        b"Call-ID: c-77\r\n"
        b"CSeq: 1 SUBSCRIBE\r\n"
        b"Contact: <sip:bob@203.0.113.5:5070;transport=tcp>\r\n"
        b"Event: presence;id=p\r\n"
        b"Content-Length: 0\r\n\r\n")
    sub = to_subscribe_request(subscribe, Origin("tcp", ("198.51.100.4", 5060), 1),
                               identity=None, allowed_events=["presence"])
    job = NotifyJob(
        subscription_id="s", aor=sub.aor, event=sub.event, call_id=sub.call_id,
        local_tag="l1", remote_tag=sub.remote_tag, watcher_uri=sub.watcher_uri,
        watcher_contact=sub.watcher_contact, cseq=1, transport=sub.transport, host=sub.host,
        port=sub.port, state=ACTIVE, expires_in=3600, event_id=sub.event_id,
        route_set=sub.route_set)
    notify = parse(render(job, transport="tcp"))
    assert notify.uri == "sip:bob@203.0.113.5:5070;transport=tcp"
    assert notify.headers.get_all("Route") == ["<sip:p2.example.org;lr>",
                                               "<sip:p1.example.org;lr>"]
    assert notify.call_id == "c-77"
    assert notify.to is not None and (notify.to.uri, notify.to.tag) == \
        ("sip:bob@example.org", "w1")
    assert notify.from_ is not None and (notify.from_.uri, notify.from_.tag) == \
        ("sip:alice@example.com", "l1")
    assert notify.headers.get("Event") == "presence;id=p"
