"""`esc serve` and `esc publish`: the commands that speak SIP."""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
from typing import Any

from infrastructure.gc_tuning import tune_for_throughput

from .command_error import EXIT_STORE, CommandError
from .config import ConfigError, load_settings


def add_serve_commands(commands: Any) -> None:
    p = commands.add_parser("serve", help="run the compositor as a SIP server")
    p.add_argument("--listen", action="append",
                   help="udp:HOST:PORT or tcp:HOST:PORT (repeatable; default UDP and TCP "
                        "on 0.0.0.0:5060)")
    p.add_argument("--store", help="store URL (default sqlite:///esc.sqlite3)")
    p.add_argument("--events", help="event packages served, comma-separated "
                                    "(default presence,dialog,message-summary)")
    p.add_argument("--default-expires", type=int, help="expiry when a PUBLISH has none (60)")
    p.add_argument("--min-expires", type=int, help="shorter requests get 423 (1)")
    p.add_argument("--max-expires", type=int, help="longer requests are shortened (3600)")
    p.add_argument("--domain", action="append",
                   help="serve only this domain (repeatable; default: every domain)")
    p.add_argument("--max-batch", type=int, help="most PUBLISHes committed together (512)")
    p.add_argument("--cache-size", type=int, help="publications kept in memory (20000)")
    p.add_argument("--tcp-idle-timeout", type=float, help="close idle TCP connections (300 s)")
    p.add_argument("--log-level", help="debug, info, warning or error (info)")
    p.add_argument("--max-message-size", type=int, help="largest SIP message, bytes (65535)")
    p.add_argument("--max-headers", type=int, help="most header lines in a message (100)")
    p.add_argument("--max-header-length", type=int, help="longest header line, bytes (8192)")
    p.add_argument("--max-list-elements", type=int,
                   help="most elements of one list header such as Via or Require (128; 413 beyond)")
    p.add_argument("--max-params", type=int,
                   help="most parameters of one Via, name-addr or URI (64; 413 beyond)")
    p.add_argument("--max-body", action="append",
                   help="PACKAGE=BYTES: largest body for an event package (repeatable)")
    p.add_argument("--max-per-resource", type=int,
                   help="most live publications per resource and package (100)")
    p.add_argument("--max-tcp-connections", type=int, help="most open TCP/TLS connections (10000)")
    p.add_argument("--tcp-read-timeout", type=float,
                   help="close a connection that leaves a message half-sent this long (30 s)")
    p.add_argument("--rate-limit", type=float,
                   help="requests per second per source address, 0 = off (5000)")
    p.add_argument("--rate-burst", type=float, help="burst allowed above the rate (10000)")
    p.add_argument("--max-queue", type=int,
                   help="most PUBLISHes waiting for the store; beyond it 503 (4096)")
    p.add_argument("--max-queue-bytes", type=int,
                   help="their total size in bytes; beyond it 503 (16777216)")
    p.add_argument("--max-queue-wait", type=float,
                   help="seconds a PUBLISH may wait for the store before it is answered 503 (5)")
    p.add_argument("--store-timeout", type=float,
                   help="seconds without an answer from the store process before it is "
                        "restarted (5)")
    p.add_argument("--log-format", help="text or json: one JSON object per line, with a "
                   "line per request answered (text)")
    p.add_argument("--log-bodies", action="store_const", const="yes",
                   help="put request bodies in the request lines (off: bodies are personal "
                        "data)")
    p.add_argument("--max-subscriptions", type=int,
                   help="most active subscriptions (watchers); beyond it 503; 0 turns "
                        "SUBSCRIBE off (100000)")
    p.add_argument("--min-subscribe-expires", type=int,
                   help="shortest subscription granted; shorter gets 423 (60 s)")
    p.add_argument("--max-subscribe-expires", type=int,
                   help="longest subscription granted, and the default (3600 s)")
    p.add_argument("--notify-yield-ms", type=float,
                   help="NOTIFYs yield to PUBLISHes that waited longer than this for the "
                        "store; the changes they cannot tell meanwhile fold into later "
                        "NOTIFYs (10 ms; 0: never yield)")
    p.add_argument("--node",
                   help="this node's name when several share a PostgreSQL store: it sends "
                        "the NOTIFYs of the subscriptions it owns")
    p.add_argument("--max-transactions", type=int,
                   help="most transactions kept for retransmissions; beyond it 503 (400000)")
    p.add_argument("--max-transaction-bytes", type=int,
                   help="their total size in bytes; beyond it 503 (536870912)")
    p.add_argument("--auth-file", help="file of HA1 credentials: turns SIP Digest on")
    p.add_argument("--realm", help="Digest realm (default: the first --domain, else the host)")
    p.add_argument("--policy-file", help="TOML file: which users may publish for which AORs")
    p.add_argument("--trusted-peer", action="append", metavar="CIDR",
                   help="a proxy that authenticates its own users (e.g. Kamailio's pua): "
                        "requests from it skip Digest and the policy (repeatable)")
    p.add_argument("--auth-algorithms",
                   help="Digest algorithms offered, strongest first (SHA-256,MD5)")
    p.add_argument("--nonce-lifetime", type=float, help="seconds a Digest nonce stays valid (300)")
    p.add_argument("--tls-cert", help="PEM certificate (chain) for tls: listeners")
    p.add_argument("--tls-key", help="PEM private key for tls: listeners")
    p.add_argument("--metrics", metavar="HOST:PORT",
                   help="serve /metrics (Prometheus) and /health over HTTP there (off)")
    p.add_argument("--config", help="TOML file with any of these settings")
    p.set_defaults(handler=cmd_serve)

    p = commands.add_parser("publish", help="send one PUBLISH and print the answer")
    p.add_argument("uri", help="the resource, e.g. sip:alice@127.0.0.1:5060")
    p.add_argument("--event", required=True)
    p.add_argument("--body-file", help="file with the body ('-' for stdin)")
    p.add_argument("--content-type", help="default: by event package")
    p.add_argument("--etag", help="SIP-If-Match (refresh, modify, remove)")
    p.add_argument("--expires", type=int)
    p.add_argument("--transport", choices=("udp", "tcp"), default="udp")
    p.add_argument("--server", help="HOST:PORT to send to (default: the URI's host and port)")
    p.add_argument("--timeout", type=float, default=8.0, help="seconds to wait for an answer")
    p.add_argument("--json", action="store_true")
    p.set_defaults(handler=cmd_publish)


def cmd_serve(args: argparse.Namespace, out) -> int:
    cli = {k: v for k, v in vars(args).items() if k not in ("command", "handler", "config")}
    try:
        settings = load_settings(cli, args.config)
        from sip_adapter.aio.server import Listen

        listens = [Listen.parse(spec) for spec in settings.listen]
        from .bootstrap import _authentication, _tls_context

        _authentication(settings), _tls_context(settings)  # fail before anything starts
    except (ConfigError, ValueError) as error:
        raise CommandError(str(error)) from None
    from infrastructure import log_format

    log_format.configure(settings.log_level, settings.log_format)
    # The store process logs the same way: it reads the format from its environment.
    os.environ[log_format.ENVIRONMENT] = settings.log_format
    from .bootstrap import StoreGaveUp, serve

    try:
        return _run(serve(settings, listens,
                          reload_settings=lambda: load_settings(cli, args.config)))
    except OSError as error:
        raise CommandError(f"cannot listen: {error.strerror or error}", EXIT_STORE) from None
    except RuntimeError as error:  # the store process could not open the store
        raise CommandError(f"cannot open store {settings.store}: {error}",
                           EXIT_STORE) from None
    except StoreGaveUp as error:  # the store kept failing: let the service manager restart us
        raise CommandError(f"store failed: {error}", EXIT_STORE) from None


def cmd_publish(args: argparse.Namespace, out) -> int:
    from sip_adapter.aio.client import PublishError, publish_once

    body = None
    if args.body_file:
        try:
            body = sys.stdin.buffer.read() if args.body_file == "-" else \
                open(args.body_file, "rb").read()
        except OSError as error:
            raise CommandError(f"cannot read {args.body_file}: {error.strerror}") from None
    try:
        answer = publish_once(args.uri, args.event, body=body, content_type=args.content_type,
                              etag=args.etag, expires=args.expires, transport=args.transport,
                              server=args.server, timeout=args.timeout)
    except PublishError as error:
        raise CommandError(str(error), EXIT_STORE) from None
    if args.json:
        import json

        out(json.dumps(answer.as_dict()))
    else:
        out(f"{answer.status} {answer.reason}")
        for name in ("SIP-ETag", "Expires", "Min-Expires", "Allow-Events", "Accept",
                     "Retry-After"):
            value = answer.headers.get(name)
            if value is not None:
                out(f"{name}: {value}")
    return 0 if 200 <= answer.status < 300 else 1


def _run(coroutine) -> int:
    """uvloop's event loop when installed (a large share of per-datagram overhead is the
    loop's), asyncio's own otherwise."""
    tune_for_throughput()
    try:
        import uvloop
    except ImportError:
        return asyncio.run(coroutine)
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        return runner.run(coroutine)
