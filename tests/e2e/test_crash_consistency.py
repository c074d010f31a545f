"""Crash consistency: SIPp load against `esc serve`, kill -9 at random moments, restart on the
same store, then audit what the server acknowledged against what it kept.

SIPp (scenarios/crash_publish_chain.xml) runs calls of four PUBLISHes each (initial,
refresh, modify, then refresh or remove) and logs every 200 with its SIP-ETag. While it
runs, the server is killed with SIGKILL several times at seeded random moments and
restarted at once on the same store and port (one restart is itself killed while it
starts). SIPp keeps sending, retransmits into the restarted server, and calls caught by a
crash fail, which is expected. Afterwards, with the server stopped:

- every entity-tag the server acknowledged with 200 is still valid, unless the same call
  later replaced or removed it; replaced tags are not valid;
- a request that got no 200 left either nothing or exactly one whole event (committed just
  before the crash, its answer lost), never part of one and never two;
- each publication's history is a valid chain (Published first, versions contiguous, each
  etag_before the previous etag) and each stored body is the body of the one request that
  produced that event;
- the live view (`esc list --json`) holds exactly the publications the events leave live,
  with their last tag, body and expiry, and `esc verify` finds no difference.

The seed is in the test id; rerun one with ESC_CRASH_SEED=<seed>. Timing still varies from
run to run (where a kill lands in the server's work), so the seed fixes the kill schedule
and the workload, not the interleaving.
"""

from __future__ import annotations

import json
import os
import random
import re
import shutil
import signal
import subprocess
import time
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from .conftest import ROOT, SCENARIOS, RunningServer, free_port, start_server

pytestmark = pytest.mark.e2e

SEED = int(os.environ.get("ESC_CRASH_SEED", "3903"))
RATE = 300  # calls per second (four PUBLISHes each)
LOAD_SECONDS = 20  # how long SIPp keeps starting calls
CALLS = RATE * LOAD_SECONDS
KILLS = 4
USERS = 400  # resources shared by the calls, so publications of one resource interleave
RECV_TIMEOUT_MS = 6000  # a call that waits longer for an answer fails (and SIPp moves on)
STEPS = {1: "Published", 2: "Refreshed", 3: "Modified"}  # step 4: Refreshed or Removed
CALL_ID = re.compile(r"^(\d+)-\d+@127\.0\.0\.1$")


@dataclass
class Call:
    """What SIPp saw for one call: the tag of every step answered with 200."""

    call_id: str
    acked: dict[int, str] = field(default_factory=dict)
    user: str | None = None
    last_expires: str | None = None


def write_workload(path: Path, rng: random.Random) -> None:
    """The injection file: per call (taken in order), the resource and the last Expires."""
    lines = ["SEQUENTIAL"]
    for _ in range(CALLS):
        lines.append(f"crash{rng.randrange(USERS)};{rng.choice(('0', '3600'))}")
    path.write_text("\n".join(lines) + "\n")


def kill_schedule(rng: random.Random) -> list[float]:
    """KILLS moments (seconds after SIPp starts), one in each slice of the load, none in
    the first two seconds or the last three, so every kill lands under load."""
    start, end = 2.0, LOAD_SECONDS - 3.0
    slot = (end - start) / KILLS
    return [start + i * slot + rng.uniform(0.0, slot * 0.75) for i in range(KILLS)]


def start_sipp(server: RunningServer, workdir: Path, workload: Path) -> subprocess.Popen:
    sipp = shutil.which("sipp")
    if sipp is None:
        pytest.fail("sipp is not installed (Debian package sip-tester; .ci/setup installs it)")
    workdir.mkdir(parents=True, exist_ok=True)
    args = [sipp, f"{server.host}:{server.ports['udp']}",
            "-sf", str(SCENARIOS / "crash_publish_chain.xml"), "-inf", str(workload),
            "-i", server.host, "-p", str(free_port(server.host)), "-t", "u1",
            "-m", str(CALLS), "-r", str(RATE), "-nostdin", "-default_behaviors", "all,-bye",
            "-trace_err", "-trace_logs", "-recv_timeout", str(RECV_TIMEOUT_MS),
            "-max_non_invite_retrans", "5", "-timeout", f"{LOAD_SECONDS + 40}s"]
    return subprocess.Popen(args, cwd=workdir, stdout=open(workdir / "sipp.out", "wb"),
                            stderr=subprocess.STDOUT)


def wait_for_sipp(sipp: subprocess.Popen) -> None:
    """Wait for SIPp to finish its calls; fail (and stop it) if it takes too long."""
    try:
        sipp.wait(timeout=LOAD_SECONDS + 60)
    except subprocess.TimeoutExpired:
        sipp.kill()
        sipp.wait()
        pytest.fail("SIPp did not finish in time")


def stop_load(sipp: subprocess.Popen, server: RunningServer) -> int:
    """Stop SIPp if it still runs, then the server (SIGTERM); the server's exit code."""
    if sipp.poll() is None:
        sipp.kill()
        sipp.wait()
    return server.stop()


def kill_while_starting(server: RunningServer, delay: float) -> None:
    """Start `esc serve` as `server` was started (same port, same store) and SIGKILL it
    `delay` seconds later, ready or not."""
    with open(server.workdir / "server.log", "ab") as log:
        process = subprocess.Popen(server.args, cwd=ROOT, stdout=subprocess.DEVNULL,
                                   stderr=log)
    time.sleep(delay)
    process.kill()
    process.wait(timeout=20)


def read_acks(workdir: Path) -> dict[str, Call]:
    calls: dict[str, Call] = {}
    for log in sorted(workdir.glob("*_logs.log")):
        for line in log.read_text(errors="replace").splitlines():
            parts = line.split()
            if not parts or parts[0] != "ACK":
                continue
            assert len(parts) == 6, f"a 200 without a SIP-ETag: {line!r}"
            _, call_id, step, tag, user, last_expires = parts
            call = calls.setdefault(call_id, Call(call_id))
            assert int(step) not in call.acked, f"two 200s for one request: {line!r}"
            call.acked[int(step)] = tag
            call.user, call.last_expires = user, last_expires
    return calls


def read_events(server: RunningServer) -> list[dict]:
    out = server.esc("follow").stdout
    return [json.loads(line) for line in out.splitlines() if line.strip()]


def body_marker(call_id: str, step: int) -> str:
    return f"<note>{call_id} step {step}</note>"


@pytest.mark.parametrize("seed", [SEED], ids=lambda s: f"seed={s}")
def test_kill_9_under_load_keeps_every_acknowledged_tag(tmp_path, seed):
    rng = random.Random(seed)
    workload = tmp_path / "workload.csv"
    write_workload(workload, rng)
    schedule = kill_schedule(rng)
    startup_kill_delay = rng.uniform(0.05, 1.2)

    server = start_server(tmp_path, "--min-expires", "1", transports=("udp",))
    port = server.ports["udp"]
    sipp_dir = tmp_path / "sipp"
    sipp = start_sipp(server, sipp_dir, workload)
    began = time.monotonic()
    lifetimes: list[tuple[float, float]] = []  # wall-clock (up, killed) of each server
    up_at = time.time()
    try:
        for moment in schedule:
            # At least a second and a half of service after each restart, so that the
            # restarted server takes load (and the retransmissions) before its own kill.
            time.sleep(max(moment - (time.monotonic() - began), 1.5 if lifetimes else 0.0))
            assert sipp.poll() is None, "SIPp ended before the kills were done"
            assert server.process.poll() is None, "the server died on its own"
            killed_at = time.time()
            assert server.kill(signal.SIGKILL) == -signal.SIGKILL
            lifetimes.append((up_at, killed_at))
            if len(lifetimes) == 2:
                # Once, crash the restart itself: killed while it opens the store and
                # catches up its view, before or just after it listens again.
                kill_while_starting(server, startup_kill_delay)
            server = start_server(tmp_path, "--min-expires", "1", transports=("udp",),
                                  port=port, store=server.store)
            up_at = time.time()
        wait_for_sipp(sipp)
        assert server.process.poll() is None, "the server died on its own"
    finally:
        stopped = stop_load(sipp, server)
    assert stopped == 0, "graceful stop after the load should exit 0"
    lifetimes.append((up_at, time.time()))

    calls = read_acks(sipp_dir)
    events = read_events(server)
    live_rows = json.loads(server.esc("list", "--json").stdout)
    audit(calls, events, live_rows, lifetimes, server)

    verify = server.esc("verify", "--json", check=False)
    assert verify.returncode == 0, f"esc verify: {verify.stdout} {verify.stderr}"
    report = json.loads(verify.stdout)
    assert report["differences"] == [] and report["live"] == len(live_rows)


def audit(calls: dict[str, Call], events: list[dict], live_rows: list[dict],
          lifetimes: list[tuple[float, float]], server: RunningServer) -> None:
    # -- enough happened for the audit to mean something --------------------------------------
    complete = sum(1 for c in calls.values() if 4 in c.acked)
    assert complete >= CALLS // 2, f"only {complete} of {CALLS} calls completed"
    for number, (up, killed) in enumerate(lifetimes):
        assert any(up <= e["at"] <= killed for e in events), \
            f"server lifetime {number} committed nothing: was it under load?"

    # -- the change feed: one global order -----------------------------------------------------
    positions = [e["position"] for e in events]
    assert positions == sorted(set(positions)), "feed positions must be unique and ordered"

    # -- every publication is a valid chain made of whole requests ----------------------------
    publications: dict[str, list[dict]] = defaultdict(list)
    for e in events:
        publications[e["publication"]].append(e)
    by_call: dict[str, list[str]] = defaultdict(list)  # call-id -> its publications
    for pid, chain in publications.items():
        first = chain[0]
        where = f"publication {pid} ({first['aor']}, call {first['call_id']})"
        assert [e["version"] for e in chain] == list(range(1, len(chain) + 1)), \
            f"{where}: versions not contiguous in feed order: {[e['version'] for e in chain]}"
        assert first["type"] == "Published" and first["etag_before"] is None, where
        for before, after in zip(chain, chain[1:]):
            assert after["etag_before"] == before["etag"], f"{where}: broken tag chain"
            assert before["type"] not in ("Removed", "Expired"), f"{where}: event after the end"
        call_id = first["call_id"]
        match = CALL_ID.match(call_id or "")
        assert match, f"{where}: event from an unknown request"
        by_call[call_id].append(pid)
        call = calls.get(call_id)
        for step, e in enumerate(chain, start=1):
            # One call is one linear chain: step k is sent only after step k-1's 200.
            assert e["call_id"] == call_id and e["aor"] == first["aor"], where
            assert e["event"] == "presence", where
            assert e["cseq"] == f"{step} PUBLISH", f"{where}: event {step} is {e['cseq']}"
            expected = STEPS.get(step) or ("Removed" if call and call.last_expires == "0"
                                           else "Refreshed")
            assert e["type"] == expected, f"{where}: step {step} stored as {e['type']}"
            if step > 1:
                assert call is not None and call.acked.get(step - 1) == e["etag_before"], \
                    f"{where}: step {step} stored, but step {step - 1} was never acknowledged"
            if step in (1, 3):
                assert body_marker(call_id, step) in e.get("body", ""), \
                    f"{where}: step {step} stored with another request's body"
            if e["type"] != "Removed":
                assert e["etag"] and e["etag"] != e["etag_before"], f"{where}: tag not new"
        if call is not None and call.user is not None:
            assert first["aor"] == f"sip:{call.user}@127.0.0.1", f"{where}: wrong resource"

    tags = [e["etag"] for e in events if e["etag"]]
    assert len(tags) == len(set(tags)), "an entity-tag was issued twice"
    event_of_tag = {e["etag"]: e for e in events if e["etag"]}

    # -- what the events leave live is what the view lists ------------------------------------
    expected_live = {}
    for pid, chain in publications.items():
        last = chain[-1]
        if last["type"] not in ("Removed", "Expired"):
            body_event = next(e for e in reversed(chain) if "body" in e)
            expected_live[last["etag"]] = (last, body_event)
    live = {row["etag"]: row for row in live_rows}
    assert set(live) == set(expected_live), (
        f"view and events disagree: {len(set(live) - set(expected_live))} rows not left live "
        f"by the events, {len(set(expected_live) - set(live))} live by the events but missing")
    for tag, row in live.items():
        last, body_event = expected_live[tag]
        assert row["aor"] == last["aor"] and row["id"] == last["publication"], tag
        assert row["version"] == last["version"], tag
        assert row["body"] == body_event["body"], f"{tag}: live body mixes two requests"
        assert row["content_type"] == body_event["content_type"], tag
        assert abs(row["expires_at"] - last["expires_at"]) < 1e-3, tag

    # -- every acknowledged tag, call by call --------------------------------------------------
    still_valid: dict[str, str] = {}  # tag -> aor: must be found
    replaced: dict[str, str] = {}  # tag -> aor: must not be found
    committed_unacked = orphans = 0
    for call_id, call in calls.items():
        steps = sorted(call.acked)
        assert steps == list(range(1, len(steps) + 1)), f"{call_id}: acknowledged {steps}"
        first = event_of_tag.get(call.acked[1])
        assert first is not None and first["type"] == "Published", \
            f"{call_id}: the acknowledged initial tag {call.acked[1]} was never stored"
        pid = first["publication"]
        chain = publications[pid]
        for step in steps:
            event = chain[step - 1] if step <= len(chain) else None
            assert event is not None, f"{call_id}: acknowledged step {step} was not stored"
            if event["type"] == "Removed":
                assert event["etag_before"] == call.acked[3], f"{call_id}: wrong removal"
            else:
                assert event["etag"] == call.acked[step], \
                    f"{call_id}: step {step} acknowledged {call.acked[step]}, " \
                    f"stored {event['etag']}"
        last = steps[-1]
        extra = len(chain) - last
        assert extra in (0, 1), f"{call_id}: {extra} events beyond the last acknowledged"
        committed_unacked += extra
        for step in steps[:-1]:
            replaced[call.acked[step]] = first["aor"]
        final = chain[-1]
        if extra:
            replaced[call.acked[last]] = first["aor"]  # replaced by a committed, lost answer
        if final["type"] == "Removed":
            assert final["etag_before"] not in live, f"{call_id}: removed but still live"
            replaced[final["etag_before"]] = first["aor"]
        else:
            assert final["etag"] in live, f"{call_id}: tag {final['etag']} is not live"
            still_valid[final["etag"]] = first["aor"]
        # Other publications of this call: initial PUBLISHes committed just before a crash
        # whose answer was lost; the retransmission into the restarted server made another.
        for other in by_call[call_id]:
            if other != pid:
                assert len(publications[other]) == 1, \
                    f"{call_id}: an unacknowledged publication {other} went on"
                orphans += 1
    for call_id, pids in by_call.items():
        if call_id not in calls:  # no 200 at all for this call
            assert all(len(publications[p]) == 1 for p in pids), call_id
            assert len(pids) <= KILLS + 1, f"{call_id}: {len(pids)} initial publications"
            orphans += len(pids)

    # -- `esc find` reads the event store, not the view: ask it for every tag ----------------
    # (In process, the call `esc find` makes: one process per tag would take minutes.)
    from esc.bootstrap import open_compositor

    compositor = open_compositor(server.store)
    try:
        for tag, aor in still_valid.items():
            found = compositor.find(aor, tag, "presence")
            assert found is not None and found.etag == tag, f"acknowledged tag {tag} lost"
        for tag, aor in replaced.items():
            assert compositor.find(aor, tag, "presence") is None, \
                f"replaced or removed tag {tag} still valid"
    finally:
        compositor.close()
    # ... and the command itself, for a sample.
    sample = random.Random(len(events))
    for tag in sample.sample(sorted(still_valid), min(5, len(still_valid))):
        found = server.esc("find", still_valid[tag], tag, "--event", "presence", "--json")
        assert json.loads(found.stdout)["etag"] == tag
    for tag in sample.sample(sorted(replaced), min(5, len(replaced))):
        gone = server.esc("find", replaced[tag], tag, "--event", "presence", check=False)
        assert gone.returncode == 1 and gone.stderr.strip() == "not found", gone.stderr
    print(f"calls {len(calls)} acknowledged, {complete} complete; events {len(events)}; "
          f"live {len(live)}; committed without answer: {committed_unacked} later steps, "
          f"{orphans} initial publications")
