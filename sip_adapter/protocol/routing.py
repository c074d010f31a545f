"""Where a response goes (RFC 3261 section 18.2.2, RFC 3581) - and where it never goes.

A response is sent only to the address the request came from: over a connection, on that
connection; over UDP, to the source IP, at the source port when the client asked for
`rport` and otherwise at the port its top Via names. A host, `maddr` or name taken from a
Via is never used, so hostile or torture messages cannot turn the server into a reflector.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Origin:
    """Where a request came from: the transport, the peer address, for connection
    transports the serial number of the connection to answer on, and the local address it
    arrived at (which UDP socket answers)."""

    transport: str  # "udp", "tcp", "tls"
    address: tuple[str, int]
    connection: int | None = None
    local: tuple[str, int] | None = None

    @property
    def reliable(self) -> bool:
        return self.transport != "udp"

    def describe(self) -> str:
        return describe_address(self.address)


def describe_address(address: tuple[str, int]) -> str:
    """"192.0.2.1:5060", "[2001:db8::1]:5060"."""
    host, port = address[0], address[1]
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def response_port(origin: Origin, via_port: int | None, wants_rport: bool) -> int:
    if origin.reliable or wants_rport:
        return origin.address[1]
    return via_port or 5060
