"""How events become bytes in the store: eventsourcing's JSON format, written faster.

`BytesAsBase64` is the one transcoding the store needs beyond eventsourcing's defaults.
`FastJSONTranscoder` writes and reads exactly the JSON that eventsourcing's
`JSONTranscoder` does (same `{"_type_": ..., "_data_": ...}` objects for datetimes, bytes,
UUIDs), with orjson doing the work where the two libraries agree: a flat dict of plain
values, which is what every Publication event is. Anything else (snapshots, which hold
UUIDs, that orjson would silently write as plain strings; non-finite floats, which it
writes as null; integers beyond 64 bits) goes through the standard library as before.
Encoding an event was about a tenth of the store process's time.
"""

from __future__ import annotations

import base64
import math
from datetime import datetime
from typing import Any

from eventsourcing.persistence import JSONTranscoder, Transcoding

try:
    import orjson
except ImportError:  # pragma: no cover - orjson is a dependency; stay correct without it
    orjson = None


class BytesAsBase64(Transcoding):
    """Bodies are bytes (a custom package may accept any content); JSON needs text."""

    type = bytes
    name = "b64"

    def encode(self, obj: bytes) -> str:
        return base64.b64encode(obj).decode("ascii")

    def decode(self, data: str) -> bytes:
        return base64.b64decode(data)


_INT64 = 2**63
# Values orjson writes exactly as the json module does (str, bool and None natively; the
# two transcoded types through `default`, as JSONTranscoder would).
_PLAIN = frozenset({str, bool, type(None)})
_TRANSCODED = frozenset({bytes, datetime})
_CHECKED = frozenset({dict, list, float})


class _Disagreement(Exception):
    """orjson's reading may differ from the json module's: use the latter."""


class FastJSONTranscoder(JSONTranscoder):
    def encode(self, obj: Any) -> bytes:
        if orjson is not None and type(obj) is dict and _orjson_agrees(obj):
            try:
                return orjson.dumps(obj, default=self._encode_obj,
                                    option=orjson.OPT_PASSTHROUGH_DATETIME)
            except (TypeError, ValueError):
                pass  # let the standard path raise its own error, or succeed
        return super().encode(obj)

    def decode(self, data: bytes) -> Any:
        if orjson is not None:
            try:
                return self._revive(orjson.loads(data))
            except (ValueError, _Disagreement):
                pass
        return super().decode(data)

    def _revive(self, value: Any) -> Any:
        """What json's object_hook would have made of orjson's plain result (bottom-up).
        orjson reads integers beyond 64 bits as floats: a float that large may have been
        one, so the standard decoder reads such a document instead."""
        kind = type(value)
        if kind is dict:
            for key, item in value.items():
                if type(item) in _CHECKED:
                    value[key] = self._revive(item)
            return self._decode_obj(value)
        if kind is list:
            return [self._revive(item) if type(item) in _CHECKED else item for item in value]
        if kind is float and not -_INT64 < value < _INT64:
            raise _Disagreement
        return value


def _orjson_agrees(state: dict[str, Any]) -> bool:
    for key, value in state.items():
        if type(key) is not str:
            return False
        kind = type(value)
        if kind in _PLAIN or kind in _TRANSCODED:
            continue
        if kind is float:
            if not math.isfinite(value):
                return False
            continue
        if kind is int and -_INT64 <= value < _INT64:
            continue
        return False
    return True
