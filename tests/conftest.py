"""Shared fixtures. Keep this small: helpers used by one file belong in that file.

Sections: bodies, clocks, compositors, subprocesses.
"""

from __future__ import annotations

import os
import sys
import threading
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]

# A fixed, obviously-not-now instant: every domain and compositor test passes `now=`
# explicitly, so nothing depends on the machine's clock.
T0 = 1_700_000_000.0


# ---- bodies ---------------------------------------------------------------------------------

def make_pidf(status: str = "open", tuple_id: str = "t1",
              entity: str = "sip:alice@example.com") -> bytes:
    return (f'<?xml version="1.0" encoding="UTF-8"?>'
            f'<presence xmlns="urn:ietf:params:xml:ns:pidf" entity="{entity}">'
            f'<tuple id="{tuple_id}"><status><basic>{status}</basic></status></tuple>'
            f'</presence>').encode()


@pytest.fixture
def pidf():
    """`pidf(status="open", tuple_id="t1")` -> a well-formed PIDF document (bytes)."""
    return make_pidf


# ---- clocks ---------------------------------------------------------------------------------

class FakeClock:
    """A clock the test advances by hand; thread-safe enough for the expiry thread."""

    def __init__(self, start: float = T0) -> None:
        self._now = start
        self._lock = threading.Lock()

    def __call__(self) -> float:
        with self._lock:
            return self._now

    def advance(self, seconds: float) -> float:
        with self._lock:
            self._now += seconds
            return self._now

    def set(self, when: float) -> None:
        with self._lock:
            self._now = when


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


# ---- compositors ----------------------------------------------------------------------------

@pytest.fixture
def store_url(tmp_path) -> str:
    """A fresh SQLite store in the test's own directory."""
    return f"sqlite:///{tmp_path / 'esc.sqlite3'}"


@pytest.fixture
def open_compositor():
    """`open_compositor(url="memory://", cls=Compositor, **options)`; every compositor it
    opens is closed at teardown."""
    from infrastructure import Compositor

    opened = []

    def _open(url: str = "memory://", cls=Compositor, **options):
        compositor = cls.open(url, **options)
        opened.append(compositor)
        return compositor

    yield _open
    for compositor in reversed(opened):
        try:
            compositor.close()
        except Exception:
            pass


@pytest.fixture
def compositor(open_compositor):
    """An in-memory compositor with the built-in packages and the default policy."""
    return open_compositor("memory://")


# ---- subprocesses ---------------------------------------------------------------------------

@pytest.fixture
def subprocess_env() -> dict[str, str]:
    """Environment for child processes: this checkout first on the path, no stray store."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("ESC_", "PERSISTENCE_"))}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
    env["PYTHONUNBUFFERED"] = "1"
    return env


@pytest.fixture
def python() -> str:
    return sys.executable
