"""SIP Digest (SIPp as the client), authorization, and TLS (`--listen tls:`)."""

from __future__ import annotations

import json
import socket
import ssl
import subprocess

import pytest

from sip_adapter.protocol.digest import credential_line
from sip_adapter.protocol.framer import StreamFramer

from .conftest import assert_sipp_ok, run_sipp

pytestmark = pytest.mark.e2e

REALM = "127.0.0.1"


def digest(server, user, password, service, transport="udp"):
    """SIPp options for Digest as `user`, publishing for `service`. SIPp hashes the URI
    `sip:<remote_ip>:<remote_port>` unless told the Request-URI (-auth_uri), and the server
    insists the digest-uri be the Request-URI (RFC 7616 3.4.6)."""
    return ("-s", service, "-au", user, "-ap", password,
            "-auth_uri", f"{service}@127.0.0.1:{server.ports[transport]}")
# SIPp computes MD5 Digest only; SHA-256 (RFC 8760) is checked in tests/unit/test_sip_auth.py
# against RFC 7616's worked example.
MD5_ONLY = ("--auth-algorithms", "MD5")


@pytest.fixture
def auth_files(tmp_path):
    credentials = tmp_path / "users.ha1"
    credentials.write_text("# test users\n" + "\n".join([
        credential_line("alice", REALM, "wonderland", "MD5"),
        credential_line("alice", REALM, "wonderland", "SHA-256"),
        credential_line("gateway", REALM, "pass", "MD5"),
        credential_line("gateway", REALM, "pass", "SHA-256"),
    ]) + "\n")
    policy = tmp_path / "policy.toml"
    policy.write_text('[users]\ngateway = ["sip:*@127.0.0.1"]\n')
    return credentials, policy


@pytest.mark.parametrize("transport", ["udp", "tcp"])
def test_digest_own_aor_is_allowed_and_audited(server_factory, auth_files, transport):
    credentials, policy = auth_files
    server = server_factory("--auth-file", str(credentials), "--realm", REALM, *MD5_ONLY,
                            "--policy-file", str(policy))
    result = run_sipp(server, "publish_with_digest.xml", transport=transport,
                      extra=digest(server, "alice", "wonderland", "alice", transport))
    assert_sipp_ok(result)
    events = [json.loads(line) for line in
              server.esc("history", "sip:alice@127.0.0.1", "--json").stdout.splitlines()]
    assert [e["type"] for e in events] == ["Published"]
    assert events[0]["identity"] == "alice"
    assert events[0]["transport"] == transport
    shown = server.esc("history", "sip:alice@127.0.0.1").stdout
    assert "user alice" in shown and f"from {transport}:127.0.0.1:" in shown


def test_digest_someone_elses_aor_is_403_unless_the_policy_allows(server_factory, auth_files):
    credentials, policy = auth_files
    server = server_factory("--auth-file", str(credentials), "--realm", REALM, *MD5_ONLY,
                            "--policy-file", str(policy))
    assert_sipp_ok(run_sipp(server, "publish_with_digest_forbidden.xml",
                            extra=digest(server, "alice", "wonderland", "bob")))
    assert_sipp_ok(run_sipp(server, "publish_with_digest.xml",
                            extra=digest(server, "gateway", "pass", "bob")))
    assert server.esc("list", "sip:bob@127.0.0.1", "--json").stdout.count('"etag"') == 1


def test_wrong_password_is_challenged_again(server_factory, auth_files):
    credentials, _ = auth_files
    server = server_factory("--auth-file", str(credentials), "--realm", REALM)
    result = run_sipp(server, "publish_with_digest.xml",
                      extra=digest(server, "alice", "wrong", "alice"))
    assert result.returncode != 0
    assert "401" in result.errors() or "Unauthorized" in result.messages()
    assert server.esc("list", "--json").stdout.strip() == "[]"


def make_certificate(tmp_path):
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
                    "-subj", "/CN=localhost", "-addext", "subjectAltName=IP:127.0.0.1",
                    "-keyout", str(key), "-out", str(cert)], check=True, capture_output=True)
    return cert, key


def test_tls_listener_answers_options_and_publish(server_factory, tmp_path):
    # Debian's SIPp is built without TLS, so this one uses Python's ssl module as the client.
    cert, key = make_certificate(tmp_path)
    server = server_factory("--tls-cert", str(cert), "--tls-key", str(key),
                            transports=("udp", "tls"))
    context = ssl.create_default_context(cafile=str(cert))
    with socket.create_connection(("127.0.0.1", server.ports["tls"]), timeout=10) as raw, \
            context.wrap_socket(raw, server_hostname="127.0.0.1") as tls:
        local = tls.getsockname()
        body = (b'<?xml version="1.0"?><presence xmlns="urn:ietf:params:xml:ns:pidf" '
                b'entity="sips:carol@127.0.0.1"><tuple id="c"><status><basic>open</basic>'
                b'</status></tuple></presence>')
        request = (f"PUBLISH sips:carol@127.0.0.1 SIP/2.0\r\n"
                   f"Via: SIP/2.0/TLS 127.0.0.1:{local[1]};branch=z9hG4bKtls1\r\n"
                   f"From: <sips:carol@127.0.0.1>;tag=1\r\nTo: <sips:carol@127.0.0.1>\r\n"
                   f"Call-ID: tls-1\r\nCSeq: 1 PUBLISH\r\nEvent: presence\r\nExpires: 60\r\n"
                   f"Content-Type: application/pidf+xml\r\nContent-Length: {len(body)}\r\n\r\n"
                   ).encode() + body
        tls.sendall(request)
        framer, answers = StreamFramer(), []
        while not answers:
            answers = [m for m in framer.feed(tls.recv(65535)) if hasattr(m, "status")]
    assert answers[0].status == 200
    history = server.esc("history", "sips:carol@127.0.0.1", "--json").stdout
    assert json.loads(history.splitlines()[0])["transport"] == "tls"


def test_tls_without_a_certificate_is_one_line(tmp_path):
    result = subprocess.run([".venv/bin/esc", "serve", "--listen", "tls:127.0.0.1:0"],
                            capture_output=True, text=True, timeout=30,
                            cwd=str(__import__("pathlib").Path(__file__).resolve().parents[2]))
    assert result.returncode == 2 and len(result.stderr.strip().splitlines()) == 1
