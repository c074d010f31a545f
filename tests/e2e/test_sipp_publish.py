"""RFC 3903 over the wire, driven by SIPp (an independent client) against `esc serve`."""

from __future__ import annotations

import json
import re
import socket
import threading

import pytest

from .conftest import assert_sipp_ok, run_sipp

pytestmark = pytest.mark.e2e

TRANSPORTS = ["udp", "tcp"]


def history(server, aor: str) -> list[dict]:
    out = server.esc("history", aor, "--json").stdout
    return [json.loads(line) for line in out.splitlines() if line.strip()]


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_cycle_rotates_the_tag_each_time(server, transport):
    result = run_sipp(server, "publish_cycle.xml", transport=transport, calls=3, rate=10)
    assert_sipp_ok(result)
    events = history(server, "sip:user1@127.0.0.1")
    assert [e["type"] for e in events] == ["Published", "Refreshed", "Modified", "Removed"]
    tags = [events[0]["etag"], events[1]["etag"], events[2]["etag"]]
    assert len(set(tags)) == 3, "initial, refresh and modify must each issue a new tag"
    assert events[1]["etag_before"] == tags[0] and events[2]["etag_before"] == tags[1]
    assert events[0]["transport"] == transport
    assert events[0]["source"].startswith("127.0.0.1:")
    assert events[0]["cseq"] == "1 PUBLISH"
    assert server.esc("list", "--json").stdout.strip() == "[]"


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_foreign_tag_is_412(server, transport):
    assert_sipp_ok(run_sipp(server, "foreign_etag.xml", transport=transport))


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_tag_of_another_package_is_412(server, transport):
    assert_sipp_ok(run_sipp(server, "other_package_etag.xml", transport=transport))


def test_tag_after_expiry_is_412(server):
    assert_sipp_ok(run_sipp(server, "after_expiry.xml", timeout=20))
    events = history(server, "sip:user1@127.0.0.1")
    assert [e["type"] for e in events] == ["Published", "Expired"]
    assert events[1]["at"] == events[0]["expires_at"]


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_interval_too_brief_is_423_with_min_expires(server_factory, transport):
    server = server_factory("--min-expires", "60")
    assert_sipp_ok(run_sipp(server, "interval_too_brief.xml", transport=transport))


@pytest.mark.parametrize("scenario", ["bad_event.xml", "unsupported_media.xml",
                                      "missing_body.xml", "method_not_allowed.xml",
                                      "options.xml"])
@pytest.mark.parametrize("transport", TRANSPORTS)
def test_refusals_and_options(server, scenario, transport):
    assert_sipp_ok(run_sipp(server, scenario, transport=transport))
    assert server.esc("list", "--json").stdout.strip() == "[]", "a refusal must store nothing"


class LossyRelay:
    """A UDP relay between SIPp and the server that loses the first response, so that SIPp
    retransmits its request (same branch) exactly as it would over a lossy network."""

    def __init__(self, server_address: tuple[str, int]) -> None:
        self.server_address = server_address
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.settimeout(0.2)
        self.address = self.sock.getsockname()
        self.requests: list[bytes] = []
        self.responses: list[bytes] = []
        self.client: tuple[str, int] | None = None
        self.running = True
        self.thread = threading.Thread(target=self.run, daemon=True)
        self.thread.start()

    def run(self) -> None:
        while self.running:
            try:
                data, peer = self.sock.recvfrom(65535)
            except socket.timeout:
                continue
            if peer == self.server_address:
                self.responses.append(data)
                if len(self.responses) > 1 and self.client:
                    self.sock.sendto(data, self.client)
            else:
                self.client = peer
                self.requests.append(data)
                self.sock.sendto(data, self.server_address)

    def close(self) -> None:
        self.running = False
        self.thread.join()
        self.sock.close()


def test_retransmission_is_answered_from_the_transaction_and_stored_once(server):
    relay = LossyRelay(("127.0.0.1", server.ports["udp"]))
    try:
        relayed = type(server)(**{**server.__dict__, "ports": {"udp": relay.address[1]}})
        assert_sipp_ok(run_sipp(relayed, "retransmission.xml", timeout=20))
    finally:
        relay.close()
    assert len(relay.requests) >= 2, "SIPp should have retransmitted"
    assert len({r.split(b"\r\nVia:")[1].split(b"\r\n")[0] for r in relay.requests}) == 1
    assert len(relay.responses) == len(relay.requests)
    assert len(set(relay.responses)) == 1, "a retransmission gets the stored response again"
    tag = re.search(rb"SIP-ETag:\s*(\S+)", relay.responses[0]).group(1).decode()
    events = history(server, "sip:user1@127.0.0.1")
    assert [e["type"] for e in events] == ["Published"]
    assert events[0]["etag"] == tag
