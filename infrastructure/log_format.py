"""How `esc serve` logs: text lines (the default) or one JSON object per line.

Both processes of the server (the SIP process and the store process) log the same way; the
store process learns the format from `ESC_LOG_FORMAT` in its environment, which the SIP
process sets before starting it (the same variable also sets it from outside, like every
`ESC_<NAME>` setting).

JSON lines carry `time` (ISO 8601, UTC), `level`, `logger` and `message`, plus whatever
the call site passes as `extra` (the request log's fields, for instance). They are written
with python-json-logger's orjson formatter: about 11 µs a line, most of it the logging
module's own work.
"""

from __future__ import annotations

import logging
import os
import sys
import time
from typing import IO

FORMATS = ("text", "json")
ENVIRONMENT = "ESC_LOG_FORMAT"


class _UtcIsoFormatter(logging.Formatter):
    converter = time.gmtime
    default_time_format = "%Y-%m-%dT%H:%M:%S"
    default_msec_format = "%s.%03dZ"


def json_formatter() -> logging.Formatter:
    from pythonjsonlogger.orjson import OrjsonFormatter

    class _Json(OrjsonFormatter):
        converter = time.gmtime
        default_time_format = "%Y-%m-%dT%H:%M:%S"
        default_msec_format = "%s.%03dZ"

    return _Json("{asctime}{levelname}{name}{message}", style="{",
                 rename_fields={"asctime": "time", "levelname": "level", "name": "logger"})


def configure(level: str | int, fmt: str = "text", *, process: str = "",
              stream: IO[str] | None = None) -> None:
    """Set up the root logger once for this process: `fmt` "text" or "json"; `process`
    names the process in text lines ("store" for the store process)."""
    if fmt not in FORMATS:
        raise ValueError(f"unknown log format {fmt!r}: text or json")
    handler = logging.StreamHandler(stream or sys.stderr)
    if fmt == "json":
        handler.setFormatter(json_formatter())
    else:
        suffix = f"[{process}]" if process else ""
        handler.setFormatter(_UtcIsoFormatter(
            f"%(asctime)s %(levelname)s %(name)s{suffix}: %(message)s"))
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level if isinstance(level, int) else level.upper())


def from_environment() -> str:
    """The format the parent chose (for the store process)."""
    value = os.environ.get(ENVIRONMENT, "text").strip().lower()
    return value if value in FORMATS else "text"
