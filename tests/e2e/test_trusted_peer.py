"""Trusted peers end to end: `esc serve --auth-file ... --trusted-peer 127.0.0.2/32`, and
SIPp playing a proxy that relays a phone's PUBLISH without credentials (two Vias, the
bottom one the phone's with received/rport). From 127.0.0.2 it is accepted and history
records the proxy's address and the phone's; from 127.0.0.1 it is challenged (401).

Run it in a network namespace of its own:
    unshare -n bash -c 'ip link set lo up && .venv/bin/python -m pytest -q tests/e2e/test_trusted_peer.py'
"""

from __future__ import annotations

import json
import re

import pytest

from sip_adapter.protocol.digest import credential_line

from .conftest import assert_sipp_ok, run_sipp

pytestmark = pytest.mark.e2e

REALM = "127.0.0.1"
AOR = "sip:bob@127.0.0.1"


@pytest.fixture
def server(server_factory, tmp_path):
    credentials = tmp_path / "users.ha1"
    credentials.write_text("\n".join([credential_line("alice", REALM, "wonderland", "MD5"),
                                      credential_line("alice", REALM, "wonderland", "SHA-256")])
                           + "\n")
    return server_factory("--auth-file", str(credentials), "--realm", REALM,
                          "--trusted-peer", "127.0.0.2/32")


def statuses(messages: str) -> list[int]:
    return [int(code) for code in re.findall(r"^SIP/2\.0 (\d{3}) ", messages, re.MULTILINE)]


def history(server) -> list[dict]:
    return [json.loads(line) for line in
            server.esc("history", AOR, "--json").stdout.splitlines()]


def test_a_trusted_proxy_publishes_without_credentials_and_history_names_the_phone(server):
    # SIPp's -i (its local address) comes after run_sipp's own: the last one counts.
    result = run_sipp(server, "publish_via_proxy.xml", extra=("-i", "127.0.0.2", "-s", "bob"))
    assert_sipp_ok(result)
    assert statuses(result.messages()) == [200]
    events = history(server)
    assert [e["type"] for e in events] == ["Published"]
    event = events[0]
    assert event["source"].startswith("127.0.0.2:")  # the packet source: the proxy
    assert event["transport"] == "udp"
    assert event["user_agent_source"] == "198.51.100.7:5071"  # the phone, as stamped
    assert event["identity"] is None
    text = server.esc("history", AOR).stdout
    assert f"via proxy {event['source']} for 198.51.100.7:5071 (udp)" in text
    assert "trusted peers" in (server.workdir / "server.log").read_text(errors="replace")


def test_anyone_else_is_challenged(server):
    result = run_sipp(server, "publish_via_proxy.xml", extra=("-i", "127.0.0.1", "-s", "bob"))
    assert_sipp_ok(result)
    assert statuses(result.messages()) == [401]
    assert history(server) == []
