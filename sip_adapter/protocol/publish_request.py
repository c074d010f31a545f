"""PUBLISH message -> the compositor's PublishRequest (RFC 3903 section 6 steps 1-3)."""

from __future__ import annotations

import ipaddress

from domain import Audit, PublishRequest

from .abnf import delta_seconds
from .errors import ParseError, Refused
from .messages import Request
from .routing import Origin
from .values import Via


class BadPublish(Refused):
    """A PUBLISH that cannot become a compositor request; carries the status to answer."""


def to_publish_request(request: Request, origin: Origin, identity: str | None = None,
                       allowed_events: list[str] | None = None,
                       user_agent_source: str | None = None) -> PublishRequest:
    # `user_agent_source`: the originating user agent's address (user_agent_address), for
    # a request from a trusted peer only; recorded in the audit next to `source`.
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
                  cseq=" ".join(cseqs[0].split()) if cseqs else None, identity=identity,
                  user_agent_source=user_agent_source)
    return PublishRequest(aor, events[0].strip(), body, content_type, expires, if_match, audit)


def user_agent_address(request: Request) -> str | None:
    """The originating user agent of a request a proxy forwarded: the address in its
    bottom-most Via as "host:port" ("[v6]:port" for IPv6), taking the `received` and
    `rport` the first proxy stamped on it (RFC 3261 18.2.1, RFC 3581) where present and
    well formed, else its sent-by host and port (default 5060, 5061 over TLS). None when
    the request has no readable Via.

    A Via is only a claim of whoever sent the request: ask this of requests from a trusted
    peer only."""
    try:
        vias = request.vias
    except ParseError:
        return None
    if not vias:
        return None
    return via_address(vias[-1])


def via_address(via: Via) -> str:
    """Where the sender of this via-parm was seen (see user_agent_address)."""
    host = _ip_literal(via.received) or via.host
    if host.startswith("["):
        host = host[1:-1]
    port = _port(via.rport) or via.port or _default_port(via.transport)
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def _ip_literal(value: str | None) -> str | None:
    """A `received` value that is an IP address (brackets around IPv6 accepted), in its
    canonical form; None for anything else."""
    if not value:
        return None
    text = value[1:-1] if value.startswith("[") and value.endswith("]") else value
    try:
        return str(ipaddress.ip_address(text))
    except ValueError:
        return None


def _port(value: str | None) -> int | None:
    """An `rport` filled in with a port (1-65535); None when absent, empty or bad."""
    if not value or len(value) > 5 or not value.isascii() or not value.isdigit():
        return None
    port = int(value)
    return port if 0 < port <= 65535 else None


def _default_port(transport: str) -> int:
    """RFC 3261 18.2.2 / RFC 4168: 5061 over TLS, 5060 over anything else."""
    return 5061 if transport in ("TLS", "TLS-SCTP") else 5060
