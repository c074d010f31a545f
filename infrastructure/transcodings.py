"""JSON transcodings the event store needs beyond eventsourcing's defaults."""

from __future__ import annotations

import base64

from eventsourcing.persistence import Transcoding


class BytesAsBase64(Transcoding):
    """Bodies are bytes (a custom package may accept any content); JSON needs text."""

    type = bytes
    name = "b64"

    def encode(self, obj: bytes) -> str:
        return base64.b64encode(obj).decode("ascii")

    def decode(self, data: str) -> bytes:
        return base64.b64decode(data)
