"""The Compositor: RFC 3903 event state kept as events, behind NkSIP's API made Pythonic.

    compositor = Compositor.open("sqlite:///esc.sqlite3")
    accepted = compositor.publish("sip:alice@example.com", "presence",
                                  body=pidf, content_type="application/pidf+xml",
                                  expires=3600)
    compositor.find("sip:alice@example.com", accepted.etag, "presence")
    compositor.publish("sip:alice@example.com", "presence", if_match=accepted.etag)  # refresh

This class only opens and composes the parts, each a module of its own:

    application.py  the event store (an eventsourcing Application of Publications)
    commands.py     the command side: decide and save a batch, expire what is due
    projection.py   the current-state view (view.py) and its tracking
    queries.py      find, publications, list, compose, state, history, feed, watchers,
                    stats

Writes are serialised by one lock (the application's) and committed in groups:
`process_many` decides a batch of requests in arrival order, saves every touched aggregate
in one transaction (one fsync) and only then returns. Nothing is acknowledged before it is
durable, and a failed save acknowledges nothing of its batch.
"""

from __future__ import annotations

import time
from typing import Callable, Iterable, Iterator, Sequence

from eventsourcing.persistence import Recording

from domain import (Audit, CompositorError, EventPackages, ExpiryPolicy, PublishRequest,
                    address_of_record)
from domain.packages import DEFAULT_PACKAGES
from domain.publication import NO_AUDIT

from .application import EscApplication
from .commands import CommandSide, Result
from .feed import FeedConsumer
from .projection import PAGE, CurrentState
from .queries import ComposedState, Queries, StoreSummary
from .random_pool import RandomPool
from .records import Accepted, EventRecord, Found, SubscriptionRow
from .store_url import DEFAULT_STORE_URL, StoreConfig, parse_store_url
from .view import CurrentStateView


class Compositor:
    def __init__(self, env: dict[str, str], *, config: StoreConfig,
                 packages: EventPackages = DEFAULT_PACKAGES,
                 policy: ExpiryPolicy = ExpiryPolicy(),
                 clock: Callable[[], float] = time.time,
                 max_per_resource: int | None = None,
                 random_bytes: Callable[[int], bytes] | None = None) -> None:
        self.config = config
        self.packages = packages
        self.policy = policy
        self.clock = clock
        self.app = EscApplication(env)
        try:
            self.view = CurrentStateView(config.view_path)
        except BaseException:
            self.app.close()
            raise
        self.projection = CurrentState(self.app, self.view)
        # Entity-tag secrets: the injected CSPRNG, or a pool of the kernel's own.
        self.commands = CommandSide(self.app, self.projection, packages, policy,
                                    max_per_resource, random_bytes or RandomPool().take)
        self.queries = Queries(self.app, self.projection, packages)
        self.projection.check_store()
        self.catch_up()

    @classmethod
    def open(cls, url: str = DEFAULT_STORE_URL, *,
             events: Iterable[str] | EventPackages | None = None,
             default_expires: int = 60, min_expires: int = 1, max_expires: int = 3600,
             cache_size: int = 20000, create_schema: bool = True,
             clock: Callable[[], float] = time.time, env: dict[str, str] | None = None,
             max_per_resource: int | None = None,
             random_bytes: Callable[[int], bytes] | None = None) -> "Compositor":
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
                   max_per_resource=max_per_resource, random_bytes=random_bytes)

    def now(self, now: float | None = None) -> float:
        return self.clock() if now is None else float(now)

    # ---- the event store's parts, for inspection ---------------------------------------------

    @property
    def max_per_resource(self) -> int | None:
        return self.commands.max_per_resource

    @property
    def recorder(self):
        return self.app.recorder

    @property
    def events(self):
        return self.app.events

    @property
    def snapshots(self):
        return self.app.snapshots

    @property
    def repository(self):
        return self.app.repository

    # ---- PUBLISH ---------------------------------------------------------------------------

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
                    now: float | None = None) -> tuple[list[Result], list[Recording]]:
        """`process_many` without the view update: the results (every change already
        durable) and the recordings to pass to `project` next. The store process answers
        in between, so the SIP side is not kept waiting for the read model.

        A request whose decision raises anything but a refusal is answered InternalError
        on its own, and the batch is decided again without it. Only a failure of the store
        itself (reading or saving) fails the whole batch."""
        return self.commands.commit_many(requests, self.now(now))

    def expire_due(self, now: float | None = None, batch: int = 1000) -> int:
        """Record `Expired` for every publication whose time has come (see commands.py).
        Returns how many expired here."""
        return self.commands.expire_due(self.now(now), batch)

    # ---- the view --------------------------------------------------------------------------

    def project(self, recordings: Sequence[Recording]) -> None:
        """Apply just-saved events to the view (a late or repeated call is harmless)."""
        self.projection.project(recordings)

    def catch_up(self, page: int = PAGE) -> int:
        """Apply every stored event the view has not seen yet. Returns how many."""
        return self.projection.catch_up(page)

    def rebuild_view(self) -> int:
        return self.projection.rebuild()

    def verify(self) -> tuple[int, int, list[str]]:
        """(live rows, rows replayed from the events, differences)."""
        return self.projection.verify()

    # ---- queries ---------------------------------------------------------------------------

    def find(self, aor: str, etag: str, event: str | None = None,
             now: float | None = None) -> Found | None:
        """The live publication an entity-tag names, read from the event store itself
        (strongly consistent), or None."""
        return self.queries.find(aor, etag, event, self.now(now))

    def publications(self, aor: str, event: str | None = None,
                     now: float | None = None) -> list[Found]:
        """Every live publication of a resource (from the view)."""
        return self.queries.publications(aor, event, self.now(now))

    def list(self, aor: str | None = None, event: str | None = None,
             now: float | None = None) -> list[Found]:
        return self.queries.list(aor, event, self.now(now))

    def compose(self, aor: str, event: str, now: float | None = None) -> tuple[str, bytes] | None:
        return self.queries.compose(aor, event, self.now(now))

    def state(self, aor: str, event: str, at: float | None = None, *,
              version: int = 0, now: float | None = None) -> ComposedState:
        """The composed state watchers of a resource see now (`at` None, from the view), or
        saw at the moment `at` (epoch seconds), rebuilt by replaying the resource's events
        up to then. `version` is the dialog-info version to write (0 here; a notifier
        counts it per subscription)."""
        return self.queries.state(aor, event, None if at is None else float(at),
                                  self.now(now), version)

    def history(self, aor: str, event: str | None = None) -> list[EventRecord]:
        return self.queries.history(aor, event)

    def feed(self, after: int = 0, limit: int | None = None,
             page: int = 500) -> Iterator[EventRecord]:
        return self.queries.feed(after, limit, page)

    def watchers(self, aor: str | None = None, event: str | None = None, *,
                 include_ended: bool = False, now: float | None = None
                 ) -> list[SubscriptionRow]:
        """The subscriptions to a resource (or to every resource), from the view: those
        active at `now` (not terminated, not expired), or every one ever made, ended ones
        included, with `include_ended`. Ordered by aor, event, subscribed_at, id."""
        return self.queries.watchers(aor, event, include_ended, self.now(now))

    def head(self) -> int:
        """The change feed's head: the last notification id the store has recorded (0 when
        it holds no event). What a replay of everything goes up to."""
        return self.app.recorder.max_notification_id() or 0

    def stats(self, now: float | None = None) -> StoreSummary:
        """The store in numbers (`esc stats`): publications live at `now` per package,
        subscriptions active at `now` per package, events in total, the feed's head and
        the positions of the view and of every tracked consumer (notification ids), the
        next expiry, and the bytes taken on disk. Counts come from the view, caught up
        first when other nodes write the store too."""
        return self.queries.stats(self.now(now), self.config)

    def consumer(self, name: str) -> FeedConsumer:
        """A named, tracked reader of the change feed that resumes where it stopped."""
        return FeedConsumer(self, name)

    # ---- housekeeping ----------------------------------------------------------------------

    def clear(self) -> None:
        """Delete every event, snapshot and view row: a fresh, empty compositor (NkSIP's
        clear/1). For tests and laboratories; history is gone afterwards."""
        with self.app.lock:
            self.app.delete_all()
            self.view.reset()

    def close(self) -> None:
        try:
            self.view.close()
        finally:
            self.app.close()

    def __enter__(self) -> "Compositor":
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()
