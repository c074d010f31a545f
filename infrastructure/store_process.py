"""The compositor in a process of its own, fed batches over a pipe.

CPython runs one thread at a time, so a server that parses SIP and commits events in one
process uses one core. `esc serve` therefore runs the Compositor (and its expiry
scheduler) in a child process: the SIP process parses, matches transactions and answers;
the store process decides and commits. They exchange whole group-commit batches, so the
pickling cost is paid per batch, not per request.

Nothing about durability changes: the child answers a batch only after its save returned,
and the SIP process sends no response before it has that answer. The child dies with its
parent (PR_SET_PDEATHSIG), so a `kill -9` of the server leaves no orphan writing the store.

`StoreProcess` is a `Committer` (committer.py): it lives on the SIP process's event loop,
which writes the batches and reads the answers itself (no thread, no lock). When the child
dies or the pipe breaks, every outstanding batch is answered StoreUnavailable and
`failure` completes; replacing it is the supervisor's job (sip_adapter/store_gateway.py).
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
from multiprocessing.reduction import ForkingPickler
from typing import Any, Callable, Sequence

from domain import NotifyJob, NotifyOutcome, PublishRequest, SubscribeRequest

from .committer import Result, unavailable

log = logging.getLogger("esc.store")

_PR_SET_PDEATHSIG = 1
# The most requests the store process commits in one transaction when several batches
# wait for it (each batch is at most the server's max_batch).
MAX_MERGED_REQUESTS = 2048
# The most messages (batches and NOTIFY outcomes) taken from the pipe in one turn.
MAX_MERGED_MESSAGES = 64


def _die_with_parent() -> None:
    try:
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)
    except (OSError, AttributeError):  # not Linux: the pipe's EOF still ends the child
        pass


def _child_main(conn: Any, url: str, options: dict[str, Any], expiry: bool,
                log_level: int, notifier_config: Any = None) -> None:
    _die_with_parent()
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent decides when to stop
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    from .log_format import configure, from_environment

    configure(log_level, from_environment(), process="store")
    from .compositor import Compositor
    from .expiry import ExpiryScheduler
    from .gc_tuning import OLD_THRESHOLD, tune_for_throughput
    from .leases import leases_for
    from .notifier import Notifier
    from .store_worker import StoreWorker

    try:
        compositor = Compositor.open(url, **options)
        notifier = Notifier(compositor, notifier_config, leases=leases_for(compositor.app)) \
            if notifier_config else None
    except Exception as error:
        conn.send(("error", f"{type(error).__name__}: {error}"))
        return
    worker = StoreWorker(compositor, notifier)
    # What the SIP process's metrics show of this process (store_stats.py): the expiry
    # hook is set before the scheduler's first pass.
    from .store_stats import StoreStats

    stats = StoreStats(compositor, notifier)
    compositor.commands.on_expired = stats.expired
    scheduler = ExpiryScheduler(compositor).start() if expiry else None
    stats.expiry = scheduler
    stats.start()
    # Start-up objects frozen, the default young threshold: with the SIP process's larger
    # one this process ended the million-publication benchmark 40 MB larger (cause not
    # found); full collections rarer, since each scans every subscription held (see
    # gc_tuning.py).
    tune_for_throughput(young_threshold=None, old_threshold=OLD_THRESHOLD)
    conn.send(("ready", None))

    def send_notifies(jobs: list[Any]) -> None:
        if jobs:
            conn.send(("notify", jobs))

    try:
        _serve(conn, worker, send_notifies, stats)
    finally:
        stats.stop()
        if scheduler is not None:
            scheduler.stop()
        compositor.close()


def _serve(conn: Any, worker: Any, send_notifies: Any, stats: Any = None) -> None:
    """The store process's loop: batches in, answers out; NOTIFY outcomes in, NOTIFYs out;
    the notifier's timer in between; a ("stats", dict) frame about once a second when
    `stats` (a StoreStats) is given."""
    import time

    from .store_stats import STATS_INTERVAL

    next_stats = time.time() if stats is not None else None
    while True:
        if next_stats is not None and time.time() >= next_stats:
            # Checked on every turn, so a busy loop (the pipe never idle) still reports.
            next_stats = time.time() + STATS_INTERVAL
            try:
                conn.send(("stats", stats.snapshot()))
            except OSError:  # the parent is gone: the next recv says so
                pass
        deadline = worker.next_deadline()
        wake = deadline if next_stats is None or (deadline is not None and
                                                  deadline < next_stats) else next_stats
        timeout = None if wake is None else max(0.0, wake - time.time())
        if not conn.poll(timeout):
            if deadline is not None and time.time() >= deadline:
                send_notifies(worker.tick())
            continue
        # Everything waiting in the pipe is taken together: batches that queued up while
        # the last one committed are decided and committed together (one transaction,
        # one fsync), in order, each still answered on its own, so under load the group
        # commit grows by itself; NOTIFY outcomes are taken note of together, and the
        # NOTIFYs they free are recorded in one save after the batches are answered.
        batches: list[Any] = []
        outcomes: list[Any] = []
        waiting, taken, stopping = 0, 0, False
        since: float | None = None  # when the oldest request of these batches arrived
        while True:
            taken += 1
            try:
                message = conn.recv()
            except EOFError:
                stopping = True
                break
            if message is None:
                stopping = True
                break
            if message[0] == "outcomes":
                outcomes.extend(message[1])
            else:
                batches.append(message[:2])
                waiting += len(message[1])
                if len(message) > 2 and message[2] is not None:
                    since = message[2] if since is None else min(since, message[2])
            # Bounded in messages too: a steady stream of outcomes must not keep the loop
            # reading forever.
            if waiting >= MAX_MERGED_REQUESTS or taken >= MAX_MERGED_MESSAGES or \
                    not conn.poll(0):
                break
        recordings: list[Any] = []
        if batches:
            requests = [r for _, batch_requests in batches for r in batch_requests]
            # Answer as soon as the batch is durable; the read model follows before the
            # next batch is decided (its per-resource limit reads the view), then the
            # notifier turns the new events into NOTIFYs.
            results, recordings = worker.decide(
                requests, None if since is None else time.monotonic() - since)
            if stats is not None:
                stats.batch(len(requests))
            start = 0
            for sequence, batch_requests in batches:
                conn.send((sequence, results[start:start + len(batch_requests)]))
                start += len(batch_requests)
        send_notifies(worker.after(recordings, outcomes))
        if stopping:
            return
        # A pipe that is never idle must not starve the notifier's timer (lapses, its node
        # lease, Retry-After, reading other nodes' changes): run it when it is due.
        deadline = worker.next_deadline()
        if deadline is not None and time.time() >= deadline:
            send_notifies(worker.tick())


class StoreProcess:
    """A Compositor living in a child process, exchanging batches through the event loop.

    `submit(requests)` pickles and writes the batch from the loop and returns a future
    that the loop's reader completes. Batches are handled strictly in the order they were
    submitted (one pipe, one child loop), so several may be in flight while keeping
    per-resource order. The frames are multiprocessing's own (a 4-byte big-endian length,
    then the pickle), so the child's blocking `Connection.recv`/`send` loop reads them.
    Any exchange failure makes the process unusable: every outstanding and later batch is
    answered StoreUnavailable (503), never a mismatched result."""

    def __init__(self, process: Any, conn: Any, loop: asyncio.AbstractEventLoop) -> None:
        self.process = process
        self._conn = conn
        self._loop = loop
        self._sequence = 0
        self._pending: dict[int, tuple[asyncio.Future[list[Result]], int]] = {}
        self._failure: asyncio.Future[str] = loop.create_future()
        # Where the NOTIFYs the store's notifier produces go (the server's sender).
        self.notify_sink: Callable[[list[NotifyJob]], None] | None = None
        # Where the child's ("stats", dict) frames go, about once a second (the metrics).
        self.stats_sink: Callable[[dict[str, Any]], None] | None = None
        self._closing = False
        self._inbox = bytearray()
        self._outbox = bytearray()
        self._fd = conn.fileno()
        os.set_blocking(self._fd, False)
        loop.add_reader(self._fd, self._on_readable)

    @classmethod
    async def start(cls, url: str, *, expiry: bool = True, notifier: Any = None,
                    **options: Any) -> "StoreProcess":
        """Start the child, wait (off the loop) until its store is open. A store that cannot
        be opened raises RuntimeError with the child's one-line reason. `notifier`: a
        NotifierConfig to run the notifier in the child (None: no SUBSCRIBE service)."""
        loop = asyncio.get_running_loop()
        process, conn = await loop.run_in_executor(
            None, lambda: _spawn(url, options, expiry, notifier))
        return cls(process, conn, loop)

    @property
    def pid(self) -> int | None:
        return self.process.pid

    @property
    def failure(self) -> asyncio.Future[str]:
        return self._failure

    def submit(self, requests: Sequence[PublishRequest | SubscribeRequest],
               waiting_since: float | None = None) -> asyncio.Future[list[Result]]:
        future: asyncio.Future[list[Result]] = self._loop.create_future()
        requests = list(requests)
        if self._failure.done():
            future.set_result(unavailable(len(requests), "store process unavailable"))
            return future
        self._sequence += 1
        try:
            payload = ForkingPickler.dumps((self._sequence, requests, waiting_since))
        except Exception as error:  # cannot happen with our own dataclasses; stay safe
            log.error("could not encode a batch for the store: %s", error)
            future.set_result(unavailable(len(requests), "store process unavailable"))
            return future
        self._pending[self._sequence] = (future, len(requests))
        self._write(struct.pack("!i", len(payload)) + bytes(payload))
        return future

    def report(self, outcomes: Sequence[NotifyOutcome]) -> None:
        """Tell the notifier what became of its NOTIFYs (no answer is expected)."""
        if self._failure.done() or not outcomes:
            return
        payload = ForkingPickler.dumps(("outcomes", list(outcomes)))
        self._write(struct.pack("!i", len(payload)) + bytes(payload))

    def _write(self, frame: bytes) -> None:
        if self._outbox:  # the pipe was full: keep the order, the writer callback drains
            self._outbox += frame
            return
        try:
            written = os.write(self._fd, frame)
        except BlockingIOError:
            written = 0
        except OSError as error:
            self._fail(f"send failed: {error}")
            return
        if written < len(frame):
            self._outbox += frame[written:]
            self._loop.add_writer(self._fd, self._on_writable)

    def _on_writable(self) -> None:
        try:
            written = os.write(self._fd, self._outbox)
        except BlockingIOError:
            return
        except OSError as error:
            self._fail(f"send failed: {error}")
            return
        del self._outbox[:written]
        if not self._outbox:
            self._loop.remove_writer(self._fd)

    def _on_readable(self) -> None:
        try:
            chunk = os.read(self._fd, 1 << 20)
        except BlockingIOError:
            return
        except OSError as error:
            self._fail(f"receive failed: {error}")
            return
        if not chunk:
            self._fail("store process exited")
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
            if sequence == "notify":
                self._deliver_notifies(results)
                continue
            if sequence == "stats":
                if self.stats_sink is not None:
                    try:
                        self.stats_sink(results)
                    except Exception:  # the metrics' fault must not break the pipe
                        log.exception("handing the store's stats over failed")
                continue
            expected = min(self._pending) if self._pending else None
            entry = self._pending.pop(sequence, None) if sequence == expected else None
            if entry is None or len(results) != entry[1]:
                self._fail(f"answer for batch {sequence} while waiting for {expected}")
                return
            if not entry[0].done():
                entry[0].set_result(results)

    def _deliver_notifies(self, jobs: list[NotifyJob]) -> None:
        sink = self.notify_sink
        if sink is None:
            return
        try:
            sink(jobs)
        except Exception:  # the sender's fault must not break the store's pipe
            log.exception("handing NOTIFYs to the SIP side failed")

    def _fail(self, why: str) -> None:
        # Once an exchange has failed part-way the pipe's framing cannot be trusted:
        # refuse from here on rather than risk a wrong answer.
        if self._failure.done():
            return
        if self._closing:  # it exited because we asked it to
            log.debug("store process stopped (%s)", why)
        else:
            log.error("store process unusable (%s)", why)
        self._failure.set_result(why)
        pending, self._pending = self._pending, {}
        for future, count in pending.values():
            if not future.done():
                future.set_result(unavailable(count, "store process unavailable"))
        try:
            self._loop.remove_reader(self._fd)
            self._loop.remove_writer(self._fd)
        except Exception:  # the loop may be closed already
            pass

    def kill(self) -> None:
        """SIGKILL the child (it hung); outstanding batches are answered unavailable."""
        try:
            self.process.kill()
        except Exception:
            pass
        self._fail("killed")

    async def close(self, timeout: float = 10.0) -> None:
        """Let the child finish what it was sent, then stop it; kill it if it lingers."""
        self._closing = True
        if not self._failure.done():
            self._write(_END_FRAME)
            # Answers still due are read by the loop while we wait for the exit.
            deadline = self._loop.time() + timeout
            while self._pending and not self._failure.done() and self._loop.time() < deadline:
                await asyncio.sleep(0.01)
        await self._loop.run_in_executor(None, self._reap, timeout)
        self._fail("closed")
        try:
            self._conn.close()
        except OSError:
            pass

    def _reap(self, timeout: float) -> None:
        self.process.join(timeout)
        if self.process.is_alive():
            self.process.kill()
            self.process.join()


# `None`, pickled as multiprocessing frames it: the child's "no more batches".
_NONE_PICKLE = bytes(ForkingPickler.dumps(None))
_END_FRAME = struct.pack("!i", len(_NONE_PICKLE)) + _NONE_PICKLE


def _spawn(url: str, options: dict[str, Any], expiry: bool,
           notifier: Any = None) -> tuple[Any, Any]:
    """Start the child and wait for its store to open (blocking: run it off the loop)."""
    context = multiprocessing.get_context("spawn")
    conn, child_conn = context.Pipe()
    process = context.Process(
        target=_child_main, name="esc-store", daemon=True,
        args=(child_conn, url, options, expiry, logging.getLogger().level, notifier))
    process.start()
    child_conn.close()
    try:
        status, detail = conn.recv()
    except (EOFError, OSError):
        status, detail = "error", "store process exited while opening the store"
    if status != "ready":
        process.join(5)
        if process.is_alive():
            process.kill()
            process.join()
        conn.close()
        raise RuntimeError(detail)
    return process, conn
