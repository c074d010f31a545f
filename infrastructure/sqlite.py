"""SQLite persistence (the default store): eventsourcing's SQLite module plus what esc needs.

The store URL `sqlite:///PATH` names `EscSQLiteFactory` as the persistence module. Its
recorders are eventsourcing's, with two additions:

- `delete_all()`: every event (or snapshot) deleted (`Compositor.clear`);
- `select_events_of(ids)`: the events of many publications in one query, for the expiry of
  a batch of due publications. Loaded one by one through the repository, a pass over 1,000
  uncached publications makes 2,000 queries (snapshots, then events) under the write lock.
"""

from __future__ import annotations

from typing import Sequence
from uuid import UUID

from eventsourcing.persistence import StoredEvent
from eventsourcing.sqlite import (SQLiteAggregateRecorder, SQLiteApplicationRecorder,
                                  SQLiteFactory)


class _DeletesAll:
    datastore: object
    events_table_name: str

    def delete_all(self) -> None:
        """Delete every stored event of this recorder's table (notification ids restart)."""
        with self.datastore.transaction(commit=True) as cursor:  # type: ignore[attr-defined]
            cursor.execute(f"DELETE FROM {self.events_table_name}")


class EscSQLiteAggregateRecorder(_DeletesAll, SQLiteAggregateRecorder):
    """The snapshot store."""


class EscSQLiteApplicationRecorder(_DeletesAll, SQLiteApplicationRecorder):
    def select_events_of(self, originator_ids: Sequence[UUID]) -> list[StoredEvent]:
        """Every event of these originators, in one query: grouped by originator, each
        originator's events in version order."""
        if not originator_ids:
            return []
        keys = [originator_id.hex for originator_id in originator_ids]
        statement = (f"SELECT originator_id, originator_version, topic, state "
                     f"FROM {self.events_table_name} "
                     f"WHERE originator_id IN ({','.join('?' * len(keys))}) "
                     f"ORDER BY originator_id, originator_version")
        with self.datastore.transaction(commit=False) as cursor:
            cursor.execute(statement, keys)
            rows = cursor.fetchall()
        return [StoredEvent(originator_id=self.convert_originator_id(row["originator_id"]),
                            originator_version=row["originator_version"],
                            topic=row["topic"], state=row["state"]) for row in rows]


class EscSQLiteFactory(SQLiteFactory):
    aggregate_recorder_class = EscSQLiteAggregateRecorder
    application_recorder_class = EscSQLiteApplicationRecorder
