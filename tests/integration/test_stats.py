"""`Compositor.stats` and `esc stats` on a real SQLite store, and the progress bars of
`esc verify` and `esc verify --rebuild`: drawn on standard error when it is a terminal
(a pseudo-terminal here), absent otherwise."""

from __future__ import annotations

import fcntl
import io
import json
import os
import pty
import re
import sqlite3
import struct
import subprocess
import sys
import termios
import time
from datetime import datetime
from pathlib import Path
from uuid import uuid4

import pytest

from domain import Subscription
from esc.cli import progress_bar

from ..conftest import T0

PIDF = "application/pidf+xml"
DIALOG_INFO = "application/dialog-info+xml"
DIALOG = (b'<?xml version="1.0"?><dialog-info xmlns="urn:ietf:params:xml:ns:dialog-info" '
          b'version="0" state="full" entity="sip:carol@example.com"/>')
ALICE, BOB, CAROL = "sip:alice@example.com", "sip:bob@example.com", "sip:carol@example.com"

# What tqdm draws: "12000/30000 [00:01<00:02, 9870.12 events/s]" (done/total [elapsed<ETA,
# rate]); the rate of a very quick replay may be scaled ("1.2M events/s").
RATE_AND_ETA = re.compile(r"\d+/\d+ \[\d\d:\d\d<\d\d:\d\d, +[\d.]+[kMG]? events/s\]")


def subscribe(aor: str, event: str, *, now: float, expires_in: float) -> Subscription:
    return Subscription.subscribe(
        id=uuid4(), aor=aor, event_package=event, call_id=f"{uuid4().hex}@watcher",
        remote_tag="from-tag", local_tag="to-tag", watcher_uri=BOB,
        watcher_contact="<sip:bob@198.51.100.7:5070>", route_set=[], remote_cseq=1,
        transport="udp", host="203.0.113.5", port=5060, expires_at=now + expires_in,
        now=now, identity="bob", local_cseq=100, event_id=None, owner=None)


def fill(c, pidf, now: float) -> None:
    """Ten events: six publishes (one removed, one lapsing after 5 s), three subscriptions
    (one expiring after 5 s, one terminated)."""
    c.publish(ALICE, "presence", body=pidf(), content_type=PIDF, expires=3600, now=now)  # 1
    c.publish(ALICE, "presence", body=pidf(tuple_id="t2"), content_type=PIDF, expires=600,
              now=now)  # 2
    gone = c.publish(BOB, "presence", body=pidf(entity=BOB), content_type=PIDF, expires=60,
                     now=now).etag  # 3
    c.publish(BOB, "presence", if_match=gone, expires=0, now=now + 1)  # 4: removed
    c.publish(CAROL, "dialog", body=DIALOG, content_type=DIALOG_INFO,
              expires=5, now=now)  # 5: lapses at now + 5, Expired not recorded
    c.publish(CAROL, "dialog", body=DIALOG, content_type=DIALOG_INFO,
              expires=1200, now=now)  # 6
    c.project(c.app.save(subscribe(CAROL, "dialog", now=now, expires_in=600)))  # 7
    c.project(c.app.save(subscribe(ALICE, "presence", now=now, expires_in=5)))  # 8
    ended = subscribe(ALICE, "presence", now=now, expires_in=600)  # 9
    assert ended.terminate(now + 2, "deactivated")  # 10
    c.project(c.app.save(ended))


def sqlite_bytes(path: str) -> int:
    return sum(os.path.getsize(p) for p in (path, f"{path}-wal", f"{path}-shm")
               if os.path.isfile(p))


def test_stats_of_an_sqlite_store(open_compositor, store_url, pidf):
    c = open_compositor(store_url)
    fill(c, pidf, T0)
    c.consumer("blf").commit(4)
    c.view.set_position("notifier", 7)

    stats = c.stats(now=T0 + 10)
    assert (stats.at, stats.events, stats.head, stats.view_position) == (T0 + 10, 10, 10, 10)
    assert stats.consumers == {"feed:blf": 4, "notifier": 7}
    assert stats.publications == {"dialog": 1, "presence": 2}
    assert (stats.live, stats.lapsed) == (3, 1)
    assert stats.subscriptions == {"dialog": 1}
    assert stats.active_subscriptions == 1
    assert stats.next_expiry == T0 + 600
    path = store_url.removeprefix("sqlite:///")
    assert stats.store_bytes == sqlite_bytes(path) > 0
    assert stats.view_bytes == sqlite_bytes(f"{path}-view") > 0
    assert stats.size_bytes == stats.store_bytes + stats.view_bytes

    data = stats.as_json()
    assert json.loads(json.dumps(data)) == data
    assert (data["events"], data["live"], data["active_subscriptions"], data["size_bytes"]) == \
        (10, 3, 1, stats.size_bytes)

    # Later, everything has lapsed: nothing live, nothing next; the counts of events stay.
    later = c.stats(now=T0 + 4000)
    assert (later.publications, later.subscriptions, later.next_expiry) == ({}, {}, None)
    assert (later.live, later.lapsed, later.events) == (0, 4, 10)
    assert c.head() == 10


def test_stats_of_a_store_in_memory(open_compositor, pidf):
    c = open_compositor("memory://")
    assert c.stats(now=T0).events == 0 and c.stats(now=T0).next_expiry is None
    fill(c, pidf, T0)
    stats = c.stats(now=T0 + 10)
    assert (stats.events, stats.live, stats.active_subscriptions) == (10, 3, 1)
    assert (stats.store_bytes, stats.view_bytes, stats.size_bytes) == (None, None, None)


# ---- the command -----------------------------------------------------------------------------

@pytest.fixture
def esc(tmp_path, subprocess_env, python):
    def run(*args: str):
        return subprocess.run([python, "-m", "esc", *args], cwd=tmp_path, env=subprocess_env,
                              capture_output=True, text=True, timeout=60)

    return run


@pytest.fixture
def filled(open_compositor, store_url, pidf):
    """The ten events of `fill`, made 10 s ago (the CLI reads the real clock: what lives
    5 s has lapsed, what lives 600 s or more has not); closed."""
    c = open_compositor(store_url)
    start = time.time() - 10
    fill(c, pidf, start)
    c.view.set_position("notifier", 7)
    c.close()
    return {"url": store_url, "start": start}


def test_esc_stats_as_json(esc, filled):
    result = esc("stats", "--json", "--store", filled["url"])
    assert result.returncode == 0 and result.stderr == "", result.stderr
    data = json.loads(result.stdout)
    assert filled["start"] + 10 <= data["at"] < filled["start"] + 70
    assert {k: data[k] for k in ("events", "head", "view_position", "consumers", "publications",
                                  "live", "subscriptions", "active_subscriptions")} == {
        "events": 10, "head": 10, "view_position": 10, "consumers": {"notifier": 7},
        "publications": {"dialog": 1, "presence": 2}, "live": 3,
        "subscriptions": {"dialog": 1}, "active_subscriptions": 1}
    assert (data["lapsed"], data["next_expiry"]) == (1, pytest.approx(filled["start"] + 600))
    assert data["store_bytes"] > 0 and data["view_bytes"] > 0
    assert data["size_bytes"] == data["store_bytes"] + data["view_bytes"]


def test_esc_stats_as_text(esc, filled):
    result = esc("stats", "--store", filled["url"])
    assert result.returncode == 0 and result.stderr == "", result.stderr
    lines = result.stdout.splitlines()
    assert lines[:5] == [f"store: {filled['url']}", "events: 10", "feed head: 10",
                         "view position: 10 (caught up)", "consumer notifier: 7 (3 behind)"]
    assert lines[5:11] == ["live publications: 3", "  dialog: 1", "  presence: 2",
                           "lapsed publications (expiry not yet recorded): 1",
                           "active subscriptions: 1", "  dialog: 1"]
    expiry = re.fullmatch(r"next expiry: (\S+) \(in (\d+) s\)", lines[11])
    assert expiry, lines[11]
    when = datetime.fromisoformat(expiry[1].replace("Z", "+00:00")).timestamp()
    assert when == pytest.approx(filled["start"] + 600, abs=0.001)
    assert 530 <= int(expiry[2]) <= 591
    assert re.fullmatch(r"size on disk: \d+\.\d\d MB \(event store \d+\.\d\d MB, "
                        r"view \d+\.\d\d MB\)", lines[12]), lines[12]
    assert len(lines) == 13


def test_esc_stats_on_a_bad_store_is_one_line(esc):
    result = esc("stats", "--store", "foo://nowhere")
    assert result.returncode != 0 and result.stdout == ""
    assert len(result.stderr.splitlines()) == 1 and "Traceback" not in result.stderr


# ---- progress --------------------------------------------------------------------------------

def test_no_progress_when_stderr_is_not_a_terminal(esc, filled):
    verified = esc("verify", "--store", filled["url"])
    assert verified.returncode == 0 and verified.stderr == ""
    assert "differences: 0" in verified.stdout
    rebuilt = esc("verify", "--rebuild", "--json", "--store", filled["url"])
    assert rebuilt.returncode == 0 and rebuilt.stderr == ""
    # the lapsed dialog publication keeps its row until its Expired is recorded
    assert json.loads(rebuilt.stdout) == {"rebuilt": 10, "live": 4}


def test_rebuild_repairs_a_tampered_view(esc, filled):
    view = filled["url"].removeprefix("sqlite:///") + "-view"
    with sqlite3.connect(view) as db:
        db.execute("UPDATE publications SET etag = 'tampered'")
    assert esc("verify", "--store", filled["url"]).returncode not in (0, 1)
    rebuilt = esc("verify", "--rebuild", "--store", filled["url"])
    assert rebuilt.returncode == 0
    assert rebuilt.stdout == "view rebuilt from 10 events: 4 publications\n"
    assert "differences: 0" in esc("verify", "--store", filled["url"]).stdout
    # the consumers' positions survive a rebuild
    assert "consumer notifier: 7" in esc("stats", "--store", filled["url"]).stdout


def run_with_terminal_stderr(args: list[str], env: dict[str, str], cwd: Path
                             ) -> tuple[int, str, str]:
    """Run `esc ARGS` with stderr on a pseudo-terminal (100 columns) and stdout on a pipe:
    (exit status, stdout, what the terminal received)."""
    master, slave = pty.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 100, 0, 0))
    try:
        process = subprocess.Popen([sys.executable, "-m", "esc", *args], cwd=cwd, env=env,
                                   stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                   stderr=slave)
    finally:
        os.close(slave)
    received = b""
    try:
        while True:
            try:
                chunk = os.read(master, 65536)
            except OSError:  # EIO: the child closed the terminal
                break
            if not chunk:
                break
            received += chunk
        stdout = process.stdout.read() if process.stdout else b""
        status = process.wait(timeout=60)
    finally:
        os.close(master)
        if process.stdout:
            process.stdout.close()
    return status, stdout.decode(), received.decode("utf-8", "replace")


@pytest.mark.parametrize("args, label, said", [
    (["verify"], "verify", "differences: 0"),
    (["verify", "--rebuild"], "rebuild view", "view rebuilt from 10 events"),
])
def test_progress_with_rate_and_eta_when_stderr_is_a_terminal(filled, subprocess_env,
                                                              tmp_path, args, label, said):
    status, stdout, terminal = run_with_terminal_stderr(
        [*args, "--store", filled["url"]], subprocess_env, tmp_path)
    assert status == 0, terminal
    assert said in stdout and "events/s" not in stdout  # the bar never reaches stdout
    final = terminal.replace("\r\n", "\r").split("\r")
    drawn = [line for line in final if line.startswith(f"{label}:")]
    assert drawn, terminal
    assert "100%" in drawn[-1] and "10/10" in drawn[-1], drawn[-1]
    assert RATE_AND_ETA.search(drawn[-1]), drawn[-1]


class FakeTerminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_progress_bar_follows_positions_on_a_terminal():
    terminal = FakeTerminal()
    with progress_bar("verify", 3000, terminal) as advance:
        assert advance is not None
        for position in (1000, 2000, 3000):
            advance(position)
    drawn = terminal.getvalue().split("\r")[-1]
    assert drawn.startswith("verify: 100%") and "3000/3000" in drawn
    assert RATE_AND_ETA.search(drawn), drawn


def test_progress_bar_is_silent_off_a_terminal_or_with_nothing_to_replay():
    for stream, total in ((io.StringIO(), 3000), (FakeTerminal(), 0)):
        with progress_bar("verify", total, stream) as advance:
            assert advance is None
        assert stream.getvalue() == ""


def test_a_replay_tells_its_progress_page_by_page(open_compositor, pidf):
    c = open_compositor("memory://")
    for i in range(25):
        c.publish(f"sip:user{i}@example.com", "presence", body=pidf(), content_type=PIDF,
                  expires=3600, now=T0)
    told: list[int] = []
    assert c.projection._replay_into(c.view.__class__(None), 0, 10, told.append) == 25
    assert told == [10, 20, 25]
    told.clear()
    assert c.projection.verify(told.append) == (25, 25, [])
    assert told == [25]  # one page of the default size
    told.clear()
    assert c.projection.rebuild(told.append) == 25 and told == [25]


@pytest.mark.postgres
def test_stats_of_a_postgresql_store(pidf):
    from tests.integration.test_postgres import ScratchDatabase, require_postgres

    from infrastructure import Compositor

    require_postgres()
    database = ScratchDatabase()
    try:
        with Compositor.open(database.default_url) as c:
            fill(c, pidf, T0)
            stats = c.stats(now=T0 + 10)
            assert (stats.events, stats.head, stats.view_position) == (10, 10, 10)
            assert stats.publications == {"dialog": 1, "presence": 2}
            assert (stats.subscriptions, stats.next_expiry) == ({"dialog": 1}, T0 + 600)
            with database.connect() as conn:
                size = conn.execute("SELECT pg_database_size(current_database())").fetchone()[0]
            # the database's size as PostgreSQL reports it (it may grow between the reads)
            assert 0 < stats.store_bytes <= size
            assert stats.view_bytes is None and stats.size_bytes == stats.store_bytes
    finally:
        database.drop()
