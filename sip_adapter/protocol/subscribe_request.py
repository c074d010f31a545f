"""SUBSCRIBE message -> the notifier's SubscribeRequest (RFC 6665 section 4.2.1, with the
dialog facts of RFC 3261 section 12.1.1 that every NOTIFY of the subscription reuses).

The request is one the parser accepted (parser.py): its Via, From, To, Call-ID and CSeq are
present and well formed, and every Contact and Record-Route element has name-addr syntax.
What is read here goes through the message's typed accessors (`request.aor`, `from_`, `to`,
`cseq`, `expires`) and values.py's NameAddr; only the Event header, which nothing else reads,
is matched here, against RFC 6665's grammar composed from abnf.py's pieces.
"""

from __future__ import annotations

import re
from typing import Sequence

from domain.notification import SubscribeRequest

from . import abnf
from .errors import ParseError, Refused
from .headers import split_list
from .messages import Request
from .routing import Origin, describe_address
from .uri import SipUri, parse_uri
from .values import NameAddr

__all__ = ["BadSubscribe", "to_subscribe_request", "parse_event"]


class BadSubscribe(Refused):
    """A SUBSCRIBE that cannot become a notifier request; carries the status to answer and
    the header fields the answer must carry (Allow-Events with a 489)."""


# RFC 6665 section 8.4:
#   Event             =  ( "Event" / "o" ) HCOLON event-type *( SEMI event-param )
#   event-type        =  event-package *( "." event-template )
#   event-package     =  token-nodot
#   event-template    =  token-nodot
#   token-nodot       =  1*( alphanum / "-"  / "!" / "%" / "*" / "_" / "+" / "`" / "'" / "~" )
#   event-param       =  generic-param / ( "id" EQUAL token )
# (abnf.generic_params is possessive, as is the template loop: linear on hostile input.)
_TOKEN_NODOT = r"[A-Za-z0-9\-!%*_+`'~]++"
_EVENT_FULLMATCH = re.compile(
    rf"(?P<type>{_TOKEN_NODOT}(?:\.{_TOKEN_NODOT})*+)(?P<params>{abnf.generic_params})"
).fullmatch
_GENERIC_PARAMS_FINDALL = abnf.GENERIC_PARAM_RE.findall
_TOKEN_FULLMATCH = abnf.TOKEN_RE.fullmatch


def parse_event(value: str) -> tuple[str, str | None]:
    """An Event header value -> (event-type lower-cased, the `id` parameter or None).
    ParseError(400) when it does not match RFC 6665's grammar, or its id is not a token."""
    m = _EVENT_FULLMATCH(value)
    if m is None:
        raise ParseError(400, "Bad Event Header")
    event_id = None
    params = m.group("params")
    if params:
        for name, param_value in _GENERIC_PARAMS_FINDALL(params):
            if name.lower() == "id":
                # findall gives "" for a parameter without value (a gen-value is never empty)
                if not param_value or _TOKEN_FULLMATCH(param_value) is None:
                    raise ParseError(400, "Bad Event Header")
                event_id = param_value
                break
    return m.group("type").lower(), event_id


def to_subscribe_request(request: Request, origin: Origin, *, identity: str | None,
                         allowed_events: Sequence[str]) -> SubscribeRequest:
    """Raises BadSubscribe with the status to answer (400, or 489 with Allow-Events)."""
    # The resource: the Request-URI's address of record (domain.resource's one rule, through
    # SipUri.aor / AbsoluteUri.aor), as for PUBLISH.
    try:
        aor = request.aor
    except ParseError as error:
        raise BadSubscribe(400, "Bad Request-URI") from error

    try:
        cseq = request.cseq
        from_ = request.from_
        to = request.to
    except ParseError as error:  # (only for a request the parser did not build)
        raise BadSubscribe(400, error.reason) from error
    if cseq is None or cseq.method != "SUBSCRIBE":
        raise BadSubscribe(400, "Bad CSeq")
    call_id = request.call_id
    if not call_id:
        raise BadSubscribe(400, "Missing Call-ID Header")
    if from_ is None or not from_.tag:
        # RFC 3261 8.1.1.3: the From tag is mandatory; the dialog is identified by it.
        raise BadSubscribe(400, "Missing From Tag")

    index = request.headers.by_key()

    # RFC 6665 section 4.2.1: exactly one Event header; a package we do not serve is a 489
    # listing the ones we do (section 8.2.2, Allow-Events).
    events = index.get("event")
    if not events:
        raise BadSubscribe(400, "Missing Event Header")
    if len(events) > 1:
        raise BadSubscribe(400, "Bad Event Header")
    try:
        event, event_id = parse_event(events[0])
    except ParseError as error:
        raise BadSubscribe(400, error.reason) from error
    if event not in {name.lower() for name in allowed_events}:
        raise BadSubscribe(489, "Bad Event", [("Allow-Events", ", ".join(allowed_events))])

    # RFC 6665 section 4.1.2 / RFC 3261 12.1.1: one Contact, a SIP or SIPS URI: the remote
    # target, every NOTIFY's Request-URI. A URI with a headers component cannot be one
    # (RFC 3261 19.1.5: no headers in a Request-URI; our own parser refuses them).
    contact_lines = index.get("contact")
    if not contact_lines:
        raise BadSubscribe(400, "Missing Contact Header")
    contacts = [element for line in contact_lines for element in split_list(line)]
    if len(contacts) != 1 or contacts[0] == "*":
        raise BadSubscribe(400, "Bad Contact")
    try:
        contact_uri = NameAddr.parse(contacts[0]).uri
        parsed_contact = parse_uri(contact_uri)
    except ParseError as error:
        raise BadSubscribe(400, "Bad Contact") from error
    if not isinstance(parsed_contact, SipUri) or parsed_contact.headers:
        raise BadSubscribe(400, "Bad Contact")

    # Message.expires: ASCII digits only, several lines refused, above 2**32-1 read as
    # 2**32-1 (RFC 3261 section 20.19).
    try:
        expires = request.expires
    except ParseError as error:
        raise BadSubscribe(400, "Bad Expires") from error

    # The route set (RFC 3261 12.1.1, we are the UAS): the Record-Route elements, each as
    # written, in the order received. The parser checked each one's name-addr syntax.
    route_set = tuple(request.headers.get_all("Record-Route"))

    host, port = origin.address[0], origin.address[1]
    return SubscribeRequest(
        aor=aor, event=event, call_id=call_id, remote_tag=from_.tag, cseq=cseq.number,
        watcher_uri=from_.uri, watcher_contact=contact_uri, transport=origin.transport,
        host=host, port=port, local_tag=to.tag if to is not None else None,
        event_id=event_id, expires=expires, route_set=route_set, identity=identity,
        local_uri=to.uri if to is not None else None,
        received_on=describe_address(origin.local) if origin.local is not None else None,
    )
