#!/usr/bin/env python3
"""Watcher benchmark: PUBLISH capacity and NOTIFY latency of `esc serve` with 10,000
subscriptions attached, against the same server without them, and Kamailio presence doing
the same, in one run.

For each server of --servers (esc, kamailio-sqlite, kamailio-memory; default esc and every
Kamailio mode that is installed, see bench/sipp_bench.py and bench/peers/kamailio/), in
turn: the ladder without watchers, the ladder with them, then the half-rate steps.
Per step: start the server fresh; with watchers, a watcher farm (a child process of this
script, plain non-blocking UDP sockets) SUBSCRIBEs --subscriptions watchers spread over
--resources resources (sip:res1..resN, watcher i on resource i mod N + 1) and waits
until every one has its 200 and its first NOTIFY; then SIPp (`publish_steady.xml`)
publishes on every resource and modifies it at a steady rate (one PUBLISH per resource
every N/rate seconds, evenly phased, so the PUBLISH rate is `rate` from start to end),
each modify's PIDF carrying a marker <note>m<resource>-<CSeq></note>; the farm answers
every NOTIFY with 200 at once and records its arrival time and marker. After SIPp ends
the farm waits until no NOTIFY has come for --drain-idle seconds.

    python -m bench.notify_bench                        # ladder without, then with watchers
    python -m bench.notify_bench --rates 1000,2000,3000,4000 --half-repeat 3
    python -m bench.notify_bench --smoke                # 50 watchers on 10 resources, 2 s
    python -m bench.notify_bench --servers esc,kamailio-memory --rates 1000,2000

Measured (names used in the output):
- PUBLISH response time: SIPp's log line just before each PUBLISH is sent to the log
  line of its 200 (wall clock, microseconds; SIPp's own rtd uses a 4 ms clock here);
- NOTIFY latency: arrival of a NOTIFY at the farm (time.time() at recvfrom) minus the
  arrival of the 200 at SIPp of the PUBLISH whose marker the NOTIFY carries (the latest
  change: NOTIFYs fold). On loopback the arrival is a close proxy for the NOTIFY
  leaving the server. Kamailio sends its NOTIFYs before the 200 of the PUBLISH that
  caused them (presence's handle_publish notifies, then replies), so its latency can be
  slightly negative; 'PUBLISH->NOTIFY' (arrival minus the moment SIPp sent that PUBLISH)
  is reported beside it and is comparable between the servers;
- change-to-watcher delay: for every change and every watcher of its resource, the first
  NOTIFY carrying that change or a later one, minus the change's 200 (folding included);
- NOTIFYs received against expected: expected = one per state-changing PUBLISH (initial,
  modifies, remove) per watcher of its resource; the difference is 'folded' (esc: at most
  one NOTIFY is in flight per subscription, changes meanwhile fold into the next; Kamailio
  sends one NOTIFY per change), provided every watcher's last NOTIFY shows its resource's
  last change ('final state' column). The NOTIFY answering the SUBSCRIBE (the watcher's
  first, before any PUBLISH, without a marker) is not counted: esc numbers it CSeq 1,
  Kamailio CSeq 2.

Markers: Kamailio's presence_xml passes a presentity's PIDF through unchanged when it has
one publication (as here), so its NOTIFYs keep the <note> marker; after the remove it sends
a PIDF with <basic>closed</basic> and no note, which counts as the state after the remove,
as esc's empty NOTIFY does.

A rate passes (PUBLISH criterion, as bench/sipp_bench.py): no failed call, no
retransmission, every call completed, PUBLISH p99 under --p99-ms (50), achieved rate at
least --min-achieved (0.90; SIPp paces each resource by a pause after the previous 200,
so the achieved rate is below the offered by about the mean response time / period). The
NOTIFY target is reported beside it: NOTIFY latency p99 under --p99-ms at half the
maximum PUBLISH rate without watchers (--half-repeat steps at that rate, with watchers).

Loopback only; re-executed inside a private network namespace (`unshare -n`) when root.
Kamailio listens on 127.0.0.1:5070 (fixed by its cfg); a Kamailio mode that is not
installed is skipped with a line saying so.
"""
from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import re
import selectors
import shlex
import shutil
import socket
import statistics
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

if __package__ in (None, ""):  # run as a file (python bench/notify_bench.py, netns re-exec)
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench import sipp_bench as sb  # noqa: E402

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
HOST = sb.HOST
DEFAULT_SCENARIO = HERE / "scenarios" / "publish_steady.xml"
DEFAULT_LADDER = [250, 500, 1000, 2000, 3000, 4000, 5000, 6000, 7000, 8000, 9000, 10000]
MODES = ("without", "with")


def log(msg: str) -> None:
    sb.log(msg)


# =========================================================================== the farm
#
# A child process: `python -m bench.notify_bench --farm-child JSON`. Lines on stdout:
# "READY {json}" once subscribed, "DONE {json}" at the end. Lines on stdin: "DRAIN idle max"
# (wait until no NOTIFY for `idle` s, at most `max` s, then write the records and exit).

NOTE_RE = re.compile(rb"<note>m(\d+)-(\d+)</note>")
MAX_ATTEMPTS = 20
KEEP = (b"Via:", b"From:", b"To:", b"Call-ID:", b"CSeq:", b"v:", b"f:", b"t:", b"i:")


def _so_rcvbuf(sock: socket.socket, size: int) -> int:
    try:
        sock.setsockopt(socket.SOL_SOCKET, 33, size)  # SO_RCVBUFFORCE (root)
    except OSError:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, size)
    return sock.getsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF)


def _own_cpu() -> float:
    import resource
    ru = resource.getrusage(resource.RUSAGE_SELF)
    return round(ru.ru_utime + ru.ru_stime, 3)


def farm_main(cfg: dict) -> int:
    server = (cfg["host"], cfg["port"])
    n_subs, n_res, n_socks = cfg["subscriptions"], cfg["resources"], cfg["sockets"]
    run = cfg["run_id"]
    socks = []
    for _ in range(n_socks):
        s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        s.bind((HOST, 0))
        s.setblocking(False)
        rcvbuf = _so_rcvbuf(s, 8 << 20)
        socks.append(s)
    sel = selectors.DefaultSelector()
    for k, s in enumerate(socks):
        sel.register(s, selectors.EVENT_READ, k)
    stdin_fd = sys.stdin.fileno()
    os.set_blocking(stdin_fd, False)
    sel.register(stdin_fd, selectors.EVENT_READ, -1)
    ports = [s.getsockname()[1] for s in socks]

    sub_status = [0] * n_subs  # final status of the SUBSCRIBE
    sub_sent_at = [0.0] * n_subs
    sub_tries = [0] * n_subs  # sends of the current attempt (1 + retransmissions)
    # attempt = the SUBSCRIBE's CSeq; a 5xx answer (Kamailio: 500 when its SQLite
    # watchers table is locked by another worker) is retried as a new transaction after
    # a short pause, as a client would, up to MAX_ATTEMPTS
    sub_attempt = [1] * n_subs
    retry_at = [0.0] * n_subs
    first_notify = [False] * n_subs
    seen: set[tuple[int, int]] = set()
    rec_t: list[float] = []
    rec_w: list[int] = []
    rec_c: list[int] = []
    rec_m: list[int] = []
    stats = {"notifies": 0, "duplicates": 0, "wrong_resource": 0, "terminated": 0,
             "unparsed": 0, "subscribe_statuses": {}, "subscribe_retransmissions": 0,
             "subscribe_5xx_retried": {},
             "rcvbuf": rcvbuf, "sockets": n_socks}
    last_notify = [0.0]
    time_ = time.time

    def subscribe(i: int) -> None:
        k = i % n_socks
        r = i % n_res + 1
        msg = (f"SUBSCRIBE sip:res{r}@{HOST} SIP/2.0\r\n"
               f"Via: SIP/2.0/UDP {HOST}:{ports[k]};"
               f"branch=z9hG4bK-{run}-s{i}-{sub_attempt[i]}\r\n"
               f"Max-Forwards: 70\r\n"
               f"From: <sip:w{i}@{HOST}>;tag=f{i}\r\n"
               f"To: <sip:res{r}@{HOST}>\r\n"
               f"Call-ID: w{i}.{run}@farm\r\n"
               f"CSeq: {sub_attempt[i]} SUBSCRIBE\r\n"
               f"Contact: <sip:w{i}@{HOST}:{ports[k]}>\r\n"
               f"Event: presence\r\n"
               f"Accept: application/pidf+xml\r\n"
               f"Expires: 3600\r\n"
               f"Content-Length: 0\r\n\r\n").encode()
        sub_sent_at[i] = time_()
        sub_tries[i] += 1
        try:
            socks[k].sendto(msg, server)
        except OSError:
            pass

    def handle(sock: socket.socket, data: bytes, addr) -> None:
        if data[:7] == b"NOTIFY ":
            t = time_()
            hend = data.find(b"\r\n\r\n")
            if hend < 0:
                stats["unparsed"] += 1
                return
            keep = []
            idx = ncseq = -1
            for line in data[:hend].split(b"\r\n"):
                if line.startswith(KEEP):
                    keep.append(line)
                    if line.startswith((b"Call-ID:", b"i:")):
                        v = line.split(b":", 1)[1].strip()
                        try:
                            idx = int(v[1:v.index(b".")])
                        except ValueError:
                            pass
                    elif line.startswith(b"CSeq:"):
                        try:
                            ncseq = int(line[5:].split()[0])
                        except (ValueError, IndexError):
                            pass
                elif line.startswith(b"Subscription-State:") and b"terminated" in line:
                    stats["terminated"] += 1
            keep.append(b"Content-Length: 0\r\n\r\n")
            try:
                sock.sendto(b"SIP/2.0 200 OK\r\n" + b"\r\n".join(keep), addr)
            except OSError:
                pass
            if not 0 <= idx < n_subs or ncseq < 0:
                stats["unparsed"] += 1
                return
            if (idx, ncseq) in seen:
                stats["duplicates"] += 1  # a retransmission of a NOTIFY already answered
                return
            seen.add((idx, ncseq))
            stats["notifies"] += 1
            marker = -1
            r = idx % n_res + 1
            for mc, mk in NOTE_RE.findall(data, hend):
                if int(mc) != r:
                    stats["wrong_resource"] += 1
                elif int(mk) > marker:
                    marker = int(mk)
            first_notify[idx] = True
            last_notify[0] = t
            rec_t.append(t)
            rec_w.append(idx)
            rec_c.append(ncseq)
            rec_m.append(marker)
        elif data[:8] == b"SIP/2.0 ":
            try:
                status = int(data[8:11])
                i0 = data.index(b"Call-ID: w") + 10
                idx = int(data[i0:data.index(b".", i0)])
                c0 = data.index(b"CSeq: ") + 6
                rcseq = int(data[c0:data.index(b" ", c0)])
            except ValueError:
                stats["unparsed"] += 1
                return
            if not 0 <= idx < n_subs or rcseq != sub_attempt[idx]:
                return  # an answer to an earlier attempt
            if retry_at[idx]:
                return  # a repeated 5xx of an attempt whose retry is already planned
            if 500 <= status < 600 and sub_status[idx] == 0 \
                    and sub_attempt[idx] < MAX_ATTEMPTS:
                retry_at[idx] = time_() + 0.05 * sub_attempt[idx]
                key = str(status)
                stats["subscribe_5xx_retried"][key] = \
                    stats["subscribe_5xx_retried"].get(key, 0) + 1
                return
            if status >= 200 and sub_status[idx] == 0:
                sub_status[idx] = status
                key = str(status)
                stats["subscribe_statuses"][key] = stats["subscribe_statuses"].get(key, 0) + 1

    stdin_buf = [b""]

    def pump(timeout: float) -> list[str]:
        commands = []
        for key, _ in sel.select(timeout):
            k = key.data
            if k == -1:
                try:
                    chunk = os.read(stdin_fd, 4096)
                except BlockingIOError:
                    continue
                if not chunk:  # parent gone
                    commands.append("EOF")
                    sel.unregister(stdin_fd)
                    continue
                stdin_buf[0] += chunk
                *lines, stdin_buf[0] = stdin_buf[0].split(b"\n")
                commands += [ln.decode().strip() for ln in lines if ln.strip()]
                continue
            sock = socks[k]
            for _ in range(512):
                try:
                    data, addr = sock.recvfrom(65535)
                except (BlockingIOError, InterruptedError):
                    break
                except OSError:
                    break
                handle(sock, data, addr)
        return commands

    # ---- subscribe phase
    t0 = time.monotonic()
    rate, window = cfg["subscribe_rate"], cfg["subscribe_window"]
    next_i = 0
    retrans_after = 2.0
    deadline = t0 + cfg["subscribe_timeout"]
    outstanding = 0
    while time.monotonic() < deadline:
        now = time.monotonic()
        # pace the first sends at `rate`, at most `window` without a final response
        allowed = min(n_subs, int((now - t0) * rate) + 1)
        outstanding = sum(1 for i in range(max(0, next_i - 2 * window), next_i)
                          if sub_status[i] == 0) if next_i else 0
        while next_i < allowed and outstanding < window:
            subscribe(next_i)
            next_i += 1
            outstanding += 1
        wall = time_()
        for i in range(next_i):
            if retry_at[i] and wall >= retry_at[i]:
                retry_at[i] = 0.0
                sub_attempt[i] += 1
                sub_tries[i] = 0
                subscribe(i)
        if next_i >= n_subs:
            pending = [i for i in range(n_subs) if sub_status[i] == 0]
            for i in pending:
                if retry_at[i]:
                    continue
                if wall - sub_sent_at[i] > retrans_after and sub_tries[i] < 6:
                    subscribe(i)  # same branch: a retransmission
                    stats["subscribe_retransmissions"] += 1
            ok = all(s for s in sub_status) and all(
                first_notify[i] for i in range(n_subs) if 200 <= sub_status[i] < 300)
            if ok:
                break
        if "EOF" in pump(0.01):
            return 1
    ready = {
        "subscribed": sum(1 for s in sub_status if 200 <= s < 300),
        "refused": sum(1 for s in sub_status if s >= 300),
        "no_answer": sum(1 for s in sub_status if s == 0),
        "first_notify": sum(first_notify),
        "seconds": round(time.monotonic() - t0, 3),
        "subscribe_statuses": stats["subscribe_statuses"],
        "subscribe_retransmissions": stats["subscribe_retransmissions"],
        "subscribe_5xx_retried": stats["subscribe_5xx_retried"],
    }
    ready["cpu_s"] = _own_cpu()
    print("READY " + json.dumps(ready), flush=True)

    # ---- measurement phase: answer NOTIFYs until told to drain
    drain = None
    while True:
        cmds = pump(0.05 if drain else 0.5)
        for c in cmds:
            if c.startswith("DRAIN"):
                _, idle, most = c.split()
                drain = (time_(), float(idle), float(most))
            elif c == "EOF":
                return 1
        if drain:
            now = time_()
            begun, idle, most = drain
            quiet_since = max(last_notify[0], begun)
            if now - quiet_since >= idle or now - begun >= most:
                break
    stats["drain_s"] = round(time_() - drain[0], 3)
    stats["drain_timed_out"] = time_() - drain[0] >= drain[2]
    stats["last_notify"] = last_notify[0]
    stats["cpu_s"] = _own_cpu()
    with open(cfg["records"], "w") as fh:
        fh.write("".join(f"{t:.6f} {w} {c} {m}\n"
                         for t, w, c, m in zip(rec_t, rec_w, rec_c, rec_m)))
    print("DONE " + json.dumps(stats), flush=True)
    return 0


class Farm:
    """The harness's handle on the farm child process."""

    def __init__(self, step_dir: Path, cfg: dict):
        self.cfg = dict(cfg, records=str(step_dir / "notifies.txt"))
        env = dict(os.environ)
        env["PYTHONPATH"] = str(REPO) + os.pathsep + env.get("PYTHONPATH", "")
        self.err = open(step_dir / "farm.stderr", "wb")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "bench.notify_bench", "--farm-child", json.dumps(self.cfg)],
            cwd=REPO, env=env, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
            stderr=self.err, start_new_session=True)
        self.pid = self.proc.pid

    def _line(self, prefix: str, timeout: float) -> dict:
        assert self.proc.stdout is not None
        fd = self.proc.stdout.fileno()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            sel = selectors.DefaultSelector()
            sel.register(fd, selectors.EVENT_READ)
            ready = sel.select(min(1.0, max(0.0, deadline - time.monotonic())))
            sel.close()
            if ready:
                line = self.proc.stdout.readline().decode(errors="replace")
                if not line:
                    raise RuntimeError(f"farm exited (rc {self.proc.poll()})")
                if line.startswith(prefix + " "):
                    return json.loads(line[len(prefix) + 1:])
            elif self.proc.poll() is not None:
                raise RuntimeError(f"farm exited (rc {self.proc.returncode})")
        raise RuntimeError(f"farm: no {prefix} within {timeout:.0f} s")

    def ready(self, timeout: float) -> dict:
        return self._line("READY", timeout)

    def drain(self, idle: float, most: float) -> dict:
        assert self.proc.stdin is not None
        self.proc.stdin.write(f"DRAIN {idle} {most}\n".encode())
        self.proc.stdin.flush()
        done = self._line("DONE", most + 60)
        self.proc.wait(timeout=30)
        return done

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=10)
        self.err.close()


# =========================================================================== analysis

def read_sipp_log(step_dir: Path) -> tuple[dict, dict]:
    """{(call, cseq): time sent}, {(call, cseq): time its 200 arrived}, from the
    -trace_logs lines of publish_steady.xml. An S line carries the CSeq of the call's
    previous request ([cseq] before a send), so it is for CSeq + 1."""
    sent: dict[tuple[int, int], float] = {}
    answered: dict[tuple[int, int], float] = {}
    for path in step_dir.glob("*_logs.log"):
        with open(path) as fh:
            for line in fh:
                parts = line.split()
                if len(parts) < 4 or parts[0] not in ("S", "R"):
                    continue
                try:
                    call, cseq, t = int(parts[1]), int(parts[2]), float(parts[-1])
                except ValueError:
                    continue
                if parts[0] == "S":
                    sent[(call, cseq + 1)] = t
                else:
                    answered[(call, cseq)] = t
    return sent, answered


def pct(values: list[float], q: float, nd: int = 2) -> float | None:
    v = sb.percentile(values, q)
    return None if v is None else round(v, nd)


def summary(values: list[float]) -> dict:
    values.sort()
    return {"samples": len(values), "p50": pct(values, 50), "p90": pct(values, 90),
            "p99": pct(values, 99), "max": round(values[-1], 2) if values else None,
            "min": round(values[0], 2) if values else None,
            "mean": round(statistics.fmean(values), 2) if values else None}


def analyze_notifies(records: Path, answered: dict, n_subs: int, n_res: int,
                     sent: dict | None = None) -> dict:
    """NOTIFY latency, change-to-watcher delay, received against expected, final state.
    `sent`: {(call, cseq): time SIPp sent that PUBLISH}, for 'from_publish_ms'."""
    per_watcher: list[list[tuple[int, float, int]]] = [[] for _ in range(n_subs)]
    with open(records) as fh:
        for line in fh:
            t, w, c, m = line.split()
            per_watcher[int(w)].append((int(c), float(t), int(m)))
    changes: dict[int, list[tuple[int, float]]] = {}
    for (call, cseq), t in answered.items():
        changes.setdefault(call, []).append((cseq, t))
    for v in changes.values():
        v.sort()
    latency, delay, from_publish = [], [], []
    sent = sent or {}
    expected = received = initial = final_ok = final_missing = unmatched = 0
    for w in range(n_subs):
        r = w % n_res + 1
        res_changes = changes.get(r, [])
        last_change = res_changes[-1][0] if res_changes else None
        answered_r = dict(res_changes)
        notes = sorted(per_watcher[w])
        shown = []  # (arrival, change carried) of the NOTIFYs after the first
        for k, (ncseq, t, marker) in enumerate(notes):
            if k == 0 and marker < 0:
                # the NOTIFY answering the SUBSCRIBE, before any PUBLISH (the farm waits
                # for it before SIPp starts): CSeq 1 from esc, 2 from Kamailio
                initial += 1
                continue
            received += 1
            # no marker after the first NOTIFY: the resource has no publication left,
            # the state after the remove (the last change of the resource)
            carried = marker if marker >= 0 else (last_change or -1)
            at = answered_r.get(carried)
            if at is None:
                unmatched += 1
                continue
            latency.append((t - at) * 1000.0)
            st = sent.get((r, carried))
            if st is not None:
                from_publish.append((t - st) * 1000.0)
            shown.append((t, carried))
        expected += len(res_changes)
        # change-to-watcher: first NOTIFY carrying this change or a later one
        j = 0
        for cseq, at in res_changes:
            while j < len(shown) and shown[j][1] < cseq:
                j += 1
            if j < len(shown):
                delay.append((shown[j][0] - at) * 1000.0)
        if res_changes:
            if shown and shown[-1][1] == last_change:
                final_ok += 1
            else:
                final_missing += 1
    return {"expected": expected, "received": received, "folded": expected - received,
            "initial_notifies": initial, "unmatched": unmatched,
            "final_state_ok": final_ok, "final_state_missing": final_missing,
            "latency_ms": summary(latency), "change_to_watcher_ms": summary(delay),
            "from_publish_ms": summary(from_publish)}


def _comm(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as fh:
            args = fh.read().split(b"\0")
        return " ".join(a.decode(errors="replace") for a in args[1:4])[:60]
    except OSError:
        return "?"


def server_log_problems(path: Path) -> dict:
    lines = []
    try:
        with open(path, errors="replace") as fh:
            for line in fh:
                # esc: " ERROR " / " WARNING "; Kamailio: " ERROR: <module> ..."
                if (any(w in line for w in (" ERROR ", " WARNING ", " ERROR:", " WARNING:",
                                            " CRITICAL:", " BUG:", " ALERT:"))
                        or "Traceback" in line) and "authentication is OFF" not in line:
                    lines.append(line.rstrip())
    except OSError:
        pass
    return {"count": len(lines), "first": lines[:10]}


# =========================================================================== one step

def plan(rate: float, resources: int, seconds: float) -> tuple[int, int, float]:
    """(modifies per resource, pause ms, planned seconds): one PUBLISH per resource every
    resources/rate s; initial + modifies + remove = seconds * rate PUBLISH in all."""
    period_ms = 1000.0 * resources / rate
    modifies = max(1, round(seconds * rate / resources) - 2)
    return modifies, int(round(period_ms)), (modifies + 1) * period_ms / 1000 + resources / rate


def make_server(args, name: str, step_dir: Path) -> sb.Server:
    """`esc serve` on args.port (5070 in the private namespace), or Kamailio through
    bench/peers/kamailio/run.sh on 5070 as in bench/sipp_bench.py."""
    if name == "esc":
        port = args.port or (5070 if os.environ.get(sb.NETNS_ENV) else sb.free_port())
        return sb.EscServer(port, "udp", step_dir, args.esc_cmd)
    server = sb.KamailioServer(sb.KAMAILIO_PORT, "udp", step_dir, args.peers,
                               name.split("-", 1)[1], args.kamailio_children)
    server.env["PRELOAD_SQL"] = str(kamailio_watchers_sql(args))
    return server


def kamailio_watchers_sql(args) -> Path:
    """The farm's watchers, authorized in advance in Kamailio's `watchers` table (run.sh
    PRELOAD_SQL; the same for steps without watchers). Without them presence_xml inserts
    a row per new subscription, and its two workers inserting into SQLite at once get
    "database is locked" (db_sqlite sets no busy timeout) and answer 500: 75,000 500s
    for 10,000 SUBSCRIBEs at 2,000/s in a trial. With force_active the row would say
    active anyway; preloading it only keeps the subscribe phase off SQLite writes."""
    path = args.out / f"kamailio-watchers-{args.subscriptions}-{args.resources}.sql"
    if not path.exists():
        now = int(time.time())
        rows = "".join(
            f"INSERT INTO watchers (presentity_uri, watcher_username, watcher_domain, "
            f"event, status, inserted_time) VALUES ('sip:res{i % args.resources + 1}@{HOST}',"
            f" 'w{i}', '{HOST}', 'presence', 1, {now});\n"
            for i in range(args.subscriptions))
        path.write_text("BEGIN;\n" + rows + "COMMIT;\n")
    return path


def run_step(args, server_name: str, mode: str, rate: float, rep: int, step_dir: Path,
             label: str = "") -> dict:
    step_dir.mkdir(parents=True, exist_ok=True)
    watchers = mode == "with"
    modifies, pause_ms, planned_s = plan(rate, args.resources, args.step_seconds)
    calls = args.resources
    step = {"server": server_name, "mode": mode, "label": label or mode, "offered_publish_per_s": rate,
            "repetition": rep, "resources": args.resources,
            "subscriptions": args.subscriptions if watchers else 0,
            "modifies_per_resource": modifies, "pause_ms": pause_ms,
            "publish_planned": calls * (modifies + 2), "planned_s": round(planned_s, 2),
            "started": sb.now_iso(), "dir": str(step_dir), "failures": [], "passed": False}
    server = make_server(args, server_name, step_dir)
    port = server.port
    if not sb.wait_port_free(port):
        step["failures"].append(f"port {port} busy before start")
        return step
    if args.idle_wait > 0:
        step["idle_wait"] = sb.wait_idle(args.idle_wait, args.idle_cpu)
    step["loadavg_before"] = open("/proc/loadavg").read().split()[:3]
    farm = None
    sipp = None
    try:
        if sb.start_server(server, step, step_dir, args.ready_timeout) is not None:
            return step
        if watchers:
            farm = Farm(step_dir, {
                "host": HOST, "port": port, "subscriptions": args.subscriptions,
                "resources": args.resources, "sockets": args.farm_sockets,
                "run_id": f"{os.getpid()}x{int(time.time() * 1000) % 10**8}",
                "subscribe_rate": args.subscribe_rate, "subscribe_window": args.subscribe_window,
                "subscribe_timeout": args.subscribe_timeout})
            try:
                step["farm_ready"] = farm.ready(args.subscribe_timeout + 30)
            except RuntimeError as exc:
                step["failures"].append(f"farm: {exc}")
                return step
            fr = step["farm_ready"]
            if fr["subscribed"] != args.subscriptions or fr["first_notify"] != args.subscriptions:
                step["failures"].append(
                    f"subscribe phase: {fr['subscribed']}/{args.subscriptions} subscribed, "
                    f"{fr['first_notify']} first NOTIFYs, statuses {fr['subscribe_statuses']}")
                return step
            log(f"  {fr['subscribed']} watchers subscribed in {fr['seconds']} s")
        pids0 = server.pids()
        cpu0 = sb.cpu_ticks(pids0, server.root)
        per0 = {p: sb.cpu_ticks([p], None) for p in pids0}
        names = {p: _comm(p) for p in pids0}
        busy0, (self0, child0), wall0 = (sb.system_busy_ticks(), sb.own_and_children_cpu_s(),
                                         time.monotonic())
        sipp_args = SimpleNamespace(
            sipp=args.sipp, scenario=args.scenario,
            sipp_args=f"-d {pause_ms} -set limit {modifies} -l {calls * 2} -trace_logs "
                      + args.sipp_args)
        timeout_s = int(planned_s * args.timeout_factor + 30)
        sipp = sb.run_sipp(sipp_args, step_dir, "udp", port, rate, calls, 1000, timeout_s)
        sipp_end = time.time()
        if farm:
            try:
                step["farm"] = farm.drain(args.drain_idle, args.drain_max)
                step["farm"]["last_notify_after_sipp_s"] = round(
                    step["farm"].pop("last_notify") - sipp_end, 3)
            except RuntimeError as exc:
                step["failures"].append(f"farm: {exc}")
        pids1 = server.pids()
        cpu1 = sb.cpu_ticks(pids1, server.root)
        per1 = {p: sb.cpu_ticks([p], None) for p in pids1}
        busy1, (self1, child1), wall1 = (sb.system_busy_ticks(), sb.own_and_children_cpu_s(),
                                         time.monotonic())
        hwm_kb = sum(sb._status_kb(p, "VmHWM") for p in pids1)
        server_alive = bool(pids1) and sb.pid_alive(server.root)
        step["sipp"] = {k: v for k, v in sipp.items() if k != "cmd"}
        step["sipp_cmd"] = " ".join(shlex.quote(c) for c in sipp["cmd"])
    finally:
        if farm is not None:
            farm.stop()
        step["server_stop"] = server.stop()

    # ---- PUBLISH side
    try:
        st = sb.parse_stat_csv(step_dir / "stat.csv")
    except (OSError, RuntimeError) as exc:
        step["failures"].append(f"no SIPp statistics: {exc}")
        step["sipp_stderr_tail"] = sb.tail_text(step_dir / "sipp.stderr", 2000)
        return step
    step["sipp"].update(st)
    sent, answered = read_sipp_log(step_dir)
    rts = [(answered[k] - sent[k]) * 1000.0 for k in answered if k in sent]
    step["rt_ms"] = summary(rts)
    publishes = len(answered)
    step["publish_count"] = publishes
    elapsed = (max(answered.values()) - min(sent.values())) if answered and sent else 0.0
    step["elapsed_s"] = round(elapsed, 3)
    step["achieved_publish_per_s"] = round(publishes / elapsed, 1) if elapsed else 0.0
    cpu_s = (cpu1 - cpu0) / sb.CLK_TCK
    wall = max(wall1 - wall0, 1e-6)
    machine_cpu = (busy1 - busy0) / sb.CLK_TCK
    # the farm reports its own CPU when ready and when done; it has exited (reaped) by
    # now, so all of it is in our children's CPU beside SIPp's
    fm = step.get("farm") or {}
    farm_cpu = farm_total = 0.0
    if "cpu_s" in fm:
        farm_total = fm["cpu_s"]
        farm_cpu = fm["cpu_s"] - step["farm_ready"]["cpu_s"]
    sipp_cpu = (child1 - child0) - farm_total
    step["metrics"] = {
        "server_cpu_s": round(cpu_s, 3),
        "server_cpu_us_per_publish": round(cpu_s * 1e6 / publishes, 1) if publishes else None,
        "peak_rss_mb": round(hwm_kb / 1024, 1), "alive_at_end": server_alive,
        "measured_wall_s": round(wall, 2),
        # CPUs used by each server process (the SIP process, the store process, ...)
        "per_process_cpu": {f"{p} {names.get(p, '?')}": round((per1[p] - per0.get(p, 0)) / sb.CLK_TCK / wall, 2)
                            for p in per1}}
    # in CPUs over the step (SIPp + drain)
    sb.record_cpu_share(step, args, wall, machine_cpu, cpu_s, sipp_cpu, self1 - self0,
                        **({"farm": farm_cpu} if watchers else {}))

    # ---- NOTIFY side
    records = step_dir / "notifies.txt"
    if watchers and records.exists():
        step["notify"] = analyze_notifies(records, answered, args.subscriptions, args.resources,
                                          sent)
        if not args.keep_raw:
            records.unlink()
    step["server_log"] = server_log_problems(step_dir / "server.log")
    if not args.keep_raw:
        for f in step_dir.glob("*_logs.log"):
            f.unlink()
        for f in step_dir.glob("*_rtt.csv"):
            f.unlink()
    for f in step_dir.glob("*_errors.log"):
        sb.truncate_file(f)

    # ---- criterion (PUBLISH)
    fails = step["failures"]
    if st["failed_calls"]:
        fails.append(f"{st['failed_calls']} failed calls {st['failed_by_cause']}")
    if st["retransmissions"]:
        fails.append(f"{st['retransmissions']} retransmissions")
    if st["successful_calls"] < calls:
        fails.append(f"only {st['successful_calls']}/{calls} calls succeeded")
    p99 = step["rt_ms"]["p99"]
    if p99 is None or p99 >= args.p99_ms:
        fails.append(f"PUBLISH p99 {p99} ms >= {args.p99_ms} ms")
    if args.min_achieved and step["achieved_publish_per_s"] < args.min_achieved * rate:
        fails.append(f"achieved {step['achieved_publish_per_s']} PUBLISH/s "
                     f"< {args.min_achieved:.0%} of offered")
    if not server_alive:
        fails.append("server died during the step")
    step["passed"] = not fails
    # ---- NOTIFY checks, reported beside the criterion
    if watchers:
        problems = []
        n = step.get("notify")
        if not n:
            problems.append("no NOTIFY records")
        else:
            if n["final_state_missing"]:
                problems.append(f"{n['final_state_missing']} watchers never got their "
                                f"resource's final state")
            if n["unmatched"]:
                problems.append(f"{n['unmatched']} NOTIFYs carry a change SIPp has no 200 for")
            if n["received"] > n["expected"]:
                problems.append(f"{n['received']} NOTIFYs > {n['expected']} expected")
        fm = step.get("farm") or {}
        for key in ("wrong_resource", "terminated", "unparsed"):
            if fm.get(key):
                problems.append(f"{fm[key]} NOTIFYs {key.replace('_', ' ')}")
        if fm.get("drain_timed_out"):
            problems.append(f"NOTIFYs still arriving {args.drain_max:g} s after SIPp ended")
        if step["server_log"]["count"]:
            problems.append(f"{step['server_log']['count']} warning/error lines in the server log")
        step["notify_problems"] = problems
        lat = (n or {}).get("latency_ms", {}).get("p99")
        step["notify_p99_ok"] = lat is not None and lat < args.p99_ms
    return step


# =========================================================================== runner

def fmt(v, spec="{:g}") -> str:
    return "-" if v is None else spec.format(v)


def table(doc: dict) -> str:
    hdr = ["server", "run", "rate", "passed", "achieved", "PUB p50/p99 ms",
           "NOTIFY lat p50/p99 ms", "PUB->NOTIFY p50/p99 ms", "change->watcher p50/p99 ms",
           "NOTIFYs recv/expected", "folded", "final ok", "CPU srv/farm", "other CPU", "notes"]
    rows = []
    for s in doc["steps"]:
        rt = s.get("rt_ms") or {}
        n = s.get("notify") or {}
        lat = n.get("latency_ms") or {}
        fp = n.get("from_publish_ms") or {}
        dl = n.get("change_to_watcher_ms") or {}
        cs = s.get("cpu_share") or {}
        notes = "; ".join(s["failures"] + s.get("notify_problems", []))
        rows.append([
            s.get("server", "esc"),
            s["label"] + (f" r{s['repetition']}" if s["label"] == "half" else ""),
            f"{s['offered_publish_per_s']:g}", "yes" if s["passed"] else "NO",
            fmt(s.get("achieved_publish_per_s"), "{:.0f}"),
            f"{fmt(rt.get('p50'))}/{fmt(rt.get('p99'))}",
            f"{fmt(lat.get('p50'))}/{fmt(lat.get('p99'))}" if n else "-",
            f"{fmt(fp.get('p50'))}/{fmt(fp.get('p99'))}" if n else "-",
            f"{fmt(dl.get('p50'))}/{fmt(dl.get('p99'))}" if n else "-",
            f"{n['received']}/{n['expected']}" if n else "-",
            (f"{n['folded']} ({n['folded'] / n['expected']:.0%})" if n.get("expected") else "-"),
            (f"{n['final_state_ok']}/{n['final_state_ok'] + n['final_state_missing']}"
             if n else "-"),
            f"{fmt(cs.get('server'))}/{fmt(cs.get('farm'))}"
            if s["mode"] == "with" else fmt(cs.get("server")),
            fmt(cs.get("other")), notes[:90]])
    widths = [max(len(str(x)) for x in col) for col in zip(hdr, *rows)]
    line = lambda r: "  ".join(str(x).ljust(w) for x, w in zip(r, widths))  # noqa: E731
    out = [line(hdr), line(["-" * w for w in widths])] + [line(r) for r in rows]
    results = doc.get("result") or {}
    for name in doc["config"]["servers"]:
        res = results.get(name) or {}
        out.append("")
        out.append(f"{name}: max PUBLISH/s passing without watchers: "
                   f"{fmt(res.get('max_without'))}; with {doc['config']['subscriptions']} "
                   f"watchers: {fmt(res.get('max_with'))}; ratio "
                   f"{fmt(res.get('capacity_ratio'), '{:.0%}')} (target >= 70%)")
        if res.get("half"):
            h = res["half"]
            out.append(f"{name}: at half the maximum without watchers ({h['rate']:g} "
                       f"PUBLISH/s, with watchers, {h['runs']} runs): NOTIFY latency p99 "
                       f"{h['p99_ms']} ms (spread {h['p99_min']}-{h['p99_max']}), p50 "
                       f"{h['p50_ms']} ms; PUBLISH->NOTIFY p99 {h['from_publish_p99_ms']} ms, "
                       f"p50 {h['from_publish_p50_ms']} ms; target p99 < "
                       f"{doc['config']['p99_ms']:g} ms: {'met' if h['met'] else 'NOT met'}")
    for sk in doc.get("skipped") or []:
        out.append("")
        out.append(f"{sk['server']}: not measured: {sk['reason']}")
    if not any(n.startswith("kamailio") for n in doc["config"]["servers"]) \
            and not any(sk["server"].startswith("kamailio") for sk in doc.get("skipped") or []):
        out.append("")
        out.append("Kamailio: not selected (--servers), not measured.")
    return "\n".join(out)


def summarize_server(steps: list[dict], args) -> dict:
    res: dict = {}
    for mode in MODES:
        passing = [s["offered_publish_per_s"] for s in steps
                   if s["mode"] == mode and s["label"] == mode and s["passed"]]
        res[f"max_{mode}"] = max(passing) if passing else None
    if res["max_without"] and res["max_with"] is not None:
        res["capacity_ratio"] = round(res["max_with"] / res["max_without"], 3)
    half = [s for s in steps if s["label"] == "half"]

    def vals(key: str, q: str) -> list[float]:
        return [s["notify"][key][q] for s in half
                if (s.get("notify") or {}).get(key, {}).get(q) is not None]
    p99s, p50s = vals("latency_ms", "p99"), vals("latency_ms", "p50")
    fp99s, fp50s = vals("from_publish_ms", "p99"), vals("from_publish_ms", "p50")
    if half:
        res["half"] = {"rate": half[0]["offered_publish_per_s"], "runs": len(half),
                       "p99_ms": statistics.median(p99s) if p99s else None,
                       "p99_min": min(p99s) if p99s else None,
                       "p99_max": max(p99s) if p99s else None,
                       "p50_ms": statistics.median(p50s) if p50s else None,
                       "from_publish_p99_ms": statistics.median(fp99s) if fp99s else None,
                       "from_publish_p50_ms": statistics.median(fp50s) if fp50s else None,
                       "met": bool(p99s) and max(p99s) < args.p99_ms,
                       "publish_passed": all(s["passed"] for s in half)}
    return res


def summarize(doc: dict, args) -> None:
    doc["result"] = {name: summarize_server([s for s in doc["steps"]
                                             if s.get("server", "esc") == name], args)
                     for name in doc["config"]["servers"]}


def availability(args) -> tuple[list[str], list[dict]]:
    """The servers of --servers (default: esc and every Kamailio mode installed); a
    Kamailio that is not installed is skipped with a line saying so."""
    return sb.availability(SimpleNamespace(servers=args.servers, esc_cmd=args.esc_cmd,
                                           peers=args.peers))


def benchmark(args) -> int:
    out: Path = args.out
    out.mkdir(parents=True, exist_ok=True)
    servers, skipped = availability(args)
    machine = sb.machine_info(SimpleNamespace(sipp=args.sipp))
    doc = {
        "schema": 2, "tool": "bench/notify_bench.py", "argv": sys.argv,
        "started": sb.now_iso(), "finished": None, "machine": machine,
        "git_commit": sb.cmd_version(["git", "-C", str(REPO), "rev-parse", "HEAD"]),
        "config": {
            "servers": servers, "subscriptions": args.subscriptions,
            "resources": args.resources,
            "rates": args.rates, "step_seconds": args.step_seconds,
            "p99_ms": args.p99_ms, "min_achieved_ratio": args.min_achieved,
            "half_repeat": args.half_repeat, "scenario": str(args.scenario),
            "scenario_sha256": sb.sha256(args.scenario), "esc_cmd": args.esc_cmd,
            "peers": str(args.peers), "kamailio_port": sb.KAMAILIO_PORT,
            "kamailio_children": args.kamailio_children,
            "farm_sockets": args.farm_sockets, "subscribe_rate": args.subscribe_rate,
            "drain_idle_s": args.drain_idle, "nice": os.getpriority(os.PRIO_PROCESS, 0),
            "netns": bool(os.environ.get(sb.NETNS_ENV)), "smoke": args.smoke},
        "skipped": skipped,
        "steps": [], "result": None,
    }
    log(f"servers: {', '.join(servers) or 'none'}; results -> {out}")
    deadline = time.monotonic() + args.time_limit * 60
    try:
        for name in servers:
            for mode in args.modes:
                for rate in args.rates:
                    if time.monotonic() > deadline:
                        doc["stopped"] = f"time limit ({args.time_limit} min)"
                        break
                    step_dir = out / "steps" / f"{name}-{mode}-{rate:g}"
                    log(f"{name}: {mode} watchers, {rate:g} PUBLISH/s ...")
                    step = run_step(args, name, mode, rate, 1, step_dir)
                    step["finished"] = sb.now_iso()
                    doc["steps"].append(step)
                    report(step)
                    sb.write_results(out, doc)
                    if not step["passed"]:
                        break
            summarize(doc, args)
            mx = doc["result"][name].get("max_without")
            if args.half_repeat and mx and "with" in args.modes:
                half = mx / 2
                for rep in range(1, args.half_repeat + 1):
                    if time.monotonic() > deadline:
                        break
                    log(f"{name}: half: with watchers, {half:g} PUBLISH/s "
                        f"(rep {rep}/{args.half_repeat}) ...")
                    step = run_step(args, name, "with", half, rep,
                                    out / "steps" / f"{name}-half-{half:g}-r{rep}", label="half")
                    step["finished"] = sb.now_iso()
                    doc["steps"].append(step)
                    report(step)
                    sb.write_results(out, doc)
    except (sb.Interrupted, KeyboardInterrupt) as exc:
        doc["interrupted"] = str(exc) or "KeyboardInterrupt"
        log(f"interrupted: {doc['interrupted']}")
    finally:
        summarize(doc, args)
        doc["finished"] = sb.now_iso()
        doc["table"] = table(doc)
        sb.write_results(out, doc)
    print()
    print(doc["table"])
    print(f"\nresults: {out / 'results.json'}   commit {doc['git_commit']}")
    return 130 if doc.get("interrupted") else 0


def report(step: dict) -> None:
    rt = step.get("rt_ms") or {}
    n = step.get("notify") or {}
    lat = n.get("latency_ms") or {}
    log(f"  {'PASS' if step['passed'] else 'FAIL'}: {step.get('achieved_publish_per_s')} "
        f"PUBLISH/s, PUBLISH p50={rt.get('p50')} p99={rt.get('p99')} ms"
        + (f", NOTIFY p50={lat.get('p50')} p99={lat.get('p99')} ms, "
           f"{n.get('received')}/{n.get('expected')} NOTIFYs, "
           f"final state {n.get('final_state_ok')}/"
           f"{(n.get('final_state_ok') or 0) + (n.get('final_state_missing') or 0)}" if n else "")
        + f", cpu {step.get('cpu_share')}"
        + ("" if step["passed"] else f"  [{'; '.join(step['failures'])}]")
        + (f"  notify problems: {step['notify_problems']}" if step.get("notify_problems") else ""))


# =========================================================================== CLI

def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="notify_bench", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--servers", type=lambda s: [x for x in s.split(",") if x], default=None,
                   help=f"comma list of {','.join(sb.ALL_SERVERS)}, each run in turn "
                        "[default: esc and every Kamailio mode installed]")
    p.add_argument("--rates", type=sb.parse_rates, default=list(DEFAULT_LADDER),
                   help="offered PUBLISH/s ladder, run without then with watchers, each up "
                        "to its first failing rate, for each server")
    p.add_argument("--modes", type=lambda s: [x for x in s.split(",") if x],
                   default=list(MODES), help="without,with (watchers)")
    p.add_argument("--subscriptions", type=int, default=10000)
    p.add_argument("--resources", type=int, default=1000)
    p.add_argument("--step-seconds", type=float, default=10.0,
                   help="planned duration of the PUBLISH load per step")
    p.add_argument("--half-repeat", type=int, default=3,
                   help="steps with watchers at half the maximum rate without (0: none)")
    p.add_argument("--p99-ms", type=float, default=50.0)
    p.add_argument("--min-achieved", type=float, default=0.90,
                   help="a step fails if achieved PUBLISH/s < this fraction of offered")
    p.add_argument("--farm-sockets", type=int, default=20,
                   help="UDP sockets of the watcher farm (watcher i on socket i mod this)")
    p.add_argument("--subscribe-rate", type=float, default=2000.0,
                   help="SUBSCRIBEs per second of the farm's subscribe phase")
    p.add_argument("--subscribe-window", type=int, default=500,
                   help="most SUBSCRIBEs without a final response")
    p.add_argument("--subscribe-timeout", type=float, default=180.0)
    p.add_argument("--drain-idle", type=float, default=2.0,
                   help="after SIPp: stop when no NOTIFY came for this long")
    p.add_argument("--drain-max", type=float, default=60.0)
    p.add_argument("--out", type=Path, default=None,
                   help="output directory (default bench/results/notify-<timestamp>)")
    p.add_argument("--smoke", action="store_true",
                   help="tiny run: 50 watchers on 10 resources, 20 PUBLISH/s for 2 s, "
                        "without and with watchers, no half steps")
    p.add_argument("--esc-cmd", default=None,
                   help="command template for the server; {host} {port} {tmpdir} {store}")
    p.add_argument("--port", type=int, default=0,
                   help="esc's port (0: 5070 in the private namespace, else a free one); "
                        "Kamailio's is 5070, fixed by its cfg")
    p.add_argument("--peers", type=Path, default=sb.DEFAULT_PEERS,
                   help="peers directory (kamailio/run.sh)")
    p.add_argument("--kamailio-children", type=int, default=None,
                   help="CHILDREN for run.sh (UDP workers and TCP readers; run.sh default 2)")
    p.add_argument("--scenario", type=Path, default=DEFAULT_SCENARIO)
    sb.add_run_arguments(p, idle_wait=30.0)
    p.add_argument("--time-limit", type=float, default=120.0,
                   help="minutes; no new step starts after this")
    p.add_argument("--keep-raw", action="store_true",
                   help="keep the farm's NOTIFY records and SIPp's log per step")
    p.add_argument("--farm-child", default=None, help=argparse.SUPPRESS)
    return p


def main(argv: list[str] | None = None) -> int:
    p = build_parser()
    args = p.parse_args(argv)
    if args.farm_child:
        return farm_main(json.loads(args.farm_child))
    bad = [m for m in args.modes if m not in MODES]
    if bad:
        p.error(f"unknown mode(s) {bad}")
    bad = [s for s in (args.servers or []) if s not in sb.ALL_SERVERS]
    if bad:
        p.error(f"unknown server(s) {bad}; choose from {sb.ALL_SERVERS}")
    args.peers = args.peers.resolve()
    if args.smoke:
        args.subscriptions, args.resources = 50, 10
        args.rates, args.step_seconds, args.half_repeat = [20.0], 2.0, 0
        args.idle_wait, args.drain_idle, args.time_limit = 0, 1.0, 5
        args.subscribe_rate, args.farm_sockets = 500.0, 2
    if args.esc_cmd is None:
        args.esc_cmd = sb.default_esc_cmd()
    if args.out is None:
        args.out = HERE / "results" / ("notify-" + dt.datetime.now().strftime("%Y%m%d-%H%M%S"))
    args.out = args.out.resolve()
    args.scenario = args.scenario.resolve()
    if not shutil.which(args.sipp) and not Path(args.sipp).exists():
        print("sipp not found (apt-get install sip-tester)", file=sys.stderr)
        return 2
    if args.netns and not os.environ.get(sb.NETNS_ENV):
        return sb.reexec_in_netns(args, script=Path(__file__))
    sb.prepare_process(args)
    return benchmark(args)


if __name__ == "__main__":
    sys.exit(main())
