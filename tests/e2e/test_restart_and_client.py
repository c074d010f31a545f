"""Durability across kill -9, graceful shutdown, and the `esc publish` client."""

from __future__ import annotations

import json
import signal
import subprocess
import sys

import pytest

from .conftest import ROOT, assert_sipp_ok, run_sipp, start_server

pytestmark = pytest.mark.e2e

PIDF = (b'<?xml version="1.0" encoding="UTF-8"?>\n'
        b'<presence xmlns="urn:ietf:params:xml:ns:pidf" entity="sip:alice@127.0.0.1">'
        b'<tuple id="a1"><status><basic>open</basic></status></tuple></presence>\n')


def esc_publish(port: int, *args: str, transport: str = "udp") -> dict:
    result = subprocess.run(
        [sys.executable, "-m", "esc", "publish", f"sip:alice@127.0.0.1:{port}",
         "--event", "presence", "--transport", transport, "--json", *args],
        cwd=ROOT, capture_output=True, text=True, timeout=30)
    assert result.stderr == "", result.stderr
    return json.loads(result.stdout)


@pytest.mark.parametrize("transport", ["udp", "tcp"])
def test_esc_publish_cycle(server, tmp_path, transport):
    body = tmp_path / "alice.pidf"
    body.write_bytes(PIDF)
    port = server.ports[transport]
    first = esc_publish(port, "--body-file", str(body), "--expires", "600", transport=transport)
    assert first["status"] == 200 and first["headers"]["Expires"] == "600"
    tag = first["headers"]["SIP-ETag"]
    refreshed = esc_publish(port, "--etag", tag, "--expires", "300", transport=transport)
    assert refreshed["status"] == 200 and refreshed["headers"]["SIP-ETag"] != tag
    stale = esc_publish(port, "--etag", tag, transport=transport)
    assert stale["status"] == 412
    removed = esc_publish(port, "--etag", refreshed["headers"]["SIP-ETag"], "--expires", "0",
                          transport=transport)
    assert removed["status"] == 200
    assert server.esc("list", "--json").stdout.strip() == "[]"


def test_kill_9_then_restart_keeps_every_acknowledged_publication(tmp_path):
    server = start_server(tmp_path, "--min-expires", "1")
    try:
        body = tmp_path / "alice.pidf"
        body.write_bytes(PIDF)
        answer = esc_publish(server.ports["udp"], "--body-file", str(body), "--expires", "600")
        assert answer["status"] == 200
        tag = answer["headers"]["SIP-ETag"]
    finally:
        assert server.kill(signal.SIGKILL) == -signal.SIGKILL
    restarted = start_server(tmp_path, "--min-expires", "1", store=server.store)
    try:
        inject = tmp_path / "tags.csv"
        inject.write_text(f"SEQUENTIAL\nalice;{tag}\n")
        result = run_sipp(restarted, "refresh_injected_tag.xml", extra=("-inf", str(inject)))
        assert_sipp_ok(result)
        events = [json.loads(line) for line in
                  restarted.esc("history", "sip:alice@127.0.0.1", "--json").stdout.splitlines()]
        assert [e["type"] for e in events] == ["Published", "Refreshed"]
        assert events[1]["etag_before"] == tag
    finally:
        assert restarted.stop() == 0


def test_sigterm_exits_zero_and_keeps_state(tmp_path):
    server = start_server(tmp_path)
    body = tmp_path / "alice.pidf"
    body.write_bytes(PIDF)
    tag = esc_publish(server.ports["udp"], "--body-file", str(body),
                      "--expires", "600")["headers"]["SIP-ETag"]
    assert server.stop() == 0
    found = server.esc("find", "sip:alice@127.0.0.1", tag, "--json")
    assert json.loads(found.stdout)["etag"] == tag


def test_bad_serve_arguments_give_one_line(tmp_path):
    for args in (["--listen", "udp:nowhere"], ["--min-expires", "0"],
                 ["--listen", "sctp:127.0.0.1:5060"], ["--config", str(tmp_path / "none.toml")],
                 ["--notify-yield-ms", "-1"], ["--notify-yield-ms", "soon"]):
        result = subprocess.run([sys.executable, "-m", "esc", "serve", *args], cwd=ROOT,
                                capture_output=True, text=True, timeout=30)
        assert result.returncode != 0
        assert len(result.stderr.strip().splitlines()) == 1, result.stderr
        assert "Traceback" not in result.stderr
