"""Tracked consumers of the change feed: what downstream notifiers read.

A consumer has a name; its position (the last notification it has processed) is kept in
the view's tracking table, so it resumes where it stopped after a restart. A consumer that
needs exactly-once effects should commit its position in the same transaction as its own
effects (read `position`, process, `commit(position)`); this class gives at-least-once
delivery when used as poll -> process -> commit.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from .records import EventRecord

if TYPE_CHECKING:
    from .compositor import Compositor


class FeedConsumer:
    def __init__(self, compositor: "Compositor", name: str) -> None:
        if not name or name == "view":
            raise ValueError("a consumer needs a name other than 'view'")
        self.compositor = compositor
        self.key = f"feed:{name}"

    @property
    def position(self) -> int:
        return self.compositor.view.position(self.key)

    def poll(self, limit: int = 500) -> list[EventRecord]:
        """The next events after the committed position (not yet committed)."""
        return list(self.compositor.feed(after=self.position, limit=limit))

    def commit(self, position: int) -> None:
        self.compositor.view.set_position(self.key, position)
