"""Entity-tags that name their publication.

A tag is the publication's aggregate id (32 hex digits) and a fresh random part, joined by
a dot. Any node can therefore load the aggregate the tag points at and compare the whole
tag with the one it holds (design decision 2): no read model is consulted, so a lagging
view can never turn a valid refresh into a 412. The random part is supplied by the caller
(the domain has no random source) and makes each tag unguessable and never reused.
"""

from __future__ import annotations

import re
from uuid import UUID

_TAG = re.compile(r"^([0-9a-f]{32})\.([0-9a-zA-Z_-]{8,64})$")


def compose_etag(publication_id: UUID, secret: str) -> str:
    return f"{publication_id.hex}.{secret}"


def publication_id_of(etag: str) -> UUID | None:
    """The aggregate id an entity-tag names, or None when it is not one of ours."""
    match = _TAG.match(etag.strip())
    if match is None:
        return None
    return UUID(hex=match.group(1))
