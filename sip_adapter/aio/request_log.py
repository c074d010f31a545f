"""One log line per request answered (with `--log-format json`): what an operator greps for.

Each line is a JSON object with the request's method, resource, Event, status, duration in
milliseconds, source address, transport, Call-ID and authenticated identity. Bodies are
left out (presence documents are personal data) unless `--log-bodies` asks for them.
"""

from __future__ import annotations

import logging
from typing import Callable

from ..protocol.service import RequestDone

log = logging.getLogger("esc.requests")


def request_logger(bodies: bool = False) -> Callable[[RequestDone], None]:
    info = log.info

    def log_request(done: RequestDone) -> None:
        fields = {
            "method": done.method,
            "resource": done.resource,
            "event": done.event,
            "status": done.status,
            "duration_ms": round(done.duration * 1000, 3),
            "source": done.origin.describe(),
            "transport": done.origin.transport,
            "call_id": done.call_id,
            "identity": done.identity,
        }
        if bodies and done.body:
            fields["body"] = done.body.decode("utf-8", "replace")
        info("request", extra=fields)

    return log_request
