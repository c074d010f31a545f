"""The projection: the current-state view (view.py) kept in step with the events.

`CurrentState` is an eventsourcing `Projection` whose view is a tracking recorder: every
transaction that applies events to the view also records the last position applied, so
each event is applied exactly once however often it is offered. Events reach it three ways:

- `project(recordings)`: the events a save just recorded, straight from the command side
  (the store process calls it after it has answered the batch). Positions the view already
  holds are skipped; a gap (events written by another process or node, or a lost update)
  makes it catch up instead.
- `catch_up()`: whatever the store's notification log has beyond the view's position, a
  page at a time: when the compositor opens, after a gap, from the expiry scheduler's
  timer, and before each query when other nodes write the store too (`follow`).
- `process_event(event, tracking)`: the library's one-event entry point (what its
  `ProjectionRunner` calls), for completeness.

The hot path applies a whole batch in one transaction; the library's runner applies one
event per transaction, which is why it is not what drives this view.

`rebuild` forgets the view and replays everything; `verify` replays into a scratch view and
compares. Both (and `catch_up`) take an optional `progress` callback, told the position
reached after each page replayed (a notification id, up to the feed's head), for a caller
that shows progress (`esc verify`); nothing here prints.
"""

from __future__ import annotations

import logging
from typing import Any, Callable, Sequence

from eventsourcing.persistence import Recording, Tracking
from eventsourcing.projection import Projection

from .application import EscApplication
from .view import CurrentStateView

log = logging.getLogger("esc.projection")

PAGE = 1000

#: Told the position (notification id) a replay has reached, after each page.
Progress = Callable[[int], None]


class CurrentState(Projection[CurrentStateView]):
    name = "view"

    def __init__(self, app: EscApplication, view: CurrentStateView) -> None:
        super().__init__(view)
        self.app = app

    def process_event(self, domain_event: Any, tracking: Tracking) -> None:
        self.view.apply([(tracking.notification_id, domain_event)], allow_gap=True)

    def project(self, recordings: Sequence[Recording]) -> None:
        """Apply just-saved events; on a gap, catch up from the store. A failure here never
        fails a request (its events are durable): it is logged and repaired by the next
        catch-up."""
        if not recordings:
            return
        with self.app.lock:
            try:
                pairs = [(r.notification.id, r.domain_event) for r in recordings]
                if not self.view.apply(pairs):
                    self.catch_up()
            except Exception as error:  # pragma: no cover - logged, repaired by catch_up
                log.warning("view update failed (will catch up): %s", error)

    def catch_up(self, page: int = PAGE, progress: Progress | None = None) -> int:
        """Apply every stored event the view has not seen yet, `page` at a time. Returns
        how many."""
        return self._replay_into(self.view, self.view.max_tracking_id(self.app.name) or 0,
                                 page, progress)

    def check_store(self) -> bool:
        """A view ahead of its store's notification log was made from another store (a
        view file left behind when the store was replaced): its rows and every consumer's
        position describe events this store does not have. Forget them all (they are
        rebuilt by the next catch-up). Returns whether it did."""
        position = self.view.max_tracking_id(self.app.name) or 0
        if not position:
            return False
        head = self.app.recorder.max_notification_id() or 0
        if position <= head:
            return False
        log.warning("the view has applied %d events but the store holds %d: it belongs to "
                    "another store; rebuilding it", position, head)
        self.view.reset(consumers=True)
        return True

    def follow(self) -> None:
        """With a store that other nodes write too, catch the view up before it is read
        (one indexed query when nothing is new). If the store is down, the view is read as
        it is."""
        if not self.app.shared:
            return
        try:
            self.catch_up()
        except Exception as error:
            log.warning("view not caught up (store unavailable?): %s", error)

    def rebuild(self, progress: Progress | None = None) -> int:
        """Forget the view and rebuild it from the events. The change-feed consumers keep
        their positions: the events did not change, so neither did what they have seen."""
        self.view.reset(consumers=False)
        return self.catch_up(progress=progress)

    def verify(self, progress: Progress | None = None) -> tuple[int, int, list[str]]:
        """Replay every event into a scratch view and compare it with the live one.
        Returns (live rows, replayed rows, differences). `progress` follows the replay into
        the scratch view (the live view's catch-up before it is not reported)."""
        self.catch_up()
        scratch = CurrentStateView(None)
        try:
            self._replay_into(scratch, 0, PAGE, progress)
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
                differences.append(f"{pid}: view {live[pid][:7]!r} != events "
                                    f"{replayed[pid][:7]!r}")
        return len(live), len(replayed), differences

    def _replay_into(self, view: CurrentStateView, after: int, page: int,
                     progress: Progress | None = None) -> int:
        applied, position = 0, after
        while True:
            notifications = self.app.recorder.select_notifications(start=position + 1,
                                                                   limit=page)
            if not notifications:
                return applied
            view.apply([(n.id, self.app.mapper.to_domain_event(n)) for n in notifications],
                       allow_gap=True)
            applied += len(notifications)
            position = notifications[-1].id
            if progress is not None:
                progress(position)
            if len(notifications) < page:
                return applied
