"""Commit events, then die before the projection has applied them.

    python crash_writer.py STORE_URL MODE

MODE "before-projection": the process exits (os._exit) right after the save commits,
before the view update starts. MODE "during-projection": it is SIGKILLed inside the view's
transaction, after the rows were written but before the tracking record and the commit.

Before the fatal batch it does a little ordinary work (all projected) and prints its tags as
one JSON line, so the test knows what the view must and must not contain afterwards.
"""

import json
import os
import signal
import sys

from domain import PublishRequest
from infrastructure import Compositor

NOW = 1_700_000_000.0
PIDF = b'<presence xmlns="urn:ietf:params:xml:ns:pidf" entity="sip:x@example.com"/>'
TYPE = "application/pidf+xml"


def main(url: str, mode: str) -> None:
    c = Compositor.open(url)
    alice = c.publish("sip:alice@example.com", "presence", body=PIDF, content_type=TYPE,
                      expires=3600, now=NOW).etag
    c.publish("sip:alice@example.com", "presence", if_match=alice, expires=0, now=NOW + 1)
    bob = c.publish("sip:bob@example.com", "presence", body=PIDF, content_type=TYPE,
                    expires=3600, now=NOW + 2).etag
    print(json.dumps({"alice": alice, "bob": bob, "position": c.view.position()}), flush=True)

    if mode == "before-projection":
        c.project = lambda recordings: os._exit(0)
    elif mode == "during-projection":
        def die(conn, name, position):
            os.kill(os.getpid(), signal.SIGKILL)
        c.view._track = die
    else:
        raise SystemExit(f"unknown mode {mode}")

    c.process_many([
        PublishRequest("sip:carol@example.com", "presence", PIDF, TYPE, 3600),
        PublishRequest("sip:bob@example.com", "presence", None, None, 1800, bob),
        PublishRequest("sip:dave@example.com", "presence", PIDF, TYPE, 3600),
    ], now=NOW + 3)
    raise SystemExit("the projection ran: the crash was not simulated")


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
