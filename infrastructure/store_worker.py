"""The store side of the Committer exchange: what runs for each message the SIP side sends.

Both committers drive one `StoreWorker`: the store process from its main loop
(store_process.py), `InProcessCommitter` from its worker thread (committer.py). A batch
holds PUBLISHes and SUBSCRIBEs in arrival order. The PUBLISHes are decided and committed
first (group commit); when the batch has SUBSCRIBEs, the view is brought up to date before
they are decided, so each one's immediate NOTIFY carries the state that includes every
PUBLISH acknowledged before it. Results come back in request order.

`after(recordings)` runs once the batch is answered: the view follows the new events, and
the notifier turns them into NOTIFYs. `outcomes` and `tick` feed the notifier what the SIP
side learnt and what the clock says.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any, Sequence

from eventsourcing.persistence import Recording

from domain import (InternalError, NotifyJob, NotifyOutcome, PublishRequest,
                    SubscribeRequest)

if TYPE_CHECKING:
    from .compositor import Compositor
    from .notifier import Notifier

log = logging.getLogger("esc.store")

Request = PublishRequest | SubscribeRequest


class StoreWorker:
    def __init__(self, compositor: "Compositor", notifier: "Notifier | None" = None) -> None:
        self.compositor = compositor
        self.notifier = notifier

    def decide(self, requests: Sequence[Request], waited: float | None = None
               ) -> tuple[list[Any], list[Recording]]:
        """Decide and commit a batch: one result per request, in order, every change
        durable; and the PUBLISH recordings still to pass to `after`. `waited`: how long
        its oldest request waited for the store (seconds), for the notifier's pacing."""
        publishes = [(i, r) for i, r in enumerate(requests) if isinstance(r, PublishRequest)]
        results: list[Any] = [None] * len(requests)
        recordings: list[Recording] = []
        if publishes:
            decided, recordings = self.compositor.commit_many([r for _, r in publishes])
            for (index, _), result in zip(publishes, decided):
                results[index] = result
            if self.notifier is not None:
                self.notifier.publishes_decided(waited)
        subscribes = [(i, r) for i, r in enumerate(requests)
                      if isinstance(r, SubscribeRequest)]
        if subscribes:
            if self.notifier is None:
                for index, _ in subscribes:
                    results[index] = InternalError("no notifier in this store")
            else:
                self.compositor.project(recordings)
                covers = recordings[-1].notification.id if recordings else 0
                decided = self.notifier.subscribe_many([r for _, r in subscribes],
                                                       covers=covers)
                for (index, _), result in zip(subscribes, decided):
                    results[index] = result
        for index, result in enumerate(results):
            if result is None:  # neither kind: never sent by our SIP side
                results[index] = InternalError("unknown request type")
        return results, recordings

    def after(self, recordings: Sequence[Recording],
              outcomes: Sequence[NotifyOutcome] = ()) -> list[NotifyJob]:
        """Once the batch is answered: the view follows it, the notifier takes note of the
        NOTIFY outcomes that arrived with it and consumes the new events, then records and
        hands out the NOTIFYs due (one save for all of them)."""
        self.compositor.project(recordings)
        if self.notifier is None:
            return []
        try:
            if outcomes:
                self.notifier.outcomes(outcomes, flush=False)
            if recordings:
                return self.notifier.on_recordings(recordings)
            return self.notifier.flush()
        except Exception:  # the next poll reads the feed again
            log.exception("the notifier failed on a batch")
            return []

    def outcomes(self, outcomes: Sequence[NotifyOutcome]) -> list[NotifyJob]:
        if self.notifier is None:
            return []
        try:
            return self.notifier.outcomes(outcomes)
        except Exception:
            log.exception("the notifier failed on NOTIFY outcomes")
            return []

    def tick(self) -> list[NotifyJob]:
        if self.notifier is None:
            return []
        try:
            return self.notifier.tick()
        except Exception:
            log.exception("the notifier's timer failed")
            return []

    def next_deadline(self) -> float | None:
        """Epoch seconds when `tick` is next due (None: no timer)."""
        return self.notifier.next_deadline() if self.notifier is not None else None
