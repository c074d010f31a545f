"""The values the notifier's parts exchange: a SUBSCRIBE's facts, a NOTIFY to send, and
what became of it.

The SIP adapter turns a SUBSCRIBE into a `SubscribeRequest` (parsed once, where the grammar
lives); the store side decides it against the `Subscription` aggregate and the
`SubscriptionPolicy`, and whenever a watcher must be told something it hands the SIP side a
`NotifyJob`: everything one NOTIFY needs, with its CSeq already recorded in the event store.
The SIP side sends it as a client transaction and reports a `NotifyOutcome`. All three are
plain frozen values: they cross the pipe between the SIP process and the store process.
"""

from __future__ import annotations

from dataclasses import dataclass

from .requests import within_bounds

ACTIVE, TERMINATED = "active", "terminated"


@dataclass(frozen=True)
class SubscriptionPolicy:
    """The operator's bounds on subscription lifetimes, in seconds (RFC 6665 section 4.2.1.1:
    the notifier may shorten, never lengthen, and answers 423 below its minimum)."""

    default_expires: int = 3600  # RFC 3856 / 4235 / 3842 all default to 3600
    min_expires: int = 60
    max_expires: int = 3600

    def __post_init__(self) -> None:
        if not 0 < self.min_expires <= self.max_expires:
            raise ValueError("need 0 < min_expires <= max_expires")
        if self.default_expires <= 0:
            raise ValueError("default_expires must be positive")

    def grant(self, requested: int | None) -> int:
        """The expiry granted; 0 for an unsubscribe or a fetch. Raises IntervalTooBrief."""
        if requested is None:
            return min(max(self.default_expires, self.min_expires), self.max_expires)
        return within_bounds(requested, self.min_expires, self.max_expires)


@dataclass(frozen=True)
class SubscribeRequest:
    """What a SUBSCRIBE carries that matters to the notifier.

    `local_tag` is None for an initial SUBSCRIBE (out of any dialog) and the To tag of a
    refresh or unsubscribe inside one. `transport`, `host` and `port` are where the request
    came from: NOTIFYs go there (design decision 11), never to `watcher_contact`, which is
    only the NOTIFY's Request-URI. `route_set` is the Record-Route values in the order
    received."""

    aor: str  # the resource: the Request-URI's address of record
    event: str  # the package, lower case, without parameters
    call_id: str
    remote_tag: str  # the watcher's From tag
    cseq: int
    watcher_uri: str  # the From URI
    watcher_contact: str  # the Contact URI
    transport: str  # "udp", "tcp", "tls"
    host: str
    port: int
    local_tag: str | None = None
    event_id: str | None = None  # the Event header's id parameter, echoed in every NOTIFY
    expires: int | None = None  # as requested; None: the policy's default
    route_set: tuple[str, ...] = ()
    identity: str | None = None  # the authenticated user, if any
    local_uri: str | None = None  # the To URI: our side of the dialog (RFC 3261 12.1.1)
    received_on: str | None = None  # our socket it arrived at ("192.0.2.1:5060"), if known

    @property
    def initial(self) -> bool:
        return self.local_tag is None


@dataclass(frozen=True)
class NotifyJob:
    """One NOTIFY to send, its numbers already recorded (`Subscription.notified`)."""

    subscription_id: str
    aor: str
    event: str
    call_id: str
    local_tag: str  # our tag: the NOTIFY's From tag
    remote_tag: str  # the watcher's: the NOTIFY's To tag
    watcher_uri: str  # the NOTIFY's To URI
    watcher_contact: str  # the NOTIFY's Request-URI
    cseq: int
    transport: str  # where it goes: the address the SUBSCRIBE came from
    host: str
    port: int
    state: str  # ACTIVE or TERMINATED (Subscription-State)
    expires_in: int = 0  # seconds left, for an active subscription
    reason: str | None = None  # for a terminated one: the RFC 6665 reason
    content_type: str | None = None
    body: bytes = b""
    event_id: str | None = None
    route_set: tuple[str, ...] = ()
    local_uri: str | None = None  # the NOTIFY's From URI (the SUBSCRIBE's To); None: aor
    received_on: str | None = None  # send from this socket of ours when it is still bound

    @property
    def final(self) -> bool:
        return self.state == TERMINATED


@dataclass(frozen=True)
class SubscribeAccepted:
    """The notifier's answer to a SUBSCRIBE it accepted (200): the subscription (empty for
    a fetch, which keeps none), our To tag, the expiry granted (0: it ended), and the
    NOTIFY to send now (None when one is in flight: it follows that one)."""

    subscription_id: str
    local_tag: str
    expires: int
    notify: NotifyJob | None = None


@dataclass(frozen=True)
class NotifyOutcome:
    """What became of a NOTIFY: its final response's status (408 when no response came
    before Timer F, or it could not be sent) and its Retry-After, if any."""

    subscription_id: str
    cseq: int
    status: int
    retry_after: int | None = None

    @property
    def delivered(self) -> bool:
        return 200 <= self.status < 300

    @property
    def ends_subscription(self) -> bool:
        """RFC 6665 section 4.2.2: a NOTIFY that times out, or is answered with a non-2xx
        response without Retry-After, ends the subscription; a 481 (the watcher knows no
        such subscription) ends it whatever else the answer says."""
        return self.status == 481 or (not self.delivered and self.retry_after is None)
