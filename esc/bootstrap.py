"""The composition root: the one place that builds infrastructure from settings."""

from __future__ import annotations

import asyncio
import logging
import signal
import time
from typing import Any

from domain import EventPackages, SubscriptionPolicy
from infrastructure import Compositor
from infrastructure.notifier import NotifierConfig
from infrastructure.random_pool import RandomPool
from infrastructure.store_process import StoreProcess
from infrastructure.store_url import redact_url

from .systemd import notify

log = logging.getLogger("esc")


def open_compositor(store: str, **options: Any) -> Compositor:
    return Compositor.open(store, **options)


class StoreGaveUp(Exception):
    """The store process kept failing and could not be restarted: the server exits
    non-zero, so that its service manager restarts it."""


async def serve(settings, listens, reload_settings=None) -> int:
    """Run `esc serve` until SIGTERM or SIGINT; then stop reading, finish, exit 0."""
    from sip_adapter.protocol.limits import Limits
    from sip_adapter.aio.server import ServerConfig, SipServer
    from sip_adapter.protocol.service import ServiceConfig
    from sip_adapter.aio.store_gateway import GatewayConfig

    from .config import package_body_limits, trusted_networks

    packages = EventPackages.named(settings.events)
    loop = asyncio.get_running_loop()
    options = dict(events=settings.events, default_expires=settings.default_expires,
                   min_expires=settings.min_expires, max_expires=settings.max_expires,
                   cache_size=settings.cache_size, max_per_resource=settings.max_per_resource)

    notifier = None
    if settings.max_subscriptions:
        notifier = NotifierConfig(
            policy=SubscriptionPolicy(default_expires=settings.max_subscribe_expires,
                                      min_expires=settings.min_subscribe_expires,
                                      max_expires=settings.max_subscribe_expires),
            node=_node_name(settings), max_subscriptions=settings.max_subscriptions,
            publish_wait_target=settings.notify_yield_ms / 1000 or None)

    def start_store_process():
        # The compositor, its expiry scheduler and the notifier run in a process of their
        # own, so parsing and committing use both cores (see
        # infrastructure/store_process.py); the server's gateway starts it again whenever
        # it dies.
        return StoreProcess.start(settings.store, notifier=notifier, **options)

    authenticator, policy = _authentication(settings)
    if authenticator is None:
        log.warning("authentication is OFF: any client may publish for any resource "
                    "(give --auth-file to require SIP Digest)")
    else:
        log.info("SIP Digest authentication on, realm %r", authenticator.realm)
    trusted_peers = trusted_networks(settings)
    if trusted_peers:
        log.info("trusted peers (no Digest, no policy; the user agent's address is taken "
                 "from the bottom-most Via): %s", ", ".join(map(str, trusted_peers)))
    service = ServiceConfig(allowed_events=tuple(packages.names),
                            authenticator=authenticator, policy=policy,
                            accepted_types=tuple(packages.content_types),
                            domains=tuple(settings.domain),
                            rate_limit=settings.rate_limit or None,
                            rate_burst=settings.rate_burst,
                            max_body_per_package=tuple(package_body_limits(settings).items()),
                            max_transactions=settings.max_transactions,
                            max_transaction_bytes=settings.max_transaction_bytes,
                            subscribe=notifier is not None,
                            trusted_peers=trusted_peers)
    limits = Limits(max_message_size=settings.max_message_size,
                    max_headers=settings.max_headers,
                    max_header_length=settings.max_header_length,
                    max_body_size=settings.max_message_size,
                    max_list_elements=settings.max_list_elements,
                    max_params=settings.max_params)
    gateway = GatewayConfig(max_batch=settings.max_batch, max_queue=settings.max_queue,
                            max_queue_bytes=settings.max_queue_bytes,
                            max_wait=settings.max_queue_wait,
                            store_timeout=settings.store_timeout)
    stop = asyncio.Event()
    server = SipServer(start_store_process, ServerConfig(
        listen=listens, service=service, limits=limits, gateway=gateway,
        tcp_idle_timeout=settings.tcp_idle_timeout, tcp_read_timeout=settings.tcp_read_timeout,
        max_tcp_connections=settings.max_tcp_connections,
        tls_context=_tls_context(settings)),
        random_bytes=RandomPool().take, wall_clock=time.time,
        announce=lambda line: print(line, flush=True), on_fatal=lambda why: stop.set())
    if settings.log_format == "json":
        from sip_adapter.aio.request_log import request_logger

        server.add_request_listener(request_logger(
            bodies=settings.log_bodies in ("yes", "true", "1")))
    metrics = None
    if settings.metrics:  # bound before the store starts: /health says 503 until it runs
        from sip_adapter.aio.metrics import serve_metrics

        from .config import metrics_address

        metrics = serve_metrics(server, *metrics_address(settings.metrics),
                                announce=lambda line: print(line, flush=True))
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    if reload_settings is not None:
        from .reload import reloader

        # SIGHUP re-reads --auth-file, --policy-file and the trusted peers (esc/reload.py).
        loop.add_signal_handler(signal.SIGHUP, reloader(server, authenticator, settings,
                                                        reload_settings))
    await server.start()
    notify("READY=1\nSTATUS=" + "; ".join(f"listening {listen.describe(port)}"
                                          for listen, port in server.bound))
    log.info("store %s; events %s; expiry %s..%s s (default %s)",
             redact_url(settings.store),
             ",".join(packages.names), settings.min_expires, settings.max_expires,
             settings.default_expires)
    await stop.wait()
    notify("STOPPING=1")
    if server.fatal is not None:
        await server.stop(drain_timeout=0)
        if metrics is not None:
            metrics.close()
        raise StoreGaveUp(server.fatal)
    log.info("stopping: finishing requests in flight")
    await server.stop()
    if metrics is not None:
        metrics.close()
    return 0


def _node_name(settings) -> str | None:
    """This node's name on a store several nodes share: --node, else host name and process
    id (a restarted node then gets a new name, and the subscriptions of its old one are
    adopted when its lease runs out, by it or by another node). None on a store of one
    process: it owns every subscription."""
    if settings.node:
        return settings.node
    if not settings.store.lower().startswith(("postgresql:", "postgres:")):
        return None
    import os
    import socket

    return f"{socket.gethostname()}-{os.getpid()}"


def _authentication(settings):
    """The Digest authenticator and authorization policy the settings ask for, if any.
    Errors (unreadable files, bad lines) are ConfigError: one line for the operator."""
    from sip_adapter.protocol.authorization import PolicyError, load_policy
    from sip_adapter.protocol.digest import CredentialsError, DigestAuthenticator, load_credentials

    from .config import ConfigError

    if not settings.auth_file:
        return None, None
    realm = settings.realm or (settings.domain[0] if settings.domain else "")
    if not realm:
        raise ConfigError("--auth-file needs --realm (or a --domain to use as the realm)")
    try:
        credentials = load_credentials(settings.auth_file)
        policy = load_policy(settings.policy_file) if settings.policy_file else None
    except (CredentialsError, PolicyError) as error:
        raise ConfigError(str(error)) from None
    if realm not in credentials.realms:
        log.warning("no credentials in %s for realm %r", settings.auth_file, realm)
    algorithms = tuple(a.upper() for a in settings.auth_algorithms)
    return DigestAuthenticator(credentials, realm, nonce_lifetime=settings.nonce_lifetime,
                               algorithms=algorithms), policy


def _tls_context(settings):
    if not settings.tls_cert:
        return None
    import ssl

    from .config import ConfigError

    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    try:
        context.load_cert_chain(settings.tls_cert, settings.tls_key)
    except (OSError, ssl.SSLError) as error:
        raise ConfigError(f"cannot load TLS certificate/key: {error}") from None
    return context
