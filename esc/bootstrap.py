"""The composition root: the one place that builds infrastructure from settings."""

from __future__ import annotations

from typing import Any

from infrastructure import Compositor


def open_compositor(store: str, **options: Any) -> Compositor:
    return Compositor.open(store, **options)
