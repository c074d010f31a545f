"""Benchmarks of the store that need no SIPp (issue 4's last three targets).

    python -m bench.store_bench refresh   [--refreshes 10000]
        a publication refreshed N times: time to load it (snapshots keep this short)
    python -m bench.store_bench expiry    [--count 100000] [--window 60]
        N publications lapsing within one window: lag of each Expired behind its expiry
    python -m bench.store_bench million   [--count 1000000]
        N live publications: `esc serve` RSS, and restart time after kill -9 to the first 200

Each prints a short table and writes JSON to --out (default bench/results/store-<name>.json).
Loopback only; every process it starts is stopped.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from uuid import UUID

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from domain import Audit, PublishRequest  # noqa: E402
from infrastructure import Compositor  # noqa: E402
from infrastructure.expiry import ExpiryScheduler  # noqa: E402

PIDF = ('<?xml version="1.0" encoding="UTF-8"?><presence xmlns="urn:ietf:params:xml:ns:pidf" '
        'entity="sip:u{i}@bench.example"><tuple id="t"><status><basic>open</basic></status>'
        '</tuple></presence>')
AUDIT = Audit(source="127.0.0.1:5061", transport="udp", call_id="bench", cseq="1 PUBLISH")


def initial(i: int, expires: int) -> PublishRequest:
    return PublishRequest(f"sip:u{i}@bench.example", "presence", PIDF.format(i=i).encode(),
                          "application/pidf+xml", expires, None, AUDIT)


def populate(compositor: Compositor, count: int, expires: int, now: float | None = None,
             batch: int = 2000) -> list[str]:
    tags = []
    for start in range(0, count, batch):
        results = compositor.process_many(
            [initial(i, expires) for i in range(start, min(count, start + batch))], now=now)
        tags.extend(r.etag for r in results)
    return tags


def machine() -> dict:
    model = next((line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo")
                  if line.startswith("model name")), "?")
    return {"nproc": os.cpu_count(), "cpu": model, "date": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
            "python": sys.version.split()[0]}


# ---- refresh -----------------------------------------------------------------------------------

def bench_refresh(args) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        compositor = Compositor.open(f"sqlite:///{tmp}/r.sqlite3", max_expires=86400)
        tag = populate(compositor, 1, 3600)[0]
        t0 = time.perf_counter()
        for _ in range(args.refreshes):
            tag = compositor.publish("sip:u0@bench.example", "presence", if_match=tag,
                                     expires=3600).etag
        refresh_rate = args.refreshes / (time.perf_counter() - t0)
        publication_id = UUID(hex=tag.split(".")[0])
        loads = []
        for _ in range(200):
            compositor.repository.cache.get(publication_id, evict=True)
            t = time.perf_counter()
            publication = compositor.repository.get(publication_id)
            loads.append((time.perf_counter() - t) * 1000)
        assert publication.version == args.refreshes + 1 and publication.etag == tag
        compositor.close()
    loads.sort()
    result = {"refreshes": args.refreshes, "version": args.refreshes + 1,
              "load_ms_p50": round(statistics.median(loads), 3),
              "load_ms_p99": round(loads[int(len(loads) * 0.99) - 1], 3),
              "refreshes_per_s_single": round(refresh_rate), "target_ms": 1.0}
    print(f"publication refreshed {args.refreshes} times: load p50 {result['load_ms_p50']} ms, "
          f"p99 {result['load_ms_p99']} ms (target < 1 ms)")
    return result


# ---- expiry ------------------------------------------------------------------------------------

def bench_expiry(args) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        compositor = Compositor.open(f"sqlite:///{tmp}/e.sqlite3", max_expires=86400)
        created = time.time()
        # Everything is created "now", with expiries spread evenly over one window that
        # starts after population has surely finished.
        lead = args.lead
        batch = 2000
        for start in range(0, args.count, batch):
            requests = []
            for i in range(start, min(args.count, start + batch)):
                requests.append(initial(i, lead + int(args.window * i / args.count)))
            compositor.process_many(requests, now=created)
        populated = time.time()
        if populated - created > lead:
            raise SystemExit(f"population took {populated - created:.0f} s > lead {lead} s")
        # A change-feed reader notes when each Expired becomes visible (committed): that,
        # not when the expiry pass began, is what a downstream notifier experiences.
        import threading

        seen: dict[str, float] = {}
        position = compositor.recorder.max_notification_id() or 0
        stop = threading.Event()

        def follow() -> None:
            nonlocal position
            while not stop.is_set():
                for record in compositor.feed(after=position):
                    position = record.position
                    if record.type == "Expired":
                        seen[record.publication] = time.time() - record.at
                stop.wait(0.02)

        reader = threading.Thread(target=follow, daemon=True)
        reader.start()
        scheduler = ExpiryScheduler(compositor).start()
        deadline = created + lead + args.window + 30
        while len(seen) < args.count and time.time() < deadline:
            time.sleep(0.5)
        scheduler.stop()
        stop.set()
        reader.join()
        lags = sorted(seen.values())
        left = compositor.view.count()
        compositor.close()
    result = {"count": args.count, "window_s": args.window, "expired": len(lags),
              "left_unexpired": left, "populate_s": round(populated - created, 1),
              "lag_s_p50": round(statistics.median(lags), 3) if lags else None,
              "lag_s_p99": round(lags[int(len(lags) * 0.99) - 1], 3) if lags else None,
              "lag_s_max": round(lags[-1], 3) if lags else None, "target_s": 2.0}
    print(f"{len(lags)} of {args.count} expired; committed and visible in the change feed "
          f"this long after their expiry time: p50 "
          f"{result['lag_s_p50']} s, p99 {result['lag_s_p99']} s, max {result['lag_s_max']} s "
          f"(target: every one within 2 s)")
    return result


# ---- a million -----------------------------------------------------------------------------------

def _options(port: int, timeout: float = 0.3) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.settimeout(timeout)
        sock.bind(("127.0.0.1", 0))
        me = sock.getsockname()[1]
        request = (f"OPTIONS sip:bench@127.0.0.1:{port} SIP/2.0\r\n"
                   f"Via: SIP/2.0/UDP 127.0.0.1:{me};branch=z9hG4bK{time.monotonic_ns()}\r\n"
                   f"From: <sip:b@127.0.0.1>;tag=1\r\nTo: <sip:b@127.0.0.1>\r\n"
                   f"Call-ID: {time.monotonic_ns()}\r\nCSeq: 1 OPTIONS\r\nContent-Length: 0\r\n\r\n")
        sock.sendto(request.encode(), ("127.0.0.1", port))
        try:
            return sock.recv(65535).startswith(b"SIP/2.0 200")
        except socket.timeout:
            return False


def _refresh(port: int, aor_user: str, tag: str, timeout: float = 0.3) -> int | None:
    from sip_adapter.aio.client import PublishError, publish_once

    try:
        answer = publish_once(f"sip:{aor_user}@bench.example", "presence", etag=tag,
                              expires=3600, server=f"127.0.0.1:{port}", timeout=timeout)
    except PublishError:
        return None
    return answer.status


def _rss_kb(pid: int) -> int:
    total = 0
    for p in [pid] + _children(pid):
        try:
            for line in open(f"/proc/{p}/status"):
                if line.startswith("VmRSS:"):
                    total += int(line.split()[1])
        except FileNotFoundError:
            pass
    return total


def _children(pid: int) -> list[int]:
    try:
        out = subprocess.run(["pgrep", "-P", str(pid)], capture_output=True, text=True).stdout
    except FileNotFoundError:
        return []
    kids = [int(x) for x in out.split()]
    return kids + [g for k in kids for g in _children(k)]


def _sipp_traffic(port: int, calls: int) -> dict:
    """Serve SIPp publish cycles (initial, refresh, modify, remove on distinct resources)
    before RSS is read, so the server holds what serving traffic makes it hold."""
    import shutil

    if not calls or shutil.which("sipp") is None:
        return {"calls": 0, "note": "sipp not installed" if calls else "none asked"}
    scenario = ROOT / "tests" / "e2e" / "scenarios" / "publish_cycle.xml"
    with tempfile.TemporaryDirectory() as tmp:
        result = subprocess.run(
            ["sipp", f"127.0.0.1:{port}", "-sf", str(scenario), "-i", "127.0.0.1", "-p", "0",
             "-m", str(calls), "-r", "500", "-nostdin", "-default_behaviors", "all,-bye",
             "-timeout", "300s", "-trace_stat", "-stf", "stat.csv", "-fd", "1"],
            cwd=tmp, capture_output=True, text=True, timeout=400)
        rows = [line.split(";") for line in open(Path(tmp) / "stat.csv")]
    stats = dict(zip(rows[0], rows[-1]))
    return {"calls": calls, "successful": int(stats.get("SuccessfulCall(C)", 0)),
            "failed": int(stats.get("FailedCall(C)", 0)), "sipp_exit": result.returncode}


def _serve(store: str, port: int) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "esc", "serve", "--listen",
                             f"udp:127.0.0.1:{port}", "--store", store, "--max-expires", "86400",
                             "--log-level", "warning"], cwd=ROOT, stdout=subprocess.DEVNULL)


def bench_million(args) -> dict:
    workdir = Path(args.workdir or tempfile.mkdtemp(prefix="esc-million-"))
    workdir.mkdir(parents=True, exist_ok=True)
    store = f"sqlite:///{workdir}/m.sqlite3"
    t0 = time.time()
    compositor = Compositor.open(store, max_expires=86400)
    have = compositor.view.count()
    if have < args.count:
        populate_from = have
        batch = 5000
        for start in range(populate_from, args.count, batch):
            compositor.process_many([initial(i, 86400)
                                     for i in range(start, min(args.count, start + batch))])
    some = compositor.list("sip:u7@bench.example")
    tag = some[0].etag if some else None
    compositor.close()
    populate_s = time.time() - t0
    port = args.port
    server = _serve(store, port)
    try:
        started = time.time()
        while not _options(port) and time.time() - started < 60:
            pass
        first_start_s = time.time() - started
        status = _refresh(port, "u7", tag)
        if status != 200:
            raise SystemExit(f"refresh of a stored publication answered {status}")
        traffic = _sipp_traffic(port, args.traffic_calls)  # fills the aggregate cache
        rss_kb = _rss_kb(server.pid)
        server.send_signal(signal.SIGKILL)
        server.wait()
    finally:
        if server.poll() is None:
            server.kill()
    # After kill -9: restart, and time until a refresh of a known publication gets 200.
    compositor = Compositor.open(store, max_expires=86400)
    tag = compositor.list("sip:u9@bench.example")[0].etag
    compositor.close()
    server = _serve(store, port)
    try:
        started = time.time()
        status = None
        while status != 200 and time.time() - started < 60:
            status = _refresh(port, "u9", tag, timeout=0.2)
        restart_s = time.time() - started
        rss_after_kb = _rss_kb(server.pid)
    finally:
        server.send_signal(signal.SIGTERM)
        try:
            server.wait(20)
        except subprocess.TimeoutExpired:
            server.kill()
    size_mb = sum(f.stat().st_size for f in workdir.glob("m.sqlite3*")) / 1e6
    result = {"publications": args.count, "populate_s": round(populate_s, 1),
              "first_start_s": round(first_start_s, 2), "rss_mb": round(rss_kb / 1024, 1),
              "restart_to_first_200_s": round(restart_s, 2),
              "rss_after_restart_mb": round(rss_after_kb / 1024, 1),
              "store_files_mb": round(size_mb, 1), "traffic_before_rss": traffic,
              "targets": {"rss_mb": 300, "restart_s": 5}}
    print(f"{args.count} live publications ({size_mb:.0f} MB on disk): server RSS "
          f"{result['rss_mb']} MB (target <= 300); after kill -9, restart to first 200 OK in "
          f"{result['restart_to_first_200_s']} s (target <= 5)")
    return result


def main() -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.store_bench")
    sub = parser.add_subparsers(dest="name", required=True)
    p = sub.add_parser("refresh")
    p.add_argument("--refreshes", type=int, default=10000)
    p = sub.add_parser("expiry")
    p.add_argument("--count", type=int, default=100000)
    p.add_argument("--window", type=int, default=60)
    p.add_argument("--lead", type=int, default=60, help="seconds before the window opens")
    p = sub.add_parser("million")
    p.add_argument("--count", type=int, default=1000000)
    p.add_argument("--port", type=int, default=5097)
    p.add_argument("--workdir", help="keep the populated store here (reused when present)")
    p.add_argument("--traffic-calls", type=int, default=25000,
                   help="SIPp publish cycles served before RSS is read (0: none)")
    for p in sub.choices.values():
        p.add_argument("--out")
    args = parser.parse_args()
    result = {"refresh": bench_refresh, "expiry": bench_expiry, "million": bench_million}[args.name](args)
    result["machine"] = machine()
    out = Path(args.out or ROOT / "bench" / "results" / f"store-{args.name}.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2))
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
