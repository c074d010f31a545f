"""An attacker's view of the notifier: a flood of SUBSCRIBEs from one address that never
answers a NOTIFY, each naming a third party as its Contact. Past --max-subscriptions the
answer is 503 with Retry-After; memory stays bounded; NOTIFYs go to the flooding address,
never to the Contact's host; a killed store process comes back holding the same
subscriptions; and PUBLISH is served throughout. (Unanswered NOTIFYs end their
subscriptions after Timer F, 32 s: tests/unit/test_client_transactions.py and the SIPp
tests cover that.)"""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import time

import pytest

from .test_limits import HOST
from .test_resilience import rss_mb, store_pid

pytestmark = pytest.mark.e2e

LIMIT = 2000
FLOOD = 6000


def subscribe(n: int, port: int) -> bytes:
    return (f"SUBSCRIBE sip:res{n % 500}@{HOST} SIP/2.0\r\n"
            f"Via: SIP/2.0/UDP {HOST}:{port};branch=z9hG4bKflood{n};rport\r\n"
            "Max-Forwards: 70\r\n"
            f"From: <sip:attacker@{HOST}>;tag=f{n}\r\n"
            f"To: <sip:res{n % 500}@{HOST}>\r\n"
            f"Call-ID: flood-{n}@{HOST}\r\nCSeq: 1 SUBSCRIBE\r\n"
            f"Contact: <sip:victim@192.0.2.1:5060>\r\n"  # never where NOTIFYs go
            "Event: presence\r\nExpires: 3600\r\nContent-Length: 0\r\n\r\n").encode()


def drain(sock: socket.socket, into: list[bytes]) -> None:
    while True:
        try:
            into.append(sock.recv(65535))
        except (BlockingIOError, InterruptedError):
            return


def statuses(messages: list[bytes]) -> dict[int, int]:
    counts: dict[int, int] = {}
    for data in messages:
        match = re.match(rb"SIP/2\.0 (\d{3}) ", data)
        if match:
            counts[int(match.group(1))] = counts.get(int(match.group(1)), 0) + 1
    return counts


def test_a_subscribe_flood_is_bounded_and_reflects_nothing(server_factory):
    server = server_factory("--max-subscriptions", str(LIMIT), "--rate-limit", "0",
                            "--min-expires", "1")
    target = (HOST, server.ports["udp"])
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 16 * 1024 * 1024)
    sock.bind((HOST, 0))
    sock.setblocking(False)
    port = sock.getsockname()[1]
    received: list[bytes] = []
    rss_before = rss_mb(server.process.pid) + rss_mb(store_pid(server))
    try:
        for n in range(FLOOD):
            sock.sendto(subscribe(n, port), target)
            if n % 100 == 99:
                time.sleep(0.02)
                drain(sock, received)
        deadline = time.monotonic() + 15
        while statuses(received).get(200, 0) + statuses(received).get(503, 0) < FLOOD and \
                time.monotonic() < deadline:
            time.sleep(0.1)
            drain(sock, received)
        counts = statuses(received)
        # Every SUBSCRIBE answered: at most LIMIT accepted, the rest refused with 503.
        assert counts.get(200, 0) + counts.get(503, 0) == FLOOD, counts
        assert counts.get(200, 0) == LIMIT, counts
        refusal = next(r for r in received if r.startswith(b"SIP/2.0 503"))
        assert re.search(rb"\r\nRetry-After: \d+\r\n", refusal)
        notifies = [r for r in received if r.startswith(b"NOTIFY sip:victim@192.0.2.1")]
        assert notifies, "NOTIFYs go to where the SUBSCRIBE came from, with its Contact as URI"
        rss_after = rss_mb(server.process.pid) + rss_mb(store_pid(server))
        # 2,000 subscriptions and their NOTIFY transactions: a few MB, not the flood's size.
        assert rss_after - rss_before < 60, (rss_before, rss_after)

        # The store process is killed: a new one holds the same subscriptions.
        os.kill(store_pid(server), signal.SIGKILL)
        deadline = time.monotonic() + 15
        while True:
            rows = json.loads(server.esc("watchers", "--json").stdout)
            if len(rows) == LIMIT:
                break
            assert time.monotonic() < deadline, len(rows)
            time.sleep(0.5)
        # A PUBLISH is still served while the watchers' NOTIFYs go unanswered.
        publish = (f"PUBLISH sip:res1@{HOST} SIP/2.0\r\n"
                   f"Via: SIP/2.0/UDP {HOST}:{port};branch=z9hG4bKpub{{attempt}};rport\r\n"
                   f"Max-Forwards: 70\r\nFrom: <sip:res1@{HOST}>;tag=p\r\n"
                   f"To: <sip:res1@{HOST}>\r\nCall-ID: pub@{HOST}\r\nCSeq: 1 PUBLISH\r\n"
                   "Event: presence\r\nExpires: 60\r\n"
                   "Content-Type: application/pidf+xml\r\n")
        body = (f'<presence xmlns="urn:ietf:params:xml:ns:pidf" entity="sip:res1@{HOST}">'
                '<tuple id="t"><status><basic>open</basic></status></tuple></presence>')
        received.clear()
        deadline = time.monotonic() + 10
        attempt = 0
        while 200 not in statuses([r for r in received if b"CSeq: 1 PUBLISH" in r]):
            assert time.monotonic() < deadline, statuses(received)
            attempt += 1  # a new transaction each time (503s while the store restarts)
            sock.sendto((publish.replace("{attempt}", str(attempt)) +
                         f"Content-Length: {len(body)}\r\n\r\n" + body).encode(), target)
            time.sleep(0.5)
            drain(sock, received)
    finally:
        sock.close()
    assert server.process.poll() is None
