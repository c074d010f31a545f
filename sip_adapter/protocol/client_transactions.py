"""Non-INVITE client transactions (RFC 3261 section 17.1.2, matching per 17.1.3), for the
NOTIFYs the notifier sends. Sans-I/O: the caller passes `now` (seconds, any monotonic origin)
and runs `due(now)` when `next_deadline()` is reached.

- `start(branch, data, reliable, now, context)` records a request that is being sent
  (`data`, its bytes, are kept for retransmission) and starts its timers: Timer E = T1 on an
  unreliable transport (none on a reliable one), Timer F = 64*T1. False when the table is at
  one of its bounds: nothing is stored, and the caller takes that as a failure.
- `on_response(branch, method, status, now)` with the top Via branch and CSeq method of a
  response (the caller reads them with the typed Via and CSeq parsers): a 1xx moves the
  transaction to Proceeding (its retransmissions continue every T2), a final response
  completes it, once: `Completed(context, status)`. A response that matches nothing (a
  stray one, or a retransmitted final after the transaction completed) gives None.
- `due(now)`: the retransmissions to send now, and the transactions whose Timer F fired
  (`Completed(context, 408)`, RFC 3261 8.1.3.1).
- `on_transport_error(branch)`: the request could not be sent (17.1.4): `Completed(context,
  503)`, RFC 3261 8.1.3.1.

Timer K (17.1.2.2, T4 on unreliable transports) is not run: its one effect is to absorb
retransmissions of the final response, which forgetting the branch at once achieves (they
match nothing and give None).

Timers E follow 17.1.2.2: in Trying each firing doubles the interval, up to T2 (0.5, 1, 2,
4, 4, ... s with the default T1 and T2); in Proceeding each firing resets it to T2. A timer
fires at the first `due(now)` at or after its deadline and is reset from that `now`, as a
timer of an event loop would be.

Bounds (design decision 9) and cost
-----------------------------------
Bounded in entries (`max_entries`) and bytes (`max_bytes`: each entry's request bytes and
branch plus ENTRY_OVERHEAD); past either bound `start` refuses rather than evicting a
transaction in flight. The contexts are the caller's and are not accounted.

Deadlines sit in one binary heap: every operation is O(log n). A completed transaction's
timers stay in the heap (lazy deletion) and are skipped when they reach the front; when the
skipped ones outnumber the live ones, the heap is rebuilt from the live ones (O(n), once per
n completions), so stale timers never hold more than the live ones do.
"""

from __future__ import annotations

import heapq
from dataclasses import dataclass
from itertools import count
from typing import Final, Generic, TypeVar

__all__ = ["ClientTransactions", "Completed", "ENTRY_OVERHEAD"]

T = TypeVar("T")

#: Bytes accounted per transaction on top of its request bytes and branch characters: the
#: entry object, its heap items and dict slot, the bytes and str object headers. Measured
#: with tracemalloc on CPython 3.11 (64-bit), 100,000 transactions: 494 bytes each over UDP
#: (two heap items), 360 over TCP, besides the request and branch objects (~80 bytes of
#: headers); rounded up. (The context objects are the caller's and not counted.)
ENTRY_OVERHEAD: Final = 576

# Which timer a heap item is.
_TIMER_E: Final = 0
_TIMER_F: Final = 1

# Rebuild the heap only once this many stale items have gathered (and they outnumber the
# live ones): below it, skipping them at the front costs less.
_COMPACT_MIN: Final = 1024


@dataclass(frozen=True, slots=True)
class Completed(Generic[T]):
    """A transaction ended: its final response's status (408 when Timer F fired, 503 after
    a transport error) and the caller's context."""
    context: T
    status: int


class _Transaction(Generic[T]):
    __slots__ = ("branch", "method", "data", "reliable", "context", "interval", "proceeding",
                 "done", "size")

    def __init__(self, branch: str, method: str, data: bytes, reliable: bool, context: T,
                 interval: float, size: int) -> None:
        self.branch = branch
        self.method = method
        self.data = data
        self.reliable = reliable
        self.context = context
        self.interval = interval  # Timer E's current interval
        self.proceeding = False
        self.done = False
        self.size = size


# (deadline, sequence number, transaction, _TIMER_E or _TIMER_F): the sequence number keeps
# equal deadlines in start order and keeps tuple comparison off the transaction.
_Item = tuple[float, int, _Transaction[T], int]


class ClientTransactions(Generic[T]):
    """t1, t2: RFC 3261 T1 and T2 (Timer F = 64*T1). max_entries, max_bytes: the bounds (see
    the module docstring). `context` is the caller's, handed back with retransmissions and
    completions (for the notifier: the NotifyJob and where to send it)."""

    def __init__(self, max_entries: int = 100_000, max_bytes: int = 64 * 1024 * 1024,
                 t1: float = 0.5, t2: float = 4.0) -> None:
        if max_entries < 1:
            raise ValueError("max_entries must be at least 1")
        if max_bytes < ENTRY_OVERHEAD:
            raise ValueError(f"max_bytes must be at least {ENTRY_OVERHEAD}")
        if not 0 < t1 <= t2:
            raise ValueError("need 0 < t1 <= t2")
        self.max_entries = max_entries
        self.max_bytes = max_bytes
        self.t1 = t1
        self.t2 = t2
        self.timer_f = 64 * t1
        self._entries: dict[str, _Transaction[T]] = {}
        self._heap: list[_Item[T]] = []
        self._stale = 0  # heap items of completed transactions
        self._sequence = count()
        self._bytes = 0

    def __len__(self) -> int:
        return len(self._entries)

    @property
    def bytes_held(self) -> int:
        """Bytes accounted for the transactions held (see ENTRY_OVERHEAD)."""
        return self._bytes

    def start(self, branch: str, data: bytes, reliable: bool, now: float, context: T) -> bool:
        """Record a non-INVITE request about to be sent (its method is read from `data`'s
        request line, for matching). False, storing nothing, when the table is full.
        ValueError for a branch already in flight or an INVITE / ACK."""
        method = _method(data)
        if method in ("INVITE", "ACK"):
            raise ValueError("not a non-INVITE request")
        if branch in self._entries:
            raise ValueError("a transaction with this branch is in flight")
        size = ENTRY_OVERHEAD + len(data) + len(branch)
        if len(self._entries) >= self.max_entries or self._bytes + size > self.max_bytes:
            return False
        transaction = _Transaction(branch, method, bytes(data), reliable, context, self.t1,
                                   size)
        self._entries[branch] = transaction
        self._bytes += size
        heap, sequence = self._heap, self._sequence
        heapq.heappush(heap, (now + self.timer_f, next(sequence), transaction, _TIMER_F))
        if not reliable:
            heapq.heappush(heap, (now + self.t1, next(sequence), transaction, _TIMER_E))
        return True

    def on_response(self, branch: str, method: str, status: int,
                    now: float) -> Completed[T] | None:
        """A response whose top Via branch is `branch` and CSeq method `method`. A final
        response completes the transaction (once); a 1xx moves it to Proceeding. None for
        a 1xx, or a response that matches no transaction. (`now` is not needed by a
        non-INVITE client transaction without Timer K; it keeps the table's calls alike.)"""
        if not 100 <= status <= 699:
            raise ValueError(f"status {status} out of range")
        transaction = self._entries.get(branch)
        if transaction is None or transaction.method != method:
            return None
        if status < 200:
            transaction.proceeding = True
            return None
        completed = self._complete(transaction, status)
        self._compact()
        return completed

    def on_transport_error(self, branch: str) -> Completed[T] | None:
        """The request could not be sent (RFC 3261 17.1.4): the transaction ends with 503
        (8.1.3.1). None when no transaction has this branch."""
        transaction = self._entries.get(branch)
        if transaction is None:
            return None
        completed = self._complete(transaction, 503)
        self._compact()
        return completed

    def due(self, now: float) -> tuple[list[tuple[bytes, T]], list[Completed[T]]]:
        """What the timers due at `now` call for: (request bytes, context) to send again,
        and the transactions whose Timer F fired (status 408), each given once."""
        retransmit: list[tuple[bytes, T]] = []
        timed_out: list[Completed[T]] = []
        heap = self._heap
        while heap and heap[0][0] <= now:
            _, _, transaction, timer = heapq.heappop(heap)
            if transaction.done:
                self._stale -= 1
            elif timer == _TIMER_F:
                timed_out.append(self._complete(transaction, 408, timer_f_popped=True))
            else:
                retransmit.append((transaction.data, transaction.context))
                # Trying: double, up to T2; Proceeding: T2 (17.1.2.2).
                interval = self.t2 if transaction.proceeding else \
                    min(2 * transaction.interval, self.t2)
                transaction.interval = interval
                heapq.heappush(heap, (now + interval, next(self._sequence), transaction,
                                      _TIMER_E))
        self._compact()
        return retransmit, timed_out

    def next_deadline(self) -> float | None:
        """When due() next has something to do, or None."""
        heap = self._heap
        while heap and heap[0][2].done:
            heapq.heappop(heap)
            self._stale -= 1
        return heap[0][0] if heap else None

    # ---- internals ------------------------------------------------------------------------

    def _complete(self, transaction: _Transaction[T], status: int,
                  timer_f_popped: bool = False) -> Completed[T]:
        transaction.done = True
        del self._entries[transaction.branch]
        self._bytes -= transaction.size
        # Its items stay in the heap, stale: Timer F's (unless it has just been popped) and,
        # on an unreliable transport, Timer E's.
        self._stale += (0 if timer_f_popped else 1) + (0 if transaction.reliable else 1)
        return Completed(transaction.context, status)

    def _compact(self) -> None:
        """Rebuild the heap from its live items once the stale ones outnumber them."""
        if self._stale > _COMPACT_MIN and 2 * self._stale > len(self._heap):
            live = [item for item in self._heap if not item[2].done]
            heapq.heapify(live)
            self._heap = live
            self._stale = 0


def _method(data: bytes) -> str:
    space = data.find(b" ", 0, 64)
    if space <= 0:
        raise ValueError("data does not start with a request line")
    return data[:space].decode("ascii", "replace")
