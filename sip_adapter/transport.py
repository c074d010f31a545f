"""Thin asyncio transports: the only code here that touches sockets or the loop's clock.

UDP: one datagram, one message (RFC 3261 section 18.3). TCP: a byte stream cut into
messages by the sans-I/O framer; responses go back on the connection the request came on.
Both hand messages to the server's `dispatch(message, origin)`.
"""

from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING, Any

from .framer import StreamFramer
from .parser import ParseError, parse_message
from .routing import Origin

if TYPE_CHECKING:
    from .server import SipServer

log = logging.getLogger("esc.transport")


class UDPProtocol(asyncio.DatagramProtocol):
    def __init__(self, server: "SipServer") -> None:
        self.server = server
        self.transport: asyncio.DatagramTransport | None = None
        self.local: tuple[str, int] | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        self.local = transport.get_extra_info("sockname")[:2]

    def datagram_received(self, data: bytes, addr: tuple[Any, ...]) -> None:
        if not self.server.accepting:
            return
        origin = Origin("udp", (addr[0], addr[1]), self, self.local)
        if len(data) > self.server.limits.max_message_size:
            return  # oversized datagrams are dropped (no reliable way to answer them)
        stripped = data.strip(b"\r\n")
        if not stripped:
            return  # keep-alive
        try:
            message: Any = parse_message(data, self.server.limits)
        except ParseError as error:
            message = error
        except Exception:  # a parser bug must never take the server down
            log.exception("parser failed on a datagram from %s", addr)
            return
        self.server.dispatch(message, origin)

    def send(self, data: bytes, destination: tuple[str, int]) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.transport.sendto(data, destination)

    def error_received(self, exc: Exception) -> None:  # ICMP errors: nothing to do
        log.debug("udp error: %s", exc)


class TCPProtocol(asyncio.Protocol):
    def __init__(self, server: "SipServer", transport_name: str = "tcp") -> None:
        self.server = server
        self.name = transport_name
        self.framer = StreamFramer(server.limits)
        self.transport: asyncio.Transport | None = None
        self.origin: Origin | None = None
        self.last_activity = 0.0
        self.partial_since: float | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        peer = transport.get_extra_info("peername")
        local = transport.get_extra_info("sockname")
        self.origin = Origin(self.name, (peer[0], peer[1]), self, (local[0], local[1]))
        self.last_activity = self.server.now()
        if not self.server.connection_opened(self):
            transport.close()

    def data_received(self, data: bytes) -> None:
        self.last_activity = self.server.now()
        if not self.server.accepting:
            return
        try:
            items = self.framer.feed(data)
        except Exception:
            log.exception("framer failed on data from %s", self.origin)
            self.close()
            return
        pings = self.framer.take_pings()
        if pings:
            # RFC 5626 3.5.1: answer a double-CRLF keep-alive with a single CRLF.
            self.send(b"\r\n" * pings)
        for item in items:
            self.server.dispatch(item, self.origin)
        if self.framer.broken:
            # The stream can no longer be cut into messages: answer what we could, close.
            self.close(after_flush=True)
            return
        self.partial_since = (self.partial_since or self.last_activity) \
            if self.framer.mid_message else None

    def send(self, data: bytes, destination: Any = None) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.transport.write(data)

    def close(self, after_flush: bool = False) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.transport.close()  # close() flushes buffered writes first

    def connection_lost(self, exc: Exception | None) -> None:
        self.server.connection_closed(self)
