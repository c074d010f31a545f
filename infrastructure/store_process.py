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

    try:
        compositor = Compositor.open(url, **options)
    except Exception as error:
        conn.send(("error", f"{type(error).__name__}: {error}"))
        return
    scheduler = ExpiryScheduler(compositor).start() if expiry else None
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
            conn.send((sequence, compositor.process_many(requests)))
    finally:
        if scheduler is not None:
            scheduler.stop()
        compositor.close()


class StoreProcess:
    """`process_many` of a Compositor living in a child process. Call it from one thread
    at a time (the SIP server's single store worker)."""

    def __init__(self, url: str, *, expiry: bool = True, **options: Any) -> None:
        context = multiprocessing.get_context("spawn")
        self._conn, child_conn = context.Pipe()
        self._lock = threading.Lock()
        self._sequence = 0
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

    def process_many(self, requests: Sequence[PublishRequest]) -> list[Any]:
        with self._lock:
            if self._broken:
                return self._unavailable(requests)
            try:
                self._conn.send(self._next(requests))
                return self._check(self._conn.recv(), requests)
            except (EOFError, OSError, BrokenPipeError) as error:
                return self._fail(requests, str(error))

    def _next(self, requests: Sequence[PublishRequest]) -> tuple[int, list]:
        self._sequence += 1
        return self._sequence, list(requests)

    def _check(self, answer: tuple[int, list], requests: Sequence[PublishRequest]) -> list:
        """Every answer names its batch: a mismatch means the pipe lost its framing, and
        no result may then be trusted to belong to its request."""
        sequence, results = answer
        if sequence != self._sequence or len(results) != len(requests):
            return self._fail(requests, f"answer for batch {sequence} while waiting for "
                                        f"{self._sequence}")
        return results

    def _fail(self, requests: Sequence[PublishRequest], why: str) -> list[Any]:
        # Once the exchange has failed part-way, the pipe's framing cannot be trusted:
        # refuse from here on (the server answers 503) rather than risk a wrong answer.
        self._broken = why
        log.error("store process unusable (%s): answering 503 from now on", why)
        return self._unavailable(requests)

    @staticmethod
    def _unavailable(requests: Sequence[PublishRequest]) -> list[Any]:
        return [StoreUnavailable("store process unavailable")] * len(requests)

    def close(self, timeout: float = 10.0) -> None:
        with self._lock:
            try:
                self._conn.send(None)
            except (OSError, BrokenPipeError):
                pass
        self.process.join(timeout)
        if self.process.is_alive():
            self.process.kill()
            self.process.join()
        self._conn.close()
