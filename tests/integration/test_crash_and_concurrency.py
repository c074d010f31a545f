"""Real processes on one SQLite file: a crash between the event commit and the projection,
two writers at once, and two writers racing for the same publication."""

from __future__ import annotations

import json
import signal
import sqlite3
import subprocess
from pathlib import Path

import pytest

from domain import ConditionalRequestFailed
from infrastructure import Compositor

SCRIPTS = Path(__file__).parent / "scripts"
NOW = 1_700_000_000.0
TIMEOUT = 60


class CountingCatchUp(Compositor):
    """Records how many events each catch-up applied (the first one runs on open)."""

    def catch_up(self, page: int = 1000) -> int:
        applied = super().catch_up(page)
        self.__dict__.setdefault("caught_up", []).append(applied)
        return applied


def view_state(view_path: Path) -> tuple[int, set[str]]:
    """The view file as the dead process left it: (tracked position, live aors)."""
    with sqlite3.connect(view_path) as db:
        position = db.execute("SELECT position FROM tracking WHERE name = 'view'").fetchone()[0]
        aors = {row[0] for row in db.execute("SELECT aor FROM publications")}
    return position, aors


@pytest.mark.parametrize("mode, returncode", [("before-projection", 0),
                                              ("during-projection", -signal.SIGKILL)])
def test_the_projection_stays_exactly_once_when_the_process_dies_before_updating_it(
        tmp_path, open_compositor, python, subprocess_env, mode, returncode):
    db = tmp_path / "esc.sqlite3"
    url = f"sqlite:///{db}"
    proc = subprocess.run([python, str(SCRIPTS / "crash_writer.py"), url, mode],
                          env=subprocess_env, capture_output=True, text=True, timeout=TIMEOUT)
    assert proc.returncode == returncode, proc.stderr
    before = json.loads(proc.stdout.splitlines()[0])

    # The batch is durable, the view never saw it.
    with sqlite3.connect(db) as events:
        assert events.execute("SELECT COUNT(*) FROM stored_events").fetchone() == (6,)
    assert view_state(Path(f"{db}-view")) == (3, {"sip:bob@example.com"})
    assert before["position"] == 3

    c = open_compositor(url, cls=CountingCatchUp)
    assert c.caught_up == [3]  # exactly the three missing events
    assert c.view.position() == 6
    live = {p.aor: p for p in c.list(now=NOW + 10)}
    # alice was removed before the crash: re-applying her Published would resurrect her
    assert set(live) == {"sip:bob@example.com", "sip:carol@example.com", "sip:dave@example.com"}
    bob = live["sip:bob@example.com"]
    assert bob.version == 2 and bob.expires_at == NOW + 3 + 1800 and bob.etag != before["bob"]
    assert c.find("sip:bob@example.com", bob.etag, now=NOW + 10) is not None
    assert c.verify() == (3, 3, [])
    snapshot = c.view.snapshot()
    assert c.catch_up() == 0
    assert c.view.snapshot() == snapshot and c.view.position() == 6
    # and life goes on from the recovered state
    with pytest.raises(ConditionalRequestFailed):
        c.publish("sip:bob@example.com", "presence", if_match=before["bob"], now=NOW + 11)
    c.publish("sip:bob@example.com", "presence", if_match=bob.etag, now=NOW + 11)
    assert c.view.position() == 7 and c.verify()[2] == []


class Worker:
    """A compositor in a child process (scripts/worker.py), one JSON line per command."""

    def __init__(self, python: str, env: dict, url: str) -> None:
        self.proc = subprocess.Popen([python, str(SCRIPTS / "worker.py"), url], env=env,
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     stderr=subprocess.PIPE, text=True, bufsize=1)
        assert self.receive() == {"ready": True}

    def send(self, **command) -> None:
        self.proc.stdin.write(json.dumps(command) + "\n")
        self.proc.stdin.flush()

    def receive(self) -> dict:
        line = self.proc.stdout.readline()
        if not line:
            raise AssertionError(f"worker died: {self.proc.stderr.read()}")
        return json.loads(line)

    def ask(self, **command) -> dict:
        self.send(**command)
        return self.receive()

    def close(self) -> None:
        if self.proc.poll() is None:
            try:
                self.send(op="quit")
                self.proc.wait(timeout=TIMEOUT)
            except Exception:
                self.proc.kill()
                self.proc.wait()
        for stream in (self.proc.stdin, self.proc.stdout, self.proc.stderr):
            stream.close()


@pytest.fixture
def workers(python, subprocess_env, store_url):
    """`workers(n)` -> n worker processes on the test's store; all stopped at teardown."""
    started: list[Worker] = []

    def start(n: int) -> list[Worker]:
        # Create the schema first, so the workers do not race to create it.
        Compositor.open(store_url).close()
        started.extend(Worker(python, subprocess_env, store_url) for _ in range(n))
        return started[-n:]

    yield start
    for worker in started:
        worker.close()


def test_two_processes_writing_one_file(workers, open_compositor, store_url):
    a, b = workers(2)
    a.send(op="bulk", prefix="a", n=40, now=NOW)
    b.send(op="bulk", prefix="b", n=40, now=NOW)
    results = [a.receive(), b.receive()]
    acknowledged = {**results[0]["tags"], **results[1]["tags"]}
    replaced = results[0]["replaced"] + results[1]["replaced"]
    assert len(acknowledged) == 80 and len(replaced) == 160

    c = open_compositor(store_url)
    for aor, tag in acknowledged.items():
        found = c.find(aor, tag, "presence", now=NOW + 2)
        assert found is not None and found.version == 3, aor
    assert sorted(p.etag for p in c.list(now=NOW + 2)) == sorted(acknowledged.values())
    positions = [r.position for r in c.feed()]
    assert positions == list(range(1, 241))
    assert c.verify() == (80, 80, [])
    for aor, tag in replaced:
        assert c.find(aor, tag, now=NOW + 2) is None
    # each worker's view agrees too (they shared the view file)
    assert a.ask(op="find", aor="sip:b7@example.com", etag=acknowledged["sip:b7@example.com"],
                 now=NOW + 2) == {"found": True}


def test_two_processes_racing_to_refresh_one_tag(workers, open_compositor, store_url):
    a, b = workers(2)
    aor = "sip:race@example.com"
    first = tag = a.ask(op="publish", aor=aor, now=NOW)["etag"]
    winners = []
    for round_ in range(20):
        now = NOW + 1 + round_
        a.send(op="refresh", aor=aor, etag=tag, now=now)
        b.send(op="refresh", aor=aor, etag=tag, now=now)
        answers = {"a": a.receive(), "b": b.receive()}
        won = [name for name, answer in answers.items() if "etag" in answer]
        lost = [name for name, answer in answers.items() if answer == {"status": 412}]
        assert len(won) == 1 and len(lost) == 1, answers
        winners.append(won[0])
        tag = answers[won[0]]["etag"]

    c = open_compositor(store_url)
    assert [r.type for r in c.feed()] == ["Published"] + ["Refreshed"] * 20
    assert [p.etag for p in c.list(now=NOW + 30)] == [tag]
    assert c.find(aor, tag, now=NOW + 30).version == 21
    assert c.verify() == (1, 1, [])
    for worker in (a, b):  # whatever each one cached, the first tag is dead everywhere
        assert worker.ask(op="find", aor=aor, etag=first, now=NOW + 30) == {"found": False}
        assert worker.ask(op="find", aor=aor, etag=tag, now=NOW + 30) == {"found": True}


def test_two_processes_expiring_the_same_publications_record_each_expiry_once(
        workers, open_compositor, store_url):
    a, b = workers(2)
    for i in range(20):
        a.ask(op="publish", aor=f"sip:e{i}@example.com", expires=10, now=NOW)
    a.send(op="expire_due", now=NOW + 100)
    b.send(op="expire_due", now=NOW + 100)
    expired = a.receive()["expired"] + b.receive()["expired"]
    assert expired == 20

    c = open_compositor(store_url)
    types = [r.type for r in c.feed()]
    assert types.count("Expired") == 20 and len(types) == 40
    assert c.view.count() == 0 and c.verify() == (0, 0, [])
    assert c.expire_due(now=NOW + 200) == 0
