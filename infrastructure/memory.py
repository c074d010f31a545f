"""In-memory persistence (`memory://`, tests): eventsourcing's POPO module, plus
`delete_all()` on its recorders for `Compositor.clear`."""

from __future__ import annotations

from collections import defaultdict

from eventsourcing.popo import POPOAggregateRecorder, POPOApplicationRecorder, POPOFactory


class _DeletesAll:
    def delete_all(self: POPOAggregateRecorder) -> None:
        """Forget every stored event (notification ids restart at 1)."""
        with self._database_lock:
            self._stored_events = []
            self._stored_events_index = defaultdict(dict)


class EscPOPOAggregateRecorder(_DeletesAll, POPOAggregateRecorder):
    """The snapshot store."""


class EscPOPOApplicationRecorder(_DeletesAll, POPOApplicationRecorder):
    pass


class EscPOPOFactory(POPOFactory):
    def aggregate_recorder(self, purpose: str = "events") -> EscPOPOAggregateRecorder:
        return EscPOPOAggregateRecorder()

    def application_recorder(self) -> EscPOPOApplicationRecorder:
        return EscPOPOApplicationRecorder()
