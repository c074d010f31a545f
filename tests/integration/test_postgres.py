"""The compositor on a real PostgreSQL server, as several nodes share it.

Each test gets a database of its own (CREATE DATABASE esc_test_<random>, dropped at the
end), reached through the server's Unix socket (the tests run in a network namespace
where only loopback exists). The server: $ESC_TEST_POSTGRES (an admin URL), by default
postgresql://postgres@/postgres?host=/var/run/postgresql. Without one the tests skip,
loudly; with $CI or $ESC_REQUIRE_POSTGRES set they fail instead (.ci/run starts one).

"Nodes" here are Compositor instances in one process, each with its own connection pool,
cache and view: exactly what two `esc serve` processes have (tests/e2e/test_multinode.py
runs those).
"""

from __future__ import annotations

import os
import secrets
import threading
import time
import warnings
from concurrent.futures import ThreadPoolExecutor
from urllib.parse import urlsplit, urlunsplit

import pytest

from domain import ConditionalRequestFailed, PublishRequest, StoreUnavailable
from infrastructure import Compositor, ExpiryScheduler
from tests.conftest import FakeClock, make_pidf

pytestmark = pytest.mark.postgres

ADMIN_URL = os.environ.get("ESC_TEST_POSTGRES",
                           "postgresql://postgres@/postgres?host=/var/run/postgresql")
_reachable: dict[str, str | None] = {}


# ---- fixtures (tests/e2e/test_multinode.py imports these) -------------------------------------

def require_postgres() -> None:
    """Skip (loudly) or, under CI, fail when no PostgreSQL server answers."""
    if ADMIN_URL not in _reachable:
        import psycopg

        from infrastructure.postgres import _admin_kwargs

        kwargs, dbname = _admin_kwargs(ADMIN_URL)
        try:
            psycopg.connect(**{**kwargs, "connect_timeout": 3}, dbname=dbname).close()
            _reachable[ADMIN_URL] = None
        except Exception as error:
            _reachable[ADMIN_URL] = f"{type(error).__name__}: {str(error).strip()}"
    problem = _reachable[ADMIN_URL]
    if problem is None:
        return
    reason = (f"no PostgreSQL server at {ADMIN_URL} ({problem}); start one (bash .ci/setup "
              f"does) or point $ESC_TEST_POSTGRES at one")
    if os.environ.get("CI") or os.environ.get("ESC_REQUIRE_POSTGRES"):
        pytest.fail(f"PostgreSQL is required here (CI is set): {reason}", pytrace=False)
    warnings.warn(f"PostgreSQL tests SKIPPED: {reason}", stacklevel=1)
    pytest.skip(f"PostgreSQL tests SKIPPED: {reason}")


def database_url(name: str, **query: str) -> str:
    """ADMIN_URL pointed at another database, with extra query parameters."""
    parts = urlsplit(ADMIN_URL)
    extra = "&".join(f"{k}={v}" for k, v in query.items())
    return urlunsplit(parts._replace(path=f"/{name}",
                                     query="&".join(filter(None, [parts.query, extra]))))


class ScratchDatabase:
    """A database of this test's own: `url(**query)` names it, `down()` / `up()` make it
    refuse and accept connections (an outage of this database only: the server is shared
    with other tests and cannot be stopped)."""

    def __init__(self) -> None:
        from infrastructure.postgres import ensure_database

        self.name = f"esc_test_{secrets.token_hex(6)}"
        ensure_database(database_url(self.name), maintenance_db=self._admin_db())
        self.default_url = database_url(self.name)

    @staticmethod
    def _admin_db() -> str:
        return urlsplit(ADMIN_URL).path.strip("/") or "postgres"

    def url(self, **query: str) -> str:
        return database_url(self.name, **query)

    def admin(self):
        import psycopg

        from infrastructure.postgres import _admin_kwargs

        kwargs, dbname = _admin_kwargs(ADMIN_URL)
        return psycopg.connect(**kwargs, dbname=dbname, autocommit=True)

    def connect(self):
        import psycopg

        from infrastructure.postgres import _admin_kwargs

        kwargs, _ = _admin_kwargs(ADMIN_URL)
        return psycopg.connect(**kwargs, dbname=self.name, autocommit=True)

    def down(self) -> None:
        """Refuse new connections and cut the open ones, as a stopped server would."""
        with self.admin() as conn:
            conn.execute(f'ALTER DATABASE "{self.name}" ALLOW_CONNECTIONS false')
            conn.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                         "WHERE datname = %s AND pid <> pg_backend_pid()", [self.name])

    def up(self) -> None:
        with self.admin() as conn:
            conn.execute(f'ALTER DATABASE "{self.name}" ALLOW_CONNECTIONS true')

    def drop(self) -> None:
        from infrastructure.postgres import drop_database

        import psycopg

        try:
            self.up()
        except psycopg.errors.InvalidCatalogName:
            return  # never created, or dropped already
        drop_database(self.default_url, maintenance_db=self._admin_db())


@pytest.fixture
def pg():
    require_postgres()
    database = ScratchDatabase()
    try:
        yield database
    finally:
        database.drop()


@pytest.fixture
def nodes(pg):
    """`nodes(n=2, url=None, **options)` -> n compositors on this test's database."""
    opened: list[Compositor] = []

    def _open(n: int = 2, url: str | None = None, **options) -> list[Compositor]:
        for _ in range(n):
            opened.append(Compositor.open(url or pg.default_url, **options))
        return opened[-n:]

    yield _open
    for compositor in opened:
        try:
            compositor.close()
        except Exception:
            pass


def publish(node: Compositor, aor: str = "sip:alice@example.com", **kwargs):
    kwargs.setdefault("expires", 600)
    if kwargs.get("if_match") is None:
        kwargs.setdefault("body", make_pidf(entity=aor))
        kwargs.setdefault("content_type", "application/pidf+xml")
    return node.publish(aor, "presence", **kwargs)


def event_types(node: Compositor, aor: str = "sip:alice@example.com") -> list[str]:
    return [record.type for record in node.history(aor)]


# ---- schema -----------------------------------------------------------------------------------

def test_round_trip_and_a_second_node_needs_no_schema_rights(pg, nodes):
    (a,) = nodes(1)
    accepted = publish(a)
    found = a.find("sip:alice@example.com", accepted.etag, "presence")
    assert found is not None and found.body == make_pidf(entity="sip:alice@example.com")
    (b,) = nodes(1, create_schema=False)  # the tables exist: nothing to create
    assert [p.etag for p in b.list()] == [accepted.etag]
    with pg.connect() as conn:
        tables = {row[0] for row in conn.execute(
            "SELECT tablename FROM pg_tables WHERE schemaname = 'public'")}
    assert tables == {"esc_events", "esc_snapshots"}


def test_a_postgresql_schema_of_its_own(pg, nodes):
    a, b = nodes(2, url=pg.url(schema="presence"))
    tag = publish(a).etag
    assert b.find("sip:alice@example.com", tag) is not None
    with pg.connect() as conn:
        tables = {row[0] for row in conn.execute(
            "SELECT tablename FROM pg_tables WHERE schemaname = 'presence'")}
    assert tables == {"esc_events", "esc_snapshots"}


def test_a_node_told_not_to_create_the_schema_says_to_migrate(pg):
    with pytest.raises(Exception, match="esc migrate"):
        Compositor.open(pg.default_url, create_schema=False)


def test_nodes_starting_at_the_same_moment_all_start(pg, nodes):
    """docs/design.md: two nodes creating the tables at once failed with "tuple concurrently
    updated". The advisory lock makes concurrent starts queue."""
    barrier = threading.Barrier(6)

    def start(_):
        barrier.wait()
        return Compositor.open(pg.default_url)

    with ThreadPoolExecutor(6) as pool:
        started = list(pool.map(start, range(6)))
    try:
        accepted = publish(started[0])
        assert all(node.find("sip:alice@example.com", accepted.etag) for node in started)
    finally:
        for node in started:
            node.close()


def test_migrate_is_idempotent_and_concurrent(pg):
    from infrastructure.postgres import migrate

    with ThreadPoolExecutor(4) as pool:
        results = list(pool.map(lambda _: migrate(pg.default_url), range(4)))
    assert all(r == ["public.esc_events", "public.esc_snapshots"] for r in results)
    compositor = Compositor.open(pg.default_url, create_schema=False)
    compositor.close()


# ---- any node takes any request ---------------------------------------------------------------

def test_a_tag_issued_by_one_node_works_on_the_other(nodes):
    a, b = nodes(2)
    first = publish(a)
    refreshed = publish(b, if_match=first.etag)            # issued by A, refreshed on B
    modified = publish(a, if_match=refreshed.etag,          # A's cached copy is stale now
                       body=make_pidf("closed", entity="sip:alice@example.com"),
                       content_type="application/pidf+xml")
    for node in (a, b):
        with pytest.raises(ConditionalRequestFailed):
            publish(node, if_match=refreshed.etag)
        assert node.find("sip:alice@example.com", modified.etag).body == \
            make_pidf("closed", entity="sip:alice@example.com")
        assert node.find("sip:alice@example.com", refreshed.etag) is None
    removed = publish(b, if_match=modified.etag, expires=0)
    assert removed.expires == 0
    for node in (a, b):
        assert node.find("sip:alice@example.com", modified.etag) is None
        assert node.list() == []
        assert event_types(node) == ["Published", "Refreshed", "Modified", "Removed"]


def test_two_nodes_racing_on_one_tag_give_one_200_and_one_412(nodes):
    a, b = nodes(2)
    rounds = 15
    tags = [publish(a, f"sip:user{i}@example.com").etag for i in range(rounds)]
    for node in (a, b):  # both have every publication cached: the race is on the save
        for i, tag in enumerate(tags):
            assert node.find(f"sip:user{i}@example.com", tag)
    outcomes = []
    for i, tag in enumerate(tags):
        barrier = threading.Barrier(2)

        def refresh(node, aor=f"sip:user{i}@example.com", tag=tag):
            barrier.wait()
            try:
                return publish(node, aor, if_match=tag)
            except ConditionalRequestFailed as refusal:
                return refusal

        with ThreadPoolExecutor(2) as pool:
            results = list(pool.map(refresh, (a, b)))
        outcomes.append(sorted(type(r).__name__ for r in results))
    assert outcomes == [["Accepted", "ConditionalRequestFailed"]] * rounds
    for i in range(rounds):
        assert event_types(a, f"sip:user{i}@example.com") == ["Published", "Refreshed"]


def test_the_loser_of_a_race_re_decides_its_whole_batch(nodes):
    """A version conflict on one publication fails the loser's save; it reloads and decides
    every request of the batch again, so the unrelated ones still succeed."""
    a, b = nodes(2)
    tag = publish(a).etag
    assert b.find("sip:alice@example.com", tag)  # B caches version 1
    publish(a, if_match=tag)                      # A moves it to version 2
    batch = [PublishRequest("sip:bob@example.com", "presence", make_pidf(), "application/pidf+xml",
                            600, None),
             PublishRequest("sip:alice@example.com", "presence", None, None, 600, tag),
             PublishRequest("sip:carol@example.com", "presence", make_pidf(),
                            "application/pidf+xml", 600, None)]
    results = b.process_many(batch)
    assert [type(r).__name__ for r in results] == [
        "Accepted", "ConditionalRequestFailed", "Accepted"]
    assert {p.aor for p in a.list()} == {"sip:alice@example.com", "sip:bob@example.com",
                                         "sip:carol@example.com"}


# ---- expiry with every node's scheduler ---------------------------------------------------------

def test_expiry_on_every_node_records_exactly_one_expired_each(nodes):
    clock = FakeClock()
    a, b = nodes(2, clock=clock)
    count = 40
    for i in range(count):
        publish(a if i % 2 else b, f"sip:user{i}@example.com", expires=60)
    for node in (a, b):
        node.catch_up()
    clock.advance(61)
    barrier = threading.Barrier(2)

    def expire(node):
        barrier.wait()
        total = 0
        for _ in range(3):
            total += node.expire_due()
        return total

    with ThreadPoolExecutor(2) as pool:
        expired = list(pool.map(expire, (a, b)))
    assert sum(expired) == count
    records = [r for r in a.feed() if r.type == "Expired"]
    assert len(records) == count
    assert len({r.publication for r in records}) == count
    assert a.list() == [] and b.list() == []


def test_expiry_schedulers_on_two_nodes_with_the_real_clock(nodes):
    a, b = nodes(2, min_expires=1)
    schedulers = [ExpiryScheduler(node).start() for node in (a, b)]
    try:
        for i in range(10):
            publish(a if i % 2 else b, f"sip:user{i}@example.com", expires=1)
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline:
            if sum(r.type == "Expired" for r in a.feed()) >= 10:
                break
            time.sleep(0.1)
        time.sleep(0.6)  # several more passes of both schedulers: still one each
    finally:
        for scheduler in schedulers:
            scheduler.stop()
    expired = [r.publication for r in a.feed() if r.type == "Expired"]
    assert len(expired) == 10 and len(set(expired)) == 10
    assert schedulers[0].expired + schedulers[1].expired == 10


# ---- views and the feed --------------------------------------------------------------------------

def test_each_nodes_view_follows_the_others_writes_within_a_second(nodes):
    a, b = nodes(2)
    scheduler = ExpiryScheduler(b).start()  # what `esc serve` runs: it also catches up
    try:
        accepted = publish(a)
        started = time.monotonic()
        while not b.view.live():  # the view itself, not list() (which catches up first)
            assert time.monotonic() - started < 1.0, "B's view did not follow within 1 s"
            time.sleep(0.02)
        assert b.view.live()[0].etag == accepted.etag
        publish(a, if_match=accepted.etag, expires=0)
        started = time.monotonic()
        while b.view.live():
            assert time.monotonic() - started < 1.0
            time.sleep(0.02)
    finally:
        scheduler.stop()
    tag = publish(a, "sip:bob@example.com").etag
    assert [p.etag for p in b.list()] == [tag]  # list() catches up on its own


def test_the_feed_is_one_global_order_with_nothing_skipped(nodes):
    """Two nodes write concurrently while a third reads the feed as it grows: what the
    reader saw, in the order it saw it, is exactly the final log."""
    a, b, reader = nodes(3)
    stop = threading.Event()
    seen: list[tuple[int, str, int]] = []

    def follow():
        position = 0
        while True:
            done = stop.is_set()
            for record in reader.feed(after=position):
                seen.append((record.position, record.publication, record.version))
                position = record.position
            if done:
                return
            time.sleep(0.005)

    def write(node, prefix):
        for i in range(30):
            tag = publish(node, f"sip:{prefix}{i}@example.com").etag
            node.process_many([
                PublishRequest(f"sip:{prefix}{i}@example.com", "presence", None, None, 600, tag),
                PublishRequest(f"sip:{prefix}x{i}@example.com", "presence", make_pidf(),
                               "application/pidf+xml", 600, None)])

    follower = threading.Thread(target=follow)
    follower.start()
    with ThreadPoolExecutor(2) as pool:
        list(pool.map(write, (a, b), ("a", "b")))
    stop.set()
    follower.join()
    final = [(r.position, r.publication, r.version) for r in a.feed()]
    assert len(final) == 2 * 30 * 3
    assert [p for p, _, _ in final] == sorted(p for p, _, _ in final)
    assert seen == final
    assert [(r.position, r.publication) for r in b.feed()] == \
        [(p, pub) for p, pub, _ in final]


# ---- settings and outages ------------------------------------------------------------------------

def test_settings_from_the_url_reach_the_driver(pg, nodes):
    url = pg.url(pool_size="3", max_overflow="2", connect_timeout="3", lock_timeout="1",
                 application_name="esc-test")
    (node,) = nodes(1, url=url)
    datastore = node.recorder.datastore
    assert (datastore.pool.min_size, datastore.pool.max_size) == (3, 5)
    assert datastore.pool.timeout == 3 and datastore.lock_timeout == 1
    assert datastore.pool.kwargs["connect_timeout"] == 3
    tag = publish(node).etag
    with pg.connect() as conn:
        names = [row[0] for row in conn.execute(
            "SELECT application_name FROM pg_stat_activity WHERE datname = %s", [pg.name])]
        assert 1 <= names.count("esc-test") <= 5
        # lock_timeout bounds the wait for the events table's write lock
        with conn.transaction():
            conn.execute("LOCK TABLE esc_events IN EXCLUSIVE MODE")
            started = time.monotonic()
            with pytest.raises(StoreUnavailable):
                publish(node, if_match=tag)
            assert time.monotonic() - started < 2.5
    assert publish(node, if_match=tag).etag != tag  # the lock is gone: served again


def test_an_outage_fails_requests_in_bounded_time_stores_nothing_and_heals(pg, nodes):
    (node,) = nodes(1, url=pg.url(connect_timeout="1"))
    tag = publish(node).etag
    pg.down()
    try:
        started = time.monotonic()
        with pytest.raises(StoreUnavailable) as refused:
            publish(node, if_match=tag)
        assert time.monotonic() - started < 3.5
        assert refused.value.retry_after == 5
        batch = node.process_many([
            PublishRequest("sip:bob@example.com", "presence", make_pidf(),
                           "application/pidf+xml", 600, None),
            PublishRequest("sip:alice@example.com", "presence", None, None, 600, tag)])
        assert all(isinstance(r, StoreUnavailable) for r in batch)
    finally:
        pg.up()
    started = time.monotonic()
    while True:  # the same node, not reopened, serves again by itself
        try:
            refreshed = publish(node, if_match=tag)
            break
        except StoreUnavailable:
            assert time.monotonic() - started < 10, "no recovery within 10 s"
            time.sleep(0.2)
    assert refreshed.etag != tag
    assert [r.type for r in node.feed()] == ["Published", "Refreshed"]  # nothing partial
    assert [p.aor for p in node.list()] == ["sip:alice@example.com"]


def test_clear_empties_the_shared_store(nodes):
    a, b = nodes(2)
    publish(a)
    a.clear()
    assert list(a.feed()) == [] and a.list() == []
    tag = publish(b, "sip:bob@example.com").etag
    assert a.find("sip:bob@example.com", tag) is not None
    assert [r.aor for r in a.feed()] == ["sip:bob@example.com"]
