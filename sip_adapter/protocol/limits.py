"""Bounds on what the SIP parser accepts (exceeding one is a ParseError, errors.py)."""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["Limits", "DEFAULT_LIMITS"]


@dataclass(frozen=True)
class Limits:
    """Size bounds. Exceeding one is answered with 413 (414 for an overlong Request-URI).

    max_message_size: start line + header section + body, in bytes.
    max_headers: header fields, after unfolding continuation lines.
    max_header_length: one unfolded header field (name, colon and value), in characters;
        also the longest Request-URI accepted (longer: 414).
    max_body_size: the body (Content-Length), in bytes.
    max_list_elements: elements of one list header field (Via, Contact, Route, Require,
        Supported, ... RFC 3261 7.3.1), counted over all its lines together. 128 leaves
        room for a request that has crossed 70 proxies (the usual Max-Forwards) and for any
        Allow/Supported/Route set seen in real traffic (tens at most); without a bound an
        8 KB line of "x," holds 4,000 elements and a 64 KB message 30,000, each of which
        costs Python work wherever the list is read.
    max_params: parameters of one via-parm, one name-addr (its header parameters) and one
        URI (its uri-parameters, and separately its headers). 64 is several times what a
        Contact with every RFC 3840 feature tag in use carries; without a bound a single
        8 KB header field holds 4,000.

    The last two bound the parser's CPU time per message (see tests/unit/test_parse_cost.py)
    and are answered with 413 too ("too many" of something); a request is still answerable
    (ParseError.partial) when its Via header field is within them.
    """

    max_message_size: int = 65535
    max_headers: int = 100
    max_header_length: int = 8192
    max_body_size: int = 65535
    max_list_elements: int = 128
    max_params: int = 64


DEFAULT_LIMITS = Limits()
