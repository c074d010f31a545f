"""Each RFC 4475 message sent to the running server is answered or dropped as its manifest entry
implies, and the server still answers OPTIONS after all 49.

UDP: each message is one datagram from a test socket on 127.0.0.1. Without `rport` in the top
Via, RFC 3261 18.2.2 sends the response to the source address at the port the Via's sent-by
names (5060 when it names none), so the test socket is bound on that port, as a UA sending from
its listening port would be. With `rport` (RFC 3581) the response goes to the source port, so the
test socket takes an ephemeral port. Either way "decoy" sockets are bound on 127.0.0.1 at every
other port any Via of the message names (and 5060): nothing may arrive there. The Via hosts of
the torture messages are not loopback addresses, and the private network namespace the tests
run in has no route to them; the crafted tests at the end use Via hosts, maddr and received
values on other loopback addresses (127.0.0.2-4) and prove no datagram goes there either.

TCP: each message on its own connection; answers come back on it. Some messages are
deliberately unframeable on a stream (Content-Length negative, duplicated, missing, larger than
what follows): the table says which close the connection and which leave the server waiting.

Run inside a private network namespace, as CI does:
    unshare -n bash -c 'ip link set lo up; .venv/bin/python -m pytest \\
        tests/e2e/test_torture_server.py'
"""

from __future__ import annotations

import json
import re
import socket
import time
from typing import NamedTuple

import pytest

from sip_adapter.aio.client import publish_once
from sip_adapter.protocol.values import Via
from sip_adapter.protocol.headers import split_list
from sip_adapter.protocol.parser import ParseError, parse_message

from .conftest import start_server
from tests.conformance_data import RFC4475

pytestmark = pytest.mark.e2e

DIR = RFC4475
MANIFEST = json.loads((DIR / "manifest.json").read_bytes())
BY_FILE = {entry["file"]: entry for entry in MANIFEST}
LOOPBACK = "127.0.0.1"

PIDF = (b'<?xml version="1.0" encoding="UTF-8"?>\n'
        b'<presence xmlns="urn:ietf:params:xml:ns:pidf" entity="sip:torture@127.0.0.1">'
        b'<tuple id="t1"><status><basic>open</basic></status></tuple></presence>\n')


class Expect(NamedTuple):
    """udp: the status answered to the datagram (None: no answer at all).
    tcp: the statuses answered on the connection, in order.
    after: what the connection does once those are answered: "open" (still usable) or
    "closed" (the stream can no longer be delimited, RFC 3261 18.3 / RFC 4475 3.1.2.3)."""

    udp: int | None
    tcp: tuple[int, ...]
    after: str = "open"


def same(status: int | None) -> Expect:
    return Expect(status, () if status is None else (status,))


# What the server answers to each torture message. An ESC is a UAS that serves PUBLISH and
# OPTIONS: other RFC 3261 methods are 405 (8.2.1), unknown ones 501 (21.5.2), a Request-URI
# scheme other than sip/sips on OPTIONS 416 (8.2.2.1), an unknown Require 420 (8.2.2.3).
# Invalid requests get the status the manifest's server_expectation names first (400 when it
# names none) whenever their top Via is readable; responses are never answered.
EXPECTED: dict[str, Expect] = {
    # 3.1.1 valid messages
    "wsinv.dat": same(405),        # INVITE
    "intmeth.dat": same(501),      # "endpoints will generate a 501"
    "esc01.dat": same(405),        # INVITE
    "escnull.dat": same(405),      # REGISTER
    "esc02.dat": same(501),        # RE%47IST%45R: "an endpoint would reject ... with a 501"
    "lwsdisp.dat": same(200),      # OPTIONS
    "longreq.dat": same(405),      # INVITE
    # REGISTER; over TCP the "extra octets" are a second request (an INVITE, 405), and the
    # bytes after its body cannot be framed, so the connection is closed.
    "dblreq.dat": Expect(405, (405, 405), "closed"),
    "semiuri.dat": same(200),      # OPTIONS
    "transports.dat": same(200),   # OPTIONS
    "mpart01.dat": same(405),      # MESSAGE (top Via 127.0.0.1:5070;rport)
    "unreason.dat": same(None),    # a response
    "noreason.dat": same(None),    # a response
    # 3.1.2 invalid messages
    "badinv01.dat": same(None),    # 400, but its only Via is the malformed field: unaddressable
    "clerr.dat": Expect(400, ()),  # UDP: 400; TCP: wait for the rest of the body
    "ncl.dat": Expect(400, (400,), "closed"),
    "scalar02.dat": same(400),
    "scalarlg.dat": same(None),    # a response
    "quotbal.dat": same(400),      # top Via names port 5050
    "ltgtruri.dat": same(400),
    "lwsruri.dat": same(400),
    "lwsstart.dat": same(400),
    "trws.dat": same(400),
    "escruri.dat": same(400),
    "baddate.dat": same(400),
    "regbadct.dat": same(400),
    "badaspec.dat": same(400),
    "baddn.dat": Expect(400, ()),  # no empty line: the datagram ends it, a stream never does
    "badvers.dat": same(505),
    "mismatch01.dat": same(400),
    "mismatch02.dat": same(501),   # "501 preferred"
    "bigcode.dat": same(None),     # a response
    # 3.2 transaction layer
    "badbranch.dat": same(200),    # OPTIONS; RFC 2543 matching is the fallback
    # 3.3 application layer
    "insuf.dat": same(400),
    # SERVER BUG, these two FAIL until sip_adapter/service.py checks the Request-URI scheme
    # (RFC 3261 8.2.2.1): it answers OPTIONS 200 whatever the scheme.
    "unkscm.dat": same(416),       # OPTIONS nobodyknowsthisscheme:...
    "novelsc.dat": same(416),      # OPTIONS soap.beep://...
    "unksm2.dat": same(405),       # REGISTER (we are not a registrar)
    "bext01.dat": same(420),       # OPTIONS with Require
    "invut.dat": same(405),        # INVITE (method inspection comes before the body, 8.2)
    "regaut01.dat": same(405),     # REGISTER: "405 Method Not Allowed is appropriate"
    "multi01.dat": same(400),
    "mcl01.dat": Expect(400, (400,), "closed"),
    "bcast.dat": same(None),       # a response
    "zeromf.dat": same(200),       # OPTIONS; an endpoint ignores Max-Forwards: 0
    "cparam01.dat": same(405),     # REGISTER
    "cparam02.dat": same(405),     # REGISTER
    "regescrt.dat": same(405),     # REGISTER
    "sdp01.dat": same(405),        # INVITE
    # 3.4 backward compatibility: no Content-Length; over TCP that is a framing error (18.3)
    "inv2543.dat": Expect(405, (400,), "closed"),
}

#: Invalid requests whose error cannot be addressed (no readable top Via): dropped.
UNADDRESSABLE = {"badinv01.dat"}
RFC3261_METHODS_NOT_SERVED = {"INVITE", "REGISTER", "MESSAGE", "BYE", "SUBSCRIBE", "NOTIFY",
                              "INFO", "PRACK", "UPDATE", "REFER"}


def manifest_status(entry: dict) -> int | None:
    """The UDP answer the manifest implies for an element that is an ESC."""
    if entry["kind"] == "response":
        return None
    named = [int(s) for s in re.findall(r"\b([1-6][0-9][0-9])\b", entry["server_expectation"])]
    if entry["syntax"] == "invalid":
        return None if entry["file"] in UNADDRESSABLE else (named[0] if named else 400)
    method = entry["method"]
    if method == "OPTIONS":
        return next((s for s in named if s in (416, 420)), 200)
    if method == "ACK":
        return None
    return 405 if method in RFC3261_METHODS_NOT_SERVED else 501


def raw(name: str) -> bytes:
    return (DIR / name).read_bytes()


def test_table_covers_the_manifest_and_follows_it():
    assert len(MANIFEST) == 49 and set(EXPECTED) == set(BY_FILE)
    for entry in MANIFEST:
        expect = EXPECTED[entry["file"]]
        assert expect.udp == manifest_status(entry), entry["file"]
        assert expect.after in ("open", "closed")
        if entry["kind"] == "response":
            assert expect == same(None), entry["file"]


# --- fixtures and helpers --------------------------------------------------------------------


@pytest.fixture(scope="module")
def servers(tmp_path_factory):
    """One server per transport, so that the transaction table of one (which remembers every
    branch for 32 s) never answers the other's messages as retransmissions."""
    started: dict[str, object] = {}

    def get(transport: str):
        if transport not in started:
            workdir = tmp_path_factory.mktemp(f"torture-{transport}")
            started[transport] = start_server(workdir, "--min-expires", "1")
        return started[transport]

    yield get
    for running in started.values():
        running.stop()


def udp_socket(port: int = 0, host: str = LOOPBACK) -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        sock.bind((host, port))
    except OSError as error:
        sock.close()
        pytest.skip(f"cannot bind {host}:{port} ({error.strerror}); run the e2e tests in a "
                    "private network namespace (unshare -n), as CI does")
    return sock


def top_via(data: bytes):
    """The message's top Via as our parser reads it (None when unreadable)."""
    try:
        message = parse_message(data)
    except ParseError as error:
        message = error.partial
    try:
        return message.top_via if message is not None else None
    except ParseError:
        return None


VIA_PORTS = re.compile(rb"^(?:via|v)[ \t]*:[^\r\n]*", re.I | re.M)


def via_ports(data: bytes) -> set[int]:
    """Every port named in any Via line (however malformed), plus 5060 (the default)."""
    ports = {5060}
    for line in VIA_PORTS.findall(data):
        for found in re.findall(rb":[ \t]*([0-9]{1,5})(?![0-9])", line.split(b":", 1)[1]):
            if 0 < int(found) < 65536:
                ports.add(int(found))
    return ports


def collect(sockets: list[socket.socket], want: int, wait: float, linger: float = 0.15
            ) -> list[list[bytes]]:
    """Datagrams per socket: wait up to `wait` s for `want` on the first, then `linger` s
    more for anything else on any of them. Bounded in time and count."""
    got: list[list[bytes]] = [[] for _ in sockets]
    for sock in sockets:
        sock.setblocking(False)
    deadline = time.monotonic() + wait
    linger_until = None
    while len(got[0]) < 1000:
        now = time.monotonic()
        if linger_until is None and (len(got[0]) >= want or now >= deadline):
            linger_until = now + linger
        if linger_until is not None and now >= linger_until:
            break
        idle = True
        for i, sock in enumerate(sockets):
            try:
                got[i].append(sock.recv(70000))
                idle = False
            except (BlockingIOError, ConnectionRefusedError):
                pass
        if idle:
            time.sleep(0.005)
    return got


class Answer(NamedTuple):
    status: int
    vias: list  # the Via header lines, in order
    raw: bytes


def read_answer(data: bytes) -> Answer:
    """A response from the server, read leniently: it echoes the request's From, To, Call-ID
    and CSeq as received (RFC 3261 8.2.6.2), malformed ones included, so a strict parse of an
    answer to a malformed request would fail for the request's fault, not the server's."""
    head, sep, _ = data.partition(b"\r\n\r\n")
    assert sep, f"no end of header section: {data[:200]!r}"
    lines = head.decode("utf-8", "surrogateescape").split("\r\n")
    match = re.fullmatch(r"SIP/2\.0 ([1-6][0-9][0-9]) [^\r\n]*", lines[0])
    assert match, f"bad status line: {lines[0]!r}"
    vias = [line.split(":", 1)[1].strip() for line in lines[1:]
            if line.split(":", 1)[0].strip().lower() in ("via", "v")]
    return Answer(int(match.group(1)), vias, data)


def check_response(data: bytes, status: int, source: tuple[str, int], request: bytes) -> Answer:
    answer = read_answer(data)
    assert answer.status == status, f"got {data.splitlines()[0]!r}, want {status}"
    assert answer.vias, "a response carries the request's Vias"
    via = Via.parse(split_list(answer.vias[0])[0])
    assert via.received == source[0], answer.vias[0]
    asked = top_via(request)
    if asked is not None and asked.rport is not None:
        assert via.rport == str(source[1]), answer.vias[0]
    return answer


RESPONSE_LENGTH = re.compile(rb"\r\n(?:content-length|l)[ \t]*:[ \t]*([0-9]+)", re.I)


def read_stream(conn: socket.socket, want: int, wait: float) -> tuple[list[bytes], bool]:
    """Responses (raw bytes) read from a connection until `want` arrived, EOF, or `wait` s
    passed. The server always writes Content-Length, which delimits each one."""
    buffer = b""
    items: list[bytes] = []
    eof = False
    deadline = time.monotonic() + wait
    while len(items) < want and not eof and time.monotonic() < deadline:
        conn.settimeout(max(0.01, deadline - time.monotonic()))
        try:
            chunk = conn.recv(65536)
        except socket.timeout:
            break
        except ConnectionResetError:
            chunk = b""
        if not chunk:
            eof = True
        buffer += chunk
        while b"\r\n\r\n" in buffer:
            end = buffer.index(b"\r\n\r\n") + 4
            length = RESPONSE_LENGTH.search(buffer[:end])
            assert length, f"response without Content-Length: {buffer[:200]!r}"
            end += int(length.group(1))
            if len(buffer) < end:
                break
            items.append(buffer[:end])
            buffer = buffer[end:]
    assert len(items) >= want or not buffer.strip(), f"unreadable bytes: {buffer[:200]!r}"
    return items, eof


def wait_eof(conn: socket.socket, wait: float) -> tuple[bytes, bool]:
    """(extra bytes, closed?) within `wait` s."""
    extra = b""
    deadline = time.monotonic() + wait
    while time.monotonic() < deadline and len(extra) < 1_000_000:
        conn.settimeout(max(0.01, deadline - time.monotonic()))
        try:
            chunk = conn.recv(65536)
        except socket.timeout:
            return extra, False
        except ConnectionResetError:
            return extra, True
        if not chunk:
            return extra, True
        extra += chunk
    return extra, False


# --- the 49 messages --------------------------------------------------------------------------


@pytest.mark.parametrize("name", list(EXPECTED), ids=str)
def test_udp(servers, name):
    server = servers("udp")
    data = raw(name)
    expect = EXPECTED[name]
    via = top_via(data)
    if via is not None and via.rport is None:
        port = via.port or 5060  # RFC 3261 18.2.2: source address, sent-by port
    else:
        port = 0  # rport (RFC 3581): the source port; or no answer expected at all
    sock = udp_socket(port)
    decoys = [udp_socket(p) for p in sorted(via_ports(data)) if p != sock.getsockname()[1]]
    try:
        sock.sendto(data, (LOOPBACK, server.ports["udp"]))
        got = collect([sock, *decoys], want=0 if expect.udp is None else 1,
                      wait=0.6 if expect.udp is None else 1.5)
        source = sock.getsockname()
        for decoy, datagrams in zip(decoys, got[1:]):
            assert datagrams == [], f"answered at {decoy.getsockname()}, not at {source}"
        if expect.udp is None:
            assert got[0] == [], f"{name} must get no answer: {got[0][0][:80]!r}"
        else:
            assert len(got[0]) == 1, f"{name}: want one {expect.udp}, got {len(got[0])} answers"
            check_response(got[0][0], expect.udp, source, data)
    finally:
        sock.close()
        for decoy in decoys:
            decoy.close()
    assert server.process.poll() is None


@pytest.mark.parametrize("name", list(EXPECTED), ids=str)
def test_tcp(servers, name):
    server = servers("tcp")
    data = raw(name)
    expect = EXPECTED[name]
    with socket.create_connection((LOOPBACK, server.ports["tcp"]), timeout=5) as conn:
        source = conn.getsockname()
        conn.sendall(data)
        items, eof = read_stream(conn, len(expect.tcp), wait=1.5)
        assert [read_answer(i).status for i in items] == list(expect.tcp), name
        for item, status in zip(items, expect.tcp):
            check_response(item, status, source, data)
        if expect.after == "closed":
            extra, closed = (b"", True) if eof else wait_eof(conn, 1.5)
            assert extra == b"" and closed, f"{name}: the connection must be closed"
        else:
            extra, closed = (b"", True) if eof else wait_eof(conn, 0.2)
            assert extra == b"" and not closed, f"{name}: the connection must stay open"
    assert server.process.poll() is None


# --- routing: never at a Via host, maddr or port that the source contradicts -----------------


def options(via: str, method: str = "OPTIONS", cseq: str | None = None) -> bytes:
    return (f"{method} sip:esc@127.0.0.1 SIP/2.0\r\n"
            f"Via: {via}\r\n"
            "Max-Forwards: 70\r\n"
            "From: <sip:probe@127.0.0.1>;tag=p1\r\n"
            "To: <sip:esc@127.0.0.1>\r\n"
            f"Call-ID: {time.monotonic_ns()}@probe\r\n"
            f"CSeq: {cseq or '1 ' + method}\r\n"
            "Content-Length: 0\r\n\r\n").encode()


def free_udp_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        probe.bind((LOOPBACK, 0))
        return probe.getsockname()[1]


def test_rport_answers_the_source_not_via_host_maddr_received_or_port(servers):
    server = servers("udp")
    other = free_udp_port()
    sock = udp_socket()
    decoys = [udp_socket(port, host) for host in ("127.0.0.1", "127.0.0.2", "127.0.0.3",
                                                  "127.0.0.4")
              for port in (other, 5060) if (host, port) != sock.getsockname()]
    try:
        request = options(f"SIP/2.0/UDP 127.0.0.2:{other};branch=z9hG4bKroute1;rport;"
                          f"maddr=127.0.0.3;received=127.0.0.4")
        sock.sendto(request, (LOOPBACK, server.ports["udp"]))
        got = collect([sock, *decoys], want=1, wait=1.5)
        assert all(d == [] for d in got[1:]), [s.getsockname() for s, d in
                                               zip(decoys, got[1:]) if d]
        assert len(got[0]) == 1
        check_response(got[0][0], 200, sock.getsockname(), request)
    finally:
        for s in (sock, *decoys):
            s.close()


def test_rport_with_a_value_is_overridden_by_the_source_port(servers):
    server = servers("udp")
    other = free_udp_port()
    sock, decoy = udp_socket(), udp_socket(other)
    try:
        request = options(f"SIP/2.0/UDP 127.0.0.1:{other};branch=z9hG4bKroute2;rport={other}")
        sock.sendto(request, (LOOPBACK, server.ports["udp"]))
        got = collect([sock, decoy], want=1, wait=1.5)
        assert got[1] == [] and len(got[0]) == 1
        check_response(got[0][0], 200, sock.getsockname(), request)
    finally:
        sock.close(), decoy.close()


def test_without_rport_the_source_address_at_the_via_port_not_via_host_or_maddr(servers):
    server = servers("udp")
    sock = udp_socket()
    port = sock.getsockname()[1]
    decoys = [udp_socket(port, host) for host in ("127.0.0.2", "127.0.0.3", "127.0.0.4")]
    try:
        request = options(f"SIP/2.0/UDP 127.0.0.2:{port};branch=z9hG4bKroute3;"
                          "maddr=127.0.0.3;ttl=1;received=127.0.0.4")
        sock.sendto(request, (LOOPBACK, server.ports["udp"]))
        got = collect([sock, *decoys], want=1, wait=1.5)
        assert all(d == [] for d in got[1:]) and len(got[0]) == 1
        check_response(got[0][0], 200, sock.getsockname(), request)
    finally:
        for s in (sock, *decoys):
            s.close()


@pytest.mark.parametrize("transport", ["udp", "tcp"])
def test_ack_gets_nothing_even_when_malformed(servers, transport):
    server = servers(transport)
    acks = [options("SIP/2.0/UDP 127.0.0.1:5060;branch=z9hG4bKack1;rport", "ACK"),
            options("SIP/2.0/UDP 127.0.0.1:5060;branch=z9hG4bKack2;rport", "ACK",
                    cseq="99999999999 ACK"),
            options("SIP/2.0/UDP 127.0.0.1:5060;branch=z9hG4bKack3;rport", "ACK",
                    cseq="1 INVITE")]
    if transport == "udp":
        sock = udp_socket()
        try:
            for ack in acks:
                sock.sendto(ack, (LOOPBACK, server.ports["udp"]))
            assert collect([sock], want=0, wait=0.6)[0] == []
        finally:
            sock.close()
    else:
        with socket.create_connection((LOOPBACK, server.ports["tcp"]), timeout=5) as conn:
            conn.sendall(b"".join(acks))
            assert wait_eof(conn, 0.6) == (b"", False)


def test_publish_to_an_unknown_uri_scheme_is_416_and_stores_nothing(server):
    """SERVER BUG, FAILS until fixed: sip_adapter/service.py hands a PUBLISH whose
    Request-URI has a scheme the ESC does not serve to the compositor, which stores a
    publication for "nobodyknowsthisscheme:totallyopaquecontent" and answers 200. RFC 3261
    8.2.2.1 (and RFC 4475 3.3.2) want 416 Unsupported URI Scheme."""
    uri = "nobodyknowsthisscheme:totallyopaquecontent"
    request = (f"PUBLISH {uri} SIP/2.0\r\n"
               "Via: SIP/2.0/UDP 127.0.0.1:9;branch=z9hG4bKunkscmpub;rport\r\n"
               "From: <sip:probe@127.0.0.1>;tag=p1\r\nTo: <sip:probe@127.0.0.1>\r\n"
               "Call-ID: unkscm-publish@probe\r\nCSeq: 1 PUBLISH\r\nEvent: presence\r\n"
               "Expires: 60\r\nContent-Type: application/pidf+xml\r\n"
               f"Content-Length: {len(PIDF)}\r\n\r\n").encode() + PIDF
    sock = udp_socket()
    try:
        sock.sendto(request, (LOOPBACK, server.ports["udp"]))
        got = collect([sock], want=1, wait=3.0)[0]
        assert len(got) == 1
        stored = server.esc("list", "--json").stdout
        assert uri not in stored, "a PUBLISH for a URI scheme we do not serve was stored"
        check_response(got[0], 416, sock.getsockname(), request)
    finally:
        sock.close()


# --- after all 49 ------------------------------------------------------------------------------


def send_all_49(server, transport: str) -> None:
    """Every torture message once more, without waiting for the answers."""
    if transport == "udp":
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
            sock.bind((LOOPBACK, 0))
            for entry in MANIFEST:
                sock.sendto(raw(entry["file"]), (LOOPBACK, server.ports["udp"]))
        return
    for entry in MANIFEST:
        with socket.create_connection((LOOPBACK, server.ports["tcp"]), timeout=5) as conn:
            conn.sendall(raw(entry["file"]))
            wait_eof(conn, 0.05)


@pytest.mark.parametrize("transport", ["udp", "tcp"])
def test_still_serving_after_all_49(servers, transport):
    server = servers(transport)
    send_all_49(server, transport)
    # OPTIONS is answered 200
    request = options("SIP/2.0/UDP 127.0.0.1:9;branch=z9hG4bKafter49;rport")
    if transport == "udp":
        sock = udp_socket()
        try:
            sock.sendto(request, (LOOPBACK, server.ports["udp"]))
            got = collect([sock], want=1, wait=2.0)[0]
            assert len(got) == 1
            check_response(got[0], 200, sock.getsockname(), request)
        finally:
            sock.close()
    else:
        with socket.create_connection((LOOPBACK, server.ports["tcp"]), timeout=5) as conn:
            conn.sendall(request)
            items, _ = read_stream(conn, 1, wait=2.0)
            assert len(items) == 1
            check_response(items[0], 200, conn.getsockname(), request)
    # and a publish / refresh / remove cycle works
    target = f"{LOOPBACK}:{server.ports[transport]}"
    uri = f"sip:torture-{transport}@127.0.0.1"
    first = publish_once(uri, "presence", body=PIDF, expires=600, transport=transport,
                         server=target, timeout=5)
    assert first.status == 200, first
    refreshed = publish_once(uri, "presence", etag=first.headers["SIP-ETag"], expires=300,
                             transport=transport, server=target, timeout=5)
    assert refreshed.status == 200 and refreshed.headers["SIP-ETag"] != first.headers["SIP-ETag"]
    removed = publish_once(uri, "presence", etag=refreshed.headers["SIP-ETag"], expires=0,
                           transport=transport, server=target, timeout=5)
    assert removed.status == 200
    assert server.esc("list", "--json").stdout.strip() == "[]"
    assert server.process.poll() is None
    assert "Traceback" not in (server.workdir / "server.log").read_text(errors="replace")
    server.esc("verify")
