"""Readiness for systemd (`Type=notify`): the sd_notify protocol, by hand.

The protocol is one datagram of `KEY=VALUE` lines to the Unix socket named by
$NOTIFY_SOCKET (a leading `@` names an abstract socket). It is small enough that a
dependency (python-systemd needs libsystemd's headers to build) is not worth it. Without
$NOTIFY_SOCKET, as outside systemd, nothing is sent.
"""

from __future__ import annotations

import os
import socket


def notify(state: str, environ: dict[str, str] | None = None) -> bool:
    """Send `state` (e.g. "READY=1") to the service manager; True when it was sent."""
    address = (environ if environ is not None else os.environ).get("NOTIFY_SOCKET")
    if not address:
        return False
    if address.startswith("@"):
        address = "\0" + address[1:]
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
            sock.connect(address)
            sock.sendall(state.encode())
    except OSError:
        return False
    return True
