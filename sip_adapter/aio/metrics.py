"""Metrics and health over HTTP (`esc serve --metrics HOST:PORT`), for operators.

- `/metrics`: the Prometheus text format (OpenMetrics when the scraper asks for it), from a
  `CollectorRegistry` of our own (never the library's global one): the process collector;
  request counters and a duration histogram fed by a request listener; and, read at
  scrape time, gauges and counters of the server, its store gateway, the NOTIFY sender and
  the store process's latest report (store_stats.py: live publications, commit batch
  sizes, expiry lag, feed position, subscriptions).
- `/health`: `200 ok` while the store accepts commits, `503 store unavailable: <why>`
  otherwise (store starting, restarting after a failure, server stopping, given up).

HTTP is served by the standard library (wsgiref, one daemon thread per request) from a
daemon thread: nothing here runs on the event loop but the request listener (a dict look-up,
a counter increment and a histogram observation per request) and the store report (once a
second). The scrape thread only reads ints, bools, lengths and dicts that the loop replaces
whole; it never calls into asyncio.

Store figures are absent until the store process's first report (about a second after it
starts), and always with an in-process committer (it sends none). Counters and histograms
of the store process are summed over its restarts (its own restart at zero), so they only
ever grow, as Prometheus expects of them.
"""

from __future__ import annotations

import logging
import socket
import socketserver
import threading
import time
from typing import TYPE_CHECKING, Any, Callable, Iterable, Iterator
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer

from prometheus_client import CollectorRegistry, Counter, Histogram, ProcessCollector
from prometheus_client import make_wsgi_app
from prometheus_client.core import (CounterMetricFamily, GaugeMetricFamily,
                                    HistogramMetricFamily, Metric)
from prometheus_client.registry import Collector

from ..protocol.service import RequestDone

if TYPE_CHECKING:
    from .server import SipServer

log = logging.getLogger("esc.metrics")

#: Methods counted under their own name; any other is "other" (a client chooses the
#: method token, so it must not choose our label values).
METHODS = frozenset({"PUBLISH", "SUBSCRIBE", "NOTIFY", "OPTIONS", "ACK", "CANCEL", "INVITE",
                     "BYE", "REGISTER", "MESSAGE", "INFO", "PRACK", "UPDATE", "REFER"})
#: Seconds from a request's arrival to its final response.
DURATION_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0,
                    2.5, 5.0, 10.0)
#: Store-process figures that only grow (summed over the store's restarts).
_STORE_HISTOGRAMS = ("batch_size", "expiry_lag")


class Metrics:
    """The registry and what feeds it. Create it on the event loop's thread, before the
    server starts (it adds a request listener)."""

    def __init__(self, server: "SipServer", clock: Callable[[], float] = time.monotonic
                 ) -> None:
        self.server = server
        self.clock = clock
        self.registry = CollectorRegistry()
        ProcessCollector(registry=self.registry)
        self._requests = Counter(
            "esc_requests", "SIP requests answered with a final response, by method and "
            "status code", ("method", "status"), registry=self.registry)
        self._duration = Histogram(
            "esc_request_duration_seconds", "Seconds from a request's arrival to its final "
            "response (a PUBLISH's includes its commit), by method", ("method",),
            buckets=DURATION_BUCKETS, registry=self.registry)
        # (method, status) -> (counter.inc, histogram.observe) of its children
        self._children: dict[tuple[str, int], tuple[Callable[..., None],
                                                    Callable[[float], None]]] = {}
        self._store = _StoreReports(clock)
        self.registry.register(_ServerCollector(server, self._store))
        server.add_request_listener(self.on_request)
        server.gateway.on_store_stats = self._store.report

    def on_request(self, done: RequestDone) -> None:
        """The request listener: on the event loop, for every final response."""
        children = self._children.get((done.method, done.status))
        if children is None:
            children = self._add_children(done.method, done.status)
        children[0]()
        children[1](done.answered_at - done.received_at)

    def _add_children(self, method: str, status: int
                      ) -> tuple[Callable[..., None], Callable[[float], None]]:
        label = method if method in METHODS else "other"
        children = (self._requests.labels(label, str(status)).inc,
                    self._duration.labels(label).observe)
        if label != "other":  # never keyed by a method token a client made up
            self._children[(method, status)] = children
        return children

    def health(self) -> tuple[bool, str]:
        """(healthy, the one line to answer with)."""
        reason = self.server.gateway.unavailable_reason
        if reason is None:
            return True, "ok"
        return False, f"store unavailable: {reason}"

    def wsgi_app(self) -> Callable[..., Iterable[bytes]]:
        metrics_app = make_wsgi_app(self.registry)

        def app(environ: dict[str, Any], start_response: Callable[..., Any]
                ) -> Iterable[bytes]:
            path = environ.get("PATH_INFO") or "/"
            if path == "/metrics":
                return metrics_app(environ, start_response)  # type: ignore[no-any-return]
            if path == "/health":
                healthy, line = self.health()
                status = "200 OK" if healthy else "503 Service Unavailable"
            else:
                status, line = "404 Not Found", "not found: try /metrics or /health"
            body = (line + "\n").encode("utf-8")
            start_response(status, [("Content-Type", "text/plain; charset=utf-8"),
                                    ("Content-Length", str(len(body))),
                                    ("Cache-Control", "no-store")])
            return [] if environ.get("REQUEST_METHOD") == "HEAD" else [body]

        return app


class _StoreReports:
    """The store process's reports, folded so that what only grows keeps growing across
    its restarts. `report` runs on the event loop; the scrape thread reads `latest` (a
    dict replaced whole, never changed) and `received_at`."""

    def __init__(self, clock: Callable[[], float]) -> None:
        self.clock = clock
        self.latest: dict[str, Any] | None = None
        self.received_at = 0.0
        self._pid: Any = None
        self._last: dict[str, Any] | None = None
        self._base: dict[str, Any] = {}  # sums over the store processes before this one

    def report(self, stats: dict[str, Any]) -> None:
        pid = stats.get("pid")
        if self._last is not None and pid != self._pid:
            self._base = _add_growing(self._base, self._last)
        self._pid, self._last = pid, stats
        self.latest = _add_growing(self._base, stats, gauges=stats)
        self.received_at = self.clock()


def _add_growing(base: dict[str, Any], more: dict[str, Any],
                 gauges: dict[str, Any] | None = None) -> dict[str, Any]:
    """`base` plus the growing figures of `more` (histograms, the expired count, the
    notifier's counters); with `gauges`, its other figures as they are."""
    out: dict[str, Any] = dict(gauges) if gauges is not None else {}
    for name in _STORE_HISTOGRAMS:
        mine, theirs = base.get(name), more.get(name)
        if theirs is None:
            if mine is not None:
                out[name] = mine
            continue
        if mine is None or tuple(mine["bounds"]) != tuple(theirs["bounds"]):
            out[name] = theirs
        else:
            out[name] = {"bounds": theirs["bounds"],
                         "counts": [a + b for a, b in zip(mine["counts"], theirs["counts"])],
                         "sum": mine["sum"] + theirs["sum"]}
    out["expired"] = base.get("expired", 0) + more.get("expired", 0)
    notifier = dict(base.get("notifier", {}))
    for key, value in more.get("notifier", {}).items():
        notifier[key] = notifier.get(key, 0) + value
    out["notifier"] = notifier
    return out


class _ServerCollector(Collector):
    """Everything read at scrape time, from the scrape thread."""

    def __init__(self, server: "SipServer", store: _StoreReports) -> None:
        self.server = server
        self.store = store

    def collect(self) -> Iterator[Metric]:
        server, gateway = self.server, self.server.gateway
        service, sender = server.service, server.notify_sender
        yield _gauge("esc_store_up", "1 while the store accepts commits, else 0",
                     1 if gateway.available else 0)
        yield _gauge("esc_queue_depth", "PUBLISH and SUBSCRIBE requests waiting for the "
                     "store (not yet handed over)", gateway.queued)
        yield _gauge("esc_queue_bytes", "Their size in bytes of SIP message",
                     gateway.queued_bytes)
        yield _gauge("esc_store_in_flight", "Requests handed to the store, not yet "
                     "answered", _in_flight(gateway))
        transactions = GaugeMetricFamily(
            "esc_transactions", "Transactions held: server (answers kept for "
            "retransmissions) and notify (NOTIFYs awaiting their answer)", labels=("kind",))
        transactions.add_metric(("server",), len(service.transactions))
        transactions.add_metric(("notify",), len(sender.transactions))
        yield transactions
        yield _gauge("esc_connections", "Open TCP and TLS connections", server.connections)
        notifies = CounterMetricFamily(
            "esc_notifies", "NOTIFYs sent (first transmissions), retransmitted, delivered "
            "(2xx) and failed (error, timeout or no way to send)", labels=("outcome",))
        for outcome in ("sent", "retransmitted", "delivered", "failed"):
            notifies.add_metric((outcome,), sender.stats.get(outcome, 0))
        yield notifies
        stats = gateway.stats
        yield _counter("esc_store_restarts", "Store processes restarted after a failure",
                       stats.get("restarts", 0))
        yield _counter("esc_store_failures", "Store process failures (died or hung)",
                       stats.get("store_deaths", 0))
        refused = CounterMetricFamily(
            "esc_refused", "Requests answered 503 by admission control: the store queue "
            "full (overload), the store away (unavailable), waited too long for the store "
            "(timeout), the transaction table full (transactions)", labels=("reason",))
        refused.add_metric(("overload",), stats.get("refused_overload", 0))
        refused.add_metric(("unavailable",), stats.get("refused_unavailable", 0))
        refused.add_metric(("timeout",), stats.get("timed_out", 0))
        refused.add_metric(("transactions",), service.stats.get("table_full", 0))
        yield refused
        yield _counter("esc_rate_limited", "Messages over a source's rate limit (answered "
                       "503 or dropped)", service.stats.get("rate_limited", 0))
        yield _counter("esc_retransmissions", "Requests received again (retransmissions "
                       "absorbed or answered from the transaction table)",
                       service.stats.get("retransmissions", 0))
        yield _counter("esc_parse_errors", "Messages that could not be parsed",
                       service.stats.get("parse_errors", 0))
        yield from self._store_figures()

    def _store_figures(self) -> Iterator[Metric]:
        latest = self.store.latest
        if latest is None:
            return
        yield _gauge("esc_store_report_age_seconds", "Seconds since the store process's "
                     "last report (about one a second while it runs)",
                     max(0.0, self.store.clock() - self.store.received_at))
        live = GaugeMetricFamily("esc_publications_live", "Publications in the current-"
                                 "state view, by event package", labels=("event",))
        counts = dict.fromkeys(self.server.config.service.allowed_events, 0)
        counts.update(latest.get("live", {}))
        for event, count in sorted(counts.items()):
            live.add_metric((event,), count)
        yield live
        yield _histogram("esc_commit_batch_size", "Requests decided and committed together "
                         "(one transaction)", latest.get("batch_size"))
        yield _histogram("esc_expiry_lag_seconds", "Seconds between a publication's expiry "
                         "time and the recording of its Expired event",
                         latest.get("expiry_lag"))
        yield _counter("esc_expired", "Publications ended by the expiry scheduler",
                       latest.get("expired", 0))
        position = latest.get("feed_position", -1)
        if position >= 0:
            yield _gauge("esc_feed_position", "The change feed's head: position of the last "
                         "event stored", position)
        if "subscriptions" in latest:
            yield _gauge("esc_subscriptions_active", "Subscriptions (watchers) the notifier "
                         "holds", latest["subscriptions"])
            yield _gauge("esc_notifier_in_flight", "NOTIFYs the notifier awaits an outcome "
                         "of", latest.get("notifies_in_flight", 0))
            if position >= 0:
                yield _gauge("esc_notifier_lag_events", "Feed events the notifier has not "
                             "consumed yet", max(0, position - latest.get("notifier_position",
                                                                          position)))
            yield _gauge("esc_notifier_waiting", "Subscriptions with a change not told yet "
                         "(waiting for their NOTIFY in flight, the in-flight bound or the "
                         "pacer)", latest.get("notifies_waiting", 0))
            if "notify_share" in latest:
                yield _gauge("esc_notify_share", "Share of the store process's time NOTIFY "
                             "recording may take while PUBLISHes flow (1: all it wants; "
                             "lower: PUBLISHes waited past --notify-yield-ms)",
                             latest["notify_share"])
            folded = latest.get("notifier", {})
            yield _counter("esc_notifies_folded", "Changes folded into a later NOTIFY (the "
                           "watcher had one in flight, or the pacer held it back)",
                           folded.get("folded", 0))
            yield _counter("esc_notify_steps_paced", "NOTIFY steps cut short or put off so "
                           "that waiting PUBLISHes go first", folded.get("paced_steps", 0))
            yield _counter("esc_subscriptions_expired", "Subscriptions ended by timeout",
                           folded.get("expired", 0))


def _gauge(name: str, documentation: str, value: float) -> GaugeMetricFamily:
    return GaugeMetricFamily(name, documentation, value=value)


def _counter(name: str, documentation: str, value: float) -> CounterMetricFamily:
    return CounterMetricFamily(name, documentation, value=value)


def _histogram(name: str, documentation: str, data: dict[str, Any] | None
               ) -> HistogramMetricFamily:
    """A histogram from the store process's plain form: per-bucket counts (the last
    one +Inf) and a sum."""
    bounds: tuple[float, ...] = tuple(data["bounds"]) if data else ()
    counts: list[int] = list(data["counts"]) if data else [0]
    buckets: list[tuple[str, float]] = []
    total = 0
    for bound, count in zip(bounds, counts):
        total += count
        buckets.append((repr(float(bound)), total))  # as the library writes le
    buckets.append(("+Inf", sum(counts)))
    return HistogramMetricFamily(name, documentation, buckets=buckets,
                                 sum_value=data["sum"] if data else 0.0)


def _in_flight(gateway: Any) -> int:
    # It sums a deque the loop may change meanwhile: read again when it did.
    for _ in range(5):
        try:
            return int(gateway.in_flight)
        except RuntimeError:
            continue
    return 0


# ---- HTTP ---------------------------------------------------------------------------------


class _Handler(WSGIRequestHandler):
    timeout = 5  # seconds one read may take
    #: Seconds a connection may live in all: a client that trickles a byte every few
    #: seconds would otherwise hold one of the few slots for ever (and /health with it).
    deadline = 5.0

    def setup(self) -> None:
        super().setup()
        self._deadline = threading.Timer(self.deadline, self._cut)
        self._deadline.daemon = True
        self._deadline.start()

    def _cut(self) -> None:
        try:
            self.request.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass

    def finish(self) -> None:
        self._deadline.cancel()
        super().finish()

    def log_message(self, format: str, *args: Any) -> None:
        pass  # a scrape every few seconds is not worth a log line


#: Connections served at once; more are closed at once (a scraper and a health checker need
#: two; a flood of connections must not become a flood of threads).
MAX_HTTP_CONNECTIONS = 16


class _HttpServer(socketserver.ThreadingMixIn, WSGIServer):
    daemon_threads = True
    allow_reuse_address = True
    block_on_close = False
    request_queue_size = 64  # accepted then refused at once, rather than left in SYN retries

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self._active = threading.BoundedSemaphore(MAX_HTTP_CONNECTIONS)
        super().__init__(*args, **kwargs)

    def process_request(self, request: Any, client_address: Any) -> None:
        if not self._active.acquire(blocking=False):
            self.shutdown_request(request)  # at the bound: refuse, do not queue
            return
        super().process_request(request, client_address)

    def process_request_thread(self, request: Any, client_address: Any) -> None:
        try:
            super().process_request_thread(request, client_address)
        finally:
            self._active.release()

    def server_bind(self) -> None:
        # HTTPServer.server_bind asks DNS for our name (getfqdn): not worth a wait here.
        socketserver.TCPServer.server_bind(self)
        host, port = self.server_address[:2]
        self.server_name, self.server_port = str(host), int(port)
        self.setup_environ()


class MetricsHttp:
    """The HTTP endpoint, served from a daemon thread."""

    def __init__(self, metrics: Metrics, host: str, port: int) -> None:
        self.metrics = metrics
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        server_class = type("_Server", (_HttpServer,), {"address_family": family})
        self.httpd: _HttpServer = server_class((host, port), _Handler)
        self.httpd.set_app(metrics.wsgi_app())
        self.host, self.port = host, int(self.httpd.server_address[1])
        self._thread = threading.Thread(target=self.httpd.serve_forever, name="esc-metrics",
                                        kwargs={"poll_interval": 0.5}, daemon=True)

    def start(self) -> "MetricsHttp":
        self._thread.start()
        return self

    def describe(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"metrics http {host}:{self.port}"

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


def serve_metrics(server: "SipServer", host: str, port: int,
                  announce: Callable[[str], None] = print) -> MetricsHttp:
    """Bind HOST:PORT (an OSError when it cannot), serve /metrics and /health from a
    daemon thread, announce `metrics http HOST:PORT`. Call it on the event loop's thread
    before the server starts."""
    http = MetricsHttp(Metrics(server), host, port).start()
    announce(http.describe())
    return http
