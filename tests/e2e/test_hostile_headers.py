"""Hostile header values against a running `esc serve`, over real sockets: every one gets an
answer (or, where answering would echo a flood, is dropped), none is misread, none costs the
server more than a few milliseconds, and the server goes on serving.

- Expires that is not ASCII digits ("²", "١٢٣", "１٢٣") is a 400; it used to be a traceback
  and no answer ("²"), or 123 seconds granted ("١٢٣"). A 5,000-digit Expires is read as
  2**32-1 and granted the server's maximum (it used to be a traceback and no answer).
- A user part with "?" names that user at its host (it used to be stored as the resource
  "sip:alice"); the fully qualified spelling of a host is the same resource.
- Messages of 64 KB made of thousands of list elements or parameters are refused with 413
  (or dropped, for thousands of Vias) at once.
"""

from __future__ import annotations

import time

import pytest

from .test_limits import (HOST, Tcp, Udp, assert_still_serving, live, pidf, publish,
                          request)

pytestmark = pytest.mark.e2e


@pytest.mark.parametrize("expires", ["\u00b2", "\u0661\u0662\u0663", "\uff11\uff12\uff13",
                                     "-1", "1.5", ""])
def test_an_expires_that_is_not_ascii_digits_is_400(server_factory, expires):
    server = server_factory("--min-expires", "1")
    aor = f"sip:alice@{HOST}"
    udp = Udp(server)
    try:
        data = publish(aor, local=udp.local, body=pidf(aor)).replace(
            b"Expires: 600", f"Expires: {expires}".encode())
        answer = udp.ask(data)
        assert answer.status == 400, f"{answer.status} {answer.reason}"
    finally:
        udp.close()
    assert live(server) == []
    assert_still_serving(server)


def test_a_5000_digit_expires_is_granted_the_maximum(server_factory):
    server = server_factory("--max-expires", "3600")
    aor = f"sip:alice@{HOST}"
    udp = Udp(server)
    try:
        data = publish(aor, local=udp.local, body=pidf(aor)).replace(
            b"Expires: 600", b"Expires: " + b"9" * 5000)
        answer = udp.ask(data)
        assert answer.status == 200 and answer.headers["expires"] == "3600"
    finally:
        udp.close()


def test_the_user_part_may_hold_a_question_mark(server_factory):
    server = server_factory("--domain", "example.org", "--min-expires", "1")
    udp = Udp(server)
    try:
        for uri in ("sip:alice?x=1@example.org", "sip:bob@example.org."):
            answer = udp.ask(publish(uri, local=udp.local, body=pidf(uri)))
            assert answer.status == 200, f"{uri}: {answer.status} {answer.reason}"
    finally:
        udp.close()
    assert sorted(row["aor"] for row in live(server)) == [
        "sip:alice?x=1@example.org", "sip:bob@example.org"]


def flood(name: bytes, unit: bytes, size: int = 60_000) -> bytes:
    """An OPTIONS padded with `name: unit,unit,...` lines up to about `size` bytes."""
    line = name + b": " + b",".join([unit] * ((8000 - len(name)) // (len(unit) + 1)))
    base = request("OPTIONS", f"sip:{HOST}", local=(HOST, 5060))
    head, _, _ = base.partition(b"\r\n\r\n")
    lines = [line] * ((size - len(head)) // (len(line) + 2))
    return head + b"\r\n" + b"\r\n".join(lines) + b"\r\n\r\n"


@pytest.mark.parametrize("name, unit, answered", [
    (b"Require", b"x", True),
    (b"Contact", b"sip:a@b", True),
    (b"Route", b"<sip:a@b;lr>", True),
    (b"Via", b"SIP/2.0/UDP h", False),  # answering would echo thousands of Vias
])
def test_floods_of_list_elements_are_refused_at_once(server_factory, name, unit, answered):
    server = server_factory()
    udp = Udp(server)
    try:
        data = flood(name, unit).replace(b"127.0.0.1:5060", b"%s:%d" % (
            udp.local[0].encode(), udp.local[1]), 1)
        start = time.monotonic()
        for _ in range(20):
            udp.send(data)
            answer = udp.receive(timeout=2.0 if answered else 0.3)
            if answered:
                assert answer is not None and answer.status == 413, answer
            else:
                assert answer is None
        if answered:
            # 20 floods of 60 KB, parsed and answered: well under a second (they cost over
            # 15 ms each to parse before the limits)
            assert time.monotonic() - start < 2.0
    finally:
        udp.close()
    assert_still_serving(server)


def test_a_flood_over_tcp_is_answered_and_the_stream_goes_on(server_factory):
    server = server_factory()
    tcp = Tcp(server)
    try:
        tcp.send(flood(b"Supported", b"x").replace(b"SIP/2.0/UDP", b"SIP/2.0/TCP", 1))
        answer = tcp.receive()
        assert answer is not None and answer.status == 413
        assert tcp.options().status == 200
    finally:
        tcp.close()
