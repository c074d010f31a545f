"""The notifier: SUBSCRIBEs decided, and every change of state turned into NOTIFYs.

It runs beside the compositor (in the store process) and is a tracked consumer of the
change feed. Each Published, Modified, Removed or Expired event marks the subscriptions of
its resource dirty; a dirty subscription with no NOTIFY in flight gets one with the latest
composed state. While one is in flight, later changes only keep it dirty, so they fold into
the next NOTIFY (latest state wins) and NOTIFYs of one subscription never overtake each
other. (A Refreshed publication changes no package's composed state, so it notifies no one.)

Before a NOTIFY is handed to the SIP side its numbers are recorded (`Subscription.notified`,
saved), with the feed position whose state it carries. That makes the consumer record each
change as told exactly once across restarts, without a distributed transaction (a NOTIFY
recorded just before a crash, not yet sent, is the one thing a crash can lose):

- the position persisted (in the view's tracking table) never passes a change that is
  still waiting, folded, in a dirty subscription, so after a restart every change not yet
  told to its watchers is read again;
- a change read again is skipped for a subscription whose last NOTIFY already covered its
  position (`Subscription.notified_position`), so no watcher is told the same change twice.

Subscriptions lapse here too: a heap of expiry times (the active subscriptions are held in
memory, bounded by `max_subscriptions`) ends each with `Terminated` (reason timeout) and a
final NOTIFY. A NOTIFY that times out or gets a non-2xx without Retry-After ends its
subscription (RFC 6665 section 4.2.2).

Single-threaded: the store process's main loop calls every method here.
"""

from __future__ import annotations

import heapq
import logging
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable, Iterable, Sequence
from uuid import UUID, uuid4

from eventsourcing.persistence import Recording

from domain import (CompositorError, InternalError, NotifyJob, NotifyOutcome, Publication,
                    StoreUnavailable, SubscribeRequest, Subscription, SubscriptionNotActive,
                    SubscriptionPolicy)
from domain.notification import SubscribeAccepted
from domain.subscription import DEACTIVATED, TERMINATED, TIMEOUT

from .notify_pacing import NotifyPacer

if TYPE_CHECKING:
    from .compositor import Compositor
    from .leases import NodeLeases

log = logging.getLogger("esc.notifier")

#: The view's tracking name for this consumer's position.
POSITION_NAME = "notifier"
#: Publication events that change a package's composed state.
CHANGES = frozenset({"Published", "Modified", "Removed", "Expired"})
ADOPTED_TOPIC = "esc:Subscription.Adopted"
PAGE = 1000

SubscribeResult = SubscribeAccepted | CompositorError


@dataclass(frozen=True)
class NotifierConfig:
    policy: SubscriptionPolicy = SubscriptionPolicy()
    node: str | None = None  # this node's name: it sends the NOTIFYs of what it owns
    max_subscriptions: int = 100_000  # active subscriptions held (503 past it)
    max_subscription_bytes: int = 256 * 1024 * 1024  # their estimated size (503 past it)
    # NOTIFYs out at once, over all subscriptions: past it, changes wait (and fold) in
    # their subscriptions until answers come back, so a notifier that outpaces its
    # watchers, or the SIP process, slows down instead of piling up retransmissions.
    max_in_flight: int = 2000
    # NOTIFYs recorded in one step: the store process handles waiting PUBLISH batches
    # between steps, so a burst of NOTIFYs never holds PUBLISH answers up for long.
    max_per_flush: int = 256
    # PUBLISH first (notify_pacing.py): once PUBLISH batches wait longer than this
    # (seconds) for the store, NOTIFY steps get less of its time, never below
    # min_notify_share; what waits folds. None: no pacing.
    publish_wait_target: float | None = None
    min_notify_share: float = 0.05
    poll_interval: float = 0.1  # how often the feed is read for others' writes
    save_position_every: float = 1.0
    # Several nodes: each renews its lease this often; one not renewed for lease_ttl is
    # gone, and its subscriptions are adopted (within lease_ttl + lease_interval).
    lease_interval: float = 2.0
    lease_ttl: float = 6.0


class Notifier:
    def __init__(self, compositor: "Compositor", config: NotifierConfig = NotifierConfig(),
                 clock: Callable[[], float] = time.time,
                 leases: "NodeLeases | None" = None) -> None:
        self.compositor = compositor
        self.app = compositor.app
        self.view = compositor.view
        self.config = config
        self.policy = config.policy
        self.clock = clock
        self.subscriptions: dict[UUID, Subscription] = {}
        self.held_bytes = 0  # estimated memory of the subscriptions held
        self.by_resource: dict[tuple[str, str], set[UUID]] = {}
        self._expiries: list[tuple[float, UUID]] = []
        self._scheduled: dict[UUID, float] = {}  # the expiry each held one is in the heap for
        self._deciding: Subscription | None = None  # the one a SUBSCRIBE is changing
        self._retry_at = 0.0  # after a failed save: no new NOTIFYs before this
        # NOTIFYs answered with a Retry-After: their state is sent again when it passes.
        self._retries: list[tuple[float, UUID]] = []
        self.in_flight: dict[UUID, int] = {}  # subscription -> CSeq of its NOTIFY out
        self.dirty: dict[UUID, int] = {}  # subscription -> first change position not told
        self.position = 0
        self._position_saved = 0
        # The last time (and position) the oldest waiting change was looked for.
        self._position_checked_at = 0.0
        self._position_checked = 0
        self.stats = {"notifies": 0, "folded": 0, "failed": 0, "expired": 0, "adopted": 0}
        self.leases = leases if config.node else None
        self._next_lease = 0.0
        self._next_poll = 0.0
        self.pacer = NotifyPacer(config.publish_wait_target, config.min_notify_share) \
            if config.publish_wait_target else None
        self._load()

    # ---- start ----------------------------------------------------------------------------

    def _load(self) -> None:
        if self.view.has_position(POSITION_NAME):
            self.position = self.view.position(POSITION_NAME)
        else:  # first start: nothing before now was anyone's business
            self.position = self._head()
            self.view.set_position(POSITION_NAME, self.position)
        self._position_saved = self.position
        owner = self.config.node
        for row in self.view.active_subscription_ids(owner):
            try:
                subscription = self.app.repository.get(UUID(hex=row[0]))
            except Exception as error:
                log.warning("subscription %s not loaded: %s", row[0], error)
                continue
            if isinstance(subscription, Subscription) and subscription.state != TERMINATED:
                self._hold(subscription)
            elif isinstance(subscription, Subscription) and not subscription.final_notified:
                self._hold(subscription)
                self.dirty.setdefault(subscription.id, self.position)
        if self.subscriptions:
            log.info("notifier holds %d subscriptions, feed position %d",
                     len(self.subscriptions), self.position)

    def _head(self) -> int:
        try:
            return int(self.app.recorder.max_notification_id() or 0)
        except Exception:
            return 0

    def _mine(self, subscription: Subscription) -> bool:
        return self.config.node is None or subscription.owner == self.config.node

    def _hold(self, subscription: Subscription) -> None:
        if subscription.id not in self.subscriptions:
            self.held_bytes += _size(subscription)
        self.subscriptions[subscription.id] = subscription
        key = (subscription.aor, subscription.event_package)
        self.by_resource.setdefault(key, set()).add(subscription.id)
        if self._scheduled.get(subscription.id) != subscription.expires_at:
            self._scheduled[subscription.id] = subscription.expires_at
            heapq.heappush(self._expiries, (subscription.expires_at, subscription.id))
            if len(self._expiries) > 2 * len(self.subscriptions) + 1024:
                # Entries of refreshed or released subscriptions: rebuild (as the client
                # transaction table does), so the heap stays proportional to what is held.
                self._expiries = [(at, sid) for sid, at in self._scheduled.items()]
                heapq.heapify(self._expiries)

    def _release(self, subscription_id: UUID) -> None:
        subscription = self.subscriptions.pop(subscription_id, None)
        self.dirty.pop(subscription_id, None)
        self._scheduled.pop(subscription_id, None)
        if subscription is None:
            return
        self.held_bytes -= _size(subscription)
        key = (subscription.aor, subscription.event_package)
        ids = self.by_resource.get(key)
        if ids is not None:
            ids.discard(subscription_id)
            if not ids:
                del self.by_resource[key]

    # ---- SUBSCRIBE ------------------------------------------------------------------------

    def subscribe_many(self, requests: Sequence[SubscribeRequest],
                       now: float | None = None, covers: int = 0) -> list[SubscribeResult]:
        """Decide each SUBSCRIBE in order and save the batch (one transaction); each
        accepted one carries its immediate NOTIFY, already recorded, unless a NOTIFY of
        that subscription is in flight (then it follows when that one is answered).
        `covers`: the feed position the view holds (the batch's PUBLISHes were projected
        first), so those changes are not told again to the new watchers."""
        now = self.clock() if now is None else now
        touched: dict[UUID, Subscription] = {}
        decided: list[tuple[SubscribeResult, UUID | None]] = []
        for request in requests:
            before = set(touched)
            self._deciding = None
            try:
                decided.append(self._decide(request, now, touched, covers))
            except Exception as error:
                self._undo(touched, before)
                if isinstance(error, CompositorError):
                    decided.append((error, None))
                    continue
                # A fault on this request alone.
                log.error("internal error deciding a SUBSCRIBE for %s: %s: %s", request.aor,
                          type(error).__name__, error)
                decided.append((InternalError(f"internal error: {type(error).__name__}"),
                                None))
        if not touched:
            return [result for result, _ in decided]
        try:
            self._save(touched)
        except Exception as error:
            log.error("saving subscriptions failed: %s", error)
            for subscription_id in touched:
                self.in_flight.pop(subscription_id, None)  # recorded NOTIFYs never left
            self._forget(touched)
            return [StoreUnavailable(f"event store save failed: {error}")
                    if isinstance(result, SubscribeAccepted) else result
                    for result, _ in decided]
        results: list[SubscribeResult] = []
        for result, _ in decided:
            if isinstance(result, SubscribeAccepted) and result.notify is not None:
                self.stats["notifies"] += 1
            results.append(result)
        return results

    def _undo(self, touched: dict[UUID, Subscription], before: set[UUID]) -> None:
        """A request failed part-way: what it changed is dropped (reloaded from the store),
        so its half-done events are neither saved with the batch nor kept in memory."""
        changed = [sid for sid in touched if sid not in before]
        current = self._deciding
        if current is not None and current.id not in before and \
                current.id not in changed and getattr(current, "pending_events", None):
            changed.append(current.id)
        for subscription_id in changed:
            touched.pop(subscription_id, None)
            self.in_flight.pop(subscription_id, None)
        if changed:
            self._forget(changed)

    def _decide(self, request: SubscribeRequest, now: float,
                touched: dict[UUID, Subscription],
                covers: int = 0) -> tuple[SubscribeResult, UUID | None]:
        package = self.compositor.packages.get(request.event)  # BadEvent if unknown
        expires = self.policy.grant(request.expires)
        if request.local_tag is None:
            return self._initial(request, package.name, expires, now, touched, covers)
        subscription = self._in_dialog(request, touched)
        self._deciding = subscription
        # Every refusal before anything changes: CSeq, state, and who may.
        subscription.check_in_dialog(request.cseq, now, request.identity)
        if self.config.node and subscription.owner != self.config.node:
            # The watcher's refresh reached this node: it sends the NOTIFYs from now on.
            subscription.adopt(self.config.node, now)
        if expires == 0:
            subscription.unsubscribe(now=now, remote_cseq=request.cseq)
        else:
            subscription.refresh(now=now, expires_at=now + expires, remote_cseq=request.cseq)
        touched[subscription.id] = subscription
        self._hold(subscription)
        job = self._notify_now(subscription, now, touched, covers)
        return SubscribeAccepted(subscription.id.hex, subscription.local_tag, expires,
                                 job), subscription.id

    def _initial(self, request: SubscribeRequest, package: str, expires: int, now: float,
                 touched: dict[UUID, Subscription],
                 covers: int = 0) -> tuple[SubscribeResult, UUID | None]:
        if expires == 0:
            # A fetch (RFC 6665 section 4.4.3): the state once, in a NOTIFY that ends the
            # dialog it opens; no subscription is kept.
            local_tag = uuid4().hex
            state = self.compositor.state(request.aor, package, now=now)
            job = NotifyJob("", request.aor, package, request.call_id, local_tag,
                            request.remote_tag, request.watcher_uri, request.watcher_contact,
                            1, request.transport, request.host, request.port, TERMINATED,
                            0, TIMEOUT, state.content_type, state.body, request.event_id,
                            request.route_set, local_uri=request.local_uri,
                            received_on=request.received_on)
            return SubscribeAccepted("", local_tag, 0, job), None
        if len(self.subscriptions) >= self.config.max_subscriptions or \
                self.held_bytes >= self.config.max_subscription_bytes:
            raise StoreUnavailable(
                f"{self.config.max_subscriptions} subscriptions are active", retry_after=60)
        subscription_id = uuid4()
        subscription = Subscription.subscribe(
            id=subscription_id, aor=request.aor, event_package=package,
            call_id=request.call_id, remote_tag=request.remote_tag,
            local_tag=subscription_id.hex, watcher_uri=request.watcher_uri,
            watcher_contact=request.watcher_contact, route_set=request.route_set,
            remote_cseq=request.cseq, transport=request.transport, host=request.host,
            port=request.port, expires_at=now + expires, now=now,
            identity=request.identity, event_id=request.event_id, owner=self.config.node,
            local_uri=request.local_uri, received_on=request.received_on)
        touched[subscription_id] = subscription
        self._hold(subscription)
        job = self._notify_now(subscription, now, touched, covers)
        return SubscribeAccepted(subscription_id.hex, subscription.local_tag, expires,
                                 job), subscription_id

    def _in_dialog(self, request: SubscribeRequest,
                   touched: dict[UUID, Subscription]) -> Subscription:
        """The subscription a SUBSCRIBE's dialog names (our To tag is its id), or 481."""
        try:
            subscription_id = UUID(hex=request.local_tag or "")
        except ValueError:
            raise SubscriptionNotActive("noresource") from None
        subscription = touched.get(subscription_id) or self.subscriptions.get(subscription_id)
        if subscription is None:
            try:
                loaded = self.app.repository.get(subscription_id)
            except Exception:
                loaded = None
            if not isinstance(loaded, Subscription):
                raise SubscriptionNotActive("noresource")
            subscription = loaded
        if subscription.call_id != request.call_id or \
                subscription.remote_tag != request.remote_tag or \
                subscription.event_package != request.event or \
                getattr(subscription, "event_id", None) != request.event_id:
            raise SubscriptionNotActive("noresource")
        return subscription

    def _notify_now(self, subscription: Subscription, now: float,
                    touched: dict[UUID, Subscription], covers: int = 0) -> NotifyJob | None:
        if subscription.id in self.in_flight or \
                len(self.in_flight) >= self.config.max_in_flight:
            # One of its own is out, or the notifier is at its bound: it follows later.
            self.dirty.setdefault(subscription.id, self.position)
            self.stats["folded"] += 1
            return None
        self.dirty.pop(subscription.id, None)
        return self._record_notify(subscription, now, touched, covers=covers)

    # ---- NOTIFYs --------------------------------------------------------------------------

    def _record_notify(self, subscription: Subscription, now: float,
                       touched: dict[UUID, Subscription],
                       states: dict[tuple[str, str, int], Any] | None = None,
                       covers: int = 0) -> NotifyJob:
        """Record the next NOTIFY of a subscription and build it (the caller saves). Its
        state is the view's, which holds at least everything up to this consumer's
        position (and `covers`, when the caller projected more)."""
        notify = subscription.notified(now, position=max(self.position, covers))
        touched[subscription.id] = subscription
        self.in_flight[subscription.id] = notify.cseq
        if notify.final:
            state_name, expires_in, reason = TERMINATED, 0, subscription.reason
        else:
            state_name = "active"
            expires_in = max(0, int(subscription.expires_at - now))
            reason = None
        package = self.compositor.packages.get(subscription.event_package)
        key = (subscription.aor, subscription.event_package,
               notify.version if package.versioned else 0)
        state = states.get(key) if states is not None else None
        if state is None:
            state = self.compositor.state(subscription.aor, subscription.event_package,
                                          version=notify.version, now=now)
            if states is not None:
                states[key] = state
        return NotifyJob(subscription.id.hex, subscription.aor, subscription.event_package,
                         subscription.call_id, subscription.local_tag,
                         subscription.remote_tag, subscription.watcher_uri,
                         subscription.watcher_contact, notify.cseq, subscription.transport,
                         subscription.host, subscription.port, state_name, expires_in,
                         reason, state.content_type, state.body, subscription.event_id,
                         subscription.route_set,
                         local_uri=getattr(subscription, "local_uri", None),
                         received_on=getattr(subscription, "received_on", None))

    def _flush(self, now: float) -> list[NotifyJob]:
        """A NOTIFY for every dirty subscription with none in flight, recorded in one save."""
        room = min(self.config.max_in_flight - len(self.in_flight),
                   self.config.max_per_flush)
        if now < self._retry_at:
            room = 0  # the last save failed: give the store a moment
        if room > 0 and self.dirty and self.pacer is not None:
            # Asked first, so a step the PUBLISHes do not leave room for costs nothing.
            room = self.pacer.room(min(room, len(self.dirty)))
        ready = []
        if room > 0:
            for sid in self.dirty:  # oldest change first
                if sid not in self.in_flight:
                    ready.append(sid)
                    if len(ready) >= room:
                        break
        if not ready:
            self._save_position(now)
            return []
        started = time.perf_counter()
        touched: dict[UUID, Subscription] = {}
        jobs: list[NotifyJob] = []
        states: dict[tuple[str, str, int], Any] = {}
        since: dict[UUID, int] = {}
        for subscription_id in ready:
            since[subscription_id] = self.dirty.pop(subscription_id, self.position)
            subscription = self.subscriptions.get(subscription_id)
            if subscription is None or subscription.final_notified:
                continue
            if subscription.is_lapsed(now):
                subscription.expire(now)
                self.stats["expired"] += 1
            try:
                jobs.append(self._record_notify(subscription, now, touched, states))
            except CompositorError as refusal:
                log.warning("no NOTIFY for %s: %s", subscription_id.hex, refusal)
            except Exception as error:
                # A fault of ours (composing, say): record nothing for it, rather than a
                # NOTIFY that never leaves; it is told again with its next change.
                log.error("building a NOTIFY for %s failed: %s: %s", subscription_id.hex,
                          type(error).__name__, error)
                self.in_flight.pop(subscription_id, None)
                touched.pop(subscription_id, None)
                self._forget([subscription_id])
        if not touched:
            self._save_position(now)
            return jobs
        try:
            self._save(touched)
        except Exception as error:
            # Nothing recorded, nothing sent: they stay dirty (from the change each was
            # waiting with) and are tried again a second later, reloaded from the store.
            log.error("recording NOTIFYs failed: %s", error)
            waiting = {sid: since.get(sid, self.position) for sid in touched}
            for subscription_id in touched:
                self.in_flight.pop(subscription_id, None)
            self._forget(touched)
            for subscription_id, position in waiting.items():
                if subscription_id in self.subscriptions:
                    self.dirty.setdefault(subscription_id, position)
            self._retry_at = now + 1.0
            return []
        self.stats["notifies"] += len(jobs)
        if self.pacer is not None:
            self.pacer.spent(time.perf_counter() - started, len(jobs))
            self.stats["paced_steps"] = self.pacer.paced_steps
        self._save_position(now)
        return jobs

    def publishes_decided(self, waited: float | None = None) -> None:
        """A PUBLISH batch was decided, its oldest request having waited `waited`
        seconds for the store: the pacer weighs NOTIFY steps against PUBLISHes."""
        if self.pacer is not None:
            self.pacer.publishes(waited)

    def _save(self, touched: dict[UUID, Subscription]) -> None:
        with self.app.lock:
            recordings = self.app.save_batch(touched.values())  # type: ignore[arg-type]
        self.compositor.project(recordings)
        if recordings and recordings[0].notification.id == self.position + 1:
            # Our own events, right after what this consumer has read: nothing in them
            # for it, so step over them rather than read them back from the feed.
            self.position = recordings[-1].notification.id
        for subscription in touched.values():
            if subscription.final_notified:
                self._release(subscription.id)

    def _forget(self, touched: Iterable[UUID]) -> None:
        """Reload subscriptions whose unsaved changes are lost (their events were pending)."""
        for subscription_id in list(touched):
            self.app.evict([subscription_id])
            self._release(subscription_id)
            try:
                loaded = self.app.repository.get(subscription_id)
            except Exception:
                continue
            if isinstance(loaded, Subscription) and not loaded.final_notified and \
                    self._mine(loaded):
                self._hold(loaded)

    # ---- the change feed -------------------------------------------------------------------

    def on_recordings(self, recordings: Sequence[Recording],
                      now: float | None = None) -> list[NotifyJob]:
        """The events a local save just recorded (the feed's newest entries, in hand):
        consumed directly when they follow this consumer's position, else read from the
        feed."""
        now = self.clock() if now is None else now
        if not recordings:
            return []
        first = recordings[0].notification.id
        if first != self.position + 1:
            return self.poll(now)
        pairs = [(r.notification.id, r.domain_event) for r in recordings]
        return self._consume(pairs, now)

    def poll(self, now: float | None = None) -> list[NotifyJob]:
        """Read the feed beyond this consumer's position (writes of the expiry thread,
        other processes and nodes), then send what is due."""
        now = self.clock() if now is None else now
        if not self.subscriptions:
            self.position = max(self.position, self._head())
            return self._flush(now)
        read = self.position
        while True:
            notifications = self.app.recorder.select_notifications(
                start=self.position + 1, limit=PAGE)
            if not notifications:
                break
            pairs = []
            for notification in notifications:
                if notification.topic == ADOPTED_TOPIC:
                    self._adopted_elsewhere(self.app.mapper.to_domain_event(notification))
                    continue
                if ":Publication." not in notification.topic:
                    continue
                pairs.append((notification.id, self.app.mapper.to_domain_event(notification)))
            self._mark(pairs)
            self.position = max(self.position, notifications[-1].id)
            if len(notifications) < PAGE:
                break
        if self.position > read:
            # The view must hold everything up to the position a NOTIFY will say it
            # covers: caught up after reading (it reads up to the head, at least as far).
            self.compositor.catch_up()
        return self._flush(now)

    def _consume(self, pairs: Sequence[tuple[int, Any]], now: float) -> list[NotifyJob]:
        if self.subscriptions:
            self._mark(pairs)
        self.position = max(self.position, pairs[-1][0])
        return self._flush(now)

    def _mark(self, pairs: Iterable[tuple[int, Any]]) -> None:
        by_resource = self.by_resource
        for position, event in pairs:
            if not isinstance(event, Publication.Event) or \
                    type(event).__name__ not in CHANGES:
                continue
            ids = by_resource.get((event.aor, event.event_package))  # type: ignore[attr-defined]
            if not ids:
                continue
            for subscription_id in ids:
                subscription = self.subscriptions[subscription_id]
                if subscription.notified_position >= position:
                    continue  # told already, before a restart
                if subscription_id in self.dirty:
                    self.stats["folded"] += 1
                else:
                    self.dirty[subscription_id] = position

    def _save_position(self, now: float) -> None:
        """Persist the position, never beyond a change still waiting in a dirty
        subscription; throttled, since a lost update only means re-reading some events."""
        every = self.config.save_position_every
        if now - self._position_checked_at < every and \
                self.position - self._position_checked < 10_000:
            return  # (cheap: finding the oldest waiting change scans every dirty one)
        if self.dirty:
            self._position_checked_at, self._position_checked = now, self.position
        safe = min([self.position] + [p - 1 for p in self.dirty.values()])
        if safe <= self._position_saved:
            return
        try:
            self.view.set_position(POSITION_NAME, safe)
        except Exception as error:
            log.warning("notifier position not saved: %s", error)
            return
        self._position_saved = safe
        self._position_checked_at, self._position_checked = now, self.position

    # ---- outcomes and timers -----------------------------------------------------------------

    def flush(self, now: float | None = None) -> list[NotifyJob]:
        """Record and hand out the NOTIFYs that are due now."""
        return self._flush(self.clock() if now is None else now)

    def outcomes(self, outcomes: Sequence[NotifyOutcome], now: float | None = None, *,
                 flush: bool = True) -> list[NotifyJob]:
        """What became of NOTIFYs: the next one of each subscription may go; a failed one
        ends its subscription. `flush` false: only take note (the caller flushes)."""
        now = self.clock() if now is None else now
        ended: dict[UUID, Subscription] = {}
        for outcome in outcomes:
            if not outcome.subscription_id:
                continue  # a fetch's NOTIFY: no subscription behind it
            try:
                subscription_id = UUID(hex=outcome.subscription_id)
            except ValueError:
                continue
            if self.in_flight.get(subscription_id) == outcome.cseq:
                del self.in_flight[subscription_id]
            if outcome.delivered:
                continue
            if not outcome.ends_subscription:
                # Not told, but asked to wait: tell the state again after Retry-After.
                if subscription_id in self.subscriptions:
                    heapq.heappush(self._retries, (
                        now + max(1, min(outcome.retry_after or 1, 3600)), subscription_id))
                continue
            subscription = self.subscriptions.get(subscription_id)
            if subscription is None:
                continue
            if outcome.cseq < subscription.local_cseq:
                # The failure of a NOTIFY a later one has replaced (sent by the store
                # process before a restart, say, and retransmitted late): the watcher may
                # well refuse its older CSeq; it says nothing about the subscription.
                continue
            self.stats["failed"] += 1
            log.info("NOTIFY to %s:%d got %d: ending subscription %s", subscription.host,
                     subscription.port, outcome.status, subscription_id.hex)
            self.in_flight.pop(subscription_id, None)
            if subscription.terminate(now, DEACTIVATED) or subscription.state == TERMINATED:
                ended[subscription_id] = subscription
        if ended:
            try:
                self._save(ended)
            except Exception as error:
                log.error("recording ended subscriptions failed: %s", error)
                self._forget(ended)
            for subscription_id in ended:
                self._release(subscription_id)  # the watcher is gone: no final NOTIFY
        return self._flush(now) if flush else []

    # ---- several nodes ------------------------------------------------------------------------

    def _adopted_elsewhere(self, event: Any) -> None:
        """Another node took over a subscription this one held: let it go."""
        owner = getattr(event, "owner", None)
        if owner != self.config.node and event.originator_id in self.subscriptions:
            log.info("subscription %s adopted by %s", event.originator_id.hex, owner)
            self.in_flight.pop(event.originator_id, None)
            self._release(event.originator_id)
            self.app.evict([event.originator_id])

    def _keep_lease(self, now: float) -> None:
        """Renew this node's lease; adopt the subscriptions of nodes whose lease ran out."""
        if self.leases is None or now < self._next_lease:
            return
        self._next_lease = now + self.config.lease_interval
        try:
            self.leases.renew(self.config.node or "", self.config.lease_ttl)
            gone = [node for node in self.leases.expired() if node != self.config.node]
        except Exception as error:
            log.warning("node lease not renewed: %s", error)
            return
        for node in gone:
            try:
                self._adopt_from(node, now)
            except Exception as error:
                log.warning("adopting the subscriptions of %s failed: %s", node, error)

    def _adopt_from(self, node: str, now: float) -> None:
        assert self.config.node is not None and self.leases is not None
        self.compositor.catch_up()  # the view must list the other node's subscriptions
        rows = self.view.subscriptions(owner=node, active_only=True)
        complete = True
        for start in range(0, len(rows), 500):
            batch: dict[UUID, Subscription] = {}
            for row in rows[start:start + 500]:
                subscription_id = UUID(hex=row.id)
                self.app.evict([subscription_id])
                loaded = self.app.repository.get(subscription_id)
                if isinstance(loaded, Subscription) and loaded.adopt(self.config.node, now):
                    batch[subscription_id] = loaded
            if not batch:
                continue
            try:
                self._save(batch)
            except Exception as error:  # another node adopted some first: leave them
                log.info("adopting from %s: %s", node, error)
                self.app.evict(batch)
                complete = False
                continue
            for subscription in batch.values():
                self._hold(subscription)
                # Its old owner may have died before telling a change: tell the state now.
                self.dirty.setdefault(subscription.id, self.position)
            self.stats["adopted"] += len(batch)
            log.info("adopted %d subscriptions of node %s", len(batch), node)
        if complete:
            self.leases.forget(node)

    def tick(self, now: float | None = None) -> list[NotifyJob]:
        """End lapsed subscriptions (each gets its final NOTIFY), keep this node's lease,
        and read the feed."""
        now = self.clock() if now is None else now
        self._keep_lease(now)
        expiries = self._expiries
        while expiries and expiries[0][0] <= now:
            _, subscription_id = heapq.heappop(expiries)
            subscription = self.subscriptions.get(subscription_id)
            if subscription is not None and subscription.is_lapsed(now):
                self.dirty.setdefault(subscription_id, self.position)
        retries = self._retries
        while retries and retries[0][0] <= now:
            _, subscription_id = heapq.heappop(retries)
            if subscription_id in self.subscriptions:
                self.dirty.setdefault(subscription_id, self.position)
        if now < self._next_poll:
            return self._flush(now)  # a step of NOTIFYs only; the feed was read just now
        self._next_poll = now + self.config.poll_interval
        return self.poll(now)

    def next_deadline(self) -> float | None:
        """Epoch seconds of the next timer: a lapse, or the next feed poll."""
        deadline = self._expiries[0][0] if self._expiries else None
        if self._retries:
            deadline = self._retries[0][0] if deadline is None else min(deadline,
                                                                       self._retries[0][0])
        if self.subscriptions:
            poll = self.clock() + self.config.poll_interval
            deadline = poll if deadline is None else min(deadline, poll)
        if self.leases is not None:
            deadline = self._next_lease if deadline is None else min(deadline,
                                                                     self._next_lease)
        wait = self.pacer.ready_in() if self.pacer is not None and self.dirty else 0.0
        if wait > 0:
            # The pacer holds the next step back (PUBLISHes first): due when it lets it
            # run, whether or not one is ready by then (not scanned for: the scan costs).
            now = self.clock()
            return now + wait if deadline is None else min(deadline, now + wait)
        if self._more_ready():
            return self.clock()  # the next step is due at once (after waiting batches)
        return deadline

    def _more_ready(self) -> bool:
        """Are there dirty subscriptions that could get a NOTIFY now?"""
        if len(self.in_flight) >= self.config.max_in_flight or not self.dirty or \
                self.clock() < self._retry_at:
            return False
        return any(sid not in self.in_flight for sid in self.dirty)


# What one held subscription costs beyond its strings (the aggregate, its dict, the
# indexes, its copy in the application's cache): 10,000 subscriptions with short strings
# (about 100 bytes each) measured 2.36 KB apiece with tracemalloc (2026-11-30).
SUBSCRIPTION_OVERHEAD = 2300


def _size(subscription: Subscription) -> int:
    """An estimate of a held subscription's memory: its variable-length strings (a hostile
    SUBSCRIBE can make them large, up to a message's size) plus a fixed overhead."""
    return SUBSCRIPTION_OVERHEAD + sum(len(text) for text in (
        subscription.call_id, subscription.remote_tag, subscription.local_tag,
        subscription.watcher_uri, subscription.watcher_contact, subscription.aor,
        *subscription.route_set)) + len(getattr(subscription, "local_uri", None) or "")
