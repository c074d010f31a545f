"""SIGHUP: the server re-reads --auth-file, --policy-file and the trusted peers without a
restart; a broken file is refused with a log line and the old settings stay."""

from __future__ import annotations

import signal
import time

import pytest

from sip_adapter.protocol.digest import credential_line

from .conftest import assert_sipp_ok, run_sipp
from .test_auth_tls import MD5_ONLY, REALM, digest

pytestmark = pytest.mark.e2e


def wait_for_log(server, text: str, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while text not in (server.workdir / "server.log").read_text(errors="replace"):
        assert time.monotonic() < deadline, f"no {text!r} in the server's log"
        time.sleep(0.05)


def reload(server, text: str) -> None:
    before = (server.workdir / "server.log").read_text(errors="replace").count(text)
    server.process.send_signal(signal.SIGHUP)
    deadline = time.monotonic() + 10
    while (server.workdir / "server.log").read_text(errors="replace").count(text) <= before:
        assert time.monotonic() < deadline, f"no new {text!r} in the server's log"
        time.sleep(0.05)


def test_sighup_rereads_credentials_and_policy_and_refuses_a_broken_file(server_factory,
                                                                          tmp_path):
    credentials = tmp_path / "users.ha1"
    credentials.write_text(credential_line("alice", REALM, "wonderland", "MD5") + "\n")
    policy = tmp_path / "policy.toml"
    policy.write_text("[users]\n")
    server = server_factory("--auth-file", str(credentials), "--realm", REALM, *MD5_ONLY,
                            "--policy-file", str(policy))

    def publish(user, password, resource):
        return run_sipp(server, "publish_with_digest.xml",
                        extra=digest(server, user, password, resource))

    assert_sipp_ok(publish("alice", "wonderland", "alice"))
    assert publish("bob", "builder", "bob").returncode != 0  # bob is unknown: 401 again

    # bob is added, and alice may now publish for carol: both take effect on SIGHUP.
    credentials.write_text(credential_line("alice", REALM, "wonderland", "MD5") + "\n" +
                           credential_line("bob", REALM, "builder", "MD5") + "\n")
    policy.write_text('[users]\nalice = ["sip:carol@127.0.0.1"]\n')
    assert run_sipp(server, "publish_with_digest_forbidden.xml",
                    extra=digest(server, "alice", "wonderland", "carol")).returncode == 0
    reload(server, "reloaded")
    assert_sipp_ok(publish("bob", "builder", "bob"))
    assert_sipp_ok(publish("alice", "wonderland", "carol"))

    # A broken policy file: refused, logged, and the settings in force stay.
    policy.write_text("[users\nalice = [")
    reload(server, "reload refused")
    assert_sipp_ok(publish("alice", "wonderland", "carol"))
    assert_sipp_ok(publish("bob", "builder", "bob"))
    assert server.process.poll() is None  # still serving


def test_sighup_rereads_the_trusted_peers_from_the_config_file(server_factory, tmp_path):
    import re

    credentials = tmp_path / "users.ha1"
    credentials.write_text(credential_line("alice", REALM, "wonderland", "MD5") + "\n")
    config = tmp_path / "esc.toml"
    config.write_text(f'auth_file = "{credentials}"\nrealm = "{REALM}"\ntrusted_peer = []\n')
    server = server_factory("--config", str(config))

    def via_proxy() -> list[int]:
        result = run_sipp(server, "publish_via_proxy.xml",
                          extra=("-i", "127.0.0.2", "-s", "bob"))
        assert_sipp_ok(result)
        return [int(code) for code in
                re.findall(r"^SIP/2\.0 (\d{3}) ", result.messages(), re.MULTILINE)]

    assert via_proxy() == [401]
    config.write_text(f'auth_file = "{credentials}"\nrealm = "{REALM}"\n'
                      'trusted_peer = ["127.0.0.2/32"]\n')
    reload(server, "reloaded")
    assert via_proxy() == [200]
    config.write_text(f'auth_file = "{credentials}"\nrealm = "{REALM}"\n'
                      'trusted_peer = ["127.0.0.2/8"]\n')  # host bits set: refused
    reload(server, "reload refused")
    assert via_proxy() == [200]
