"""The Compositor: RFC 3903 event state kept as events (an eventsourcing Application).

Its API is NkSIP's event compositor (find / request / clear) made Pythonic:

    compositor = Compositor.open("sqlite:///esc.sqlite3")
    accepted = compositor.publish("sip:alice@example.com", "presence",
                                  body=pidf, content_type="application/pidf+xml",
                                  expires=3600)
    compositor.find("sip:alice@example.com", accepted.etag, "presence")
    compositor.publish("sip:alice@example.com", "presence", if_match=accepted.etag)  # refresh

Writes are serialised by one lock and committed in groups: `process_many` decides a batch
of requests in arrival order (a later request for the same publication sees the earlier
one's effect), saves every touched aggregate in one transaction (one fsync) and only then
returns. Nothing is acknowledged before it is durable, and a failed save acknowledges
nothing of its batch.
"""

from __future__ import annotations

import base64
import heapq
import logging
import threading
import time
from typing import Any, Callable, Iterable, Iterator, Sequence
from uuid import UUID, uuid4

from eventsourcing.application import AggregateNotFoundError, Application
from eventsourcing.persistence import IntegrityError, JSONTranscoder, PersistenceError

from domain import (Audit, CompositorError, ConditionalRequestFailed, EventPackages,
                    ExpiryPolicy, InternalError, Operation, Publication, PublishRequest, StoreUnavailable,
                    address_of_record, classify, compose_etag, publication_id_of)
from domain.packages import DEFAULT_PACKAGES
from domain.publication import NO_AUDIT

from .random_pool import RANDOM
from .records import Accepted, EventRecord, Found, event_record
from .store_url import DEFAULT_STORE_URL, StoreConfig, parse_store_url
from .transcodings import BytesAsBase64, FastJSONTranscoder
from .view import CurrentStateView, LivePublication

log = logging.getLogger("esc.compositor")

Result = Accepted | CompositorError

# How many events between snapshots: a publication refreshed 10,000 times is loaded from
# its latest snapshot plus fewer than this many events.
SNAPSHOT_INTERVAL = 50


# Failures of the store itself while deciding (a read): they fail the whole batch with 503,
# unlike a fault on one request's input, which fails that request alone.
_STORE_ERRORS = (PersistenceError, OSError)


class _FaultyRequest(Exception):
    """Deciding request `index` raised something that is not a refusal."""

    def __init__(self, index: int, error: InternalError) -> None:
        super().__init__(index)
        self.index = index
        self.error = error


def new_secret() -> str:
    """The random part of an entity-tag: 96 bits, URL-safe (a SIP token), as
    secrets.token_urlsafe(12) gives."""
    return base64.urlsafe_b64encode(RANDOM.take(12)).rstrip(b"=").decode("ascii")


class Compositor(Application):
    name = "esc"
    snapshotting_intervals = {Publication: SNAPSHOT_INTERVAL}

    def __init__(self, env: dict[str, str], *, config: StoreConfig,
                 packages: EventPackages = DEFAULT_PACKAGES,
                 policy: ExpiryPolicy = ExpiryPolicy(),
                 clock: Callable[[], float] = time.time,
                 max_per_resource: int | None = None) -> None:
        super().__init__(env)
        self.config = config
        self.packages = packages
        self.policy = policy
        self.clock = clock
        self.max_per_resource = max_per_resource
        self._write_lock = threading.RLock()
        self._loaded: set[UUID] = set()  # ids loaded by the request being decided
        self._created_in_batch: dict[tuple[str, str], int] = {}
        self.view = CurrentStateView(config.view_path)
        self.catch_up()

    # ---- opening -------------------------------------------------------------------------

    @classmethod
    def open(cls, url: str = DEFAULT_STORE_URL, *, events: Iterable[str] | EventPackages | None = None,
             default_expires: int = 60, min_expires: int = 1, max_expires: int = 3600,
             cache_size: int = 20000, create_schema: bool = True,
             clock: Callable[[], float] = time.time, env: dict[str, str] | None = None,
             max_per_resource: int | None = None) -> "Compositor":
        """Open the compositor on the store a URL names (see `store_url`)."""
        config = parse_store_url(url)
        if events is None:
            packages = DEFAULT_PACKAGES
        elif isinstance(events, EventPackages):
            packages = events
        else:
            packages = EventPackages.named(events)
        policy = ExpiryPolicy(default_expires, min_expires, max_expires)
        settings = {
            **config.env,
            "AGGREGATE_CACHE_MAXSIZE": str(cache_size),
            # One process owns its cache; a write from elsewhere shows up as a version
            # conflict on save, which evicts and re-decides, so no fast-forward read is
            # needed on every hit. Commands never half-mutate (they check, then trigger),
            # and a failed save evicts what it touched, so no defensive deep copy either.
            "AGGREGATE_CACHE_FASTFORWARD": "n",
            "DEEPCOPY_FROM_AGGREGATE_CACHE": "n",
            "CREATE_TABLE": "y" if create_schema else "n",
            **(env or {}),
        }
        return cls(settings, config=config, packages=packages, policy=policy, clock=clock,
                   max_per_resource=max_per_resource)

    def _save(self, aggregates: Iterable[Publication]) -> list[Any]:
        """Commit the pending events of these aggregates in one transaction.

        The same as `Application.save(*aggregates)` for our case, minus its generic
        collection step, whose isinstance checks against typing Protocols cost more than
        the rest of the save; snapshots are taken from the aggregates in hand instead of
        being reloaded from the store."""
        aggregates = list(aggregates)
        events: list[Any] = []
        for aggregate in aggregates:
            events.extend(aggregate.collect_events())
        recordings = self.events.put(events)
        cache = self.repository.cache
        if cache is not None:
            for aggregate in aggregates:
                cache.put(aggregate.id, aggregate)
        if self.snapshots is not None:
            crossed = {e.originator_id for e in events
                       if e.originator_version % SNAPSHOT_INTERVAL == 0}
            due = [a for a in aggregates if a.id in crossed]
            if due:
                try:
                    self.snapshots.put([Publication.Snapshot.take(a) for a in due])
                except Exception as error:  # only loading speed depends on snapshots
                    log.warning("snapshot not taken (loading stays correct): %s", error)
        return recordings

    def construct_transcoder(self):  # type: ignore[override]
        # eventsourcing's JSON format, written with orjson where that gives the same bytes
        # to read back (infrastructure/transcodings.py); a configured TRANSCODER_TOPIC wins.
        if self.env.get("TRANSCODER_TOPIC"):
            return super().construct_transcoder()
        transcoder = FastJSONTranscoder()
        self.register_transcodings(transcoder)
        return transcoder

    def register_transcodings(self, transcoder: JSONTranscoder) -> None:
        super().register_transcodings(transcoder)
        transcoder.register(BytesAsBase64())

    def construct_env(self, name: str, env: Any = None):  # type: ignore[override]
        # Settings come from the store URL and Compositor.open only, never from stray
        # process environment variables such as PERSISTENCE_MODULE.
        from eventsourcing.utils import Environment

        merged = dict(type(self).env)
        if type(self).snapshotting_intervals:
            merged["IS_SNAPSHOTTING_ENABLED"] = "y"
        merged.update(env or {})
        return Environment(name, merged)

    def now(self, now: float | None = None) -> float:
        return self.clock() if now is None else float(now)

    # ---- the PUBLISH entry points ------------------------------------------------------------

    def publish(self, aor: str, event: str, *, body: bytes | str | None = None,
                content_type: str | None = None, expires: int | None = None,
                if_match: str | None = None, now: float | None = None,
                audit: Audit = NO_AUDIT) -> Accepted:
        """Initial, refresh, modify or remove, chosen by RFC 3903 Table 1.
        Raises the domain's CompositorError subclasses."""
        if isinstance(body, str):
            body = body.encode("utf-8")
        request = PublishRequest(address_of_record(aor), event, body, content_type, expires,
                                 if_match, audit)
        return self.process(request, now)

    def process(self, request: PublishRequest, now: float | None = None) -> Accepted:
        result = self.process_many([request], now)[0]
        if isinstance(result, CompositorError):
            raise result
        return result

    def process_many(self, requests: Sequence[PublishRequest],
                     now: float | None = None) -> list[Result]:
        """Decide every request in order, commit all changes in one save, then answer.

        Each result is an Accepted or the CompositorError to answer with. If the save
        fails, every request of the batch fails with StoreUnavailable and nothing is kept.
        The view reflects the batch when this returns."""
        results, recordings = self.commit_many(requests, now)
        self.project(recordings)
        return results

    def commit_many(self, requests: Sequence[PublishRequest],
                    now: float | None = None) -> tuple[list[Result], list[Any]]:
        """`process_many` without the view update: the results (every change already
        durable) and the recordings to pass to `project` next. The store process answers
        in between, so the SIP side is not kept waiting for the read model.

        A request whose decision raises anything but a refusal (a bug of ours or of a
        library, on this request's input) is answered InternalError on its own, and the
        batch is decided again without it, from freshly loaded aggregates, so that its
        batch-mates are committed exactly as if it had never been there. Only a failure of
        the store itself (reading or saving) fails the whole batch."""
        now = self.now(now)
        faulty: dict[int, InternalError] = {}
        with self._write_lock:
            attempts = 0
            while True:
                touched: dict[UUID, Publication] = {}
                self._loaded = set()
                try:
                    results = self._decide_all(requests, now, touched, faulty)
                except _FaultyRequest as fault:
                    self._evict(touched)
                    self._evict(dict.fromkeys(self._loaded))
                    faulty[fault.index] = fault.error
                    continue
                except Exception as error:  # loading from the store failed
                    self._evict(touched)
                    log.error("event store read failed: %s", error)
                    failure = StoreUnavailable(f"event store unavailable: {error}")
                    return [failure] * len(requests), []
                if not touched:
                    return results, []
                try:
                    recordings = self._save(touched.values())
                except IntegrityError:
                    # Another process or node wrote one of these publications first:
                    # reload them and decide again (DESIGN decision 4).
                    self._evict(touched)
                    attempts += 1
                    if attempts < 5:
                        continue
                    failure = StoreUnavailable(
                        "too many concurrent writes to the same publications")
                    return [failure] * len(requests), []
                except Exception as error:  # the store is down, full, or read-only
                    self._evict(touched)
                    log.error("event store save failed: %s", error)
                    failure = StoreUnavailable(f"event store save failed: {error}")
                    return [failure] * len(requests), []
                return results, recordings

    def _decide_all(self, requests: Sequence[PublishRequest], now: float,
                    touched: dict[UUID, Publication],
                    faulty: dict[int, InternalError] | None = None) -> list[Result]:
        """Decide each request in order, collecting the aggregates they change in
        `touched` (filled in place, so a failure part-way can still evict them). Requests
        in `faulty` are skipped (answered with their error); a new fault raises
        _FaultyRequest."""
        results: list[Result] = []
        self._created_in_batch: dict[tuple[str, str], int] = {}
        for index, request in enumerate(requests):
            if faulty and index in faulty:
                results.append(faulty[index])
                continue
            try:
                results.append(self._decide(request, now, touched))
            except CompositorError as refusal:
                results.append(refusal)
            except _STORE_ERRORS:
                raise
            except Exception as error:
                log.error("internal error deciding a PUBLISH for %s (%s): %s: %s",
                          request.aor, request.event, type(error).__name__, error)
                raise _FaultyRequest(index, InternalError(
                    f"internal error: {type(error).__name__}")) from error
        return results

    def _decide(self, request: PublishRequest, now: float,
                touched: dict[UUID, Publication]) -> Accepted:
        decision = classify(request, self.packages, self.policy)
        event_package = decision.package.name
        if decision.operation is Operation.DISCARD:
            # An initial PUBLISH with Expires: 0 creates nothing; its tag names nothing.
            return Accepted(compose_etag(uuid4(), new_secret()), 0)
        if decision.operation is Operation.INITIAL:
            self._check_room(request.aor, event_package, now, touched)
            room_key = (request.aor, event_package)
            self._created_in_batch[room_key] = self._created_in_batch.get(room_key, 0) + 1
            publication_id = uuid4()
            etag = compose_etag(publication_id, new_secret())
            touched[publication_id] = Publication.publish(
                id=publication_id, aor=request.aor, event_package=event_package, etag=etag,
                content_type=decision.content_type or "", body=request.body or b"",
                expires_at=now + decision.expires, now=now, audit=request.audit)
            return Accepted(etag, decision.expires)

        assert request.if_match is not None
        publication = self._publication_for(request.if_match, request.aor, event_package,
                                            now, touched)
        if decision.operation is Operation.REMOVE:
            publication.remove(aor=request.aor, event_package=event_package,
                               if_match=request.if_match, now=now, audit=request.audit)
            touched[publication.id] = publication
            return Accepted(request.if_match, 0)
        etag = compose_etag(publication.id, new_secret())
        if decision.operation is Operation.REFRESH:
            publication.refresh(aor=request.aor, event_package=event_package,
                                if_match=request.if_match, new_etag=etag,
                                expires_at=now + decision.expires, now=now,
                                audit=request.audit)
        else:
            publication.modify(aor=request.aor, event_package=event_package,
                               if_match=request.if_match, new_etag=etag,
                               content_type=decision.content_type or "",
                               body=request.body or b"", expires_at=now + decision.expires,
                               now=now, audit=request.audit)
        touched[publication.id] = publication
        return Accepted(etag, decision.expires)

    def _publication_for(self, if_match: str, aor: str, event_package: str, now: float,
                         touched: dict[UUID, Publication]) -> Publication:
        """The live publication a SIP-If-Match names, or ConditionalRequestFailed."""
        publication_id = publication_id_of(if_match)
        if publication_id is None:
            raise ConditionalRequestFailed("not an entity-tag this compositor issued")
        publication = touched.get(publication_id)
        if publication is None:
            publication = self._load(publication_id)
            if publication is not None and not publication.matches(aor, event_package,
                                                                   if_match, now):
                # A cached copy may be stale (another process or node moved it on):
                # confirm a refusal against the store before giving it.
                self._evict({publication_id: publication})
                publication = self._load(publication_id)
        if publication is None:
            raise ConditionalRequestFailed("no publication has that entity-tag")
        if publication.is_lapsed(now) and publication.etag == if_match:
            # It ran out before the scheduler noticed: record the expiry now.
            publication.expire(now)
            touched[publication.id] = publication
        publication.check_matches(aor, event_package, if_match, now)
        return publication

    def _check_room(self, aor: str, event_package: str, now: float,
                    touched: dict[UUID, Publication]) -> None:
        if self.max_per_resource is None:
            return
        from domain import TooManyPublications

        # The view may lag this batch: count what it holds, plus this batch's new ones.
        live = self.view.count_live(aor, event_package, now)
        live += self._created_in_batch.get((aor, event_package), 0)
        if live >= self.max_per_resource:
            raise TooManyPublications(
                f"{aor} already has {live} live {event_package} publications")

    def _load(self, publication_id: UUID) -> Publication | None:
        self._loaded.add(publication_id)
        try:
            aggregate = self.repository.get(publication_id)
        except AggregateNotFoundError:
            return None
        return aggregate if isinstance(aggregate, Publication) else None

    def _is_stale(self, publication: Publication) -> bool:
        """Has the store an event newer than this (possibly cached) copy? One indexed read."""
        newer = self.events.get(publication.id, gt=publication.version, limit=1)
        return next(iter(newer), None) is not None

    def _cached(self, publication_id: UUID) -> Publication | None:
        cache = self.repository.cache
        if cache is None:
            return None
        try:
            return cache.get(publication_id)  # type: ignore[return-value]
        except KeyError:
            return None

    def _load_many(self, ids: Sequence[UUID]) -> dict[UUID, Publication]:
        """Publications not in the cache, read with one query (SQLite store). Those with a
        snapshot are left to the repository (they have long histories); other stores load
        one by one later."""
        wanted = [i for i in ids if self._cached(i) is None]
        datastore = getattr(self.recorder, "datastore", None)
        if not wanted or self.config.kind != "sqlite" or datastore is None:
            return {}
        from eventsourcing.persistence import StoredEvent

        keys = [i.hex for i in wanted]
        marks = ",".join("?" * len(keys))
        with datastore.transaction(commit=False) as cursor:
            cursor.execute(f"SELECT DISTINCT originator_id FROM stored_snapshots "
                           f"WHERE originator_id IN ({marks})", keys)
            snapshotted = {row[0] for row in cursor.fetchall()}
            cursor.execute(f"SELECT originator_id, originator_version, topic, state "
                           f"FROM stored_events WHERE originator_id IN ({marks}) "
                           f"ORDER BY originator_id, originator_version", keys)
            rows = cursor.fetchall()
        loaded: dict[UUID, Publication] = {}
        current, aggregate = None, None
        for originator_id, version, topic, state in rows:
            if originator_id in snapshotted:
                continue
            if originator_id != current:
                if aggregate is not None:
                    loaded[aggregate.id] = aggregate
                current, aggregate = originator_id, None
            event = self.mapper.to_domain_event(StoredEvent(
                originator_id=UUID(hex=originator_id), originator_version=version,
                topic=topic, state=state))
            aggregate = event.mutate(aggregate)
        if aggregate is not None:
            loaded[aggregate.id] = aggregate
        return loaded

    def _evict(self, aggregates: dict[UUID, Any]) -> None:
        cache = self.repository.cache
        if cache is None:
            return
        for aggregate_id in aggregates:
            try:
                cache.get(aggregate_id, evict=True)
            except KeyError:
                pass

    # ---- the view -----------------------------------------------------------------------------

    def project(self, recordings: Sequence[Any]) -> None:
        """Apply just-saved events to the view; on a gap, catch up from the store. A view
        failure never fails the request: the events are durable, the view catches up.
        Positions the view already holds are skipped, so a late call is harmless."""
        if not recordings:
            return
        with self._write_lock:
            self._project(recordings)

    def _project(self, recordings: Sequence[Any]) -> None:
        try:
            pairs = [(r.notification.id, r.domain_event) for r in recordings]
            if not self.view.apply(pairs):
                self.catch_up()
        except Exception as error:  # pragma: no cover - logged, repaired by catch_up
            log.warning("view update failed (will catch up): %s", error)

    def catch_up(self, page: int = 1000) -> int:
        """Apply every stored event the view has not seen yet. Returns how many."""
        applied = 0
        while True:
            start = self.view.position() + 1
            notifications = self.recorder.select_notifications(start=start, limit=page)
            if not notifications:
                return applied
            pairs = [(n.id, self.mapper.to_domain_event(n)) for n in notifications]
            self.view.apply(pairs, allow_gap=True)
            applied += len(pairs)
            if len(notifications) < page:
                return applied

    def rebuild_view(self) -> int:
        """Forget the view and rebuild it from the events. The change-feed consumers keep
        their positions: the events did not change, so neither did what they have seen."""
        self.view.reset(consumers=False)
        return self.catch_up()

    def verify(self) -> tuple[int, int, list[str]]:
        """Replay every event into a scratch view and compare it with the live one.
        Returns (live rows, replayed rows, differences)."""
        self.catch_up()
        scratch = CurrentStateView(None)
        try:
            position = 0
            while True:
                notifications = self.recorder.select_notifications(start=position + 1,
                                                                   limit=1000)
                if not notifications:
                    break
                scratch.apply([(n.id, self.mapper.to_domain_event(n)) for n in notifications],
                              allow_gap=True)
                position = notifications[-1].id
            live, replayed = self.view.snapshot(), scratch.snapshot()
        finally:
            scratch.close()
        differences = []
        for pid in sorted(set(live) | set(replayed)):
            if pid not in replayed:
                differences.append(f"{pid}: in the view but not in the events")
            elif pid not in live:
                differences.append(f"{pid}: in the events but missing from the view")
            elif live[pid] != replayed[pid]:
                differences.append(f"{pid}: view {live[pid][:7]!r} != events {replayed[pid][:7]!r}")
        return len(live), len(replayed), differences

    # ---- queries ------------------------------------------------------------------------------

    def find(self, aor: str, etag: str, event: str | None = None,
             now: float | None = None) -> Found | None:
        """The live publication an entity-tag names, read from the event store itself
        (strongly consistent), or None."""
        now = self.now(now)
        publication_id = publication_id_of(etag)
        if publication_id is None:
            return None
        aor = address_of_record(aor)
        with self._write_lock:
            publication = self._load(publication_id)
            if publication is not None and self._is_stale(publication):
                # Another process or node moved it on since we cached it.
                self._evict({publication_id: publication})
                publication = self._load(publication_id)
        if publication is None or publication.etag != etag or publication.aor != aor:
            return None
        if event is not None and publication.event_package != event.split(";")[0].strip().lower():
            return None
        if not publication.is_live(now):
            return None
        return Found(publication.aor, publication.event_package, publication.etag,
                     publication.content_type, publication.body, publication.expires_at,
                     publication.id.hex, publication.version)

    def _follow(self) -> None:
        """With a shared store (PostgreSQL) other nodes write too: apply their events to
        this node's view before answering from it (one indexed query when nothing is new).
        If the store is down, answer from the view as it is."""
        if self.config.kind != "postgresql":
            return
        try:
            self.catch_up()
        except Exception as error:
            log.warning("view not caught up (store unavailable?): %s", error)

    def publications(self, aor: str, event: str | None = None,
                     now: float | None = None) -> list[Found]:
        """Every live publication of a resource (from the view)."""
        self._follow()
        return [self._found(row) for row in
                self.view.live(address_of_record(aor), _package_name(event), self.now(now))]

    def list(self, aor: str | None = None, event: str | None = None,
             now: float | None = None) -> list[Found]:
        aor = address_of_record(aor) if aor else None
        self._follow()
        return [self._found(row) for row in
                self.view.live(aor, _package_name(event), self.now(now))]

    def compose(self, aor: str, event: str, now: float | None = None) -> tuple[str, bytes] | None:
        """The resource's composed state: every live publication merged by the package's
        composer (RFC 3903 leaves the policy to the compositor). None when nothing is live."""
        package = self.packages.get(event)
        live = self.publications(aor, package.name, now)
        if not live:
            return None
        return live[-1].content_type, package.composer([p.body for p in live])

    @staticmethod
    def _found(row: LivePublication) -> Found:
        return Found(row.aor, row.event, row.etag, row.content_type, row.body, row.expires_at,
                     row.id, row.version)

    def history(self, aor: str, event: str | None = None) -> list[EventRecord]:
        """Every event of every publication the resource ever had, oldest first.

        Publications are merged by event time (an expiry takes effect at its own time);
        events with the same time (one batch) keep the order they were decided in, and each
        publication's events stay in version order even if node clocks disagree."""
        self._follow()
        streams = [list(self.events.get(UUID(hex=publication_id)))
                   for publication_id in self.view.publication_ids(address_of_record(aor),
                                                                   _package_name(event))]
        merged = heapq.merge(*streams, key=lambda e: (e.at, e.timestamp))
        return [event_record(domain_event) for domain_event in merged]

    def feed(self, after: int = 0, limit: int | None = None,
             page: int = 500) -> Iterator[EventRecord]:
        """The change feed: every event in one global order, from the position after
        `after`. Positions are the store's notification ids."""
        position, remaining = after, limit
        while remaining is None or remaining > 0:
            size = page if remaining is None else min(page, remaining)
            notifications = self.recorder.select_notifications(start=position + 1, limit=size)
            if not notifications:
                return
            for notification in notifications:
                yield event_record(self.mapper.to_domain_event(notification), notification.id)
            position = notifications[-1].id
            if remaining is not None:
                remaining -= len(notifications)
            if len(notifications) < size:
                return

    def consumer(self, name: str) -> "FeedConsumer":
        """A named, tracked reader of the change feed that resumes where it stopped."""
        from .feed import FeedConsumer

        return FeedConsumer(self, name)

    # ---- expiry -------------------------------------------------------------------------------

    def expire_due(self, now: float | None = None, batch: int = 1000) -> int:
        """Record `Expired` for every publication whose time has come. Safe to call from
        every process and node: a duplicate expiry is a no-op, a race is a version
        conflict that one side loses. Returns how many expired here."""
        now = self.now(now)
        total = 0
        while True:
            due = self.view.due(now, batch)
            if not due:
                return total
            # Read what the cache lacks before taking the write lock, in one query per
            # batch where the store allows it, so PUBLISH handling is not held up by
            # thousands of single-aggregate loads.
            ids = [UUID(hex=row.id) for row in due]
            preloaded = self._load_many(ids)
            with self._write_lock:
                expired: dict[UUID, Publication] = {}
                for row, publication_id in zip(due, ids):
                    publication = self._cached(publication_id) or preloaded.get(publication_id) \
                        or self._load(publication_id)
                    if publication is not None and publication.version < row.version:
                        # Our copy is older than the row (another process refreshed it,
                        # perhaps shorter): decide on the stored state.
                        self._evict({publication.id: publication})
                        publication = self._load(publication.id)
                    if publication is not None and publication.expire(now):
                        expired[publication.id] = publication
                if expired:
                    try:
                        recordings = self._save(expired.values())
                    except IntegrityError:
                        self._evict(expired)  # someone else got there; look again
                        self.catch_up()
                        continue
                    except Exception:
                        self._evict(expired)
                        raise
                    self._project(recordings)
                    total += len(expired)
                else:
                    # The view listed rows the events no longer support (it lags):
                    # catch it up and stop for this round.
                    self.catch_up()
                    return total
            if len(due) < batch:
                return total

    # ---- housekeeping ---------------------------------------------------------------------------

    def clear(self) -> None:
        """Delete every event, snapshot and view row: a fresh, empty compositor (NkSIP's
        clear/1). For tests and laboratories; history is gone afterwards."""
        with self._write_lock:
            kind = self.config.kind
            if kind == "sqlite" or (kind == "module" and hasattr(self.recorder, "datastore")
                                    and "sqlite" in type(self.recorder).__module__):
                with self.recorder.datastore.transaction(commit=True) as c:  # type: ignore[attr-defined]
                    c.execute("DELETE FROM stored_events")
                    c.execute("DELETE FROM stored_snapshots")
            elif kind == "postgresql":
                from .postgres import truncate_all

                truncate_all(self)
            elif kind == "memory":
                for recorder in (self.recorder, getattr(self.snapshots, "recorder", None)):
                    if recorder is not None:
                        type(recorder).__init__(recorder)  # a POPO recorder's empty state
            else:
                raise NotImplementedError(f"clear() is not supported for {kind} stores")
            if self.repository.cache is not None:
                # LRUCache.clear() only resets its recency list, not the cached aggregates:
                # evict every one, or pre-clear state would still be found and refreshed.
                self._evict(dict.fromkeys(list(self.repository.cache.cache)))
            self.view.reset()

    def close(self) -> None:
        try:
            self.view.close()
        finally:
            super().close()


def _package_name(event: str | None) -> str | None:
    return event.split(";", 1)[0].strip().lower() if event else None
