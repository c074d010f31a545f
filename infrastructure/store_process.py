"""The compositor in a process of its own, fed batches over a pipe.

CPython runs one thread at a time, so a server that parses SIP and commits events in one
process uses one core. `esc serve` therefore runs the Compositor (and its expiry
scheduler) in a child process: the SIP process parses, matches transactions and answers;
the store process decides and commits. They exchange whole group-commit batches, so the
pickling cost is paid per batch, not per request.

Nothing about durability changes: the child answers a batch only after its save returned,
and the SIP process sends no response before it has that answer. The child dies with its
parent (PR_SET_PDEATHSIG), so a `kill -9` of the server leaves no orphan writing the store.
"""

from __future__ import annotations

import ctypes
import logging
import multiprocessing
import signal
import threading
from concurrent.futures import Future
from typing import Any, Sequence

from domain import PublishRequest, StoreUnavailable

log = logging.getLogger("esc.store")

_PR_SET_PDEATHSIG = 1


def _die_with_parent() -> None:
    try:
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)
    except (OSError, AttributeError):  # not Linux: the pipe's EOF still ends the child
        pass


def _child_main(conn: Any, url: str, options: dict[str, Any], expiry: bool,
                log_level: int) -> None:
    _die_with_parent()
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent decides when to stop
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    logging.basicConfig(level=log_level,
                        format="%(asctime)s %(levelname)s %(name)s[store]: %(message)s")
    from .compositor import Compositor
    from .expiry import ExpiryScheduler
    from .gc_tuning import tune_for_throughput

    try:
        compositor = Compositor.open(url, **options)
    except Exception as error:
        conn.send(("error", f"{type(error).__name__}: {error}"))
        return
    scheduler = ExpiryScheduler(compositor).start() if expiry else None
    tune_for_throughput()
    conn.send(("ready", None))
    try:
        while True:
            try:
                batch = conn.recv()
            except EOFError:
                break
            if batch is None:
                break
            sequence, requests = batch
            # Answer as soon as the batch is durable; the read model follows before the
            # next batch is decided (its per-resource limit reads the view).
            results, recordings = compositor.commit_many(requests)
            conn.send((sequence, results))
            compositor.project(recordings)
    finally:
        if scheduler is not None:
            scheduler.stop()
        compositor.close()


class StoreProcess:
    """A Compositor living in a child process.

    `submit(requests)` sends a batch and returns a Future of its results; batches are
    handled strictly in the order they were submitted (one pipe, one child loop), so
    several may be in flight while keeping per-resource order: the next batch crosses the
    pipe while the child commits the current one. A receiver thread matches each answer to
    its batch by sequence number; any exchange failure marks the process unusable and every
    outstanding and later batch is answered StoreUnavailable (503), never a mismatched
    result. `process_many(requests)` is the blocking form."""

    def __init__(self, url: str, *, expiry: bool = True, **options: Any) -> None:
        context = multiprocessing.get_context("spawn")
        self._conn, child_conn = context.Pipe()
        self._send_lock = threading.Lock()
        self._sequence = 0
        self._pending: dict[int, tuple[Future, int]] = {}
        self._pending_lock = threading.Lock()
        self._broken: str | None = None
        self.process = context.Process(
            target=_child_main, name="esc-store", daemon=True,
            args=(child_conn, url, options, expiry, logging.getLogger().level))
        self.process.start()
        child_conn.close()
        try:
            status, detail = self._conn.recv()
        except EOFError:
            status, detail = "error", "store process exited while opening the store"
        if status != "ready":
            self.process.join(5)
            raise RuntimeError(detail)
        self._receiver = threading.Thread(target=self._receive, name="esc-store-recv",
                                          daemon=True)
        self._receiver.start()

    def submit(self, requests: Sequence[PublishRequest]) -> Future:
        future: Future = Future()
        requests = list(requests)
        with self._send_lock:
            if self._broken:
                future.set_result(self._unavailable(requests))
                return future
            self._sequence += 1
            with self._pending_lock:
                self._pending[self._sequence] = (future, len(requests))
            try:
                self._conn.send((self._sequence, requests))
            except (OSError, BrokenPipeError, ValueError) as error:
                self._fail(f"send failed: {error}")
        return future

    def process_many(self, requests: Sequence[PublishRequest]) -> list[Any]:
        return self.submit(requests).result()

    def _receive(self) -> None:
        while True:
            try:
                sequence, results = self._conn.recv()
            except (EOFError, OSError, ValueError, TypeError) as error:
                if not self._broken:
                    self._fail(f"receive failed: {error}" if str(error) else "store exited")
                return
            with self._pending_lock:
                expected = min(self._pending) if self._pending else None
                entry = self._pending.pop(sequence, None) if sequence == expected else None
            if entry is None or len(results) != entry[1]:
                self._fail(f"answer for batch {sequence} while waiting for {expected}")
                return
            entry[0].set_result(results)

    def _fail(self, why: str) -> None:
        # Once an exchange has failed part-way the pipe's framing cannot be trusted:
        # refuse from here on (the server answers 503) rather than risk a wrong answer.
        self._broken = why
        log.error("store process unusable (%s): answering 503 from now on", why)
        with self._pending_lock:
            pending, self._pending = self._pending, {}
        for future, count in pending.values():
            if not future.done():
                future.set_result([StoreUnavailable("store process unavailable")] * count)

    @staticmethod
    def _unavailable(requests: Sequence[PublishRequest]) -> list[Any]:
        return [StoreUnavailable("store process unavailable")] * len(requests)

    def close(self, timeout: float = 10.0) -> None:
        with self._send_lock:
            self._broken = self._broken or "closed"
            try:
                self._conn.send(None)
            except (OSError, BrokenPipeError):
                pass
        self.process.join(timeout)
        if self.process.is_alive():
            self.process.kill()
            self.process.join()
        self._receiver.join(timeout)
        self._conn.close()
