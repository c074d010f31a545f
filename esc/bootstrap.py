"""The composition root: the one place that builds infrastructure from settings."""

from __future__ import annotations

import asyncio
import logging
import signal
from typing import Any

from domain import EventPackages
from infrastructure import Compositor, ExpiryScheduler

log = logging.getLogger("esc")


def open_compositor(store: str, **options: Any) -> Compositor:
    return Compositor.open(store, **options)


async def serve(settings, listens) -> int:
    """Run `esc serve` until SIGTERM or SIGINT; then stop reading, finish, exit 0."""
    from sip_adapter.server import ServerConfig, SipServer
    from sip_adapter.service import ServiceConfig

    packages = EventPackages.named(settings.events)
    loop = asyncio.get_running_loop()
    compositor = await loop.run_in_executor(None, lambda: open_compositor(
        settings.store, events=packages, default_expires=settings.default_expires,
        min_expires=settings.min_expires, max_expires=settings.max_expires,
        cache_size=settings.cache_size))
    scheduler = ExpiryScheduler(compositor).start()
    service = ServiceConfig(allowed_events=tuple(packages.names),
                            accepted_types=tuple(packages.content_types),
                            domains=tuple(settings.domain))
    server = SipServer(compositor, ServerConfig(listen=listens, service=service,
                                                max_batch=settings.max_batch,
                                                tcp_idle_timeout=settings.tcp_idle_timeout),
                       announce=lambda line: print(line, flush=True))
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    try:
        await server.start()
        log.info("store %s; events %s; expiry %s..%s s (default %s)", settings.store,
                 ",".join(packages.names), settings.min_expires, settings.max_expires,
                 settings.default_expires)
        await stop.wait()
        log.info("stopping: finishing requests in flight")
        await server.stop()
    finally:
        scheduler.stop()
        compositor.close()
    return 0
