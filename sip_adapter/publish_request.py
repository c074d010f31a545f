"""PUBLISH message -> the compositor's PublishRequest (RFC 3903 section 6 steps 1-3)."""

from __future__ import annotations

from domain import Audit, InvalidResource, PublishRequest, address_of_record

from .routing import Origin


class BadPublish(Exception):
    """A PUBLISH that cannot become a compositor request; carries the status to answer."""

    def __init__(self, status: int, reason: str,
                 headers: list[tuple[str, str]] | None = None) -> None:
        super().__init__(reason)
        self.status = status
        self.reason = reason
        self.headers = headers or []


def to_publish_request(request, origin: Origin, identity: str | None = None,
                       allowed_events: list[str] | None = None) -> PublishRequest:
    try:
        aor = address_of_record(request.uri)
    except InvalidResource as error:
        raise BadPublish(400, "Bad Request-URI") from error

    events = request.headers.get_all("Event")
    if not events:
        # RFC 3903 section 6 step 2: a missing Event header is a 489 as well.
        raise BadPublish(489, "Bad Event", [("Allow-Events", ", ".join(allowed_events or []))])
    if len(events) > 1:
        raise BadPublish(400, "Several Event Values")

    if request.headers.count_lines("SIP-If-Match") > 1 or \
            "," in (request.headers.get("SIP-If-Match") or ""):
        raise BadPublish(400, "Several SIP-If-Match Values")
    if_match = request.headers.get("SIP-If-Match")
    if if_match is not None:
        if_match = if_match.strip()
        if not if_match:
            raise BadPublish(400, "Empty SIP-If-Match")

    expires_values = request.headers.get_all("Expires")
    if len(expires_values) > 1:
        raise BadPublish(400, "Several Expires Values")
    expires = None
    if expires_values:
        text = expires_values[0].strip()
        if not text.isdigit():
            raise BadPublish(400, "Bad Expires")
        expires = min(int(text), 2**32 - 1)

    body = request.body or None
    content_type = request.headers.get("Content-Type")
    if body and not content_type:
        raise BadPublish(400, "Body Without Content-Type")
    encoding = (request.headers.get("Content-Encoding") or "identity").strip().lower()
    if body and encoding not in ("identity", ""):
        raise BadPublish(415, "Unsupported Content-Encoding", [("Accept-Encoding", "identity")])

    cseq = request.headers.get("CSeq")
    audit = Audit(source=origin.describe(), transport=origin.transport,
                  call_id=request.headers.get("Call-ID"),
                  cseq=" ".join(cseq.split()) if cseq else None, identity=identity)
    return PublishRequest(aor, events[0].strip(), body, content_type, expires, if_match, audit)
