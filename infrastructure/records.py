"""What the compositor hands back: acknowledgements, found state, history and feed items,
and subscriptions (watchers) as the current-state view holds them."""

from __future__ import annotations

import base64
from dataclasses import asdict, dataclass
from typing import Any

from domain.publication import EVENT_TYPES


@dataclass(frozen=True)
class Accepted:
    """A successful PUBLISH: the entity-tag to use next and the granted expiry (s)."""

    etag: str
    expires: int


@dataclass(frozen=True)
class Found:
    """A live publication as `find` and `publications` return it."""

    aor: str
    event: str
    etag: str
    content_type: str
    body: bytes
    expires_at: float
    id: str
    version: int


@dataclass(frozen=True)
class SubscriptionRow:
    """One subscription (a watcher of a resource), as the view's `subscriptions` table
    holds it: the latest state its events describe. Kept after it has ended (`state`
    "terminated", `reason` and `terminated_at` say why and when)."""

    id: str  # the Subscription aggregate's id (hex)
    aor: str
    event: str  # the event package
    event_id: str | None  # the Event header's id parameter
    call_id: str
    remote_tag: str  # the watcher's From tag
    local_tag: str  # our To tag
    watcher_uri: str
    watcher_contact: str
    identity: str | None
    owner: str | None  # the node that sends its NOTIFYs
    transport: str  # where NOTIFYs go: the address the SUBSCRIBE came from
    host: str
    port: int
    state: str  # "active" or "terminated"
    reason: str | None  # the RFC 6665 reason it ended with
    expires_at: float
    subscribed_at: float
    updated_at: float
    terminated_at: float | None
    notify_count: int  # NOTIFYs recorded
    last_cseq: int  # the CSeq of the last NOTIFY recorded (the start value before any)
    version: int  # the aggregate version of the last event applied

    def as_json(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class EventRecord:
    """One event of a publication, as history and the change feed show it."""

    position: int | None
    type: str
    publication: str
    version: int
    aor: str
    event: str
    etag_before: str | None
    etag: str | None
    expires_at: float | None
    at: float
    content_type: str | None
    body: bytes | None
    body_sha256: str | None
    source: str | None
    transport: str | None
    call_id: str | None
    cseq: str | None
    identity: str | None
    # The originating user agent a trusted proxy sent it for (its bottom-most Via); None
    # otherwise, and for every event stored before the field existed.
    user_agent_source: str | None = None

    def as_json(self) -> dict[str, Any]:
        data = asdict(self)
        body = data.pop("body")
        if body is not None:
            try:
                data["body"] = body.decode("utf-8")
            except UnicodeDecodeError:
                data["body_base64"] = base64.b64encode(body).decode()
        return data


def event_record(domain_event: Any, position: int | None = None) -> EventRecord:
    topic = type(domain_event).TOPIC
    get = domain_event.__dict__.get
    return EventRecord(
        position=position,
        type=EVENT_TYPES.get(topic, topic),
        publication=domain_event.originator_id.hex,
        version=domain_event.originator_version,
        aor=get("aor"),
        event=get("event_package"),
        etag_before=get("etag_before"),
        etag=get("etag"),
        expires_at=get("expires_at"),
        at=get("at"),
        content_type=get("content_type"),
        body=get("body"),
        body_sha256=get("body_sha256"),
        source=get("source"),
        transport=get("transport"),
        call_id=get("call_id"),
        cseq=get("cseq"),
        identity=get("identity"),
        user_agent_source=get("user_agent_source"),
    )
