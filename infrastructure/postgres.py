"""PostgreSQL persistence for several nodes sharing one database.

eventsourcing's PostgreSQL module does the storing; this module adapts it to a SIP node:

- Schema creation is serialised by a PostgreSQL advisory lock, and skipped when the tables
  are already there. Two nodes creating the tables at the same moment once failed with
  "tuple concurrently updated" (docs/design.md); under the lock, concurrent starts queue, and a
  node whose database user may not create tables starts fine once `esc migrate` has run.
- Every wait is bounded. eventsourcing retries a failed statement ten times (0.2 s apart),
  each attempt waiting up to the pool timeout for a connection: with the database down,
  one request would hang for a minute. Here a read is retried once, only after a broken
  connection (never after a pool timeout), and a write is never retried: a commit whose
  acknowledgement was lost cannot be told from one that never happened, so the request
  fails (503, nothing acknowledged) and the client's own retry decides again.
- Recovery without a restart: a broken connection drains the pool (every idle connection
  is replaced), the pool checks a connection before lending it, and the pool's reconnect
  back-off is capped, so a node serves again within seconds of the database's return.
- libpq's own connect timeout, sslmode, application_name and a statement timeout are
  passed to every connection (eventsourcing's POSTGRES_CONNECT_TIMEOUT is only the pool's
  wait for a connection).
- What the compositor asks of a store: the factory says the store is `shared` (other nodes
  write it, so a node's view is caught up before it answers a query), and the recorders
  can `delete_all` (`Compositor.clear`, a TRUNCATE that keeps the notification ids going).

Settings come from the store URL (see `store_url`); the environment keys are
eventsourcing's POSTGRES_* ones plus POSTGRES_SSLMODE, POSTGRES_STATEMENT_TIMEOUT,
POSTGRES_RECONNECT_TIMEOUT and POSTGRES_APPLICATION_NAME.
"""

from __future__ import annotations

import logging
import time
from contextlib import contextmanager
from typing import Any, Callable, Iterator, Sequence

import psycopg
import psycopg_pool
from eventsourcing.persistence import InterfaceError, OperationalError, PersistenceError
from eventsourcing.postgres import (ConnectionPool, PostgresAggregateRecorder,
                                    PostgresApplicationRecorder, PostgresDatastore,
                                    PostgresFactory)
from eventsourcing.utils import Environment
from psycopg.sql import SQL, Identifier

from .application import APPLICATION_NAME
from .store_url import BadStoreURL, parse_store_url

log = logging.getLogger("esc.postgres")

# How long `esc migrate` / a starting node waits for another one's schema creation.
SCHEMA_LOCK_TIMEOUT = 60


class SchemaMissing(PersistenceError):
    """The tables are not there and this node was told not to create them."""


# ---- the datastore: a pool whose waits are bounded and which heals itself ------------------

class EscConnectionPool(ConnectionPool):
    """Remembers why the last connection attempt failed: the pool itself only reports that
    it "couldn't get a connection after N sec", which tells an operator nothing."""

    last_error: Exception | None = None

    def _connect(self, timeout: float | None = None) -> Any:
        try:
            conn = super()._connect(timeout=timeout)
        except Exception as error:
            self.last_error = error
            raise
        self.last_error = None
        return conn


def _explained(datastore: PostgresDatastore, error: Exception) -> Exception:
    """A pool timeout, with the reason the pool could not connect when there is one."""
    last = getattr(datastore.pool, "last_error", None)
    if isinstance(error.__cause__, psycopg_pool.PoolTimeout) and last is not None:
        reason = " ".join(str(last).split())
        explained = type(error)(f"{error} (last connection attempt: {reason})")
        explained.__cause__ = error.__cause__
        return explained
    return error


class EscPostgresDatastore(PostgresDatastore):
    def __init__(self, *args: Any, connection_options: dict[str, Any] | None = None,
                 reconnect_timeout: float = 5.0, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        old = self.pool
        self.connection_kwargs = {**old.kwargs, **(connection_options or {})}
        # Rebuilt (it is not open yet) with libpq options, a capped reconnect back-off and
        # a check that drains the pool when it finds a dead connection.
        self.pool = EscConnectionPool(
            get_password_func=old.get_password_func,
            connection_class=old.connection_class,
            kwargs=self.connection_kwargs,
            min_size=old.min_size,
            max_size=old.max_size,
            open=False,
            configure=self.after_connect_func(),
            check=self._check_connection if self.pre_ping else None,
            timeout=old.timeout,
            max_waiting=old.max_waiting,
            max_lifetime=old.max_lifetime,
            reconnect_timeout=reconnect_timeout,
            name="esc",
        )

    def _check_connection(self, conn: psycopg.Connection) -> None:
        try:
            ConnectionPool.check_connection(conn)
        except Exception:
            # One dead connection means the others are probably dead too (the server
            # restarted, or the network dropped): replace them all at once instead of
            # finding them one by one, a back-off second each.
            self.drain()
            raise

    def drain(self) -> None:
        try:
            self.pool.drain()
        except Exception as error:  # pragma: no cover - a closed pool
            log.debug("pool drain failed: %s", error)

    def session(self, **options: Any) -> psycopg.Connection:
        """A connection of its own, outside the pool (for a session-level advisory lock)."""
        kwargs = {k: v for k, v in self.connection_kwargs.items() if k != "row_factory"}
        if self.pool.get_password_func:
            kwargs["password"] = self.pool.get_password_func()
        return psycopg.connect(**kwargs, autocommit=True, **options)


def _bounded(datastore: EscPostgresDatastore, call: Callable[[], Any], *,
             retry: bool) -> Any:
    """Run one recorder call: at most one retry, only for a read, and only when the
    connection broke (not when the pool could not supply one within its timeout)."""
    attempts = 2 if retry else 1
    for attempt in range(attempts):
        try:
            return call()
        except (OperationalError, InterfaceError) as error:
            cause = error.__cause__
            if isinstance(cause, psycopg_pool.PoolTimeout):
                # waited the whole timeout already: the database is down
                raise _explained(datastore, error) from None
            if isinstance(cause, psycopg.errors.LockNotAvailable | psycopg.errors.QueryCanceled):
                raise  # the connection is fine; the database is busy
            datastore.drain()
            if attempt == attempts - 1:
                raise
            log.info("database connection lost, retrying once: %s", error)
    raise AssertionError("unreachable")  # pragma: no cover


def _undecorated(method: Any) -> Any:
    """eventsourcing's method without its ten-attempt retry decorator."""
    return getattr(method, "__wrapped__", method)


class _DeletesAll:
    datastore: EscPostgresDatastore
    events_table_name: str

    def delete_all(self) -> None:
        """Delete every stored event of this recorder's table (Compositor.clear).
        Notification ids are not restarted: other nodes' views and the feed's consumers
        hold positions, and new events must come after them."""
        datastore = self.datastore
        with datastore.transaction(commit=True) as curs:
            curs.execute(SQL("SET LOCAL lock_timeout = {}").format(
                f"{max(1, datastore.lock_timeout) * 1000}ms"))
            curs.execute(SQL("TRUNCATE {}").format(
                Identifier(datastore.schema, self.events_table_name)))


class EscApplicationRecorder(_DeletesAll, PostgresApplicationRecorder):
    datastore: EscPostgresDatastore

    def insert_events(self, stored_events: Sequence[Any], **kwargs: Any) -> Any:
        insert = _undecorated(PostgresApplicationRecorder.insert_events)
        return _bounded(self.datastore, lambda: insert(self, stored_events, **kwargs),
                        retry=False)

    def select_events(self, originator_id: Any, **kwargs: Any) -> Any:
        select = _undecorated(PostgresApplicationRecorder.select_events)
        return _bounded(self.datastore, lambda: select(self, originator_id, **kwargs),
                        retry=True)

    def select_notifications(self, *args: Any, **kwargs: Any) -> Any:
        select = _undecorated(PostgresApplicationRecorder.select_notifications)
        return _bounded(self.datastore, lambda: select(self, *args, **kwargs), retry=True)

    def max_notification_id(self) -> int | None:
        select = _undecorated(PostgresApplicationRecorder.max_notification_id)
        return _bounded(self.datastore, lambda: select(self), retry=True)


class EscAggregateRecorder(_DeletesAll, PostgresAggregateRecorder):
    """The snapshot store."""

    datastore: EscPostgresDatastore

    def insert_events(self, stored_events: Sequence[Any], **kwargs: Any) -> Any:
        insert = _undecorated(PostgresAggregateRecorder.insert_events)
        return _bounded(self.datastore, lambda: insert(self, stored_events, **kwargs),
                        retry=False)

    def select_events(self, originator_id: Any, **kwargs: Any) -> Any:
        select = _undecorated(PostgresAggregateRecorder.select_events)
        return _bounded(self.datastore, lambda: select(self, originator_id, **kwargs),
                        retry=True)


# ---- the factory eventsourcing constructs (PERSISTENCE_MODULE names it) ----------------------

class EscPostgresFactory(PostgresFactory):
    aggregate_recorder_class = EscAggregateRecorder
    application_recorder_class = EscApplicationRecorder

    # Several nodes write one database: a node's view is caught up with the others'
    # events before it answers a query.
    shared = True

    # Set by `migrate`: create (or re-create idempotently) even when the tables exist.
    FORCE_SCHEMA = "ESC_FORCE_SCHEMA"

    def __init__(self, env: Environment) -> None:
        super().__init__(env)
        plain = self.datastore
        options: dict[str, Any] = {
            # libpq's timeout for one connection attempt (the pool's wait is separate)
            "connect_timeout": max(1, int(float(self.env.get("POSTGRES_CONNECT_TIMEOUT")
                                                or 5))),
            "application_name": self.env.get("POSTGRES_APPLICATION_NAME") or "esc",
        }
        sslmode = self.env.get("POSTGRES_SSLMODE")
        if sslmode:
            options["sslmode"] = sslmode
        statement_timeout = float(self.env.get("POSTGRES_STATEMENT_TIMEOUT") or 0)
        if statement_timeout:
            options["options"] = f"-c statement_timeout={int(statement_timeout * 1000)}"
        kwargs = plain.pool.kwargs
        self.datastore = EscPostgresDatastore(
            dbname=kwargs["dbname"], host=kwargs["host"], port=kwargs["port"],
            user=kwargs["user"], password=kwargs["password"],
            connect_timeout=plain.pool.timeout,
            idle_in_transaction_session_timeout=plain.idle_in_transaction_session_timeout,
            pool_size=plain.pool.min_size,
            max_overflow=plain.pool.max_size - plain.pool.min_size,
            max_waiting=plain.pool.max_waiting,
            conn_max_age=plain.pool.max_lifetime,
            pre_ping=plain.pre_ping,
            lock_timeout=plain.lock_timeout,
            schema=plain.schema,
            get_password_func=plain.pool.get_password_func,
            single_row_tracking=plain.single_row_tracking,
            originator_id_type=plain.originator_id_type,
            enable_db_functions=plain.enable_db_functions,
            connection_options=options,
            reconnect_timeout=float(self.env.get("POSTGRES_RECONNECT_TIMEOUT") or 5),
        )
        plain.close()

    def aggregate_recorder(self, purpose: str = "events") -> EscAggregateRecorder:
        return self._recorder(EscAggregateRecorder, purpose)

    def application_recorder(self) -> EscApplicationRecorder:
        return self._recorder(EscApplicationRecorder, "events")

    def _recorder(self, cls: type[Any], purpose: str) -> Any:
        try:
            recorder = cls(datastore=self.datastore,
                           events_table_name=f"{self.env.name.lower() or 'stored'}_{purpose}")
            self._ensure_schema(recorder)
        except (OperationalError, InterfaceError) as error:
            raise _explained(self.datastore, error) from None
        return recorder

    def _ensure_schema(self, recorder: PostgresAggregateRecorder) -> None:
        force = self.env.get(self.FORCE_SCHEMA) == "y"
        if not force and table_exists(self.datastore, recorder.events_table_name):
            self.datastore.register_type_adapters()
            return
        if not self.env_create_table():
            raise SchemaMissing(
                f"table {self.datastore.schema}.{recorder.events_table_name} does not exist "
                f"in database {self.datastore.pool.kwargs['dbname']}: run `esc migrate`")
        with schema_lock(self.datastore):
            # Another node may have created it while we waited for the lock.
            if force or not table_exists(self.datastore, recorder.events_table_name):
                if self.datastore.schema != "public":
                    with self.datastore.transaction(commit=True) as curs:
                        curs.execute(SQL("CREATE SCHEMA IF NOT EXISTS {}").format(
                            Identifier(self.datastore.schema)))
                log.info("creating table %s.%s", self.datastore.schema,
                         recorder.events_table_name)
                recorder.create_table()
        self.datastore.register_type_adapters()


def table_exists(datastore: PostgresDatastore, table: str) -> bool:
    with datastore.transaction(commit=False) as curs:
        curs.execute("SELECT to_regclass(format('%%I.%%I', %s::text, %s::text)) AS t",
                     [datastore.schema, table])
        row = curs.fetchone()
    return bool(row and row["t"])


@contextmanager
def schema_lock(datastore: EscPostgresDatastore,
                timeout: float = SCHEMA_LOCK_TIMEOUT) -> Iterator[None]:
    """Hold the schema advisory lock (one per database and schema) for the block, on a
    session of its own: concurrent migrations and node starts wait here in turn."""
    key = f"esc:schema:{datastore.schema}"
    with datastore.session() as conn:
        conn.execute(SQL("SET lock_timeout = {}").format(f"{int(timeout * 1000)}ms"))
        started = time.monotonic()
        conn.execute("SELECT pg_advisory_lock(hashtextextended(%s, 0))", [key])
        waited = time.monotonic() - started
        if waited > 0.05:
            log.info("waited %.2f s for another node's schema creation", waited)
        try:
            yield
        finally:
            conn.execute("SELECT pg_advisory_unlock(hashtextextended(%s, 0))", [key])


# ---- operations ---------------------------------------------------------------------------------

def _env_for(url: str, **extra: str) -> Environment:
    config = parse_store_url(url)
    if config.kind != "postgresql":
        raise BadStoreURL(f"not a postgresql store URL: {url!r}")
    return Environment(APPLICATION_NAME, {**config.env, "CREATE_TABLE": "y", **extra})


def migrate(url: str, *, create_database: bool = False) -> list[str]:
    """Create the schema (tables, index, type, function) if missing, or bring it up to
    what this version of eventsourcing creates; safe to run concurrently and repeatedly.
    Returns the tables it made sure of."""
    env = _env_for(url, ESC_FORCE_SCHEMA="y")
    if create_database:
        ensure_database(url)
    factory = EscPostgresFactory(env)
    try:
        tables = []
        for recorder in (factory.application_recorder(), factory.aggregate_recorder("snapshots")):
            tables.append(f"{factory.datastore.schema}.{recorder.events_table_name}")
        return tables
    finally:
        factory.close()


def _admin_kwargs(url: str) -> tuple[dict[str, Any], str]:
    env = parse_store_url(url).env
    kwargs = {"host": env["POSTGRES_HOST"], "port": env["POSTGRES_PORT"],
              "user": env["POSTGRES_USER"], "password": env["POSTGRES_PASSWORD"],
              "connect_timeout": int(env.get("POSTGRES_CONNECT_TIMEOUT") or 5)}
    if env.get("POSTGRES_SSLMODE"):
        kwargs["sslmode"] = env["POSTGRES_SSLMODE"]
    return kwargs, env["POSTGRES_DBNAME"]


def ensure_database(url: str, maintenance_db: str = "postgres") -> bool:
    """Create the database the URL names unless it exists (needs CREATEDB). Returns
    whether it was created."""
    kwargs, dbname = _admin_kwargs(url)
    with psycopg.connect(**kwargs, dbname=maintenance_db, autocommit=True) as conn:
        if conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", [dbname]).fetchone():
            return False
        try:
            conn.execute(SQL("CREATE DATABASE {}").format(Identifier(dbname)))
        except psycopg.errors.DuplicateDatabase:
            return False  # created concurrently
        return True


def drop_database(url: str, maintenance_db: str = "postgres") -> None:
    """Drop the database the URL names, disconnecting its sessions (tests, laboratories)."""
    kwargs, dbname = _admin_kwargs(url)
    with psycopg.connect(**kwargs, dbname=maintenance_db, autocommit=True) as conn:
        conn.execute(SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(Identifier(dbname)))

