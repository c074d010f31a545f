"""Every `esc serve` limit, over real sockets: what goes past a bound gets a proper answer
(or, where nothing can be answered, a closed connection), what stays within it is served, and
the server goes on answering afterwards.

Framing-level cases use raw sockets (SIPp cannot send a half message or break a header
section on purpose); the rate-limit burst uses SIPp at a high call rate.
"""

from __future__ import annotations

import json
import re
import socket
import time
import uuid
from dataclasses import dataclass

import pytest

from .conftest import RunningServer, run_sipp

pytestmark = pytest.mark.e2e

HOST = "127.0.0.1"
ANSWER_TIMEOUT = 5.0


def pidf(entity: str, note: str = "", pad: int = 0) -> bytes:
    """A valid PIDF document; `pad` adds that many bytes inside an XML comment."""
    comment = f"<!--{'x' * (pad - 7)}-->" if pad else ""
    return (f'<?xml version="1.0" encoding="UTF-8"?>\n'
            f'<presence xmlns="urn:ietf:params:xml:ns:pidf" entity="{entity}">{comment}'
            f'<tuple id="t1"><status><basic>open</basic></status><note>{note}</note></tuple>'
            f'</presence>\n').encode()


def pidf_of_size(entity: str, size: int) -> bytes:
    body = pidf(entity, pad=8)
    body = pidf(entity, pad=8 + size - len(body))
    assert len(body) == size
    return body


# ---- a minimal SIP client ---------------------------------------------------------------------

def request(method: str, uri: str, *, local: tuple[str, int], transport: str = "UDP",
            headers: tuple[str, ...] = (), body: bytes = b"", cseq: int = 1,
            call_id: str | None = None, to: str | None = None) -> bytes:
    lines = [f"{method} {uri} SIP/2.0",
             f"Via: SIP/2.0/{transport} {local[0]}:{local[1]};"
             f"branch=z9hG4bK{uuid.uuid4().hex};rport",
             "Max-Forwards: 70",
             f"From: <sip:tester@{HOST}>;tag={uuid.uuid4().hex[:10]}",
             f"To: <{to or uri}>",
             f"Call-ID: {call_id or uuid.uuid4().hex}",
             f"CSeq: {cseq} {method}",
             *headers,
             f"Content-Length: {len(body)}"]
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + body


def publish(uri: str, *, local: tuple[str, int], transport: str = "UDP",
            event: str = "presence", etag: str | None = None, expires: int = 600,
            body: bytes = b"", content_type: str = "application/pidf+xml",
            extra: tuple[str, ...] = ()) -> bytes:
    headers = [f"Event: {event}", f"Expires: {expires}", *extra]
    if etag:
        headers.append(f"SIP-If-Match: {etag}")
    if body:
        headers.append(f"Content-Type: {content_type}")
    return request("PUBLISH", uri, local=local, transport=transport, headers=tuple(headers),
                   body=body)


@dataclass
class Response:
    status: int
    reason: str
    headers: dict[str, str]  # lower-case name -> first value
    raw: bytes


def parse_response(data: bytes) -> Response:
    head = data.split(b"\r\n\r\n", 1)[0].decode(errors="replace")
    status_line, *lines = head.split("\r\n")
    match = re.match(r"SIP/2\.0 (\d{3}) (.*)$", status_line)
    assert match, f"not a SIP response: {status_line!r}"
    headers: dict[str, str] = {}
    for line in lines:
        name, _, value = line.partition(":")
        headers.setdefault(name.strip().lower(), value.strip())
    return Response(int(match.group(1)), match.group(2), headers, data)


class Udp:
    def __init__(self, server: RunningServer, bind: str = HOST) -> None:
        self.server = (server.host, server.ports["udp"])
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind((bind, 0))
        self.local = self.sock.getsockname()

    def send(self, data: bytes) -> None:
        self.sock.sendto(data, self.server)

    def receive(self, timeout: float = ANSWER_TIMEOUT) -> Response | None:
        self.sock.settimeout(timeout)
        try:
            data, _ = self.sock.recvfrom(65535)
        except socket.timeout:
            return None
        return parse_response(data)

    def ask(self, data: bytes, timeout: float = ANSWER_TIMEOUT) -> Response:
        self.send(data)
        answer = self.receive(timeout)
        assert answer is not None, "no answer over UDP"
        return answer

    def options(self) -> Response:
        return self.ask(request("OPTIONS", f"sip:{HOST}", local=self.local))

    def close(self) -> None:
        self.sock.close()


class Tcp:
    def __init__(self, server: RunningServer) -> None:
        self.sock = socket.create_connection((server.host, server.ports["tcp"]), timeout=5)
        self.local = self.sock.getsockname()
        self.pending = b""

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def receive(self, timeout: float = ANSWER_TIMEOUT) -> Response | None:
        """The next response, or None when the server closed the connection first."""
        self.sock.settimeout(timeout)
        while True:
            end = self.pending.find(b"\r\n\r\n")
            if end >= 0:
                match = re.search(rb"(?im)^(?:content-length|l)[ \t]*:[ \t]*(\d+)",
                                  self.pending[:end])
                total = end + 4 + (int(match.group(1)) if match else 0)
                if len(self.pending) >= total:
                    data, self.pending = self.pending[:total], self.pending[total:]
                    return parse_response(data)
            try:
                chunk = self.sock.recv(65535)
            except ConnectionResetError:
                return None
            if not chunk:
                return None
            self.pending += chunk

    def ask(self, data: bytes, timeout: float = ANSWER_TIMEOUT) -> Response:
        self.send(data)
        answer = self.receive(timeout)
        assert answer is not None, "the server closed the connection instead of answering"
        return answer

    def options(self) -> Response:
        return self.ask(request("OPTIONS", f"sip:{HOST}", local=self.local, transport="TCP"))

    def closed_within(self, timeout: float) -> float | None:
        """Seconds until the server closes the connection (EOF or reset), None if it stays
        open that long. Anything the server sends meanwhile is kept in `pending`."""
        start = time.monotonic()
        deadline = start + timeout
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return None
            self.sock.settimeout(remaining)
            try:
                chunk = self.sock.recv(65535)
            except socket.timeout:
                return None
            except (ConnectionResetError, BrokenPipeError):
                return time.monotonic() - start
            if not chunk:
                return time.monotonic() - start
            self.pending += chunk

    def close(self) -> None:
        self.sock.close()


def assert_still_serving(server: RunningServer, bind: str = HOST) -> None:
    """A fresh client on each transport gets 200 for OPTIONS."""
    udp = Udp(server, bind)
    try:
        assert udp.options().status == 200
    finally:
        udp.close()
    tcp = Tcp(server)
    try:
        assert tcp.options().status == 200
    finally:
        tcp.close()


def live(server: RunningServer, aor: str | None = None) -> list[dict]:
    return json.loads(server.esc("list", *([aor] if aor else []), "--json").stdout)


# ---- --max-body PACKAGE=BYTES ------------------------------------------------------------------

@pytest.mark.parametrize("transport", ["UDP", "TCP"])
def test_body_over_the_package_limit_is_413(server_factory, transport):
    server = server_factory("--max-body", "presence=600")
    client = Udp(server) if transport == "UDP" else Tcp(server)
    aor = f"sip:alice@{HOST}"
    try:
        at_limit = client.ask(publish(aor, local=client.local, transport=transport,
                                      body=pidf_of_size(aor, 600)))
        assert at_limit.status == 200, "a body of exactly the limit is accepted"
        over = client.ask(publish(aor, local=client.local, transport=transport,
                                  body=pidf_of_size(aor, 601)))
        assert over.status == 413 and "sip-etag" not in over.headers
        # The limit is per package: a large dialog document is still fine.
        dialog = (f'<?xml version="1.0"?>\n<dialog-info xmlns="urn:ietf:params:xml:ns:'
                  f'dialog-info" version="0" state="full" entity="{aor}">'
                  f'<!--{"x" * 1500}--></dialog-info>\n').encode()
        other = client.ask(publish(aor, local=client.local, transport=transport,
                                   event="dialog", body=dialog,
                                   content_type="application/dialog-info+xml"))
        assert other.status == 200
        # A modify over the limit is refused too, and leaves the publication as it was.
        tag = at_limit.headers["sip-etag"]
        modify = client.ask(publish(aor, local=client.local, transport=transport, etag=tag,
                                    body=pidf_of_size(aor, 601)))
        assert modify.status == 413
        refreshed = client.ask(publish(aor, local=client.local, transport=transport,
                                       etag=tag))
        assert refreshed.status == 200, "the refused modify must not have used up the tag"
        if transport == "TCP":
            assert client.options().status == 200, "a 413 for the body keeps the connection"
    finally:
        client.close()
    rows = live(server, aor)
    assert sorted(r["event"] for r in rows) == ["dialog", "presence"]
    assert all(len(r["body"]) <= 600 for r in rows if r["event"] == "presence")
    assert_still_serving(server)


# ---- --max-message-size ------------------------------------------------------------------------

def test_oversized_message_over_tcp_is_413_and_the_connection_closes(server_factory):
    server = server_factory("--max-message-size", "2048")
    aor = f"sip:alice@{HOST}"
    tcp = Tcp(server)
    try:
        # The header section is fine; its Content-Length takes the message past 2048 bytes,
        # so the stream cannot be trusted any further: answer 413, then close.
        tcp.send(publish(aor, local=tcp.local, transport="TCP", body=pidf_of_size(aor, 3000)))
        answer = tcp.receive()
        assert answer is not None, "the server closed without answering 413"
        assert answer.status == 413
        assert tcp.closed_within(3.0) is not None, "the connection stayed open after the 413"
    finally:
        tcp.close()
    # A header section that never ends within the limit: nothing addressable, just closed.
    tcp = Tcp(server)
    try:
        head = request("OPTIONS", f"sip:{HOST}", local=tcp.local, transport="TCP")
        head = head[: -len(b"\r\n")]  # no empty line yet
        tcp.send(head + b"".join(b"X-Pad-%d: %s\r\n" % (i, b"y" * 60) for i in range(40)))
        assert tcp.closed_within(3.0) is not None, "an endless header section was kept open"
        leftovers = tcp.pending
        if leftovers:
            assert parse_response(leftovers).status == 413
    finally:
        tcp.close()
    assert live(server) == [], "nothing oversized was stored"
    assert_still_serving(server)


def test_oversized_datagram_does_not_stop_the_server(server_factory):
    server = server_factory("--max-message-size", "2048")
    aor = f"sip:alice@{HOST}"
    udp = Udp(server)
    try:
        udp.send(publish(aor, local=udp.local, body=pidf_of_size(aor, 3000)))
        answer = udp.receive(timeout=1.0)
        # Dropped (the documented choice) or refused; never accepted.
        assert answer is None or answer.status in (413, 513), answer
        small = udp.ask(publish(aor, local=udp.local, body=pidf_of_size(aor, 1000)))
        assert small.status == 200
    finally:
        udp.close()
    assert len(live(server)) == 1
    assert_still_serving(server)


# ---- --max-headers -----------------------------------------------------------------------------

def with_pad_headers(count: int, local, transport: str, **kwargs) -> bytes:
    """An OPTIONS with exactly `count` header fields (Via first, so it is addressable)."""
    base = request("OPTIONS", f"sip:{HOST}", local=local, transport=transport, **kwargs)
    fields = base.split(b"\r\n\r\n", 1)[0].split(b"\r\n")[1:]
    pad = tuple(f"X-Pad-{i}: {i}" for i in range(count - len(fields)))
    return request("OPTIONS", f"sip:{HOST}", local=local, transport=transport, headers=pad,
                   **kwargs)


@pytest.mark.parametrize("transport", ["UDP", "TCP"])
def test_too_many_header_fields_is_answered_with_a_4xx(server_factory, transport):
    server = server_factory("--max-headers", "20")
    client = Udp(server) if transport == "UDP" else Tcp(server)
    try:
        assert client.ask(with_pad_headers(20, client.local, transport)).status == 200
        answer = client.ask(with_pad_headers(21, client.local, transport))
        assert answer.status == 413, f"{answer.status} {answer.reason}"
        assert "header" in answer.reason.lower()
        if transport == "TCP":
            # Whether the stream goes on or is closed is the server's choice; it must not
            # hang: either it answers the next request or it has closed.
            try:
                client.send(request("OPTIONS", f"sip:{HOST}", local=client.local,
                                    transport="TCP"))
            except (BrokenPipeError, ConnectionResetError):
                pass
            after = client.receive(timeout=3.0)
            assert after is None or after.status == 200
    finally:
        client.close()
    assert_still_serving(server)


# ---- --max-header-length -----------------------------------------------------------------------

@pytest.mark.parametrize("transport", ["UDP", "TCP"])
def test_overlong_header_field_is_answered_with_a_4xx(server_factory, transport):
    server = server_factory("--max-header-length", "512")
    client = Udp(server) if transport == "UDP" else Tcp(server)

    def with_line(length: int) -> bytes:
        line = "Subject: " + "s" * (length - len("Subject: "))
        return request("OPTIONS", f"sip:{HOST}", local=client.local, transport=transport,
                       headers=(line,))

    try:
        assert client.ask(with_line(512)).status == 200, "a field of exactly the limit"
        answer = client.ask(with_line(513))
        assert answer.status == 413, f"{answer.status} {answer.reason}"
        if transport == "TCP":
            client.close()
            client = Tcp(server)
        long_uri = f"sip:{'u' * 600}@{HOST}"
        answer = client.ask(request("OPTIONS", long_uri, local=client.local,
                                    transport=transport, to=f"sip:{HOST}"))
        assert answer.status == 414, f"{answer.status} {answer.reason}"
    finally:
        client.close()
    assert_still_serving(server)


# ---- --max-per-resource ------------------------------------------------------------------------

def test_publications_per_resource_are_capped(server_factory):
    server = server_factory("--max-per-resource", "2")
    alice, bob = f"sip:alice@{HOST}", f"sip:bob@{HOST}"
    udp = Udp(server)
    try:
        def initial(aor: str, note: str) -> Response:
            return udp.ask(publish(aor, local=udp.local, body=pidf(aor, note)))

        first, second = initial(alice, "one"), initial(alice, "two")
        assert first.status == second.status == 200
        third = initial(alice, "three")
        assert 400 <= third.status < 500 and "sip-etag" not in third.headers
        assert third.reason == "Too Many Publications For Resource"
        assert initial(bob, "other resource").status == 200
        dialog = (f'<?xml version="1.0"?>\n<dialog-info xmlns="urn:ietf:params:xml:ns:'
                  f'dialog-info" version="0" state="full" entity="{alice}"/>\n').encode()
        assert udp.ask(publish(alice, local=udp.local, event="dialog", body=dialog,
                               content_type="application/dialog-info+xml")).status == 200, \
            "the cap is per resource and event package"
        # At the cap, the existing publications are still refreshed and modified.
        refreshed = udp.ask(publish(alice, local=udp.local, etag=first.headers["sip-etag"]))
        assert refreshed.status == 200
        modified = udp.ask(publish(alice, local=udp.local, etag=second.headers["sip-etag"],
                                   body=pidf(alice, "two, modified")))
        assert modified.status == 200
        removed = udp.ask(publish(alice, local=udp.local, etag=refreshed.headers["sip-etag"],
                                  expires=0))
        assert removed.status == 200
        again = initial(alice, "four")
        assert again.status == 200, "room again after a removal"
        assert initial(alice, "five").status == third.status
    finally:
        udp.close()
    notes = sorted(re.search(r"<note>(.*)</note>", r["body"]).group(1)
                   for r in live(server, alice) if r["event"] == "presence")
    assert notes == ["four", "two, modified"]
    history = [json.loads(line) for line in
               server.esc("history", alice, "--event", "presence", "--json").stdout.splitlines()]
    assert [e["type"] for e in history].count("Published") == 3, "refusals store nothing"
    assert_still_serving(server)


def test_lapsed_publication_frees_its_place(server_factory):
    server = server_factory("--max-per-resource", "1")
    aor = f"sip:dave@{HOST}"
    udp = Udp(server)
    try:
        assert udp.ask(publish(aor, local=udp.local, expires=1, body=pidf(aor, "short"))) \
            .status == 200
        refused = udp.ask(publish(aor, local=udp.local, body=pidf(aor, "refused")))
        assert refused.reason == "Too Many Publications For Resource"
        time.sleep(1.5)
        again = udp.ask(publish(aor, local=udp.local, body=pidf(aor, "after expiry")))
        assert again.status == 200, f"{again.status} {again.reason}"
    finally:
        udp.close()


def test_cap_holds_for_publications_that_arrive_together(server_factory):
    """Ten initial PUBLISHes for one resource sent back to back are committed together
    (group commit): the cap must count the ones decided earlier in the same batch."""
    server = server_factory("--max-per-resource", "2")
    aor = f"sip:carol@{HOST}"
    clients = [Udp(server) for _ in range(10)]
    try:
        for number, client in enumerate(clients):
            client.send(publish(aor, local=client.local, body=pidf(aor, f"n{number}")))
        answers = [client.receive() for client in clients]
    finally:
        for client in clients:
            client.close()
    assert all(answers), "every PUBLISH is answered"
    statuses = sorted(a.status for a in answers)
    assert statuses.count(200) == 2, statuses
    assert all(a.reason == "Too Many Publications For Resource"
               for a in answers if a.status != 200)
    assert len(live(server, aor)) == 2


# ---- --max-tcp-connections ---------------------------------------------------------------------

def test_connection_over_the_limit_is_closed_at_once(server_factory):
    server = server_factory("--max-tcp-connections", "3")
    admitted = [Tcp(server) for _ in range(3)]
    extra = None
    try:
        for connection in admitted:
            assert connection.options().status == 200
        extra = Tcp(server)
        try:
            extra.send(request("OPTIONS", f"sip:{HOST}", local=extra.local, transport="TCP"))
        except (BrokenPipeError, ConnectionResetError):
            pass
        closed = extra.closed_within(2.0)
        assert closed is not None, "a fourth connection was kept open"
        assert not extra.pending, "a connection over the limit must not be served"
        for connection in admitted:
            assert connection.options().status == 200, "the first three still work"
        udp = Udp(server)
        try:
            assert udp.options().status == 200, "UDP is not affected"
        finally:
            udp.close()
        # Closing one makes room for another.
        admitted.pop().close()
        deadline = time.monotonic() + 3.0
        while True:
            replacement = Tcp(server)
            try:
                replacement.send(request("OPTIONS", f"sip:{HOST}", local=replacement.local,
                                         transport="TCP"))
                answer = replacement.receive(timeout=2.0)
            except (BrokenPipeError, ConnectionResetError):
                answer = None
            if answer is not None or time.monotonic() > deadline:
                break
            replacement.close()
        admitted.append(replacement)
        assert answer is not None and answer.status == 200, "no room after a close"
    finally:
        for connection in admitted:
            connection.close()
        if extra is not None:
            extra.close()


# ---- --tcp-read-timeout ------------------------------------------------------------------------

def test_half_sent_message_is_closed_after_the_read_timeout(server_factory):
    server = server_factory("--tcp-read-timeout", "1")
    stalled, trickle, idle, busy = Tcp(server), Tcp(server), Tcp(server), Tcp(server)
    udp = Udp(server)
    try:
        assert idle.options().status == 200  # a whole message, then silence: idle, not stalled
        message = publish(f"sip:alice@{HOST}", local=stalled.local, transport="TCP",
                          body=pidf(f"sip:alice@{HOST}"))
        trickled = request("OPTIONS", f"sip:{HOST}", local=trickle.local, transport="TCP")
        stalled.send(message[: len(message) // 2])
        started = time.monotonic()
        closed: dict[str, float] = {}
        sent = 0
        while time.monotonic() - started < 3.0:
            # Others are served while the stalled connections wait out their timeout.
            assert busy.options().status == 200
            assert udp.options().status == 200
            if "trickle" not in closed:  # a byte at a time: activity, but never a message
                try:
                    trickle.send(trickled[sent:sent + 1])
                    sent += 1
                except (BrokenPipeError, ConnectionResetError):
                    pass
            for name, connection in (("stalled", stalled), ("trickle", trickle)):
                if name not in closed and connection.closed_within(0.1) is not None:
                    closed[name] = time.monotonic() - started
        assert "stalled" in closed, "a half-sent message kept its connection open for 3 s"
        assert 0.9 <= closed["stalled"] <= 2.5, f"closed after {closed['stalled']:.2f} s"
        assert not stalled.pending, "nothing is answered for half a message"
        assert "trickle" in closed and closed["trickle"] <= 2.5, \
            "trickling a message byte by byte must not defeat the read timeout"
        assert sent < len(trickled) - 4
        # An idle connection that left nothing half-sent is not the read timeout's business.
        assert idle.options().status == 200
    finally:
        for connection in (stalled, trickle, idle, busy):
            connection.close()
        udp.close()
    assert live(server) == []


def test_read_timeout_applies_wherever_the_message_stops(server_factory):
    """Half a message is half a message whether it stops inside the header section, right
    after it (Content-Length announced, no body byte yet) or inside the body."""
    server = server_factory("--tcp-read-timeout", "1")
    aor = f"sip:alice@{HOST}"
    connections = {cut: Tcp(server) for cut in ("in the header section",
                                                 "after the header section",
                                                 "in the body")}
    try:
        for cut, connection in connections.items():
            message = publish(aor, local=connection.local, transport="TCP", body=pidf(aor))
            head_end = message.index(b"\r\n\r\n") + 4
            stop = {"in the header section": head_end // 2, "after the header section": head_end,
                    "in the body": head_end + 10}[cut]
            connection.send(message[:stop])
        started = time.monotonic()
        closed: dict[str, float] = {}
        while time.monotonic() - started < 3.5 and len(closed) < len(connections):
            for cut, connection in connections.items():
                if cut not in closed and connection.closed_within(0.05) is not None:
                    closed[cut] = time.monotonic() - started
        late = [cut for cut in connections if cut not in closed]
        assert not late, f"still open after 3.5 s with the message stopped: {late}"
        assert all(0.9 <= t <= 2.5 for t in closed.values()), closed
        assert not any(c.pending for c in connections.values())
    finally:
        for connection in connections.values():
            connection.close()
    assert live(server) == []
    assert_still_serving(server)


# ---- --rate-limit / --rate-burst ---------------------------------------------------------------

def test_burst_from_one_source_gets_503_with_retry_after(server_factory):
    server = server_factory("--rate-limit", "20", "--rate-burst", "5")
    result = run_sipp(server, "limits_rate_burst.xml", calls=40, rate=400, timeout=20)
    assert result.returncode == 0, f"{result.stderr[-1500:]}\n{result.errors()[-2000:]}"
    trace = result.messages().replace("\r\n", "\n")  # SIPp writes its trace with LF
    answers = [parse_response(m.replace("\n", "\r\n").encode()) for m in
               re.findall(r"^(SIP/2\.0 \d{3} .*?\n\n)", trace, re.S | re.M)]
    statuses = [a.status for a in answers]
    # Every call ends with one answer: within the rate a 200; beyond it a 503 (at most
    # `rate` refusals a second are answered, the rest dropped until SIPp retransmits).
    assert len(statuses) == 40 and set(statuses) <= {200, 503}, statuses
    served, refused = statuses.count(200), statuses.count(503)
    assert served >= 5 and refused >= 5, (served, refused)
    sent = len(re.findall(r"^OPTIONS sip:", trace, re.M))
    assert sent > 40, "some requests beyond the limit were dropped and retransmitted"
    for answer in answers:
        if answer.status == 503:
            assert re.fullmatch(r"[1-9]\d*", answer.headers.get("retry-after", "")), answer.raw
    # The bucket is per source address: 127.0.0.2 (loopback too) is unaffected, while
    # another port of 127.0.0.1 shares the exhausted bucket.
    other, same = Udp(server, "127.0.0.2"), Udp(server, HOST)
    try:
        assert [other.options().status for _ in range(5)] == [200] * 5
        for _ in range(30):
            same.send(request("OPTIONS", f"sip:{HOST}", local=same.local))
        statuses = []
        while (answer := same.receive(0.5)) is not None:
            statuses.append(answer.status)
        assert 503 in statuses and len(statuses) < 30, statuses
        retry = max(int(a.headers["retry-after"]) for a in answers if a.status == 503)
        time.sleep(retry + 1)
        assert same.options().status == 200, "served again after Retry-After"
    finally:
        other.close()
        same.close()
    assert_still_serving(server, bind="127.0.0.3")
