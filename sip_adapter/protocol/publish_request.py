"""PUBLISH message -> the compositor's PublishRequest (RFC 3903 section 6 steps 1-3)."""

from __future__ import annotations

from domain import Audit, PublishRequest

from .abnf import delta_seconds
from .errors import ParseError, Refused
from .messages import Request
from .routing import Origin


class BadPublish(Refused):
    """A PUBLISH that cannot become a compositor request; carries the status to answer."""


def to_publish_request(request: Request, origin: Origin, identity: str | None = None,
                       allowed_events: list[str] | None = None) -> PublishRequest:
    # The resource: the Request-URI the parser already read, normalised by the domain's one
    # rule (domain.resource.sip_address_of_record, through SipUri.aor).
    try:
        aor = request.aor
    except ParseError as error:
        raise BadPublish(400, "Bad Request-URI") from error

    # One look at the parsed header index (lower-cased names, one entry per header line)
    # instead of a lookup per header: this runs for every PUBLISH.
    headers = request.headers
    index = headers.by_key()
    events = index.get("event")
    if not events:
        # RFC 3903 section 6 step 2: a missing Event header is a 489 as well.
        raise BadPublish(489, "Bad Event", [("Allow-Events", ", ".join(allowed_events or []))])
    if len(events) > 1:
        raise BadPublish(400, "Several Event Values")

    if_match = None
    if_matches = index.get("sip-if-match")
    if if_matches:
        if len(if_matches) > 1 or "," in if_matches[0]:
            raise BadPublish(400, "Several SIP-If-Match Values")
        if_match = if_matches[0].strip()
        if not if_match:
            raise BadPublish(400, "Empty SIP-If-Match")

    # Read by abnf.delta_seconds, as Message.expires reads it (ASCII digits only, above
    # 2**32-1 read as 2**32-1): "²", "١٢٣", a sign or an empty value are a 400. (Called on
    # the value already in hand rather than through request.expires: this runs for every
    # PUBLISH, and the accessor's cache costs more than the parse.)
    expires = None
    expires_values = index.get("expires")
    if expires_values:
        if len(expires_values) > 1:
            raise BadPublish(400, "Several Expires Values")
        expires = delta_seconds(expires_values[0])
        if expires is None:
            raise BadPublish(400, "Bad Expires")

    body = request.body or None
    content_types = index.get("content-type")
    content_type = content_types[0] if content_types else None
    if body:
        if not content_type:
            raise BadPublish(400, "Body Without Content-Type")
        if "content-encoding" in index:
            encoding = (headers.get("Content-Encoding") or "identity").strip().lower()
            if encoding not in ("identity", ""):
                raise BadPublish(415, "Unsupported Content-Encoding",
                                 [("Accept-Encoding", "identity")])

    cseqs = index.get("cseq")
    call_ids = index.get("call-id")
    audit = Audit(source=origin.describe(), transport=origin.transport,
                  call_id=call_ids[0] if call_ids else None,
                  cseq=" ".join(cseqs[0].split()) if cseqs else None, identity=identity)
    return PublishRequest(aor, events[0].strip(), body, content_type, expires, if_match, audit)
