"""Metrics and health over HTTP (`esc serve --metrics HOST:PORT`), against a real server:

- after SIPp traffic, /metrics counts exactly what was sent (requests by method and
  status, their durations, the commit batches), shows what is live, the feed's head and
  the expiry that happened;
- /health is 200, turns 503 with a reason when the store process is killed, and 200 again
  once the gateway restarted it, which the metrics count;
- a bad --metrics value is one line on stderr and exit 2.

Run inside a private network namespace (no port clashes with anything else):
    unshare -n bash -c 'ip link set lo up && .venv/bin/python -m pytest -q tests/e2e/test_metrics.py'
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request

import pytest
from prometheus_client.parser import text_string_to_metric_families

from .conftest import ROOT, assert_sipp_ok, free_port, run_sipp
from .test_limits import HOST, Udp, pidf, publish
from .test_resilience import store_pid

pytestmark = pytest.mark.e2e


def get(url: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=5) as answer:
            return answer.status, answer.read().decode()
    except urllib.error.HTTPError as error:
        return error.code, error.read().decode()


def scrape(base: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every sample of /metrics: (name, sorted labels) -> value."""
    status, text = get(base + "/metrics")
    assert status == 200, text
    samples = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            samples[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return samples


def value(samples, name: str, **labels: str) -> float | None:
    return samples.get((name, tuple(sorted(labels.items()))))


def wait_for(base: str, check, timeout: float = 8.0):
    """Scrape until `check(samples)` is true; the last samples."""
    deadline = time.monotonic() + timeout
    while True:
        samples = scrape(base)
        if check(samples) or time.monotonic() > deadline:
            return samples
        time.sleep(0.2)


@pytest.fixture
def metered(server_factory):
    port = free_port()
    server = server_factory("--min-expires", "1", "--metrics", f"{HOST}:{port}")
    return server, f"http://{HOST}:{port}"


def test_metrics_count_what_was_sent(metered):
    server, base = metered
    # publish_cycle.xml, per call: initial, refresh, modify, remove answered 200 and three
    # stale tags answered 412; four events, nothing left live.
    assert_sipp_ok(run_sipp(server, "publish_cycle.xml", calls=3, rate=10))
    # One PUBLISH kept live (Expires 600): one event.
    assert_sipp_ok(run_sipp(server, "subscribe_publish_open.xml", extra=("-s", "alice")))
    assert_sipp_ok(run_sipp(server, "options.xml", calls=2, rate=10))
    # One that lapses after a second: two events (Published, then Expired by the scheduler).
    udp = Udp(server)
    brief = f"sip:brief@{HOST}"
    assert udp.ask(publish(brief, local=udp.local, expires=1, body=pidf(brief))).status == 200
    udp.close()

    events = 3 * 4 + 1 + 2
    samples = wait_for(base, lambda s: value(s, "esc_expired_total") == 1
                       and value(s, "esc_feed_position") == events)
    follow = server.esc("follow").stdout.splitlines()
    assert len(follow) == events
    assert value(samples, "esc_feed_position") == events
    assert value(samples, "esc_expired_total") == 1
    assert value(samples, "esc_expiry_lag_seconds_count") == 1
    # The scheduler looks every 0.25 s: recorded well within a second of its expiry time.
    assert 0 <= value(samples, "esc_expiry_lag_seconds_sum") < 1.0
    assert value(samples, "esc_expiry_lag_seconds_bucket", le="1.0") == 1

    assert value(samples, "esc_requests_total", method="PUBLISH", status="200") == 3 * 4 + 2
    assert value(samples, "esc_requests_total", method="PUBLISH", status="412") == 3 * 3
    assert value(samples, "esc_requests_total", method="OPTIONS", status="200") == 2
    publishes = 3 * 7 + 2
    assert value(samples, "esc_request_duration_seconds_count", method="PUBLISH") == publishes
    assert value(samples, "esc_request_duration_seconds_bucket", method="PUBLISH",
                 le="+Inf") == publishes
    assert value(samples, "esc_request_duration_seconds_count", method="OPTIONS") == 2
    # Every PUBLISH (the 412s too: the store decides them) went through a commit batch.
    assert value(samples, "esc_commit_batch_size_sum") == publishes
    assert 1 <= value(samples, "esc_commit_batch_size_count") <= publishes

    assert value(samples, "esc_publications_live", event="presence") == 1
    assert value(samples, "esc_publications_live", event="dialog") == 0
    assert value(samples, "esc_store_up") == 1
    assert value(samples, "esc_queue_depth") == 0
    assert value(samples, "esc_store_restarts_total") == 0
    assert value(samples, "esc_transactions", kind="server") >= 1  # kept for retransmissions
    assert value(samples, "esc_subscriptions_active") == 0
    assert value(samples, "esc_notifier_waiting") == 0
    # (1.0 unless a PUBLISH waited past 10 ms for the store: a busy test machine may)
    assert 0.05 <= value(samples, "esc_notify_share") <= 1.0
    assert value(samples, "esc_notify_steps_paced_total") == 0  # no watcher, no step
    assert value(samples, "esc_notifies_total", outcome="sent") == 0
    assert value(samples, "process_resident_memory_bytes") > 0

    status, body = get(base + "/health")
    assert (status, body) == (200, "ok\n")


def test_health_follows_the_store_through_a_restart(metered):
    server, base = metered
    assert get(base + "/health") == (200, "ok\n")
    os.kill(store_pid(server), signal.SIGKILL)
    deadline = time.monotonic() + 5
    status, body = get(base + "/health")
    while status == 200 and time.monotonic() < deadline:
        time.sleep(0.01)
        status, body = get(base + "/health")
    assert status == 503, "the store's death never showed in /health"
    assert body.startswith("store unavailable: ") and body.count("\n") == 1, body
    samples = scrape(base)
    assert value(samples, "esc_store_up") == 0 or value(samples,
                                                        "esc_store_restarts_total") == 1

    deadline = time.monotonic() + 10
    while get(base + "/health")[0] != 200:
        assert time.monotonic() < deadline, "the store was not restarted within 10 s"
        time.sleep(0.1)
    samples = scrape(base)
    assert value(samples, "esc_store_up") == 1
    assert value(samples, "esc_store_restarts_total") == 1
    assert value(samples, "esc_store_failures_total") == 1
    # The new store process serves, and its reports reach the metrics.
    udp = Udp(server)
    again = f"sip:again@{HOST}"
    assert udp.ask(publish(again, local=udp.local, body=pidf(again))).status == 200
    udp.close()
    samples = wait_for(base, lambda s: value(s, "esc_publications_live", event="presence") == 1)
    assert value(samples, "esc_publications_live", event="presence") == 1
    assert value(samples, "esc_feed_position") == 1


@pytest.mark.parametrize("spec", ["9090", "localhost", "127.0.0.1:http", "127.0.0.1:70000",
                                  "::1:9090", ":9090"])
def test_a_bad_metrics_address_is_one_line_and_exit_2(tmp_path, spec):
    result = subprocess.run(
        [sys.executable, "-m", "esc", "serve", "--listen", f"udp:{HOST}:0",
         "--store", f"sqlite:///{tmp_path / 'esc.sqlite3'}", "--metrics", spec],
        cwd=ROOT, capture_output=True, text=True, timeout=30)
    assert result.returncode == 2, result.stderr
    lines = result.stderr.splitlines()
    assert len(lines) == 1 and "--metrics" in lines[0], result.stderr
    assert "Traceback" not in result.stderr and result.stdout == ""


def test_a_metrics_port_in_use_is_one_line(tmp_path):
    import socket

    with socket.socket() as taken:
        taken.bind((HOST, 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = subprocess.run(
            [sys.executable, "-m", "esc", "serve", "--listen", f"udp:{HOST}:0",
             "--store", f"sqlite:///{tmp_path / 'esc.sqlite3'}",
             "--metrics", f"{HOST}:{port}"],
            cwd=ROOT, capture_output=True, text=True, timeout=30)
    assert result.returncode == 3, result.stderr
    lines = [line for line in result.stderr.splitlines() if "WARNING" not in line]
    assert len(lines) == 1 and "cannot listen" in lines[0], result.stderr


def test_a_flood_of_idle_connections_neither_grows_threads_nor_blocks_health(server_factory):
    """Many connections that never finish a request (trickling a byte a second): past the
    bound they are closed at once, the threads stay bounded, and once the per-connection
    deadline (5 s) has cut the ones holding slots, /health answers while the attacker
    still holds its sockets open."""
    port = free_port()
    server = server_factory("--metrics", f"{HOST}:{port}")
    idle = []
    for _ in range(64):
        try:
            idle.append(socket.create_connection((HOST, port), timeout=1))
        except OSError:
            break
    time.sleep(1.0)  # the server has accepted them all by now
    try:
        threads = [int(line.split()[1]) for line in
                   open(f"/proc/{server.process.pid}/status") if line.startswith("Threads:")][0]
        assert threads < 60, f"{threads} threads for idle HTTP connections"
        # Still held open by the attacker, one byte every second (each read succeeds):
        # past the per-connection deadline the server has cut them, and /health answers.
        deadline = time.monotonic() + 6.5
        while time.monotonic() < deadline:
            for sock in idle:
                try:
                    sock.send(b"G")
                except OSError:
                    pass
            time.sleep(1.0)
        status, text = get(f"http://{HOST}:{port}/health")
        assert (status, text.strip()) == (200, "ok")
    finally:
        for sock in idle:
            sock.close()
