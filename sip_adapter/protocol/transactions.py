"""Non-INVITE server transactions (RFC 3261 17.2.2, matching per 17.2.3, CANCEL per 9.2).
Sans-I/O: the caller passes `now` (seconds, any monotonic origin) and runs `expire(now)` when
`next_deadline()` is due (the table also expires due entries itself when it is full).

`on_request(request, source, transport, now, connection)` classifies a request:

- `New(key, cancel_target)`: a new transaction. Hand the request to the application once and
  answer with `on_response(key, ...)`. For a CANCEL, `cancel_target` says whether it matches
  a transaction of the table (RFC 3261 9.2: answer 200, else 481); always False otherwise.
- `Retransmit(response)`: a retransmission of a request already answered: send `response`
  again, do not process the request again.
- `ABSORB`: a retransmission still being processed, or an ACK: do nothing.
- `Full(retry_after)`: a new transaction, but the table is at one of its bounds. Answer 503
  with Retry-After and do not call `on_response` (nothing is stored; a retransmission is
  decided afresh).

States kept: Trying/Proceeding (no final response yet) and Completed (final response stored
until Timer J = 64*T1 fires). An ESC only ever answers INVITE with a final error, so INVITE is
handled the same way (no Timer G retransmissions) and any ACK is absorbed.

Transactions are bound to their source (design decision 10)
-----------------------------------------------------------
RFC 3261 17.2.3 matches on branch, sent-by and method: values copied from the request's
bytes, which anyone can resend, and which a client with a predictable branch lets anyone
forge ahead of it. Matched on those alone, a host that resends a victim's PUBLISH is given
the victim's stored 200 (with its SIP-ETag), and a host that sends first pre-empts the
victim's PUBLISH (the victim's is absorbed as a retransmission and answered with the
attacker's response). So the key also holds where the request came from:

- UDP: the source IP address and port.
- TCP, TLS and other connection transports: the source IP address and port and the
  connection (an opaque id from the caller).

The same branch from another address, port or connection is a different transaction, decided
on its own (so a replayed Digest request is refused by its own nonce-count check, and an
unauthenticated one is its own publication). A request from another IP address can never get
another's stored response nor be absorbed as another's retransmission.

What this costs: a client whose request reaches us from a new address, port or connection
with an old branch is treated as new. For UDP that takes a NAT rebinding inside the 32 s of
a transaction. For a connection transport, it is a client that loses its connection and
resends the request on a new one. We accept that rather than keying connection transports on
the IP address alone (a reconnect gets a new ephemeral port, so only the address would
survive it): the address alone does not identify a client (NAT, carrier-grade NAT, a shared
host), so everyone behind it could pre-empt or replay the others' requests. RFC 3261 never
has a client retransmit over a reliable transport; a transport error ends the client
transaction (17.1.4), the UAC takes it as a 503 (8.1.3.1), and what it sends next is a new
request, with a new branch from a compliant client. A client that does resend with the old
branch costs at most one extra decision: an initial PUBLISH makes a second publication that
expires unrefreshed; a refresh, modify or remove carries the entity-tag the first one
replaced and gets 412 (RFC 3903 section 6), after which the client publishes afresh.
Completed transactions on connection transports still linger for Timer J by default
(`linger_reliable`), for stacks that do resend on the same connection.

Bounds (design decision 9) and cost
-----------------------------------
The table is bounded in entries (`max_entries`) and in bytes (`max_bytes`): stored
responses, the variable-length parts of keys, and `ENTRY_OVERHEAD` per entry for the key,
entry and queue objects (measured with tracemalloc). When a new transaction would exceed
either bound, it is refused (`Full`) rather than admitted by evicting another: eviction
would let a flood erase the answers that keep other clients' retransmissions from being
processed twice (design decision 5). The final response of an admitted transaction is always
stored, so `bytes` can exceed `max_bytes` by the responses of the transactions in progress
when the table filled (each bounded by the message size limit; their number by what the
server lets wait).

Every operation is O(1) (amortised): each state has a queue of keys in deadline order
(deadlines come in `now` order: a constant timer and a non-decreasing `now`), and expiry pops
from the front of a deque. Plain dicts are never walked from the front: after many deletions
from its front, `next(iter(a_dict))` skips every freed slot, which made a full table cost
O(entries) per new transaction (issue 14).
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass
from math import ceil
from typing import Any, Final, TypeAlias, TypeGuard, Union

from .messages import Request
from .values import Via

__all__ = [
    "TransactionTable", "TransactionKey", "Match", "ConnectionId", "MatchingValues", "Decision",
    "New", "Retransmit", "Absorb", "Full", "ABSORB", "NEW", "RETRANSMIT", "FULL",
    "transaction_key", "MAGIC_COOKIE",
    "RELIABLE_TRANSPORTS", "ENTRY_OVERHEAD",
]

MAGIC_COOKIE = "z9hG4bK"
RELIABLE_TRANSPORTS = frozenset({"TCP", "TLS", "SCTP", "TLS-SCTP", "WS", "WSS"})
_RELIABLE_NAMES = {name: name.upper() in RELIABLE_TRANSPORTS
                   for name in ("udp", "UDP", "tcp", "TCP", "tls", "TLS")}

#: What names a connection for the life of the server (Origin.connection is its serial
#: number): a plain value, so the keys that hold it stay untracked by the garbage collector.
ConnectionId: TypeAlias = int | str

# A table key is (match, method). `match` holds what identifies the transaction besides its
# method - the 17.2.3 values and the source - so that a CANCEL finds its target by `match`
# alone. The connection is None on UDP.
#   RFC 3261: (branch, sent-by host lower-cased, sent-by port, source ip, source port,
#              connection)
#   RFC 2543: (Request-URI, To tag, From tag, Call-ID, CSeq number, top Via,
#              source ip, source port, connection)
Match3261: TypeAlias = tuple[str, str, int | None, str, int, ConnectionId | None]
Match2543: TypeAlias = tuple[str, str | None, str | None, str | None, int | None, str,
                             str, int, ConnectionId | None]
Match: TypeAlias = Match3261 | Match2543
#: Hashable and opaque to callers; built by the table.
TransactionKey: TypeAlias = tuple[Match, str]
#: transaction_key()'s answer: the 17.2.3 values without the source.
MatchingValues: TypeAlias = (tuple[str, str, str, int | None, str]
                              | tuple[str, str, str | None, str | None, str | None, int | None,
                                      str, str])

#: Bytes accounted per held transaction on top of its response and the characters of its
#: key's variable-length strings: the key tuples, the entry tuple and its deadlines, the dict
#: and deque slots, the str/bytes/int object headers. Measured with tracemalloc on CPython
#: 3.11 (64-bit), 5,000 UDP transactions/s held for Timer J (160,000 entries) and answered in
#: batches of 50, from distinct source addresses and ports: 1,167 bytes per entry, 666 of
#: them response and key characters, so 501 besides (441 from a single source address, 401
#: when each is answered before the next arrives). RSS grew by 1,255 bytes per entry.
ENTRY_OVERHEAD = 512


@dataclass(slots=True)
class New:
    """A new transaction: hand the request to the application; answer with on_response(key).
    `cancel_target`: the request is a CANCEL and matches a transaction of the table (same
    branch, sent-by and source; any method but CANCEL and ACK), RFC 3261 9.2.
    (Not frozen, unlike the other decisions: one is made per request, and a frozen
    dataclass's __init__ costs 2.5 times as much.)"""
    key: TransactionKey
    cancel_target: bool = False


@dataclass(frozen=True, slots=True)
class Retransmit:
    """A retransmission of a request already answered: send `response` again."""
    response: bytes


@dataclass(frozen=True, slots=True)
class Absorb:
    """Do nothing."""


@dataclass(frozen=True, slots=True)
class Full:
    """A new transaction the table has no room for: answer 503 with Retry-After
    `retry_after` (whole seconds: when the oldest held transaction expires, at least 1) and
    store nothing."""
    retry_after: int = 1


ABSORB = Absorb()
NEW = New
RETRANSMIT = Retransmit
FULL = Full
Decision = Union[New, Retransmit, Absorb, Full]


# Values repeated across the table (hosts, source addresses, methods, ports): one shared
# copy of each. Bounded, and only short values, because all of them come from the network:
# sys.intern() would keep every host a flood invents (in CPython 3.12 every interned string
# is immortal). Strings and ints share one table and one bound. Each value maps to itself, so
# a lookup gives back the type it was given: a dict type cannot say that, hence Any for the
# values (read into a variable of the key's type).
_SHARED: dict[str | int, Any] = {}
_SHARED_MAX = 4096
_SHARED_MAX_LEN = 64


def _shared_str(value: str) -> str:
    shared: str | None = _SHARED.get(value)
    if shared is not None:
        return shared
    if len(_SHARED) < _SHARED_MAX and len(value) <= _SHARED_MAX_LEN:
        _SHARED[value] = value
    return value


def _shared_int(value: int) -> int:
    shared: int | None = _SHARED.get(value)
    if shared is not None:
        return shared
    if len(_SHARED) < _SHARED_MAX:
        _SHARED[value] = value
    return value


def _is_3261_branch(branch: str | None) -> TypeGuard[str]:
    # The magic cookie plus at least one more character: RFC 4475 3.2.1's bare "z9hG4bK"
    # does not count.
    return branch is not None and len(branch) > len(MAGIC_COOKIE) and \
        branch.startswith(MAGIC_COOKIE)


def transaction_key(request: Request) -> MatchingValues:
    """The 17.2.3 matching values of a request, without its source. With an RFC 3261 branch:
    ("3261", branch, sent-by host lower-cased, sent-by port, method), ACK mapped to INVITE.
    Otherwise the RFC 2543 rule: ("2543", Request-URI, To tag, From tag, Call-ID, CSeq
    number, top Via, method). The table's own keys add the source (see the module
    docstring)."""
    via = request.top_via
    if via is None:
        raise ValueError("request has no Via")
    method = request.method
    if method == "ACK":
        method = "INVITE"
    branch = via.branch
    if _is_3261_branch(branch):
        port = via.port
        return ("3261", branch, _shared_str(via.host.lower()),
                port if port is None else _shared_int(port), _shared_str(method))
    return ("2543",) + _rfc2543_values(request, via) + (method,)


def _rfc2543_values(request: Request, top_via: Via) -> tuple[
        str, str | None, str | None, str | None, int | None, str]:
    to, from_, cseq = request.to, request.from_, request.cseq
    return (
        request.uri,
        to.tag if to is not None else None,
        from_.tag if from_ is not None else None,
        request.call_id,
        cseq.number if cseq is not None else None,
        top_via.raw,
    )


# The length of an RFC 3261 match (see Match3261; an RFC 2543 one has 9 items).
_LEN_3261: Final = 6

# A CANCEL finds its target by trying (match, method) for these methods, so the transactions
# of these methods need no index besides the table itself (one dict entry less per held
# transaction, and none to maintain). Transactions of other methods are indexed by match.
_PROBED_METHODS = ("PUBLISH", "OPTIONS", "INVITE", "SUBSCRIBE", "NOTIFY", "REGISTER",
                   "MESSAGE", "BYE", "INFO", "PRACK", "UPDATE", "REFER")
_UNINDEXED = frozenset(_PROBED_METHODS + ("CANCEL",))


def _variable_bytes(match: Match) -> int:
    """The characters of a key's strings that vary in length from request to request (all
    client-controlled, so they must count against max_bytes)."""
    if len(match) == _LEN_3261:
        return len(match[0]) + len(match[1]) + len(match[3])
    total = 0
    for value in match:
        if type(value) is str:
            total += len(value)
    return total


# A transaction's state is a plain tuple (deadline, final response, reliable), replaced rather than changed on each step. Plain tuples of plain values on
# purpose: the garbage collector stops tracking them after one look, so the 64*T1 seconds of
# transactions a busy server holds cost it nothing (an object per transaction made every
# older-generation collection scan them all, pausing the server for tens of ms). The same
# goes for the keys, provided the caller's connection ids are plain values.
_Entry: TypeAlias = tuple[float, bytes | None, bool]  # (deadline, final response, reliable)
_DEADLINE: Final = 0
_RESPONSE: Final = 1
_RELIABLE: Final = 2


class TransactionTable:
    """t1: RFC 3261 T1 (Timer J = 64*T1). max_entries, max_bytes: the bounds (see the module
    docstring). At 5,000 transactions/s with ~600-byte responses, Timer J's 32 s hold
    160,000 entries: ~180 MiB accounted, ~192 MiB of RSS measured. The defaults (400,000
    entries, 512 MiB) hold about 12,000 a second sustained, more than one server process
    serves on a 2-core machine, so the bound is reached only by a flood (then: 503). proceeding_timeout: how long a transaction without a final
    response is kept (default 64*T1, when the client has given up, Timer F).
    linger_reliable: keep completed transactions of connection transports for Timer J too
    (RFC 3261 says 0)."""

    def __init__(self, t1: float = 0.5, max_entries: int = 400_000,
                 max_bytes: int = 512 * 1024 * 1024, proceeding_timeout: float | None = None,
                 linger_reliable: bool = True) -> None:
        if max_entries < 1:
            raise ValueError("max_entries must be at least 1")
        if max_bytes < ENTRY_OVERHEAD:
            raise ValueError(f"max_bytes must be at least {ENTRY_OVERHEAD}")
        self.t1 = t1
        self.timer_j = 64 * t1
        self.max_entries = max_entries
        self.max_bytes = max_bytes
        self.proceeding_timeout = 64 * t1 if proceeding_timeout is None else proceeding_timeout
        # RFC 3261 sets Timer J to 0 on reliable transports, as clients do not retransmit
        # there. Some stacks resend on the same connection anyway; keeping the answer for
        # 64*T1 means such a resend is answered from the table and never reaches the store
        # twice (design decision 5). (A resend on a new connection is a new transaction: see
        # the module docstring.)
        self.linger_reliable = linger_reliable
        #: bytes accounted for the entries held (see ENTRY_OVERHEAD)
        self.bytes = 0
        self._entries: dict[TransactionKey, _Entry] = {}
        # Deadline queues, in deadline order. Completed entries leave only from the front of
        # theirs, so it holds keys alone (the deadline is in the entry). An entry leaves
        # Proceeding from anywhere (it completes), so that queue keeps each item's deadline
        # in a parallel deque and skips items whose entry has moved on (lazy deletion).
        self._proceeding_keys: deque[TransactionKey] = deque()
        self._proceeding_deadlines: deque[float] = deque()
        self._completed_keys: deque[TransactionKey] = deque()
        # match -> method, for CANCEL matching of transactions whose method is not probed
        self._targets: dict[Match, str] = {}

    def __len__(self) -> int:
        return len(self._entries)

    def on_request(self, request: Request, source: tuple[str, int], transport: str, now: float,
                   connection: ConnectionId | None = None) -> Decision:
        """Classify an incoming request (which the parser accepted, so its Via, From, To,
        Call-ID and CSeq are readable). `source`: the peer's (ip, port). `connection`: for
        TCP/TLS, an id of the connection unique for the life of the server (a plain int or
        str: a serial number is best; a protocol object would be kept alive by the table and
        keep the keys tracked by the garbage collector). Ignored on UDP."""
        method = request.method
        if method == "ACK":
            # Matches an INVITE answered with a final error (absorbed, as Timer G/H/I are not
            # run), or a 2xx's ACK, which is its own transaction: nothing to do either way.
            return ABSORB
        reliable = _RELIABLE_NAMES.get(transport)
        if reliable is None:
            reliable = transport.upper() in RELIABLE_TRANSPORTS
        via = request.top_via
        if via is None:
            raise ValueError("request has no Via")
        source_ip = _shared_str(source[0])
        source_port = _shared_int(source[1])
        if not reliable:
            connection = None
        branch = via.branch
        match: Match
        if _is_3261_branch(branch):
            host = _shared_str(via.host.lower())
            port = via.port
            match = (branch, host, port if port is None else _shared_int(port),
                     source_ip, source_port, connection)
            size = ENTRY_OVERHEAD + len(branch) + len(host) + len(source_ip) + len(method)
        else:
            match = _rfc2543_values(request, via) + (source_ip, source_port, connection)
            size = ENTRY_OVERHEAD + _variable_bytes(match) + len(method)
        method = _shared_str(method)
        key = (match, method)
        entries = self._entries
        entry = entries.get(key)
        if entry is not None:
            if entry[_RESPONSE] is not None:
                return Retransmit(entry[_RESPONSE])
            return ABSORB
        if not self._has_room(size, now):
            return Full(self._retry_after(now))
        deadline = now + self.proceeding_timeout
        entries[key] = (deadline, None, reliable)
        self.bytes += size
        self._proceeding_keys.append(key)
        self._proceeding_deadlines.append(deadline)
        if method not in _UNINDEXED:
            self._targets[match] = method
        elif method == "CANCEL":
            return New(key, self._has_target(match))
        return New(key)

    def on_response(self, key: TransactionKey, response: bytes, now: float) -> None:
        """Store the final response and start Timer J (64*T1; on a connection transport 0
        unless `linger_reliable`, which ends the transaction now). A key the table no longer
        holds (its transaction timed out) is stored again as an unreliable transaction when
        there is room, so a late retransmission is still answered from it."""
        entries = self._entries
        entry = entries.get(key)
        if entry is None:
            size = _size(key, None)
            if not self._has_room(size + len(response), now):
                return
            self.bytes += size
            if key[1] not in _UNINDEXED:
                self._targets[key[0]] = key[1]
            reliable = False
        elif entry[_RESPONSE] is not None:
            return  # one final response per transaction
        else:
            reliable = entry[_RELIABLE]
            if reliable and not self.linger_reliable:
                self._drop(key, entry)
                return
            # Its item in the Proceeding queue is skipped when it reaches the front; answered
            # before any other request came, it goes now.
            keys = self._proceeding_keys
            if keys and keys[-1] is key:
                keys.pop()
                self._proceeding_deadlines.pop()
        entries[key] = (now + self.timer_j, response, reliable)
        self.bytes += len(response)
        self._completed_keys.append(key)

    def expire(self, now: float) -> int:
        """Drop completed transactions whose Timer J fired and in-progress ones that timed
        out; returns how many were dropped."""
        dropped = 0
        entries = self._entries
        keys = self._completed_keys
        while keys:
            key = keys[0]
            entry = entries.get(key)
            if entry is not None and entry[_RESPONSE] is not None:
                if entry[_DEADLINE] > now:
                    break
                self._drop(key, entry)
                dropped += 1
            keys.popleft()
        keys, deadlines = self._proceeding_keys, self._proceeding_deadlines
        while deadlines and deadlines[0] <= now:
            key = keys.popleft()
            deadline = deadlines.popleft()
            entry = entries.get(key)
            if entry is not None and entry[_RESPONSE] is None and entry[_DEADLINE] == deadline:
                self._drop(key, entry)
                dropped += 1
        return dropped

    def next_deadline(self) -> float | None:
        """When expire() next has something to do, or None."""
        self._skip_stale()
        deadlines = []
        if self._completed_keys:
            deadlines.append(self._entries[self._completed_keys[0]][_DEADLINE])
        if self._proceeding_deadlines:
            deadlines.append(self._proceeding_deadlines[0])
        return min(deadlines) if deadlines else None

    # ---- internals ------------------------------------------------------------------------

    def _has_room(self, size: int, now: float) -> bool:
        if len(self._entries) < self.max_entries and self.bytes + size <= self.max_bytes:
            return True
        # The caller's timer may not have run yet: drop what is due, then look again.
        self.expire(now)
        return len(self._entries) < self.max_entries and self.bytes + size <= self.max_bytes

    def _retry_after(self, now: float) -> int:
        deadline = self.next_deadline()
        if deadline is None:
            return 1
        return max(1, ceil(deadline - now))

    def _has_target(self, match: Match) -> bool:
        """Whether a transaction other than a CANCEL holds `match` (RFC 3261 9.2)."""
        entries = self._entries
        for method in _PROBED_METHODS:
            if (match, method) in entries:
                return True
        return match in self._targets

    def _skip_stale(self) -> None:
        """Pop queue items whose entry has left that state (completed, or timed out and
        replaced), so that the fronts are live."""
        entries = self._entries
        keys = self._completed_keys
        while keys:
            entry = entries.get(keys[0])
            if entry is not None and entry[_RESPONSE] is not None:
                break
            keys.popleft()
        keys, deadlines = self._proceeding_keys, self._proceeding_deadlines
        while keys:
            entry = entries.get(keys[0])
            if entry is not None and entry[_RESPONSE] is None and \
                    entry[_DEADLINE] == deadlines[0]:
                break
            keys.popleft()
            deadlines.popleft()

    def _drop(self, key: TransactionKey, entry: _Entry) -> None:
        del self._entries[key]
        self.bytes -= _size(key, entry)
        match, method = key
        if method not in _UNINDEXED and self._targets.get(match) == method:
            del self._targets[match]


def _size(key: TransactionKey, entry: _Entry | None) -> int:
    """What an entry is accounted for (the same sum on_request and on_response made)."""
    match, method = key
    if len(match) == _LEN_3261:
        size = ENTRY_OVERHEAD + len(match[0]) + len(match[1]) + len(match[3]) + len(method)
    else:
        size = ENTRY_OVERHEAD + _variable_bytes(match) + len(method)
    if entry is not None and entry[_RESPONSE] is not None:
        size += len(entry[_RESPONSE])
    return size
