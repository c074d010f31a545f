"""SUBSCRIBE message -> SubscribeRequest (sip_adapter/protocol/subscribe_request.py): what
each header field becomes, and which values are a BadSubscribe with the status to answer
(RFC 6665 section 4.2.1)."""

from __future__ import annotations

import pytest

from domain.notification import SubscribeRequest
from sip_adapter.protocol.parser import parse_message
from sip_adapter.protocol.messages import Request
from sip_adapter.protocol.routing import Origin
from sip_adapter.protocol.subscribe_request import (
    BadSubscribe, parse_event, to_subscribe_request,
)

ORIGIN = Origin("udp", ("192.0.2.7", 5062))
ALLOWED = ["presence", "dialog", "message-summary"]

DEFAULT = {
    "Via": "SIP/2.0/UDP 192.0.2.7:5062;branch=z9hG4bK1;rport",
    "From": '"Bob" <sip:bob@example.org>;tag=fromtag1',
    "To": "<sip:alice@example.com>",
    "Call-ID": "call-1@192.0.2.7",
    "CSeq": "7 SUBSCRIBE",
    "Contact": "<sip:bob@192.0.2.7:5062;transport=udp>",
    "Event": "presence",
    "Expires": "600",
}


def subscribe(*extra: str, uri: str = "sip:alice@example.com", method: str = "SUBSCRIBE",
              drop: tuple[str, ...] = (), **replace: str) -> Request:
    fields = dict(DEFAULT)
    for name, value in replace.items():
        fields[name.replace("_", "-")] = value
    lines = [f"{method} {uri} SIP/2.0"]
    lines += [f"{name}: {value}" for name, value in fields.items() if name not in drop]
    lines += [*extra, "Content-Length: 0"]
    message = parse_message(("\r\n".join(lines) + "\r\n\r\n").encode())
    assert isinstance(message, Request)
    return message


def convert(*extra: str, origin: Origin = ORIGIN, identity: str | None = None,
            **kwargs: object) -> SubscribeRequest:
    return to_subscribe_request(subscribe(*extra, **kwargs),  # type: ignore[arg-type]
                                origin, identity=identity, allowed_events=ALLOWED)


def refused(*extra: str, **kwargs: object) -> BadSubscribe:
    with pytest.raises(BadSubscribe) as caught:
        convert(*extra, **kwargs)
    return caught.value


# --- What an acceptable SUBSCRIBE becomes ------------------------------------------------------


def test_an_initial_subscribe():
    request = convert(identity="bob")
    assert request == SubscribeRequest(
        aor="sip:alice@example.com", event="presence", call_id="call-1@192.0.2.7",
        remote_tag="fromtag1", cseq=7, watcher_uri="sip:bob@example.org",
        watcher_contact="sip:bob@192.0.2.7:5062;transport=udp", transport="udp",
        host="192.0.2.7", port=5062, local_tag=None, event_id=None, expires=600,
        route_set=(), identity="bob", local_uri="sip:alice@example.com")
    assert request.initial


def test_a_refresh_inside_the_dialog_carries_the_to_tag():
    request = convert(To="<sip:alice@example.com>;tag=ourtag")
    assert request.local_tag == "ourtag" and not request.initial


def test_the_aor_is_the_request_uris_address_of_record():
    assert convert(uri="sip:alice@EXAMPLE.com:5070;transport=tcp").aor == \
        "sip:alice@example.com"


def test_the_origin_gives_transport_host_and_port():
    request = convert(origin=Origin("tcp", ("2001:db8::1", 40000), connection=3))
    assert (request.transport, request.host, request.port) == ("tcp", "2001:db8::1", 40000)


@pytest.mark.parametrize("value, event, event_id", [
    ("presence", "presence", None),
    ("Presence", "presence", None),
    ("presence;id=abc", "presence", "abc"),
    ("presence ; ID = x-1 ;foo=bar", "presence", "x-1"),
    ("dialog;foo;id=7", "dialog", "7"),
    ("message-summary", "message-summary", None),
])
def test_the_event_package_and_its_id(value, event, event_id):
    request = convert(Event=value)
    assert (request.event, request.event_id) == (event, event_id)


def test_the_compact_event_header_is_read():
    request = convert("o: dialog;id=9", drop=("Event",))
    assert (request.event, request.event_id) == ("dialog", "9")


def test_watcher_uri_and_contact_are_addr_specs_without_header_parameters():
    request = convert(From="<sip:bob@example.org;user=phone>;tag=t9;x=y",
                      Contact='"Bob" <sips:bob@[2001:db8::2]:5061>;expires=60;+sip.instance="<urn:x>"')
    assert request.watcher_uri == "sip:bob@example.org;user=phone"
    assert request.watcher_contact == "sips:bob@[2001:db8::2]:5061"
    assert request.remote_tag == "t9"


def test_a_bare_addr_spec_contact():
    assert convert(Contact="sip:bob@192.0.2.7").watcher_contact == "sip:bob@192.0.2.7"


@pytest.mark.parametrize("value, expected", [
    ("0", 0), ("3600", 3600), ("4294967295", 2**32 - 1), ("4294967296", 2**32 - 1),
    ("9" * 50, 2**32 - 1),
])
def test_expires(value, expected):
    assert convert(Expires=value).expires == expected


def test_expires_absent_is_none():
    assert convert(drop=("Expires",)).expires is None


def test_the_route_set_is_every_record_route_element_in_the_order_received():
    request = convert("Record-Route: <sip:p1.example.org;lr>, <sip:p2.example.org;lr;x=1>",
                      "Record-Route: <sip:[2001:db8::9]:5070;lr>")
    assert request.route_set == ("<sip:p1.example.org;lr>", "<sip:p2.example.org;lr;x=1>",
                                 "<sip:[2001:db8::9]:5070;lr>")


def test_no_record_route_is_an_empty_route_set():
    assert convert().route_set == ()


# --- Refusals ----------------------------------------------------------------------------------


def test_a_missing_event_header_is_400():
    error = refused(drop=("Event",))
    assert (error.status, error.reason, error.headers) == (400, "Missing Event Header", [])


@pytest.mark.parametrize("value", [
    "", "presence.", ".presence", "presence..winfo", "pres ence", "presence;id", "presence;id=",
    'presence;id="quoted"', "presence, dialog", "presence;", "@presence",
])
def test_an_unparsable_event_header_is_400(value):
    error = refused(Event=value)
    assert (error.status, error.reason) == (400, "Bad Event Header")


def test_two_event_headers_are_400():
    error = refused("Event: dialog")
    assert (error.status, error.reason) == (400, "Bad Event Header")


@pytest.mark.parametrize("value", ["reg", "presence.winfo", "conference;id=1"])
def test_a_package_not_served_is_489_with_allow_events(value):
    error = refused(Event=value)
    assert (error.status, error.reason) == (489, "Bad Event")
    assert error.headers == [("Allow-Events", "presence, dialog, message-summary")]


def test_allowed_events_compare_case_insensitively():
    request = to_subscribe_request(subscribe(Event="Dialog"), ORIGIN, identity=None,
                                   allowed_events=["DIALOG"])
    assert request.event == "dialog"


def test_a_missing_contact_is_400():
    error = refused(drop=("Contact",))
    assert (error.status, error.reason) == (400, "Missing Contact Header")


@pytest.mark.parametrize("extra, contact", [
    ((), "*"),
    ((), "<sip:a@192.0.2.7>, <sip:b@192.0.2.7>"),
    (("Contact: <sip:b@192.0.2.7>",), "<sip:a@192.0.2.7>"),
    ((), "<tel:+15551234>"),
    ((), "<mailto:bob@example.org>"),
    ((), "<sip:bob@192.0.2.7?Subject=hi>"),
])
def test_a_contact_that_is_not_one_sip_uri_is_400(extra, contact):
    error = refused(*extra, Contact=contact)
    assert (error.status, error.reason) == (400, "Bad Contact")


@pytest.mark.parametrize("value", ["-1", "+5", "1.5", "soon", "\u00b2", "\uff11\uff12"])
def test_a_bad_expires_is_400(value):
    error = refused(Expires=value)
    assert (error.status, error.reason) == (400, "Bad Expires")


def test_several_expires_are_400():
    error = refused("Expires: 60")
    assert (error.status, error.reason) == (400, "Bad Expires")


def test_a_missing_from_tag_is_400():
    error = refused(From="<sip:bob@example.org>")
    assert (error.status, error.reason) == (400, "Missing From Tag")


def test_a_cseq_method_other_than_subscribe_is_400():
    # (the parser already refuses a CSeq method differing from the request's)
    error = refused(method="NOTIFY", CSeq="7 NOTIFY")
    assert (error.status, error.reason) == (400, "Bad CSeq")


def test_an_unreadable_request_uri_is_400():
    request = Request("SUBSCRIBE", "sip:", list(subscribe().headers))
    with pytest.raises(BadSubscribe) as caught:
        to_subscribe_request(request, ORIGIN, identity=None, allowed_events=ALLOWED)
    assert (caught.value.status, caught.value.reason) == (400, "Bad Request-URI")


def test_parse_event():
    assert parse_event("presence.winfo;id=a") == ("presence.winfo", "a")
    assert parse_event("Presence;ID=Ab") == ("presence", "Ab")
