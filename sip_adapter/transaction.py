"""Non-INVITE server transactions (RFC 3261 17.2.2, matching per 17.2.3). Sans-I/O: the
caller passes `now` (seconds, any monotonic origin) and runs `expire(now)` when
`next_deadline()` is due.

A request is NEW (hand it to the application once), a RETRANSMIT of one already answered
(send the stored final response again, do not process it again), or ABSORBed (a
retransmission still being processed, or an ACK / CANCEL that matches nothing).

States kept: Trying/Proceeding (no final response yet) and Completed (final response stored
until Timer J = 64*T1 fires on unreliable transports; on reliable ones Timer J is 0, so the
transaction ends at once). An ESC only ever answers INVITE with a final error, so INVITE is
handled the same way (no Timer G retransmissions) and any ACK is absorbed.

The table is bounded: when full, a new transaction evicts the oldest completed one (or, if none
is completed, the oldest still in progress). Entries still in progress are dropped after
`proceeding_timeout` (default 64*T1, when the client transaction has given up, Timer F).
Deadlines are assumed to come in `now` order (a constant timer with a non-decreasing `now`),
which lets expiry pop from the front of insertion-ordered dicts.
"""

from __future__ import annotations

from dataclasses import dataclass
from sys import intern
from typing import Hashable, Union

from .message import Request

__all__ = [
    "TransactionTable", "TransactionKey", "Decision", "New", "Retransmit", "Absorb", "ABSORB",
    "NEW", "RETRANSMIT", "transaction_key", "MAGIC_COOKIE", "RELIABLE_TRANSPORTS",
]

MAGIC_COOKIE = "z9hG4bK"
RELIABLE_TRANSPORTS = frozenset({"TCP", "TLS", "SCTP", "TLS-SCTP", "WS", "WSS"})

TransactionKey = tuple  # hashable; built by transaction_key()


@dataclass(frozen=True, slots=True)
class New:
    """A new transaction: hand the request to the application; answer with on_response(key)."""
    key: Hashable


@dataclass(frozen=True, slots=True)
class Retransmit:
    """A retransmission of a request already answered: send `response` again."""
    response: bytes


@dataclass(frozen=True, slots=True)
class Absorb:
    """Do nothing."""


ABSORB = Absorb()
NEW = New
RETRANSMIT = Retransmit
Decision = Union[New, Retransmit, Absorb]


def transaction_key(request: Request) -> tuple:
    """The 17.2.3 matching key. With an RFC 3261 branch (magic cookie plus at least one more
    character; RFC 4475 3.2.1's bare "z9hG4bK" does not count): branch, sent-by (host
    lower-cased, port) and method, with ACK mapped to INVITE. Otherwise the RFC 2543 rule:
    Request-URI, To tag, From tag, Call-ID, CSeq and the top Via.

    The last element is always the method, so key[:-1] identifies the transaction a CANCEL
    targets."""
    via = request.top_via
    if via is None:
        raise ValueError("request has no Via")
    method = request.method
    if method == "ACK":
        method = "INVITE"
    branch = via.branch
    if branch and len(branch) > len(MAGIC_COOKIE) and branch.startswith(MAGIC_COOKIE):
        # Host and method repeat across the table: one shared copy of each (the table
        # holds up to max_entries keys for 64*T1 seconds).
        return ("3261", branch, intern(via.host.lower()), via.port, intern(method))
    to = request.to
    from_ = request.from_
    cseq = request.cseq
    return (
        "2543",
        request.uri,
        to.tag if to is not None else None,
        from_.tag if from_ is not None else None,
        request.call_id,
        cseq.number if cseq is not None else None,
        via.raw,
        method,
    )


# A transaction's state is a plain tuple (reliable, final response, last provisional),
# replaced rather than changed on each step. Plain tuples of plain values on purpose: the
# garbage collector stops tracking them after one look, so the 64*T1 seconds of
# transactions a busy server holds cost it nothing (an object per transaction made every
# older-generation collection scan them all, pausing the server for tens of ms).
_Entry = tuple  # (bool, bytes | None, bytes | None)
_RELIABLE, _RESPONSE, _PROVISIONAL = 0, 1, 2


class TransactionTable:
    def __init__(self, t1: float = 0.5, max_entries: int = 100_000,
                 proceeding_timeout: float | None = None, linger_reliable: bool = True) -> None:
        # RFC 3261 sets Timer J to 0 on reliable transports, as clients do not retransmit
        # there. A client that reconnects and resends after losing a connection does,
        # though; keeping the answer for 64*T1 on every transport means such a resend is
        # answered from the table and never reaches the store twice (DESIGN decision 5).
        self.linger_reliable = linger_reliable
        if max_entries < 1:
            raise ValueError("max_entries must be at least 1")
        self.t1 = t1
        self.timer_j = 64 * t1
        self.max_entries = max_entries
        self.proceeding_timeout = 64 * t1 if proceeding_timeout is None else proceeding_timeout
        self._entries: dict[tuple, _Entry] = {}
        # key -> deadline, in insertion (and so deadline) order
        self._proceeding: dict[tuple, float] = {}
        self._completed: dict[tuple, float] = {}
        # key[:-1] -> key, for CANCEL matching (non-CANCEL transactions only)
        self._targets: dict[tuple, tuple] = {}

    def __len__(self) -> int:
        return len(self._entries)

    def on_request(self, request: Request, source: tuple, transport: str,
                   now: float) -> Decision:
        """Classify an incoming request (which the parser accepted, so its Via, From, To,
        Call-ID and CSeq are readable)."""
        method = request.method
        if method == "ACK":
            # Matches an INVITE answered with a final error (absorbed, as Timer G/H/I are not
            # run), or a 2xx's ACK, which is its own transaction: nothing to do either way.
            return ABSORB
        key = transaction_key(request)
        entry = self._entries.get(key)
        if entry is not None:
            if entry[_RESPONSE] is not None:
                return Retransmit(entry[_RESPONSE])
            if entry[_PROVISIONAL] is not None:
                return Retransmit(entry[_PROVISIONAL])
            return ABSORB
        if method == "CANCEL" and key[:-1] not in self._targets:
            return ABSORB
        self._make_room()
        self._entries[key] = (transport.upper() in RELIABLE_TRANSPORTS, None, None)
        self._proceeding[key] = now + self.proceeding_timeout
        if method != "CANCEL":
            self._targets[key[:-1]] = key
        return New(key)

    def on_provisional(self, key: tuple, response: bytes) -> None:
        """Remember the last provisional response sent (17.2.2: a retransmission in
        Proceeding gets it again)."""
        entry = self._entries.get(key)
        if entry is not None and entry[_RESPONSE] is None:
            self._entries[key] = (entry[_RELIABLE], None, response)

    def on_response(self, key: tuple, response: bytes, now: float) -> None:
        """Store the final response and start Timer J (64*T1 on an unreliable transport; 0 on
        a reliable one, which ends the transaction now). A key the table no longer holds (it
        was evicted or timed out) is stored as an unreliable transaction, so a late
        retransmission is still answered from it."""
        entry = self._entries.get(key)
        if entry is None:
            entry = (False, None, None)
            self._make_room()
            self._entries[key] = entry
        elif entry[_RESPONSE] is not None:
            return  # one final response per transaction
        self._proceeding.pop(key, None)
        if entry[_RELIABLE] and not self.linger_reliable:
            self._drop(key)
            return
        self._entries[key] = (entry[_RELIABLE], response, None)
        self._completed[key] = now + self.timer_j

    def expire(self, now: float) -> int:
        """Drop completed transactions whose Timer J fired and in-progress ones that timed
        out; returns how many were dropped."""
        dropped = 0
        for queue in (self._completed, self._proceeding):
            while queue:
                key, deadline = next(iter(queue.items()))
                if deadline > now:
                    break
                self._drop(key)
                dropped += 1
        return dropped

    def next_deadline(self) -> float | None:
        """When expire() next has something to do, or None."""
        deadlines = [next(iter(q.values())) for q in (self._completed, self._proceeding) if q]
        return min(deadlines) if deadlines else None

    def _make_room(self) -> None:
        while len(self._entries) >= self.max_entries:
            queue = self._completed or self._proceeding
            if not queue:
                # Entries with neither deadline cannot exist; guard against a bad state anyway.
                self._drop(next(iter(self._entries)))
                continue
            self._drop(next(iter(queue)))

    def _drop(self, key: tuple) -> None:
        self._entries.pop(key, None)
        self._completed.pop(key, None)
        self._proceeding.pop(key, None)
        if self._targets.get(key[:-1]) == key:
            del self._targets[key[:-1]]
