"""Socket-level fuzzing: thousands of mutated RFC 4475 and PUBLISH messages over UDP and TCP to a
running server, after which it still answers OPTIONS and serves a normal publish / refresh /
remove cycle, its process is alive, its log has no traceback and `esc verify` finds the live
view equal to the replayed events. Plus the classic attacks: entity expansion ("billion
laughs") in a PIDF body, the largest datagrams, and slowloris over TCP.

Mutations are deterministic (random.Random(SEED)); a failure names the seed and the index of
the message, and `mutants(seed, n)` regenerates it. Only loopback addresses are used; every
loop is bounded in count and in time. Run inside a private network namespace, as CI does:
    unshare -n bash -c 'ip link set lo up; .venv/bin/python -m pytest tests/e2e/test_fuzz.py'
"""

from __future__ import annotations

import json
import random
import re
import socket
import time

import pytest

from sip_adapter.aio.client import publish_once
from sip_adapter.protocol.framer import StreamFramer

from .conftest import start_server
from .test_torture_server import check_response, collect, read_answer, read_stream, wait_eof
from tests.conformance_data import RFC4475

pytestmark = pytest.mark.e2e

SEED = 3903
LOOPBACK = "127.0.0.1"
DIR = RFC4475
TORTURE = [p.read_bytes() for p in sorted(DIR.glob("*.dat"))]
MAX_DATAGRAM = 65507  # the largest UDP payload IPv4 can carry

PIDF = (b'<?xml version="1.0" encoding="UTF-8"?>\n'
        b'<presence xmlns="urn:ietf:params:xml:ns:pidf" entity="sip:fuzz@127.0.0.1">'
        b'<tuple id="f1"><status><basic>open</basic></status></tuple></presence>\n')
DIALOG = (b'<?xml version="1.0"?>\n<dialog-info xmlns="urn:ietf:params:xml:ns:dialog-info" '
          b'version="0" state="full" entity="sip:fuzz@127.0.0.1"/>\n')
SUMMARY = b"Messages-Waiting: yes\r\nVoice-Message: 2/8 (0/2)\r\n"


# --- messages and mutations -------------------------------------------------------------------


def publish(rng: random.Random, port: int, transport: str = "UDP") -> bytes:
    """A well-formed PUBLISH (initial, refresh, modify or remove), SUBSCRIBE (initial, or
    in a dialog that may not exist) or OPTIONS, fresh branch."""
    user = f"fuzz{rng.randrange(20)}"
    branch = f"z9hG4bK{rng.getrandbits(48):012x}"
    kind = rng.choice(["initial", "initial", "refresh", "modify", "remove", "options",
                       "subscribe", "resubscribe"])
    if kind in ("subscribe", "resubscribe"):
        to_tag = f";tag={rng.getrandbits(128):032x}" if kind == "resubscribe" else ""
        lines = [f"SUBSCRIBE sip:{user}@127.0.0.1 SIP/2.0",
                 f"Via: SIP/2.0/{transport} 127.0.0.1:{port};branch={branch};rport",
                 "Max-Forwards: 70",
                 f"From: <sip:watcher@127.0.0.1>;tag={rng.getrandbits(32):x}",
                 f"To: <sip:{user}@127.0.0.1>{to_tag}",
                 f"Call-ID: {rng.getrandbits(64):x}@fuzz",
                 f"CSeq: {rng.randrange(1, 2**31)} SUBSCRIBE",
                 f"Contact: <sip:watcher@127.0.0.1:{port}>",
                 f"Event: {rng.choice(['presence', 'dialog', 'message-summary'])}",
                 f"Expires: {rng.choice([0, 60, 3600, 99999999999])}",
                 "Content-Length: 0"]
        return ("\r\n".join(lines) + "\r\n\r\n").encode()
    event, ctype, body = rng.choice([("presence", "application/pidf+xml", PIDF),
                                     ("dialog", "application/dialog-info+xml", DIALOG),
                                     ("message-summary", "application/simple-message-summary",
                                      SUMMARY)])
    method = "OPTIONS" if kind == "options" else "PUBLISH"
    lines = [f"{method} sip:{user}@127.0.0.1 SIP/2.0",
             f"Via: SIP/2.0/{transport} 127.0.0.1:{port};branch={branch};rport",
             "Max-Forwards: 70",
             f"From: <sip:{user}@127.0.0.1>;tag={rng.getrandbits(32):x}",
             f"To: <sip:{user}@127.0.0.1>",
             f"Call-ID: {rng.getrandbits(64):x}@fuzz",
             f"CSeq: {rng.randrange(1, 2**31)} {method}"]
    if method == "PUBLISH":
        lines.append(f"Event: {event}")
        lines.append(f"Expires: {rng.choice([0, 1, 60, 3600, 99999999999])}"
                     if kind == "remove" or rng.random() < 0.5 else "Expires: 60")
        if kind != "initial":
            lines.append(f"SIP-If-Match: {rng.getrandbits(128):032x}.{rng.getrandbits(64):x}")
        if kind in ("initial", "modify"):
            lines.append(f"Content-Type: {ctype}")
        else:
            body = b""
    else:
        body = b""
    lines.append(f"Content-Length: {len(body)}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + body


def fresh_branch(rng: random.Random, data: bytes) -> bytes:
    """Torture messages with a new branch, so that most are new transactions, not
    retransmissions answered from the table."""
    return data.replace(b"z9hG4bK", b"z9hG4bK%x" % rng.getrandbits(32), 1)


def _lines(data: bytes) -> tuple[list[bytes], bytes]:
    head, sep, body = data.partition(b"\r\n\r\n")
    return head.split(b"\r\n"), body if sep else b""


def _join(lines: list[bytes], body: bytes) -> bytes:
    return b"\r\n".join(lines) + b"\r\n\r\n" + body


def bit_flip(rng, data):
    if not data:
        return data
    i = rng.randrange(len(data))
    return data[:i] + bytes([data[i] ^ (1 << rng.randrange(8))]) + data[i + 1:]


def insert_bytes(rng, data):
    i = rng.randrange(len(data) + 1)
    piece = rng.choice([bytes(rng.randrange(256) for _ in range(rng.randrange(1, 17))),
                        rng.choice([b"\r\n", b"\r", b"\n", b" ", b"\t", b":", b";", b",", b"<",
                                    b">", b'"', b"\\", b"%", b"%0", b"\x00", b"\xff", b"\r\n ",
                                    b"\r\n\r\n", b"[", b"]", b"=", b"@"])])
    return data[:i] + piece + data[i:]


def delete_bytes(rng, data):
    if not data:
        return data
    i = rng.randrange(len(data))
    return data[:i] + data[i + rng.randrange(1, 40):]


def truncate(rng, data):
    return data[:rng.randrange(len(data) + 1)]


def duplicate_header(rng, data):
    lines, body = _lines(data)
    if len(lines) < 2:
        return data
    i = rng.randrange(1, len(lines))
    lines.insert(rng.randrange(1, len(lines) + 1), lines[i])
    return _join(lines, body)


def huge_header(rng, data):
    lines, body = _lines(data)
    size = rng.choice([100, 1000, 8000, 8200, 20000, 60000])
    filler = rng.choice([b"a", b"a;", b"a,", b" ", b"%", b'"', b"<sip:x@y>,", b";p=v"])
    value = (filler * (size // len(filler) + 1))[:size]
    if len(lines) > 1 and rng.random() < 0.5:
        i = rng.randrange(1, len(lines))
        lines[i] = lines[i] + value
    else:
        name = rng.choice([b"X-Huge", b"Via", b"Contact", b"Subject", b"Event", b"To"])
        lines.insert(rng.randrange(1, len(lines) + 1), name + b": " + value)
    return _join(lines, body)


def many_headers(rng, data):
    lines, body = _lines(data)
    extra = [b"X-Many-%d: v" % i for i in range(rng.choice([50, 99, 101, 500]))]
    return _join(lines[:1] + extra + lines[1:], body)


def random_content_length(rng, data):
    lines, body = _lines(data)
    value = rng.choice([b"-1", b"0", b"1", b"abc", b"99999999999999999999999", b"4294967296",
                        b"65535", b"65536", b"1e3", b" 5", b"0x10", b"",
                        str(len(body) + rng.randrange(-20, 20)).encode(),
                        str(rng.randrange(0, 10**6)).encode()])
    lines = [line for line in lines if not re.match(rb"(?i)(content-length|l)\s*:", line)
             or rng.random() < 0.3]
    lines.insert(rng.randrange(1, len(lines) + 1) if len(lines) > 1 else len(lines),
                 rng.choice([b"Content-Length: ", b"l: ", b"content-length:"]) + value)
    return _join(lines, body)


def remove_crlf(rng, data):
    spots = [m.start() for m in re.finditer(b"\r\n", data)]
    if not spots:
        return data
    i = rng.choice(spots)
    return data[:i] + rng.choice([b"", b"\r", b"\n", b"\n\r", b" "]) + data[i + 2:]


def random_bytes(rng, data):
    return bytes(rng.randrange(256) for _ in range(rng.randrange(0, 1500)))


def splice(rng, data):
    other = rng.choice(TORTURE)
    i, j = rng.randrange(len(data) + 1), rng.randrange(len(other) + 1)
    return data[:i] + other[j:j + rng.randrange(1, 200)] + data[i:]


MUTATIONS = [bit_flip, insert_bytes, delete_bytes, truncate, duplicate_header, huge_header,
             many_headers, random_content_length, remove_crlf, random_bytes, splice]
WEIGHTS = [8, 8, 6, 3, 5, 2, 1, 5, 5, 1, 3]


def mutate(rng: random.Random, data: bytes) -> bytes:
    for _ in range(rng.choice([1, 1, 1, 2, 2, 3, 5])):
        data = rng.choices(MUTATIONS, WEIGHTS)[0](rng, data)
    return data


def mutants(seed: int, count: int, port: int, transport: str = "UDP") -> list[bytes]:
    """`count` fuzz messages: mutated torture messages and mutated PUBLISH/OPTIONS, with a few
    unmutated ones (about 10%) mixed in."""
    rng = random.Random(seed)
    out = []
    for _ in range(count):
        base = fresh_branch(rng, rng.choice(TORTURE)) if rng.random() < 0.5 \
            else publish(rng, port, transport)
        out.append(base if rng.random() < 0.1 else mutate(rng, base))
    return out


def reframe(data: bytes) -> bytes:
    """Make a mutant delimitable on a stream again: one Content-Length that matches the body
    (its header section may still be anything)."""
    head, sep, body = data.partition(b"\r\n\r\n")
    if not sep or not head.strip(b"\r\n"):
        return data
    lines = [line for line in head.split(b"\r\n")
             if not re.match(rb"(?i)(content-length|l)[ \t]*:", line)]
    return b"\r\n".join(lines + [b"Content-Length: %d" % len(body)]) + b"\r\n\r\n" + body


# --- the server and its health -----------------------------------------------------------------


@pytest.fixture(scope="module")
def fuzz_server(tmp_path_factory):
    server = start_server(tmp_path_factory.mktemp("fuzz"), "--min-expires", "1")
    yield server
    server.stop()


def options_answered(server, transport: str, wait: float = 5.0) -> None:
    request = (f"OPTIONS sip:esc@127.0.0.1 SIP/2.0\r\n"
               f"Via: SIP/2.0/{transport.upper()} 127.0.0.1:9;branch=z9hG4bK"
               f"{time.monotonic_ns():x};rport\r\n"
               "Max-Forwards: 70\r\nFrom: <sip:probe@127.0.0.1>;tag=p\r\n"
               "To: <sip:esc@127.0.0.1>\r\n"
               f"Call-ID: {time.monotonic_ns()}@probe\r\nCSeq: 1 OPTIONS\r\n"
               "Content-Length: 0\r\n\r\n").encode()
    if transport == "udp":
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
            sock.bind((LOOPBACK, 0))
            sock.sendto(request, (LOOPBACK, server.ports["udp"]))
            got = collect([sock], want=1, wait=wait, linger=0)[0]
            assert len(got) == 1, "no answer to OPTIONS over UDP"
            check_response(got[0], 200, sock.getsockname(), request)
    else:
        with socket.create_connection((LOOPBACK, server.ports["tcp"]), timeout=wait) as conn:
            conn.sendall(request)
            items, _ = read_stream(conn, 1, wait=wait)
            assert len(items) == 1, "no answer to OPTIONS over TCP"
            check_response(items[0], 200, conn.getsockname(), request)


def publish_cycle(server, transport: str, user: str) -> None:
    target = f"{LOOPBACK}:{server.ports[transport]}"
    uri = f"sip:{user}@127.0.0.1"
    first = publish_once(uri, "presence", body=PIDF, expires=600, transport=transport,
                         server=target, timeout=8)
    assert first.status == 200, first
    refreshed = publish_once(uri, "presence", etag=first.headers["SIP-ETag"], expires=300,
                             transport=transport, server=target, timeout=8)
    assert refreshed.status == 200, refreshed
    assert refreshed.headers["SIP-ETag"] != first.headers["SIP-ETag"]
    removed = publish_once(uri, "presence", etag=refreshed.headers["SIP-ETag"], expires=0,
                           transport=transport, server=target, timeout=8)
    assert removed.status == 200, removed
    listed = json.loads(server.esc("list", "--json").stdout)
    assert all(row["aor"] != uri for row in listed)


def assert_healthy(server, user: str) -> None:
    assert server.process.poll() is None, "the server died"
    for transport in ("udp", "tcp"):
        options_answered(server, transport)
        publish_cycle(server, transport, f"{user}-{transport}")
    log = (server.workdir / "server.log").read_text(errors="replace")
    assert "Traceback" not in log, log[log.index("Traceback") - 500:][:4000]
    verified = json.loads(server.esc("verify", "--json").stdout)
    assert verified["differences"] == [], verified


def is_sip_response(data: bytes) -> bool:
    try:
        answer = read_answer(data)
    except AssertionError:
        return False
    return 100 <= answer.status <= 699 and bool(answer.vias)


# --- fuzzing -------------------------------------------------------------------------------------


def test_udp_fuzz(fuzz_server):
    """3,000 mutated datagrams from one socket on 127.0.0.1:5060 (where responses to Vias
    without rport or port land), sent in bursts; every datagram that comes back is a SIP
    response addressed with received=127.0.0.1."""
    started = time.monotonic()
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 8 * 1024 * 1024)
    try:
        sock.bind((LOOPBACK, 5060))
    except OSError:
        sock.bind((LOOPBACK, 0))
    port = sock.getsockname()[1]
    messages = [m[:MAX_DATAGRAM] for m in mutants(SEED, 3000, port)]
    replies: list[bytes] = []
    try:
        sock.setblocking(False)
        for index, data in enumerate(messages):
            if not data.strip(b"\r\n"):
                continue  # keep-alives; nothing to fuzz
            sock.sendto(data, (LOOPBACK, fuzz_server.ports["udp"]))
            if index % 50 == 49:
                time.sleep(0.01)  # let the server keep up; a drop is no failure, but pointless
                while len(replies) < 10000:
                    try:
                        replies.append(sock.recv(70000))
                    except (BlockingIOError, ConnectionRefusedError):
                        break
            assert time.monotonic() - started < 40, f"too slow: {index} sent"
        replies += collect([sock], want=10**6, wait=1.0, linger=0)[0]
    finally:
        sock.close()
    # NOTIFYs come back too: the fuzz mix subscribes (and never answers them, so the server
    # retransmits and then ends those subscriptions).
    notifies = [r for r in replies if r.startswith(b"NOTIFY sip:")]
    replies = [r for r in replies if not r.startswith(b"NOTIFY sip:")]
    assert len(replies) > 300, f"only {len(replies)} answers to 3,000 datagrams"
    assert notifies, "no subscription was made"
    bad = [r[:120] for r in replies if not is_sip_response(r)]
    assert bad == [], bad[:5]
    unstamped = [r[:300] for r in replies
                 if not re.search(rb";received=127\.0\.0\.1", r.split(b"\r\n\r\n")[0])]
    assert unstamped == [], unstamped[:3]
    assert_healthy(fuzz_server, "after-udp")


def stream_safe(data: bytes) -> bool:
    """Whether a message, alone on a stream, is delimited as one message (our framer is the
    oracle): such messages can be pipelined and each reaches the server's message handling."""
    framer = StreamFramer()
    return len(framer.feed(data)) == 1 and not framer.broken and framer.buffered == 0


def test_tcp_fuzz(fuzz_server):
    """1,000 mutated messages that a stream can delimit (mutants with their Content-Length
    fixed up), pipelined over several connections, four open at a time, each stream split at
    random points; a third of the connections end with a mutant that breaks framing or leaves
    the server waiting. Every byte that comes back is a sequence of SIP responses."""
    rng = random.Random(SEED + 1)
    started = time.monotonic()
    candidates = (reframe(m) for m in mutants(SEED + 2, 4000, 9, "TCP"))
    safe = [m for m in candidates if stream_safe(m)]
    unsafe = [m for m in mutants(SEED + 3, 200, 9, "TCP") if not stream_safe(m)]
    assert len(safe) >= 1000 and len(unsafe) >= 20
    delivered = connections = 0
    answers: list[bytes] = []
    while delivered < 1000 and connections < 200:
        assert time.monotonic() - started < 40, f"too slow: {delivered} messages delivered"
        group = []
        for _ in range(4):
            count = min(rng.randrange(10, 60), len(safe))
            batch = [safe.pop() for _ in range(count)]
            delivered += count
            if rng.random() < 0.33:
                batch.append(unsafe.pop())
            stream = b"".join(rng.choice([b"", b"", b"\r\n", b"\r\n\r\n"]) + m for m in batch)
            cuts = sorted({0, len(stream), *(rng.randrange(len(stream) + 1)
                                             for _ in range(rng.randrange(0, 40)))})
            conn = socket.create_connection((LOOPBACK, fuzz_server.ports["tcp"]), timeout=5)
            conn.setblocking(False)
            group.append({"conn": conn, "chunks": [stream[a:b] for a, b in zip(cuts, cuts[1:])],
                          "data": b"", "eof": False})
            connections += 1
        while any(g["chunks"] for g in group):
            for g in group:
                if g["chunks"]:
                    chunk = g["chunks"].pop(0)
                    try:
                        g["conn"].setblocking(True)
                        g["conn"].sendall(chunk)
                    except OSError:  # closed by the server after the framing-breaking mutant
                        g["chunks"] = []
                    g["conn"].setblocking(False)
                drain(g)
                if rng.random() < 0.05:
                    time.sleep(0.002)  # so that chunks arrive as separate reads
        quiet_until = time.monotonic() + 0.3
        give_up = time.monotonic() + 5.0
        while time.monotonic() < min(quiet_until, give_up):
            if any(drain(g) for g in group):
                quiet_until = time.monotonic() + 0.3
            time.sleep(0.005)
        for g in group:
            g["conn"].close()
            answers += split_responses(g["data"])
    assert delivered >= 1000, f"only {delivered} messages over {connections} connections"
    answers = [a for a in answers if not a.startswith(b"NOTIFY sip:")]  # to our SUBSCRIBEs
    assert len(answers) > 500, f"only {len(answers)} answers to {delivered} messages"
    bad = [a[:120] for a in answers if not is_sip_response(a)]
    assert bad == [], bad[:5]
    assert time.monotonic() - started < 45
    assert_healthy(fuzz_server, "after-tcp")


def drain(group_entry: dict) -> bool:
    """Read what the server sent so far on one connection; True when something came."""
    got = False
    for _ in range(100):
        if group_entry["eof"]:
            break
        try:
            chunk = group_entry["conn"].recv(65536)
        except (BlockingIOError, InterruptedError):
            break
        except OSError:
            group_entry["eof"] = True
            break
        if not chunk:
            group_entry["eof"] = True
            break
        group_entry["data"] += chunk
        got = True
    return got


def split_responses(data: bytes) -> list[bytes]:
    """Responses written on a connection, in order; the single CRLFs that answer our
    double-CRLF keep-alives (RFC 5626 3.5.1 pongs) between them are skipped."""
    out = []
    while len(out) < 100000:
        data = data.lstrip(b"\r\n")
        if not data:
            break
        head_end = data.find(b"\r\n\r\n")
        if head_end < 0:
            out.append(data)  # not a whole response: is_sip_response flags it
            break
        match = re.search(rb"\r\nContent-Length: ([0-9]+)\r\n", data[:head_end + 2])
        end = head_end + 4 + (int(match.group(1)) if match else 0)
        out.append(data[:end])
        data = data[end:]
    return out


# --- hostile bodies and sizes --------------------------------------------------------------------


def raw_publish(body: bytes, *, tag: str, content_length: int | None = None,
                transport: str = "UDP", extra: str = "") -> bytes:
    head = (f"PUBLISH sip:{tag}@127.0.0.1 SIP/2.0\r\n"
            f"Via: SIP/2.0/{transport} 127.0.0.1:9;branch=z9hG4bK{tag}{time.monotonic_ns():x};"
            "rport\r\nMax-Forwards: 70\r\n"
            f"From: <sip:{tag}@127.0.0.1>;tag=f\r\nTo: <sip:{tag}@127.0.0.1>\r\n"
            f"Call-ID: {tag}-{time.monotonic_ns()}@fuzz\r\nCSeq: 1 PUBLISH\r\n"
            "Event: presence\r\nExpires: 60\r\nContent-Type: application/pidf+xml\r\n"
            f"{extra}Content-Length: "
            f"{len(body) if content_length is None else content_length}\r\n\r\n").encode()
    return head + body


def udp_exchange(server, data: bytes, wait: float = 3.0) -> tuple[list[bytes], float,
                                                                  tuple[str, int]]:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.bind((LOOPBACK, 0))
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1024 * 1024)
        started = time.monotonic()
        sock.sendto(data, (LOOPBACK, server.ports["udp"]))
        got = collect([sock], want=1, wait=wait, linger=0)[0]
        return got, time.monotonic() - started, sock.getsockname()


_LAUGHS = b"".join(b'<!ENTITY lol%d "%s">' % (i, (b"&lol%d;" % (i - 1)) * 10)
                   for i in range(1, 10))
HOSTILE_XML = {
    "billion-laughs": (b'<?xml version="1.0"?>\n<!DOCTYPE presence [<!ENTITY lol0 "lol">'
                       + _LAUGHS + b']>\n<presence xmlns="urn:ietf:params:xml:ns:pidf" '
                       b'entity="sip:a@127.0.0.1"><note>&lol9;</note></presence>\n'),
    "quadratic-blowup": (b'<?xml version="1.0"?>\n<!DOCTYPE presence [<!ENTITY a "'
                         + b"A" * 20000 + b'">]>\n<presence xmlns="urn:ietf:params:xml:ns:pidf"'
                         b' entity="sip:a@127.0.0.1"><note>' + b"&a;" * 5000
                         + b"</note></presence>\n"),
    "external-entity": (b'<?xml version="1.0"?>\n<!DOCTYPE presence [<!ENTITY x SYSTEM '
                        b'"file:///etc/passwd">]>\n<presence xmlns="urn:ietf:params:xml:ns:pidf"'
                        b' entity="sip:a@127.0.0.1"><note>&x;</note></presence>\n'),
    "deep-nesting": (b'<presence xmlns="urn:ietf:params:xml:ns:pidf" entity="sip:a@127.0.0.1">'
                     + b"<a>" * 5000 + b"</a>" * 5000 + b"</presence>"),
}


@pytest.mark.parametrize("name", list(HOSTILE_XML))
def test_hostile_xml_body_gets_a_quick_400(fuzz_server, name):
    body = HOSTILE_XML[name]
    got, elapsed, source = udp_exchange(fuzz_server, raw_publish(body, tag=name))
    assert len(got) == 1, f"no answer to the {name} PUBLISH"
    answer = read_answer(got[0])
    # deep nesting is well-formed XML: refusing it (400) or storing it (200) are both sound;
    # what matters is that it is quick and harmless
    allowed = {400, 200} if name == "deep-nesting" else {400}
    assert answer.status in allowed, got[0][:200]
    assert elapsed < 2.0, f"{name} took {elapsed:.2f} s"
    options_answered(fuzz_server, "udp", wait=2.0)
    assert fuzz_server.process.poll() is None


def test_largest_datagrams_are_refused_not_fatal(fuzz_server):
    """A datagram over 65,535 bytes cannot exist (IPv4 carries at most 65,507); 65,000-byte
    ones with a big body get an answer: 400 for a body that is not XML, 413 when the
    Content-Length exceeds the server's body limit, 413 for a header field over the limit;
    a big well-formed body within the configured limits may be accepted (200) or refused."""
    pre = raw_publish(b"", tag="junk65000", content_length=64000)
    junk = raw_publish(b"x" * (65000 - len(pre)), tag="junk65000")
    assert 64990 <= len(junk) <= 65000
    got, elapsed, _ = udp_exchange(fuzz_server, junk)
    assert [read_answer(g).status for g in got] == [400] and elapsed < 3

    body = b"x" * 64000
    over = raw_publish(body, tag="cl65000", content_length=10_000_000)
    got, _, _ = udp_exchange(fuzz_server, over)
    assert [read_answer(g).status for g in got] == [413]

    long_header = raw_publish(b"", tag="hdr65000", extra=f"Subject: {'s' * 64000}\r\n")
    assert len(long_header) < MAX_DATAGRAM
    got, _, _ = udp_exchange(fuzz_server, long_header)
    assert [read_answer(g).status for g in got] == [413], "an over-long header field is 413"

    opening = b'<?xml version="1.0"?><presence xmlns="urn:ietf:params:xml:ns:pidf" ' \
              b'entity="sip:xml65000@127.0.0.1"><note>'
    closing = b"</note></presence>"
    pre = raw_publish(opening + closing, tag="xml65000", content_length=64000)
    xml = opening + b"n" * (65000 - len(pre)) + closing
    got, _, _ = udp_exchange(fuzz_server, raw_publish(xml, tag="xml65000"))
    assert [read_answer(g).status for g in got] in ([200], [400], [413])

    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        with pytest.raises(OSError):  # EMSGSIZE: the 65,536-byte datagram cannot be sent
            sock.sendto(b"x" * 65536, (LOOPBACK, fuzz_server.ports["udp"]))
    options_answered(fuzz_server, "udp", wait=2.0)
    assert fuzz_server.process.poll() is None


def test_tcp_content_length_over_the_limit_is_413_and_closes(fuzz_server):
    with socket.create_connection((LOOPBACK, fuzz_server.ports["tcp"]), timeout=5) as conn:
        conn.sendall(raw_publish(b"x" * 100, tag="tcpbig", content_length=10_000_000,
                                 transport="TCP"))
        items, eof = read_stream(conn, 1, wait=2.0)
        assert [read_answer(i).status for i in items] == [413]
        assert eof or wait_eof(conn, 2.0)[1], "the stream cannot be delimited: close it"


def test_slowloris_does_not_block_others(fuzz_server):
    """Forty connections each send half a message and fall silent, one drips a byte every
    20 ms; meanwhile OPTIONS over UDP and a fresh TCP connection, and a publish cycle, are
    answered at once. The silent ones are still open (the server waits for the rest until
    its read timeout), so they really are holding half-read messages."""
    full = raw_publish(PIDF, tag="slowloris", transport="TCP")
    slow: list[socket.socket] = []
    drip = None
    try:
        for i in range(40):
            conn = socket.create_connection((LOOPBACK, fuzz_server.ports["tcp"]), timeout=5)
            cut = [len(full) // 2, full.index(b"\r\n\r\n") + 4 + 10, 10][i % 3]
            conn.sendall(full[:cut])
            slow.append(conn)
        drip = socket.create_connection((LOOPBACK, fuzz_server.ports["tcp"]), timeout=5)
        dripped = 0
        started = time.monotonic()
        for _ in range(3):
            for transport in ("udp", "tcp"):
                before = time.monotonic()
                options_answered(fuzz_server, transport, wait=2.0)
                assert time.monotonic() - before < 1.0, "answering was held up"
            for _ in range(5):
                drip.sendall(full[dripped:dripped + 1])
                dripped += 1
                time.sleep(0.02)
        publish_cycle(fuzz_server, "tcp", "beside-slowloris")
        publish_cycle(fuzz_server, "udp", "beside-slowloris")
        assert time.monotonic() - started < 15
        for conn in slow:
            assert wait_eof(conn, 0.01) == (b"", False), "a half-sent message was answered"
        # the drip finishes its message and gets its answer
        drip.sendall(full[dripped:])
        items, _ = read_stream(drip, 1, wait=5.0)
        assert [read_answer(i).status for i in items] == [200]
    finally:
        for conn in slow:
            conn.close()
        if drip is not None:
            drip.close()
    assert fuzz_server.process.poll() is None
