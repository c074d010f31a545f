"""Where the RFC 4475 torture messages the conformance tests read are.

By default the copy kept in this repository, `tests/data/rfc4475` (49 `.dat` files, their
`manifest.json` and a `SHA256SUMS` list). `ESC_RFC4475_DIR` names another directory of the same
shape, e.g. to run the suite against a freshly extracted set. A directory without a manifest is
an error: the conformance tests must not pass by testing nothing.
"""

from __future__ import annotations

import os
from pathlib import Path

ENV_VAR = "ESC_RFC4475_DIR"
DEFAULT_DIR = Path(__file__).resolve().parent / "data" / "rfc4475"


def rfc4475_dir() -> Path:
    override = os.environ.get(ENV_VAR)
    directory = Path(override).expanduser().resolve() if override else DEFAULT_DIR
    if not (directory / "manifest.json").is_file():
        source = f"{ENV_VAR}={override}" if override else "the repository's copy"
        raise RuntimeError(f"no RFC 4475 manifest.json in {directory} ({source})")
    return directory


RFC4475 = rfc4475_dir()
