"""NOTIFYs leave from the socket their SUBSCRIBE reached: with UDP listeners on two
addresses, a watcher that subscribed at the second hears from the second (a watcher behind
NAT or a firewall accepts packets only from the address it sent to)."""

from __future__ import annotations

import socket
import time

import pytest

from .conftest import free_port, start_server

pytestmark = pytest.mark.e2e


def subscribe(to: tuple[str, int], port: int) -> bytes:
    return (f"SUBSCRIBE sip:alice@{to[0]} SIP/2.0\r\n"
            f"Via: SIP/2.0/UDP 127.0.0.1:{port};branch=z9hG4bKsrc{port};rport\r\n"
            "Max-Forwards: 70\r\nFrom: <sip:bob@127.0.0.1>;tag=b1\r\n"
            f"To: <sip:alice@{to[0]}>\r\nCall-ID: src-{port}@127.0.0.1\r\n"
            "CSeq: 1 SUBSCRIBE\r\n"
            f"Contact: <sip:bob@127.0.0.1:{port}>\r\nEvent: presence\r\nExpires: 600\r\n"
            "Content-Length: 0\r\n\r\n").encode()


@pytest.mark.parametrize("listener", ["127.0.0.1", "127.0.0.2"])
def test_notifies_come_from_the_address_the_subscribe_reached(tmp_path, listener):
    port = free_port("127.0.0.2")
    server = start_server(tmp_path, "--listen", f"udp:127.0.0.2:{port}", port=port,
                          transports=("udp",))
    try:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
            sock.bind(("127.0.0.1", 0))
            sock.settimeout(5)
            sock.sendto(subscribe((listener, port), sock.getsockname()[1]), (listener, port))
            deadline = time.monotonic() + 5
            while True:
                data, source = sock.recvfrom(65535)
                if data.startswith(b"NOTIFY "):
                    break
                assert time.monotonic() < deadline
            assert source == (listener, port)
            # Its Via names that address too, so the watcher's 200 goes back to it.
            assert f"Via: SIP/2.0/UDP {listener}:{port};".encode() in data
    finally:
        server.stop()
