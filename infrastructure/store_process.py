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

import asyncio
import ctypes
import logging
import multiprocessing
import os
import pickle
import signal
import struct
import threading
from concurrent.futures import Future
from multiprocessing.reduction import ForkingPickler
from typing import Any, Sequence

from domain import PublishRequest, StoreUnavailable

log = logging.getLogger("esc.store")

_PR_SET_PDEATHSIG = 1
# The most requests the store process commits in one transaction when several batches
# wait for it (each batch is at most the server's max_batch).
MAX_MERGED_REQUESTS = 2048


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
    # Start-up objects frozen, default thresholds: with the SIP process's larger threshold
    # this process ended the million-publication benchmark 40 MB larger (cause not found;
    # see gc_tuning.py).
    tune_for_throughput(young_threshold=None)
    conn.send(("ready", None))
    try:
        stopping = False
        while not stopping:
            try:
                batch = conn.recv()
            except EOFError:
                break
            if batch is None:
                break
            # Batches that queued up in the pipe while the last one committed are decided
            # and committed together (one transaction, one fsync), in order, each still
            # answered on its own. Under load this grows the group commit by itself.
            batches = [batch]
            waiting = len(batch[1])
            while waiting < MAX_MERGED_REQUESTS and conn.poll(0):
                try:
                    more = conn.recv()
                except EOFError:
                    stopping = True
                    break
                if more is None:
                    stopping = True
                    break
                batches.append(more)
                waiting += len(more[1])
            requests = [r for _, batch_requests in batches for r in batch_requests]
            # Answer as soon as the batch is durable; the read model follows before the
            # next batch is decided (its per-resource limit reads the view).
            results, recordings = compositor.commit_many(requests)
            start = 0
            for sequence, batch_requests in batches:
                conn.send((sequence, results[start:start + len(batch_requests)]))
                start += len(batch_requests)
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
    result. `process_many(requests)` is the blocking form.

    `attach(loop)` switches to the event loop's own I/O instead: `submit_async(requests)`
    pickles and writes the batch from the loop and returns an asyncio future that the
    loop's reader completes. No thread and no lock is involved, so under load the SIP
    process does not hand the interpreter lock back and forth three times per batch. The
    frames are multiprocessing's own (a 4-byte big-endian length, then the pickle), so the
    child's blocking `Connection.recv`/`send` loop is the same in both modes."""

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
        self._receiver: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._inbox = bytearray()
        self._outbox = bytearray()

    # ---- thread mode ----------------------------------------------------------------------

    def submit(self, requests: Sequence[PublishRequest]) -> Future:
        if self._loop is not None:
            raise RuntimeError("attached to an event loop: use submit_async")
        future: Future = Future()
        requests = list(requests)
        with self._send_lock:
            if self._receiver is None and not self._broken:
                self._receiver = threading.Thread(target=self._receive,
                                                  name="esc-store-recv", daemon=True)
                self._receiver.start()
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

    # ---- event-loop mode ------------------------------------------------------------------

    @property
    def attached(self) -> bool:
        return self._loop is not None

    def attach(self, loop: asyncio.AbstractEventLoop) -> None:
        """Exchange batches through `loop` from now on (see the class docstring)."""
        with self._send_lock:
            if self._receiver is not None:
                raise RuntimeError("already exchanging through threads")
            self._loop = loop
            fd = self._conn.fileno()
            os.set_blocking(fd, False)
            loop.add_reader(fd, self._on_readable)

    def submit_async(self, requests: Sequence[PublishRequest]) -> "asyncio.Future[list[Any]]":
        """Send a batch from the attached loop; the future gets its results in order."""
        loop = self._loop
        assert loop is not None, "attach(loop) first"
        future = loop.create_future()
        requests = list(requests)
        if self._broken:
            future.set_result(self._unavailable(requests))
            return future
        self._sequence += 1
        self._pending[self._sequence] = (future, len(requests))
        try:
            payload = ForkingPickler.dumps((self._sequence, requests))
        except Exception as error:  # cannot happen with our own dataclasses; stay safe
            self._pending.pop(self._sequence, None)
            log.error("could not encode a batch for the store: %s", error)
            future.set_result(self._unavailable(requests))
            return future
        self._write(struct.pack("!i", len(payload)) + bytes(payload))
        return future

    def _write(self, frame: bytes) -> None:
        if self._outbox:  # the pipe was full: keep the order, the writer callback drains
            self._outbox += frame
            return
        try:
            written = os.write(self._conn.fileno(), frame)
        except BlockingIOError:
            written = 0
        except OSError as error:
            self._fail(f"send failed: {error}")
            return
        if written < len(frame):
            self._outbox += frame[written:]
            assert self._loop is not None
            self._loop.add_writer(self._conn.fileno(), self._on_writable)

    def _on_writable(self) -> None:
        try:
            written = os.write(self._conn.fileno(), self._outbox)
        except BlockingIOError:
            return
        except OSError as error:
            self._fail(f"send failed: {error}")
            return
        del self._outbox[:written]
        if not self._outbox and self._loop is not None:
            self._loop.remove_writer(self._conn.fileno())

    def _on_readable(self) -> None:
        try:
            chunk = os.read(self._conn.fileno(), 1 << 20)
        except BlockingIOError:
            return
        except OSError as error:
            self._fail(f"receive failed: {error}")
            return
        if not chunk:
            self._fail("store exited")
            return
        inbox = self._inbox
        inbox += chunk
        while len(inbox) >= 4:
            (size,) = struct.unpack_from("!i", inbox)
            if size < 0:  # multiprocessing's form for frames over 2 GiB: never ours
                self._fail("unexpected frame from the store process")
                return
            if len(inbox) < 4 + size:
                break
            payload = bytes(inbox[4:4 + size])
            del inbox[:4 + size]
            try:
                sequence, results = pickle.loads(payload)
            except Exception as error:
                self._fail(f"unreadable answer: {error}")
                return
            expected = min(self._pending) if self._pending else None
            entry = self._pending.pop(sequence, None) if sequence == expected else None
            if entry is None or len(results) != entry[1]:
                self._fail(f"answer for batch {sequence} while waiting for {expected}")
                return
            if not entry[0].done():
                entry[0].set_result(results)

    def detach(self) -> None:
        """Leave the event loop (call from its thread); later exchanges block again."""
        loop, self._loop = self._loop, None
        if loop is None:
            return
        fd = self._conn.fileno()
        self._unwatch(loop)
        if self._outbox:
            try:  # the last batches were accepted by the caller: hand them over
                os.set_blocking(fd, True)
                os.write(fd, bytes(self._outbox))
            except OSError:
                pass
            self._outbox.clear()
        try:
            os.set_blocking(fd, True)
        except OSError:
            pass

    # ---- both -------------------------------------------------------------------------------

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
        if self._loop is not None:
            self._unwatch(self._loop)

    def _unwatch(self, loop: asyncio.AbstractEventLoop) -> None:
        try:
            loop.remove_reader(self._conn.fileno())
            loop.remove_writer(self._conn.fileno())
        except Exception:  # the loop or the pipe may be closed already
            pass

    @staticmethod
    def _unavailable(requests: Sequence[PublishRequest]) -> list[Any]:
        return [StoreUnavailable("store process unavailable")] * len(requests)

    def close(self, timeout: float = 10.0) -> None:
        self.detach()
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
        if self._receiver is not None:
            self._receiver.join(timeout)
        self._conn.close()
