"""The SIP server: listeners, the store gateway, timers and graceful shutdown.

Transports hand every message to `dispatch`; the protocol core (`SipService`) answers it
or returns a PUBLISH for the store, which is `offer`ed to the `StoreGateway`: the one
place that bounds what waits for the store, batches it (group commit), and supervises the
store process. Every response of a batch is sent only after the store said it is durable
(design decision 3); batches are handled in arrival order (decision 4).
"""

from __future__ import annotations

import asyncio
import errno
import logging
import socket
from dataclasses import dataclass, field
from typing import Any, Awaitable, Callable

from domain import SubscribeAccepted
from infrastructure.committer import Committer, Result

from ..protocol.limits import DEFAULT_LIMITS, Limits
from ..protocol.messages import Response
from ..protocol.rate_limit import Verdict
from ..protocol.routing import Origin
from ..protocol.service import Outgoing, Pending, RequestDone, ServiceConfig, SipService
from .notify_sender import NotifySender
from .store_gateway import GatewayConfig, StoreGateway
from .transport import ServerHooks, TCPProtocol, UDPProtocol

log = logging.getLogger("esc.server")


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
    gateway: GatewayConfig = field(default_factory=GatewayConfig)
    tcp_idle_timeout: float = 300.0
    tcp_read_timeout: float = 30.0
    max_tcp_connections: int = 10000
    tls_context: Any = None  # ssl.SSLContext for tls: listeners
    tls_handshake_timeout: float = 10.0


class SipServer:
    """`random_bytes` (a CSPRNG) and `wall_clock` (epoch seconds, for Digest nonces) are
    handed to the protocol core; the loop's monotonic clock is `now` everywhere else."""

    def __init__(self, start_committer: Callable[[], Awaitable[Committer]],
                 config: ServerConfig, *, random_bytes: Callable[[int], bytes],
                 wall_clock: Callable[[], float], announce: Callable[[str], None] = print,
                 on_fatal: Callable[[str], None] | None = None) -> None:
        self.config = config
        self.limits = config.limits
        self.service = SipService(config.service, random_bytes=random_bytes,
                                  wall_clock=wall_clock, local_address=self.local_address)
        # One Retry-After for every 503 the store's absence causes.
        self.service.unavailable_retry_after = config.gateway.retry_after
        self.announce = announce
        self.accepting = False
        self.bound: list[tuple[Listen, int]] = []
        self.fatal: str | None = None  # why the server must exit, once it must
        self._on_fatal = on_fatal
        self._loop: asyncio.AbstractEventLoop | None = None
        self._udp: list[asyncio.DatagramTransport] = []
        self._udp_by_local: dict[tuple[str, int], UDPProtocol] = {}
        self._tcp: list[asyncio.AbstractServer] = []
        self._connections: dict[int, TCPProtocol] = {}  # by serial number
        self._by_peer: dict[tuple[str, str, int], TCPProtocol] = {}  # NOTIFYs find them
        self._local_towards: dict[str, str] = {}  # peer IP -> our IP as it sees us
        self._tasks: list[asyncio.Task] = []
        self._transaction_timer: asyncio.TimerHandle | None = None
        self._request_listeners: list[Callable[[RequestDone], None]] = []
        self.hooks = ServerHooks(
            limits=config.limits, now=self.now, accepting=lambda: self.accepting,
            admit=self.admit, retry_after=self.retry_after, dispatch=self.dispatch,
            connection_opened=self.connection_opened,
            connection_closed=self.connection_closed)
        self.notify_sender = NotifySender(
            find_udp=self._udp_for, find_connection=self._connection_to,
            local_address=self.local_address, random_bytes=random_bytes,
            report=lambda outcomes: self.gateway.report(outcomes), clock=self.now,
            call_at=lambda when, callback: self._loop.call_at(when, callback),  # type: ignore[union-attr]
            call_soon=lambda callback: self._loop.call_soon(callback),  # type: ignore[union-attr]
            user_agent=config.service.server)
        self.gateway = StoreGateway(start_committer, config.gateway, answer=self._answer,
                                    on_availability=self._store_availability,
                                    on_give_up=self._give_up,
                                    on_notifies=self.notify_sender.send, clock=self.now)

    def now(self) -> float:
        assert self._loop is not None
        return self._loop.time()

    def add_request_listener(self, listener: Callable[[RequestDone], None]) -> None:
        """Be told of every request answered with a final response (request logs,
        metrics). Listeners run on the event loop: they must be quick."""
        self._request_listeners.append(listener)
        listeners = tuple(self._request_listeners)

        def tell_all(done: RequestDone) -> None:
            for each in listeners:
                each(done)

        self.service.on_done = listeners[0] if len(listeners) == 1 else tell_all

    # ---- start / stop ------------------------------------------------------------------------

    async def start(self) -> None:
        """Start the store, bind every listener, announce them. Raises if the store cannot
        be opened or a listener cannot be bound."""
        self._loop = asyncio.get_running_loop()
        await self.gateway.start()
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
                    await self.gateway.close()
                    raise
                self._close_listeners()
        await self._started()

    async def _bind(self, listen: "Listen") -> None:
        assert self._loop is not None
        port = listen.port or self._shared_port(listen)
        if listen.transport == "udp":
            transport, protocol = await self._loop.create_datagram_endpoint(
                lambda: UDPProtocol(self.hooks), local_addr=(listen.host, port),
                family=_family(listen.host), reuse_port=False)
            sock = transport.get_extra_info("socket")
            for option in (socket.SO_RCVBUF, socket.SO_SNDBUF):
                try:
                    sock.setsockopt(socket.SOL_SOCKET, option, 4 * 1024 * 1024)
                except OSError:
                    pass
            self._udp.append(transport)
            assert protocol.local is not None
            self._udp_by_local[protocol.local] = protocol
            actual = transport.get_extra_info("sockname")[1]
        else:
            tls = listen.transport == "tls"
            if tls and self.config.tls_context is None:
                raise ValueError("a tls: listener needs a certificate and key")
            # TLS is started on each accepted connection once it is counted (transport.py).
            context = self.config.tls_context if tls else None
            timeout = self.config.tls_handshake_timeout
            server = await self._loop.create_server(
                lambda name=listen.transport: TCPProtocol(self.hooks, name, context, timeout),
                host=listen.host, port=port, family=_family(listen.host),
                reuse_address=True, backlog=1024)
            self._tcp.append(server)
            actual = server.sockets[0].getsockname()[1]
        self.bound.append((listen, actual))

    def _close_listeners(self) -> None:
        for transport in self._udp:
            transport.close()
        for server in self._tcp:
            server.close()
        self._udp, self._tcp, self.bound = [], [], []
        self._udp_by_local = {}

    async def _started(self) -> None:
        self.accepting = True
        self._tasks = [asyncio.create_task(self._connection_sweep(), name="esc-connections")]
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
        await self.gateway.drain(drain_timeout)
        for task in self._tasks:
            task.cancel()
        if self._transaction_timer is not None:
            self._transaction_timer.cancel()
        self.notify_sender.close()
        for transport in self._udp:
            transport.close()
        for connection in list(self._connections.values()):
            connection.close()
        await self.gateway.close()

    # ---- messages in ---------------------------------------------------------------------------

    def admit(self, host: str) -> Verdict:
        """The per-source rate limit's verdict, before the message is even parsed."""
        return self.service.admit(host, self.now())

    def retry_after(self, host: str) -> int:
        return self.service.retry_after(host, self.now())

    def dispatch(self, message: Any, origin: Origin, refused: bool = False) -> None:
        if isinstance(message, Response):  # an answer to one of our NOTIFYs
            self.notify_sender.on_response(message)
            return
        now = self.now()
        try:
            received = self.service.receive(message, origin, now, refused=refused)
        except Exception:  # never let one message take the server down
            log.exception("failed to handle a message from %s", origin.describe())
            return
        for outgoing in received.replies:
            self.send(outgoing)
        pending = received.pending
        if pending is not None:
            refusal = self.gateway.offer(pending, pending.size)
            if refusal is not None:
                self._answer(pending, refusal)
        if self._transaction_timer is None:
            self._arm_transaction_timer()

    def _answer(self, pending: Pending, result: Result) -> None:
        self.send(self.service.complete(pending, result, self.now()))
        if isinstance(result, SubscribeAccepted) and result.notify is not None:
            # The immediate NOTIFY, after the 200 (RFC 6665 section 4.2.1.1 allows either
            # order; this one spares the watcher a NOTIFY for a dialog it has not seen).
            self.notify_sender.send([result.notify])

    # ---- where NOTIFYs go ---------------------------------------------------------------------

    def _udp_for(self, host: str, received_on: str | None = None
                 ) -> tuple[UDPProtocol, Origin] | None:
        """The UDP socket to send a NOTIFY from: the one its SUBSCRIBE reached
        (`received_on`, "host:port") while it is bound, else one of the family of `host`."""
        if received_on is not None:
            local_host, _, port = received_on.rpartition(":")
            local = (local_host.strip("[]"), int(port)) if port.isdigit() else None
            protocol = self._udp_by_local.get(local) if local is not None else None
            if protocol is not None and local is not None:
                return protocol, Origin("udp", (host, 0), None, local)
        want_v6 = ":" in host
        for local, protocol in self._udp_by_local.items():
            if (":" in local[0]) == want_v6:
                return protocol, Origin("udp", (host, 0), None, local)
        return None

    def _connection_to(self, transport: str, host: str, port: int
                       ) -> tuple[TCPProtocol, Origin] | None:
        connection = self._by_peer.get((transport, host, port))
        if connection is None or connection.origin is None:
            return None
        return connection, connection.origin

    def local_address(self, origin: Origin) -> tuple[str, int]:
        """Our address as `origin`'s peer reaches it: the socket's own, or for a wildcard
        UDP listener the source address the kernel picks towards that peer (one connect()
        of a scratch socket per peer address, remembered)."""
        local = origin.local or ("127.0.0.1", 5060)
        host = local[0]
        if host not in ("0.0.0.0", "::"):
            return host, local[1]
        peer = origin.address[0]
        known = self._local_towards.get(peer)
        if known is None:
            try:
                with socket.socket(_family(peer), socket.SOCK_DGRAM) as probe:
                    probe.connect((peer, 9))
                    known = probe.getsockname()[0]
            except OSError:
                known = "::1" if ":" in peer else "127.0.0.1"
            if len(self._local_towards) > 10_000:
                self._local_towards.clear()
            self._local_towards[peer] = known
        return known, local[1]

    def send(self, outgoing: Outgoing) -> None:
        """Send on the connection the request came on, or from the UDP socket it reached,
        to the address routing chose (never to one named in the message)."""
        origin = outgoing.origin
        try:
            if origin.reliable:
                connection = self._connections.get(origin.connection)  # type: ignore[arg-type]
                if connection is not None:
                    connection.send(outgoing.data)
            else:
                udp = self._udp_by_local.get(origin.local)  # type: ignore[arg-type]
                if udp is not None:
                    udp.send(outgoing.data, outgoing.destination)
        except Exception as error:
            log.debug("send to %s failed: %s", outgoing.destination, error)

    # ---- timers -----------------------------------------------------------------------------

    def _arm_transaction_timer(self) -> None:
        """Wake when the transaction table next has something to expire. Deadlines are a
        constant after `now`, so a transaction added later never needs an earlier wake-up;
        with nothing held, the next transaction arms it."""
        deadline = self.service.transactions.next_deadline()
        if deadline is not None and self._loop is not None:
            self._transaction_timer = self._loop.call_at(deadline, self._transaction_timer_fired)

    def _transaction_timer_fired(self) -> None:
        self._transaction_timer = None
        self.service.tick(self.now())
        self._arm_transaction_timer()

    # ---- the store's state ------------------------------------------------------------------------

    def _store_availability(self, available: bool) -> None:
        # While the store is away, OPTIONS is answered 503 too, so that a balancer that
        # pings with OPTIONS (Kamailio's dispatcher does) moves traffic elsewhere.
        self.service.store_available = available

    def _give_up(self, why: str) -> None:
        self.fatal = why
        if self._on_fatal is not None:
            self._on_fatal(why)

    # ---- timers and connections -----------------------------------------------------------------

    async def _connection_sweep(self) -> None:
        """Close idle connections and those that leave a message half-sent. A sweep once a
        second (these timeouts are tens of seconds; a timer per read would cost more)."""
        while True:
            await asyncio.sleep(1.0)
            now = self.now()
            for connection in list(self._connections.values()):
                if connection.handshaking:
                    continue  # the handshake has its own timeout
                idle = now - connection.last_activity
                stalled = connection.partial_since is not None and \
                    now - connection.partial_since > self.config.tcp_read_timeout
                if idle > self.config.tcp_idle_timeout or stalled:
                    connection.close()

    def connection_opened(self, connection: TCPProtocol) -> bool:
        if len(self._connections) >= self.config.max_tcp_connections:
            return False
        self._connections[connection.serial] = connection
        if connection.origin is not None:
            origin = connection.origin
            self._by_peer[(origin.transport, origin.address[0], origin.address[1])] = \
                connection
        return True

    def connection_closed(self, connection: TCPProtocol) -> None:
        self._connections.pop(connection.serial, None)
        origin = connection.origin
        if origin is not None:
            key = (origin.transport, origin.address[0], origin.address[1])
            if self._by_peer.get(key) is connection:
                del self._by_peer[key]

    @property
    def connections(self) -> int:
        return len(self._connections)


def _family(host: str) -> int:
    return socket.AF_INET6 if ":" in host else socket.AF_INET
