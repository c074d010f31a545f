"""The SIP server with the in-process committer: the same gateway, transports and protocol
core as `esc serve`, with the compositor in this process (what embedding and tests use)."""

from __future__ import annotations

import asyncio
import os
import socket
import time

from infrastructure import Compositor
from infrastructure.committer import InProcessCommitter
from sip_adapter.aio.server import Listen, ServerConfig, SipServer

PIDF = (b'<?xml version="1.0"?><presence xmlns="urn:ietf:params:xml:ns:pidf" '
        b'entity="sip:alice@127.0.0.1"><tuple id="t"><status><basic>open</basic>'
        b'</status></tuple></presence>')


def publish(port: int, local: tuple[str, int], branch: str) -> bytes:
    head = (f"PUBLISH sip:alice@127.0.0.1 SIP/2.0\r\n"
            f"Via: SIP/2.0/UDP {local[0]}:{local[1]};branch=z9hG4bK{branch};rport\r\n"
            f"Max-Forwards: 70\r\nFrom: <sip:alice@127.0.0.1>;tag=1\r\n"
            f"To: <sip:alice@127.0.0.1>\r\nCall-ID: {branch}\r\nCSeq: 1 PUBLISH\r\n"
            f"Event: presence\r\nExpires: 60\r\nContent-Type: application/pidf+xml\r\n"
            f"Content-Length: {len(PIDF)}\r\n\r\n")
    return head.encode() + PIDF


def test_a_publish_is_committed_through_the_in_process_committer():
    compositor = Compositor.open("memory://")

    async def main() -> tuple[bytes, bytes]:
        async def start() -> InProcessCommitter:
            return InProcessCommitter(compositor)

        server = SipServer(start, ServerConfig(listen=[Listen("udp", "127.0.0.1", 0)]),
                           random_bytes=os.urandom, wall_clock=time.time,
                           announce=lambda line: None)
        await server.start()
        port = server.bound[0][1]
        loop = asyncio.get_running_loop()
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as client:
            client.bind(("127.0.0.1", 0))
            client.setblocking(False)
            answers = []
            for branch in ("one", "one"):  # the second is a retransmission
                await loop.sock_sendto(client, publish(port, client.getsockname(), branch),
                                       ("127.0.0.1", port))
                answers.append(await asyncio.wait_for(loop.sock_recv(client, 65535), 10))
        await server.stop()
        return answers[0], answers[1]

    try:
        first, again = asyncio.run(main())
        assert first.startswith(b"SIP/2.0 200 OK") and again == first
        live = compositor.publications("sip:alice@127.0.0.1", "presence")
        assert len(live) == 1 and live[0].etag.encode() in first
        assert [e.type for e in compositor.history("sip:alice@127.0.0.1")] == ["Published"]
    finally:
        compositor.close()
