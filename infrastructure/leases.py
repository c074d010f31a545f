"""Node leases: which nodes sharing a PostgreSQL store are alive, so that the subscriptions
of one that stopped are taken over by another.

Each node's notifier renews its lease every few seconds; a lease not renewed within its
time-to-live marks a node gone, and any other node adopts that node's subscriptions
(`Subscription.adopt`, an event: optimistic concurrency lets one node win each). Times come
from the database's clock, so nodes whose clocks disagree still agree on who is late.

The leases are a small table beside the event store, not events: a heartbeat every few
seconds is not history anyone asks about, while the adoption it leads to is (and is an
event). A store that only one process uses (SQLite, memory) has no leases.
"""

from __future__ import annotations

import logging
from typing import Any, Protocol

log = logging.getLogger("esc.leases")

TABLE = "esc_node_leases"


class NodeLeases(Protocol):
    def renew(self, node: str, ttl: float) -> None:
        """Keep `node` alive for `ttl` more seconds."""
        ...

    def expired(self) -> list[str]:
        """Nodes whose leases ran out."""
        ...

    def forget(self, node: str) -> None:
        """Drop an expired lease (its subscriptions have been adopted)."""
        ...


class PostgresLeases:
    def __init__(self, datastore: Any) -> None:
        self.datastore = datastore
        self._ready = False

    def _ensure_table(self) -> None:
        if self._ready:
            return
        try:
            with self.datastore.transaction(commit=True) as cursor:
                cursor.execute(f"CREATE TABLE IF NOT EXISTS {TABLE} ("
                               "node TEXT PRIMARY KEY, expires_at DOUBLE PRECISION NOT NULL)")
        except Exception as error:
            # Two nodes creating it at once: one of them fails ("tuple concurrently
            # updated"); the table is there for the next call either way.
            log.debug("creating %s: %s", TABLE, error)
            raise
        self._ready = True

    def renew(self, node: str, ttl: float) -> None:
        self._ensure_table()
        with self.datastore.transaction(commit=True) as cursor:
            cursor.execute(
                f"INSERT INTO {TABLE} (node, expires_at) "
                "VALUES (%s, EXTRACT(EPOCH FROM clock_timestamp()) + %s) "
                "ON CONFLICT (node) DO UPDATE SET expires_at = EXCLUDED.expires_at",
                (node, float(ttl)))

    def expired(self) -> list[str]:
        self._ensure_table()
        with self.datastore.transaction(commit=False) as cursor:
            cursor.execute(f"SELECT node FROM {TABLE} "
                           "WHERE expires_at < EXTRACT(EPOCH FROM clock_timestamp()) "
                           "ORDER BY node")
            return [row["node"] if isinstance(row, dict) else row[0]
                    for row in cursor.fetchall()]

    def forget(self, node: str) -> None:
        # Only while still expired: a node that came back and renewed keeps its lease.
        with self.datastore.transaction(commit=True) as cursor:
            cursor.execute(f"DELETE FROM {TABLE} WHERE node = %s "
                           "AND expires_at < EXTRACT(EPOCH FROM clock_timestamp())", (node,))


def leases_for(app: Any) -> NodeLeases | None:
    """The leases of the store an application uses: PostgreSQL's, else none."""
    if not getattr(app, "shared", False):
        return None
    datastore = getattr(app.recorder, "datastore", None)
    return PostgresLeases(datastore) if datastore is not None else None
