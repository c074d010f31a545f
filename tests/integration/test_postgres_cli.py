"""The `esc` command against PostgreSQL: `esc migrate` and the query commands."""

from __future__ import annotations

import json
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor

import pytest

from infrastructure import Compositor
from tests.conftest import REPO, make_pidf
from tests.integration.test_postgres import ScratchDatabase, pg, require_postgres  # noqa: F401

pytestmark = pytest.mark.postgres


def esc(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    import os

    environ = {k: v for k, v in os.environ.items() if not k.startswith("ESC_STORE")}
    return subprocess.run([sys.executable, "-m", "esc", *args], cwd=REPO, capture_output=True,
                          text=True, timeout=60, env={**environ, **(env or {})})


def test_migrate_from_several_nodes_at_once_then_serve_without_schema_rights(pg):  # noqa: F811
    with ThreadPoolExecutor(3) as pool:
        results = list(pool.map(lambda _: esc("migrate", "--store", pg.default_url), range(3)))
    for result in results:
        assert result.returncode == 0, result.stderr
        assert result.stdout.strip() == "schema ready: public.esc_events, public.esc_snapshots"
    compositor = Compositor.open(pg.default_url, create_schema=False)
    compositor.close()


def test_migrate_can_create_the_database():
    require_postgres()
    database = ScratchDatabase()
    database.drop()  # a name nobody has: migrate must create it
    try:
        result = esc("migrate", "--create-database", "--store", database.default_url)
        assert result.returncode == 0, result.stderr
        with database.connect() as conn:
            assert conn.execute("SELECT to_regclass('public.esc_events')").fetchone()[0]
    finally:
        database.drop()


def test_query_commands_read_the_shared_store(pg):  # noqa: F811
    compositor = Compositor.open(pg.default_url)
    try:
        accepted = compositor.publish("sip:alice@example.com", "presence", body=make_pidf(),
                                      content_type="application/pidf+xml", expires=600)
        compositor.publish("sip:alice@example.com", "presence", if_match=accepted.etag)
    finally:
        compositor.close()
    env = {"ESC_STORE": pg.default_url}
    listed = esc("list", "--json", env=env)
    assert listed.returncode == 0, listed.stderr
    assert [row["aor"] for row in json.loads(listed.stdout)] == ["sip:alice@example.com"]
    followed = esc("follow", env=env)
    records = [json.loads(line) for line in followed.stdout.splitlines()]
    assert [(r["position"] > 0, r["type"]) for r in records] == [
        (True, "Published"), (True, "Refreshed")]
    history = esc("history", "sip:alice@example.com", env=env)
    assert history.returncode == 0 and len(history.stdout.splitlines()) == 2
    assert esc("verify", env=env).returncode == 0


def test_an_unreachable_database_is_one_line_without_the_password():
    result = esc("list", "--store",
                 "postgresql://esc:hunter2@/no_such_db_here?host=/nonexistent&connect_timeout=1")
    assert result.returncode == 3
    assert len(result.stderr.strip().splitlines()) == 1
    assert "hunter2" not in result.stderr and "esc:***@" in result.stderr
    assert "last connection attempt" in result.stderr  # why, not just "timed out"
