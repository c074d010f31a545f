"""RFC 6665 / RFC 3856 over the wire: SIPp watchers (independent clients) subscribe to
`esc serve`, get NOTIFYs as other SIPp clients publish, and unsubscribe."""

from __future__ import annotations

import json
import shutil
import signal
import subprocess
import time

import pytest

from sip_adapter.protocol.digest import credential_line

from .conftest import SCENARIOS, RunningServer, SippResult, assert_sipp_ok, free_port, run_sipp

pytestmark = pytest.mark.e2e

TRANSPORTS = ["udp", "tcp"]
REALM = "127.0.0.1"
RESOURCE = "bob"
AOR = f"sip:{RESOURCE}@127.0.0.1"


class BackgroundSipp:
    """A SIPp run in the background (a watcher that waits for NOTIFYs while the test
    publishes): the arguments run_sipp builds, Popen instead of run."""

    def __init__(self, server: RunningServer, scenario: str, *, transport: str = "udp",
                 timeout: int = 30, extra: tuple[str, ...] = ()):
        sipp = shutil.which("sipp")
        if sipp is None:
            pytest.fail("sipp is not installed (Debian package sip-tester; .ci/setup installs it)")
        self.workdir = server.workdir / f"sipp-bg-{scenario}-{transport}-{time.monotonic_ns()}"
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.timeout = timeout
        host = server.host
        args = [sipp, f"{host}:{server.ports[transport]}",
                "-sf", str(SCENARIOS / scenario), "-i", host, "-p", str(free_port(host)),
                "-t", "u1" if transport == "udp" else "t1", "-m", "1", "-r", "10",
                "-nostdin", "-default_behaviors", "all,-bye", "-trace_err", "-trace_msg",
                "-timeout", f"{timeout}s", "-timeout_error", *extra]
        self.stdout = open(self.workdir / "stdout.txt", "w")
        self.stderr = open(self.workdir / "stderr.txt", "w")
        self.process = subprocess.Popen(args, cwd=self.workdir, stdout=self.stdout,
                                        stderr=self.stderr, text=True)

    def wait(self) -> SippResult:
        try:
            returncode = self.process.wait(timeout=self.timeout + 30)
        finally:
            self.close()
        return SippResult(returncode, (self.workdir / "stdout.txt").read_text(errors="replace"),
                          (self.workdir / "stderr.txt").read_text(errors="replace"),
                          self.workdir)

    def close(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait()
        self.stdout.close()
        self.stderr.close()


@pytest.fixture
def background():
    started: list[BackgroundSipp] = []

    def start(*args, **kwargs) -> BackgroundSipp:
        run = BackgroundSipp(*args, **kwargs)
        started.append(run)
        return run

    yield start
    for run in started:
        run.close()


def watchers(server: RunningServer, aor: str | None = None) -> list[dict]:
    args = ["watchers", *([aor] if aor else []), "--all", "--json"]
    return json.loads(server.esc(*args).stdout)


def wait_notified(server: RunningServer, count: int = 1, aor: str = AOR,
                  deadline: float = 10.0, watcher: BackgroundSipp | None = None) -> dict:
    """The subscription of `aor`, once `count` NOTIFYs of it have been recorded (recorded
    before they are sent: their content is fixed by then)."""
    end = time.monotonic() + deadline
    rows: list[dict] = []
    while time.monotonic() < end:
        rows = watchers(server, aor)
        if rows and rows[-1]["notify_count"] >= count:
            return rows[-1]
        if watcher is not None and watcher.process.poll() is not None:
            break
        time.sleep(0.1)
    raise AssertionError(f"no subscription of {aor} with {count} NOTIFY(s): {rows}")


def wait_answered(watcher: BackgroundSipp, cseq: str, deadline: float = 10.0) -> None:
    """Until the watcher's message log shows its answer to the NOTIFY with `cseq` sent."""
    end = time.monotonic() + deadline
    while time.monotonic() < end:
        log = "".join(p.read_text(errors="replace")
                      for p in watcher.workdir.glob("*_messages.log"))
        # "UDP message sent (257 bytes):", an empty line, the message
        sent = [block.partition("\n")[2].lstrip() for block in log.split(" message sent ")[1:]]
        if any(m.startswith("SIP/2.0 200") and f"\nCSeq: {cseq}\n" in m for m in sent):
            return
        time.sleep(0.05)
    raise AssertionError(f"the watcher did not answer the NOTIFY {cseq}")


def publish_open(server: RunningServer, transport: str = "udp") -> None:
    assert_sipp_ok(run_sipp(server, "subscribe_publish_open.xml", transport=transport,
                            extra=("-s", RESOURCE)))


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_subscribe_notified_of_a_publish_then_unsubscribe(server, background, transport):
    """200, initial NOTIFY without tuples, the NOTIFY of another client's PUBLISH (open),
    unsubscribe in the dialog: 200 and NOTIFY terminated;reason=timeout (the scenario checks
    each message); the store then shows the subscription ended after 3 NOTIFYs."""
    watcher = background(server, "subscribe_watch.xml", transport=transport,
                         extra=("-s", RESOURCE))
    row = wait_notified(server, 1, watcher=watcher)
    assert row["state"] == "active" and row["transport"] == transport
    publish_open(server, transport)
    assert_sipp_ok(watcher.wait())
    [row] = watchers(server, AOR)
    assert row["state"] == "terminated" and row["reason"] == "timeout", row
    assert row["notify_count"] == 3, row
    assert watchers(server) == [row]
    assert json.loads(server.esc("watchers", "--json").stdout) == []


def test_notified_across_a_kill_9_and_restart(server_factory, background):
    """The subscription outlives kill -9: the restarted server (same port, same store)
    sends the watcher, still listening, the NOTIFY of a PUBLISH made after the restart,
    and knows the dialog when the watcher unsubscribes."""
    server = server_factory("--min-expires", "1", transports=("udp",))
    port = server.ports["udp"]
    watcher = background(server, "subscribe_watch.xml", extra=("-s", RESOURCE), timeout=40)
    wait_notified(server, 1, watcher=watcher)
    wait_answered(watcher, "1 NOTIFY")
    assert server.kill(signal.SIGKILL) == -signal.SIGKILL
    restarted = server_factory("--min-expires", "1", transports=("udp",), port=port,
                               store=server.store)
    assert restarted.ports["udp"] == port
    publish_open(restarted)
    result = watcher.wait()
    assert_sipp_ok(result)
    [row] = watchers(restarted, AOR)
    assert row["state"] == "terminated" and row["reason"] == "timeout", row
    assert row["notify_count"] == 3, row


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_notify_answered_481_ends_the_subscription(server, background, transport):
    """RFC 6665 4.2.2: a NOTIFY answered 481 ends the subscription; a later PUBLISH of the
    resource sends the (still listening) watcher nothing."""
    watcher = background(server, "subscribe_answer_481.xml", transport=transport,
                         extra=("-s", RESOURCE))
    end = time.monotonic() + 10
    while True:
        rows = watchers(server, AOR)
        if rows and rows[0]["state"] == "terminated":
            break
        assert time.monotonic() < end and watcher.process.poll() is None, rows
        time.sleep(0.1)
    [row] = rows
    assert row["notify_count"] == 1 and row["reason"], row
    assert json.loads(server.esc("watchers", "--json").stdout) == []
    publish_open(server, transport)
    # The watcher waits 8 s after its 481 and fails if any NOTIFY comes meanwhile.
    assert_sipp_ok(watcher.wait())
    assert watchers(server, AOR) == [row], "a PUBLISH after the 481 must notify no one"


@pytest.mark.parametrize("scenario", ["subscribe_no_contact.xml", "subscribe_bad_event.xml",
                                      "subscribe_interval_too_brief.xml",
                                      "subscribe_unknown_tag.xml"])
@pytest.mark.parametrize("transport", TRANSPORTS)
def test_refusals(server, scenario, transport):
    """400 without Contact, 489 with Allow-Events, 423 with Min-Expires: 60, 481 for a To
    tag naming no subscription (the scenarios check the answers)."""
    assert_sipp_ok(run_sipp(server, scenario, transport=transport, extra=("-s", RESOURCE)))
    assert watchers(server) == [], "a refused SUBSCRIBE must make no subscription"


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_max_subscriptions_reached_is_503_with_retry_after(server_factory, transport):
    """With --max-subscriptions 1 and one subscription active, a second is 503 with
    Retry-After, whatever its resource."""
    server = server_factory("--max-subscriptions", "1")
    assert_sipp_ok(run_sipp(server, "subscribe_and_stay.xml", transport=transport,
                            extra=("-s", RESOURCE)))
    assert_sipp_ok(run_sipp(server, "subscribe_busy.xml", transport=transport,
                            extra=("-s", "carol")))
    [row] = watchers(server)
    assert row["aor"] == AOR and row["state"] == "active"


@pytest.fixture
def auth_files(tmp_path):
    credentials = tmp_path / "users.ha1"
    credentials.write_text("\n".join(credential_line(user, REALM, password, "MD5")
                                     for user, password in [("carol", "c-pass"),
                                                            ("mallory", "m-pass")]) + "\n")
    policy = tmp_path / "policy.toml"
    policy.write_text(f'[watchers]\ncarol = ["{AOR}"]\n')
    return credentials, policy


def digest(server, user: str, password: str, transport: str = "udp") -> tuple[str, ...]:
    """SIPp options for Digest as `user`, watching RESOURCE (the digest-uri must be the
    Request-URI: -auth_uri, as in test_auth_tls.py)."""
    return ("-s", RESOURCE, "-au", user, "-ap", password,
            "-auth_uri", f"{RESOURCE}@127.0.0.1:{server.ports[transport]}")


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_digest_401_then_403_unless_the_watchers_table_allows(server_factory, auth_files,
                                                             transport):
    """Digest on SUBSCRIBE: 401 without credentials; mallory, whom the [watchers] table does
    not list, gets 403 watching bob; carol, listed for bob, gets 200 and the initial NOTIFY,
    and the subscription records her identity."""
    credentials, policy = auth_files
    server = server_factory("--auth-file", str(credentials), "--realm", REALM,
                            "--auth-algorithms", "MD5", "--policy-file", str(policy))
    assert_sipp_ok(run_sipp(server, "subscribe_with_digest_forbidden.xml", transport=transport,
                            extra=digest(server, "mallory", "m-pass", transport)))
    assert watchers(server) == []
    assert_sipp_ok(run_sipp(server, "subscribe_with_digest.xml", transport=transport,
                            extra=digest(server, "carol", "c-pass", transport)))
    [row] = watchers(server)
    assert row["aor"] == AOR and row["state"] == "active" and row["identity"] == "carol"
    assert row["notify_count"] == 1
