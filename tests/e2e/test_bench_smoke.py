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
