"""The queries: what the compositor holds, read without changing it.

- `find`: the publication an entity-tag names, from the event store itself (strongly
  consistent, design decision 2: no view is consulted);
- `publications`, `list`, `compose`: live publications, from the current-state view
  (caught up first when other nodes write the store too);
- `history`: every event of every publication a resource ever had, from the event store,
  found through the view's index of resources;
- `feed`: every event in the store's one global order, from its notification log.
"""

from __future__ import annotations

import heapq
from typing import Iterator
from uuid import UUID

from domain import EventPackages, address_of_record, publication_id_of

from .application import EscApplication
from .projection import CurrentState
from .records import EventRecord, Found, event_record
from .view import LivePublication


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
        live = self.publications(aor, package.name, now)
        if not live:
            return None
        return live[-1].content_type, package.composer([p.body for p in live])

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


def package_name(event: str | None) -> str | None:
    """The package an Event header value names (its parameters and case dropped)."""
    return event.split(";", 1)[0].strip().lower() if event else None


def _found(row: LivePublication) -> Found:
    return Found(row.aor, row.event, row.etag, row.content_type, row.body, row.expires_at,
                 row.id, row.version)
