"""`--log-format json`: every line either process writes is one JSON object, and every
request answered gets a line with its method, resource, Event, status, duration, source,
transport, Call-ID and identity; bodies only with --log-bodies."""

from __future__ import annotations

import json

import pytest

from .conftest import assert_sipp_ok, run_sipp

pytestmark = pytest.mark.e2e


def lines_of(server) -> list[dict]:
    text = (server.workdir / "server.log").read_text()
    return [json.loads(line) for line in text.splitlines() if line.strip()]


@pytest.mark.parametrize("bodies", [False, True])
def test_every_line_is_json_and_every_request_has_one(server_factory, bodies):
    extra = ("--log-format", "json", "--min-expires", "1") + (("--log-bodies",) if bodies else ())
    server = server_factory(*extra)
    result = run_sipp(server, "publish_cycle.xml", calls=2, rate=10)
    assert_sipp_ok(result)
    assert server.stop() == 0
    lines = lines_of(server)  # json.loads fails on any line that is not JSON
    assert all({"time", "level", "logger", "message"} <= line.keys() for line in lines)
    assert any(line["message"].startswith("store ") for line in lines)
    requests = [line for line in lines if line["logger"] == "esc.requests"]
    # Per call: initial 200, refresh 200, stale tag 412, modify 200, stale tag 412,
    # remove 200, and the removed tag 412.
    statuses = sorted(line["status"] for line in requests)
    assert statuses == sorted([200, 200, 412, 200, 412, 200, 412] * 2)
    for line in requests:
        assert line["method"] == "PUBLISH" and line["event"] == "presence"
        assert line["resource"].startswith("sip:user") and line["transport"] == "udp"
        assert line["source"].startswith("127.0.0.1:") and line["call_id"]
        assert line["duration_ms"] >= 0 and line["identity"] is None
        assert line["time"].endswith("Z")
    with_body = [line for line in requests if "body" in line]
    if bodies:
        assert with_body and all("<presence" in line["body"] for line in with_body)
    else:
        assert with_body == []
        assert "<presence" not in (server.workdir / "server.log").read_text()


def test_a_bad_log_format_is_one_line(server_factory, tmp_path):
    import subprocess
    import sys

    from .conftest import ROOT

    result = subprocess.run([sys.executable, "-m", "esc", "serve", "--log-format", "xml",
                             "--store", f"sqlite:///{tmp_path}/x.sqlite3"], cwd=ROOT,
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == ["esc serve: --log-format must be text or json"]
