"""Two `esc serve` nodes on one PostgreSQL database, each driven by its own SIPp.

    python -m bench.multinode_bench --store 'postgresql://postgres@/escbench?host=/var/run/postgresql' \
        --rates 1000,2000,3000     # total offered PUBLISH/s, split evenly over the nodes

A step passes under the same criterion as bench/sipp_bench.py: no failed calls, no
retransmissions, p99 under 50 ms (SIPp's own response times), at least 95% of the offered
rate achieved. Each SIPp publishes its own resources (user<N>a@ / user<N>b@). Prints a table
and writes JSON to --out. Loopback only; every process it starts is stopped.
"""

from __future__ import annotations

import argparse
import csv
import json
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SCENARIO = ROOT / "bench" / "scenarios" / "publish_cycle.xml"


def wait_ready(port: int, timeout: float = 30.0) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
            sock.settimeout(0.2)
            sock.bind(("127.0.0.1", 0))
            me = sock.getsockname()[1]
            sock.sendto((f"OPTIONS sip:x@127.0.0.1:{port} SIP/2.0\r\nVia: SIP/2.0/UDP "
                         f"127.0.0.1:{me};branch=z9hG4bK{time.monotonic_ns()}\r\nFrom: <sip:b@h>;tag=1"
                         f"\r\nTo: <sip:b@h>\r\nCall-ID: {time.monotonic_ns()}\r\nCSeq: 1 OPTIONS"
                         f"\r\nContent-Length: 0\r\n\r\n").encode(), ("127.0.0.1", port))
            try:
                if sock.recv(65535).startswith(b"SIP/2.0"):
                    return
            except socket.timeout:
                pass
    raise SystemExit(f"node on port {port} did not start")


def scenario_for(tag: str, workdir: Path) -> Path:
    """The shared cycle scenario with this node's own resources (user<N><tag>)."""
    text = SCENARIO.read_text().replace("user[call_number]", f"user[call_number]{tag}")
    path = workdir / f"cycle-{tag}.xml"
    path.write_text(text)
    return path


def run_step(store: str, total_rate: int, seconds: int, base_port: int) -> dict:
    calls_per_node = max(1, int(total_rate / 4 / 2 * seconds))
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        nodes, sipps = [], []
        try:
            for index in range(2):
                port = base_port + index
                nodes.append(subprocess.Popen(
                    [sys.executable, "-m", "esc", "serve", "--listen", f"udp:127.0.0.1:{port}",
                     "--store", store, "--rate-limit", "0", "--log-level", "warning"],
                    cwd=ROOT, stdout=subprocess.DEVNULL, stderr=open(work / f"node{index}.log", "w")))
            for index in range(2):
                wait_ready(base_port + index)
            started = time.time()
            for index, tag in enumerate("ab"):
                node_dir = work / f"sipp-{tag}"
                node_dir.mkdir()
                sipps.append(subprocess.Popen(
                    ["sipp", f"127.0.0.1:{base_port + index}", "-sf", str(scenario_for(tag, work)),
                     "-i", "127.0.0.1", "-p", str(base_port + 10 + index),
                     "-r", str(total_rate / 4 / 2), "-m", str(calls_per_node), "-nostdin",
                     "-default_behaviors", "all,-bye", "-trace_stat", "-stf", "stat.csv",
                     "-fd", "1", "-trace_rtt", "-rtt_freq", "100", "-buff_size", "4194304",
                     "-timeout", f"{seconds * 4}s"],
                    cwd=node_dir, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
            for sipp in sipps:
                sipp.wait(timeout=seconds * 5)
            elapsed = time.time() - started
            ok = failed = retrans = 0
            rtts: list[float] = []
            for tag in "ab":
                node_dir = work / f"sipp-{tag}"
                rows = list(csv.reader(open(node_dir / "stat.csv"), delimiter=";"))
                last = dict(zip(rows[0], rows[-1]))
                ok += int(last["SuccessfulCall(C)"])
                failed += int(last["FailedCall(C)"])
                retrans += int(last["Retransmissions(C)"])
                for rtt_file in node_dir.glob("*_rtt.csv"):
                    for row in list(csv.reader(open(rtt_file), delimiter=";"))[1:]:
                        try:
                            rtts.append(float(row[1]))  # Date_ms;response_time_ms;rtd_no
                        except (IndexError, ValueError):
                            pass
        finally:
            for process in sipps + nodes:
                if process.poll() is None:
                    process.send_signal(signal.SIGTERM)
            for process in sipps + nodes:
                try:
                    process.wait(timeout=20)
                except subprocess.TimeoutExpired:
                    process.kill()
    rtts.sort()
    achieved = ok * 4 / elapsed if elapsed else 0.0
    p99 = rtts[int(len(rtts) * 0.99) - 1] if rtts else None
    passed = failed == 0 and retrans == 0 and p99 is not None and p99 < 50 \
        and achieved >= 0.95 * total_rate
    return {"offered": total_rate, "achieved": round(achieved), "ok_calls": ok,
            "failed": failed, "retransmissions": retrans, "samples": len(rtts),
            "p50_ms": rtts[len(rtts) // 2] if rtts else None, "p99_ms": p99, "pass": passed}


def main() -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.multinode_bench")
    parser.add_argument("--store", required=True, help="postgresql:// URL shared by both nodes")
    parser.add_argument("--rates", default="1000,2000,3000")
    parser.add_argument("--seconds", type=int, default=10)
    parser.add_argument("--port", type=int, default=5080)
    parser.add_argument("--out", default=str(ROOT / "bench" / "results" / "multinode.json"))
    args = parser.parse_args()
    subprocess.run([sys.executable, "-m", "esc", "migrate", "--store", args.store], cwd=ROOT,
                   check=True, capture_output=True)
    steps = []
    for rate in [int(r) for r in args.rates.split(",")]:
        step = run_step(args.store, rate, args.seconds, args.port)
        steps.append(step)
        print(("PASS " if step["pass"] else "FAIL ") + json.dumps(step), flush=True)
        if not step["pass"]:
            break
    best = max((s["offered"] for s in steps if s["pass"]), default=None)
    print(f"two nodes on one PostgreSQL: highest passing total rate {best} PUBLISH/s")
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps({"steps": steps, "best": best,
                                          "date": time.strftime("%Y-%m-%d %H:%M:%S %Z")}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
