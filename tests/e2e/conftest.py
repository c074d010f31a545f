"""End-to-end fixtures: a real `esc serve` process on loopback, and SIPp to drive it."""

from __future__ import annotations

import os
import re
import select
import shutil
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SCENARIOS = Path(__file__).resolve().parent / "scenarios"
LISTENING = re.compile(r"listening (udp|tcp|tls) (\S+):(\d+)")


@dataclass
class RunningServer:
    process: subprocess.Popen
    store: str
    host: str
    port: int
    workdir: Path
    args: list[str]
    ports: dict[str, int] = field(default_factory=dict)

    def esc(self, *args: str, check: bool = True) -> subprocess.CompletedProcess:
        result = subprocess.run([sys.executable, "-m", "esc", *args, "--store", self.store],
                                cwd=ROOT, capture_output=True, text=True, timeout=60)
        if check and result.returncode != 0:
            raise AssertionError(f"esc {' '.join(args)} failed: {result.stderr}")
        return result

    def kill(self, sig: int = signal.SIGKILL) -> int:
        self.process.send_signal(sig)
        return self.process.wait(timeout=20)

    def stop(self) -> int:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                return self.process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.process.kill()
                return self.process.wait()
        return self.process.returncode


def start_server(workdir: Path, *extra: str, store: str | None = None, host: str = "127.0.0.1",
                 port: int = 0, transports: tuple[str, ...] = ("udp", "tcp"),
                 timeout: float = 20.0) -> RunningServer:
    store = store or f"sqlite:///{workdir / 'esc.sqlite3'}"
    listen = []
    for transport in transports:
        shown = f"[{host}]" if ":" in host else host
        listen += ["--listen", f"{transport}:{shown}:{port}"]
    args = [sys.executable, "-m", "esc", "serve", *listen, "--store", store, *extra]
    log = open(workdir / "server.log", "ab")
    process = subprocess.Popen(args, cwd=ROOT, stdout=subprocess.PIPE, stderr=log)
    ports: dict[str, int] = {}
    deadline = time.monotonic() + timeout
    assert process.stdout is not None
    fd, pending = process.stdout.fileno(), b""
    while len(ports) < len(transports):
        if time.monotonic() > deadline or process.poll() is not None:
            process.kill()
            raise AssertionError("server did not start: "
                                 + (workdir / "server.log").read_text(errors="replace")[-2000:])
        ready, _, _ = select.select([fd], [], [], 0.2)
        if not ready:
            continue
        pending += os.read(fd, 4096)
        *lines, pending = pending.split(b"\n")
        for line in lines:
            match = LISTENING.search(line.decode(errors="replace"))
            if match:
                ports[match.group(1)] = int(match.group(3))
    return RunningServer(process, store, host, next(iter(ports.values())), workdir, args, ports)


@pytest.fixture
def server_factory(tmp_path):
    started: list[RunningServer] = []

    def factory(*extra: str, **kwargs) -> RunningServer:
        server = start_server(tmp_path, *extra, **kwargs)
        started.append(server)
        return server

    yield factory
    for server in started:
        server.stop()


@pytest.fixture
def server(server_factory) -> RunningServer:
    return server_factory("--min-expires", "1")


def free_port(host: str = "127.0.0.1") -> int:
    """A port free for both UDP and TCP on `host` (SIPp binds both).

    The kernel hands out ephemeral UDP and TCP ports independently, so the
    UDP port it picks may already be held by some TCP socket: try again.
    """
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    for _ in range(100):
        with socket.socket(family, socket.SOCK_DGRAM) as udp, \
                socket.socket(family, socket.SOCK_STREAM) as tcp:
            udp.bind((host, 0))
            port = udp.getsockname()[1]
            try:
                tcp.bind((host, port))
            except OSError:
                continue
            return port
    raise RuntimeError(f"no port free for both UDP and TCP on {host}")


@dataclass
class SippResult:
    returncode: int
    stdout: str
    stderr: str
    workdir: Path

    def messages(self) -> str:
        logs = sorted(self.workdir.glob("*_messages.log"))
        return "".join(p.read_text(errors="replace") for p in logs)

    def errors(self) -> str:
        logs = sorted(self.workdir.glob("*_errors.log"))
        return "".join(p.read_text(errors="replace") for p in logs)


def run_sipp(server: RunningServer, scenario: str, *, transport: str = "udp", calls: int = 1,
             rate: int = 10, timeout: int = 30, extra: tuple[str, ...] = (),
             workdir: Path | None = None) -> SippResult:
    sipp = shutil.which("sipp")
    if sipp is None:
        pytest.fail("sipp is not installed (Debian package sip-tester; .ci/setup installs it)")
    workdir = workdir or server.workdir / f"sipp-{scenario}-{transport}-{time.monotonic_ns()}"
    workdir.mkdir(parents=True, exist_ok=True)
    port = server.ports[transport]
    host = server.host
    args = [sipp, f"{'[' + host + ']' if ':' in host else host}:{port}",
            "-sf", str(SCENARIOS / scenario), "-i", host, "-p", str(free_port(host)),
            "-t", "u1" if transport == "udp" else "t1", "-m", str(calls), "-r", str(rate),
            "-nostdin", "-default_behaviors", "all,-bye", "-trace_err", "-trace_msg",
            "-timeout", f"{timeout}s", "-timeout_error", *extra]
    result = subprocess.run(args, cwd=workdir, capture_output=True, text=True,
                            timeout=timeout + 30)
    return SippResult(result.returncode, result.stdout, result.stderr, workdir)


def assert_sipp_ok(result: SippResult) -> None:
    assert result.returncode == 0, (
        f"sipp exit {result.returncode}\n{result.stderr[-2000:]}\n{result.errors()[-3000:]}")
