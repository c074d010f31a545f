"""Smoke run of the SIPp benchmark harness (bench/sipp_bench.py) so it cannot rot.

Runs `python -m bench.sipp_bench --smoke` against our server only (`esc serve`,
UDP, one low rate, 20 calls, a few seconds) and checks its outputs. The full
benchmark stays out of the test suite (see bench/README.md).
"""
from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.e2e

REPO = Path(__file__).resolve().parents[2]


def test_bench_smoke(tmp_path: Path) -> None:
    if shutil.which("sipp") is None:
        pytest.skip("sipp not installed (apt-get install sip-tester): cannot run the benchmark smoke")
    out = tmp_path / "bench"
    cmd = [sys.executable, "-m", "bench.sipp_bench", "--smoke",
           "--servers", "esc", "--transports", "udp", "--out", str(out)]
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=120)
    report = f"exit {proc.returncode}\nstdout:\n{proc.stdout[-4000:]}\nstderr:\n{proc.stderr[-4000:]}"
    assert proc.returncode == 0, report

    results = out / "results.json"
    assert results.exists(), report
    doc = json.loads(results.read_text())
    steps = [s for s in doc["steps"] if s["server"] == "esc" and s["transport"] == "udp"]
    assert steps, report
    ok = [s for s in steps if (s.get("sipp") or {}).get("successful_calls", 0) > 0]
    assert ok, f"no step with successful calls: {[s.get('failures') for s in steps]}\n{report}"
    assert ok[0]["rt_ms"]["samples"] > 0
    assert (out / "plot.png").exists(), report


def test_notify_bench_smoke(tmp_path: Path) -> None:
    """The watcher benchmark (bench/notify_bench.py) at a tiny size: 50 watchers on 10
    resources, 20 PUBLISH/s for 2 s, without then with the watchers. It also runs every
    Kamailio mode that is installed (CI installs none: the output says they are
    skipped); only esc's steps are checked here."""
    if shutil.which("sipp") is None:
        pytest.skip("sipp not installed (apt-get install sip-tester): cannot run the benchmark smoke")
    out = tmp_path / "notify"
    cmd = [sys.executable, "-m", "bench.notify_bench", "--smoke", "--out", str(out)]
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=300)
    report = f"exit {proc.returncode}\nstdout:\n{proc.stdout[-4000:]}\nstderr:\n{proc.stderr[-4000:]}"
    assert proc.returncode == 0, report
    doc = json.loads((out / "results.json").read_text())
    steps = {s["mode"]: s for s in doc["steps"] if s["server"] == "esc"}
    assert set(steps) == {"without", "with"}, report
    for step in steps.values():
        assert step["publish_count"] == step["publish_planned"] > 0, report
        assert 0 < step["rt_ms"]["p50"] <= step["rt_ms"]["p99"] < 5000, report
    notify = steps["with"]["notify"]
    assert notify["initial_notifies"] == 50, report
    assert 0 < notify["received"] <= notify["expected"] == 50 * (steps["with"]["publish_planned"] // 10)
    assert notify["final_state_missing"] == 0 and notify["final_state_ok"] == 50, report
    assert notify["unmatched"] == 0, report
    lat = notify["latency_ms"]
    assert lat["samples"] == notify["received"] and lat["p50"] is not None, report
    assert -50 < lat["p50"] <= lat["p99"] < 5000, report
    # each Kamailio mode is either measured or skipped with a line saying why
    assert "kamailio-sqlite" in proc.stdout and "kamailio-memory" in proc.stdout, report
