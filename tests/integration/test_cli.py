"""The `esc` command, run as a real subprocess against a store the test fills through the API.

The CLI reads the real clock, so the publications here are made with it and live an hour."""

from __future__ import annotations

import json
import sqlite3
import subprocess
import sys
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest

from domain import Audit

PIDF = "application/pidf+xml"
ALICE, BOB = "sip:alice@example.com", "sip:bob@example.com"


@pytest.fixture
def esc(tmp_path, subprocess_env, python):
    """`esc(*args, env=None)` -> CompletedProcess of `python -m esc ARGS` (in tmp_path)."""

    def run(*args: str, env: dict | None = None, entry_point: bool = False):
        command = [str(Path(python).parent / "esc")] if entry_point else [python, "-m", "esc"]
        return subprocess.run([*command, *args], cwd=tmp_path, env={**subprocess_env, **(env or {})},
                              capture_output=True, text=True, timeout=60)

    return run


@pytest.fixture
def filled(open_compositor, store_url, pidf):
    """A store with two live publications, one removed, and their tags; closed for the CLI."""
    c = open_compositor(store_url)
    audit = Audit(source="203.0.113.5:5060", transport="udp", call_id="abc@ua", cseq="1 PUBLISH")
    alice = c.publish(ALICE, "presence", body=pidf(), content_type=PIDF, expires=3600,
                      audit=audit).etag
    alice = c.publish(ALICE, "presence", if_match=alice, expires=3600).etag
    alice = c.publish(ALICE, "presence", if_match=alice, body=pidf("closed"), content_type=PIDF,
                      expires=3600).etag
    bob = c.publish(BOB, "presence", body=pidf(entity=BOB), content_type=PIDF, expires=3600).etag
    gone = c.publish(BOB, "presence", body=pidf(entity=BOB), content_type=PIDF).etag
    c.publish(BOB, "presence", if_match=gone, expires=0)
    c.close()
    return {"url": store_url, "alice": alice, "bob": bob, "gone": gone}


def one_line_error(result) -> str:
    """The failure contract: a non-zero exit, one line on stderr, no traceback."""
    assert result.returncode != 0
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr
    assert "Traceback" not in result.stderr
    return lines[0]


def test_find(esc, filled, pidf):
    found = esc("find", ALICE, filled["alice"], "--store", filled["url"])
    assert found.returncode == 0, found.stderr
    assert filled["alice"] in found.stdout and "application/pidf+xml" in found.stdout

    as_json = esc("find", "sip:alice@EXAMPLE.com:5060", filled["alice"], "--event", "presence",
                  "--json", "--store", filled["url"])
    assert as_json.returncode == 0
    data = json.loads(as_json.stdout)
    assert (data["aor"], data["event"], data["etag"], data["version"]) == \
        (ALICE, "presence", filled["alice"], 3)
    assert data["body"] == pidf("closed").decode()

    for etag in (filled["gone"], "nonexistent.0"):
        absent = esc("find", BOB, etag, "--store", filled["url"])
        assert absent.returncode == 1
        assert absent.stdout == "" and "not found" in absent.stderr


def test_list(esc, filled):
    listed = esc("list", "--store", filled["url"])
    assert listed.returncode == 0
    lines = listed.stdout.splitlines()
    assert len(lines) == 2
    assert filled["alice"] in listed.stdout and filled["bob"] in listed.stdout

    as_json = esc("list", BOB, "--json", "--store", filled["url"])
    assert [row["etag"] for row in json.loads(as_json.stdout)] == [filled["bob"]]


def test_history_one_line_per_event(esc, filled):
    text = esc("history", ALICE, "--store", filled["url"])
    assert text.returncode == 0
    lines = text.stdout.splitlines()
    assert len(lines) == 3
    assert [line.split()[1] for line in lines] == ["Published", "Refreshed", "Modified"]
    assert "203.0.113.5:5060" in lines[0] and "abc@ua" in lines[0]

    as_json = esc("history", BOB, "--json", "--store", filled["url"])
    records = [json.loads(line) for line in as_json.stdout.splitlines()]
    assert [r["type"] for r in records] == ["Published", "Published", "Removed"]
    assert records[2]["etag_before"] == filled["gone"]


def test_state_now_and_at_a_past_moment(esc, filled, open_compositor, store_url, pidf, tmp_path):
    now = esc("state", ALICE, "--event", "presence", "--store", filled["url"])
    assert now.returncode == 0, now.stderr
    assert now.stdout.startswith("<?xml") and "<basic>closed</basic>" in now.stdout
    as_json = json.loads(esc("state", ALICE, "--event", "presence", "--json",
                             "--store", filled["url"]).stdout)
    assert as_json["publications"] == [filled["alice"]]
    assert (as_json["aor"], as_json["event"], as_json["content_type"]) == \
        (ALICE, "presence", PIDF)
    assert "<basic>closed</basic>" in as_json["body"]

    # A store with fixed times: published at T0 + 100, removed at T0 + 300.
    url = f"sqlite:///{tmp_path / 'timed.sqlite3'}"
    c = open_compositor(url)
    t0 = 1_700_000_000
    tag = c.publish(ALICE, "presence", body=pidf("away"), content_type=PIDF, expires=3600,
                    now=t0 + 100).etag
    c.publish(ALICE, "presence", if_match=tag, expires=0, now=t0 + 300)
    c.close()
    iso_200 = datetime.fromtimestamp(t0 + 200, timezone.utc)
    for at in (str(t0 + 200), iso_200.isoformat(), iso_200.strftime("%Y-%m-%dT%H:%M:%S"),
               iso_200.astimezone(timezone(timedelta(hours=2))).isoformat()):
        then = json.loads(esc("state", ALICE, "--event", "presence", "--at", at, "--json",
                              "--store", url).stdout)
        assert then["at"] == t0 + 200 and then["publications"] == [tag], at
        assert "<basic>away</basic>" in then["body"]
    later = esc("state", ALICE, "--event", "presence", "--at", str(t0 + 400), "--store", url)
    assert later.returncode == 0 and "<tuple" not in later.stdout and "entity=" in later.stdout
    summary = esc("state", ALICE, "--event", "message-summary", "--store", url)
    assert summary.returncode == 0 and summary.stdout == "" and "nothing" in summary.stderr


def test_follow_after_a_position_as_json_lines(esc, filled):
    everything = [json.loads(line) for line in
                  esc("follow", "--store", filled["url"]).stdout.splitlines()]
    assert [r["position"] for r in everything] == [1, 2, 3, 4, 5, 6]
    after = esc("follow", "--after", "4", "--store", filled["url"])
    assert after.returncode == 0
    assert [json.loads(line) for line in after.stdout.splitlines()] == everything[4:]
    # --json is accepted like every other command's, with the same output
    as_json = esc("follow", "--after", "4", "--json", "--store", filled["url"])
    assert as_json.returncode == 0 and as_json.stdout == after.stdout

    # a named consumer resumes where it stopped
    env = {"ESC_STORE": filled["url"]}
    first = esc("follow", "--consumer", "blf", env=env)
    assert len(first.stdout.splitlines()) == 6
    again = esc("follow", "--consumer", "blf", env=env)
    assert again.returncode == 0 and again.stdout == ""


def test_verify(esc, filled):
    clean = esc("verify", "--store", filled["url"])
    assert clean.returncode == 0, clean.stderr
    assert "differences: 0" in clean.stdout
    as_json = esc("verify", "--json", "--store", filled["url"])
    assert json.loads(as_json.stdout) == {"live": 2, "replayed": 2, "differences": []}

    view = filled["url"].removeprefix("sqlite:///") + "-view"
    with sqlite3.connect(view) as db:
        db.execute("UPDATE publications SET etag = 'tampered'")
    tampered = esc("verify", "--store", filled["url"])
    assert tampered.returncode not in (0, 1)
    assert "differences: 2" in tampered.stdout


def test_clear(esc, filled):
    cleared = esc("clear", "--store", filled["url"])
    assert cleared.returncode == 0, cleared.stderr
    assert "2 live publications" in cleared.stdout
    assert esc("list", "--json", "--store", filled["url"]).stdout.strip() == "[]"
    assert esc("follow", "--store", filled["url"]).stdout == ""
    assert esc("find", ALICE, filled["alice"], "--store", filled["url"]).returncode == 1


@pytest.mark.parametrize("store", [
    "foo://nowhere",
    "sqlite://host/x.db",
    "sqlite:///",
    "sqlite:////nonexistent/dir/x.db",
])
def test_a_bad_or_unreachable_store_is_one_line(esc, store):
    result = esc("list", "--store", store)
    line = one_line_error(result)
    assert line.startswith("esc list:")
    assert result.stdout == ""


@pytest.mark.parametrize("args", [
    [],
    ["frobnicate"],
    ["find", ALICE],
    ["follow", "--after", "x"],
    ["follow", "--after", "-1"],
    ["list", "--no-such-option"],
    ["history", "alice"],  # not a URI
    ["list", "sip:"],
    ["state", ALICE],  # --event is required
    ["state", ALICE, "--event", "presence", "--at", "yesterday"],
    ["state", ALICE, "--event", "presence", "--at", "nan"],
])
def test_bad_arguments_are_one_line_and_a_usage_error(esc, args, store_url):
    result = esc(*args, env={"ESC_STORE": store_url})
    one_line_error(result)
    assert result.returncode == 2


def test_the_installed_entry_point(esc, filled):
    if not (Path(sys.executable).parent / "esc").exists():
        pytest.skip("no `esc` script beside this interpreter")
    result = esc("list", "--json", "--store", filled["url"], entry_point=True)
    assert result.returncode == 0, result.stderr
    assert len(json.loads(result.stdout)) == 2
