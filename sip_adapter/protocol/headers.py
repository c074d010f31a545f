"""SIP header fields: names (canonical spellings, compact forms, which are lists), list
splitting, and `Headers`, the immutable ordered index of a message's header fields.

Text encoding: names and values are `str`, decoded from UTF-8 with
errors="surrogateescape" (see messages.py).
"""

from __future__ import annotations

from typing import Iterable, Iterator, Mapping

from . import abnf

__all__ = ["Headers", "canonical_name", "split_list", "count_elements", "LIST_HEADERS"]

# --- Header names -----------------------------------------------------------------------------

_KNOWN_NAMES = (
    "Accept", "Accept-Contact", "Accept-Encoding", "Accept-Language", "Alert-Info", "Allow",
    "Allow-Events", "Authentication-Info", "Authorization", "Call-ID", "Call-Info", "Contact",
    "Content-Disposition", "Content-Encoding", "Content-Language", "Content-Length",
    "Content-Transfer-Encoding", "Content-Type", "CSeq", "Date", "Error-Info", "Event",
    "Expires", "From", "History-Info", "Identity", "Identity-Info", "In-Reply-To",
    "Max-Forwards", "MIME-Version", "Min-Expires", "Min-SE", "Organization",
    "P-Asserted-Identity", "P-Preferred-Identity", "Path", "Priority", "Privacy",
    "Proxy-Authenticate", "Proxy-Authorization", "Proxy-Require", "RAck", "Reason",
    "Record-Route", "Refer-To", "Referred-By", "Reject-Contact", "Reply-To",
    "Request-Disposition", "Require", "Retry-After", "Route", "RSeq", "Security-Client",
    "Security-Server", "Security-Verify", "Server", "Service-Route", "Session-Expires",
    "SIP-ETag", "SIP-If-Match", "Subject", "Subscription-State", "Supported", "Timestamp",
    "To", "Unsupported", "User-Agent", "Via", "Warning", "WWW-Authenticate",
)

# RFC 3261 7.3.3 and later RFCs' compact forms.
_COMPACT = {
    "i": "Call-ID", "m": "Contact", "e": "Content-Encoding", "l": "Content-Length",
    "c": "Content-Type", "f": "From", "s": "Subject", "k": "Supported", "t": "To", "v": "Via",
    "o": "Event", "u": "Allow-Events", "r": "Refer-To", "b": "Referred-By",
    "x": "Session-Expires", "y": "Identity", "n": "Identity-Info", "a": "Accept-Contact",
    "j": "Reject-Contact", "d": "Request-Disposition",
}

# lower-cased spelling (full or compact) -> (canonical name, index key)
_NAMES: dict[str, tuple[str, str]] = {n.lower(): (n, n.lower()) for n in _KNOWN_NAMES}
_NAMES.update({k: (v, v.lower()) for k, v in _COMPACT.items()})

# Headers whose grammar is a comma-separated list (RFC 3261 7.3.1): get_all() splits them.
# Authorization-style headers, Date, SIP-If-Match and the name-addr singletons are not lists.
LIST_HEADERS = frozenset(
    n.lower()
    for n in (
        "Accept", "Accept-Contact", "Accept-Encoding", "Accept-Language", "Alert-Info",
        "Allow", "Allow-Events", "Call-Info", "Contact", "Content-Encoding",
        "Content-Language", "Error-Info", "History-Info", "In-Reply-To",
        "P-Asserted-Identity", "P-Preferred-Identity", "Path", "Proxy-Require", "Reason",
        "Record-Route", "Reject-Contact", "Request-Disposition", "Require", "Route",
        "Security-Client", "Security-Server", "Security-Verify", "Service-Route",
        "Supported", "Unsupported", "Via", "Warning",
    )
)


def canonical_name(name: str) -> str:
    """The canonical spelling of a header name: compact forms expanded, known names in their
    RFC capitalisation, unknown names unchanged."""
    known = _NAMES.get(name.lower())
    return known[0] if known is not None else name


_KEYS: dict[str, str] = {}


def _key(name: str) -> str:
    # Called for every header lookup: memoise the spellings seen (bounded, so hostile
    # traffic with random header names cannot grow it without limit).
    key = _KEYS.get(name)
    if key is None:
        lowered = name.lower()
        known = _NAMES.get(lowered)
        key = known[1] if known is not None else lowered
        if len(_KEYS) < 4096:
            _KEYS[name] = key
    return key


_LIST_FINDALL = abnf.LIST_ELEMENT_RE.findall
_QUOTED_OR_ANGLED_SUB = abnf.QUOTED_OR_ANGLED_RE.sub


def split_list(value: str) -> list[str]:
    """Split a header value at the commas that separate list elements: not inside a
    quoted-string (with its backslash escapes) nor inside <...>. Elements are stripped; empty
    elements are kept (callers decide whether that is an error). Linear, with no Python loop
    per character: plain str.split when there is nothing to skip, else one findall."""
    if "," not in value:
        return [value.strip(" \t")]
    if '"' not in value and "<" not in value:
        return [element.strip(" \t") for element in value.split(",")]
    found = _LIST_FINDALL(value)
    # findall ends with an empty match at the end of the value, which is an element only
    # when the value ends with a separating comma (then the match before it has sep ",").
    if len(found) > 1 and not found[-2][1]:
        del found[-1]
    return [element.strip(" \t") for element, _ in found]


def count_elements(value: str) -> int:
    """len(split_list(value)), without building the elements (str.count, in C)."""
    if '"' in value or "<" in value:
        value = _QUOTED_OR_ANGLED_SUB("", value)
    return value.count(",") + 1


def _check_text(name: str, value: str) -> None:
    if "\r" in value or "\n" in value or "\r" in name or "\n" in name or ":" in name:
        raise ValueError("header name or value contains CR, LF or (in the name) ':'")


class Headers:
    """Ordered header fields, immutable once built. Names are case-insensitive and compact forms are aliases
    ("i" and "call-id" both mean Call-ID); stored names are canonical.

    Iteration yields one (name, value) pair per header line, in order. `get_all` splits the
    values of list headers (LIST_HEADERS) at their commas; `lines` does not.
    """

    __slots__ = ("_fields", "_index")

    def __init__(self, fields: Iterable[tuple[str, str]] = ()) -> None:
        checked = []
        for name, value in fields:
            _check_text(name, value)
            checked.append((canonical_name(name), value))
        self._fields: tuple[tuple[str, str], ...] = tuple(checked)
        self._index: dict[str, list[str]] | None = None

    @classmethod
    def _trusted(cls, fields: list[tuple[str, str]], index: dict[str, list[str]]) -> Headers:
        # The parser's fast path: names already canonical, values already checked.
        self = cls.__new__(cls)
        self._fields = tuple(fields)
        self._index = index
        return self

    def _idx(self) -> dict[str, list[str]]:
        index = self._index
        if index is None:
            index = {}
            for name, value in self._fields:
                key = _key(name)
                bucket = index.get(key)
                if bucket is None:
                    index[key] = [value]
                else:
                    bucket.append(value)
            self._index = index
        return index

    # -- reading --

    def get(self, name: str, default: str | None = None) -> str | None:
        """The first value: for a list header the first list element, otherwise the first
        line's value. `default` when absent."""
        key = _key(name)
        values = self._idx().get(key)
        if not values:
            return default
        if key in LIST_HEADERS:
            for value in values:
                for element in split_list(value):
                    if element:
                        return element
            return default
        return values[0]

    def get_all(self, name: str) -> list[str]:
        """Every value in order; list headers split at their commas, empty elements dropped."""
        key = _key(name)
        values = self._idx().get(key)
        if not values:
            return []
        if key in LIST_HEADERS:
            return [e for value in values for e in split_list(value) if e]
        return list(values)

    def by_key(self) -> Mapping[str, list[str]]:
        """Every header line's value by lower-cased canonical name ("call-id", "event"), in
        order, unsplit: the index the lookups use, for code that reads several headers of
        every message. A view to read, not to change."""
        return self._idx()

    def lines(self, name: str) -> list[str]:
        """The value of each header line with this name, unsplit."""
        return list(self._idx().get(_key(name), ()))

    def count_lines(self, name: str) -> int:
        """How many header lines carry this name (e.g. to detect several SIP-If-Match)."""
        return len(self._idx().get(_key(name), ()))

    def __contains__(self, name: object) -> bool:
        return isinstance(name, str) and _key(name) in self._idx()

    def __iter__(self) -> Iterator[tuple[str, str]]:
        return iter(self._fields)

    def __len__(self) -> int:
        return len(self._fields)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Headers):
            return NotImplemented
        if len(self._fields) != len(other._fields):
            return False
        return all(
            a[1] == b[1] and _key(a[0]) == _key(b[0])
            for a, b in zip(self._fields, other._fields)
        )

    def __repr__(self) -> str:
        return f"Headers({self._fields!r})"
