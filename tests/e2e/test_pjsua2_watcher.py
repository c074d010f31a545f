"""Interoperability with a real user agent: pjsua2 (pjsip 2.15) publishes and watches presence.

Two pjsua2 accounts run in tests/e2e/pjsua2_agents.py, a subprocess (pjsip keeps global
library state and wants its threads registered, so it stays out of pytest): alice has
PUBLISH enabled and changes her status with `setOnlineStatus`; bob has alice as a buddy with
subscription on, as a presence roster does. Both send every request through our server as
their outbound proxy; there is no registrar. What bob's buddy shows must follow what alice
publishes, and our own tools (`esc watchers`, `esc history`) must show the same story.

pjsua2 behaviour worth knowing when reading its log (not ours to fix): Buddy.create(bob, ...)
does not bind the buddy to bob's account; pjsua picks the SUBSCRIBE's account by domain,
highest AccountConfig.priority first, so the script gives bob the higher priority. pjsua's
PUBLISH carries no Expires header (we apply --default-expires). Over TCP pjsip reuses one
connection to the proxy for both accounts, so alice's PUBLISH arrives on bob's connection
(its Via sent-by port differs from the connection's; rport/received handle it).
"""

from __future__ import annotations

import json
import queue
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

pytestmark = pytest.mark.e2e

AGENTS = Path(__file__).resolve().parent / "pjsua2_agents.py"
ALICE = "sip:alice@example.com"
BOB = "sip:bob@example.com"
STEP = 15.0  # seconds allowed for each step (each takes milliseconds on loopback)


def pjsua2_missing() -> str | None:
    """Why pjsua2 cannot run here, or None. Imported in a child: never in pytest itself."""
    probe = subprocess.run([sys.executable, "-c", "import pjsua2"], capture_output=True,
                           text=True, timeout=60)
    if probe.returncode == 0:
        return None
    last = (probe.stderr.strip().splitlines() or ["?"])[-1]
    return ("pjsua2 cannot be imported (the pjsua2-python wheel is published for CPython 3.11 "
            f"on x86_64 Linux only; pip install -e '.[test]'): {last}")


class Agents:
    """The pjsua2_agents.py process: commands in on stdin, event lines out on stdout."""

    def __init__(self, server, transport: str, workdir: Path):
        port = server.ports[transport]
        proxy = f"sip:{server.host}:{port};lr" + (";transport=tcp" if transport == "tcp" else "")
        self.log = workdir / f"pjsua-{transport}.log"
        self.server_log = workdir / "server.log"
        self.process = subprocess.Popen(
            [sys.executable, str(AGENTS), "--proxy", proxy, "--host", server.host,
             "--transport", transport, "--log", str(self.log)],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
            bufsize=1)
        self.lines: queue.Queue[str | None] = queue.Queue()
        self.transcript: list[str] = []
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            self.lines.put(line.rstrip("\n"))
        self.lines.put(None)

    def send(self, command: str) -> None:
        assert self.process.stdin is not None
        self.process.stdin.write(command + "\n")
        self.process.stdin.flush()

    def expect(self, prefix: str, *parts: str, timeout: float = STEP) -> str:
        """The next line starting with `prefix` and holding every one of `parts` (earlier
        lines are skipped: pjsua2 may report a state more than once)."""
        deadline = time.monotonic() + timeout
        while True:
            try:
                line = self.lines.get(timeout=max(0.0, deadline - time.monotonic()))
            except queue.Empty:
                self.fail(f"no {prefix!r} line with {parts} within {timeout} s")
            if line is None:
                self.fail(f"the agents exited (code {self.process.wait()}) before a {prefix!r} "
                          f"line with {parts}")
            self.transcript.append(line)
            if line.startswith("ERROR"):
                self.fail(f"pjsua2 raised: {line}")
            words = line.split()
            if words and words[0] == prefix and all(part in words for part in parts):
                return line

    def fail(self, why: str) -> None:
        server_log = self.server_log.read_text(errors="replace")[-3000:] \
            if self.server_log.exists() else "-"
        pytest.fail(f"{why}\nagents said:\n" + "\n".join(self.transcript[-40:])
                    + f"\nserver.log (tail):\n{server_log}\npjsua2 log: {self.log}")

    def close(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait()


def watchers(server, *args: str) -> list[dict]:
    return json.loads(server.esc("watchers", ALICE, "--json", *args).stdout)


def history(server) -> list[dict]:
    out = server.esc("history", ALICE, "--json").stdout
    return [json.loads(line) for line in out.splitlines() if line.strip()]


def eventually(probe, what: str, timeout: float = STEP):
    """Poll `probe` (the CLI reads the store, which the server writes a moment later)."""
    deadline = time.monotonic() + timeout
    while True:
        value = probe()
        if value:
            return value
        if time.monotonic() > deadline:
            pytest.fail(f"timed out waiting for {what}")
        time.sleep(0.2)


@pytest.mark.parametrize("transport", ["udp", "tcp"])
def test_pjsua2_buddy_follows_pjsua2_publications(server_factory, tmp_path, transport):
    missing = pjsua2_missing()
    if missing:
        pytest.skip(missing)
    server = server_factory("--min-expires", "1", transports=(transport,))
    agents = Agents(server, transport, tmp_path)
    try:
        agents.expect("READY")

        # bob subscribes before alice has published: 200, then a NOTIFY with an empty
        # composition (no tuples), which pjsua2 shows as an active subscription, status unknown.
        agents.send("subscribe")
        first = agents.expect("BUDDY", "sub=ACTIVE")
        assert "open" not in first.split(), first

        rows = eventually(lambda: [r for r in watchers(server) if r["state"] == "active"],
                          "bob's subscription in esc watchers")
        assert len(rows) == 1, rows
        row = rows[0]
        assert (row["aor"], row["event"], row["watcher_uri"]) == (ALICE, "presence", BOB), row
        assert row["transport"] == transport and row["host"] == server.host, row
        assert row["watcher_contact"].startswith("sip:bob@"), row

        # alice publishes "available": bob's buddy turns open, with her note.
        agents.send("online Available")
        agents.expect("BUDDY", "open", "sub=ACTIVE", "text=Available")
        # ... then goes offline: basic closed.
        agents.send("offline Gone")
        agents.expect("BUDDY", "closed", "sub=ACTIVE", "text=Gone")
        # ... then online again with RPID activity "away" and a new note.
        agents.send("away lunch")
        agents.expect("BUDDY", "open", "away", "sub=ACTIVE", "text=lunch")

        records = eventually(lambda: (h := history(server)) and len(h) >= 3 and h,
                             "alice's three publications in esc history")
        assert [r["type"] for r in records] == ["Published", "Modified", "Modified"], records
        assert all(r["event"] == "presence" and r["transport"] == transport
                   and r["content_type"] == "application/pidf+xml" for r in records), records
        assert "<basic>open</basic>" in records[0]["body"] and "Available" in records[0]["body"]
        assert "<basic>closed</basic>" in records[1]["body"] and "Gone" in records[1]["body"]
        assert "<rpid:away" in records[2]["body"] and "lunch" in records[2]["body"]
        # The first NOTIFY and one for each of the three changes, all answered 200 by pjsua2.
        eventually(lambda: watchers(server)[0]["notify_count"] >= 4,
                   "four NOTIFYs recorded for bob's subscription")

        # Shutting down, pjsua2 unsubscribes bob (Expires: 0) and un-PUBLISHes alice (Expires: 0).
        agents.send("quit")
        agents.expect("BYE")
        assert agents.process.wait(timeout=STEP) == 0
        ended = eventually(lambda: [r for r in watchers(server, "--all")
                                    if r["state"] == "terminated"],
                           "bob's subscription ended after his unsubscribe")
        assert ended[0]["watcher_uri"] == BOB, ended
        assert not watchers(server), "no active watcher after the unsubscribe"
        eventually(lambda: [r["type"] for r in history(server)][-1:] == ["Removed"],
                   "alice's un-PUBLISH (Removed) in esc history")
    finally:
        agents.close()
