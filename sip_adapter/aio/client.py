"""A small PUBLISH client for operators and examples (`esc publish`).

It sends one PUBLISH over UDP (retransmitting per RFC 3261 17.1.2.2: T1 doubling to T2)
or TCP, waits for the final response and returns it. Blocking sockets: it is a tool, not
part of the server.
"""

from __future__ import annotations

import secrets
import socket
import time
from dataclasses import dataclass

from domain.packages import BUILT_IN

from ..protocol.framer import StreamFramer
from ..protocol.parser import ParseError, parse_message

T1, T2 = 0.5, 4.0


class PublishError(Exception):
    """No usable answer: one line saying why."""


@dataclass
class Answer:
    status: int
    reason: str
    headers: dict[str, str]

    def as_dict(self) -> dict:
        return {"status": self.status, "reason": self.reason, "headers": self.headers}


def _split_hostport(text: str, default_port: int = 5060) -> tuple[str, int]:
    if text.startswith("["):
        host, _, rest = text[1:].partition("]")
        port = rest.lstrip(":")
    else:
        host, _, port = text.partition(":")
    if port and not port.isdigit():
        raise PublishError(f"bad port in {text!r}")
    return host, int(port) if port else default_port


def _target(uri: str) -> tuple[str, int]:
    rest = uri.split(":", 1)[1] if ":" in uri else uri
    hostport = rest.split("@", 1)[-1].split(";", 1)[0].split("?", 1)[0]
    return _split_hostport(hostport)


def build_publish(uri: str, event: str, *, body: bytes | None, content_type: str | None,
                  etag: str | None, expires: int | None, transport: str,
                  local: tuple[str, int]) -> tuple[bytes, str]:
    branch = "z9hG4bK" + secrets.token_hex(10)
    host, port = local
    sent_by = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    lines = [
        f"PUBLISH {uri} SIP/2.0",
        f"Via: SIP/2.0/{transport.upper()} {sent_by};branch={branch};rport",
        "Max-Forwards: 70",
        f"From: <{uri}>;tag={secrets.token_hex(6)}",
        f"To: <{uri}>",
        f"Call-ID: {secrets.token_hex(12)}@esc-publish",
        "CSeq: 1 PUBLISH",
        f"Event: {event}",
        "User-Agent: esc-publish",
    ]
    if etag:
        lines.append(f"SIP-If-Match: {etag}")
    if expires is not None:
        lines.append(f"Expires: {expires}")
    if body:
        if not content_type:
            package = BUILT_IN.get(event.split(";")[0].strip().lower())
            if package is None or not package.content_types:
                raise PublishError("--content-type is needed for this event package")
            content_type = package.content_types[0]
        lines.append(f"Content-Type: {content_type}")
    lines.append(f"Content-Length: {len(body or b'')}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + (body or b""), branch


def _answer(message) -> Answer:
    headers: dict[str, str] = {}
    for name, value in message.headers:
        headers.setdefault(name, value)
    return Answer(message.status, message.reason, headers)


def publish_once(uri: str, event: str, *, body: bytes | None = None,
                 content_type: str | None = None, etag: str | None = None,
                 expires: int | None = None, transport: str = "udp",
                 server: str | None = None, timeout: float = 8.0) -> Answer:
    if not uri.lower().startswith(("sip:", "sips:")):
        raise PublishError(f"not a SIP URI: {uri!r}")
    host, port = _split_hostport(server) if server else _target(uri)
    try:
        info = socket.getaddrinfo(host, port, type=socket.SOCK_DGRAM if transport == "udp"
                                  else socket.SOCK_STREAM)[0]
    except socket.gaierror as error:
        raise PublishError(f"cannot resolve {host}: {error.strerror}") from None
    family, address = info[0], info[4]
    deadline = time.monotonic() + timeout
    if transport == "udp":
        return _over_udp(uri, event, body, content_type, etag, expires, family, address,
                         deadline)
    return _over_tcp(uri, event, body, content_type, etag, expires, family, address, deadline)


def _over_udp(uri, event, body, content_type, etag, expires, family, address, deadline):
    with socket.socket(family, socket.SOCK_DGRAM) as sock:
        sock.connect(address)
        local = sock.getsockname()[:2]
        data, branch = build_publish(uri, event, body=body, content_type=content_type,
                                     etag=etag, expires=expires, transport="udp", local=local)
        interval, next_send = T1, time.monotonic()
        while True:
            now = time.monotonic()
            if now >= deadline:
                raise PublishError(f"no final response from {address[0]}:{address[1]}")
            if now >= next_send:
                try:
                    sock.send(data)
                except OSError as error:
                    raise PublishError(f"cannot send: {error.strerror}") from None
                next_send = now + interval
                interval = min(interval * 2, T2)
            sock.settimeout(max(0.01, min(next_send, deadline) - now))
            try:
                reply = sock.recv(65535)
            except socket.timeout:
                continue
            except ConnectionRefusedError:
                raise PublishError(f"connection refused by {address[0]}:{address[1]}") from None
            try:
                message = parse_message(reply)
            except ParseError:
                continue
            if getattr(message, "status", 0) >= 200 and branch in (message.headers.get("Via") or ""):
                return _answer(message)


def _over_tcp(uri, event, body, content_type, etag, expires, family, address, deadline):
    try:
        sock = socket.create_connection(address[:2], timeout=max(0.1, deadline - time.monotonic()))
    except OSError as error:
        raise PublishError(f"cannot connect to {address[0]}:{address[1]}: "
                           f"{error.strerror or error}") from None
    with sock:
        local = sock.getsockname()[:2]
        data, branch = build_publish(uri, event, body=body, content_type=content_type,
                                     etag=etag, expires=expires, transport="tcp", local=local)
        sock.sendall(data)
        framer = StreamFramer()
        while time.monotonic() < deadline:
            sock.settimeout(max(0.01, deadline - time.monotonic()))
            try:
                chunk = sock.recv(65535)
            except socket.timeout:
                break
            if not chunk:
                break
            for item in framer.feed(chunk):
                if isinstance(item, ParseError):
                    continue
                if getattr(item, "status", 0) >= 200:
                    return _answer(item)
        raise PublishError(f"no final response from {address[0]}:{address[1]}")
