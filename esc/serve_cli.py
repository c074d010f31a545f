"""Commands that need the SIP adapter (`serve`, `publish`); registered by the CLI."""

from __future__ import annotations


def add_serve_commands(commands) -> None:
    """Filled in with `esc serve` and `esc publish`."""
