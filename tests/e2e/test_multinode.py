"""Two `esc serve` nodes on different ports sharing one PostgreSQL database, driven by SIPp.

Any node takes any request: a tag issued by one node is refreshed, modified and removed on
the other; two nodes racing on one tag give one 200 and one 412; with both expiry
schedulers running each publication gets one `Expired`; `esc follow` shows every node's
events in one order; with the database down a node answers 503 with Retry-After, stores
nothing, and serves again when the database is back, without a restart.

Each test has a database of its own (see tests/integration/test_postgres.py, whose
fixtures this module uses); the nodes reach it through the server's Unix socket.
"""

from __future__ import annotations

import json
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from tests.integration.test_postgres import pg  # noqa: F401  (fixture)

from .conftest import RunningServer, assert_sipp_ok, run_sipp, start_server

pytestmark = [pytest.mark.e2e, pytest.mark.postgres]


@pytest.fixture
def cluster(pg, tmp_path):  # noqa: F811
    """Two nodes started at the same moment on a fresh database (so both try to create
    the schema at once), each with its expiry scheduler."""
    url = pg.url(connect_timeout="2")
    workdirs = [tmp_path / "node-a", tmp_path / "node-b"]
    for workdir in workdirs:
        workdir.mkdir()
    with ThreadPoolExecutor(2) as pool:
        started = list(pool.map(lambda w: start_server(w, "--min-expires", "1", store=url),
                                workdirs))
    try:
        yield started
    finally:
        for server in started:
            server.stop()


def sipp_log(result) -> list[str]:
    return [line.strip() for path in sorted(Path(result.workdir).glob("*_logs.log"))
            for line in path.read_text().splitlines() if line.strip()]


def publish_on(server: RunningServer, user: str, calls: int, expires: int = 600,
               transport: str = "udp") -> dict[str, str]:
    """Initial PUBLISHes for sip:<user>1.. <user><calls>@127.0.0.1: {user part: tag}."""
    result = run_sipp(server, "multinode_publish.xml", transport=transport, calls=calls,
                      rate=50, extra=("-key", "user", user, "-key", "expires", str(expires),
                                      "-trace_logs"))
    assert_sipp_ok(result)
    tags = dict(line.split(";", 1) for line in sipp_log(result))
    assert len(tags) == calls
    return tags


def inject(path: Path, tags: dict[str, str]) -> str:
    path.write_text("SEQUENTIAL\n" + "".join(f"{u};{t}\n" for u, t in tags.items()))
    return str(path)


def feed(server: RunningServer) -> list[dict]:
    out = server.esc("follow").stdout
    return [json.loads(line) for line in out.splitlines() if line.strip()]


def by_resource(records: list[dict]) -> dict[str, list[dict]]:
    """The feed's events per user part (sip:USER@127.0.0.1), in feed order."""
    grouped: dict[str, list[dict]] = {}
    for record in records:
        grouped.setdefault(record["aor"][4:].split("@")[0], []).append(record)
    return grouped


@pytest.mark.parametrize("transport", ["udp", "tcp"])
def test_publish_on_one_node_refresh_modify_remove_on_the_other(cluster, tmp_path, transport):
    a, b = cluster
    issued = publish_on(a, "alice", 5, transport=transport)
    result = run_sipp(b, "multinode_refresh_modify.xml", transport=transport, calls=5,
                      rate=50, extra=("-inf", inject(tmp_path / "a.csv", issued),
                                      "-trace_logs"))
    assert_sipp_ok(result)
    modified = dict(line.split(";", 1) for line in sipp_log(result))
    assert modified.keys() == issued.keys()
    assert_sipp_ok(run_sipp(a, "multinode_remove.xml", transport=transport, calls=5, rate=50,
                            extra=("-inf", inject(tmp_path / "b.csv", modified))))
    records = feed(a)  # every node's events, in one order
    positions = [r["position"] for r in records]
    assert len(records) == 20 and positions == sorted(set(positions))
    events = by_resource(records)
    assert events.keys() == issued.keys()
    for user, tag in issued.items():
        assert [e["type"] for e in events[user]] == [
            "Published", "Refreshed", "Modified", "Removed"]
        assert events[user][0]["etag"] == tag and events[user][1]["etag_before"] == tag
        assert events[user][2]["etag"] == modified[user]
    history = b.esc("history", "sip:alice1@127.0.0.1", "--json").stdout.splitlines()
    assert [json.loads(line)["type"] for line in history] == [
        "Published", "Refreshed", "Modified", "Removed"]
    assert a.esc("list", "--json").stdout.strip() == "[]"


def test_concurrent_refreshes_of_one_tag_on_two_nodes(cluster, tmp_path):
    a, b = cluster
    tags = {**publish_on(a, "alice", 10), **publish_on(b, "bob", 10)}
    tag_file = inject(tmp_path / "tags.csv", tags)

    def race(server):
        result = run_sipp(server, "multinode_race.xml", calls=len(tags), rate=200,
                          extra=("-inf", tag_file, "-trace_logs"))
        assert_sipp_ok(result)
        return sipp_log(result)

    with ThreadPoolExecutor(2) as pool:
        logs = [line for lines in pool.map(race, cluster) for line in lines]
    outcomes: dict[str, list[str]] = {}
    for line in logs:
        status, user = line.split()[:2]
        outcomes.setdefault(user, []).append(status)
    assert {user: sorted(s) for user, s in outcomes.items()} == \
        {user: ["200", "412"] for user in tags}
    events = by_resource(feed(a))
    assert {user: [e["type"] for e in events[user]] for user in tags} == \
        {user: ["Published", "Refreshed"] for user in tags}


def test_expiry_with_both_schedulers_on_gives_one_expired_each(cluster):
    a, b = cluster
    issued = {**publish_on(a, "alice", 10, expires=1), **publish_on(b, "bob", 10, expires=1)}
    deadline = time.monotonic() + 8
    while sum(r["type"] == "Expired" for r in feed(a)) < 20:
        assert time.monotonic() < deadline, "not every publication expired"
        time.sleep(0.3)
    time.sleep(0.6)  # more passes of both schedulers: still exactly one each
    records = feed(b)
    expired = [r for r in records if r["type"] == "Expired"]
    assert len(expired) == 20 and len({r["publication"] for r in expired}) == 20
    published = {r["publication"]: r for r in records if r["type"] == "Published"}
    assert {r["etag"] for r in published.values()} == set(issued.values())
    for record in expired:  # stamped with its own expiry time, not the time it was noticed
        assert record["at"] == published[record["publication"]]["expires_at"]


def test_database_outage_gives_503_with_retry_after_then_heals_without_restart(pg, cluster):  # noqa: F811
    a, b = cluster
    publish_on(a, "before", 1)
    pg.down()
    try:
        for server, user in ((a, "downa"), (b, "downb")):
            started = time.monotonic()
            assert_sipp_ok(run_sipp(server, "multinode_unavailable.xml",
                                    extra=("-key", "user", user)))
            assert time.monotonic() - started < 8, "a down database must fail fast"
    finally:
        pg.up()
    started = time.monotonic()
    while True:  # the same processes serve again once the database is back
        result = run_sipp(a, "multinode_publish.xml",
                          extra=("-key", "user", "after", "-key", "expires", "600"))
        if result.returncode == 0:
            break
        assert time.monotonic() - started < 12, "node A did not recover by itself"
        time.sleep(0.3)
    publish_on(b, "afterb", 1)
    assert a.process.poll() is None and b.process.poll() is None
    aors = {r["aor"] for r in feed(a)}
    assert aors == {"sip:before1@127.0.0.1", "sip:after1@127.0.0.1",
                    "sip:afterb1@127.0.0.1"}, "nothing of the refused requests is stored"


def test_watchers_hear_every_node_and_survive_the_loss_of_theirs(pg, tmp_path):  # noqa: F811
    """A watcher subscribed on node a hears of a PUBLISH made on node b (node a follows the
    shared feed); node a is killed; node b adopts the subscription once a's lease has run
    out and the watcher hears the next state from b, within 10 s of the kill."""
    import shutil
    import subprocess

    url = pg.url(connect_timeout="2")
    workdirs = [tmp_path / "node-a", tmp_path / "node-b"]
    for workdir in workdirs:
        workdir.mkdir()
    a = start_server(workdirs[0], "--node", "a", store=url)
    b = start_server(workdirs[1], "--node", "b", store=url)
    try:
        watcher_dir = tmp_path / "watcher"
        watcher_dir.mkdir()
        from .conftest import SCENARIOS, free_port

        watcher = subprocess.Popen(
            [shutil.which("sipp") or "sipp", f"127.0.0.1:{a.ports['udp']}",
             "-sf", str(SCENARIOS / "multinode_watch.xml"), "-i", "127.0.0.1",
             "-p", str(free_port()), "-t", "u1", "-m", "1", "-nostdin", "-trace_err",
             "-trace_msg", "-key", "user", "alice", "-timeout", "40s", "-timeout_error"],
            cwd=watcher_dir, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        try:
            deadline = time.monotonic() + 10
            while not a.esc("watchers", "--json").stdout.strip().startswith("[{"):
                assert time.monotonic() < deadline, "the subscription never showed"
                time.sleep(0.2)
            assert_sipp_ok(run_sipp(b, "multinode_publish_status.xml", extra=(
                "-key", "user", "alice", "-key", "status", "open", "-key", "tuple", "t1")))
            time.sleep(1.0)  # the watcher has been told "open" by node a
            a.kill()
            killed = time.monotonic()
            assert_sipp_ok(run_sipp(b, "multinode_publish_status.xml", extra=(
                "-key", "user", "alice", "-key", "status", "closed", "-key", "tuple", "t2")))
            out, err = watcher.communicate(timeout=45)
            took = time.monotonic() - killed
            logs = "".join(p.read_text(errors="replace")
                           for p in sorted(watcher_dir.glob("*_messages.log")))
            assert watcher.returncode == 0, f"{err[-2000:]}\n{logs[-4000:]}"
            assert took < 10.0, f"node b took {took:.1f} s to take the watcher over"
        finally:
            if watcher.poll() is None:
                watcher.kill()
        [row] = json.loads(b.esc("watchers", "--json").stdout)
        assert row["owner"] == "b"
        assert f":{b.ports['udp']};" in logs or f":{b.ports['udp']}>" in logs or \
            f"127.0.0.1:{b.ports['udp']}" in logs  # the last NOTIFY came from node b
    finally:
        for server in (a, b):
            server.stop()
