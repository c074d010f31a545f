"""The command side: decide a batch of PUBLISH requests, save it, answer each request.

Under the write lock each request is decided in order, so a later request for the same
publication sees the earlier one's effect: `classify` (RFC 3903 Table 1) picks the
operation; an initial PUBLISH gets a new aggregate id and entity-tag (after the
per-resource limit is checked); a refresh, modify or remove loads the aggregate its
SIP-If-Match names (from the cache, or from the event store) and applies the command with
a new entity-tag. A refusal is a result, not an exception. All the events of the batch are
then saved in one transaction (one fsync) and only then answered: nothing is acknowledged
before it is durable (design decision 3).

- A request whose decision raises anything but a refusal is answered InternalError on its
  own, and the batch is decided again without it, from freshly loaded aggregates
  (design decision 8).
- A version conflict on save (another process or node wrote one of these publications
  first) evicts what the batch touched and decides it again (design decision 4).
- A failure of the store itself, reading or saving, fails the whole batch with
  StoreUnavailable and keeps nothing.

Expiry is a command too: `expire_due` records `Expired` for the publications the view lists
as due, and projects it at once.
"""

from __future__ import annotations

import base64
import logging
import secrets
from typing import Callable, Sequence
from uuid import UUID, uuid4

from eventsourcing.persistence import IntegrityError, PersistenceError, Recording

from domain import (CompositorError, ConditionalRequestFailed, EventPackages, ExpiryPolicy,
                    InternalError, Operation, Publication, PublishRequest, StoreUnavailable,
                    TooManyPublications, classify, compose_etag, publication_id_of)

from .application import EscApplication
from .projection import CurrentState
from .records import Accepted

log = logging.getLogger("esc.commands")

Result = Accepted | CompositorError

# Failures of the store itself while deciding (a read): they fail the whole batch with 503,
# unlike a fault on one request's input, which fails that request alone.
_STORE_ERRORS = (PersistenceError, OSError)

# How often a batch is decided again after losing a version race before it is answered 503.
MAX_ATTEMPTS = 5


def new_secret(random_bytes: Callable[[int], bytes]) -> str:
    """The random part of an entity-tag: 96 bits from the injected CSPRNG, URL-safe (a SIP
    token), as secrets.token_urlsafe(12) gives."""
    return base64.urlsafe_b64encode(random_bytes(12)).rstrip(b"=").decode("ascii")


class _FaultyRequest(Exception):
    """Deciding request `index` raised something that is not a refusal."""

    def __init__(self, index: int, error: InternalError) -> None:
        super().__init__(index)
        self.index = index
        self.error = error


class CommandSide:
    def __init__(self, app: EscApplication, projection: CurrentState,
                 packages: EventPackages, policy: ExpiryPolicy,
                 max_per_resource: int | None = None,
                 random_bytes: Callable[[int], bytes] = secrets.token_bytes) -> None:
        self.app = app
        self.random_bytes = random_bytes
        self.projection = projection
        self.view = projection.view
        self.packages = packages
        self.policy = policy
        self.max_per_resource = max_per_resource
        self._loaded: set[UUID] = set()  # ids loaded while deciding the current batch
        self._created_in_batch: dict[tuple[str, str], int] = {}
        # Told how late each Expired was recorded, in seconds after its expiry time (the
        # store process's metrics); called on the expiry scheduler's thread.
        self.on_expired: Callable[[float], None] | None = None

    # ---- a batch of PUBLISH requests --------------------------------------------------------

    def commit_many(self, requests: Sequence[PublishRequest],
                    now: float) -> tuple[list[Result], list[Recording]]:
        """Decide every request in order and save the batch: the results (every change
        already durable) and the recordings to project."""
        faulty: dict[int, InternalError] = {}
        attempts = 0
        with self.app.lock:
            while True:
                touched: dict[UUID, Publication] = {}
                self._loaded = set()
                try:
                    results = self._decide_all(requests, now, touched, faulty)
                except _FaultyRequest as fault:
                    self.app.evict(touched)
                    self.app.evict(self._loaded)
                    faulty[fault.index] = fault.error
                    continue
                except Exception as error:  # loading from the store failed
                    self.app.evict(touched)
                    log.error("event store read failed: %s", error)
                    return self._failed(requests, f"event store unavailable: {error}"), []
                if not touched:
                    return results, []
                try:
                    return results, self.app.save_batch(touched.values())
                except IntegrityError:
                    self.app.evict(touched)
                    attempts += 1
                    if attempts < MAX_ATTEMPTS:
                        continue
                    return self._failed(
                        requests, "too many concurrent writes to the same publications"), []
                except Exception as error:  # the store is down, full, or read-only
                    self.app.evict(touched)
                    log.error("event store save failed: %s", error)
                    return self._failed(requests, f"event store save failed: {error}"), []

    @staticmethod
    def _failed(requests: Sequence[PublishRequest], why: str) -> list[Result]:
        return [StoreUnavailable(why)] * len(requests)

    def _decide_all(self, requests: Sequence[PublishRequest], now: float,
                    touched: dict[UUID, Publication],
                    faulty: dict[int, InternalError]) -> list[Result]:
        """Decide each request in order, collecting the aggregates they change in
        `touched` (filled in place, so a failure part-way can still evict them). Requests
        in `faulty` are answered with their error; a new fault raises _FaultyRequest."""
        results: list[Result] = []
        self._created_in_batch = {}
        for index, request in enumerate(requests):
            if index in faulty:
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
            return Accepted(compose_etag(uuid4(), new_secret(self.random_bytes)), 0)
        if decision.operation is Operation.INITIAL:
            self._check_room(request.aor, event_package, now)
            room_key = (request.aor, event_package)
            self._created_in_batch[room_key] = self._created_in_batch.get(room_key, 0) + 1
            publication_id = uuid4()
            etag = compose_etag(publication_id, new_secret(self.random_bytes))
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
        etag = compose_etag(publication.id, new_secret(self.random_bytes))
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
                self.app.evict([publication_id])
                publication = self._load(publication_id)
        if publication is None:
            raise ConditionalRequestFailed("no publication has that entity-tag")
        if publication.is_lapsed(now) and publication.etag == if_match:
            # It ran out before the scheduler noticed: record the expiry now.
            publication.expire(now)
            touched[publication.id] = publication
        publication.check_matches(aor, event_package, if_match, now)
        return publication

    def _check_room(self, aor: str, event_package: str, now: float) -> None:
        if self.max_per_resource is None:
            return
        # The view may lag this batch: count what it holds, plus this batch's new ones.
        live = self.view.count_live(aor, event_package, now)
        live += self._created_in_batch.get((aor, event_package), 0)
        if live >= self.max_per_resource:
            raise TooManyPublications(
                f"{aor} already has {live} live {event_package} publications")

    def _load(self, publication_id: UUID) -> Publication | None:
        self._loaded.add(publication_id)
        return self.app.load(publication_id)

    # ---- expiry -------------------------------------------------------------------------------

    def expire_due(self, now: float, batch: int = 1000) -> int:
        """Record `Expired` for every publication whose time has come, and project it.
        Safe to call from every process and node: a duplicate expiry is a no-op, a race is
        a version conflict that one side loses. Returns how many expired here."""
        total = 0
        while True:
            due = self.view.due(now, batch)
            if not due:
                return total
            # Read what the cache lacks before taking the write lock, in one query per
            # batch where the store allows it, so PUBLISH handling is not held up by
            # thousands of single-aggregate loads.
            versions = {UUID(hex=row.id): row.version for row in due}
            preloaded = self.app.load_many(versions)
            with self.app.lock:
                expired: dict[UUID, Publication] = {}
                for publication_id, version in versions.items():
                    publication = (self.app.cached(publication_id)
                                   or preloaded.get(publication_id)
                                   or self.app.load(publication_id))
                    if publication is not None and publication.version < version:
                        # Our copy is older than the row (another process refreshed it,
                        # perhaps shorter): decide on the stored state.
                        self.app.evict([publication_id])
                        publication = self.app.load(publication_id)
                    if publication is not None and publication.expire(now):
                        expired[publication.id] = publication
                if not expired:
                    # The view listed rows the events no longer support (it lags): catch
                    # it up and stop for this round.
                    self.projection.catch_up()
                    return total
                try:
                    recordings = self.app.save_batch(expired.values())
                except IntegrityError:
                    self.app.evict(expired)  # someone else got there; look again
                    self.projection.catch_up()
                    continue
                except Exception:
                    self.app.evict(expired)
                    raise
                self.projection.project(recordings)
                total += len(expired)
                if self.on_expired is not None:
                    for publication in expired.values():
                        self.on_expired(now - publication.expires_at)
            if len(due) < batch:
                return total
