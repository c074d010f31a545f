"""A compositor in its own process, driven by JSON lines on stdin (one answer per line).

    python worker.py STORE_URL

Commands:
    {"op": "publish", "aor": A, "now": T, "expires": E}        -> {"etag": ...}
    {"op": "refresh", "aor": A, "etag": X, "now": T}            -> {"etag": ...} | {"status": 412}
    {"op": "find", "aor": A, "etag": X, "now": T}               -> {"found": bool}
    {"op": "bulk", "prefix": P, "n": N, "now": T}               -> {"tags": {aor: etag},
                                                                    "replaced": [[aor, old tag]]}
        (N initial publications, each then refreshed twice, as fast as possible)
    {"op": "expire_due", "now": T}                              -> {"expired": n}
    {"op": "quit"}
Any refusal is answered as {"status": code}, the status SIP would answer it with.
"""

import json
import sys

from domain import CompositorError
from infrastructure import Compositor
from sip_adapter.protocol.error_responses import response_for

PIDF = b'<presence xmlns="urn:ietf:params:xml:ns:pidf" entity="sip:x@example.com"/>'
TYPE = "application/pidf+xml"


def handle(c: Compositor, cmd: dict) -> dict:
    op = cmd["op"]
    if op == "publish":
        return {"etag": c.publish(cmd["aor"], "presence", body=PIDF, content_type=TYPE,
                                  expires=cmd.get("expires", 3600), now=cmd["now"]).etag}
    if op == "refresh":
        return {"etag": c.publish(cmd["aor"], "presence", if_match=cmd["etag"],
                                  expires=cmd.get("expires", 3600), now=cmd["now"]).etag}
    if op == "find":
        return {"found": c.find(cmd["aor"], cmd["etag"], "presence", now=cmd["now"]) is not None}
    if op == "bulk":
        tags, replaced = {}, []
        for i in range(cmd["n"]):
            aor = f"sip:{cmd['prefix']}{i}@example.com"
            tag = c.publish(aor, "presence", body=PIDF, content_type=TYPE, expires=3600,
                            now=cmd["now"]).etag
            for _ in range(2):
                replaced.append([aor, tag])
                tag = c.publish(aor, "presence", if_match=tag, expires=3600,
                                now=cmd["now"] + 1).etag
            tags[aor] = tag
        return {"tags": tags, "replaced": replaced}
    if op == "expire_due":
        return {"expired": c.expire_due(now=cmd["now"])}
    raise ValueError(f"unknown op {op}")


def main(url: str) -> None:
    c = Compositor.open(url)
    print(json.dumps({"ready": True}), flush=True)
    try:
        for line in sys.stdin:
            cmd = json.loads(line)
            if cmd["op"] == "quit":
                break
            try:
                answer = handle(c, cmd)
            except CompositorError as refusal:
                answer = {"status": response_for(refusal)[0]}
            print(json.dumps(answer), flush=True)
    finally:
        c.close()


if __name__ == "__main__":
    main(sys.argv[1])
