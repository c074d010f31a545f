"""The current-state view: one row per live publication and per subscription, kept with
sqlite-utils.

It is a projection of the event store and nothing more: it can be deleted and rebuilt at
any time. Each transaction that applies events also advances a tracking record (the last
notification position applied) in the same SQLite transaction, so an event is applied
exactly once even when the process dies between the event commit and the view update, or
when two processes feed the same view file.

Tables:
    publications  live state: id, aor, event, etag, content_type, body, expires_at (epoch s),
                  version, published_at, updated_at; indexed by (aor, event) and expires_at
    resources     every publication ever made (id, aor, event, published_at): how history
                  finds the aggregates of a resource, including ended ones
    subscriptions every subscription (watcher) ever made, from the Subscription events in the
                  same notification log: its dialog, where NOTIFYs go, state ("active" or
                  "terminated", kept after it ends), reason, expiry and NOTIFY counters;
                  indexed by (aor, event) and (state, expires_at)
    tracking      name -> last applied notification position ("view" for this projection,
                  other names for change-feed consumers)

The view is an eventsourcing `TrackingRecorder` (`max_tracking_id`, `insert_tracking`, and
the library's `has_tracking_id` and `wait`): it follows one application, the compositor's,
whose position it keeps under the name "view".
"""

from __future__ import annotations

import sqlite3
import threading
from contextlib import contextmanager
from dataclasses import dataclass, fields
from typing import Any, Iterable, Iterator, Sequence

import sqlite_utils
from eventsourcing.persistence import Tracking, TrackingRecorder

from domain.publication import Publication
from domain.subscription import ACTIVE, TERMINATED, Subscription

from .records import SubscriptionRow

VIEW = "view"

SUBSCRIPTION_COLUMNS = tuple(f.name for f in fields(SubscriptionRow))


@dataclass(frozen=True)
class LivePublication:
    id: str
    aor: str
    event: str
    etag: str
    content_type: str
    body: bytes
    expires_at: float
    version: int
    published_at: float
    updated_at: float


class CurrentStateView(TrackingRecorder):
    def __init__(self, path: str | None) -> None:
        self.path = path
        conn = sqlite3.connect(path or ":memory:", isolation_level=None,
                               check_same_thread=False, timeout=30)
        if path:
            conn.execute("PRAGMA journal_mode=WAL")
        # The view is rebuildable from the events, so it need not fsync every commit;
        # WAL with synchronous=NORMAL stays consistent across crashes, and the tracking
        # record rolls back together with any rows it covered.
        conn.execute("PRAGMA synchronous=NORMAL")
        self.db = sqlite_utils.Database(conn)
        self._lock = threading.RLock()
        self._create_schema()

    # ---- schema ---------------------------------------------------------------------------

    def _create_schema(self) -> None:
        with self.transaction():
            publications = self.db["publications"]
            if not publications.exists():
                publications.create({
                    "id": str, "aor": str, "event": str, "etag": str, "content_type": str,
                    "body": bytes, "expires_at": float, "version": int,
                    "published_at": float, "updated_at": float,
                }, pk="id", not_null={"aor", "event", "etag", "expires_at", "version"})
                publications.create_index(["aor", "event"], if_not_exists=True)
                publications.create_index(["expires_at"], if_not_exists=True)
            resources = self.db["resources"]
            if not resources.exists():
                resources.create({"id": str, "aor": str, "event": str, "published_at": float},
                                 pk="id")
                resources.create_index(["aor", "event"], if_not_exists=True)
            tracking = self.db["tracking"]
            if not tracking.exists():
                tracking.create({"name": str, "position": int}, pk="name")
            subscriptions = self.db["subscriptions"]
            if not subscriptions.exists():
                subscriptions.create({
                    "id": str, "aor": str, "event": str, "event_id": str, "call_id": str,
                    "remote_tag": str, "local_tag": str, "watcher_uri": str,
                    "watcher_contact": str, "identity": str, "owner": str, "transport": str,
                    "host": str, "port": int, "state": str, "reason": str,
                    "expires_at": float, "subscribed_at": float, "updated_at": float,
                    "terminated_at": float, "notify_count": int, "last_cseq": int,
                    "version": int,
                }, pk="id", not_null={"aor", "event", "state", "expires_at", "version"})
                subscriptions.create_index(["aor", "event"], if_not_exists=True)
                subscriptions.create_index(["state", "expires_at"], if_not_exists=True)
                # A view made before this table existed has skipped any Subscription
                # events it passed: forget its projection (not the consumers' positions),
                # so that the catch-up on open replays everything into every table.
                self.db.conn.execute("DELETE FROM publications")
                self.db.conn.execute("DELETE FROM resources")
                self.db.conn.execute("DELETE FROM tracking WHERE name = ?", [VIEW])

    @contextmanager
    def transaction(self) -> Iterator[sqlite3.Connection]:
        """One write transaction, taken IMMEDIATE so concurrent writers queue on the lock
        instead of failing on a read-to-write upgrade."""
        with self._lock:
            conn = self.db.conn
            conn.execute("BEGIN IMMEDIATE")
            try:
                yield conn
            except BaseException:
                conn.execute("ROLLBACK")
                raise
            else:
                conn.execute("COMMIT")

    # ---- tracking --------------------------------------------------------------------------

    def max_tracking_id(self, application_name: str) -> int | None:
        """The last notification of the followed application applied here (None: none)."""
        return self.position() or None

    def insert_tracking(self, tracking: Tracking) -> None:
        with self.transaction() as conn:
            self._track(conn, VIEW, tracking.notification_id)

    def position(self, name: str = VIEW) -> int:
        with self._lock:
            row = self.db.execute("SELECT position FROM tracking WHERE name = ?",
                                  [name]).fetchone()
        return row[0] if row else 0

    def has_position(self, name: str) -> bool:
        """Has a consumer of this name recorded a position (0 included)?"""
        with self._lock:
            return self.db.execute("SELECT 1 FROM tracking WHERE name = ?",
                                   [name]).fetchone() is not None

    def set_position(self, name: str, position: int) -> None:
        with self.transaction() as conn:
            self._track(conn, name, position)

    @staticmethod
    def _track(conn: sqlite3.Connection, name: str, position: int) -> None:
        conn.execute("INSERT INTO tracking (name, position) VALUES (?, ?) "
                     "ON CONFLICT(name) DO UPDATE SET position = excluded.position",
                     [name, position])

    # ---- projection ------------------------------------------------------------------------

    def apply(self, notifications: Sequence[tuple[int, Any]], *,
              allow_gap: bool = False) -> bool:
        """Apply (position, domain event) pairs in order, exactly once.

        Returns False, applying nothing, when the first position is beyond the next one
        expected and `allow_gap` is false: the caller must catch up from the store first.
        Positions already applied are skipped."""
        if not notifications:
            return True
        with self.transaction() as conn:
            row = conn.execute("SELECT position FROM tracking WHERE name = ?",
                               [VIEW]).fetchone()
            applied = row[0] if row else 0
            fresh = [(pos, ev) for pos, ev in notifications if pos > applied]
            if not fresh:
                return True
            if fresh[0][0] != applied + 1 and not allow_gap:
                return False
            for _, domain_event in fresh:
                self._apply_one(conn, domain_event)
            self._track(conn, VIEW, fresh[-1][0])
        return True

    def _apply_one(self, conn: sqlite3.Connection, e: Any) -> None:
        pid = e.originator_id.hex
        version = e.originator_version
        if isinstance(e, Publication.Published):
            conn.execute(
                "INSERT OR REPLACE INTO publications (id, aor, event, etag, content_type, "
                "body, expires_at, version, published_at, updated_at) "
                "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                [pid, e.aor, e.event_package, e.etag, e.content_type, e.body, e.expires_at,
                 version, e.at, e.at])
            conn.execute("INSERT OR IGNORE INTO resources (id, aor, event, published_at) "
                         "VALUES (?, ?, ?, ?)", [pid, e.aor, e.event_package, e.at])
        elif isinstance(e, Publication.Refreshed):
            conn.execute("UPDATE publications SET etag = ?, expires_at = ?, version = ?, "
                         "updated_at = ? WHERE id = ? AND version < ?",
                         [e.etag, e.expires_at, version, e.at, pid, version])
        elif isinstance(e, Publication.Modified):
            conn.execute("UPDATE publications SET etag = ?, content_type = ?, body = ?, "
                         "expires_at = ?, version = ?, updated_at = ? "
                         "WHERE id = ? AND version < ?",
                         [e.etag, e.content_type, e.body, e.expires_at, version, e.at, pid,
                          version])
        elif isinstance(e, (Publication.Removed, Publication.Expired)):
            conn.execute("DELETE FROM publications WHERE id = ?", [pid])
        # Subscriptions: a row per subscription, kept when it ends. Like the publications'
        # updates, each one applies only when the event is newer than the row.
        elif isinstance(e, Subscription.Subscribed):
            conn.execute(
                "INSERT OR IGNORE INTO subscriptions (id, aor, event, event_id, call_id, "
                "remote_tag, local_tag, watcher_uri, watcher_contact, identity, owner, "
                "transport, host, port, state, reason, expires_at, subscribed_at, "
                "updated_at, terminated_at, notify_count, last_cseq, version) "
                "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, NULL, ?, ?, ?, NULL, "
                "0, ?, ?)",
                [pid, e.aor, e.event_package, getattr(e, "event_id", None), e.call_id,
                 e.remote_tag, e.local_tag, e.watcher_uri, e.watcher_contact, e.identity,
                 getattr(e, "owner", None), e.transport, e.host, e.port, ACTIVE,
                 e.expires_at, e.at, e.at, e.local_cseq, version])
        elif isinstance(e, Subscription.Refreshed):
            conn.execute("UPDATE subscriptions SET expires_at = ?, updated_at = ?, "
                         "version = ? WHERE id = ? AND version < ?",
                         [e.expires_at, e.at, version, pid, version])
        elif isinstance(e, Subscription.Notified):
            # As the aggregate counts: the dialog-info version of a NOTIFY is the number
            # recorded before it.
            conn.execute("UPDATE subscriptions SET notify_count = ?, last_cseq = ?, "
                         "updated_at = ?, version = ? WHERE id = ? AND version < ?",
                         [e.version + 1, e.cseq, e.at, version, pid, version])
        elif isinstance(e, Subscription.Terminated):
            conn.execute("UPDATE subscriptions SET state = ?, reason = ?, terminated_at = ?, "
                         "updated_at = ?, version = ? WHERE id = ? AND version < ?",
                         [TERMINATED, e.reason, e.at, e.at, version, pid, version])
        elif isinstance(e, Subscription.Adopted):
            conn.execute("UPDATE subscriptions SET owner = ?, updated_at = ?, version = ? "
                         "WHERE id = ? AND version < ?", [e.owner, e.at, version, pid, version])

    def reset(self, *, consumers: bool = True) -> None:
        """Forget the projection (a rebuild starts) and, unless `consumers` is false, the
        change-feed consumers' positions too (the store was cleared: positions restart)."""
        with self.transaction() as conn:
            conn.execute("DELETE FROM publications")
            conn.execute("DELETE FROM resources")
            conn.execute("DELETE FROM subscriptions")
            if consumers:
                conn.execute("DELETE FROM tracking")
            else:
                conn.execute("DELETE FROM tracking WHERE name = ?", [VIEW])

    # ---- queries ---------------------------------------------------------------------------

    def _rows(self, where: str, params: Iterable[Any], order: str = "published_at, id",
              limit: int | None = None) -> list[LivePublication]:
        sql = f"SELECT * FROM publications WHERE {where} ORDER BY {order}"
        if limit is not None:
            sql += f" LIMIT {int(limit)}"
        with self._lock:
            rows = self.db.execute(sql, list(params)).fetchall()
        return [LivePublication(*row) for row in rows]

    def live(self, aor: str | None = None, event: str | None = None,
             now: float | None = None) -> list[LivePublication]:
        where, params = _where(aor=aor, event=event, expires_after=now)
        return self._rows(where, params, order="aor, event, published_at, id")

    def count_live(self, aor: str, event: str, now: float) -> int:
        with self._lock:
            return self.db.execute(
                "SELECT COUNT(*) FROM publications WHERE aor = ? AND event = ? "
                "AND expires_at > ?", [aor, event, now]).fetchone()[0]

    def due(self, now: float, limit: int) -> list[LivePublication]:
        """Publications whose expiry time has come, earliest first (uses the index)."""
        return self._rows("expires_at <= ?", [now], order="expires_at", limit=limit)

    def next_expiry(self) -> float | None:
        with self._lock:
            row = self.db.execute("SELECT MIN(expires_at) FROM publications").fetchone()
        return row[0] if row else None

    def count(self) -> int:
        with self._lock:
            return self.db.execute("SELECT COUNT(*) FROM publications").fetchone()[0]

    def publication_ids(self, aor: str, event: str | None = None) -> list[str]:
        sql, params = "SELECT id FROM resources WHERE aor = ?", [aor]
        if event is not None:
            sql += " AND event = ?"
            params.append(event)
        with self._lock:
            return [row[0] for row in self.db.execute(sql + " ORDER BY published_at, id",
                                                      params).fetchall()]

    def subscriptions(self, aor: str | None = None, event: str | None = None, *,
                      active_only: bool = True, now: float | None = None,
                      owner: str | None = None) -> list[SubscriptionRow]:
        """Subscriptions, of one resource or of all, of one package or of all, of one owner
        node or of all (`owner` None: no filter). `active_only`: not terminated and, when
        `now` is given, not yet expired. Ordered by aor, event, subscribed_at, id."""
        where, params = _where(aor=aor, event=event, owner=owner,
                               state=ACTIVE if active_only else None,
                               expires_after=now if active_only else None)
        sql = (f"SELECT {', '.join(SUBSCRIPTION_COLUMNS)} FROM subscriptions "
               f"WHERE {where} ORDER BY aor, event, subscribed_at, id")
        with self._lock:
            rows = self.db.execute(sql, params).fetchall()
        return [SubscriptionRow(*row) for row in rows]

    def active_subscription_ids(self, owner: str | None = None
                                ) -> list[tuple[str, str, str, float]]:
        """(id, aor, event, expires_at) of every subscription not terminated, of one owner
        node or of all (`owner` None), lapsed ones included (they are due an `expire`):
        what a notifier loads when it starts. Earliest expiry first."""
        sql, params = "SELECT id, aor, event, expires_at FROM subscriptions WHERE state = ?", \
            [ACTIVE]
        if owner is not None:
            sql += " AND owner = ?"
            params.append(owner)
        with self._lock:
            rows = self.db.execute(sql + " ORDER BY expires_at, id", params).fetchall()
        return [(row[0], row[1], row[2], row[3]) for row in rows]

    def publication_counts(self, now: float) -> dict[str, tuple[int, int]]:
        """event package -> (live at `now`, lapsed: past their expiry but not yet recorded
        `Expired`), over the publications table in one GROUP BY. Packages with no row are
        absent."""
        with self._lock:
            rows = self.db.execute(
                "SELECT event, SUM(expires_at > ?), SUM(expires_at <= ?) FROM publications "
                "GROUP BY event ORDER BY event", [now, now]).fetchall()
        return {row[0]: (int(row[1] or 0), int(row[2] or 0)) for row in rows}

    def active_subscription_counts(self, now: float) -> dict[str, int]:
        """event package -> subscriptions active at `now` (not terminated, not expired)."""
        with self._lock:
            rows = self.db.execute(
                "SELECT event, COUNT(*) FROM subscriptions WHERE state = ? AND expires_at > ? "
                "GROUP BY event ORDER BY event", [ACTIVE, now]).fetchall()
        return {row[0]: int(row[1]) for row in rows}

    def next_expiry_after(self, now: float) -> float | None:
        """The earliest expiry of a publication still live at `now` (None: none is)."""
        with self._lock:
            row = self.db.execute("SELECT MIN(expires_at) FROM publications "
                                  "WHERE expires_at > ?", [now]).fetchone()
        return row[0] if row else None

    def positions(self) -> dict[str, int]:
        """Every tracking record: name -> position ("view" for this projection; the
        change-feed consumers under their own names)."""
        with self._lock:
            rows = self.db.execute("SELECT name, position FROM tracking "
                                   "ORDER BY name").fetchall()
        return {row[0]: int(row[1]) for row in rows}

    def snapshot(self) -> dict[str, tuple]:
        """Every live row as comparable tuples (for `esc verify`). Publications only: the
        subscriptions table is projected from the same events in the same transactions,
        but `verify` does not compare it (yet)."""
        with self._lock:
            rows = self.db.execute(
                "SELECT id, aor, event, etag, content_type, body, expires_at, version "
                "FROM publications").fetchall()
        return {row[0]: tuple(row[1:]) for row in rows}

    def close(self) -> None:
        with self._lock:
            self.db.conn.close()


def _where(*, expires_after: float | None = None,
           **equal: str | None) -> tuple[str, list[Any]]:
    """A WHERE clause of the filters given (None: no filter): each `column = ?`, and
    `expires_at > ?` for `expires_after`."""
    clauses, params = ["1"], list[Any]()
    for column, value in equal.items():
        if value is not None:
            clauses.append(f"{column} = ?")
            params.append(value)
    if expires_after is not None:
        clauses.append("expires_at > ?")
        params.append(expires_after)
    return " AND ".join(clauses), params
