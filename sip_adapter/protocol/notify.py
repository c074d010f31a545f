"""A NotifyJob -> the bytes of its NOTIFY request (RFC 6665 section 4.2.2; RFC 3261 section
12.2.1.1 for a request inside a dialog; RFC 3856 / 4235 for the packages' bodies).

We are the notifier, the UAS of the SUBSCRIBE that made the dialog, so (RFC 3261 12.1.1):
- the Request-URI is the remote target, the watcher's Contact URI;
- the route set is the SUBSCRIBE's Record-Route elements in the order received, one Route
  header line each (loose routing: an element without `lr`, a strict router, is not moved
  into the Request-URI);
- From is the resource with our tag, To the watcher's From URI with its tag.

Sans-I/O: the branch comes from the caller (`new_branch` with an injected random source),
as does the address we send from (Via sent-by, Contact).
"""

from __future__ import annotations

from typing import Callable

from domain.notification import ACTIVE, TERMINATED, NotifyJob

from .transactions import MAGIC_COOKIE

__all__ = ["render_notify", "new_branch"]

_BRANCH_RANDOM_BYTES = 8


def new_branch(random_bytes: Callable[[int], bytes]) -> str:
    """An RFC 3261 branch: the magic cookie and 16 hex digits (64 bits) from `random_bytes`
    (os.urandom or secrets.token_bytes in service; a fixed source in tests). The branch is
    what a client transaction matches its responses by, so it must be unpredictable."""
    data = random_bytes(_BRANCH_RANDOM_BYTES)
    if len(data) != _BRANCH_RANDOM_BYTES:
        raise ValueError(f"random_bytes({_BRANCH_RANDOM_BYTES}) gave {len(data)} bytes")
    return MAGIC_COOKIE + data.hex()


def _host(host: str) -> str:
    """An IPv6 address in brackets (IPv6reference); other hosts as given."""
    return f"[{host}]" if ":" in host and not host.startswith("[") else host


def render_notify(job: NotifyJob, *, transport: str, sent_by: tuple[str, int], branch: str,
                  user_agent: str = "esc/0.1", max_forwards: int = 70) -> bytes:
    """The NOTIFY for `job`, CRLF line endings, Content-Length always written. `transport`:
    the transport it is sent over ("udp", "tcp", "tls", ...); `sent_by`: our address on it
    (Via sent-by and Contact). Raises ValueError for a job that cannot make a well-formed
    request: a state other than active / terminated, a body without content type, a value
    holding CR or LF, a Max-Forwards outside 0..255."""
    if not 0 <= max_forwards <= 255:
        raise ValueError("max_forwards must be within 0..255")
    if job.state == ACTIVE:
        state = f"{ACTIVE};expires={max(0, job.expires_in)}"
    elif job.state == TERMINATED:
        state = TERMINATED if job.reason is None else f"{TERMINATED};reason={job.reason}"
    else:
        raise ValueError(f"unknown subscription state {job.state!r}")
    if job.body and not job.content_type:
        raise ValueError("a NOTIFY body needs a content type")

    host = _host(sent_by[0])
    port = sent_by[1]
    transport = transport.lower()
    if transport == "tls":
        contact = f"<sips:{host}:{port}>"
    elif transport == "udp":
        contact = f"<sip:{host}:{port}>"
    else:
        contact = f"<sip:{host}:{port};transport={transport}>"
    event = job.event if job.event_id is None else f"{job.event};id={job.event_id}"

    lines = [
        f"NOTIFY {job.watcher_contact} SIP/2.0",
        f"Via: SIP/2.0/{transport.upper()} {host}:{port};branch={branch};rport",
        f"Max-Forwards: {max_forwards}",
    ]
    lines.extend(f"Route: {route}" for route in job.route_set)
    lines += [
        f"From: <{job.local_uri or job.aor}>;tag={job.local_tag}",
        f"To: <{job.watcher_uri}>;tag={job.remote_tag}",
        f"Call-ID: {job.call_id}",
        f"CSeq: {job.cseq} NOTIFY",
        f"Contact: {contact}",
        f"Event: {event}",
        f"Subscription-State: {state}",
        f"User-Agent: {user_agent}",
    ]
    if job.body:
        lines.append(f"Content-Type: {job.content_type}")
    lines.append(f"Content-Length: {len(job.body)}")
    lines += ["", ""]
    head = "\r\n".join(lines)
    # (as serializer.serialize: no value may inject a header line)
    breaks = len(lines) - 1
    if head.count("\n") != breaks or head.count("\r") != breaks:
        raise ValueError("CR or LF inside a NOTIFY header field")
    return head.encode("utf-8", "surrogateescape") + job.body
