"""Chaos: SIPp load against `esc serve` while its store process is killed (kill -9)
several times. The server itself stays up: each time, its gateway answers what was in
flight with 503, starts a new store process and serves PUBLISH again within 5 s. Then
the same audit as the whole-server crash test (test_crash_consistency.py): every entity-tag
acknowledged with 200 is still valid unless its own call replaced it, nothing is half
written or written twice, the view matches the events and `esc verify` agrees."""

from __future__ import annotations

import json
import os
import random
import signal
import time

import pytest

from .conftest import start_server
from .test_crash_consistency import (audit, kill_schedule, read_acks, read_events,
                                     start_sipp, stop_load, wait_for_sipp,
                                     write_workload)
from .test_resilience import publish_until_200, store_pid

pytestmark = pytest.mark.e2e

SEED = int(os.environ.get("ESC_CRASH_SEED", "3903"))


@pytest.mark.parametrize("seed", [SEED], ids=lambda s: f"seed={s}")
def test_kill_9_of_the_store_process_under_load_loses_nothing_and_heals(tmp_path, seed):
    rng = random.Random(seed + 1)
    workload = tmp_path / "workload.csv"
    write_workload(workload, rng)
    schedule = kill_schedule(rng)

    server = start_server(tmp_path, "--min-expires", "1", transports=("udp",))
    sipp_dir = tmp_path / "sipp"
    sipp = start_sipp(server, sipp_dir, workload)
    began = time.monotonic()
    up_at = time.time()
    heal_times: list[float] = []
    try:
        for moment in schedule:
            time.sleep(max(moment - (time.monotonic() - began), 1.5 if heal_times else 0.0))
            assert sipp.poll() is None, "SIPp ended before the kills were done"
            old = store_pid(server)
            os.kill(old, signal.SIGKILL)
            heal_times.append(publish_until_200(server, 5.0))
            assert store_pid(server) != old
            assert server.process.poll() is None, "the server died with its store"
        wait_for_sipp(sipp)
    finally:
        stopped = stop_load(sipp, server)
    assert stopped == 0, "graceful stop after the load should exit 0"
    assert all(t < 5.0 for t in heal_times), heal_times
    print(f"served again after each store death within: {heal_times}")

    calls = read_acks(sipp_dir)
    # The probes' publications (publish_until_200) are not SIPp's: audit SIPp's alone.
    events = [e for e in read_events(server) if not e["aor"].startswith("sip:probe")]
    all_live = json.loads(server.esc("list", "--json").stdout)
    live_rows = [r for r in all_live if not r["aor"].startswith("sip:probe")]
    assert len(all_live) - len(live_rows) == len(heal_times), "each probe's publication kept"
    audit(calls, events, live_rows, [(up_at, time.time())], server)

    verify = server.esc("verify", "--json", check=False)
    assert verify.returncode == 0, f"esc verify: {verify.stdout} {verify.stderr}"
    report = json.loads(verify.stdout)
    assert report["differences"] == [] and report["live"] == len(all_live)
