"""Where the project's shared material (../shared: RFC 4475 torture messages, peers) is.

CI puts a copy of shared/ beside the clone; sessions have it at /work/shared. A missing
copy is an error (the conformance tests must not pass by testing nothing)."""

from __future__ import annotations

import os
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def shared_dir() -> Path:
    candidates = [os.environ.get("ESC_SHARED_DIR"), ROOT.parent / "shared", "/work/shared"]
    for candidate in candidates:
        if candidate and (Path(candidate) / "conformance" / "rfc4475" / "manifest.json").exists():
            return Path(candidate)
    raise RuntimeError("cannot find the shared material (conformance/rfc4475): put shared/ "
                       "beside the repository or set ESC_SHARED_DIR")


RFC4475 = shared_dir() / "conformance" / "rfc4475"
