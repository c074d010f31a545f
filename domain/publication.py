"""The Publication aggregate: one piece of published event state and its life.

A publication belongs to one resource (address of record) and one event package. It is
created by an initial PUBLISH and then refreshed, modified, removed or expired. Each public
command checks the rules of RFC 3903 section 6 and then triggers an event through a private
`@event` method that only mutates: those bodies run again on every replay, so everything
they need (now, the new entity-tag, the audit facts) is computed by the caller and passed in.

Event classes have explicit topics so that moving this module never breaks replay.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import TypedDict
from uuid import UUID

from eventsourcing.domain import Aggregate, Snapshot as _Snapshot, event

from .errors import ConditionalRequestFailed

LIVE, REMOVED, EXPIRED = "live", "removed", "expired"


class AuditFields(TypedDict):
    """The audit facts as they are recorded on every event (keyword arguments of each)."""

    source: str | None
    transport: str | None
    call_id: str | None
    cseq: str | None
    identity: str | None
    user_agent_source: str | None


@dataclass(frozen=True)
class Audit:
    """Who asked, from where: recorded on every event so history can answer 'why'."""

    source: str | None = None  # "203.0.113.5:5060"
    transport: str | None = None  # "udp", "tcp", "tls", "api"
    call_id: str | None = None
    cseq: str | None = None  # "17 PUBLISH"
    identity: str | None = None  # authenticated user, when any
    # The originating user agent behind a trusted proxy ("198.51.100.7:5060", from the
    # bottom-most Via): recorded only for a request from a trusted peer, `source` being
    # the proxy's address. None otherwise, and on every event stored before it existed.
    user_agent_source: str | None = None

    def as_fields(self) -> AuditFields:
        return {
            "source": self.source,
            "transport": self.transport,
            "call_id": self.call_id,
            "cseq": self.cseq,
            "identity": self.identity,
            "user_agent_source": self.user_agent_source,
        }


NO_AUDIT = Audit()


def body_hash(body: bytes) -> str:
    return hashlib.sha256(body).hexdigest()


class Publication(Aggregate):
    TOPIC = "esc:Publication"

    # `_Snapshot` is `Aggregate.Snapshot`, but eventsourcing binds that name by assignment in
    # the class body (`Snapshot = Snapshot`), which a type checker cannot use as a base.
    class Snapshot(_Snapshot):
        TOPIC = "esc:Publication.Snapshot"

    class Event(Aggregate.Event):
        pass

    class Created(Event, Aggregate.Created):
        TOPIC = "esc:Publication.Created"

    # ---- creation -------------------------------------------------------------------

    @classmethod
    def publish(cls, *, id: UUID, aor: str, event_package: str, etag: str,
                content_type: str, body: bytes, expires_at: float, now: float,
                audit: Audit = NO_AUDIT) -> "Publication":
        if expires_at <= now:
            raise ValueError("an initial publication must expire in the future")
        return cls._create(
            cls.Published, id=id, aor=aor, event_package=event_package, etag=etag,
            content_type=content_type, body=body, expires_at=expires_at, at=now,
            **audit.as_fields(),
        )

    class Published(Created):
        TOPIC = "esc:Publication.Published"
        aor: str
        event_package: str
        etag: str
        content_type: str
        body: bytes
        expires_at: float
        at: float
        source: str | None
        transport: str | None
        call_id: str | None
        cseq: str | None
        identity: str | None
        user_agent_source: str | None  # absent from events stored before it existed

    @event(Published)
    def __init__(self, *, aor: str, event_package: str, etag: str, content_type: str,
                 body: bytes, expires_at: float, at: float, source: str | None = None,
                 transport: str | None = None, call_id: str | None = None,
                 cseq: str | None = None, identity: str | None = None,
                 user_agent_source: str | None = None) -> None:
        self.aor = aor
        self.event_package = event_package
        self.etag = etag
        self.content_type = content_type
        self.body = body
        self.expires_at = expires_at
        self.published_at = at
        self.updated_at = at
        self.state = LIVE

    # ---- queries ----------------------------------------------------------------------

    def is_live(self, now: float) -> bool:
        """Live: neither removed nor expired, and its expiry time not yet reached."""
        return self.state == LIVE and now < self.expires_at

    def is_lapsed(self, now: float) -> bool:
        """Still marked live but past its expiry: an `expire` is due."""
        return self.state == LIVE and now >= self.expires_at

    def matches(self, aor: str, event_package: str, etag: str, now: float) -> bool:
        """Does a SIP-If-Match of `etag` for this resource and package name this state?"""
        return (self.etag == etag and self.aor == aor
                and self.event_package == event_package and self.is_live(now))

    # ---- commands -----------------------------------------------------------------------

    def check_matches(self, aor: str, event_package: str, if_match: str, now: float) -> None:
        if not self.matches(aor, event_package, if_match, now):
            raise ConditionalRequestFailed("no live publication has that entity-tag")

    def refresh(self, *, aor: str, event_package: str, if_match: str, new_etag: str,
                expires_at: float, now: float, audit: Audit = NO_AUDIT) -> None:
        """Extend the expiry; the state stays as it is and the tag is replaced."""
        self.check_matches(aor, event_package, if_match, now)
        self._refreshed(aor=self.aor, event_package=self.event_package,
                        etag_before=self.etag, etag=new_etag, expires_at=expires_at, at=now,
                        content_type=self.content_type, body_sha256=body_hash(self.body),
                        **audit.as_fields())

    @event("Refreshed", topic="esc:Publication.Refreshed")
    def _refreshed(self, *, aor: str, event_package: str, etag_before: str, etag: str,
                   expires_at: float, at: float, content_type: str, body_sha256: str,
                   source: str | None, transport: str | None,
                   call_id: str | None, cseq: str | None, identity: str | None,
                   user_agent_source: str | None = None) -> None:
        self.etag = etag
        self.expires_at = expires_at
        self.updated_at = at

    def modify(self, *, aor: str, event_package: str, if_match: str, new_etag: str,
               content_type: str, body: bytes, expires_at: float, now: float,
               audit: Audit = NO_AUDIT) -> None:
        """Replace the state with a new body; the tag is replaced."""
        self.check_matches(aor, event_package, if_match, now)
        self._modified(aor=self.aor, event_package=self.event_package,
                       etag_before=self.etag, etag=new_etag, content_type=content_type,
                       body=body, expires_at=expires_at, at=now, **audit.as_fields())

    @event("Modified", topic="esc:Publication.Modified")
    def _modified(self, *, aor: str, event_package: str, etag_before: str, etag: str,
                  content_type: str, body: bytes,
                  expires_at: float, at: float, source: str | None, transport: str | None,
                  call_id: str | None, cseq: str | None, identity: str | None,
                  user_agent_source: str | None = None) -> None:
        self.etag = etag
        self.content_type = content_type
        self.body = body
        self.expires_at = expires_at
        self.updated_at = at

    def remove(self, *, aor: str, event_package: str, if_match: str, now: float,
               audit: Audit = NO_AUDIT) -> None:
        """End the publication at the publisher's request (Expires: 0)."""
        self.check_matches(aor, event_package, if_match, now)
        self._removed(aor=self.aor, event_package=self.event_package,
                      etag_before=self.etag, expires_at=self.expires_at, at=now,
                      content_type=self.content_type, body_sha256=body_hash(self.body),
                      **audit.as_fields())

    @event("Removed", topic="esc:Publication.Removed")
    def _removed(self, *, aor: str, event_package: str, etag_before: str,
                 expires_at: float, at: float, content_type: str, body_sha256: str,
                 source: str | None, transport: str | None, call_id: str | None,
                 cseq: str | None, identity: str | None,
                 user_agent_source: str | None = None) -> None:
        self.state = REMOVED
        self.updated_at = at

    def expire(self, now: float) -> bool:
        """End a lapsed publication. Harmless when early, late or repeated: returns
        whether an `Expired` event was triggered. The event is stamped with the
        publication's own expiry time, so state that lapsed while no scheduler ran is
        recorded as ending when it did, not when it was noticed."""
        if not self.is_lapsed(now):
            return False
        self._expired(aor=self.aor, event_package=self.event_package,
                      etag_before=self.etag, expires_at=self.expires_at, at=self.expires_at,
                      noticed_at=now, content_type=self.content_type,
                      body_sha256=body_hash(self.body))
        return True

    @event("Expired", topic="esc:Publication.Expired")
    def _expired(self, *, aor: str, event_package: str, etag_before: str,
                 expires_at: float, at: float, noticed_at: float, content_type: str,
                 body_sha256: str) -> None:
        self.state = EXPIRED
        self.updated_at = at


EVENT_TYPES = {
    "esc:Publication.Published": "Published",
    "esc:Publication.Refreshed": "Refreshed",
    "esc:Publication.Modified": "Modified",
    "esc:Publication.Removed": "Removed",
    "esc:Publication.Expired": "Expired",
}
