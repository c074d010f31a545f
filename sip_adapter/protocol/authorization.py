"""Who may publish for, and who may watch (SUBSCRIBE to), which resource: the rules applied
after Digest authentication.

Publishing. For an authenticated `username` in `realm` publishing for the resource `aor` (the
Request-URI's address of record):

1. Own address of record: allowed when `aor` is a sip: or sips: URI whose user part, with
   %XX escapes decoded, equals `username` exactly (case-sensitive) and whose host equals
   `realm` (case-insensitive). So with realm "example.com", alice may publish for
   sip:alice@example.com and sips:alice@example.com, but not for sip:Alice@example.com,
   sip:alice@other.example or tel:+15551234.
2. Otherwise allowed only when the `[users]` table lists the AOR for that user:
   - an exact entry ("sip:bob@example.com") matches that AOR. Entries are normalised like
     AORs (host lower-cased, escapes normalised; port, parameters and headers dropped), and
     sip: and sips: entries are interchangeable. Other schemes ("pres:", "tel:") match only
     the same scheme and, case-insensitively, the same text.
   - a pattern ("sip:*@example.com", "sip:sales-?@example.com", "sip:[0-9]*@example.com")
     has fnmatch wildcards (* ? [...]) in the user part only; it matches a sip:/sips: AOR
     whose host equals the pattern's host (case-insensitive) and whose decoded user part
     matches the pattern (case-sensitive). A pattern never matches an AOR without a user part.
3. Everything else is refused (the caller answers 403 Forbidden).

Watching. For an authenticated `username` in `realm` subscribing to the resource `aor`:

- Without a `[watchers]` table (or without a policy file: `Policy()`), every authenticated
  user of the realm may watch every resource.
- With a `[watchers]` table (even an empty one), allowed when `aor` is the user's own (rule 1
  above), or when the user's `[watchers]` entries, or the entries under the special key "*"
  (every authenticated user), match it, with the entry rules of rule 2 above. Everything else
  is refused (the caller answers 403 Forbidden). `[users]` grants publishing only, never
  watching.

Policy file (`--policy-file`), TOML::

    # user -> extra resources (AORs or patterns) they may publish for
    [users]
    alice = ["sip:alice@example.com", "sip:bob@example.com"]
    gateway = ["sip:*@example.com"]   # fnmatch-style wildcard in the user part

    # user -> resources (AORs or patterns) they may watch, besides their own
    [watchers]
    alice = ["sip:bob@example.com", "sip:sales-?@example.com"]
    "*" = ["pres:lobby@example.com"]  # every authenticated user may watch this one

`[users]` and `[watchers]` are the only tables; each maps a username (quote it if it is not a
bare TOML key: "alice.smith" = [...]) to a list of strings. An unknown key, a value that is
not a list of strings, an entry that is not a URI, or a wildcard outside the user part raises
`PolicyError` with a one-line message naming the file and the entry. An empty file (or no
policy at all: `Policy()`) means rule 1 only for publishing and no restriction on watching.

Pure: no I/O except `load_policy` reading the file.
"""

from __future__ import annotations

import re
import tomllib
from fnmatch import fnmatchcase
from os import PathLike
from typing import Any, Iterable, Mapping
from urllib.parse import unquote

from .errors import ParseError
from .uri import SipUri, parse_uri

__all__ = ["Policy", "PolicyError", "load_policy", "is_own_aor", "EVERY_USER"]


class PolicyError(ValueError):
    """A policy that cannot be used; the message is one line."""


EVERY_USER = "*"
"""The `[watchers]` key whose entries every authenticated user may watch."""

_WILDCARD_CHARS = frozenset("*?[")
_PATTERN_RE = re.compile(r"(?i)(sips?):([^@]*)@(.+)")
_BARE_KEY_RE = re.compile(r"[A-Za-z0-9_-]+")
_TABLES = ("users", "watchers")


def _key(uri: SipUri) -> str:
    """An AOR key with sip: and sips: made interchangeable."""
    return "sip:" + uri.aor.split(":", 1)[1]


def _toml_key(name: str) -> str:
    """A username as it would be written in the file (quoted when not a bare key)."""
    if _BARE_KEY_RE.fullmatch(name):
        return name
    return '"' + name.replace("\\", "\\\\").replace('"', '\\"') + '"'


def is_own_aor(username: str, aor: str, realm: str) -> bool:
    """Rule 1: the AOR is sip(s):username@realm."""
    try:
        uri = parse_uri(aor)
    except ParseError:
        return False
    return (isinstance(uri, SipUri) and uri.user is not None
            and uri.unescaped_user == username and uri.host == realm.lower())


class _Grants:
    """One table of the policy file, compiled: username -> exact AOR keys and patterns.

    `table` names the table in error messages ("users", "watchers").
    """

    __slots__ = ("_exact", "_patterns")

    def __init__(self, table: str, grants: Mapping[str, Iterable[str]]) -> None:
        self._exact: dict[str, frozenset[str]] = {}
        self._patterns: dict[str, tuple[tuple[str, str], ...]] = {}
        for username, entries in grants.items():
            name = f"{table}.{_toml_key(username)}"
            if isinstance(entries, str):
                raise PolicyError(f"{name}: expected a list of AORs, got a string")
            exact: set[str] = set()
            patterns: list[tuple[str, str]] = []
            for i, entry in enumerate(entries):
                where = f"{name}[{i}]"
                if not isinstance(entry, str):
                    raise PolicyError(f"{where}: expected a string, got "
                                      f"{type(entry).__name__}")
                compiled = _compile(entry, where)
                if isinstance(compiled, tuple):
                    patterns.append(compiled)
                else:
                    exact.add(compiled)
            self._exact[username] = frozenset(exact)
            self._patterns[username] = tuple(patterns)

    def matches(self, username: str, aor: str) -> bool:
        """Does an entry listed for `username` match `aor`?"""
        exact = self._exact.get(username)
        patterns = self._patterns.get(username)
        if not exact and not patterns:
            return False
        try:
            uri = parse_uri(aor)
        except ParseError:
            return False
        if isinstance(uri, SipUri):
            if exact and _key(uri) in exact:
                return True
            user = uri.unescaped_user
            if user is None or not patterns:
                return False
            return any(uri.host == host and fnmatchcase(user, pattern)
                       for host, pattern in patterns)
        if not exact:
            return False
        return uri.aor in exact

    def listed(self, username: str) -> tuple[str, ...]:
        """The exact AOR keys and patterns listed for a user (for diagnostics)."""
        return tuple(sorted(self._exact.get(username, ()))) + tuple(
            f"sip:{p}@{h}" for h, p in self._patterns.get(username, ()))

    def __len__(self) -> int:
        return len(self._exact)


class Policy:
    """Extra publish grants per user, on top of the own-AOR rule, and, when `watchers` is
    given, who may watch which resource. Immutable once built.

    `grants` (the `[users]` table) and `watchers` (the `[watchers]` table; None when the file
    has none, meaning everyone may watch everything) map a username to AORs or patterns (see
    the module docstring); a bad entry raises PolicyError.
    """

    __slots__ = ("_users", "_watchers")

    def __init__(self, grants: Mapping[str, Iterable[str]] | None = None, *,
                 watchers: Mapping[str, Iterable[str]] | None = None) -> None:
        self._users = _Grants("users", grants or {})
        self._watchers = None if watchers is None else _Grants("watchers", watchers)

    def allows(self, username: str, aor: str, realm: str) -> bool:
        """May `username` (authenticated in `realm`) publish for `aor`?"""
        return is_own_aor(username, aor, realm) or self._users.matches(username, aor)

    def may_watch(self, username: str, aor: str, realm: str) -> bool:
        """May `username` (authenticated in `realm`) watch (SUBSCRIBE to) `aor`?"""
        if self._watchers is None:
            return True
        return (is_own_aor(username, aor, realm)
                or self._watchers.matches(username, aor)
                or self._watchers.matches(EVERY_USER, aor))

    @property
    def restricts_watching(self) -> bool:
        """True when the policy has a `[watchers]` table (else everyone may watch all)."""
        return self._watchers is not None

    def grants(self, username: str) -> tuple[str, ...]:
        """The exact AOR keys and patterns `[users]` lists for a user (for diagnostics)."""
        return self._users.listed(username)

    def watch_grants(self, username: str) -> tuple[str, ...]:
        """The exact AOR keys and patterns `[watchers]` lists for a user, "*" entries not
        included (for diagnostics)."""
        return self._watchers.listed(username) if self._watchers is not None else ()

    def __len__(self) -> int:
        """The number of users `[users]` lists."""
        return len(self._users)

    def __bool__(self) -> bool:
        # A policy is never falsy, even with an empty [users] table: `policy or Policy()`
        # must not drop a [watchers] table.
        return True

    def __repr__(self) -> str:
        watchers = "" if self._watchers is None else f", {len(self._watchers)} watchers"
        return f"<Policy {len(self._users)} users{watchers}>"


def _compile(entry: str, where: str) -> str | tuple[str, str]:
    """An exact AOR key, or (host, user pattern) for a wildcard entry."""
    shown = entry if len(entry) <= 80 else entry[:77] + "..."
    if _WILDCARD_CHARS & set(entry):
        m = _PATTERN_RE.fullmatch(entry)
        if m is None:
            raise PolicyError(f"{where}: {shown!r}: a pattern must be sip:USER-PATTERN@HOST "
                              f"(wildcards only in the user part)")
        scheme, user_pattern, host_text = m.groups()
        if _WILDCARD_CHARS & set(host_text):
            raise PolicyError(f"{where}: {shown!r}: wildcards are allowed only in the user "
                              f"part")
        if not user_pattern:
            raise PolicyError(f"{where}: {shown!r}: empty user part")
        try:
            host_uri = parse_uri(f"{scheme.lower()}:{host_text}")
        except ParseError:
            raise PolicyError(f"{where}: {shown!r}: not a valid host") from None
        if not isinstance(host_uri, SipUri) or host_uri.user is not None \
                or host_uri.port is not None or host_uri.params or host_uri.headers:
            raise PolicyError(f"{where}: {shown!r}: after '@' only a host may follow")
        return host_uri.host, unquote(user_pattern, errors="surrogateescape")
    try:
        uri = parse_uri(entry)
    except ParseError:
        raise PolicyError(f"{where}: {shown!r}: not a valid URI") from None
    return _key(uri) if isinstance(uri, SipUri) else uri.aor


def _table(source: str, data: Mapping[str, Any], name: str) -> dict[str, list[Any]] | None:
    """The table `name` of the file, checked to map usernames to lists; None when absent."""
    if name not in data:
        return None
    table = data[name]
    if not isinstance(table, dict):
        raise PolicyError(f"{source}: {name!r} must be a table")
    for username, entries in table.items():
        if not isinstance(entries, list):
            raise PolicyError(f"{source}: {name}.{_toml_key(username)}: expected a list of "
                              f"AORs, got {type(entries).__name__}")
    return table


def load_policy(path: str | PathLike[str]) -> Policy:
    """Read a TOML policy file. Raises PolicyError (one-line message)."""
    source = str(path)
    try:
        with open(path, "rb") as f:
            data = tomllib.load(f)
    except OSError as e:
        raise PolicyError(f"{source}: cannot read: {e.strerror or e}") from None
    except tomllib.TOMLDecodeError as e:
        raise PolicyError(f"{source}: invalid TOML: {' '.join(str(e).split())}") from None
    except UnicodeDecodeError:
        raise PolicyError(f"{source}: not UTF-8 text") from None
    unknown = sorted(set(data) - set(_TABLES))
    if unknown:
        raise PolicyError(f"{source}: unknown key {unknown[0]!r} "
                          f"(expected only [users] and [watchers])")
    users = _table(source, data, "users")
    watchers = _table(source, data, "watchers")
    try:
        return Policy(users, watchers=watchers)
    except PolicyError as e:
        raise PolicyError(f"{source}: {e}") from None
