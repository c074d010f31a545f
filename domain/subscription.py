"""The Subscription aggregate: one RFC 6665 subscription (a SUBSCRIBE dialog) and its life.

A subscription watches one resource (address of record) in one event package. It is created
by an initial SUBSCRIBE, refreshed by later ones, and ends when the watcher unsubscribes
(Expires: 0), when the notifier terminates it (with an RFC 6665 reason) or when it lapses.
Each public command checks the rules and then triggers an event through a private `@event`
method that only mutates: those bodies run again on every replay, so everything they need
(now, the tags, the CSeq numbers, the address NOTIFYs go to) is computed by the caller and
passed in. No clock, no random source, no I/O.

NOTIFYs go to the address the SUBSCRIBE came from (transport, host, port), never to the
Contact (DESIGN decision 11). Before the notifier sends a NOTIFY it calls `notified(now)`,
which records the CSeq and the dialog-info version that NOTIFY uses (RFC 4235 versions are
per subscription: 0 for the first NOTIFY, then +1 each), and saves that event: after a
restart neither number is ever used twice.

Event classes have explicit topics so that moving this module never breaks replay.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from uuid import UUID

from eventsourcing.domain import Aggregate, Snapshot as _Snapshot, event

from .errors import CompositorError

ACTIVE, TERMINATED = "active", "terminated"

# RFC 6665 section 8.4, event-reason-value (extensions are not accepted here).
DEACTIVATED, PROBATION, REJECTED, TIMEOUT, GIVEUP, NORESOURCE, INVARIANT = (
    "deactivated", "probation", "rejected", "timeout", "giveup", "noresource", "invariant")
REASONS = frozenset({DEACTIVATED, PROBATION, REJECTED, TIMEOUT, GIVEUP, NORESOURCE, INVARIANT})

TRANSPORTS = frozenset({"udp", "tcp", "tls"})


# ---- refusals ---------------------------------------------------------------------------------
# Facts only, like domain/errors.py: `args` are exactly the constructor's arguments (so they
# pickle across processes); how they are answered on the wire is the SIP adapter's business.

class SubscriptionNotActive(CompositorError):
    """The subscription has ended (or has lapsed and is about to be expired): a request in
    its dialog finds no subscription. `reason` is why it ended ("timeout" when lapsed)."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason

    def __str__(self) -> str:
        return f"the subscription is no longer active ({self.reason})"


class CSeqOutOfOrder(CompositorError):
    """A request in the dialog carries a CSeq not greater than the last one seen (RFC 3261
    section 12.2.2): it is older than, or a replay of, one already applied."""

    def __init__(self, cseq: int, last_cseq: int) -> None:
        super().__init__(cseq, last_cseq)
        self.cseq = cseq
        self.last_cseq = last_cseq

    def __str__(self) -> str:
        return f"CSeq {self.cseq} is not greater than the last one seen, {self.last_cseq}"


class NotTheSubscriber(CompositorError):
    """A request in the dialog of a subscription that an authenticated user made, from
    another user (or none): only the subscriber may refresh or end it."""


class NoMoreNotifies(CompositorError):
    """The final NOTIFY (Subscription-State: terminated) has already been recorded."""


# ---- values -----------------------------------------------------------------------------------

@dataclass(frozen=True)
class NotifyTarget:
    """Where NOTIFYs go: the address the SUBSCRIBE came from, not its Contact."""

    transport: str  # "udp", "tcp", "tls"
    host: str
    port: int


@dataclass(frozen=True)
class Notify:
    """The numbers of one NOTIFY, as recorded before it is sent."""

    cseq: int
    version: int  # the dialog-info version (RFC 4235); other packages may ignore it
    final: bool  # Subscription-State: terminated (the subscription's `reason` says why)


def _check_target(transport: str, host: str, port: int) -> None:
    if transport not in TRANSPORTS:
        raise ValueError(f"unknown transport {transport!r}")
    if not host:
        raise ValueError("the NOTIFY target needs a host")
    if not 0 < port < 65536:
        raise ValueError(f"port out of range: {port}")


class Subscription(Aggregate):
    TOPIC = "esc:Subscription"

    # `_Snapshot` is `Aggregate.Snapshot`, but eventsourcing binds that name by assignment in
    # the class body (`Snapshot = Snapshot`), which a type checker cannot use as a base.
    class Snapshot(_Snapshot):
        TOPIC = "esc:Subscription.Snapshot"

    class Event(Aggregate.Event):
        pass

    class Created(Event, Aggregate.Created):
        TOPIC = "esc:Subscription.Created"

    # ---- creation -------------------------------------------------------------------

    @classmethod
    def subscribe(cls, *, id: UUID, aor: str, event_package: str, call_id: str,
                  remote_tag: str, local_tag: str, watcher_uri: str, watcher_contact: str,
                  route_set: Sequence[str], remote_cseq: int, transport: str, host: str,
                  port: int, expires_at: float, now: float, identity: str | None = None,
                  local_cseq: int = 0, event_id: str | None = None,
                  owner: str | None = None, local_uri: str | None = None,
                  received_on: str | None = None) -> "Subscription":
        """Create the subscription of an initial SUBSCRIBE. `remote_tag` is the watcher's
        From tag, `local_tag` our To tag; `transport`, `host` and `port` are where the
        SUBSCRIBE came from; `local_cseq` is the CSeq before our first NOTIFY's (any start
        value the caller picks; the first NOTIFY uses `local_cseq + 1`). A fetch (Expires:
        0) creates no subscription: `expires_at` must lie in the future. `event_id` is the
        Event header's id parameter (RFC 6665 section 8.2.1), echoed in every NOTIFY;
        `owner` names the node that sends its NOTIFYs."""
        if expires_at <= now:
            raise ValueError("a subscription must expire in the future")
        if not (call_id and remote_tag and local_tag):
            raise ValueError("a subscription needs a Call-ID and both tags")
        if isinstance(route_set, str):
            raise ValueError("the route set is a sequence of routes, not one string")
        if remote_cseq < 0 or local_cseq < 0:
            raise ValueError("CSeq numbers are not negative")
        _check_target(transport, host, port)
        return cls._create(
            cls.Subscribed, id=id, aor=aor, event_package=event_package, call_id=call_id,
            remote_tag=remote_tag, local_tag=local_tag, watcher_uri=watcher_uri,
            watcher_contact=watcher_contact, route_set=list(route_set),
            remote_cseq=remote_cseq, local_cseq=local_cseq, transport=transport, host=host,
            port=port, expires_at=expires_at, identity=identity, at=now,
            event_id=event_id, owner=owner, local_uri=local_uri, received_on=received_on,
        )

    class Subscribed(Created):
        TOPIC = "esc:Subscription.Subscribed"
        aor: str
        event_package: str
        call_id: str
        remote_tag: str
        local_tag: str
        watcher_uri: str
        watcher_contact: str
        route_set: list[str]
        remote_cseq: int
        local_cseq: int
        transport: str
        host: str
        port: int
        expires_at: float
        identity: str | None
        at: float
        event_id: str | None
        owner: str | None
        local_uri: str | None
        received_on: str | None

    @event(Subscribed)
    def __init__(self, *, aor: str, event_package: str, call_id: str, remote_tag: str,
                 local_tag: str, watcher_uri: str, watcher_contact: str, route_set: list[str],
                 remote_cseq: int, local_cseq: int, transport: str, host: str, port: int,
                 expires_at: float, identity: str | None, at: float,
                 event_id: str | None = None, owner: str | None = None,
                 local_uri: str | None = None, received_on: str | None = None) -> None:
        self.aor = aor
        self.event_package = event_package
        self.call_id = call_id
        self.remote_tag = remote_tag
        self.local_tag = local_tag
        self.watcher_uri = watcher_uri
        self.watcher_contact = watcher_contact
        # A tuple: the route set changes only through events, never in place.
        self.route_set: tuple[str, ...] = tuple(route_set)
        self.remote_cseq = remote_cseq
        self.local_cseq = local_cseq  # the CSeq of the last NOTIFY recorded
        self.transport = transport
        self.host = host
        self.port = port
        self.expires_at = expires_at
        self.identity = identity
        self.event_id = event_id
        self.owner = owner
        # Our URI in the dialog (the SUBSCRIBE's To URI): the NOTIFYs' From.
        self.local_uri = local_uri
        # The socket of ours the SUBSCRIBE reached: NOTIFYs leave from it (a watcher
        # behind NAT or a firewall expects them from the address it sent to).
        self.received_on = received_on
        # The change-feed position the last NOTIFY's state covered: a change at or before
        # it has been told to this watcher (the notifier's exactly-once rule).
        self.notified_position = 0
        self.notify_count = 0  # NOTIFYs recorded: also the next dialog-info version
        self.state = ACTIVE
        self.reason: str | None = None
        self.final_notified = False
        self.subscribed_at = at
        self.updated_at = at
        self.terminated_at: float | None = None

    # ---- queries ----------------------------------------------------------------------

    @property
    def target(self) -> NotifyTarget:
        return NotifyTarget(self.transport, self.host, self.port)

    def is_active(self, now: float) -> bool:
        """Active: not terminated, and its expiry time not yet reached."""
        return self.state == ACTIVE and now < self.expires_at

    def is_lapsed(self, now: float) -> bool:
        """Still marked active but past its expiry: an `expire` is due."""
        return self.state == ACTIVE and now >= self.expires_at

    def next_notify(self) -> Notify:
        """The numbers the next NOTIFY would use, without recording them."""
        return Notify(cseq=self.local_cseq + 1, version=self.notify_count,
                      final=self.state == TERMINATED)

    # ---- commands -----------------------------------------------------------------------

    def check_in_dialog(self, remote_cseq: int, now: float,
                        identity: str | None = None) -> None:
        """Would a request in this dialog be accepted? Raises what `refresh` and
        `unsubscribe` would, before anything changes; and NotTheSubscriber when the
        subscription was made by an authenticated user and `identity` is someone else."""
        self._check_in_dialog(remote_cseq, now)
        if self.identity is not None and identity != self.identity:
            raise NotTheSubscriber()

    def _check_in_dialog(self, remote_cseq: int, now: float) -> None:
        if self.state == TERMINATED:
            raise SubscriptionNotActive(self.reason or TIMEOUT)
        if now >= self.expires_at:
            raise SubscriptionNotActive(TIMEOUT)
        if remote_cseq <= self.remote_cseq:
            raise CSeqOutOfOrder(remote_cseq, self.remote_cseq)

    def refresh(self, *, now: float, expires_at: float, remote_cseq: int) -> None:
        """A refreshing SUBSCRIBE: a new expiry time and the watcher's CSeq. Refused when
        the subscription has ended or lapsed, or the CSeq is not greater than the last.
        Unsubscribing (Expires: 0) is `unsubscribe`, not a refresh."""
        if expires_at <= now:
            raise ValueError("a refresh must expire in the future; Expires: 0 unsubscribes")
        self._check_in_dialog(remote_cseq, now)
        self._refreshed(aor=self.aor, event_package=self.event_package,
                        expires_before=self.expires_at, expires_at=expires_at,
                        remote_cseq=remote_cseq, at=now)

    @event("Refreshed", topic="esc:Subscription.Refreshed")
    def _refreshed(self, *, aor: str, event_package: str, expires_before: float,
                   expires_at: float, remote_cseq: int, at: float) -> None:
        self.expires_at = expires_at
        self.remote_cseq = remote_cseq
        self.updated_at = at

    def notified(self, now: float, position: int = 0) -> Notify:
        """Record the NOTIFY about to be sent and return its CSeq and dialog-info version;
        save before sending, so a restart never reuses either. Allowed while active, and
        once more after termination for the final NOTIFY (Subscription-State:
        terminated). A lapsed subscription is expired first (`expire`). `position` is the
        change-feed position whose state this NOTIFY carries."""
        if self.final_notified:
            raise NoMoreNotifies()
        if self.is_lapsed(now):
            raise SubscriptionNotActive(TIMEOUT)
        notify = self.next_notify()
        self._notified(aor=self.aor, event_package=self.event_package, cseq=notify.cseq,
                       version=notify.version, final=notify.final, at=now,
                       position=max(position, self.notified_position))
        return notify

    @event("Notified", topic="esc:Subscription.Notified")
    def _notified(self, *, aor: str, event_package: str, cseq: int, version: int,
                  final: bool, at: float, position: int = 0) -> None:
        self.local_cseq = cseq
        self.notified_position = position
        self.notify_count = version + 1
        self.final_notified = final
        self.updated_at = at

    def unsubscribe(self, *, now: float, remote_cseq: int) -> None:
        """A SUBSCRIBE with Expires: 0 in the dialog: the subscription ends (reason
        "timeout", RFC 6665 section 4.2.1.4 ends it as if it had expired now). Refused
        like a refresh when it has already ended or lapsed or the CSeq is stale."""
        self._check_in_dialog(remote_cseq, now)
        self._terminated(aor=self.aor, event_package=self.event_package, reason=TIMEOUT,
                         expires_at=self.expires_at, remote_cseq=remote_cseq, at=now,
                         noticed_at=now)

    def terminate(self, now: float, reason: str) -> bool:
        """End the subscription on the notifier's side with an RFC 6665 reason. Idempotent:
        returns False, recording nothing, once it has ended. A subscription that has
        already lapsed ended by timeout, at its expiry time: that is what is recorded
        (as `expire` would), whatever `reason` was asked for."""
        if reason not in REASONS:
            raise ValueError(f"not an RFC 6665 reason: {reason!r}")
        if self.state == TERMINATED:
            return False
        if self.is_lapsed(now):
            return self.expire(now)
        self._terminated(aor=self.aor, event_package=self.event_package, reason=reason,
                         expires_at=self.expires_at, remote_cseq=None, at=now,
                         noticed_at=now)
        return True

    def expire(self, now: float) -> bool:
        """End a lapsed subscription with reason "timeout". Harmless when early, late or
        repeated: returns whether a `Terminated` event was triggered. The event is stamped
        with the subscription's own expiry time (`noticed_at` records when it was
        noticed)."""
        if not self.is_lapsed(now):
            return False
        self._terminated(aor=self.aor, event_package=self.event_package, reason=TIMEOUT,
                         expires_at=self.expires_at, remote_cseq=None, at=self.expires_at,
                         noticed_at=now)
        return True

    def adopt(self, owner: str, now: float) -> bool:
        """Another node takes this subscription over (its owner stopped renewing its
        lease): from now on `owner` sends its NOTIFYs. Returns False, recording nothing,
        when it has ended or `owner` has it already."""
        if not owner:
            raise ValueError("the new owner needs a name")
        if self.state == TERMINATED or self.owner == owner:
            return False
        self._adopted(aor=self.aor, event_package=self.event_package,
                      previous_owner=self.owner, owner=owner, at=now)
        return True

    @event("Adopted", topic="esc:Subscription.Adopted")
    def _adopted(self, *, aor: str, event_package: str, previous_owner: str | None,
                 owner: str, at: float) -> None:
        self.owner = owner
        self.updated_at = at

    @event("Terminated", topic="esc:Subscription.Terminated")
    def _terminated(self, *, aor: str, event_package: str, reason: str, expires_at: float,
                    remote_cseq: int | None, at: float, noticed_at: float) -> None:
        self.state = TERMINATED
        self.reason = reason
        if remote_cseq is not None:
            self.remote_cseq = remote_cseq
        self.terminated_at = at
        self.updated_at = at


SUBSCRIPTION_EVENT_TYPES = {
    "esc:Subscription.Subscribed": "Subscribed",
    "esc:Subscription.Refreshed": "Refreshed",
    "esc:Subscription.Notified": "Notified",
    "esc:Subscription.Terminated": "Terminated",
    "esc:Subscription.Adopted": "Adopted",
}
