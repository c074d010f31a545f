"""The SIP side of the compositor, without sockets: requests in, responses out.

`SipService.receive()` takes a parsed message (or a parse error) and where it came from,
runs it through the non-INVITE server transaction table, and either answers it at once
(OPTIONS, 405, 420, 400, 404, retransmissions) or returns a `PendingPublish` for the
compositor. The transport runs pending publications in batches (group commit) and hands
each result to `complete()`, which builds, records and routes the final response.
Time is always passed in (`now`); nothing here reads a clock or touches a socket.
"""

from __future__ import annotations

import ipaddress
import logging
import secrets
from dataclasses import dataclass, field
from typing import Callable, Protocol, TypeAlias

from domain import CompositorError, PublishRequest, SubscribeAccepted, SubscribeRequest

from .authorization import Policy
from .digest import Authenticated, DigestAuthenticator
from .error_responses import response_for
from .messages import Request, Response
from .parser import ParseError
from .publish_request import BadPublish, to_publish_request, user_agent_address
from .responses import render_response
from .rate_limit import RateLimiter, Verdict
from .routing import Origin, response_port
from .subscribe_request import BadSubscribe, to_subscribe_request
from .transactions import Full, New, Retransmit, TransactionKey, TransactionTable

log = logging.getLogger("esc.service")

ALLOWED_METHODS = ("PUBLISH", "OPTIONS")
ALLOW_HEADER = ", ".join(ALLOWED_METHODS + ("ACK", "CANCEL"))
#: With the notifier on, SUBSCRIBE is served too.
ALLOW_HEADER_WITH_SUBSCRIBE = ", ".join(("PUBLISH", "SUBSCRIBE", "OPTIONS", "ACK", "CANCEL"))
#: Methods defined by RFC 3261 and its extensions that we recognise but do not serve (405).
#: A trusted peer's network (ServiceConfig.trusted_peers).
TrustedNetwork: TypeAlias = ipaddress.IPv4Network | ipaddress.IPv6Network

KNOWN_METHODS = frozenset({"INVITE", "BYE", "REGISTER", "SUBSCRIBE", "NOTIFY", "MESSAGE",
                           "INFO", "PRACK", "UPDATE", "REFER"})


@dataclass(frozen=True)
class ServiceConfig:
    allowed_events: tuple[str, ...] = ("presence", "dialog", "message-summary")
    accepted_types: tuple[str, ...] = ("application/pidf+xml", "application/dialog-info+xml",
                                       "application/simple-message-summary")
    domains: tuple[str, ...] = ()  # empty: serve every domain
    server: str = "esc/0.1"
    supported: tuple[str, ...] = ()  # option tags we implement (Require check)
    rate_limit: float | None = None  # requests per second per source address
    rate_burst: float | None = None
    max_body_per_package: tuple[tuple[str, int], ...] = ()  # (package, bytes)
    authenticator: DigestAuthenticator | None = None  # Digest on for PUBLISH
    policy: Policy | None = None  # who may publish for what (default rule: own AOR only)
    max_transactions: int = 400_000  # transaction table bounds (503 past them)
    max_transaction_bytes: int = 512 * 1024 * 1024
    subscribe: bool = False  # serve SUBSCRIBE (the store runs a notifier)
    # Proxies that authenticate their own users (Kamailio's pua modules, which cannot answer
    # a challenge): a request whose packet source is in one of these skips Digest and the
    # publish/watch policy, and a PUBLISH's audit records its originating user agent (the
    # bottom-most Via) next to the proxy's address.
    trusted_peers: tuple[TrustedNetwork, ...] = ()


class Accepted(Protocol):
    """The compositor's answer to a PUBLISH it accepted (infrastructure.records.Accepted),
    as the core reads it: typed by its shape, since the core depends on domain/ only."""

    @property
    def etag(self) -> str: ...

    @property
    def expires(self) -> int: ...


#: What the compositor answers each PUBLISH or SUBSCRIBE with.
PublishResult: TypeAlias = Accepted | SubscribeAccepted | CompositorError


@dataclass
class Outgoing:
    """Bytes to send, and where: the request's origin, at `port` for UDP."""

    data: bytes
    origin: Origin
    destination: tuple[str, int]


@dataclass
class PendingPublish:
    """A PUBLISH waiting for the compositor."""

    request: Request
    publish: PublishRequest
    origin: Origin
    key: TransactionKey
    received_at: float = 0.0
    size: int = 0  # bytes of SIP message it holds while it waits (admission control)

    @property
    def command(self) -> PublishRequest:
        """What the store decides."""
        return self.publish


@dataclass
class PendingSubscribe:
    """A SUBSCRIBE waiting for the notifier (it travels the PUBLISH path: same queue,
    same bounds, same batches)."""

    request: Request
    subscribe: SubscribeRequest
    origin: Origin
    key: TransactionKey
    received_at: float = 0.0
    size: int = 0

    @property
    def command(self) -> SubscribeRequest:
        return self.subscribe


Pending: TypeAlias = PendingPublish | PendingSubscribe


@dataclass(frozen=True)
class RequestDone:
    """One request answered with its final response: what a request log line and the
    request metrics are made of. Times are the caller's clock (`now`)."""

    method: str
    status: int
    resource: str | None  # the address of record, when the Request-URI has one
    event: str | None  # the Event header as sent
    origin: Origin
    call_id: str | None
    identity: str | None  # the authenticated user, when known
    received_at: float
    answered_at: float
    body: bytes = b""  # the request's body (for --log-bodies only)

    @property
    def duration(self) -> float:
        return max(0.0, self.answered_at - self.received_at)


@dataclass
class Received:
    replies: list[Outgoing] = field(default_factory=list)
    pending: Pending | None = None


class SipService:
    """The protocol core of the server. `random_bytes` is the CSPRNG To-tags come from;
    `wall_clock` gives epoch seconds, which Digest nonces are stamped with (every other
    time, `now`, is the caller's monotonic clock). Both are handed in by the composition
    root; nothing here reads a clock or a random source of its own."""

    def __init__(self, config: ServiceConfig = ServiceConfig(),
                 transactions: TransactionTable | None = None, *,
                 random_bytes: Callable[[int], bytes] = secrets.token_bytes,
                 wall_clock: Callable[[], float] | None = None,
                 local_address: Callable[[Origin], tuple[str, int]] | None = None) -> None:
        self.config = config
        # Our address as the peer reaches it (the Contact of a SUBSCRIBE's 200): given by
        # the transport layer, which can ask the kernel; by default the listener's own.
        self.local_address = local_address or _listener_address
        self.allow_header = ALLOW_HEADER_WITH_SUBSCRIBE if config.subscribe else ALLOW_HEADER
        self.transactions = transactions if transactions is not None else TransactionTable(
            max_entries=config.max_transactions, max_bytes=config.max_transaction_bytes)
        self.random_bytes = random_bytes
        if config.authenticator is not None and wall_clock is None:
            raise ValueError("Digest authentication needs a wall clock (epoch seconds)")
        self.wall_clock = wall_clock
        self.domains = {d.lower().rstrip(".") for d in config.domains}
        self.limiter = RateLimiter(config.rate_limit, config.rate_burst) \
            if config.rate_limit else None
        self.max_body = dict(config.max_body_per_package)
        self.trusted_peers = config.trusted_peers
        # Set by the server: False while the store is restarting (PUBLISH and OPTIONS are
        # then answered 503, so that OPTIONS-pinging balancers fail over).
        self.store_available = True
        self.unavailable_retry_after = 2
        self.stats = {"requests": 0, "retransmissions": 0, "parse_errors": 0, "dropped": 0}
        # Told of every request answered with a final response (request logs, metrics);
        # None: nobody listens, and nothing is built.
        self.on_done: Callable[[RequestDone], None] | None = None

    def reconfigure(self, config: ServiceConfig) -> None:
        """Serve with new settings from the next request on (a reload: the policy, the
        trusted peers). The transaction table, limiter and listeners stay as they are."""
        self.config = config
        self.trusted_peers = config.trusted_peers

    # ---- in -------------------------------------------------------------------------------

    def admit(self, source: str, now: float) -> Verdict:
        """The per-source rate limit, asked before a message is parsed (so it covers
        retransmissions too): admit it, refuse it with a 503, or drop it unanswered."""
        if self.limiter is None:
            return Verdict.ADMIT
        verdict = self.limiter.check(source, now)
        if verdict is not Verdict.ADMIT:
            self.stats["rate_limited"] = self.stats.get("rate_limited", 0) + 1
        return verdict

    def retry_after(self, source: str, now: float) -> int:
        return self.limiter.retry_after(source, now) if self.limiter is not None else 1

    def receive(self, message: Request | Response | ParseError, origin: Origin, now: float,
                refused: bool = False) -> Received:
        """`refused`: the rate limiter's verdict was REFUSE: answer 503 with Retry-After,
        keep nothing."""
        if isinstance(message, ParseError):
            if refused:
                return Received()
            return self._parse_error(message, origin, now)
        if not isinstance(message, Request):
            return Received()  # a response: we are a UAS only, nothing to match it to
        self.stats["requests"] += 1
        request = message
        if refused:
            if request.method == "ACK":
                return Received()
            retry = self.retry_after(origin.address[0], now)
            return self._answer(request, origin, None, now, 503, "Rate Limit Exceeded",
                                [("Retry-After", str(retry))])
        # Transactions are bound to their source: a UDP address, or one connection.
        connection = origin.connection if origin.reliable else None
        decision = self.transactions.on_request(request, origin.address, origin.transport, now,
                                                connection)
        if isinstance(decision, Full):
            # The table is at its bound: refuse new work rather than grow (keep nothing).
            self.stats["table_full"] = self.stats.get("table_full", 0) + 1
            if request.method == "ACK":
                return Received()
            return self._answer(request, origin, None, now, 503, "Service Unavailable",
                                [("Retry-After", str(decision.retry_after))])
        if isinstance(decision, Retransmit):
            self.stats["retransmissions"] += 1
            return Received([self._route(decision.response, request, origin)])
        if not isinstance(decision, New):
            self.stats["retransmissions"] += 1
            return Received()
        key = decision.key
        if request.method == "ACK":
            return Received()
        try:
            return self._handle(request, origin, key, now, decision.cancel_target)
        except Exception as error:
            # A fault of ours on this message: answer it 500 (which also completes its
            # transaction) rather than leave it open and its client retransmitting.
            log.error("internal error handling %s from %s: %s: %s", request.method,
                      origin.describe(), type(error).__name__, error)
            return self._answer(request, origin, key, now, 500, "Server Internal Error")

    def _handle(self, request: Request, origin: Origin, key: TransactionKey, now: float,
                cancels_a_transaction: bool) -> Received:
        method = request.method
        if method != "CANCEL":
            try:
                request.parsed_uri  # noqa: B018 - sip:/sips: only (RFC 3261 8.2.2.1)
            except ParseError as error:
                return self._answer(request, origin, key, now, error.status,
                                    "Unsupported URI Scheme" if error.status == 416
                                    else "Bad Request-URI")
            unsupported = self._unsupported(request)
            if unsupported:
                return self._answer(request, origin, key, now, 420, "Bad Extension",
                                    [("Unsupported", ", ".join(unsupported))])
        if not self.store_available and method in ("OPTIONS", "PUBLISH", "SUBSCRIBE"):
            return self._answer(request, origin, key, now, 503, "Service Unavailable",
                                [("Retry-After", str(self.unavailable_retry_after))])
        if method == "OPTIONS":
            return self._answer(request, origin, key, now, 200, "OK", self._capabilities())
        if method == "PUBLISH":
            return self._publish(request, origin, key, now)
        if method == "SUBSCRIBE" and self.config.subscribe:
            return self._subscribe(request, origin, key, now)
        if method == "CANCEL":
            # RFC 3261 9.2: a CANCEL that matches a transaction is answered 200 (for a
            # non-INVITE it has no effect on it: that request gets its own final answer);
            # one that matches nothing, 481.
            if cancels_a_transaction:
                return self._answer(request, origin, key, now, 200, "OK")
            return self._answer(request, origin, key, now, 481,
                                "Call/Transaction Does Not Exist")
        if method in KNOWN_METHODS:
            return self._answer(request, origin, key, now, 405, "Method Not Allowed",
                                [("Allow", self.allow_header)])
        # RFC 3261 21.5.2: a method we do not recognise at all is 501, with Allow.
        return self._answer(request, origin, key, now, 501, "Not Implemented",
                            [("Allow", self.allow_header)])

    def _authorize(self, request: Request, origin: Origin, key: TransactionKey,
                   now: float, watching: bool, trusted: bool = False,
                   in_dialog: bool = False) -> str | None | Received:
        """The domain check, Digest, and who may publish for (or watch) the resource: the
        authenticated identity (None without --auth-file, or from a trusted peer, which
        skips Digest and the policy), or the answer that refuses.

        `in_dialog`: a SUBSCRIBE refreshing or ending a subscription, sent (RFC 3261
        12.2.1.1) to the Contact of our 200, not to the resource: its Request-URI names us,
        so the domain and the policy are not asked about it; Digest still is, and the
        notifier lets only the subscriber change a subscription."""
        if self.domains and not in_dialog:
            host = _uri_host(request)
            if host is None or host not in self.domains:
                return self._answer(request, origin, key, now, 404, "Domain Not Served Here")
        authenticator = self.config.authenticator
        if authenticator is None or trusted:
            return None
        assert self.wall_clock is not None
        result = authenticator.authenticate(request, self.wall_clock())
        if not isinstance(result, Authenticated):
            return self._answer(request, origin, key, now, result.status, result.phrase,
                                list(result.headers))
        identity = result.username
        if in_dialog:
            return identity
        try:
            resource = request.aor  # the one address-of-record rule (domain/resource.py)
        except ParseError:
            return self._answer(request, origin, key, now, 400, "Bad Request-URI")
        policy = self.config.policy or Policy()
        if watching:
            if not policy.may_watch(identity, resource, authenticator.realm):
                return self._answer(request, origin, key, now, 403,
                                    "Not Allowed To Watch This Resource")
        elif not policy.allows(identity, resource, authenticator.realm):
            return self._answer(request, origin, key, now, 403,
                                "Not Allowed To Publish For This Resource")
        return identity

    def _subscribe(self, request: Request, origin: Origin, key: TransactionKey,
                   now: float) -> Received:
        to = request.to
        identity = self._authorize(request, origin, key, now, watching=True,
                                   trusted=self._trusted(origin),
                                   in_dialog=to is not None and to.tag is not None)
        if isinstance(identity, Received):
            return identity
        try:
            subscribe = to_subscribe_request(request, origin, identity=identity,
                                             allowed_events=list(self.config.allowed_events))
        except BadSubscribe as error:
            return self._answer(request, origin, key, now, error.status, error.reason,
                                error.headers)
        size = len(request.body) + sum(len(n) + len(v) for n, v in request.headers)
        return Received(pending=PendingSubscribe(request, subscribe, origin, key, now, size))

    def _publish(self, request: Request, origin: Origin, key: TransactionKey,
                 now: float) -> Received:
        trusted = self._trusted(origin)
        identity = self._authorize(request, origin, key, now, watching=False, trusted=trusted)
        if isinstance(identity, Received):
            return identity
        try:
            publish = to_publish_request(
                request, origin, identity=identity,
                allowed_events=list(self.config.allowed_events),
                # From anyone else a Via is only a claim: recorded for trusted peers only.
                user_agent_source=user_agent_address(request) if trusted else None)
        except BadPublish as error:
            return self._answer(request, origin, key, now, error.status, error.reason,
                                error.headers)
        limit = self.max_body.get(publish.event.split(";", 1)[0].strip().lower())
        if limit is not None and publish.body is not None and len(publish.body) > limit:
            return self._answer(request, origin, key, now, 413, "Body Too Large For Package")
        size = len(request.body) + sum(len(n) + len(v) for n, v in request.headers)
        return Received(pending=PendingPublish(request, publish, origin, key, now, size))

    # ---- out ------------------------------------------------------------------------------

    def complete(self, pending: Pending, result: PublishResult, now: float) -> Outgoing:
        """The store's answer (Accepted, SubscribeAccepted or CompositorError) as the final
        response."""
        try:
            to_tag = None
            if isinstance(result, CompositorError):
                status, reason, headers = response_for(result)
            elif isinstance(result, SubscribeAccepted):
                status, reason, to_tag = 200, "OK", result.local_tag
                headers = [("Expires", str(result.expires)),
                           ("Contact", self._contact(pending.origin))]
            else:
                status, reason = 200, "OK"
                headers = [("SIP-ETag", result.etag), ("Expires", str(result.expires))]
            return self._answer(pending.request, pending.origin, pending.key, now, status,
                                reason, headers, to_tag=to_tag, pending=pending).replies[0]
        except Exception as error:  # never leave the transaction open
            log.error("internal error answering a PUBLISH from %s: %s: %s",
                      pending.origin.describe(), type(error).__name__, error)
            return self._answer(pending.request, pending.origin, pending.key, now, 500,
                                "Server Internal Error", pending=pending).replies[0]

    def _answer(self, request: Request, origin: Origin, key: TransactionKey | None, now: float,
                status: int, reason: str,
                headers: list[tuple[str, str]] | None = None,
                to_tag: str | None = None, pending: Pending | None = None) -> Received:
        data = render_response(request, status, reason, headers or (),
                               to_tag=to_tag or self.new_tag(), server=self.config.server,
                               top_via=self._stamped_top_via(request, origin))
        if key is not None:
            self.transactions.on_response(key, data, now)
        if self.on_done is not None:
            self._tell_done(request, origin, status, now, pending)
        return Received([self._route(data, request, origin)])

    def _tell_done(self, request: Request, origin: Origin, status: int, now: float,
                   pending: Pending | None) -> None:
        assert self.on_done is not None
        try:
            if pending is not None:
                command = pending.command
                identity = command.audit.identity if isinstance(command, PublishRequest) \
                    else command.identity
                resource: str | None = command.aor
                received_at = pending.received_at
            else:
                identity, received_at = None, now
                try:
                    resource = request.aor
                except Exception:  # no address of record in it (that may be why)
                    resource = None
            self.on_done(RequestDone(request.method, status, resource,
                                     request.headers.get("Event"), origin, request.call_id,
                                     identity, received_at, now, request.body))
        except Exception:  # a listener's fault never touches the request
            log.exception("request listener failed")

    def _parse_error(self, error: ParseError, origin: Origin, now: float = 0.0) -> Received:
        """Answer a malformed request when it can be addressed; drop it otherwise."""
        self.stats["parse_errors"] += 1
        partial = error.partial
        if not isinstance(partial, Request) or partial.method == "ACK":
            self.stats["dropped"] += 1
            return Received()
        try:
            data = render_response(partial, error.status, error.reason,
                                   to_tag=self.new_tag(), server=self.config.server,
                                   top_via=self._stamped_top_via(partial, origin))
            replies = Received([self._route(data, partial, origin)])
        except Exception:  # not addressable after all
            self.stats["dropped"] += 1
            return Received()
        if self.on_done is not None:
            self._tell_done(partial, origin, error.status, now, None)
        return replies

    def _route(self, data: bytes, request: Request, origin: Origin) -> Outgoing:
        via_port, wants_rport = None, False
        try:
            vias = request.vias
            if vias:
                via_port = vias[0].port
                wants_rport = vias[0].rport is not None
        except Exception:
            pass
        return Outgoing(data, origin, (origin.address[0],
                                       response_port(origin, via_port, wants_rport)))

    @staticmethod
    def _stamped_top_via(request: Request, origin: Origin) -> str | None:
        """RFC 3261 18.2.1 / RFC 3581: the request's top via-parm as the response copies it,
        recording where the request really came from (`received`, and `rport` when asked
        for). The request itself is left unchanged. None when there is no readable Via."""
        try:
            top = request.top_via
            if top is None:
                return None
            changes = {"received": origin.address[0]}
            if top.rport is not None:
                changes["rport"] = str(origin.address[1])
            return top.with_params(changes)
        except Exception:
            return None

    # ---- helpers ---------------------------------------------------------------------------

    def _trusted(self, origin: Origin) -> bool:
        """Is the request's packet source (never anything it says) a trusted peer? An
        IPv4-mapped IPv6 source (a dual-stack socket) counts as its IPv4 address."""
        if not self.trusted_peers:
            return False
        try:
            address = ipaddress.ip_address(origin.address[0])
        except ValueError:
            return False
        if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
            address = address.ipv4_mapped
        return any(address in network for network in self.trusted_peers)

    def new_tag(self) -> str:
        """A To-tag: 48 random bits as 12 hex digits (what secrets.token_hex(6) gives)."""
        return self.random_bytes(6).hex()

    def _contact(self, origin: Origin) -> str:
        """Our Contact for a dialog a SUBSCRIBE opens: where the watcher sends refreshes."""
        host, port = self.local_address(origin)
        host = f"[{host}]" if ":" in host else host
        scheme = "sips" if origin.transport == "tls" else "sip"
        transport = "" if origin.transport == "udp" else ";transport=tcp" \
            if origin.transport == "tcp" else ";transport=tls"
        return f"<{scheme}:{host}:{port}{transport}>"

    def _capabilities(self) -> list[tuple[str, str]]:
        headers = [("Allow", self.allow_header),
                   ("Allow-Events", ", ".join(self.config.allowed_events)),
                   ("Accept", ", ".join(self.config.accepted_types)),
                   ("Supported", ", ".join(self.config.supported))]
        return headers

    def _unsupported(self, request: Request) -> list[str]:
        if "Require" not in request.headers:
            return []
        required = [tag.strip() for tag in request.headers.get_all("Require") if tag.strip()]
        supported = {s.lower() for s in self.config.supported}
        return [tag for tag in required if tag.lower() not in supported]

    def tick(self, now: float) -> None:
        self.transactions.expire(now)


def _listener_address(origin: Origin) -> tuple[str, int]:
    return origin.local if origin.local is not None else ("127.0.0.1", 5060)


def _uri_host(request: Request) -> str | None:
    try:
        return request.parsed_uri.host.lower().rstrip(".")
    except Exception:
        return None
