"""Store URLs: which eventsourcing persistence module to use, and how to reach it.

    sqlite:///esc.sqlite3            embedded SQLite file (relative path), the default
    sqlite:////var/lib/esc/events.db absolute path
    memory://                        in-process, nothing kept (tests)
    postgresql://user:pw@host:5432/db?pool_size=10
    module:eventsourcing_sqlalchemy?SQLALCHEMY_URL=sqlite:///x.db
                                     any eventsourcing persistence module; the query
                                     parameters become its environment settings

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

    @property
    def sqlite_path(self) -> str | None:
        return self.env.get("SQLITE_DBNAME") if self.kind == "sqlite" else None


_POSTGRES_QUERY_KEYS = {
    "pool_size": "POSTGRES_POOL_SIZE",
    "max_overflow": "POSTGRES_MAX_OVERFLOW",
    "conn_max_age": "POSTGRES_CONN_MAX_AGE",
    "max_waiting": "POSTGRES_MAX_WAITING",
    "pre_ping": "POSTGRES_PRE_PING",
    "connect_timeout": "POSTGRES_CONNECT_TIMEOUT",
    "lock_timeout": "POSTGRES_LOCK_TIMEOUT",
    "schema": "POSTGRES_SCHEMA",
    "sslmode": "POSTGRES_SSLMODE",
}


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
        env = {"PERSISTENCE_MODULE": "eventsourcing.sqlite", "SQLITE_DBNAME": path,
               "SQLITE_LOCK_TIMEOUT": query.pop("lock_timeout", "10")}
        if query:
            raise BadStoreURL(f"unknown sqlite URL parameter(s): {', '.join(query)}")
        return StoreConfig(url, "sqlite", env, view or f"{path}-view")
    if scheme == "memory":
        return StoreConfig(url, "memory", {"PERSISTENCE_MODULE": "eventsourcing.popo"},
                           view)
    if scheme in ("postgresql", "postgres"):
        if not parts.path.strip("/"):
            raise BadStoreURL(f"postgresql URL names no database: {url!r}")
        try:
            port = parts.port
        except ValueError as error:
            raise BadStoreURL(f"bad port in {url!r}: {error}") from None
        env = {
            "PERSISTENCE_MODULE": "eventsourcing.postgres",
            "POSTGRES_DBNAME": unquote(parts.path.strip("/")),
            "POSTGRES_HOST": unquote(parts.hostname or "") or query.pop("host", "localhost"),
            "POSTGRES_PORT": str(port or 5432),
            "POSTGRES_USER": unquote(parts.username or "") or "postgres",
            "POSTGRES_PASSWORD": unquote(parts.password or ""),
        }
        query.pop("host", None)
        for key, value in list(query.items()):
            if key not in _POSTGRES_QUERY_KEYS:
                raise BadStoreURL(f"unknown postgresql URL parameter: {key}")
            env[_POSTGRES_QUERY_KEYS[key]] = value
        return StoreConfig(url, "postgresql", env, view)
    if scheme == "module":
        module = parts.path or parts.netloc
        if not module:
            raise BadStoreURL(f"module URL names no persistence module: {url!r}")
        env = {"PERSISTENCE_MODULE": module, **query}
        return StoreConfig(url, "module", env, view)
    raise BadStoreURL(
        f"unsupported store URL {url!r}: use sqlite:///PATH, memory://, "
        f"postgresql://USER@HOST/DB or module:PERSISTENCE_MODULE?SETTING=VALUE")
