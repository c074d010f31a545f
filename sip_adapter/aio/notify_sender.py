"""Sends the notifier's NOTIFYs as client transactions and reports what became of them.

Each `NotifyJob` (its CSeq already recorded by the store) is rendered, sent and kept in the
client transaction table (Timer E retransmits it over UDP, Timer F gives up after 32 s).
It goes where the SUBSCRIBE came from (design decision 11): over UDP from one of our UDP
sockets to that source address and port, over TCP or TLS on the connection the SUBSCRIBE
came on while it is open. With no way to send it (that connection has closed, no socket
of the right family) it fails at once, as a timeout does, and the notifier ends the
subscription. Every final answer, timeout or failure becomes a `NotifyOutcome`, reported
to the store in batches (one message per turn of the loop).
"""

from __future__ import annotations

import logging
from collections import deque
from typing import Any, Callable, Protocol

from domain import NotifyJob, NotifyOutcome

from ..protocol.abnf import delta_seconds
from ..protocol.client_transactions import ClientTransactions
from ..protocol.messages import Response
from ..protocol.notify import new_branch, render_notify
from ..protocol.routing import Origin

log = logging.getLogger("esc.notify")

#: NOTIFYs sent per turn of the event loop (about 1 ms of work).
SENDS_PER_TURN = 32


class Link(Protocol):
    """A UDP socket or a connection we can send on."""

    def send(self, data: bytes, destination: Any = None) -> None: ...


class NotifySender:
    def __init__(self, *, find_udp: Callable[[str, str | None], tuple[Link, Origin] | None],
                 find_connection: Callable[[str, str, int], tuple[Link, Origin] | None],
                 local_address: Callable[[Origin], tuple[str, int]],
                 random_bytes: Callable[[int], bytes],
                 report: Callable[[list[NotifyOutcome]], None],
                 clock: Callable[[], float], call_at: Callable[..., Any],
                 call_soon: Callable[..., Any], user_agent: str = "esc/0.1",
                 max_transactions: int = 100_000) -> None:
        self._find_udp = find_udp
        self._find_connection = find_connection
        self._local_address = local_address
        self._random_bytes = random_bytes
        self._report = report
        self._clock = clock
        self._call_at = call_at
        self._call_soon = call_soon
        self.user_agent = user_agent
        self.transactions: ClientTransactions = ClientTransactions(max_entries=max_transactions)
        self._outcomes: list[NotifyOutcome] = []
        # Jobs handed over but not yet sent: sent a few per turn of the event loop, so a
        # burst of NOTIFYs never holds up the answers to PUBLISHes read meanwhile. (Its
        # length is bounded by the notifier's limit on NOTIFYs in flight.)
        self._queue: deque[NotifyJob] = deque()
        self._draining = False
        self._timer: Any = None
        self._timer_at: float | None = None
        self.stats = {"sent": 0, "retransmitted": 0, "delivered": 0, "failed": 0}

    # ---- out -----------------------------------------------------------------------------

    def send(self, jobs: list[NotifyJob]) -> None:
        self._queue.extend(jobs)
        if not self._draining:
            self._draining = True
            self._drain()

    def _drain(self) -> None:
        now = self._clock()
        for _ in range(min(len(self._queue), SENDS_PER_TURN)):
            job = self._queue.popleft()
            try:
                self._send(job, now)
            except Exception:  # one NOTIFY's failure never touches the others
                log.exception("sending a NOTIFY to %s:%s failed", job.host, job.port)
                self._outcome(job, 408)
        self._arm()
        if self._queue:
            self._call_soon(self._drain)
        else:
            self._draining = False

    def _send(self, job: NotifyJob, now: float) -> None:
        destination = (job.host, job.port)
        if job.transport == "udp":
            found = self._find_udp(job.host, job.received_on)
        else:
            found = self._find_connection(job.transport, job.host, job.port)
        if found is None:
            log.info("no way to send a NOTIFY to %s %s:%d (connection closed): failed",
                     job.transport, job.host, job.port)
            self._outcome(job, 408)
            return
        link, origin = found
        sent_by = self._local_address(Origin(job.transport, destination, origin.connection,
                                             origin.local))
        branch = new_branch(self._random_bytes)
        data = render_notify(job, transport=job.transport, sent_by=sent_by, branch=branch,
                             user_agent=self.user_agent)
        reliable = job.transport != "udp"
        if not self.transactions.start(branch, data, reliable, now, job):
            log.warning("client transaction table full: NOTIFY to %s:%d not sent",
                        job.host, job.port)
            self._outcome(job, 503, retry_after=1)
            return
        try:
            link.send(data, destination)
        except Exception as error:  # RFC 3261 8.1.3.1: a transport error is a 503
            log.info("sending a NOTIFY to %s:%d failed: %s", job.host, job.port, error)
            done = self.transactions.on_transport_error(branch)
            if done is not None:
                self._outcome(job, done.status)
            return
        self.stats["sent"] += 1

    # ---- in ------------------------------------------------------------------------------

    def on_response(self, response: Response) -> None:
        """A response that reached us: if it answers one of our NOTIFYs, complete it."""
        try:
            via = response.top_via
            cseq = response.cseq
        except Exception:
            return
        if via is None or cseq is None or via.branch is None:
            return
        completed = self.transactions.on_response(via.branch, cseq.method, response.status,
                                                  self._clock())
        if completed is None:
            return
        retry_after = None
        if response.status >= 300:
            value = response.headers.get("Retry-After")
            if value is not None:
                # Retry-After = delta-seconds [ comment ] *( SEMI retry-param )
                retry_after = delta_seconds(value.split(";", 1)[0].split("(", 1)[0].strip())
        self._outcome(completed.context, response.status, retry_after)
        self._arm()

    # ---- timers ----------------------------------------------------------------------------

    def _arm(self) -> None:
        deadline = self.transactions.next_deadline()
        if deadline is None or (self._timer_at is not None and self._timer_at <= deadline):
            return
        if self._timer is not None:
            self._timer.cancel()
        self._timer_at = deadline
        self._timer = self._call_at(deadline, self._fire)

    def _fire(self) -> None:
        self._timer, self._timer_at = None, None
        retransmits, completed = self.transactions.due(self._clock())
        for data, job in retransmits:
            found = self._find_udp(job.host, job.received_on)
            if found is not None:
                try:
                    found[0].send(data, (job.host, job.port))
                    self.stats["retransmitted"] += 1
                except Exception as error:
                    log.debug("retransmission failed: %s", error)
        for done in completed:
            self._outcome(done.context, done.status)
        self._arm()

    # ---- outcomes ----------------------------------------------------------------------------

    def _outcome(self, job: NotifyJob, status: int, retry_after: int | None = None) -> None:
        outcome = NotifyOutcome(job.subscription_id, job.cseq, status, retry_after)
        self.stats["delivered" if outcome.delivered else "failed"] += 1
        if not self._outcomes:
            self._call_soon(self._flush)
        self._outcomes.append(outcome)

    def _flush(self) -> None:
        outcomes, self._outcomes = self._outcomes, []
        if outcomes:
            try:
                self._report(outcomes)
            except Exception:
                log.exception("reporting NOTIFY outcomes failed")

    def close(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
