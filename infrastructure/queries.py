"""The queries: what the compositor holds, read without changing it.

- `find`: the publication an entity-tag names, from the event store itself (strongly
  consistent, design decision 2: no view is consulted);
- `publications`, `list`, `compose`: live publications, from the current-state view
  (caught up first when other nodes write the store too);
- `state`: the composed document of a resource now (from the view) or at any past moment
  (replayed from its history);
- `history`: every event of every publication a resource ever had, from the event store,
  found through the view's index of resources;
- `feed`: every event in the store's one global order, from its notification log;
- `watchers`: the subscriptions to resources, from the view (ended ones on request);
- `stats`: what the store holds in numbers (`StoreSummary`), for `esc stats`.
"""

from __future__ import annotations

import heapq
import os
from dataclasses import asdict, dataclass
from typing import Any, Iterable, Iterator
from uuid import UUID

from domain import Contribution, EventPackages, address_of_record, publication_id_of
from domain.packages import EventPackage

from .application import EscApplication
from .projection import CurrentState
from .records import EventRecord, Found, SubscriptionRow, event_record
from .store_url import StoreConfig
from .view import VIEW, LivePublication


class Queries:
    def __init__(self, app: EscApplication, projection: CurrentState,
                 packages: EventPackages) -> None:
        self.app = app
        self.projection = projection
        self.view = projection.view
        self.packages = packages

    def find(self, aor: str, etag: str, event: str | None, now: float) -> Found | None:
        """The live publication an entity-tag names, or None."""
        publication_id = publication_id_of(etag)
        if publication_id is None:
            return None
        aor = address_of_record(aor)
        with self.app.lock:
            publication = self.app.load(publication_id)
            if publication is not None and self.app.is_stale(publication):
                # Another process or node moved it on since we cached it.
                self.app.evict([publication_id])
                publication = self.app.load(publication_id)
        if publication is None or publication.etag != etag or publication.aor != aor:
            return None
        if event is not None and publication.event_package != package_name(event):
            return None
        if not publication.is_live(now):
            return None
        return Found(publication.aor, publication.event_package, publication.etag,
                     publication.content_type, publication.body, publication.expires_at,
                     publication.id.hex, publication.version)

    def list(self, aor: str | None, event: str | None, now: float) -> list[Found]:
        """Live publications, of one resource or of all, of one package or of all."""
        return self._live(address_of_record(aor) if aor else None, event, now)

    def publications(self, aor: str, event: str | None, now: float) -> list[Found]:
        """Every live publication of a resource."""
        return self._live(address_of_record(aor), event, now)

    def _live(self, aor: str | None, event: str | None, now: float) -> list[Found]:
        self.projection.follow()
        return [_found(row) for row in self.view.live(aor, package_name(event), now)]

    def compose(self, aor: str, event: str, now: float) -> tuple[str, bytes] | None:
        """The resource's composed state: every live publication merged by the package's
        composer (RFC 3903 leaves the policy to the compositor). None when nothing is live."""
        package = self.packages.get(event)
        resource = address_of_record(aor)
        live = self._live_now(resource, package.name, now)
        if not live:
            return None
        state = _compose(resource, package, live, now, 0)
        return state.content_type or "", state.body

    def state(self, aor: str, event: str, at: float | None, now: float,
              version: int = 0) -> ComposedState:
        """The composed state of a resource as watchers see it: now (`at` None: the live
        view at `now`) or at any moment `at`, rebuilt by replaying the resource's events up
        to then (`version`: the dialog-info version to write)."""
        package = self.packages.get(event)
        resource = address_of_record(aor)
        if at is None:
            live = self._live_now(resource, package.name, now)
            moment = now
        else:
            live = _replay(self.history(resource, package.name), at)
            moment = at
        return _compose(resource, package, live, moment, version)

    def _live_now(self, resource: str, package: str, now: float) -> list[_Live]:
        self.projection.follow()
        return [_Live(r.id, r.etag, r.content_type, r.body, r.published_at, r.updated_at)
                for r in self.view.live(resource, package, now)]

    def history(self, aor: str, event: str | None) -> list[EventRecord]:
        """Every event of every publication the resource ever had, oldest first.

        Publications are merged by event time (an expiry takes effect at its own time);
        events with the same time (one batch) keep the order they were decided in, and each
        publication's events stay in version order even if node clocks disagree."""
        self.projection.follow()
        ids = self.view.publication_ids(address_of_record(aor), package_name(event))
        streams = [list(self.app.events.get(UUID(hex=i))) for i in ids]
        merged = heapq.merge(*streams, key=lambda e: (e.at, e.timestamp))
        return [event_record(domain_event) for domain_event in merged]

    def watchers(self, aor: str | None, event: str | None, include_ended: bool,
                 now: float) -> list[SubscriptionRow]:
        """Subscriptions, of one resource or of all, of one package or of all: the active
        ones (not terminated, not expired at `now`), or every one ever made when
        `include_ended`."""
        self.projection.follow()
        return self.view.subscriptions(
            address_of_record(aor) if aor else None, package_name(event),
            active_only=not include_ended, now=None if include_ended else now)

    def feed(self, after: int = 0, limit: int | None = None,
             page: int = 500) -> Iterator[EventRecord]:
        """Every event in one global order, from the position after `after`. Positions
        are the store's notification ids."""
        position, remaining = after, limit
        while remaining is None or remaining > 0:
            size = page if remaining is None else min(page, remaining)
            notifications = self.app.recorder.select_notifications(start=position + 1,
                                                                   limit=size)
            if not notifications:
                return
            for notification in notifications:
                yield event_record(self.app.mapper.to_domain_event(notification),
                                   notification.id)
            position = notifications[-1].id
            if remaining is not None:
                remaining -= len(notifications)
            if len(notifications) < size:
                return


    def stats(self, now: float, config: StoreConfig) -> StoreSummary:
        """The store in numbers at `now` (see `StoreSummary`); the view is caught up first
        when other nodes write the store too."""
        self.projection.follow()
        head = self.app.recorder.max_notification_id() or 0
        counts = self.view.publication_counts(now)
        positions = self.view.positions()
        view_position = positions.pop(VIEW, 0)
        return StoreSummary(
            at=now, events=head, head=head, view_position=view_position,
            consumers=positions,
            publications={event: live for event, (live, _) in counts.items() if live},
            lapsed=sum(lapsed for _, lapsed in counts.values()),
            subscriptions=self.view.active_subscription_counts(now),
            next_expiry=self.view.next_expiry_after(now),
            store_bytes=store_size(config, self.app.recorder),
            view_bytes=_files_size(config.view_path))

@dataclass(frozen=True)
class ComposedState:
    """What watchers of a resource saw (or see) at one moment: the composed document and
    the entity-tags of the publications that went into it, in document order."""

    aor: str
    event: str
    at: float
    content_type: str | None
    body: bytes
    publications: tuple[str, ...]


@dataclass(frozen=True)
class StoreSummary:
    """What a store holds, in numbers, at one moment (`Compositor.stats`, `esc stats`);
    not to be confused with store_stats.StoreStats, the running store process's metrics.

    Positions are notification ids: the store's one global order of events, the change
    feed's positions. `head` is the last one recorded. `events` is how many events the
    store holds, taken as the head position: ids are given one by one from 1, and nothing
    deletes single events (`clear` deletes them all; SQLite then starts again from 1). On
    PostgreSQL a transaction that rolled back can leave an unused id, so there `events`
    may count a few too many; counting the rows exactly would read the whole table."""

    at: float  # the moment (epoch seconds) the counts are for
    events: int
    head: int  # the feed's head: the last notification id recorded (0: none)
    view_position: int  # the last notification applied to the current-state view
    consumers: dict[str, int]  # every other tracked reader of the feed -> its position
    #                             ("notifier" for esc serve's, "feed:NAME" for consumers)
    publications: dict[str, int]  # event package -> publications live at `at`
    lapsed: int  # publications past their expiry whose Expired is not recorded yet
    subscriptions: dict[str, int]  # event package -> subscriptions active at `at`
    next_expiry: float | None  # the earliest expiry of a live publication (epoch s)
    store_bytes: int | None  # the event store on disk (None: in memory, or unknown)
    view_bytes: int | None  # the view's SQLite file on disk (None: in memory)

    @property
    def live(self) -> int:
        return sum(self.publications.values())

    @property
    def active_subscriptions(self) -> int:
        return sum(self.subscriptions.values())

    @property
    def size_bytes(self) -> int | None:
        """The store and its view together (None when neither is on disk)."""
        if self.store_bytes is None and self.view_bytes is None:
            return None
        return (self.store_bytes or 0) + (self.view_bytes or 0)

    def as_json(self) -> dict[str, Any]:
        data = asdict(self)
        data.update(live=self.live, active_subscriptions=self.active_subscriptions,
                    size_bytes=self.size_bytes)
        return data


def store_size(config: StoreConfig, recorder: Any) -> int | None:
    """Bytes the event store takes on disk: an SQLite file with its -wal and -shm files,
    or the whole PostgreSQL database (`pg_database_size`, whatever else it holds);
    None for a store in memory or one of unknown kind."""
    if config.kind == "postgresql":
        datastore = recorder.datastore
        with datastore.transaction(commit=False) as cursor:
            cursor.execute("SELECT pg_database_size(current_database()) AS size")
            row = cursor.fetchone()
        return int(row["size"] if isinstance(row, dict) else row[0])
    if config.kind in ("sqlite", "module"):
        return _files_size(config.env.get("SQLITE_DBNAME"))
    return None


def _files_size(path: str | None) -> int | None:
    """An SQLite database file plus its -wal and -shm files (None: no such file, or an
    in-memory database)."""
    if not path or path == ":memory:" or path.startswith("file:"):
        return None
    sizes = [os.path.getsize(p) for p in (path, f"{path}-wal", f"{path}-shm")
             if os.path.isfile(p)]
    return sum(sizes) if sizes else None


@dataclass
class _Live:
    """A publication live at the moment asked about, as composition needs it."""

    id: str
    etag: str
    content_type: str
    body: bytes
    published_at: float
    updated_at: float  # its last Published, Refreshed or Modified event


def _replay(records: Iterable[EventRecord], at: float) -> list[_Live]:
    """The publications live at `at`, from a resource's history. Each publication's events
    are applied in version order up to the first one after `at` (so a node whose clock ran
    behind cannot reorder them); refresh events carry only a body hash, so the body is the
    last Published or Modified one."""
    publications: dict[str, _Live] = {}
    expires: dict[str, float] = {}
    stopped: set[str] = set()
    for r in records:
        if r.publication in stopped:
            continue
        if r.at > at:
            stopped.add(r.publication)
            continue
        if r.type == "Published" and r.body is not None:
            publications[r.publication] = _Live(r.publication, r.etag or "",
                                                r.content_type or "", r.body, r.at, r.at)
        elif r.type in ("Refreshed", "Modified") and r.publication in publications:
            live = publications[r.publication]
            live.etag, live.updated_at = r.etag or live.etag, r.at
            if r.type == "Modified" and r.body is not None:
                live.body, live.content_type = r.body, r.content_type or live.content_type
        elif r.type in ("Removed", "Expired"):
            publications.pop(r.publication, None)
            stopped.add(r.publication)
            continue
        if r.expires_at is not None:
            expires[r.publication] = r.expires_at
    # Live as the view counts it: not ended, and its expiry time not yet reached.
    return [p for p in publications.values() if expires.get(p.id, 0.0) > at]


def _compose(resource: str, package: EventPackage, live: list[_Live], at: float,
             version: int) -> ComposedState:
    # Newest first: by the last Published, Refreshed or Modified event. The view keeps no
    # separate time of the last body change, so a refresh counts as news too; history is
    # replayed by the same rule, so a past moment composes exactly as it did then.
    live.sort(key=lambda p: (p.updated_at, p.published_at, p.id), reverse=True)
    composition = package.composer(
        resource, [Contribution(p.id, p.body, p.content_type) for p in live], version)
    etags = {p.id: p.etag for p in live}
    content_type = composition.content_type
    if content_type is None and package.content_types:
        content_type = package.content_types[0]
    return ComposedState(resource, package.name, at, content_type, composition.body,
                         tuple(etags[key] for key in composition.contributors))


def package_name(event: str | None) -> str | None:
    """The package an Event header value names (its parameters and case dropped)."""
    return event.split(";", 1)[0].strip().lower() if event else None


def _found(row: LivePublication) -> Found:
    return Found(row.aor, row.event, row.etag, row.content_type, row.body, row.expires_at,
                 row.id, row.version)
