"""Robustness of `esc serve` against its own faults and overload, through real sockets:

- one bad request among many pipelined ones fails alone;
- the store process killed (kill -9) or hung (SIGSTOP) is replaced within 5 s, and
  meanwhile PUBLISH and OPTIONS are answered 503 with Retry-After;
- a store that cannot be restarted makes the server exit non-zero;
- a flood of large PUBLISHes while the store is stalled is shed with 503 at once, memory
  stays within a bound, and service is normal again seconds after the flood;
- silent TLS connects count against the connection limit from the moment they are
  accepted;
- retransmissions count against the per-source rate limit.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import ssl
import subprocess
import time
from pathlib import Path

import pytest

from .conftest import RunningServer
from .test_limits import HOST, Tcp, Udp, parse_response, pidf, pidf_of_size, publish, request

pytestmark = pytest.mark.e2e


def store_pid(server: RunningServer, timeout: float = 10.0) -> int:
    """The pid of the server's store process (its multiprocessing child, not the
    resource tracker)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for pid in _children(server.process.pid):
            try:
                cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
            except OSError:
                continue
            if b"spawn_main" in cmdline:
                return pid
        time.sleep(0.05)
    raise AssertionError("no store process found")


def _children(pid: int) -> list[int]:
    children: list[int] = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            children += [int(c) for c in (task / "children").read_text().split()]
        except OSError:
            pass
    return children


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise AssertionError("no VmRSS")


def publish_until_200(server: RunningServer, deadline_s: float) -> float:
    """Send initial PUBLISHes (a fresh transaction each, 20 per second) until one gets 200;
    seconds it took. Every other answer must be a 503 with Retry-After."""
    udp = Udp(server)
    start = time.monotonic()
    try:
        while time.monotonic() - start < deadline_s:
            uri = f"sip:probe{time.monotonic_ns()}@{HOST}"
            udp.send(publish(uri, local=udp.local, body=pidf(uri)))
            answer = udp.receive(0.05)
            while answer is not None:
                if answer.status == 200:
                    return time.monotonic() - start
                assert answer.status == 503 and answer.headers.get("retry-after"), answer.raw
                answer = udp.receive(0.01)
        raise AssertionError(f"no 200 within {deadline_s} s")
    finally:
        udp.close()


# ---- one request's failure is its own ------------------------------------------------------------

def test_a_bad_body_among_pipelined_publishes_fails_alone(server):
    tcp = Tcp(server)
    try:
        bad_at = 150
        data = b""
        for n in range(300):
            uri = f"sip:pipe{n}@{HOST}"
            body = b'<?xml version="1.0" encoding="nope"?><presence/>' if n == bad_at \
                else pidf(uri)
            data += publish(uri, local=tcp.local, transport="TCP", body=body)
        tcp.send(data)
        statuses = []
        for _ in range(300):
            answer = tcp.receive(10)
            assert answer is not None
            statuses.append(answer.status)
    finally:
        tcp.close()
    assert statuses.count(400) == 1 and statuses.count(200) == 299, statuses


# ---- a supervised store process ----------------------------------------------------------------

def test_a_killed_store_process_is_replaced_within_5_s_and_keeps_what_was_acknowledged(
        server):
    udp = Udp(server)
    try:
        acked = udp.ask(publish(f"sip:kept@{HOST}", local=udp.local, body=pidf("kept")))
        assert acked.status == 200
    finally:
        udp.close()
    for _ in range(3):
        old = store_pid(server)
        os.kill(old, signal.SIGKILL)
        healed = publish_until_200(server, 5.0)
        assert healed < 5.0
        assert store_pid(server) != old
    # The publication acknowledged before the deaths is intact and refreshable.
    udp = Udp(server)
    try:
        refresh = udp.ask(publish(f"sip:kept@{HOST}", local=udp.local,
                                  etag=acked.headers["sip-etag"]))
        assert refresh.status == 200
        assert udp.options().status == 200
    finally:
        udp.close()
    assert server.process.poll() is None


def test_a_hung_store_process_is_killed_and_replaced(server_factory):
    server = server_factory("--store-timeout", "1.5")
    pid = store_pid(server)
    os.kill(pid, signal.SIGSTOP)
    try:
        started = time.monotonic()
        healed = publish_until_200(server, 8.0)
        assert healed < 5.0, f"served again {healed:.1f} s after the store stopped answering"
        assert store_pid(server) != pid
    finally:
        try:
            os.kill(pid, signal.SIGCONT)
        except ProcessLookupError:
            pass
    assert time.monotonic() - started < 8


def test_while_the_store_cannot_restart_options_gets_503_then_the_server_exits_non_zero(
        server_factory, tmp_path):
    server = server_factory()
    store_file = Path(server.store.removeprefix("sqlite:///"))
    pid = store_pid(server)
    # Make the store unopenable (its file replaced by a directory), then kill it.
    moved = store_file.with_name("moved.sqlite3")
    os.rename(store_file, moved)
    store_file.mkdir()
    os.kill(pid, signal.SIGKILL)
    udp = Udp(server)
    try:
        time.sleep(0.5)
        answer = udp.options()
        assert answer.status == 503 and answer.headers.get("retry-after"), answer.raw
        answer = udp.ask(publish(f"sip:during@{HOST}", local=udp.local, body=pidf("x")))
        assert answer.status == 503 and answer.headers.get("retry-after")
    finally:
        udp.close()
    code = server.process.wait(timeout=30)
    assert code != 0
    log = (server.workdir / "server.log").read_text(errors="replace")
    assert "store failed" in log.splitlines()[-1] or "giving up" in log


# ---- admission control -----------------------------------------------------------------------

def test_a_flood_while_the_store_is_stalled_is_shed_with_503_and_memory_stays_flat(
        server_factory):
    server = server_factory("--store-timeout", "60")
    pid = store_pid(server)
    baseline = rss_mb(server.process.pid)
    os.kill(pid, signal.SIGSTOP)
    statuses: dict[int, int] = {}
    peak = baseline
    try:
        senders = [Tcp(server) for _ in range(4)]
        big = [pidf_of_size(f"sip:flood{n}@{HOST}", 60_000) for n in range(4)]
        until = time.monotonic() + 8.0
        sent = 0
        while time.monotonic() < until:
            for n, tcp in enumerate(senders):
                tcp.send(publish(f"sip:flood{sent}@{HOST}", local=tcp.local,
                                 transport="TCP", body=big[n]))
                sent += 1
            if sent % 200 == 0:
                peak = max(peak, rss_mb(server.process.pid))
        peak = max(peak, rss_mb(server.process.pid))
        # Every PUBLISH beyond the queue's bound was answered 503 at once.
        for tcp in senders:
            tcp.sock.settimeout(2)
            while True:
                try:
                    answer = tcp.receive(0.5)
                except TimeoutError:
                    break
                if answer is None:
                    break
                statuses[answer.status] = statuses.get(answer.status, 0) + 1
        for tcp in senders:
            tcp.close()
    finally:
        os.kill(pid, signal.SIGCONT)
    print(f"flood: {sent} PUBLISHes of 60 KB in 8 s; answers {statuses}; SIP process RSS "
          f"{baseline:.0f} MB before, {peak:.0f} MB at most")
    assert sent > 2000, f"flood too small: {sent}"
    assert statuses.get(503, 0) > sent * 0.5, (statuses, sent)
    # The queue holds at most 16 MiB of requests; the rest of the growth is buffers and
    # the 503s kept for retransmissions.
    assert peak - baseline < 150, f"RSS grew from {baseline:.0f} to {peak:.0f} MB"
    # Seconds after the flood, the server is back to normal.
    assert publish_until_200(server, 10.0) < 10.0


# ---- connections ---------------------------------------------------------------------------------

@pytest.fixture
def tls_files(tmp_path):
    openssl = shutil.which("openssl")
    if openssl is None:
        pytest.fail("openssl is needed to make a test certificate")
    key, cert = tmp_path / "key.pem", tmp_path / "cert.pem"
    subprocess.run([openssl, "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
                    "-subj", "/CN=localhost", "-keyout", str(key), "-out", str(cert)],
                   check=True, capture_output=True)
    return cert, key


def open_descriptors(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def test_silent_tls_connects_count_against_the_connection_limit(server_factory, tls_files):
    cert, key = tls_files
    server = server_factory("--tls-cert", str(cert), "--tls-key", str(key),
                            "--max-tcp-connections", "50", transports=("tls", "udp"))
    before = open_descriptors(server.process.pid)
    silent = []
    for _ in range(400):
        sock = socket.create_connection((HOST, server.ports["tls"]), timeout=5)
        silent.append(sock)
    time.sleep(1.0)
    held = open_descriptors(server.process.pid) - before
    assert held <= 50 + 5, f"{held} descriptors held for 400 silent connects (limit 50)"
    # Those over the limit were closed at once; the first 50 wait for their handshake.
    closed = 0
    for sock in silent:
        sock.settimeout(0.01)
        try:
            if sock.recv(1) == b"":
                closed += 1
        except (socket.timeout, BlockingIOError):
            pass
        except (ConnectionResetError, OSError):
            closed += 1
    assert closed >= 340, f"only {closed} of 350 connections over the limit were closed"
    for sock in silent:
        sock.close()
    time.sleep(0.5)
    # With the silent ones gone, a real TLS client is served.
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    with socket.create_connection((HOST, server.ports["tls"]), timeout=5) as raw:
        with context.wrap_socket(raw, server_hostname="localhost") as tls:
            local = tls.getsockname()
            tls.sendall(request("OPTIONS", f"sip:{HOST}", local=local, transport="TLS"))
            data = b""
            while b"\r\n\r\n" not in data:
                data += tls.recv(65535)
    assert parse_response(data).status == 200


def test_retransmissions_count_against_the_rate_limit(server_factory):
    server = server_factory("--rate-limit", "100", "--rate-burst", "100")
    udp = Udp(server)
    try:
        message = request("OPTIONS", f"sip:{HOST}", local=udp.local)
        assert udp.ask(message).status == 200
        for _ in range(3000):  # the same request, retransmitted without pause
            udp.send(message)
        answers = 0
        while udp.receive(0.5) is not None:
            answers += 1
    finally:
        udp.close()
    # At most one burst of answers plus an equal burst of refusals, not one per datagram.
    assert answers <= 250, f"{answers} answers to 3000 retransmissions at 100/s"


# ---- transactions ----------------------------------------------------------------------------

def test_a_publish_replayed_from_another_host_is_its_own_transaction(server):
    victim, attacker = Udp(server, HOST), Udp(server, "127.0.0.2")
    try:
        uri = f"sip:victim@{HOST}"
        data = publish(uri, local=victim.local, body=pidf(uri))
        answer = victim.ask(data)
        assert answer.status == 200
        # The attacker resends the victim's exact bytes (same Via, same branch).
        replayed = attacker.ask(data)
        assert replayed.headers.get("sip-etag") != answer.headers["sip-etag"]
        # The victim's own retransmission is answered from the table, with its tag.
        again = victim.ask(data)
        assert again.raw == answer.raw
    finally:
        victim.close()
        attacker.close()


def test_cancel_of_an_answered_publish_is_200_and_of_nothing_481(server):
    udp = Udp(server)
    try:
        uri = f"sip:cancelled@{HOST}"
        data = publish(uri, local=udp.local, body=pidf(uri))
        assert udp.ask(data).status == 200
        head = data.split(b"\r\n\r\n")[0].decode()
        lines = [line for line in head.split("\r\n")[1:]
                 if not line.lower().startswith(("cseq", "content-", "event", "expires"))]
        cseq = next(line for line in head.split("\r\n") if line.startswith("CSeq"))
        number = cseq.split()[1]
        cancel = "\r\n".join([f"CANCEL {uri} SIP/2.0", *lines, f"CSeq: {number} CANCEL",
                              "Content-Length: 0"]) + "\r\n\r\n"
        assert udp.ask(cancel.encode()).status == 200
        stray = request("CANCEL", uri, local=udp.local)
        assert udp.ask(stray).status == 481
    finally:
        udp.close()


def test_requests_with_huge_vias_cannot_grow_the_transaction_table_past_its_bytes(
        server_factory):
    server = server_factory("--max-transaction-bytes", str(8 * 1024 * 1024),
                            "--rate-limit", "0")
    baseline = rss_mb(server.process.pid)
    udp = Udp(server)
    statuses: dict[int, int] = {}
    try:
        for n in range(4000):
            vias = [f"Via: SIP/2.0/UDP 10.0.0.{i}:5060;branch=z9hG4bK{n}x{i};x={'a' * 7800}"
                    for i in range(7)]
            message = request("OPTIONS", f"sip:{HOST}", local=udp.local,
                              headers=tuple(vias[1:]))
            answer = udp.ask(message)
            statuses[answer.status] = statuses.get(answer.status, 0) + 1
    finally:
        udp.close()
    peak = rss_mb(server.process.pid)
    print(f"huge Vias: answers {statuses}; RSS {baseline:.0f} -> {peak:.0f} MB")
    # 4,000 responses of ~55 KB would be 220 MB; the table holds at most 8 MiB of them.
    assert statuses.get(503, 0) > 3500 and statuses.get(200, 0) >= 100, statuses
    assert peak - baseline < 80, f"RSS grew from {baseline:.0f} to {peak:.0f} MB"
