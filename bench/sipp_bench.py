#!/usr/bin/env python3
"""SIPp PUBLISH benchmark: our ESC (`esc serve`) against Kamailio, side by side.

Per step: start the server fresh, drive it with SIPp (`publish_cycle.xml`: per call
an initial PUBLISH, a refresh, a modify and a remove on its own resource), read
SIPp's statistics, stop the server and check that every process is gone.  Rates
are stepped up per server and transport until the first failing step.

    python -m bench.sipp_bench                       # all available servers, UDP+TCP
    python -m bench.sipp_bench --servers kamailio-memory --transports udp \
        --rates 2000,4000,8000,16000 --repeat 3
    python -m bench.sipp_bench --smoke --servers esc --transports udp
    python -m bench.sipp_bench --sustained --servers esc --transports udp \
        --rates 3000,3500,4000,4500,5000,5500,6000

Steps last --step-seconds (10 s), shorter than the 32 s the server keeps each
transaction: a rate can pass a step and still not be sustainable.  --sustained makes
each step last at least 60 s and also judges the part after --steady-after seconds
(40 s: the transaction table is full and expiring as fast as it fills) on its own.

Loopback only.  By default (root + `unshare` available) the whole run is
re-executed inside a private network namespace (`unshare -n`) that has nothing but
`lo`.  See bench/README.md for the figures and the criterion.
"""
from __future__ import annotations

import argparse
import csv
import datetime as dt
import hashlib
import json
import math
import os
import platform
import random
import shlex
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
DEFAULT_PEERS = HERE / "peers"
DEFAULT_SCENARIO = HERE / "scenarios" / "publish_cycle.xml"
HOST = "127.0.0.1"
ALL_SERVERS = ("esc", "kamailio-sqlite", "kamailio-memory")
ALL_TRANSPORTS = ("udp", "tcp")
DEFAULT_LADDER = [500, 1000, 1500, 2000, 3000, 4000, 5000, 6000, 8000, 10000,
                  12000, 14000, 16000, 18000, 20000, 24000, 28000, 32000]
PUBLISH_PER_CALL = 4
DEFAULT_STEP_SECONDS = 10.0
# The server keeps a transaction for Timer J, 64*T1 = 32 s: a sustained rate is one that
# holds once the transaction table is full and expiring as fast as it fills.
SUSTAINED_STEP_SECONDS = 60.0
SUSTAINED_STEADY_AFTER = 40.0
CLK_TCK = os.sysconf("SC_CLK_TCK")
KAMAILIO_PORT = 5070  # fixed by peers/kamailio/kamailio.cfg
NETNS_ENV = "ESC_BENCH_IN_NETNS"


def log(msg: str) -> None:
    print(f"[{dt.datetime.now():%H:%M:%S}] {msg}", flush=True)


def now_iso() -> str:
    return dt.datetime.now(dt.timezone.utc).astimezone().isoformat(timespec="seconds")


class Interrupted(Exception):
    pass


def _on_signal(signum, _frame):
    # first signal: unwind and clean up; further ones are ignored so that the
    # clean-up (stopping servers, SIPp) is not itself interrupted
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    raise Interrupted(f"signal {signum}")


def net_interfaces() -> list[str]:
    """Interfaces of this process's network namespace (/sys may show the host's)."""
    try:
        with open("/proc/self/net/dev") as fh:
            return sorted(l.split(":")[0].strip() for l in fh if ":" in l)
    except OSError:
        return []


# --------------------------------------------------------------------------- /proc

def _stat_fields(pid: int) -> list[str] | None:
    try:
        with open(f"/proc/{pid}/stat") as fh:
            data = fh.read()
    except OSError:
        return None
    # fields after "(comm)": index 0 = field 3 (state)
    return data[data.rindex(")") + 2:].split()


def pid_alive(pid: int) -> bool:
    f = _stat_fields(pid)
    return f is not None and f[0] not in ("Z", "X")


def descendants(root: int) -> list[int]:
    """root and every live descendant process of it."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        f = _stat_fields(int(entry))
        if f is None:
            continue
        children.setdefault(int(f[1]), []).append(int(entry))
    out, todo = [], [root]
    while todo:
        pid = todo.pop()
        if pid_alive(pid):
            out.append(pid)
        todo.extend(children.get(pid, []))
    return sorted(set(out))


def cpu_ticks(pids: list[int], root: int | None) -> int:
    """utime+stime of the live processes (all threads) + the root's reaped children."""
    total = 0
    for pid in pids:
        f = _stat_fields(pid)
        if f is None:
            continue
        total += int(f[11]) + int(f[12])
        if pid == root:
            total += int(f[13]) + int(f[14])
    return total


def system_busy_ticks() -> int:
    """Busy CPU ticks of the whole machine (all CPUs), from /proc/stat."""
    with open("/proc/stat") as fh:
        f = [int(x) for x in fh.readline().split()[1:]]
    idle = f[3] + (f[4] if len(f) > 4 else 0)  # idle + iowait
    return sum(f[:8]) - idle


def own_and_children_cpu_s() -> tuple[float, float]:
    import resource
    me = resource.getrusage(resource.RUSAGE_SELF)
    ch = resource.getrusage(resource.RUSAGE_CHILDREN)
    return me.ru_utime + me.ru_stime, ch.ru_utime + ch.ru_stime


def wait_idle(max_wait: float, threshold: float) -> dict:
    """Wait until the machine's busy CPU over 1 s is below `threshold` (fraction of one
    CPU), at most `max_wait` seconds. Other jobs on the machine skew every figure."""
    t0 = time.monotonic()
    busy = None
    while True:
        b0 = system_busy_ticks()
        time.sleep(1.0)
        busy = (system_busy_ticks() - b0) / CLK_TCK
        if busy < threshold or time.monotonic() - t0 >= max_wait:
            break
    return {"waited_s": round(time.monotonic() - t0, 1), "busy_cpu": round(busy, 2),
            "idle": busy < threshold}


def _status_kb(pid: int, key: str) -> int:
    try:
        with open(f"/proc/{pid}/status") as fh:
            for line in fh:
                if line.startswith(key + ":"):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


def pss_kb(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/smaps_rollup") as fh:
            for line in fh:
                if line.startswith("Pss:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


def kill_pids(pids: list[int], sig=signal.SIGKILL) -> list[int]:
    killed = []
    for pid in pids:
        if pid_alive(pid):
            try:
                os.kill(pid, sig)
                killed.append(pid)
            except ProcessLookupError:
                pass
    return killed


def wait_gone(pids: list[int], timeout: float) -> list[int]:
    deadline = time.monotonic() + timeout
    while True:
        alive = [p for p in pids if pid_alive(p)]
        if not alive or time.monotonic() > deadline:
            return alive
        time.sleep(0.05)


# --------------------------------------------------------------------------- sockets

def port_free(port: int) -> bool:
    for kind in (socket.SOCK_DGRAM, socket.SOCK_STREAM):
        s = socket.socket(socket.AF_INET, kind)
        try:
            if kind == socket.SOCK_STREAM:
                s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            s.bind((HOST, port))
        except OSError:
            return False
        finally:
            s.close()
    return True


def wait_port_free(port: int, tries: int = 50) -> bool:
    """Wait up to `tries` tenths of a second for the last step's server to let go of
    `port`."""
    for _ in range(tries):
        if port_free(port):
            return True
        time.sleep(0.1)
    return False


def free_port() -> int:
    """A port free for both UDP and TCP on 127.0.0.1 (SIPp's client port)."""
    for _ in range(200):
        port = random.randint(20000, 59999)
        if port_free(port):
            return port
    raise RuntimeError("no free local port")


def sip_options_probe(port: int, timeout: float = 0.3) -> str | None:
    """Send one SIP OPTIONS over UDP; return the status line of any SIP response."""
    tag = "%08x" % random.getrandbits(32)
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        s.bind((HOST, 0))
        lport = s.getsockname()[1]
        msg = (f"OPTIONS sip:{HOST}:{port} SIP/2.0\r\n"
               f"Via: SIP/2.0/UDP {HOST}:{lport};branch=z9hG4bK-probe-{tag}\r\n"
               f"Max-Forwards: 70\r\n"
               f"From: <sip:probe@{HOST}>;tag={tag}\r\n"
               f"To: <sip:{HOST}:{port}>\r\n"
               f"Call-ID: probe-{tag}@{HOST}\r\n"
               f"CSeq: 1 OPTIONS\r\n"
               f"Content-Length: 0\r\n\r\n").encode()
        s.connect((HOST, port))
        s.settimeout(timeout)
        s.send(msg)
        data = s.recv(65535)
    except OSError:  # timeout, ICMP port unreachable (ConnectionRefused), ...
        return None
    finally:
        s.close()
    if data.startswith(b"SIP/2.0 "):
        return data.split(b"\r\n", 1)[0].decode(errors="replace")
    return None


def tcp_connect_probe(port: int) -> bool:
    try:
        with socket.create_connection((HOST, port), timeout=0.5):
            return True
    except OSError:
        return False


def wait_ready(port: int, transport: str, timeout: float, alive=lambda: True) -> str:
    """Wait until the server answers OPTIONS over UDP (and accepts TCP when needed)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not alive():
            raise RuntimeError("server process exited before it was ready")
        status = sip_options_probe(port)
        if status and (transport != "tcp" or tcp_connect_probe(port)):
            return status
        time.sleep(0.1)
    raise RuntimeError(f"no SIP response to OPTIONS on udp {HOST}:{port} within {timeout:.0f}s")


# --------------------------------------------------------------------------- files

def start_server(server, step: dict, step_dir: Path, timeout: float) -> str | None:
    """Start the step's server. A failure is recorded in the step (with the end of its
    log) and its reason returned; None when it runs."""
    try:
        server.start(timeout)
    except Exception as exc:  # noqa: BLE001
        step["failures"].append(f"server start: {exc}")
        step["server_log_tail"] = tail_text(step_dir / "server.log", 2000)
        return str(exc)
    return None


def record_cpu_share(step: dict, args, wall: float, machine: float, server: float,
                     sipp: float, harness: float, **more: float) -> None:
    """The CPUs each party used over the step (1.0 = one core busy all along), as
    step["cpu_share"], with whatever the machine did besides ("other"); a step on a
    machine busy with other work gets a warning. `more`: further parties (the watcher
    farm), in CPU seconds like the rest."""
    other = machine - server - sipp - harness - sum(more.values())
    step["cpu_share"] = {
        "server": round(server / wall, 2), "sipp": round(sipp / wall, 2),
        **{name: round(seconds / wall, 2) for name, seconds in more.items()},
        "harness": round(harness / wall, 2), "other": round(max(other, 0) / wall, 2),
        "machine": round(machine / wall, 2)}
    if other / wall > args.noise_cpu:
        step.setdefault("warnings", []).append(
            f"noisy machine: other processes used {other / wall:.2f} CPU during the step")


def tail_text(path: Path, limit: int = 4000) -> str:
    try:
        with open(path, "rb") as fh:
            fh.seek(0, os.SEEK_END)
            size = fh.tell()
            fh.seek(max(0, size - limit))
            return fh.read().decode(errors="replace")
    except OSError:
        return ""


def truncate_file(path: Path, limit: int = 1 << 20) -> None:
    """Keep at most `limit` bytes (head and tail) of a log file."""
    try:
        size = path.stat().st_size
    except OSError:
        return
    if size <= limit:
        return
    with open(path, "rb") as fh:
        head = fh.read(limit // 2)
        fh.seek(size - limit // 2)
        tail = fh.read()
    with open(path, "wb") as fh:
        fh.write(head + f"\n... [{size - limit} bytes cut] ...\n".encode() + tail)


def dir_size(path: Path) -> int:
    total = 0
    for p in path.rglob("*"):
        try:
            if p.is_file():
                total += p.stat().st_size
        except OSError:
            pass
    return total


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


# --------------------------------------------------------------------------- servers

class Server:
    name = "?"

    def __init__(self, port: int, transport: str, step_dir: Path):
        self.port = port
        self.transport = transport
        self.step_dir = step_dir
        self.root: int | None = None
        self.tmp: Path | None = None
        self.info: dict = {}

    def start(self, ready_timeout: float) -> None:
        raise NotImplementedError

    def pids(self) -> list[int]:
        raise NotImplementedError

    def stop(self) -> dict:
        raise NotImplementedError


class EscServer(Server):
    name = "esc"

    def __init__(self, port, transport, step_dir, cmd_template: str):
        super().__init__(port, transport, step_dir)
        self.cmd_template = cmd_template
        self.proc: subprocess.Popen | None = None
        self._log = None

    def start(self, ready_timeout):
        self.tmp = Path(tempfile.mkdtemp(prefix="escbench-esc-"))
        store = f"sqlite:///{self.tmp}/esc.sqlite3"
        cmd = shlex.split(self.cmd_template.format(host=HOST, port=self.port,
                                                   tmpdir=self.tmp, store=store))
        self.info["cmd"] = cmd
        self._log = open(self.step_dir / "server.log", "wb")
        self.proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=self._log,
                                     stderr=subprocess.STDOUT, cwd=self.tmp,
                                     start_new_session=True)
        self.root = self.proc.pid
        t0 = time.monotonic()
        self.info["probe"] = wait_ready(self.port, self.transport, ready_timeout,
                                        alive=lambda: self.proc.poll() is None)
        self.info["ready_s"] = round(time.monotonic() - t0, 3)

    def pids(self):
        return descendants(self.root) if self.root else []

    def stop(self):
        res = {"clean": True}
        if self.proc is None:
            return res
        pids = self.pids()
        if self.proc.poll() is not None:
            res.update(clean=False, note=f"server had exited (rc {self.proc.returncode}) before stop")
        else:
            self.proc.send_signal(signal.SIGTERM)
            try:
                res["rc"] = self.proc.wait(timeout=10)
                res["stop_s"] = "<10"
            except subprocess.TimeoutExpired:
                res.update(clean=False, note="no exit within 10 s of SIGTERM: SIGKILL")
                try:
                    os.killpg(self.proc.pid, signal.SIGKILL)  # the group we created
                except ProcessLookupError:
                    pass
                self.proc.wait(timeout=10)
        left = wait_gone(pids, 5)
        if left:
            res.update(clean=False, leftover_killed=kill_pids(left))
            wait_gone(left, 5)
        if self._log:
            self._log.close()
        if self.tmp:
            res["store_bytes"] = dir_size(self.tmp)
            shutil.rmtree(self.tmp, ignore_errors=True)
        truncate_file(self.step_dir / "server.log")
        return res


class KamailioServer(Server):
    def __init__(self, port, transport, step_dir, peers: Path, mode: str,
                 children: int | None = None):
        super().__init__(port, transport, step_dir)
        self.run_sh = peers / "kamailio" / "run.sh"
        self.mode = mode
        self.name = f"kamailio-{mode}"
        self.env = dict(os.environ)
        self.env["PUBL_CACHE"] = "1" if mode == "sqlite" else "2"
        if mode == "sqlite":
            self.env["JOURNAL"] = "WAL"
        else:
            self.env.pop("JOURNAL", None)
        if children:
            self.env["CHILDREN"] = str(children)
        self._pids: list[int] = []

    def _run(self, action: str, timeout: float) -> subprocess.CompletedProcess:
        return subprocess.run(["bash", str(self.run_sh), action], env=self.env,
                              capture_output=True, text=True, timeout=timeout)

    def start(self, ready_timeout):
        self.tmp = Path(tempfile.mkdtemp(prefix="escbench-kam-"))
        self.env["RUNDIR"] = str(self.tmp / "kamailio")
        self.info["env"] = {k: self.env.get(k) for k in
                            ("PUBL_CACHE", "JOURNAL", "CHILDREN", "SHM_MB", "RUNDIR")}
        t0 = time.monotonic()
        r = self._run("start", timeout=ready_timeout + 10)
        if r.returncode != 0:
            raise RuntimeError(f"run.sh start failed ({r.returncode}): {r.stderr.strip()[-2000:]}")
        self.root = int(r.stdout.strip().split()[-1])
        self.info["probe"] = wait_ready(self.port, self.transport, ready_timeout,
                                        alive=lambda: pid_alive(self.root))
        self.info["ready_s"] = round(time.monotonic() - t0, 3)
        r = self._run("pids", timeout=10)
        listed = [int(x) for x in r.stdout.split() if x.isdigit()]
        self._pids = sorted(set(listed) | set(descendants(self.root)))
        self.info["pids"] = self._pids

    def pids(self):
        return [p for p in self._pids if pid_alive(p)]

    def stop(self):
        res = {"clean": True}
        pids = sorted(set(self._pids) | (set(descendants(self.root)) if self.root else set()))
        try:
            r = self._run("stop", timeout=20)
            res["run_sh_stop"] = (r.stdout + r.stderr).strip()[-300:]
            if "SIGKILL" in r.stderr:
                res["clean"] = False
        except subprocess.TimeoutExpired:
            res.update(clean=False, note="run.sh stop timed out")
        left = wait_gone(pids, 10)
        if left:
            res.update(clean=False, leftover_killed=kill_pids(left))
            left = wait_gone(left, 5)
        res["all_gone"] = not left
        if self.tmp:
            kdir = self.tmp / "kamailio"
            if (kdir / "kamailio.log").exists():
                shutil.copy(kdir / "kamailio.log", self.step_dir / "server.log")
                truncate_file(self.step_dir / "server.log")
            res["store_bytes"] = sum(p.stat().st_size for p in kdir.glob("presence.db*")
                                     if p.is_file())
            shutil.rmtree(self.tmp, ignore_errors=True)
        return res


# --------------------------------------------------------------------------- SIPp

def parse_stat_csv(path: Path) -> dict:
    with open(path, newline="") as fh:
        rows = [r for r in csv.reader(fh, delimiter=";") if r]
    if len(rows) < 2:
        raise RuntimeError(f"{path.name}: no data rows")
    header, last = rows[0], rows[-1]
    rec = dict(zip(header, last))

    def num(key):
        try:
            return int(float(rec.get(key, "0") or 0))
        except ValueError:
            return 0

    out = {
        "successful_calls": num("SuccessfulCall(C)"),
        "failed_calls": num("FailedCall(C)"),
        "retransmissions": num("Retransmissions(C)"),
        "outgoing_calls": num("OutgoingCall(C)"),
        "dead_call_msgs": num("DeadCallMsgs(C)"),
        "out_of_call_msgs": num("OutOfCallMsgs(C)"),
        "watchdog_major": num("WatchdogMajor(C)"),
        "watchdog_minor": num("WatchdogMinor(C)"),
        "elapsed_c": rec.get("ElapsedTime(C)"),
        "rows": len(rows) - 1,
    }
    out["failed_by_cause"] = {k[len("Failed"):-3]: num(k) for k in header
                              if k.startswith("Failed") and k.endswith("(C)")
                              and k != "FailedCall(C)" and num(k)}
    return out


def parse_rtt_csv(path: Path) -> tuple[list[float], list[float], list[str]]:
    dates, rts, nos = [], [], []
    with open(path) as fh:
        for line in fh:
            parts = line.strip().split(";")
            if len(parts) != 3:
                continue
            try:
                d, r = float(parts[0]), float(parts[1])
            except ValueError:
                continue  # header
            dates.append(d)
            rts.append(r)
            nos.append(parts[2])
    return dates, rts, nos


def percentile(sorted_vals: list[float], q: float) -> float | None:
    """Nearest-rank percentile."""
    if not sorted_vals:
        return None
    k = max(0, min(len(sorted_vals) - 1, math.ceil(q / 100 * len(sorted_vals)) - 1))
    return sorted_vals[k]


def fmt_rate(x: float) -> str:
    return f"{x:.3f}".rstrip("0").rstrip(".")


def run_sipp(args, step_dir: Path, transport: str, port: int, call_rate: float,
             calls: int, rtt_freq: int, timeout_s: int) -> dict:
    lport = free_port()
    cmd = [args.sipp, f"{HOST}:{port}", "-sf", str(args.scenario),
           "-t", "u1" if transport == "udp" else "t1",
           "-i", HOST, "-p", str(lport),
           "-r", fmt_rate(call_rate), "-rp", "1000", "-m", str(calls),
           "-nostdin", "-default_behaviors", "all,-bye",
           "-trace_stat", "-stf", "stat.csv", "-fd", "1",
           "-trace_rtt", "-rtt_freq", str(rtt_freq),
           "-trace_err", "-trace_screen",
           "-buff_size", "1048576",
           "-recv_timeout", "5000",
           "-timeout", f"{timeout_s}s", "-timeout_error",
           *shlex.split(args.sipp_args)]
    res = {"cmd": cmd}
    with open(step_dir / "sipp.stderr", "wb") as err:
        t0 = time.monotonic()
        p = subprocess.Popen(cmd, cwd=step_dir, stdin=subprocess.DEVNULL,
                             stdout=subprocess.DEVNULL, stderr=err, start_new_session=True)
        try:
            rc = p.wait(timeout=timeout_s + 15)
        except subprocess.TimeoutExpired:
            p.terminate()
            try:
                rc = p.wait(timeout=5)
            except subprocess.TimeoutExpired:
                p.kill()
                rc = p.wait(timeout=5)
            res["killed"] = True
        except BaseException:
            p.kill()
            p.wait(timeout=5)
            raise
        res["wall_s"] = round(time.monotonic() - t0, 3)
    res["rc"] = rc
    return res


# --------------------------------------------------------------------------- one step

class PssSampler(threading.Thread):
    def __init__(self, server: Server, period: float = 1.0):
        super().__init__(daemon=True)
        self.server, self.period = server, period
        self.peak_kb = 0
        self._halt = threading.Event()

    def sample(self):
        try:
            self.peak_kb = max(self.peak_kb, sum(pss_kb(p) for p in self.server.pids()))
        except Exception:  # noqa: BLE001 - sampling must never break a step
            pass

    def run(self):
        while not self._halt.wait(self.period):
            self.sample()

    def stop(self):
        self._halt.set()
        self.join(timeout=5)


def make_server(args, name: str, transport: str, step_dir: Path) -> Server:
    if name == "esc":
        return EscServer(args.port, transport, step_dir, args.esc_cmd)
    return KamailioServer(KAMAILIO_PORT, transport, step_dir, args.peers,
                          name.split("-", 1)[1], args.kamailio_children)


RTT_FREQ = 1000  # SIPp -rtt_freq; SIPp 3.6 drops the last partial batch at exit


def planned_calls(args, call_rate: float) -> tuple[int, int]:
    """(calls, rtt_freq): at least min_publish PUBLISH and step_seconds, and a number
    of rtd samples (4 per call) that is a multiple of -rtt_freq, because SIPp writes
    its rtt file in batches of -rtt_freq and never writes the last, partial one."""
    by_publish = math.ceil(args.min_publish / PUBLISH_PER_CALL)
    by_time = math.ceil(args.step_seconds * call_rate * 1.01) + 1
    calls = max(args.min_calls, by_publish, by_time)
    per_batch = RTT_FREQ // PUBLISH_PER_CALL
    if calls < per_batch:
        return calls, calls * PUBLISH_PER_CALL
    return math.ceil(calls / per_batch) * per_batch, RTT_FREQ


def steady_window(dates: list[float], rts: list[float], after_s: float) -> dict:
    """Response times and achieved rate of the PUBLISHes sent `after_s` seconds or more into
    the step (SIPp's rtt file: response date and response time, both in ms)."""
    sent = [d - r for d, r in zip(dates, rts)]
    if not sent:
        return {"after_s": after_s, "samples": 0}
    begin = min(sent) + after_s * 1000.0
    window = sorted(r for s, r in zip(sent, rts) if s >= begin)
    last = max((d for s, d in zip(sent, dates) if s >= begin), default=begin)
    seconds = (last - begin) / 1000.0
    return {"after_s": after_s, "samples": len(window), "seconds": round(seconds, 3),
            "achieved_publish_per_s": round(len(window) / seconds, 1) if seconds > 0 else 0.0,
            "p50": percentile(window, 50), "p99": percentile(window, 99),
            "max": window[-1] if window else None}


def run_step(args, name: str, transport: str, rate: float, rep: int, step_dir: Path) -> dict:
    step_dir.mkdir(parents=True, exist_ok=True)
    call_rate = rate / PUBLISH_PER_CALL
    calls, rtt_freq = planned_calls(args, call_rate)
    expected_s = calls / call_rate
    step = {"server": name, "transport": transport, "offered_publish_per_s": rate,
            "call_rate": call_rate, "calls_planned": calls, "repetition": rep,
            "started": now_iso(), "dir": str(step_dir), "failures": [], "passed": False}
    port = args.port if name == "esc" else KAMAILIO_PORT
    if not wait_port_free(port):
        step["failures"].append(f"port {port} busy before start")
        step["passed"] = False
        return step

    if args.idle_wait > 0:
        step["idle_wait"] = wait_idle(args.idle_wait, args.idle_cpu)
        if not step["idle_wait"]["idle"]:
            log(f"  machine not idle after {args.idle_wait:.0f} s "
                f"(busy {step['idle_wait']['busy_cpu']} CPU): measuring anyway")
    step["loadavg_before"] = open("/proc/loadavg").read().split()[:3]
    server = make_server(args, name, transport, step_dir)
    sampler = None
    try:
        error = start_server(server, step, step_dir, args.ready_timeout)
        if error is not None:
            log(f"  server did not start: {error}\n{step['server_log_tail'][-600:]}")
            return step
        step["server_start"] = server.info
        pids0 = server.pids()
        cpu0 = cpu_ticks(pids0, server.root)
        sampler = PssSampler(server)
        sampler.sample()
        sampler.start()
        timeout_s = int(expected_s * args.timeout_factor + 30)
        busy0, (self0, child0), wall0 = system_busy_ticks(), own_and_children_cpu_s(), time.monotonic()
        sipp = run_sipp(args, step_dir, transport, port, call_rate, calls, rtt_freq, timeout_s)
        pids1 = server.pids()
        cpu1 = cpu_ticks(pids1, server.root)
        busy1, (self1, child1), wall1 = system_busy_ticks(), own_and_children_cpu_s(), time.monotonic()
        sampler.stop()
        sampler.sample()
        hwm_kb = sum(_status_kb(p, "VmHWM") for p in pids1)
        rss_kb = sum(_status_kb(p, "VmRSS") for p in pids1)
        server_alive = bool(pids1) and pid_alive(server.root)
        step["sipp"] = {k: v for k, v in sipp.items() if k != "cmd"}
        step["sipp_cmd"] = " ".join(shlex.quote(c) for c in sipp["cmd"])
    finally:
        if sampler is not None and sampler.is_alive():
            sampler.stop()
        step["server_stop"] = server.stop()

    # ---- SIPp results
    try:
        st = parse_stat_csv(step_dir / "stat.csv")
    except (OSError, RuntimeError) as exc:
        step["failures"].append(f"no SIPp statistics: {exc}")
        step["sipp_stderr_tail"] = tail_text(step_dir / "sipp.stderr", 2000)
        step["passed"] = False
        return step
    step["sipp"].update(st)
    rtt_files = sorted(step_dir.glob("*_rtt.csv"))
    dates, rts, nos = parse_rtt_csv(rtt_files[0]) if rtt_files else ([], [], [])
    srt = sorted(rts)
    step["rt_ms"] = {"samples": len(rts), "p50": percentile(srt, 50), "p90": percentile(srt, 90),
                     "p99": percentile(srt, 99), "max": srt[-1] if srt else None,
                     "mean": round(statistics.fmean(rts), 3) if rts else None}
    # SIPp 3.6 stamps with a coarse clock (one kernel tick, 4 ms at HZ=250): the most
    # common gap between distinct response times (a few carry a +0.001 ms artefact)
    distinct = sorted(set(round(r, 1) for r in rts))
    gaps = [round(b - a, 1) for a, b in zip(distinct, distinct[1:])]
    step["rt_ms"]["resolution_ms"] = statistics.mode(gaps) if gaps else None
    per = {}
    for no in sorted(set(nos)):
        v = sorted(r for r, n in zip(rts, nos) if n == no)
        per[no] = {"n": len(v), "p50": percentile(v, 50), "p99": percentile(v, 99)}
    step["rt_ms"]["per_rtd"] = per
    if args.steady_after is not None:
        step["steady"] = steady_window(dates, rts, args.steady_after)
    # elapsed: first send (first rtd-1 response time minus its rt) to last response
    starts = [d - r for d, r, n in zip(dates, rts, nos) if n == "1"]
    elapsed = (max(dates) - min(starts)) / 1000.0 if dates and starts else None
    if not elapsed or elapsed <= 0:
        elapsed = sipp["wall_s"]
        step["elapsed_source"] = "sipp wall time"
    succ = st["successful_calls"]
    publishes = PUBLISH_PER_CALL * succ
    step["publish_count"] = publishes
    if len(rts) < publishes:
        step.setdefault("warnings", []).append(
            f"only {len(rts)} rtd samples for {publishes} PUBLISH (SIPp rtt file incomplete)")
    step["elapsed_s"] = round(elapsed, 3)
    step["achieved_publish_per_s"] = round(publishes / elapsed, 1) if elapsed else 0.0
    cpu_s = (cpu1 - cpu0) / CLK_TCK
    step["metrics"] = {
        "cpu_s": round(cpu_s, 3),
        "cpu_us_per_publish": round(cpu_s * 1e6 / publishes, 1) if publishes else None,
        "peak_rss_mb": round(hwm_kb / 1024, 1),
        "rss_end_mb": round(rss_kb / 1024, 1),
        "peak_pss_mb": round(sampler.peak_kb / 1024, 1),
        "processes": len(pids1),
        "alive_at_end": server_alive,
    }
    # CPU of everything else on the machine during the step (other jobs skew results)
    record_cpu_share(step, args, max(wall1 - wall0, 1e-6), (busy1 - busy0) / CLK_TCK,
                     cpu_s, child1 - child0, self1 - self0)
    if not args.keep_raw:
        for f in rtt_files:
            f.unlink()
    for f in step_dir.glob("*_errors.log"):
        truncate_file(f)

    # ---- criterion
    fails = step["failures"]
    if st["failed_calls"]:
        fails.append(f"{st['failed_calls']} failed calls {st['failed_by_cause']}")
    if st["retransmissions"]:
        fails.append(f"{st['retransmissions']} retransmissions")
    if succ < calls:
        fails.append(f"only {succ}/{calls} calls succeeded")
    p99 = step["rt_ms"]["p99"]
    if p99 is None or p99 >= args.p99_ms:
        fails.append(f"p99 {p99} ms >= {args.p99_ms} ms")
    if publishes < args.min_publish:
        fails.append(f"{publishes} PUBLISH < {args.min_publish}")
    if elapsed < args.step_seconds:
        fails.append(f"step lasted {elapsed:.2f} s < {args.step_seconds} s")
    if args.min_achieved and step["achieved_publish_per_s"] < args.min_achieved * rate:
        fails.append(f"achieved {step['achieved_publish_per_s']} PUBLISH/s "
                     f"< {args.min_achieved:.0%} of offered")
    if args.steady_after is not None:
        steady = step["steady"]
        if steady["samples"] == 0:
            fails.append(f"no responses after {args.steady_after:g} s")
        else:
            if steady["p99"] >= args.p99_ms:
                fails.append(f"p99 after {args.steady_after:g} s {steady['p99']} ms "
                             f">= {args.p99_ms} ms")
            if args.min_achieved and steady["achieved_publish_per_s"] < args.min_achieved * rate:
                fails.append(f"achieved {steady['achieved_publish_per_s']} PUBLISH/s after "
                             f"{args.steady_after:g} s < {args.min_achieved:.0%} of offered")
    if not server_alive:
        fails.append("server died during the step")
    if not step["server_stop"].get("clean", True):
        step.setdefault("warnings", []).append(f"unclean stop: {step['server_stop']}")
    step["passed"] = not fails
    return step


# --------------------------------------------------------------------------- runner

def availability(args) -> tuple[list[str], list[dict]]:
    wanted = args.servers or list(ALL_SERVERS)
    explicit = args.servers is not None
    ok, skipped = [], []
    for name in wanted:
        reason = None
        if name == "esc":
            exe = shlex.split(args.esc_cmd)[0]
            if not (shutil.which(exe) or Path(exe).exists()):
                reason = f"esc executable not found: {exe}"
        else:
            missing = [b for b in ("kamailio", "sqlite3", "ss") if not shutil.which(b)]
            mods = Path("/usr/lib/x86_64-linux-gnu/kamailio/modules")
            missing += [m for m in ("presence.so", "presence_xml.so", "db_sqlite.so")
                        if not (mods / m).exists()]
            if missing:
                reason = ("Kamailio not installed (missing " + ", ".join(missing) +
                          "; apt-get install kamailio kamailio-presence-modules "
                          "kamailio-sqlite-modules sqlite3)")
            elif not (args.peers / "kamailio" / "run.sh").exists():
                reason = f"{args.peers}/kamailio/run.sh not found (--peers)"
        if reason and not (explicit and name == "esc"):
            print(f"skipping {name}: {reason}", flush=True)
            skipped.append({"server": name, "reason": reason})
        else:
            ok.append(name)
    return ok, skipped


def cmd_version(cmd: list[str], match: str | None = None) -> str | None:
    try:
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return None
    lines = [l.strip() for l in (out.stdout + out.stderr).splitlines() if l.strip()]
    if match:
        lines = [l for l in lines if match in l] or lines
    return lines[0] if lines else None


def machine_info(args) -> dict:
    model = None
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    mem_kb = _status_meminfo()
    try:
        from importlib.metadata import version as pkg_version
        esc_version = pkg_version("esc")
    except Exception:  # noqa: BLE001
        esc_version = None
    try:
        import matplotlib
        mpl = matplotlib.__version__
    except ImportError:
        mpl = None
    git = cmd_version(["git", "-C", str(REPO), "describe", "--always", "--dirty"])
    return {
        "nproc": os.cpu_count(),
        "cpu_model": model,
        "mem_total_mb": round(mem_kb / 1024) if mem_kb else None,
        "kernel": platform.release(),
        "date": now_iso(),
        "netns": bool(os.environ.get(NETNS_ENV)),
        "net_interfaces": net_interfaces(),
        "versions": {
            "sipp": cmd_version([args.sipp, "-v"], "SIPp"),
            "kamailio": cmd_version(["kamailio", "-v"], "version") if shutil.which("kamailio") else None,
            "python": platform.python_version(),
            "esc": esc_version,
            "esc_git": git,
            "matplotlib": mpl,
        },
    }


def _status_meminfo() -> int:
    try:
        for line in open("/proc/meminfo"):
            if line.startswith("MemTotal:"):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


def aggregate(reps: list[dict]) -> dict:
    """One rate = `repeat` repetitions; conservative figures across them."""
    def vals(f):
        return [v for v in (f(s) for s in reps) if v is not None]
    p50 = vals(lambda s: s.get("rt_ms", {}).get("p50"))
    p99 = vals(lambda s: s.get("rt_ms", {}).get("p99"))
    mean = vals(lambda s: s.get("rt_ms", {}).get("mean"))
    cpu = vals(lambda s: s.get("metrics", {}).get("cpu_us_per_publish"))
    rss = vals(lambda s: s.get("metrics", {}).get("peak_rss_mb"))
    pss = vals(lambda s: s.get("metrics", {}).get("peak_pss_mb"))
    ach = vals(lambda s: s.get("achieved_publish_per_s"))
    steady_p99 = vals(lambda s: s.get("steady", {}).get("p99"))
    steady_ach = vals(lambda s: s.get("steady", {}).get("achieved_publish_per_s"))
    return {
        "offered_publish_per_s": reps[0]["offered_publish_per_s"],
        "repetitions": len(reps),
        "passed": all(s["passed"] for s in reps),
        "achieved_publish_per_s": min(ach) if ach else None,
        "p50_ms": statistics.median(p50) if p50 else None,
        "p99_ms": max(p99) if p99 else None,
        "mean_ms": round(statistics.fmean(mean), 3) if mean else None,
        "cpu_us_per_publish": round(statistics.fmean(cpu), 1) if cpu else None,
        "peak_rss_mb": max(rss) if rss else None,
        "peak_pss_mb": max(pss) if pss else None,
        **({"steady_p99_ms": max(steady_p99) if steady_p99 else None,
            "steady_achieved_publish_per_s": min(steady_ach) if steady_ach else None}
           if any("steady" in s for s in reps) else {}),
    }


def write_results(out: Path, doc: dict) -> None:
    tmp = out / "results.json.tmp"
    tmp.write_text(json.dumps(doc, indent=2, default=str))
    tmp.replace(out / "results.json")


def plot(out: Path, doc: dict) -> Path | None:
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib not installed (pip install -e '.[bench]'): no plot", flush=True)
        return None
    fig, ax = plt.subplots(figsize=(10, 6), dpi=110)
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for i, run in enumerate(doc["runs"]):
        pts = [r for r in run["rates"] if r["p99_ms"] is not None]
        if not pts:
            continue
        c = colors[i % len(colors)]
        label = f"{run['server']} {run['transport']}"
        x = [r["offered_publish_per_s"] for r in pts]
        ax.plot(x, [r["p99_ms"] for r in pts], "-o", color=c, label=f"{label} p99")
        ax.plot(x, [r["p50_ms"] for r in pts], "--", color=c, alpha=0.7, label=f"{label} p50")
        bad = [r for r in pts if not r["passed"]]
        if bad:
            ax.plot([r["offered_publish_per_s"] for r in bad], [r["p99_ms"] for r in bad],
                    "x", color="red", markersize=10, mew=2)
    ax.axhline(doc["config"]["p99_ms"], color="grey", lw=1, ls=":")
    ax.text(ax.get_xlim()[0], doc["config"]["p99_ms"], f" p99 limit {doc['config']['p99_ms']} ms",
            va="bottom", fontsize=8, color="grey")
    ax.set_yscale("symlog", linthresh=1)
    ax.set_ylim(bottom=0)
    ax.set_xlabel("offered PUBLISH/s")
    ax.set_ylabel("SIPp response time (ms)")
    m = doc["machine"]
    res = [s["rt_ms"]["resolution_ms"] for s in doc["steps"]
           if ((s.get("rt_ms") or {}).get("resolution_ms") or 0) >= 0.1]
    res_txt = f"SIPp time resolution {statistics.mode(res):g} ms" if res else "SIPp times"
    ax.set_title(f"PUBLISH response time vs offered rate  ({m['nproc']} CPU, "
                 f"{(m.get('cpu_model') or '').strip()})\n"
                 f"{(m['versions']['sipp'] or 'sipp').rstrip('.')}; dashed p50, solid p99, "
                 f"red x = failing rate; {res_txt}", fontsize=9)
    ax.grid(True, which="both", alpha=0.3)
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=8)
    fig.tight_layout()
    path = out / "plot.png"
    fig.savefig(path)
    plt.close(fig)
    return path


def summary_table(doc: dict) -> str:
    base = {r["transport"]: r.get("max_sustained_publish_per_s") for r in doc["runs"]
            if r["server"] == "kamailio-sqlite"}
    hdr = ["server", "transport", "max PUBLISH/s", "achieved", "p50 ms", "p99 ms", "mean ms",
           "CPU us/PUB", "RSS MB", "PSS MB", "x kam-sqlite"]
    rows = []
    for run in doc["runs"]:
        best = run.get("best")
        b = base.get(run["transport"])
        mx = run.get("max_sustained_publish_per_s") or 0
        ratio = f"{mx / b:.2f}" if (b and best) else "-"

        def f(key, fmt="{:g}"):
            v = best.get(key) if best else None
            return "-" if v is None else fmt.format(v)
        rows.append([run["server"], run["transport"], f"{mx:g}" if best else "none",
                     f("achieved_publish_per_s", "{:.0f}"), f("p50_ms"), f("p99_ms"), f("mean_ms", "{:.2f}"),
                     f("cpu_us_per_publish", "{:.0f}"), f("peak_rss_mb", "{:.0f}"),
                     f("peak_pss_mb", "{:.0f}"), ratio])
    widths = [max(len(str(x)) for x in col) for col in zip(hdr, *rows)]
    line = lambda r: "  ".join(str(x).ljust(w) for x, w in zip(r, widths))  # noqa: E731
    return "\n".join([line(hdr), line(["-" * w for w in widths])] + [line(r) for r in rows])


def benchmark(args) -> int:
    out: Path = args.out
    out.mkdir(parents=True, exist_ok=True)
    servers, skipped = availability(args)
    doc = {
        "schema": 1,
        "tool": "bench/sipp_bench.py",
        "argv": sys.argv,
        "started": now_iso(),
        "finished": None,
        "machine": machine_info(args),
        "config": {
            "servers": servers, "transports": args.transports, "repeat": args.repeat,
            "step_seconds": args.step_seconds, "min_publish": args.min_publish,
            "sustained": args.sustained, "steady_after_s": args.steady_after,
            "p99_ms": args.p99_ms, "min_achieved_ratio": args.min_achieved,
            "scenario": str(args.scenario), "scenario_sha256": sha256(args.scenario),
            "peers": str(args.peers), "esc_cmd": args.esc_cmd, "esc_port": args.port,
            "kamailio_children": args.kamailio_children,
            "nice": os.getpriority(os.PRIO_PROCESS, 0), "noise_retries": args.noise_retries,
            "idle_wait_s": args.idle_wait, "idle_cpu": args.idle_cpu, "noise_cpu": args.noise_cpu,
            "kamailio_port": KAMAILIO_PORT, "smoke": args.smoke,
            "netns": bool(os.environ.get(NETNS_ENV)),
        },
        "skipped": skipped,
        "runs": [],
        "steps": [],
    }
    peer_scn = args.peers / "sipp" / "publish_cycle.xml"
    if peer_scn.exists() and sha256(peer_scn) != doc["config"]["scenario_sha256"]:
        print(f"note: {args.scenario} differs from {peer_scn}", flush=True)
    deadline = time.monotonic() + args.time_limit * 60
    log(f"results -> {out}")
    try:
        for name in servers:
            for transport in args.transports:
                ladder = args.server_rates.get(name, args.rates)
                run = {"server": name, "transport": transport, "ladder": ladder, "rates": [],
                       "max_sustained_publish_per_s": None, "best": None, "stopped": None}
                doc["runs"].append(run)
                for rate in ladder:
                    reps = []
                    for rep in range(1, args.repeat + 1):
                        if time.monotonic() > deadline:
                            run["stopped"] = f"time limit ({args.time_limit} min) reached"
                            break
                        step_dir = out / "steps" / f"{name}-{transport}-{rate:g}-r{rep}"
                        log(f"{name} {transport} {rate:g} PUBLISH/s (rep {rep}/{args.repeat}) ...")
                        step = run_step(args, name, transport, rate, rep, step_dir)
                        step["finished"] = now_iso()
                        tries = 0
                        while (not step["passed"] and tries < args.noise_retries
                               and step.get("cpu_share", {}).get("other", 0) > args.noise_cpu):
                            tries += 1
                            log(f"  FAIL on a noisy machine (other processes used "
                                f"{step['cpu_share']['other']} CPU): retry {tries}/{args.noise_retries} "
                                f"[{'; '.join(step['failures'])}]")
                            step["superseded"] = True
                            doc["steps"].append(step)
                            step = run_step(args, name, transport, rate, rep,
                                            step_dir.with_name(f"{step_dir.name}-retry{tries}"))
                            step["finished"] = now_iso()
                            step["noise_retry"] = tries
                        doc["steps"].append(step)
                        reps.append(step)
                        rt = step.get("rt_ms", {})
                        sv = step.get("metrics", {})
                        log(f"  {'PASS' if step['passed'] else 'FAIL'}: "
                            f"ok={step.get('sipp', {}).get('successful_calls')} "
                            f"failed={step.get('sipp', {}).get('failed_calls')} "
                            f"retrans={step.get('sipp', {}).get('retransmissions')} "
                            f"{step.get('achieved_publish_per_s')} PUBLISH/s "
                            f"p50={rt.get('p50')} p99={rt.get('p99')} mean={rt.get('mean')} ms "
                            f"cpu={sv.get('cpu_us_per_publish')} us/PUB "
                            f"rss={sv.get('peak_rss_mb')} pss={sv.get('peak_pss_mb')} MB "
                            f"cpu share={step.get('cpu_share')}"
                            + (f" after {args.steady_after:g} s: "
                               f"{step.get('steady', {}).get('achieved_publish_per_s')} PUBLISH/s "
                               f"p99={step.get('steady', {}).get('p99')} ms"
                               if args.steady_after is not None else "")
                            + ("" if step["passed"] else f"  [{'; '.join(step['failures'])}]"))
                        write_results(out, doc)
                        if not step["passed"]:
                            break
                    if not reps:
                        break
                    agg = aggregate(reps)
                    agg["passed"] = agg["passed"] and len(reps) == args.repeat
                    run["rates"].append(agg)
                    if agg["passed"]:
                        run["max_sustained_publish_per_s"] = agg["offered_publish_per_s"]
                        run["best"] = agg
                    else:
                        run["stopped"] = run["stopped"] or f"first failing rate {rate:g}"
                        break
                    if run["stopped"]:
                        break
                write_results(out, doc)
    except (Interrupted, KeyboardInterrupt) as exc:
        doc["interrupted"] = str(exc) or "KeyboardInterrupt"
        log(f"interrupted: {doc['interrupted']}")
    finally:
        doc["finished"] = now_iso()
        write_results(out, doc)
        try:
            p = plot(out, doc)
            doc["plot"] = str(p) if p else None
        except Exception as exc:  # noqa: BLE001
            doc["plot_error"] = repr(exc)
            print(f"plot failed: {exc!r}", flush=True)
        doc["table"] = summary_table(doc)
        write_results(out, doc)
    print()
    print(doc["table"])
    print(f"\nresults: {out / 'results.json'}   plot: {doc.get('plot')}")
    return 130 if doc.get("interrupted") else 0


# --------------------------------------------------------------------------- CLI

def parse_rates(text: str) -> list[float]:
    return [float(x) for x in text.replace(" ", "").split(",") if x]


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="sipp_bench", description=__doc__.split("\n\n")[0],
        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--servers", type=lambda s: [x for x in s.split(",") if x], default=None,
                   help=f"comma list of {','.join(ALL_SERVERS)} [default: all available]")
    p.add_argument("--transports", type=lambda s: [x for x in s.split(",") if x],
                   default=list(ALL_TRANSPORTS), help="comma list of udp,tcp")
    p.add_argument("--rates", type=parse_rates, default=None,
                   help="offered PUBLISH/s ladder, e.g. 500,1000,2000 (overrides --start/--step/--max)")
    p.add_argument("--start", type=float, default=None, help="ladder start (PUBLISH/s)")
    p.add_argument("--step", type=float, default=None, help="ladder increment (PUBLISH/s)")
    p.add_argument("--max", type=float, default=None, help="ladder end (PUBLISH/s)")
    p.add_argument("--server-rates", action="append", default=[], metavar="SERVER=R1,R2,...",
                   help="per-server ladder, e.g. kamailio-memory=2000,4000,8000 (repeatable)")
    p.add_argument("--step-seconds", type=float, default=None,
                   help="minimum step duration [default: 10, or 60 with --sustained]")
    p.add_argument("--sustained", action="store_true",
                   help="long steps (at least 60 s: longer than the 32 s a transaction is "
                        "kept), also judged after --steady-after seconds on their own")
    p.add_argument("--steady-after", type=float, default=None,
                   help="with --sustained: seconds into a step where the steady window "
                        "starts [default: 40, past Timer J's 32 s]")
    p.add_argument("--min-publish", type=int, default=20000, help="minimum PUBLISH per step")
    p.add_argument("--min-calls", type=int, default=1, help=argparse.SUPPRESS)
    p.add_argument("--p99-ms", type=float, default=50.0, help="p99 limit of the criterion")
    p.add_argument("--min-achieved", type=float, default=0.95,
                   help="a step also fails if achieved PUBLISH/s < this fraction of offered (0: off)")
    p.add_argument("--repeat", type=int, default=1,
                   help="repetitions per rate, each on a fresh server (3 = full criterion)")
    p.add_argument("--out", type=Path, default=None,
                   help="output directory (default bench/results/<timestamp>)")
    p.add_argument("--smoke", action="store_true",
                   help="tiny run: one low rate (40 PUBLISH/s), 20 calls, a few seconds")
    p.add_argument("--esc-cmd", default=None,
                   help="command template for our server; placeholders {host} {port} {tmpdir} {store}")
    p.add_argument("--port", type=int, default=5070, help="port of our server (udp+tcp)")
    p.add_argument("--peers", type=Path, default=DEFAULT_PEERS,
                   help="peers directory (kamailio/run.sh, sipp/)")
    p.add_argument("--kamailio-children", type=int, default=None,
                   help="CHILDREN for run.sh (UDP workers and TCP readers; run.sh default 2)")
    p.add_argument("--scenario", type=Path, default=DEFAULT_SCENARIO, help="SIPp scenario")
    add_run_arguments(p, idle_wait=60.0)
    p.add_argument("--noise-retries", type=int, default=2,
                   help="re-run (fresh server) a failing step measured while other processes "
                        "used more than --noise-cpu; the noisy attempt stays in results.json")
    p.add_argument("--time-limit", type=float, default=240.0,
                   help="minutes; no new step starts after this")
    p.add_argument("--keep-raw", action="store_true", help="keep SIPp's *_rtt.csv files")
    return p


def add_run_arguments(p: argparse.ArgumentParser, idle_wait: float) -> None:
    """The options both benchmarks (this one and notify_bench.py) take for running SIPp
    and keeping the machine quiet."""
    p.add_argument("--sipp", default=shutil.which("sipp") or "sipp", help="sipp binary")
    p.add_argument("--sipp-args", default="",
                   help="extra SIPp options appended to every SIPp command line")
    p.add_argument("--idle-wait", type=float, default=idle_wait,
                   help="before each step wait up to this many seconds for the machine to be idle")
    p.add_argument("--idle-cpu", type=float, default=0.15,
                   help="'idle' = machine busy CPU below this (in CPUs) over 1 s")
    p.add_argument("--noise-cpu", type=float, default=0.10,
                   help="warn when other processes use more than this (in CPUs) during a step")
    p.add_argument("--nice", type=int, default=-10 if os.geteuid() == 0 else 0,
                   help="nice value for the harness and everything it starts (servers, SIPp): "
                        "shields the measurement from other jobs on the machine")
    p.add_argument("--ready-timeout", type=float, default=20.0,
                   help="seconds to wait for a server to answer OPTIONS")
    p.add_argument("--timeout-factor", type=float, default=2.0,
                   help="SIPp -timeout = planned duration x this + 30 s")
    default_netns = os.geteuid() == 0 and bool(shutil.which("unshare")) and bool(shutil.which("ip"))
    p.add_argument("--netns", action=argparse.BooleanOptionalAction, default=default_netns,
                   help="re-execute inside a private network namespace (unshare -n; only lo)")


def default_esc_cmd() -> str:
    venv_esc = REPO / ".venv" / "bin" / "esc"
    exe = str(venv_esc) if venv_esc.exists() else (shutil.which("esc") or "esc")
    # --rate-limit 0: the per-source limiter (default 5000 req/s) would otherwise cap
    # SIPp, which sends everything from one address; Kamailio's config has no limiter
    return (shlex.quote(exe) + " serve --listen udp:{host}:{port} --listen tcp:{host}:{port}"
            " --store {store} --rate-limit 0")


def finalize_args(p: argparse.ArgumentParser, args) -> None:
    bad = [s for s in (args.servers or []) if s not in ALL_SERVERS]
    if bad:
        p.error(f"unknown server(s) {bad}; choose from {ALL_SERVERS}")
    bad = [t for t in args.transports if t not in ALL_TRANSPORTS]
    if bad:
        p.error(f"unknown transport(s) {bad}")
    if args.rates is None:
        if args.start is not None or args.step is not None or args.max is not None:
            start = args.start or 500.0
            step = args.step or start
            stop = args.max or start
            n = int(math.floor((stop - start) / step + 1e-9)) + 1
            args.rates = [start + i * step for i in range(max(n, 1))]
        else:
            args.rates = list(DEFAULT_LADDER)
    sr = {}
    for spec in args.server_rates:
        name, _, rates = spec.partition("=")
        if name not in ALL_SERVERS or not rates:
            p.error(f"--server-rates {spec!r}: expected SERVER=R1,R2,...")
        sr[name] = parse_rates(rates)
    args.server_rates = sr
    if args.sustained:
        if args.smoke:
            p.error("--sustained and --smoke exclude each other")
        if args.step_seconds is None:
            args.step_seconds = SUSTAINED_STEP_SECONDS
        if args.steady_after is None:
            args.steady_after = SUSTAINED_STEADY_AFTER
        if args.step_seconds < args.steady_after + 10:
            p.error(f"--step-seconds {args.step_seconds:g} leaves less than 10 s after "
                    f"--steady-after {args.steady_after:g}")
    elif args.steady_after is not None:
        p.error("--steady-after needs --sustained")
    if args.step_seconds is None:
        args.step_seconds = DEFAULT_STEP_SECONDS
    if args.smoke:
        args.rates = [40.0]
        args.server_rates = {}
        args.min_publish = 0
        args.min_calls = 20
        args.step_seconds = 0
        args.repeat = 1
        args.timeout_factor = 2.0
        args.time_limit = min(args.time_limit, 5)
        args.idle_wait = 0
        args.noise_retries = 0
    if args.repeat < 1:
        p.error("--repeat must be >= 1")
    if args.esc_cmd is None:
        args.esc_cmd = default_esc_cmd()
    if args.out is None:
        args.out = HERE / "results" / dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    args.out = args.out.resolve()
    args.scenario = args.scenario.resolve()
    args.peers = args.peers.resolve()


def reexec_in_netns(args, script: Path | None = None) -> int:
    """Run this same command inside `unshare -n` (new network namespace, lo up).
    `script`: the benchmark file to run there (default this one; bench/notify_bench.py
    passes its own)."""
    argv = [a for a in sys.argv[1:]]
    cmd = ["unshare", "-n", "--", "sh", "-c", 'ip link set lo up && exec "$@"', "sh",
           sys.executable, str((script or Path(__file__)).resolve()), *argv,
           "--no-netns", "--out", str(args.out)]
    env = dict(os.environ, **{NETNS_ENV: "1"})
    env["PYTHONPATH"] = str(REPO) + os.pathsep + env.get("PYTHONPATH", "")
    proc = subprocess.Popen(cmd, env=env)

    def forward(signum, _frame):
        try:
            proc.send_signal(signum)
        except ProcessLookupError:
            pass
    signal.signal(signal.SIGTERM, forward)
    signal.signal(signal.SIGINT, forward)
    return proc.wait()


def main(argv: list[str] | None = None) -> int:
    p = build_parser()
    args = p.parse_args(argv)
    finalize_args(p, args)
    if not shutil.which(args.sipp) and not Path(args.sipp).exists():
        print("sipp not found (apt-get install sip-tester)", file=sys.stderr)
        return 2
    if args.netns and not os.environ.get(NETNS_ENV):
        return reexec_in_netns(args)
    prepare_process(args)
    return benchmark(args)


def prepare_process(args) -> None:
    """What a benchmark's process does before it starts servers: warn about interfaces
    other than lo in its namespace, stop cleanly on SIGTERM/SIGINT, and take the niceness
    asked for (inherited by every server and SIPp process started from here)."""
    if os.environ.get(NETNS_ENV):
        ifaces = net_interfaces()
        if ifaces != ["lo"]:
            print(f"warning: network namespace has interfaces {ifaces}", flush=True)
    signal.signal(signal.SIGTERM, _on_signal)
    signal.signal(signal.SIGINT, _on_signal)
    if args.nice:
        try:
            os.setpriority(os.PRIO_PROCESS, 0, args.nice)
        except OSError as exc:
            print(f"cannot set nice {args.nice}: {exc}", flush=True)


if __name__ == "__main__":
    sys.exit(main())
