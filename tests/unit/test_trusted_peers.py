"""Trusted peers (`--trusted-peer CIDR`): a request whose packet source is in a trusted
network skips Digest and the publish/watch policy, and a PUBLISH's audit records the
originating user agent (the bottom-most Via, its `received`/`rport` where present) next to
the proxy's address. From anyone else a Via is only a claim and is not recorded.

Also the settings (a bad CIDR is one ConfigError line), history's rendering of the new
audit field, and the replay of events stored before the field existed."""

from __future__ import annotations

import ipaddress
import json
from dataclasses import replace
from uuid import uuid4

import pytest

from domain import Audit, Publication
from esc.cli import history_line
from esc.config import ConfigError, load_settings, trusted_networks
from infrastructure.application import EscApplication
from infrastructure.records import event_record
from sip_adapter.protocol.authorization import Policy
from sip_adapter.protocol.digest import DigestAuthenticator, credential_line, parse_credentials
from sip_adapter.protocol.messages import Request
from sip_adapter.protocol.parser import parse_message
from sip_adapter.protocol.publish_request import user_agent_address
from sip_adapter.protocol.routing import Origin
from sip_adapter.protocol.service import (PendingPublish, PendingSubscribe, Received,
                                          ServiceConfig, SipService)

NOW = 1_700_000_000.0
REALM = "example.com"
PROXY = Origin("udp", ("10.0.0.5", 5060), None, ("192.0.2.1", 5060))
STRANGER = Origin("udp", ("198.51.100.99", 5060), None, ("192.0.2.1", 5060))
PROXY6 = Origin("tcp", ("2001:db8:5::5", 40000), 1, ("2001:db8::1", 5060))
PIDF = b'<presence xmlns="urn:ietf:params:xml:ns:pidf" entity="sip:alice@example.com"/>'

PROXY_VIA = "SIP/2.0/UDP 10.0.0.5:5060;branch=z9hG4bKproxy1"
PHONE_VIA = ("SIP/2.0/UDP 192.168.1.20:5070;branch=z9hG4bKphone1;received=203.0.113.7;"
             "rport=5071")


def make_service(*networks: str, policy: Policy | None = None,
                 auth: bool = True) -> SipService:
    credentials = parse_credentials(credential_line("alice", REALM, "secret", "SHA-256") + "\n")
    authenticator = DigestAuthenticator(credentials, REALM, secret=b"k" * 32) if auth else None
    config = ServiceConfig(authenticator=authenticator, policy=policy, subscribe=True,
                           trusted_peers=tuple(ipaddress.ip_network(n) for n in networks))
    return SipService(config, wall_clock=lambda: NOW)


def message(method: str, *vias: str, uri: str = "sip:bob@example.com",
            extra: tuple[str, ...] = (), body: bytes = b"") -> Request:
    lines = [f"{method} {uri} SIP/2.0", *(f"Via: {v}" for v in vias),
             "From: <sip:bob@example.com>;tag=f1", "To: <sip:bob@example.com>",
             f"Call-ID: {method.lower()}-1", f"CSeq: 1 {method}", *extra,
             f"Content-Length: {len(body)}"]
    parsed = parse_message(("\r\n".join(lines) + "\r\n\r\n").encode() + body)
    assert isinstance(parsed, Request)
    return parsed


def publish(*vias: str, uri: str = "sip:bob@example.com") -> Request:
    return message("PUBLISH", *(vias or (PROXY_VIA, PHONE_VIA)), uri=uri,
                   extra=("Event: presence", "Content-Type: application/pidf+xml",
                          "Expires: 60"), body=PIDF)


def subscribe(*vias: str) -> Request:
    return message("SUBSCRIBE", *(vias or (PROXY_VIA, PHONE_VIA)),
                   extra=("Event: presence", "Expires: 600",
                          "Contact: <sip:bob@10.0.0.5:5060>"))


def status(received: Received) -> int:
    assert len(received.replies) == 1, received
    return int(received.replies[0].data.split(b" ", 2)[1])


def pending_publish(received: Received) -> PendingPublish:
    assert received.replies == [] and isinstance(received.pending, PendingPublish), received
    return received.pending


# ---- PUBLISH -----------------------------------------------------------------------------------


def test_a_trusted_peer_publishes_without_credentials_for_anyone_and_names_the_user_agent():
    service = make_service("10.0.0.0/24")
    # bob is not the (absent) authenticated user: the ownership check is skipped too.
    pending = pending_publish(service.receive(publish(), PROXY, 0.0))
    audit = pending.publish.audit
    assert audit.identity is None
    assert audit.source == "10.0.0.5:5060"  # the packet source: the proxy
    assert audit.transport == "udp"
    assert audit.user_agent_source == "203.0.113.7:5071"  # received and rport of the phone


def test_an_untrusted_source_is_challenged_as_before():
    service = make_service("10.0.0.0/24")
    answer = service.receive(publish(), STRANGER, 0.0)
    assert status(answer) == 401 and answer.pending is None
    assert b"WWW-Authenticate: Digest" in answer.replies[0].data


def test_what_the_request_says_never_makes_it_trusted():
    # The proxy's address in the Vias, or in received, is no packet source.
    service = make_service("10.0.0.5/32")
    vias = ("SIP/2.0/UDP 10.0.0.5:5060;branch=z9hG4bKx;received=10.0.0.5", PHONE_VIA)
    assert status(service.receive(publish(*vias), STRANGER, 0.0)) == 401


def test_without_authentication_an_untrusted_via_is_not_recorded():
    service = make_service("10.0.0.0/24", auth=False)
    stranger = pending_publish(service.receive(publish(), STRANGER, 0.0))
    assert stranger.publish.audit.user_agent_source is None  # only a claim
    assert stranger.publish.audit.source == "198.51.100.99:5060"
    trusted = pending_publish(service.receive(publish(), PROXY, 0.0))
    assert trusted.publish.audit.user_agent_source == "203.0.113.7:5071"


def test_no_trusted_peers_changes_nothing():
    service = make_service()
    assert status(service.receive(publish(), PROXY, 0.0)) == 401


def test_ipv6_peer_and_ipv6_user_agent():
    service = make_service("2001:db8:5::/48")
    vias = ("SIP/2.0/TCP [2001:db8:5::5]:5060;branch=z9hG4bKp6",
            "SIP/2.0/UDP [2001:db8:99::7];branch=z9hG4bKphone6;received=[2001:db8:99:0:0:0:0:8];"
            "rport=5090")
    pending = pending_publish(service.receive(publish(*vias), PROXY6, 0.0))
    assert pending.publish.audit.source == "[2001:db8:5::5]:40000"
    assert pending.publish.audit.user_agent_source == "[2001:db8:99::8]:5090"
    # an IPv6 peer outside the network is challenged
    other = Origin("tcp", ("2001:db8:6::5", 40000), 2, ("2001:db8::1", 5060))
    assert status(service.receive(publish(*vias), other, 0.0)) == 401


def test_a_bare_ipv6_address_trusts_that_host_only():
    service = make_service("2001:db8:5::5")
    assert isinstance(service.receive(publish(), PROXY6, 0.0).pending, PendingPublish)
    near = Origin("tcp", ("2001:db8:5::6", 40000), 2, ("2001:db8::1", 5060))
    assert status(service.receive(publish(), near, 0.0)) == 401


def test_an_ipv4_mapped_source_counts_as_its_ipv4_address():
    service = make_service("10.0.0.5/32")
    mapped = Origin("udp", ("::ffff:10.0.0.5", 5060), None, ("::", 5060))
    assert isinstance(service.receive(publish(), mapped, 0.0).pending, PendingPublish)


def test_the_domain_check_still_applies_to_trusted_peers():
    credentials = parse_credentials(credential_line("alice", REALM, "secret", "SHA-256") + "\n")
    config = ServiceConfig(authenticator=DigestAuthenticator(credentials, REALM, secret=b"k" * 32),
                           domains=("example.com",),
                           trusted_peers=(ipaddress.ip_network("10.0.0.0/24"),))
    service = SipService(config, wall_clock=lambda: NOW)
    answer = service.receive(publish(uri="sip:bob@elsewhere.example"), PROXY, 0.0)
    assert status(answer) == 404


# ---- the bottom-most Via ------------------------------------------------------------------------


@pytest.mark.parametrize("bottom,expected", [
    # received and rport, as the first proxy stamps them (RFC 3261 18.2.1, RFC 3581)
    ("SIP/2.0/UDP 192.168.1.20:5070;branch=z9hG4bKa;received=203.0.113.7;rport=5071",
     "203.0.113.7:5071"),
    # received without rport: the sent-by port
    ("SIP/2.0/UDP 192.168.1.20:5070;branch=z9hG4bKa;received=203.0.113.7", "203.0.113.7:5070"),
    # rport asked for but never filled in: the sent-by port
    ("SIP/2.0/UDP 192.168.1.20:5070;branch=z9hG4bKa;rport", "192.168.1.20:5070"),
    # neither: sent-by, with the transport's default port
    ("SIP/2.0/UDP phone.example.com;branch=z9hG4bKa", "phone.example.com:5060"),
    ("SIP/2.0/TCP 198.51.100.7;branch=z9hG4bKa", "198.51.100.7:5060"),
    ("SIP/2.0/TLS 198.51.100.7;branch=z9hG4bKa", "198.51.100.7:5061"),
    # a received that is no IP address, or an rport that is no port, is ignored
    ("SIP/2.0/UDP 192.168.1.20:5070;branch=z9hG4bKa;received=evil.example;rport=99999",
     "192.168.1.20:5070"),
    ("SIP/2.0/UDP 192.168.1.20:5070;branch=z9hG4bKa;received=\"203.0.113.7\";rport=0",
     "192.168.1.20:5070"),
    # IPv6: bracketed in the result, received with or without brackets
    ("SIP/2.0/UDP [2001:db8::7]:5070;branch=z9hG4bKa", "[2001:db8::7]:5070"),
    ("SIP/2.0/UDP [2001:db8::7]:5070;branch=z9hG4bKa;received=[2001:db8::9];rport=6000",
     "[2001:db8::9]:6000"),
])
def test_the_user_agent_address_from_the_bottom_most_via(bottom, expected):
    request = publish(PROXY_VIA, "SIP/2.0/UDP 10.0.0.9:5060;branch=z9hG4bKmid", bottom)
    assert user_agent_address(request) == expected
    service = make_service("10.0.0.0/24")
    audit = pending_publish(service.receive(request, PROXY, 0.0)).publish.audit
    assert audit.user_agent_source == expected


def test_a_request_the_peer_made_itself_names_its_own_sent_by():
    # Kamailio's pua modules publish with their own Via only.
    request = publish("SIP/2.0/UDP 10.0.0.5:5060;branch=z9hG4bKpua")
    assert user_agent_address(request) == "10.0.0.5:5060"


def test_the_vias_come_from_every_via_line_and_list():
    request = publish(f"{PROXY_VIA}, SIP/2.0/UDP 10.0.0.9:5060;branch=z9hG4bKmid", PHONE_VIA)
    assert user_agent_address(request) == "203.0.113.7:5071"
    request = publish(PROXY_VIA, f"SIP/2.0/UDP 10.0.0.9;branch=z9hG4bKm, {PHONE_VIA}")
    assert user_agent_address(request) == "203.0.113.7:5071"


# ---- SUBSCRIBE ----------------------------------------------------------------------------------


def test_subscribe_from_a_trusted_peer_skips_digest_and_the_watchers_check():
    # An empty [watchers] table: an authenticated user could watch only their own AOR.
    service = make_service("10.0.0.0/24", policy=Policy(watchers={}))
    received = service.receive(subscribe(), PROXY, 0.0)
    assert received.replies == [] and isinstance(received.pending, PendingSubscribe)
    assert received.pending.subscribe.identity is None
    assert received.pending.subscribe.aor == "sip:bob@example.com"


def test_subscribe_from_an_untrusted_source_is_challenged():
    service = make_service("10.0.0.0/24", policy=Policy(watchers={}))
    answer = service.receive(subscribe(), STRANGER, 0.0)
    assert status(answer) == 401


# ---- settings ------------------------------------------------------------------------------------


def test_trusted_peer_settings_from_every_source(tmp_path):
    settings = load_settings({"trusted_peer": ["10.0.0.5", "2001:db8::/32", "10.0.0.0/8",
                                               "10.0.0.5/32", "[::1]"]}, environ={})
    assert trusted_networks(settings) == (
        ipaddress.ip_network("10.0.0.5/32"), ipaddress.ip_network("2001:db8::/32"),
        ipaddress.ip_network("10.0.0.0/8"), ipaddress.ip_network("::1/128"))
    config = tmp_path / "esc.toml"
    config.write_text('trusted_peer = ["192.0.2.0/24"]\n')
    assert load_settings({}, str(config), environ={}).trusted_peer == ["192.0.2.0/24"]
    from_env = load_settings({}, environ={"ESC_TRUSTED_PEER": "192.0.2.1, 192.0.2.2"})
    assert from_env.trusted_peer == ["192.0.2.1", "192.0.2.2"]
    assert trusted_networks(load_settings({}, environ={})) == ()


@pytest.mark.parametrize("bad", ["10.0.0.300/32", "proxy.example.com", "10.0.0.5/24",
                                 "10.0.0.0/33", "2001:db8::/129"])
def test_a_bad_cidr_is_one_line_naming_it(bad):
    with pytest.raises(ConfigError) as caught:
        load_settings({"trusted_peer": ["10.0.0.5/32", bad]}, environ={})
    text = str(caught.value)
    assert "--trusted-peer" in text and repr(bad) in text and "\n" not in text


def test_the_serve_command_takes_repeated_trusted_peers():
    import argparse

    from esc.serve_cli import add_serve_commands

    parser = argparse.ArgumentParser()
    add_serve_commands(parser.add_subparsers(dest="command"))
    args = parser.parse_args(["serve", "--trusted-peer", "10.0.0.5/32",
                              "--trusted-peer", "2001:db8::/64"])
    assert args.trusted_peer == ["10.0.0.5/32", "2001:db8::/64"]


# ---- the audit field on events, history, and replay --------------------------------------------


def _published_and_refreshed(audit: Audit) -> Publication:
    pid = uuid4()
    p = Publication.publish(id=pid, aor="sip:bob@example.com", event_package="presence",
                            etag=f"{pid.hex}.0", content_type="application/pidf+xml",
                            body=PIDF, expires_at=NOW + 60, now=NOW, audit=audit)
    p.refresh(aor="sip:bob@example.com", event_package="presence", if_match=f"{pid.hex}.0",
              new_etag=f"{pid.hex}.1", expires_at=NOW + 120, now=NOW + 10, audit=audit)
    p.modify(aor="sip:bob@example.com", event_package="presence", if_match=f"{pid.hex}.1",
             new_etag=f"{pid.hex}.2", content_type="application/pidf+xml", body=PIDF + b" ",
             expires_at=NOW + 180, now=NOW + 20, audit=audit)
    p.remove(aor="sip:bob@example.com", event_package="presence", if_match=f"{pid.hex}.2",
             now=NOW + 30, audit=audit)
    return p


VIA_PROXY = Audit(source="10.0.0.5:5060", transport="udp", call_id="c1", cseq="1 PUBLISH",
                  user_agent_source="203.0.113.7:5071")


def test_every_publication_event_records_the_user_agent_and_history_shows_it():
    p = _published_and_refreshed(VIA_PROXY)
    records = [event_record(e) for e in p.collect_events()]
    assert [r.type for r in records] == ["Published", "Refreshed", "Modified", "Removed"]
    for record in records:
        assert record.user_agent_source == "203.0.113.7:5071"
        assert record.as_json()["user_agent_source"] == "203.0.113.7:5071"
        assert record.as_json()["source"] == "10.0.0.5:5060"
        line = history_line(record)
        assert "via proxy 10.0.0.5:5060 for 203.0.113.7:5071 (udp)" in line
        assert "from udp:" not in line


def test_history_without_the_field_is_as_before():
    p = _published_and_refreshed(Audit(source="192.0.2.7:5060", transport="udp",
                                       identity="alice"))
    for record in (event_record(e) for e in p.collect_events()):
        assert record.user_agent_source is None
        assert json.loads(json.dumps(record.as_json()))["user_agent_source"] is None
        line = history_line(record)
        assert "from udp:192.0.2.7:5060" in line and "via proxy" not in line
        assert "user alice" in line


def test_events_stored_before_the_field_existed_replay_unchanged():
    """Events written by an older esc have no `user_agent_source` key: they load, rebuild
    the same aggregate, and show None."""
    app = EscApplication({})
    p = _published_and_refreshed(VIA_PROXY)
    app.save(p)
    stored = app.recorder.select_events(p.id)
    assert len(stored) == 4
    old = []
    for record in stored:
        state = json.loads(record.state)
        assert state.pop("user_agent_source") == "203.0.113.7:5071"
        old.append(replace(record, state=json.dumps(state).encode()))
    events = [app.mapper.to_domain_event(record) for record in old]
    replayed = None
    for event in events:
        replayed = event.mutate(replayed)
    assert isinstance(replayed, Publication)
    assert (replayed.etag, replayed.state, replayed.version) == (p.etag, p.state, p.version)
    for event in events:
        assert "user_agent_source" not in event.__dict__
        record = event_record(event)
        assert record.user_agent_source is None and record.source == "10.0.0.5:5060"
        assert "from udp:10.0.0.5:5060" in history_line(record)
    # and the stored events as they are written now keep it
    assert {event_record(app.mapper.to_domain_event(r)).user_agent_source
            for r in stored} == {"203.0.113.7:5071"}


# ---- SUBSCRIBE in a dialog -------------------------------------------------------------------


def _digest_header(challenge: bytes, user: str, password: str, method: str, uri: str) -> str:
    """An Authorization header answering the SHA-256 challenge in a 401 (RFC 7616),
    computed here with hashlib, independently of the code under test."""
    import hashlib
    import re as _re

    line = next(l for l in challenge.decode().split("\r\n")
                if l.startswith("WWW-Authenticate:") and "SHA-256" in l)
    nonce = _re.search(r'nonce="([^"]+)"', line).group(1)
    opaque = _re.search(r'opaque="([^"]+)"', line).group(1)
    h = lambda text: hashlib.sha256(text.encode()).hexdigest()  # noqa: E731
    ha1, ha2 = h(f"{user}:{REALM}:{password}"), h(f"{method}:{uri}")
    response = h(f"{ha1}:{nonce}:00000001:c0ffee:auth:{ha2}")
    return (f'Authorization: Digest username="{user}", realm="{REALM}", nonce="{nonce}", '
            f'uri="{uri}", response="{response}", algorithm=SHA-256, qop=auth, '
            f'nc=00000001, cnonce="c0ffee", opaque="{opaque}"')


def test_a_refresh_sent_to_our_contact_is_not_refused_for_its_request_uri():
    """RFC 3261 12.2.1.1: a refresh or unsubscribe goes to the remote target, the Contact
    of our 200 (sip:192.0.2.1:5060), not to the resource. Neither the domain check nor the
    [watchers] policy is asked about that URI (the notifier lets only the subscriber
    change the subscription); Digest still applies."""
    service = SipService(ServiceConfig(
        authenticator=DigestAuthenticator(parse_credentials(
            credential_line("alice", REALM, "secret", "SHA-256") + "\n"), REALM,
            secret=b"k" * 32),
        policy=Policy(watchers={"alice": ["sip:bob@example.com"]}), subscribe=True,
        domains=("example.com",)), wall_clock=lambda: NOW)
    uri = "sip:192.0.2.1:5060"

    def refresh(*extra: str, branch: str) -> Request:
        lines = [f"SUBSCRIBE {uri} SIP/2.0", f"Via: SIP/2.0/UDP 198.51.100.9:5060;branch={branch}",
                 "From: <sip:alice@example.com>;tag=f1",
                 "To: <sip:bob@example.com>;tag=" + "a" * 32, "Call-ID: dialog-1",
                 "CSeq: 2 SUBSCRIBE", "Event: presence", "Expires: 600",
                 "Contact: <sip:alice@198.51.100.9:5060>", *extra, "Content-Length: 0"]
        parsed = parse_message(("\r\n".join(lines) + "\r\n\r\n").encode())
        assert isinstance(parsed, Request)
        return parsed

    challenged = service.receive(refresh(branch="z9hG4bKr1"), STRANGER, NOW)
    assert status(challenged) == 401
    answered = service.receive(
        refresh(_digest_header(challenged.replies[0].data, "alice", "secret", "SUBSCRIBE",
                               uri), branch="z9hG4bKr2"), STRANGER, NOW)
    assert answered.replies == [] and isinstance(answered.pending, PendingSubscribe), answered
    assert answered.pending.subscribe.identity == "alice"
    assert answered.pending.subscribe.local_tag == "a" * 32
