"""Store URLs: which eventsourcing persistence module to use, and how to reach it.

    sqlite:///esc.sqlite3            embedded SQLite file (relative path), the default
    sqlite:////var/lib/esc/events.db absolute path
    memory://                        in-process, nothing kept (tests)
    postgresql://user:pw@host:5432/db?pool_size=10
                                     PostgreSQL, shared by several nodes (see docs/deployment.md)
    postgresql://user@/db?host=/var/run/postgresql
    postgresql://user@%2Fvar%2Frun%2Fpostgresql/db
                                     the same over a Unix socket: the host is the socket's
                                     directory, as a query parameter or percent-encoded
    module:eventsourcing_sqlalchemy?SQLALCHEMY_URL=sqlite:///x.db
                                     any eventsourcing persistence module; the query
                                     parameters become its environment settings

Each scheme names its persistence module (eventsourcing's, extended where esc needs more):
`infrastructure.sqlite`, `infrastructure.memory`, `infrastructure.postgres`; a `module:`
URL names any other, used as it is.

The current-state view is a separate SQLite file (it can always be rebuilt from the
events): by default beside an SQLite store (`<path>-view`), in memory otherwise, or where
`?view=PATH` says.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from urllib.parse import parse_qsl, unquote, urlsplit

DEFAULT_STORE_URL = "sqlite:///esc.sqlite3"


class BadStoreURL(ValueError):
    """The store URL cannot be understood; the message says why."""


@dataclass(frozen=True)
class StoreConfig:
    url: str
    kind: str  # "sqlite", "memory", "postgresql", "module"
    env: dict[str, str] = field(default_factory=dict)
    view_path: str | None = None  # None: in-memory view


# postgresql URL query parameters -> eventsourcing settings (infrastructure.postgres reads
# the last four, which eventsourcing itself does not have).
_POSTGRES_QUERY_KEYS = {
    "pool_size": "POSTGRES_POOL_SIZE",
    "max_overflow": "POSTGRES_MAX_OVERFLOW",
    "conn_max_age": "POSTGRES_CONN_MAX_AGE",
    "max_waiting": "POSTGRES_MAX_WAITING",
    "pre_ping": "POSTGRES_PRE_PING",
    "connect_timeout": "POSTGRES_CONNECT_TIMEOUT",
    "lock_timeout": "POSTGRES_LOCK_TIMEOUT",
    "idle_in_transaction_session_timeout": "POSTGRES_IDLE_IN_TRANSACTION_SESSION_TIMEOUT",
    "schema": "POSTGRES_SCHEMA",
    "sslmode": "POSTGRES_SSLMODE",
    "statement_timeout": "POSTGRES_STATEMENT_TIMEOUT",
    "reconnect_timeout": "POSTGRES_RECONNECT_TIMEOUT",
    "application_name": "POSTGRES_APPLICATION_NAME",
}

# Defaults chosen for a SIP node: a small pool (one writer thread, one scheduler thread,
# the odd query), and every wait bounded, so that a database outage turns into a 503 within
# seconds instead of a request that hangs.
POSTGRES_DEFAULTS = {
    "POSTGRES_POOL_SIZE": "2",
    "POSTGRES_MAX_OVERFLOW": "4",
    "POSTGRES_CONNECT_TIMEOUT": "5",
    "POSTGRES_LOCK_TIMEOUT": "5",
    "POSTGRES_PRE_PING": "y",
    "POSTGRES_STATEMENT_TIMEOUT": "30",
    "POSTGRES_RECONNECT_TIMEOUT": "5",
    "POSTGRES_APPLICATION_NAME": "esc",
}

_INTEGER_KEYS = {"pool_size", "max_overflow", "max_waiting", "connect_timeout", "lock_timeout",
                 "idle_in_transaction_session_timeout"}
_NUMBER_KEYS = {"conn_max_age", "statement_timeout", "reconnect_timeout"}
_BOOLEAN_VALUES = {"y", "yes", "t", "true", "on", "1", "n", "no", "f", "false", "off", "0"}


def _postgres_host_port(netloc: str, url: str) -> tuple[str, str]:
    """Host and port of a postgresql URL's netloc, without urlsplit's lower-casing (a
    percent-encoded socket directory is a path, and paths are case-sensitive)."""
    hostport = netloc.rpartition("@")[2]
    if hostport.startswith("["):  # [IPv6]:port
        host, _, rest = hostport[1:].partition("]")
        port = rest[1:] if rest.startswith(":") else rest
    elif ":" in hostport:
        host, _, port = hostport.rpartition(":")
    else:
        host, port = hostport, ""
    if port and not (port.isdigit() and 0 < int(port) < 65536):
        raise BadStoreURL(f"bad port in {url!r}: {port!r}")
    return unquote(host), port


def _postgres_config(url: str, parts, query: dict[str, str], view: str | None) -> StoreConfig:
    shown = redact_url(url)  # for messages: never a password
    database = unquote(parts.path.strip("/"))
    if not database or "/" in database:
        raise BadStoreURL(f"postgresql URL names no database (postgresql://USER@HOST/DB): "
                          f"{shown!r}")
    host, port = _postgres_host_port(parts.netloc, shown)
    query_host, query_port = query.pop("host", ""), query.pop("port", "")
    if query_host and host:
        raise BadStoreURL(f"postgresql URL gives the host twice: {shown!r}")
    if query_port and port:
        raise BadStoreURL(f"postgresql URL gives the port twice: {shown!r}")
    if query_port and not (query_port.isdigit() and 0 < int(query_port) < 65536):
        raise BadStoreURL(f"bad port in {shown!r}: {query_port!r}")
    userinfo = parts.netloc.rpartition("@")[0]
    user, _, password = userinfo.partition(":")
    env = {
        "PERSISTENCE_MODULE": "infrastructure.postgres:EscPostgresFactory",
        "POSTGRES_DBNAME": database,
        # A host beginning with "/" is the directory of the server's Unix socket (libpq).
        "POSTGRES_HOST": host or query_host or "localhost",
        "POSTGRES_PORT": port or query_port or "5432",
        "POSTGRES_USER": unquote(user) or "postgres",
        "POSTGRES_PASSWORD": unquote(password),
        **POSTGRES_DEFAULTS,
    }
    for key, value in query.items():
        if key not in _POSTGRES_QUERY_KEYS:
            raise BadStoreURL(f"unknown postgresql URL parameter: {key} (known: host, port, "
                              f"view, {', '.join(_POSTGRES_QUERY_KEYS)})")
        _check_value(key, value, shown)
        env[_POSTGRES_QUERY_KEYS[key]] = value
    return StoreConfig(url, "postgresql", env, view)


def _check_value(key: str, value: str, url: str) -> None:
    """Fail on the URL, with its name, rather than deep inside the driver later."""
    try:
        if key in _INTEGER_KEYS and int(value) < 0 or key in _NUMBER_KEYS and float(value) < 0:
            raise ValueError
    except ValueError:
        raise BadStoreURL(f"postgresql URL parameter {key} must be a number >= 0, "
                          f"got {value!r}") from None
    if key == "pool_size" and int(value) < 1:
        raise BadStoreURL("postgresql URL parameter pool_size must be at least 1")
    if key == "pre_ping" and value.lower() not in _BOOLEAN_VALUES:
        raise BadStoreURL(f"postgresql URL parameter pre_ping must be yes or no, got {value!r}")


def redact_url(url: str) -> str:
    """The URL with any password replaced by ***, for logs and error messages."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return url
    userinfo, at, hostport = parts.netloc.rpartition("@")
    if not at or ":" not in userinfo:
        return url
    user = userinfo.split(":", 1)[0]
    return parts._replace(netloc=f"{user}:***@{hostport}").geturl()


def parse_store_url(url: str) -> StoreConfig:
    if not url or not isinstance(url, str):
        raise BadStoreURL("empty store URL")
    parts = urlsplit(url)
    scheme = parts.scheme.lower()
    query = dict(parse_qsl(parts.query, keep_blank_values=True))
    view = query.pop("view", None)
    if scheme == "sqlite":
        if parts.netloc:
            raise BadStoreURL(
                f"sqlite URL must be sqlite:///relative/path or sqlite:////absolute/path, "
                f"got {url!r}")
        path = unquote(parts.path[1:]) if parts.path.startswith("/") else unquote(parts.path)
        if not path:
            raise BadStoreURL(f"sqlite URL has no file path: {url!r}")
        env = {"PERSISTENCE_MODULE": "infrastructure.sqlite:EscSQLiteFactory",
               "SQLITE_DBNAME": path,
               "SQLITE_LOCK_TIMEOUT": query.pop("lock_timeout", "10")}
        if query:
            raise BadStoreURL(f"unknown sqlite URL parameter(s): {', '.join(query)}")
        return StoreConfig(url, "sqlite", env, view or f"{path}-view")
    if scheme == "memory":
        return StoreConfig(url, "memory",
                           {"PERSISTENCE_MODULE": "infrastructure.memory:EscPOPOFactory"}, view)
    if scheme in ("postgresql", "postgres"):
        return _postgres_config(url, parts, query, view)
    if scheme == "module":
        module = parts.path or parts.netloc
        if not module:
            raise BadStoreURL(f"module URL names no persistence module: {url!r}")
        env = {"PERSISTENCE_MODULE": module, **query}
        return StoreConfig(url, "module", env, view)
    raise BadStoreURL(
        f"unsupported store URL {url!r}: use sqlite:///PATH, memory://, "
        f"postgresql://USER@HOST/DB or module:PERSISTENCE_MODULE?SETTING=VALUE")
