"""The SIP server: listeners, the publication committer, timers and graceful shutdown.

PUBLISH requests are queued in arrival order and committed in groups by one worker thread:
while one batch is being saved (one transaction, one fsync), the next one gathers. Every
response of a batch is sent only after its save returned, so no 200 OK precedes
durability, and a single writer keeps per-resource order (DESIGN decisions 3 and 4).
"""

from __future__ import annotations

import asyncio
import errno
import logging
import socket
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Callable, Protocol, Sequence

from domain import PublishRequest, StoreUnavailable

from .limits import DEFAULT_LIMITS, Limits
from .routing import Origin
from .service import Outgoing, PendingPublish, ServiceConfig, SipService
from .transport import TCPProtocol, UDPProtocol

log = logging.getLogger("esc.server")


class PublicationStore(Protocol):
    def process_many(self, requests: Sequence[PublishRequest]) -> list[Any]: ...


@dataclass(frozen=True)
class Listen:
    transport: str  # "udp" | "tcp"
    host: str
    port: int

    @classmethod
    def parse(cls, spec: str) -> "Listen":
        """`udp:HOST:PORT`, `tcp:[::1]:5060`."""
        transport, sep, rest = spec.partition(":")
        transport = transport.lower()
        if not sep or transport not in ("udp", "tcp", "tls"):
            raise ValueError(f"bad --listen {spec!r}: expected udp:, tcp: or tls:HOST:PORT")
        if rest.startswith("["):
            host, _, port_text = rest[1:].partition("]")
            port_text = port_text.lstrip(":")
        else:
            host, _, port_text = rest.rpartition(":")
        if not host or not port_text.isdigit() or not 0 <= int(port_text) <= 65535:
            raise ValueError(f"bad --listen {spec!r}: expected {transport}:HOST:PORT")
        return cls(transport, host, int(port_text))

    def describe(self, port: int | None = None) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{self.transport} {host}:{self.port if port is None else port}"


@dataclass
class ServerConfig:
    listen: list[Listen] = field(default_factory=lambda: [Listen("udp", "0.0.0.0", 5060),
                                                          Listen("tcp", "0.0.0.0", 5060)])
    service: ServiceConfig = field(default_factory=ServiceConfig)
    limits: Limits = DEFAULT_LIMITS
    max_batch: int = 512
    pipeline_depth: int = 2
    tcp_idle_timeout: float = 300.0
    tcp_read_timeout: float = 30.0
    max_tcp_connections: int = 10000
    tls_context: Any = None  # ssl.SSLContext for tls: listeners


class SipServer:
    def __init__(self, store: PublicationStore, config: ServerConfig,
                 announce: Callable[[str], None] = print) -> None:
        self.store = store
        self.config = config
        self.limits = config.limits
        self.service = SipService(config.service)
        self.announce = announce
        self.accepting = False
        self.bound: list[tuple[Listen, int]] = []
        self._loop: asyncio.AbstractEventLoop | None = None
        self._udp: list[asyncio.DatagramTransport] = []
        self._tcp: list[asyncio.AbstractServer] = []
        self._connections: set[TCPProtocol] = set()
        self._queue: list[PendingPublish] = []
        self._wakeup: asyncio.Event | None = None
        self._executor = ThreadPoolExecutor(1, thread_name_prefix="esc-store")
        self._tasks: list[asyncio.Task] = []
        self._in_flight = 0  # requests handed to the store and not yet answered
        self._batches_in_flight = 0
        self._slot: asyncio.Event | None = None

    def now(self) -> float:
        assert self._loop is not None
        return self._loop.time()

    # ---- start / stop ------------------------------------------------------------------------

    async def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._wakeup = asyncio.Event()
        for attempt in range(20):
            try:
                for listen in self.config.listen:
                    await self._bind(listen)
                break
            except OSError as error:
                # Port 0 picks a free UDP port, but the same number may be taken for TCP:
                # with an ephemeral port, start over with another one.
                ephemeral = any(listen.port == 0 for listen in self.config.listen)
                if error.errno != errno.EADDRINUSE or not ephemeral or attempt == 19:
                    self._close_listeners()
                    raise
                self._close_listeners()
        await self._started()

    async def _bind(self, listen: "Listen") -> None:
        assert self._loop is not None
        port = listen.port or self._shared_port(listen)
        if listen.transport == "udp":
            transport, _ = await self._loop.create_datagram_endpoint(
                lambda: UDPProtocol(self), local_addr=(listen.host, port),
                family=_family(listen.host), reuse_port=False)
            sock = transport.get_extra_info("socket")
            for option in (socket.SO_RCVBUF, socket.SO_SNDBUF):
                try:
                    sock.setsockopt(socket.SOL_SOCKET, option, 4 * 1024 * 1024)
                except OSError:
                    pass
            self._udp.append(transport)
            actual = transport.get_extra_info("sockname")[1]
        else:
            tls = listen.transport == "tls"
            if tls and self.config.tls_context is None:
                raise ValueError("a tls: listener needs a certificate and key")
            server = await self._loop.create_server(
                lambda name=listen.transport: TCPProtocol(self, name), host=listen.host,
                port=port, family=_family(listen.host), reuse_address=True, backlog=1024,
                ssl=self.config.tls_context if tls else None,
                ssl_handshake_timeout=10.0 if tls else None)
            self._tcp.append(server)
            actual = server.sockets[0].getsockname()[1]
        self.bound.append((listen, actual))

    def _close_listeners(self) -> None:
        for transport in self._udp:
            transport.close()
        for server in self._tcp:
            server.close()
        self._udp, self._tcp, self.bound = [], [], []

    async def _started(self) -> None:
        attach = getattr(self.store, "attach", None)
        if attach is not None:  # a store that can exchange batches through this loop
            attach(self._loop)
        self.accepting = True
        self._tasks = [asyncio.create_task(self._commit_loop(), name="esc-commit"),
                       asyncio.create_task(self._timer_loop(), name="esc-timers")]
        for listen, actual in self.bound:
            self.announce(f"listening {listen.describe(actual)}")

    def _shared_port(self, listen: Listen) -> int:
        """Port 0 on several transports of one host: share the first one bound, so UDP and
        TCP listen on the same port (RFC 3261 18.2.1)."""
        for other, actual in self.bound:
            if other.host == listen.host and other.port == 0 and \
                    "tls" not in (other.transport, listen.transport):
                return actual
        return 0

    async def stop(self, drain_timeout: float = 10.0) -> None:
        """Stop reading, finish what is in flight, close."""
        self.accepting = False
        for server in self._tcp:
            server.close()
        loop = asyncio.get_running_loop()
        deadline = loop.time() + drain_timeout
        while (self._queue or self._in_flight) and loop.time() < deadline:
            await asyncio.sleep(0.01)
        for task in self._tasks:
            task.cancel()
        for transport in self._udp:
            transport.close()
        for connection in list(self._connections):
            connection.close()
        detach = getattr(self.store, "detach", None)
        if detach is not None:  # back to blocking I/O, so that it can be closed anywhere
            detach()
        self._executor.shutdown(wait=True)

    # ---- messages in ---------------------------------------------------------------------------

    def dispatch(self, message: Any, origin: Origin) -> None:
        try:
            received = self.service.receive(message, origin, self.now())
        except Exception:  # never let one message take the server down
            log.exception("failed to handle a message from %s", origin.describe())
            return
        for outgoing in received.replies:
            self.send(outgoing)
        if received.pending is not None:
            self._queue.append(received.pending)
            assert self._wakeup is not None
            self._wakeup.set()

    def send(self, outgoing: Outgoing) -> None:
        try:
            outgoing.origin.connection.send(outgoing.data, outgoing.destination)
        except Exception as error:
            log.debug("send to %s failed: %s", outgoing.destination, error)

    # ---- group commit -----------------------------------------------------------------------------

    async def _commit_loop(self) -> None:
        """Take queued PUBLISHes in arrival order, a batch at a time, and hand each batch to
        the store. With a store that accepts submissions (the store process), up to
        `pipeline_depth` batches are in flight: the next one travels while the current one
        commits. The store handles them strictly in order, so per-resource order holds."""
        assert self._loop is not None and self._wakeup is not None
        slot = asyncio.Event()
        while True:
            await self._wakeup.wait()
            self._wakeup.clear()
            while self._queue:
                if self._batches_in_flight >= self.config.pipeline_depth:
                    slot.clear()
                    self._slot = slot
                    await slot.wait()
                    continue
                batch = self._queue[: self.config.max_batch]
                del self._queue[: len(batch)]
                self._in_flight += len(batch)
                self._batches_in_flight += 1
                requests = [p.publish for p in batch]
                submit_async = getattr(self.store, "submit_async", None)
                if submit_async is not None and getattr(self.store, "attached", False):
                    # The store process, attached to this loop: no thread in between.
                    asyncio.create_task(self._answer_batch(batch, submit_async(requests)))
                    continue
                # Otherwise one worker thread submits (a blocking store stays off the loop,
                # and a single worker keeps submissions in order).
                submit = getattr(self.store, "submit", None)
                if submit is not None:
                    handed = self._loop.run_in_executor(self._executor, submit, requests)
                else:
                    handed = self._loop.run_in_executor(self._executor, _done_future,
                                                        self.store.process_many, requests)
                asyncio.create_task(self._answer_batch(batch, _unwrap(handed)))

    async def _answer_batch(self, batch: list[PendingPublish], results_future: Any) -> None:
        try:
            results = await results_future
        except Exception as error:
            log.error("compositor failed: %s", error)
            results = [StoreUnavailable(str(error))] * len(batch)
        # The store is done with this batch: let the commit loop hand it the next one
        # before spending time on the answers, so the store process does not sit idle
        # while this process renders and sends them.
        self._batches_in_flight -= 1
        if self._slot is not None:
            self._slot.set()
            await asyncio.sleep(0)
        now = self.now()
        for pending, result in zip(batch, results):
            try:
                self.send(self.service.complete(pending, result, now))
            except Exception:
                log.exception("failed to answer a PUBLISH")
        self._in_flight -= len(batch)

    # ---- timers and connections -----------------------------------------------------------------

    async def _timer_loop(self) -> None:
        while True:
            await asyncio.sleep(0.5)
            now = self.now()
            self.service.tick(now)
            for connection in list(self._connections):
                idle = now - connection.last_activity
                stalled = connection.partial_since is not None and \
                    now - connection.partial_since > self.config.tcp_read_timeout
                if idle > self.config.tcp_idle_timeout or stalled:
                    connection.close()

    def connection_opened(self, connection: TCPProtocol) -> bool:
        if len(self._connections) >= self.config.max_tcp_connections:
            return False
        self._connections.add(connection)
        return True

    def connection_closed(self, connection: TCPProtocol) -> None:
        self._connections.discard(connection)


async def _unwrap(handed: Any) -> Any:
    """The results of a batch submitted through the worker thread."""
    return await asyncio.wrap_future(await handed)


def _done_future(function: Callable[..., Any], *args: Any) -> Future:
    """Run a blocking `process_many` and wrap its result as an already-done future."""
    future: Future = Future()
    future.set_result(function(*args))
    return future


def _family(host: str) -> int:
    return socket.AF_INET6 if ":" in host else socket.AF_INET
