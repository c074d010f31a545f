"""The view's `subscriptions` table, `Compositor.watchers` and `esc watchers`, on a real
SQLite store. Subscription aggregates are saved straight through the application (the
notifier's way), then projected like every other event."""

from __future__ import annotations

import json
import sqlite3
import subprocess
import time
from uuid import uuid4

import pytest

from domain import Subscription
from infrastructure.records import SubscriptionRow
from infrastructure.view import CurrentStateView

from ..conftest import T0

PIDF = "application/pidf+xml"
ALICE, BOB, CAROL = "sip:alice@example.com", "sip:bob@example.com", "sip:carol@example.com"


def subscribe(aor: str = ALICE, event: str = "dialog", *, now: float = T0,
              expires_in: float = 600.0, **overrides) -> Subscription:
    args = dict(id=uuid4(), aor=aor, event_package=event, call_id=f"{uuid4().hex}@watcher",
                remote_tag="from-tag", local_tag="to-tag", watcher_uri=BOB,
                watcher_contact="<sip:bob@198.51.100.7:5070>", route_set=[],
                remote_cseq=1, transport="udp", host="203.0.113.5", port=5060,
                expires_at=now + expires_in, now=now, identity="bob", local_cseq=100,
                event_id="e1", owner="node-1")
    args.update(overrides)
    return Subscription.subscribe(**args)


def rows(view: CurrentStateView) -> list[SubscriptionRow]:
    return view.subscriptions(active_only=False)


@pytest.fixture
def sqlite_compositor(open_compositor, store_url):
    return open_compositor(store_url)


# ---- the table, event by event -----------------------------------------------------------------

def test_each_event_updates_its_row(sqlite_compositor):
    c = sqlite_compositor
    s = subscribe(now=T0)
    c.project(c.app.save(s))
    [row] = c.watchers(now=T0 + 1)
    assert row == SubscriptionRow(
        id=s.id.hex, aor=ALICE, event="dialog", event_id="e1", call_id=s.call_id,
        remote_tag="from-tag", local_tag="to-tag", watcher_uri=BOB,
        watcher_contact="<sip:bob@198.51.100.7:5070>", identity="bob", owner="node-1",
        transport="udp", host="203.0.113.5", port=5060, state="active", reason=None,
        expires_at=T0 + 600, subscribed_at=T0, updated_at=T0, terminated_at=None,
        notify_count=0, last_cseq=100, version=1)

    s.refresh(now=T0 + 100, expires_at=T0 + 1000, remote_cseq=2)
    c.project(c.app.save(s))
    [row] = c.watchers(now=T0 + 101)
    assert (row.expires_at, row.updated_at, row.version) == (T0 + 1000, T0 + 100, 2)

    s.notified(T0 + 110)
    s.notified(T0 + 120)
    c.project(c.app.save(s))
    [row] = c.watchers(now=T0 + 121)
    assert (row.notify_count, row.last_cseq, row.updated_at, row.version) == \
        (2, 102, T0 + 120, 4)

    assert s.terminate(T0 + 200, "deactivated")
    c.project(c.app.save(s))
    assert c.watchers(now=T0 + 201) == []
    [row] = c.watchers(include_ended=True)
    assert (row.state, row.reason, row.terminated_at, row.updated_at, row.version) == \
        ("terminated", "deactivated", T0 + 200, T0 + 200, 5)
    # the final NOTIFY after termination is counted too
    s.notified(T0 + 201)
    c.project(c.app.save(s))
    [row] = c.watchers(include_ended=True)
    assert (row.state, row.notify_count, row.last_cseq, row.version) == \
        ("terminated", 3, 103, 6)
    assert c.view.active_subscription_ids() == []


def test_an_event_older_than_the_row_changes_nothing():
    """The version guard: events offered out of order never move a row backwards."""
    s = subscribe(now=T0)
    s.refresh(now=T0 + 10, expires_at=T0 + 900, remote_cseq=2)  # v2
    s.notified(T0 + 20)  # v3
    s.terminate(T0 + 30, "rejected")  # v4
    subscribed, refreshed, notified, terminated = s.collect_events()
    view = CurrentStateView(None)
    try:
        assert view.apply([(1, subscribed), (2, terminated), (3, refreshed), (4, notified)])
        [row] = rows(view)
        assert (row.state, row.reason, row.expires_at, row.notify_count, row.last_cseq,
                row.updated_at, row.version) == \
            ("terminated", "rejected", T0 + 600, 0, 100, T0 + 30, 4)
        # and a repeated Subscribed does not resurrect it
        assert view.apply([(5, subscribed)])
        assert rows(view) == [row]
    finally:
        view.close()


def test_catch_up_applies_subscriptions_with_publications(sqlite_compositor, pidf):
    c = sqlite_compositor
    c.publish(ALICE, "presence", body=pidf(), content_type=PIDF, expires=3600, now=T0)
    s = subscribe(now=T0)
    c.app.save(s)  # not projected: a catch-up finds it in the notification log
    assert c.view.position() == 1 and c.watchers(now=T0) == []
    assert c.catch_up() == 1
    assert [r.id for r in c.watchers(now=T0)] == [s.id.hex]
    # a gap left by events saved elsewhere is filled by the next projection too
    s.notified(T0 + 1)
    c.app.save(s)
    c.publish(BOB, "presence", body=pidf(entity=BOB), content_type=PIDF, expires=3600, now=T0)
    assert c.view.position() == 4
    assert [r.notify_count for r in c.watchers(now=T0)] == [1]
    assert len(c.list(now=T0)) == 2
    assert c.verify() == (2, 2, [])


# ---- queries and filters -----------------------------------------------------------------------

@pytest.fixture
def several(sqlite_compositor):
    """alice/dialog (node-1, then node-2), alice/presence, carol/dialog lapsing at T0 + 50,
    and bob/dialog terminated; all subscribed at increasing times."""
    c = sqlite_compositor
    subs = {
        "a1": subscribe(ALICE, "dialog", now=T0),
        "a2": subscribe(ALICE, "dialog", now=T0 + 1, owner="node-2", identity=None,
                        transport="tcp", host="2001:db8::7", port=5080),
        "ap": subscribe(ALICE, "presence", now=T0 + 2, watcher_uri=CAROL),
        "c": subscribe(CAROL, "dialog", now=T0 + 3, expires_in=47),
        "b": subscribe(BOB, "dialog", now=T0 + 4),
    }
    subs["b"].terminate(T0 + 5, "noresource")
    c.project(c.app.save(*subs.values()))
    return c, {name: s.id.hex for name, s in subs.items()}


def test_watchers_filters(several):
    c, ids = several
    now = T0 + 10
    ordered = [ids["a1"], ids["a2"], ids["ap"], ids["c"]]  # by aor, event, subscribed_at
    assert [r.id for r in c.watchers(now=now)] == ordered
    assert [r.id for r in c.watchers("sip:alice@EXAMPLE.com:5060", now=now)] == ordered[:3]
    assert [r.id for r in c.watchers(ALICE, "Dialog;id=7", now=now)] == ordered[:2]
    assert [r.id for r in c.watchers(event="presence", now=now)] == [ids["ap"]]
    assert c.watchers(BOB, now=now) == []
    assert [r.id for r in c.watchers(BOB, include_ended=True, now=now)] == [ids["b"]]

    # carol's has lapsed at T0 + 50 but is not terminated yet: active rows leave it out
    # from then on, every row keeps it
    later = T0 + 60
    assert ids["c"] not in [r.id for r in c.watchers(now=later)]
    everything = c.watchers(include_ended=True, now=later)
    assert [r.id for r in everything] == [ids["a1"], ids["a2"], ids["ap"], ids["b"], ids["c"]]
    assert [r.state for r in everything] == ["active"] * 3 + ["terminated", "active"]


def test_view_queries_by_owner_and_for_the_notifier(several):
    c, ids = several
    view = c.view
    assert [r.id for r in view.subscriptions(owner="node-2")] == [ids["a2"]]
    assert [r.id for r in view.subscriptions(ALICE, "dialog", owner="node-1")] == [ids["a1"]]
    # active_only without `now` is "not terminated", whatever the expiry
    assert ids["c"] in [r.id for r in view.subscriptions(now=None)]
    assert ids["c"] not in [r.id for r in view.subscriptions(now=T0 + 50)]
    assert len(view.subscriptions(active_only=False)) == 5

    loaded = view.active_subscription_ids()
    assert sorted(i for i, *_ in loaded) == sorted([ids["a1"], ids["a2"], ids["ap"], ids["c"]])
    assert loaded[0] == (ids["c"], CAROL, "dialog", T0 + 50)  # lapsed: an expire is due
    assert view.active_subscription_ids(owner="node-2") == \
        [(ids["a2"], ALICE, "dialog", T0 + 601)]
    assert view.active_subscription_ids(owner="node-9") == []


# ---- rebuild, verify, reset, reopen ------------------------------------------------------------

def test_rebuild_and_reopen_give_the_same_rows(several, open_compositor, store_url, pidf):
    c, _ = several
    c.publish(ALICE, "presence", body=pidf(), content_type=PIDF, expires=3600, now=T0)
    before = rows(c.view)
    assert len(before) == 5
    assert c.rebuild_view() == 7
    assert rows(c.view) == before
    assert c.verify() == (1, 1, [])  # verify compares publications only
    c.close()

    again = open_compositor(store_url)
    assert rows(again.view) == before

    again.clear()
    assert rows(again.view) == [] and again.watchers(include_ended=True) == []


def test_a_view_made_before_the_table_is_rebuilt_on_open(several, open_compositor, store_url):
    """A view file whose projection passed Subscription events before it had the table
    forgets its projection when the table is created, and catches up on open."""
    c, _ = several
    before = rows(c.view)
    view_path = c.view.path
    c.close()
    with sqlite3.connect(view_path) as conn:
        conn.execute("DROP TABLE subscriptions")
        conn.execute("INSERT INTO tracking (name, position) VALUES ('blf', 3)")
    again = open_compositor(store_url)
    assert rows(again.view) == before
    assert again.view.position("blf") == 3  # change-feed consumers keep their positions


# ---- esc watchers ------------------------------------------------------------------------------

@pytest.fixture
def esc(tmp_path, subprocess_env, python):
    """`esc(*args, env=None)` -> CompletedProcess of `python -m esc ARGS` (in tmp_path)."""

    def run(*args: str, env: dict | None = None):
        return subprocess.run([python, "-m", "esc", *args], cwd=tmp_path,
                              env={**subprocess_env, **(env or {})},
                              capture_output=True, text=True, timeout=60)

    return run


@pytest.fixture
def watched(open_compositor, store_url):
    """With the real clock (the CLI reads it): two active subscriptions to alice (dialog
    over UDP, presence over TCP to an IPv6 address) and a terminated one to bob."""
    c = open_compositor(store_url)
    now = time.time()
    dialog = subscribe(ALICE, "dialog", now=now, expires_in=3600)
    presence = subscribe(ALICE, "presence", now=now, expires_in=1800, watcher_uri=CAROL,
                         identity=None, transport="tcp", host="2001:db8::7", port=5080)
    ended = subscribe(BOB, "dialog", now=now, expires_in=3600)
    ended.terminate(now + 0.001, "rejected")
    c.project(c.app.save(dialog, presence, ended))
    c.close()
    return {"url": store_url, "dialog": dialog.id.hex, "presence": presence.id.hex,
            "ended": ended.id.hex}


def test_esc_watchers_text(esc, watched):
    result = esc("watchers", "--store", watched["url"])
    assert result.returncode == 0, result.stderr
    dialog, presence = result.stdout.splitlines()
    fields = dialog.split("  ")
    assert fields[:5] == [ALICE, "dialog", BOB, "udp 203.0.113.5:5060", "active"]
    assert fields[5].startswith("expires in ") and fields[5].endswith(" s")
    assert 3500 < int(fields[5].split()[2]) <= 3600
    assert fields[6] == "user bob"
    assert presence.split("  ")[:5] == [ALICE, "presence", CAROL, "tcp [2001:db8::7]:5080",
                                        "active"]
    assert presence.endswith("user -")

    only_dialog = esc("watchers", "sip:alice@EXAMPLE.com", "--event", "dialog",
                      "--store", watched["url"])
    assert only_dialog.stdout.splitlines() == [dialog]

    assert esc("watchers", BOB, "--store", watched["url"]).stdout == ""
    with_ended = esc("watchers", BOB, "--all", "--store", watched["url"])
    [line] = with_ended.stdout.splitlines()
    assert line.startswith(f"{BOB}  dialog  {BOB}  udp 203.0.113.5:5060  terminated  ended ")
    assert "(rejected)" in line


def test_esc_watchers_json(esc, watched):
    result = esc("watchers", "--json", "--store", watched["url"])
    assert result.returncode == 0, result.stderr
    data = json.loads(result.stdout)
    assert [d["id"] for d in data] == [watched["dialog"], watched["presence"]]
    assert set(data[0]) == set(SubscriptionRow.__dataclass_fields__)
    assert (data[1]["transport"], data[1]["host"], data[1]["port"], data[1]["identity"]) == \
        ("tcp", "2001:db8::7", 5080, None)

    everything = json.loads(esc("watchers", "--all", "--json", "--store", watched["url"],
                                ).stdout)
    assert [d["id"] for d in everything] == [watched["dialog"], watched["presence"],
                                             watched["ended"]]
    assert (everything[2]["state"], everything[2]["reason"]) == ("terminated", "rejected")

    assert json.loads(esc("watchers", CAROL, "--json", "--store", watched["url"]).stdout) == []


@pytest.mark.parametrize("args", [
    ["watchers", "alice"],  # not a URI
    ["watchers", "sip:"],
    ["watchers", ALICE, "--event", ""],
    ["watchers", "--no-such-option"],
])
def test_esc_watchers_bad_arguments_are_one_line(esc, args, store_url):
    result = esc(*args, env={"ESC_STORE": store_url})
    assert result.returncode == 2
    lines = result.stderr.splitlines()
    assert len(lines) == 1 and "Traceback" not in result.stderr, result.stderr
    assert lines[0].startswith("esc")  # argparse names the program, the command the rest
