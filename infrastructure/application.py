"""The event store as esc uses it: an eventsourcing Application of Publications.

Everything here that differs from the library's defaults is made at one of its extension
points:

- `construct_env`: the settings come from the store URL and `Compositor.open` only, never
  from the process environment (a stray PERSISTENCE_MODULE or SQLITE_DBNAME would
  otherwise move the store somewhere else).
- `construct_transcoder`, `register_transcodings`: eventsourcing's JSON, written with orjson
  where that gives the same bytes (transcodings.py); bodies as base64.
- `snapshotting_intervals` and `_take_snapshots`: a snapshot every SNAPSHOT_INTERVAL
  versions, taken from the aggregate in hand (the library reloads it from the store), and
  a snapshot that cannot be written never fails the change it follows.
- the aggregate cache (`repository.cache`, eventsourcing's LRU cache): the command side
  reads from it and evicts what a failed or conflicting save touched.

What depends on the kind of store is not decided here but by the persistence module the
store URL names (sqlite.py, memory.py, postgres.py): their recorders can delete everything
(`delete_all`), the SQLite one can read the events of many publications in one query
(`select_events_of`), and the PostgreSQL factory says that other nodes write the store too
(`shared`).

`save_batch` is the one place that goes around the library, for speed; its docstring has
the measurement.
"""

from __future__ import annotations

import logging
import math
import threading
from typing import Any, Iterable, Sequence
from uuid import UUID

from eventsourcing.application import (AggregateNotFoundError, Application, Cache, LRUCache,
                                       ProcessingEvent)
from eventsourcing.persistence import JSONTranscoder, Recording, Transcoder
from eventsourcing.utils import Environment

from domain import Publication

from .transcodings import BytesAsBase64, FastJSONTranscoder

log = logging.getLogger("esc.store")

#: The application's name: eventsourcing prefixes the PostgreSQL tables with it (esc_events,
#: esc_snapshots) and reads settings prefixed with it (ESC_...).
APPLICATION_NAME = "esc"

# How many events between snapshots: a publication refreshed 10,000 times is loaded from
# its latest snapshot plus fewer than this many events.
SNAPSHOT_INTERVAL = 50


class EscApplication(Application):
    name = APPLICATION_NAME
    snapshotting_intervals = {Publication: SNAPSHOT_INTERVAL}

    def __init__(self, env: dict[str, str]) -> None:
        super().__init__(env)
        # Serialises every change to the cached aggregates (deciding, saving, evicting)
        # and to the view: the command side, the projection and strongly consistent reads
        # all take it.
        self.lock = threading.RLock()

    # ---- configuration (library extension points) ----------------------------------------

    def construct_env(self, name: str, env: Any = None) -> Environment:
        # Only the given settings: unlike the library's, this does not read os.environ.
        settings = dict(type(self).env)
        if self.snapshotting_intervals:
            settings["IS_SNAPSHOTTING_ENABLED"] = "y"
        return Environment(name, {**settings, **(env or {})})

    def construct_transcoder(self) -> Transcoder:
        if self.env.get("TRANSCODER_TOPIC"):  # a configured transcoder wins
            return super().construct_transcoder()
        transcoder = FastJSONTranscoder()
        self.register_transcodings(transcoder)
        return transcoder

    def register_transcodings(self, transcoder: JSONTranscoder) -> None:
        super().register_transcodings(transcoder)
        transcoder.register(BytesAsBase64())

    def _take_snapshots(self, processing_event: ProcessingEvent) -> None:
        """Snapshot the saved aggregates whose new events crossed a multiple of their
        interval, from the aggregates in hand (the library would load each one again).
        Only loading speed depends on snapshots, so a failure is logged, not raised: the
        events are durable already."""
        if self.snapshots is None or not self.snapshotting_intervals:
            return
        # A version no interval divides needs no look at its aggregate (most of them).
        divisor = math.gcd(*self.snapshotting_intervals.values())
        aggregates = processing_event.aggregates
        due: dict[Any, Any] = {}  # one snapshot per aggregate, of its state after the save
        for event in processing_event.events:
            if event.originator_version % divisor:
                continue
            aggregate = aggregates.get(event.originator_id)
            interval = self.snapshotting_intervals.get(type(aggregate))
            if interval and event.originator_version % interval == 0:
                due[event.originator_id] = aggregate
        if due:
            try:
                self.snapshots.put([type(a).Snapshot.take(a) for a in due.values()])
            except Exception as error:
                log.warning("snapshot not taken (loading stays correct): %s", error)

    # ---- saving -------------------------------------------------------------------------

    def save_batch(self, aggregates: Iterable[Publication]) -> list[Recording]:
        """`Application.save(*aggregates)` for a batch of Publications: one transaction (one
        fsync), the aggregates cached, snapshots taken, `_notify` called.

        The only difference is how the pending events are collected. The library's
        `ProcessingEvent.collect_events` tells aggregates from events with isinstance
        checks against runtime-checkable Protocols, which cost as much as the rest of the
        save: 512 new publications saved to an SQLite file took 10.1 ms with
        `Application.save` and 5.5 ms here (best of 7, 2026-11-30), where a whole group
        commit of 512 PUBLISHes (`commit_many`) takes about 17 ms. Everything after the
        collection is the library's own (`_record`, `_take_snapshots`, `_notify`)."""
        processing_event = ProcessingEvent()
        events, saved = processing_event.events, processing_event.aggregates
        for aggregate in aggregates:
            events.extend(aggregate.collect_events())
            saved[aggregate.id] = aggregate
        recordings = self._record(processing_event)
        self._take_snapshots(processing_event)
        self._notify(recordings)
        return recordings

    # ---- loading and the cache -----------------------------------------------------------

    def load(self, publication_id: UUID) -> Publication | None:
        """The publication, from the cache or the store; None if there is none."""
        try:
            aggregate = self.repository.get(publication_id)
        except AggregateNotFoundError:
            return None
        return aggregate if isinstance(aggregate, Publication) else None

    def cached(self, publication_id: UUID) -> Publication | None:
        cache = self.repository.cache
        if cache is None:
            return None
        try:
            return cache.get(publication_id)  # type: ignore[return-value]
        except KeyError:
            return None

    def is_stale(self, publication: Publication) -> bool:
        """Has the store an event newer than this (possibly cached) copy? One indexed read."""
        newer = self.events.get(publication.id, gt=publication.version, limit=1)
        return next(iter(newer), None) is not None

    def evict(self, publication_ids: Iterable[UUID]) -> None:
        cache = self.repository.cache
        if cache is None:
            return
        for publication_id in publication_ids:
            try:
                cache.get(publication_id, evict=True)
            except KeyError:
                pass

    def forget_cached(self) -> None:
        """Empty the aggregate cache (the store was cleared)."""
        cache = self.repository.cache
        if isinstance(cache, LRUCache):
            self.repository.cache = LRUCache(cache.maxsize)
        elif cache is not None:
            self.repository.cache = Cache()

    def load_many(self, versions: dict[UUID, int]) -> dict[UUID, Publication]:
        """Publications not in the cache, read in one query where the recorder can
        (`select_events_of`); `versions` maps each id to the version the caller expects.
        Those old enough to have a snapshot are left to the repository (their histories
        are long); so is everything when the recorder cannot read many at once."""
        select_events_of = getattr(self.recorder, "select_events_of", None)
        if select_events_of is None:
            return {}
        wanted = [publication_id for publication_id, version in versions.items()
                  if version < SNAPSHOT_INTERVAL and self.cached(publication_id) is None]
        if not wanted:
            return {}
        loaded: dict[UUID, Any] = {}
        for stored in select_events_of(wanted):
            event = self.mapper.to_domain_event(stored)
            loaded[event.originator_id] = event.mutate(loaded.get(event.originator_id))
        return {i: p for i, p in loaded.items() if isinstance(p, Publication)}

    # ---- the whole store -------------------------------------------------------------------

    @property
    def shared(self) -> bool:
        """Do other processes or nodes write this store as a matter of course (PostgreSQL)?
        Then a view is caught up before it is read."""
        return bool(getattr(self.factory, "shared", False))

    def delete_all(self) -> None:
        """Delete every event and snapshot, and empty the cache."""
        recorders: Sequence[Any] = [self.recorder]
        if self.snapshots is not None:  # snapshots first: never one without its events
            recorders = [self.snapshots.recorder, self.recorder]
        for recorder in recorders:
            if not hasattr(recorder, "delete_all"):
                raise NotImplementedError(
                    f"clear() is not supported by this store ({type(recorder).__name__} "
                    f"cannot delete everything)")
        for recorder in recorders:
            recorder.delete_all()
        self.forget_cached()
