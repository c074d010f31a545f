"""`esc serve` settings: command line first, then ESC_* environment variables, then the
TOML file given with --config, then the defaults. Every problem is one clear line."""

from __future__ import annotations

import ipaddress
import os
import tomllib
from dataclasses import dataclass, field, fields
from typing import Any

from infrastructure import DEFAULT_STORE_URL


class ConfigError(ValueError):
    """A setting is wrong; the message says which and why, in one line."""


@dataclass
class ServeSettings:
    listen: list[str] = field(default_factory=lambda: ["udp:0.0.0.0:5060", "tcp:0.0.0.0:5060"])
    store: str = DEFAULT_STORE_URL
    events: list[str] = field(default_factory=lambda: ["presence", "dialog", "message-summary"])
    default_expires: int = 60
    min_expires: int = 1
    max_expires: int = 3600
    domain: list[str] = field(default_factory=list)
    # CIDRs of proxies that authenticate their own users: skip Digest and the policy
    trusted_peer: list[str] = field(default_factory=list)
    max_batch: int = 512
    cache_size: int = 20000
    tcp_idle_timeout: float = 300.0
    log_level: str = "info"
    log_format: str = "text"  # text, or json (one object per line, a line per request)
    log_bodies: str = "no"  # yes: request bodies in the request lines
    metrics: str = ""  # HOST:PORT for /metrics (Prometheus) and /health over HTTP; "": off
    # limits (issue: hardening); each has a safe default
    max_message_size: int = 65535
    max_headers: int = 100
    max_header_length: int = 8192
    max_body: list[str] = field(default_factory=list)  # ["presence=16384", ...]
    max_list_elements: int = 128  # elements of one list header (Via, Route, Require, ...)
    max_params: int = 64  # parameters of one via-parm, name-addr or URI
    max_per_resource: int = 100
    max_tcp_connections: int = 10000
    tcp_read_timeout: float = 30.0
    rate_limit: float = 5000.0  # requests/s per source address; 0 turns it off
    rate_burst: float = 10000.0
    # admission control and supervision of the store process (sip_adapter/store_gateway.py)
    max_queue: int = 4096  # PUBLISHes waiting for the store; beyond it 503
    max_queue_bytes: int = 16 * 1024 * 1024  # their size in bytes; beyond it 503
    max_queue_wait: float = 5.0  # seconds a PUBLISH may wait for the store; then 503
    store_timeout: float = 5.0  # a batch unanswered this long: the store is restarted
    max_transactions: int = 400_000  # transactions kept for retransmissions; beyond it 503
    max_transaction_bytes: int = 512 * 1024 * 1024  # their size in bytes; beyond it 503
    # the notifier (SUBSCRIBE/NOTIFY for watchers)
    max_subscriptions: int = 100_000  # active subscriptions held; beyond it 503; 0: no SUBSCRIBE
    min_subscribe_expires: int = 60  # a shorter non-zero SUBSCRIBE gets 423 with Min-Expires
    max_subscribe_expires: int = 3600  # a longer one is shortened; also the default
    # NOTIFY recording yields to PUBLISHes that waited longer than this for the store
    # (milliseconds; the changes it cannot tell meanwhile fold); 0: never yields
    notify_yield_ms: float = 10.0
    node: str = ""  # this node's name (PostgreSQL, several nodes): it notifies what it owns
    # authentication, authorization, TLS
    auth_file: str = ""
    realm: str = ""
    policy_file: str = ""
    nonce_lifetime: float = 300.0
    auth_algorithms: list[str] = field(default_factory=lambda: ["SHA-256", "MD5"])
    tls_cert: str = ""
    tls_key: str = ""


LIST_SETTINGS = {"listen", "events", "domain", "max_body", "auth_algorithms",
                 "trusted_peer"}
INT_SETTINGS = {"default_expires", "min_expires", "max_expires", "max_batch", "cache_size",
                "max_message_size", "max_headers", "max_header_length", "max_per_resource",
                "max_tcp_connections", "max_queue", "max_queue_bytes", "max_transactions",
                "max_transaction_bytes", "max_subscriptions", "min_subscribe_expires",
                "max_subscribe_expires",
                "max_list_elements", "max_params"}
FLOAT_SETTINGS = {"tcp_idle_timeout", "tcp_read_timeout", "rate_limit", "rate_burst",
                  "nonce_lifetime", "max_queue_wait", "store_timeout", "notify_yield_ms"}


def _coerce(name: str, value: Any, source: str) -> Any:
    try:
        if name in LIST_SETTINGS:
            if isinstance(value, str):
                items = [v.strip() for v in value.split(",")] if name != "listen" else \
                        [v.strip() for v in value.replace(",", " ").split()]
            elif isinstance(value, list):
                items = [str(v).strip() for v in value]
            else:
                raise TypeError
            return [item for item in items if item]
        if name in INT_SETTINGS:
            if isinstance(value, bool):
                raise TypeError
            return int(value)
        if name in FLOAT_SETTINGS:
            return float(value)
        if not isinstance(value, str):
            raise TypeError
        return value
    except (TypeError, ValueError):
        raise ConfigError(f"{source}: bad value for {name}: {value!r}") from None


def load_settings(cli: dict[str, Any], config_file: str | None = None,
                  environ: dict[str, str] | None = None) -> ServeSettings:
    environ = os.environ if environ is None else environ
    config_file = config_file or environ.get("ESC_CONFIG")
    from_file: dict[str, Any] = {}
    if config_file:
        try:
            with open(config_file, "rb") as handle:
                from_file = tomllib.load(handle)
        except OSError as error:
            raise ConfigError(f"cannot read config file {config_file}: {error.strerror}") from None
        except tomllib.TOMLDecodeError as error:
            raise ConfigError(f"config file {config_file} is not valid TOML: {error}") from None
        from_file = {k.replace("-", "_"): v for k, v in from_file.items()}
    known = {f.name for f in fields(ServeSettings)}
    unknown = set(from_file) - known
    if unknown:
        raise ConfigError(f"config file {config_file}: unknown setting(s): {', '.join(sorted(unknown))}")

    settings = ServeSettings()
    for name in known:
        env_value = environ.get(f"ESC_{name.upper()}")
        if cli.get(name) not in (None, []):
            setattr(settings, name, _coerce(name, cli[name], "command line"))
        elif env_value not in (None, ""):
            setattr(settings, name, _coerce(name, env_value, f"ESC_{name.upper()}"))
        elif name in from_file:
            setattr(settings, name, _coerce(name, from_file[name], f"config file {config_file}"))
    validate(settings)
    return settings


def validate(settings: ServeSettings) -> None:
    if not settings.listen:
        raise ConfigError("at least one --listen address is needed")
    if not settings.events:
        raise ConfigError("at least one event package is needed (--events)")
    if settings.min_expires < 1:
        raise ConfigError("--min-expires must be at least 1")
    if settings.max_expires < settings.min_expires:
        raise ConfigError("--max-expires must not be less than --min-expires")
    if not settings.min_expires <= settings.default_expires <= settings.max_expires:
        raise ConfigError("--default-expires must lie between --min-expires and --max-expires")
    if settings.max_batch < 1:
        raise ConfigError("--max-batch must be at least 1")
    if settings.log_level.lower() not in ("debug", "info", "warning", "error"):
        raise ConfigError("--log-level must be debug, info, warning or error")
    settings.log_format = settings.log_format.strip().lower()
    if settings.log_format not in ("text", "json"):
        raise ConfigError("--log-format must be text or json")
    settings.log_bodies = settings.log_bodies.strip().lower()
    if settings.log_bodies not in ("yes", "no", "true", "false", "1", "0"):
        raise ConfigError("log_bodies must be yes or no")
    if not 1024 <= settings.max_message_size <= 65535:
        raise ConfigError("--max-message-size must lie between 1024 and 65535")
    if settings.max_headers < 10 or settings.max_header_length < 256:
        raise ConfigError("--max-headers must be at least 10 and --max-header-length at least 256")
    for limit in ("max_per_resource", "max_tcp_connections", "max_queue", "max_transactions",
                  "max_list_elements", "max_params"):
        if getattr(settings, limit) < 1:
            raise ConfigError(f"--{limit.replace('_', '-')} must be at least 1")
    if settings.rate_limit < 0 or settings.tcp_read_timeout <= 0:
        raise ConfigError("--rate-limit must be 0 or more and --tcp-read-timeout positive")
    if settings.max_queue_bytes < 65536:
        raise ConfigError("--max-queue-bytes must be at least 65536 (one largest message)")
    if settings.max_transaction_bytes < 1024 * 1024:
        raise ConfigError("--max-transaction-bytes must be at least 1048576")
    if settings.max_queue_wait <= 0 or settings.store_timeout <= 0:
        raise ConfigError("--max-queue-wait and --store-timeout must be positive")
    package_body_limits(settings)
    trusted_networks(settings)
    if bool(settings.tls_cert) != bool(settings.tls_key):
        raise ConfigError("--tls-cert and --tls-key go together")
    if any(spec.lower().startswith("tls:") for spec in settings.listen) and not settings.tls_cert:
        raise ConfigError("a tls: listener needs --tls-cert and --tls-key")
    bad = [a for a in settings.auth_algorithms if a.upper() not in ("SHA-256", "MD5")]
    if bad or not settings.auth_algorithms:
        raise ConfigError("--auth-algorithms takes SHA-256 and/or MD5")
    if settings.max_subscriptions < 0:
        raise ConfigError("--max-subscriptions must be 0 (no SUBSCRIBE) or more")
    if not 1 <= settings.min_subscribe_expires <= settings.max_subscribe_expires:
        raise ConfigError("--min-subscribe-expires must be at least 1 and not more than "
                          "--max-subscribe-expires")
    if not 0 <= settings.notify_yield_ms <= 10_000:
        raise ConfigError("--notify-yield-ms must be between 0 (never yield) and 10000")
    if settings.policy_file and not settings.auth_file:
        raise ConfigError("--policy-file needs --auth-file (authorization follows authentication)")
    if settings.metrics:
        metrics_address(settings.metrics)


def metrics_address(spec: str) -> tuple[str, int]:
    """`--metrics 127.0.0.1:9090` (or `[::1]:9090`, `0.0.0.0:0` for any free port) ->
    (host, port)."""
    text = spec.strip()
    if text.startswith("["):
        host, _, port = text[1:].partition("]")
        port = port[1:] if port.startswith(":") else "x"
    else:
        host, _, port = text.rpartition(":")
        if ":" in host:  # a bare IPv6 address: ambiguous without brackets
            host = ""
    bad_host = not host or any(c.isspace() or c in "/[]" for c in host)
    if bad_host or not (port.isascii() and port.isdigit()) or int(port) > 65535:
        raise ConfigError(f"bad --metrics {spec!r}: expected HOST:PORT, e.g. 127.0.0.1:9090")
    return host, int(port)


def trusted_networks(settings: ServeSettings) -> tuple[ipaddress.IPv4Network
                                                       | ipaddress.IPv6Network, ...]:
    """`--trusted-peer 10.0.0.5/32` (or a bare address: /32, /128) -> the networks, each
    once. Host bits set are an error, as they usually mean a typo."""
    networks: list[ipaddress.IPv4Network | ipaddress.IPv6Network] = []
    for item in settings.trusted_peer:
        text = item[1:-1] if item.startswith("[") and item.endswith("]") else item
        try:
            network = ipaddress.ip_network(text, strict=True)
        except ValueError as error:
            raise ConfigError(f"bad --trusted-peer {item!r}: {error}") from None
        if network not in networks:
            networks.append(network)
    return tuple(networks)


def package_body_limits(settings: ServeSettings) -> dict[str, int]:
    """`--max-body presence=16384` -> {"presence": 16384}."""
    limits: dict[str, int] = {}
    for item in settings.max_body:
        name, sep, value = item.partition("=")
        if not sep or not name.strip() or not value.strip().isdigit():
            raise ConfigError(f"bad --max-body {item!r}: expected PACKAGE=BYTES")
        limits[name.strip().lower()] = int(value)
    return limits
