"""Thin asyncio transports: the only code here that touches sockets or the loop's clock.

UDP: one datagram, one message (RFC 3261 section 18.3). TCP and TLS: a byte stream cut
into messages by the sans-I/O framer; responses go back on the connection the request came
on. Both hand messages to the server's `dispatch(message, origin, refused)`; what they may
ask of the server is `ServerHooks`, nothing more. Origins name a connection by its serial
number, so the protocol core never holds a socket.

Per-source rate limiting comes first, before a byte is parsed: over UDP a datagram over
the limit is parsed only when it is to be answered 503, otherwise dropped; over a
connection, a source over its limit has its reading paused until its bucket refills
(backpressure: the kernel's buffers hold the rest, not ours).

TLS connections are accepted as plain TCP and counted against the connection limit at
once; only then is the TLS layer put in place, so connections that never
complete a handshake cannot hold more descriptors than the limit allows.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import ssl
from asyncio import sslproto
from dataclasses import dataclass
from typing import Any, Callable

from ..protocol.framer import StreamFramer
from ..protocol.limits import Limits
from ..protocol.parser import ParseError, parse_message
from ..protocol.rate_limit import Verdict
from ..protocol.routing import Origin

log = logging.getLogger("esc.transport")

# Connection serial numbers: how the protocol core names a TCP/TLS connection (Origin,
# transaction keys) without holding the connection object.
_SERIALS = itertools.count(1)


@dataclass(frozen=True)
class ServerHooks:
    """What a transport may ask of the server, and nothing more."""

    limits: Limits
    now: Callable[[], float]
    accepting: Callable[[], bool]
    admit: Callable[[str], Verdict]  # the rate limit's verdict for a source address
    retry_after: Callable[[str], int]
    dispatch: Callable[[Any, Origin, bool], None]  # (message or ParseError, origin, refused)
    connection_opened: Callable[["TCPProtocol"], bool]  # False: over the limit, close it
    connection_closed: Callable[["TCPProtocol"], None]


class UDPProtocol(asyncio.DatagramProtocol):
    def __init__(self, server: ServerHooks) -> None:
        self.server = server
        self.transport: asyncio.DatagramTransport | None = None
        self.local: tuple[str, int] | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        self.local = transport.get_extra_info("sockname")[:2]

    def datagram_received(self, data: bytes, addr: tuple[Any, ...]) -> None:
        server = self.server
        if not server.accepting():
            return
        if len(data) > server.limits.max_message_size:
            return  # oversized datagrams are dropped (no reliable way to answer them)
        verdict = server.admit(addr[0])
        if verdict is Verdict.DROP:
            return
        stripped = data.strip(b"\r\n")
        if not stripped:
            return  # keep-alive
        origin = Origin("udp", (addr[0], addr[1]), None, self.local)
        try:
            message: Any = parse_message(data, server.limits)
        except ParseError as error:
            message = error
        except Exception:  # a parser bug must never take the server down
            log.exception("parser failed on a datagram from %s", addr)
            return
        server.dispatch(message, origin, verdict is Verdict.REFUSE)

    def send(self, data: bytes, destination: tuple[str, int]) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.transport.sendto(data, destination)

    def error_received(self, exc: Exception) -> None:  # ICMP errors: nothing to do
        log.debug("udp error: %s", exc)


class TCPProtocol(asyncio.Protocol):
    def __init__(self, server: ServerHooks, transport_name: str = "tcp",
                 tls_context: ssl.SSLContext | None = None,
                 handshake_timeout: float = 10.0) -> None:
        self.server = server
        self.name = transport_name
        self.serial = next(_SERIALS)
        self.framer = StreamFramer(server.limits)
        self.transport: asyncio.Transport | None = None
        self.origin: Origin | None = None
        self.last_activity = 0.0
        self.partial_since: float | None = None
        self._tls_context = tls_context
        self._handshake_timeout = handshake_timeout
        self._handshake: asyncio.Future | None = None  # set while the TLS handshake runs
        self._paused_until: float | None = None
        self._closed = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        if self._tls_context is not None and self._handshake is not None:
            # The TLS layer calls this once the handshake is done: from here on we talk
            # through the secured transport.
            self._handshake = None
            self.transport = transport  # type: ignore[assignment]
            self.last_activity = self.server.now()
            return
        self.transport = transport  # type: ignore[assignment]
        peer = transport.get_extra_info("peername")
        local = transport.get_extra_info("sockname")
        self.origin = Origin(self.name, (peer[0], peer[1]), self.serial, (local[0], local[1]))
        self.last_activity = self.server.now()
        if not self.server.connection_opened(self):
            self._closed = True
            transport.close()
            return
        if self._tls_context is not None:
            self._start_tls(transport)

    def _start_tls(self, raw: asyncio.BaseTransport) -> None:
        """Put the TLS layer between the socket and us, now, before any byte is read: the
        same SSLProtocol that `create_server(ssl=...)` uses, installed by hand so that the
        connection is counted (and refused past the limit) before its handshake.
        (`loop.start_tls` from a task would leave a window in which the ClientHello can be
        read by the plain protocol; with uvloop it also stalls after pause_reading.)"""
        loop = asyncio.get_running_loop()
        waiter = loop.create_future()
        self._handshake = waiter
        secure = sslproto.SSLProtocol(loop, self, self._tls_context, waiter, server_side=True,
                                      ssl_handshake_timeout=self._handshake_timeout)
        raw.set_protocol(secure)
        secure.connection_made(raw)
        waiter.add_done_callback(lambda done: self._handshake_done(done, raw))

    def _handshake_done(self, done: asyncio.Future, raw: asyncio.BaseTransport) -> None:
        error = done.exception() if not done.cancelled() else asyncio.CancelledError()
        if error is None:
            return
        # Failed or timed out: the TLS layer never handed us the connection, so it will not
        # tell us it is lost either; give its place back here.
        log.debug("TLS handshake with %s failed: %s", self.origin, error)
        self._handshake = None
        raw.close()
        self.connection_lost(None)

    @property
    def handshaking(self) -> bool:
        return self._handshake is not None

    def data_received(self, data: bytes) -> None:
        server = self.server
        self.last_activity = server.now()
        if not server.accepting():
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
        assert self.origin is not None
        for item in items:
            verdict = server.admit(self.origin.address[0])
            if verdict is not Verdict.ADMIT:
                self._pause_for(server.retry_after(self.origin.address[0]))
            if verdict is Verdict.DROP:
                continue
            server.dispatch(item, self.origin, verdict is Verdict.REFUSE)
        if self.framer.broken:
            # The stream can no longer be cut into messages: answer what we could, close.
            self.close()
            return
        self.partial_since = (self.partial_since or self.last_activity) \
            if self.framer.mid_message else None

    def _pause_for(self, seconds: float) -> None:
        """Stop reading this connection until the source's bucket has refilled."""
        if self._paused_until is not None or self.transport is None:
            return
        try:
            self.transport.pause_reading()
        except Exception:
            return
        self._paused_until = self.server.now() + seconds
        asyncio.get_running_loop().call_later(seconds, self._resume)

    def _resume(self) -> None:
        self._paused_until = None
        if self.transport is not None and not self.transport.is_closing():
            try:
                self.transport.resume_reading()
            except Exception:
                pass

    def send(self, data: bytes, destination: Any = None) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.transport.write(data)

    def close(self) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.transport.close()  # close() flushes buffered writes first

    def connection_lost(self, exc: Exception | None) -> None:
        if not self._closed:
            self._closed = True
            self.server.connection_closed(self)
