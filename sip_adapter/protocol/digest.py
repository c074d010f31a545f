"""SIP Digest authentication for the ESC acting as a UAS (RFC 3261 section 22, with the
RFC 7616 / RFC 8760 updates: SHA-256 next to MD5, qop=auth).

Sans-I/O: `DigestAuthenticator` never reads the clock (every method takes `now`, epoch
seconds) and touches no file or socket; randomness comes from `secrets` unless a
`random_bytes` function is injected. Only `load_credentials` reads a file. Not thread-safe:
use one authenticator from one thread (the event loop).

Credentials file (`--auth-file`)
--------------------------------
UTF-8 text, one credential per line::

    # username:realm:algorithm:HA1      (password "secret")
    alice:example.com:SHA-256:ed8925b20f9a77b8f8f8d5f8e4467fe32b866f7208ab9e4b20595e9821a0fdee
    alice:example.com:MD5:b1726872c344b6dc8365b774f8fd6412

- `username` and `realm` are taken literally (case-sensitive, no quoting) and may not contain
  ":" or control characters, nor start or end with white space. `realm` must equal the realm
  the server is configured with (`--realm`) for the line to be used; lines for other realms are
  kept but never match.
- `algorithm` is `MD5` or `SHA-256` (case-insensitive). A user may have one line per
  algorithm; a user with only a SHA-256 line cannot answer an MD5 challenge, and vice versa.
- `HA1` is the hex digest of `username:realm:password` with that algorithm (32 hex digits for
  MD5, 64 for SHA-256), so the file never holds a password::

      printf 'alice:example.com:secret' | sha256sum    # SHA-256 HA1
      printf 'alice:example.com:secret' | md5sum       # MD5 HA1

  `credential_line(username, realm, password, algorithm)` builds a whole line.
- Blank lines and lines whose first non-blank character is "#" are ignored (there are no
  trailing comments). A malformed line, a duplicate (username, realm, algorithm) or a file
  without any credential raises `CredentialsError("path:line: what is wrong")`.

Treat the file like a password file: an HA1 is enough to authenticate as that user in that
realm.

Verification (RFC 3261 22.4, RFC 7616 3.4)
-------------------------------------------
- Challenges: one WWW-Authenticate per algorithm, in the configured order; by default
  strongest first (SHA-256 before MD5, RFC 8760
  section 2.4), each with qop="auth", a fresh nonce and the opaque value.
- Nonces are stateless: base64url(issue time in ms | 12 random bytes | HMAC-SHA256 tag) under a
  secret, bound to the realm and to the algorithm of the challenge that carried it (the tag
  signs the algorithm's name with the rest). Any node or restart holding the same `secret`
  accepts them while `now - issued <= nonce_lifetime` (and not more than CLOCK_SKEW seconds in
  the future), with that algorithm only: a nonce from the SHA-256 challenge answered with MD5
  is refused, so a client (or an attacker in the middle) cannot take the fresh nonce of the
  strong challenge down to the weak algorithm.
- Only qop=auth is accepted: response = H(HA1:nonce:nc:cnonce:qop:H(method:digest-uri)).
  A response without qop (RFC 2069 style) has no cnonce/nc and so no replay protection: it is
  refused with 403, as is qop=auth-int (never offered).
- The digest-uri must designate the Request-URI (equal text, or equal under RFC 3261 19.1.4
  SIP URI comparison); otherwise 400 (RFC 7616 3.4.6).
- Replay protection: per nonce the highest nonce-count accepted is remembered; a request whose
  nc is not greater is refused with a stale challenge. Requests sent with the same nonce must
  therefore arrive in nc order (the transaction layer absorbs retransmissions before this).
  Memory is bounded: at most `max_nonces` nonces are remembered (least recently used evicted);
  when a still-valid nonce is evicted, every unremembered nonce issued no later than it is
  treated as stale from then on, so eviction never re-opens a replay. Remembered counts are
  in-process: after a restart (or on another node) a captured request can be replayed within
  the nonce's lifetime unless `reject_nonces_before` is set to the start time.
- Responses: no usable credentials for our realm, unknown user, wrong password, a nonce that is
  not ours or was issued for another algorithm, or an algorithm not offered ->
  `Challenge(stale=False)` (401; the client learns nothing about which). A correct response with an expired or already used nonce ->
  `Challenge(stale=True)` (RFC 7616: stale only when the response was valid for the nonce).
  Unparseable credentials, missing parameters, a digest-uri that is not the Request-URI ->
  `BadRequest` (400). qop missing or not "auth" -> `Forbidden` (403).
- Comparisons of secrets use `hmac.compare_digest`; an unknown user costs the same hashing as a
  known one.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import re
import secrets
import struct
from collections import OrderedDict
from dataclasses import dataclass, field
from os import PathLike
from typing import Callable, ClassVar, Iterable, Mapping, Union

from .errors import ParseError
from .messages import Request
from .uri import AbsoluteUri, SipUri, canonical_user, parse_uri

__all__ = [
    "ALGORITHMS",
    "CLOCK_SKEW",
    "Credentials",
    "CredentialsError",
    "load_credentials",
    "parse_credentials",
    "ha1",
    "credential_line",
    "digest_response",
    "parse_credentials_header",
    "DigestAuthenticator",
    "AuthResult",
    "Authenticated",
    "Challenge",
    "Forbidden",
    "BadRequest",
]

# --- Algorithms -------------------------------------------------------------------------------

# name -> hashlib constructor, strongest first (the order challenges are offered in).
_HASHES: dict[str, Callable[..., "hashlib._Hash"]] = {
    "SHA-256": hashlib.sha256,
    "MD5": hashlib.md5,
}
ALGORITHMS: tuple[str, ...] = tuple(_HASHES)
_HEX_LEN = {"SHA-256": 64, "MD5": 32}
_BY_LOWER = {name.lower(): name for name in _HASHES}

# A nonce stamped up to this many seconds in the future is still accepted (nodes sharing a
# secret whose clocks disagree slightly).
CLOCK_SKEW = 30.0


def _algorithm(name: str) -> str | None:
    """The canonical spelling of a supported algorithm name, or None."""
    return _BY_LOWER.get(name.lower())


def _encode(text: str) -> bytes:
    # Header values are str decoded with surrogateescape: hash the bytes that were sent.
    return text.encode("utf-8", "surrogateescape")


def _h(algorithm: str, text: str) -> str:
    return _HASHES[algorithm](_encode(text)).hexdigest()


def ha1(username: str, realm: str, password: str, algorithm: str = "SHA-256") -> str:
    """H(username:realm:password) in lower-case hex (RFC 7616 3.4.2)."""
    name = _algorithm(algorithm)
    if name is None:
        raise ValueError(f"unsupported digest algorithm {algorithm!r}")
    return _h(name, f"{username}:{realm}:{password}")


def digest_response(algorithm: str, ha1_hex: str, nonce: str, nc: str, cnonce: str,
                    qop: str, method: str, uri: str) -> str:
    """The request-digest for qop=auth (RFC 7616 3.4.1, RFC 3261 22.4):
    H(HA1:nonce:nc:cnonce:qop:H(method:uri)), lower-case hex. Strings are used as sent."""
    name = _algorithm(algorithm)
    if name is None:
        raise ValueError(f"unsupported digest algorithm {algorithm!r}")
    ha2 = _h(name, f"{method}:{uri}")
    return _h(name, f"{ha1_hex}:{nonce}:{nc}:{cnonce}:{qop}:{ha2}")


# --- Credentials file -------------------------------------------------------------------------


class CredentialsError(ValueError):
    """A credentials file that cannot be used; the message is one line, `path:line: what`."""


_CONTROL_RE = re.compile(r"[\x00-\x1f\x7f]")
_HEX_RE = re.compile(r"[0-9a-fA-F]+")


def _check_name(what: str, value: str) -> str | None:
    if not value:
        return f"empty {what}"
    if _CONTROL_RE.search(value):
        return f"{what} contains a control character"
    if value != value.strip():
        return f"{what} has leading or trailing white space"
    return None


class Credentials:
    """HA1 hashes by (username, realm, algorithm). Immutable once built."""

    __slots__ = ("_entries",)

    def __init__(self, entries: Mapping[tuple[str, str, str], str] | None = None) -> None:
        checked: dict[tuple[str, str, str], str] = {}
        for (username, realm, algorithm), digest in (entries or {}).items():
            name = _algorithm(algorithm)
            if name is None:
                raise ValueError(f"unsupported digest algorithm {algorithm!r}")
            if len(digest) != _HEX_LEN[name] or not _HEX_RE.fullmatch(digest):
                raise ValueError(f"HA1 for {username!r} is not {_HEX_LEN[name]} hex digits")
            checked[(username, realm, name)] = digest.lower()
        self._entries = checked

    def lookup(self, username: str, realm: str, algorithm: str) -> str | None:
        """The HA1 (lower-case hex) for this user, realm and algorithm, or None."""
        name = _algorithm(algorithm)
        if name is None:
            return None
        return self._entries.get((username, realm, name))

    @property
    def realms(self) -> frozenset[str]:
        """Every realm that has at least one credential (to warn about a realm mismatch)."""
        return frozenset(realm for _, realm, _ in self._entries)

    def users(self, realm: str) -> frozenset[str]:
        return frozenset(u for u, r, _ in self._entries if r == realm)

    def __len__(self) -> int:
        return len(self._entries)

    def __repr__(self) -> str:  # never print the hashes
        return f"<Credentials {len(self._entries)} entries, realms {sorted(self.realms)}>"


def parse_credentials(text: str, source: str = "<credentials>") -> Credentials:
    """Parse the credentials file format (see the module docstring)."""
    entries: dict[tuple[str, str, str], str] = {}
    first_line: dict[tuple[str, str, str], int] = {}
    if text.startswith("\ufeff"):
        text = text[1:]
    for lineno, raw in enumerate(text.splitlines(), start=1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue

        def fail(what: str) -> CredentialsError:
            return CredentialsError(f"{source}:{lineno}: {what}")

        fields = line.split(":")
        if len(fields) != 4:
            raise fail(f"expected username:realm:algorithm:HA1 (4 fields separated by ':'), "
                       f"got {len(fields)} field{'s' if len(fields) != 1 else ''}")
        username, realm, algorithm, digest = fields
        for what, value in (("username", username), ("realm", realm)):
            problem = _check_name(what, value)
            if problem:
                raise fail(problem)
        name = _algorithm(algorithm.strip())
        if name is None:
            raise fail(f"unknown algorithm {algorithm.strip()[:20]!r} "
                       f"(expected {' or '.join(sorted(_HASHES))})")
        digest = digest.strip()
        if not _HEX_RE.fullmatch(digest):
            raise fail("HA1 is not a hexadecimal digest")
        if len(digest) != _HEX_LEN[name]:
            guess = {32: " (an MD5 digest?)", 64: " (a SHA-256 digest?)"}.get(len(digest), "")
            raise fail(f"HA1 for {name} must be {_HEX_LEN[name]} hex digits, "
                       f"got {len(digest)}{guess}")
        key = (username, realm, name)
        if key in entries:
            raise fail(f"duplicate entry for user {username!r} realm {realm!r} {name} "
                       f"(first on line {first_line[key]})")
        entries[key] = digest.lower()
        first_line[key] = lineno
    if not entries:
        raise CredentialsError(f"{source}: no credentials (expected lines "
                               f"username:realm:algorithm:HA1)")
    return Credentials(entries)


def load_credentials(path: str | PathLike[str]) -> Credentials:
    """Read a credentials file. Raises CredentialsError (one-line message) for an unreadable
    or malformed file."""
    source = str(path)
    try:
        with open(path, "rb") as f:
            data = f.read()
    except OSError as e:
        raise CredentialsError(f"{source}: cannot read: {e.strerror or e}") from None
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as e:
        line = data[: e.start].count(b"\n") + 1
        raise CredentialsError(f"{source}:{line}: not UTF-8 text") from None
    return parse_credentials(text, source)


def credential_line(username: str, realm: str, password: str,
                    algorithm: str = "SHA-256") -> str:
    """One line of the credentials file (without newline), e.g. for an `esc passwd` command."""
    for what, value in (("username", username), ("realm", realm)):
        problem = _check_name(what, value) or (f"{what} contains ':'" if ":" in value else None)
        if problem:
            raise ValueError(problem)
    name = _algorithm(algorithm)
    if name is None:
        raise ValueError(f"unsupported digest algorithm {algorithm!r}")
    return f"{username}:{realm}:{name}:{ha1(username, realm, password, name)}"


# --- Authorization header parsing -------------------------------------------------------------
#
# RFC 3261 25.1 (with RFC 7616's relaxations: any parameter may be a token or quoted-string):
#   credentials      = ("Digest" LWS digest-response) / other-response
#   digest-response  = dig-resp *(COMMA dig-resp)
#   auth-param       = auth-param-name EQUAL ( token / quoted-string )
#   COMMA = SWS "," SWS      EQUAL = SWS "=" SWS
#   quoted-string    = SWS DQUOTE *(qdtext / quoted-pair ) DQUOTE
#   qdtext           = LWS / %x21 / %x23-5B / %x5D-7E / UTF8-NONASCII
#   quoted-pair      = "\" (%x00-09 / %x0B-0C / %x0E-7F)

_TOKEN = r"[A-Za-z0-9\-.!%*_+`'~]+"
_SCHEME_RE = re.compile(rf"[ \t]*({_TOKEN})(?:[ \t]+|$)")
_PARAM_RE = re.compile(
    rf"[ \t]*({_TOKEN})[ \t]*=[ \t]*"
    rf"(?:({_TOKEN})|\"((?:[^\"\\\x00-\x08\x0a-\x1f\x7f]|\\[\x00-\x09\x0b\x0c\x0e-\x7f])*)\")"
    r"[ \t]*"
)
_UNQUOTE_RE = re.compile(r"\\(.)", re.DOTALL)


def parse_credentials_header(value: str) -> tuple[str, dict[str, str]]:
    """Split an Authorization value into (scheme, {lower-cased name: unquoted value}).
    Raises ValueError for a malformed value or a repeated parameter."""
    m = _SCHEME_RE.match(value)
    if m is None:
        raise ValueError("missing auth-scheme")
    scheme = m.group(1)
    params: dict[str, str] = {}
    pos = m.end()
    n = len(value)
    if pos >= n:
        return scheme, params
    while True:
        m = _PARAM_RE.match(value, pos)
        if m is None:
            raise ValueError("malformed auth-param")
        name = m.group(1).lower()
        token, quoted = m.group(2), m.group(3)
        text = token if token is not None else _UNQUOTE_RE.sub(r"\1", quoted)
        if name in params:
            raise ValueError("repeated auth-param")
        params[name] = text
        pos = m.end()
        if pos >= n:
            return scheme, params
        if value[pos] != ",":
            raise ValueError("expected ',' between auth-params")
        pos += 1


def _quote(text: str) -> str:
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


# --- Digest-URI comparison --------------------------------------------------------------------

# RFC 3261 19.1.4: these parameters, present in one URI, must be present and equal in the other.
_MUST_MATCH_PARAMS = ("user", "ttl", "method", "maddr", "transport")


def _same_resource(digest_uri: str, request_uri: str) -> bool:
    """Does the digest-uri designate the Request-URI? Equal text, or equal SIP URIs by the
    RFC 3261 19.1.4 rules (other schemes: equal scheme and, case-insensitively, the rest)."""
    if digest_uri == request_uri:
        return True
    try:
        a, b = parse_uri(digest_uri), parse_uri(request_uri)
    except ParseError:
        return False
    if isinstance(a, SipUri) and isinstance(b, SipUri):
        if (a.scheme, a.host, a.port, a.password) != (b.scheme, b.host, b.port, b.password):
            return False
        if (a.user is None) != (b.user is None):
            return False
        if a.user is not None and canonical_user(a.user) != canonical_user(b.user or ""):
            return False
        for name in set(a.params) | set(b.params):
            va, vb = a.params.get(name, ...), b.params.get(name, ...)
            if va is ... or vb is ...:
                if name in _MUST_MATCH_PARAMS:
                    return False
                continue
            if (va or "").lower() != (vb or "").lower():
                return False
        return sorted((k.lower(), v) for k, v in a.headers) == sorted(
            (k.lower(), v) for k, v in b.headers)
    if isinstance(a, AbsoluteUri) and isinstance(b, AbsoluteUri):
        return a.scheme == b.scheme and a.rest.lower() == b.rest.lower()
    return False


# --- Results ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Authenticated:
    """The request carries valid credentials for `username` in our realm."""

    username: str
    algorithm: str = "SHA-256"


@dataclass(frozen=True)
class Challenge:
    """Answer 401 with `headers` (WWW-Authenticate, one per algorithm). `stale`: the response
    was right but the nonce expired or was used already (the client retries without asking the
    user). `reason` is for logs only: never send it (it tells "unknown user" apart)."""

    headers: list[tuple[str, str]]
    stale: bool = False
    reason: str = ""
    status: ClassVar[int] = 401
    phrase: ClassVar[str] = "Unauthorized"


@dataclass(frozen=True)
class Forbidden:
    """Answer 403: the credentials use a mode this server refuses (no qop, auth-int).
    `reason` is a fixed text, safe as a reason phrase or Warning."""

    reason: str
    headers: list[tuple[str, str]] = field(default_factory=list)
    status: ClassVar[int] = 403
    phrase: ClassVar[str] = "Forbidden"


@dataclass(frozen=True)
class BadRequest:
    """Answer 400: malformed or incomplete credentials, or a digest-uri that is not the
    Request-URI. `reason` is a fixed text (no request bytes), safe as a reason phrase."""

    reason: str
    headers: list[tuple[str, str]] = field(default_factory=list)
    status: ClassVar[int] = 400
    phrase: ClassVar[str] = "Bad Request"


AuthResult = Union[Authenticated, Challenge, Forbidden, BadRequest]


# --- The authenticator ------------------------------------------------------------------------

_NONCE_RANDOM = 12
_NONCE_TAG = 16
_NONCE_BYTES = 8 + _NONCE_RANDOM + _NONCE_TAG
_NONCE_CHARS = (_NONCE_BYTES * 4 + 2) // 3  # base64 without padding (36 bytes: 48 chars)
_NC_RE = re.compile(r"[0-9a-fA-F]{8}")
_REQUIRED = ("username", "realm", "nonce", "uri", "response")


class DigestAuthenticator:
    """Challenges and verifies SIP Digest credentials for one realm.

    credentials: the HA1 table (only entries for `realm` are used).
    realm: the protection realm sent in challenges (conventionally the SIP domain).
    nonce_lifetime: seconds a nonce stays usable after it was issued.
    secret: the key nonces are signed with. Give every node and every restart the same secret
        for nonces to survive them; None: a random one (nonces die with the process).
    algorithms: offered and accepted; challenges are offered in the order given (clients such
        as baresip 1.0 and sipsak answer only a first challenge that is MD5, so serving them
        takes MD5 first, or MD5 alone). The default is strongest first: SHA-256, MD5.
    max_nonces: how many nonces' nonce-counts are remembered.
    random_bytes: randomness for nonces (inject a fixed one in tests).
    reject_nonces_before: epoch seconds; nonces issued before it are stale unless this process
        remembers them (pass the start time to keep replay protection across restarts at the
        cost of one extra 401 per client).
    """

    def __init__(self, credentials: Credentials, realm: str, *, nonce_lifetime: float = 300.0,
                 secret: bytes | None = None, algorithms: Iterable[str] = ("SHA-256", "MD5"),
                 max_nonces: int = 100_000,
                 random_bytes: Callable[[int], bytes] = secrets.token_bytes,
                 reject_nonces_before: float | None = None) -> None:
        problem = _check_name("realm", realm)
        if problem:
            raise ValueError(problem)
        if not nonce_lifetime > 0:
            raise ValueError("nonce_lifetime must be positive")
        if max_nonces < 1:
            raise ValueError("max_nonces must be at least 1")
        chosen: list[str] = []
        for name in algorithms:
            canonical = _algorithm(name)
            if canonical is None:
                raise ValueError(f"unsupported digest algorithm {name!r}")
            if canonical not in chosen:
                chosen.append(canonical)
        if not chosen:
            raise ValueError("no digest algorithm")
        if secret is None:
            secret = secrets.token_bytes(32)
        elif len(secret) < 16:
            raise ValueError("secret must be at least 16 bytes")
        self.credentials = credentials
        self.realm = realm
        self.nonce_lifetime = float(nonce_lifetime)
        self.algorithms: tuple[str, ...] = tuple(chosen)  # the order challenges are offered in
        self.max_nonces = max_nonces
        self._random = random_bytes
        realm_bytes = _encode(realm)
        self._nonce_key = hmac.new(secret, b"esc digest nonce\x00" + realm_bytes,
                                   hashlib.sha256).digest()
        self.opaque = hmac.new(secret, b"esc digest opaque\x00" + realm_bytes,
                               hashlib.sha256).hexdigest()[:32]
        # nonce -> (highest nc accepted, issue time in ms); least recently used first.
        self._counts: OrderedDict[str, tuple[int, int]] = OrderedDict()
        # Unremembered nonces issued at or before this (ms) are stale (see module docstring).
        self._floor_ms = -1 if reject_nonces_before is None else _ms(reject_nonces_before) - 1

    # -- challenges --

    def new_nonce(self, now: float, algorithm: str) -> str:
        """A nonce for a challenge with `algorithm`, valid only with that algorithm."""
        name = _algorithm(algorithm)
        if name is None:
            raise ValueError(f"unsupported digest algorithm {algorithm!r}")
        payload = struct.pack(">Q", max(0, _ms(now))) + self._random(_NONCE_RANDOM)
        if len(payload) != 8 + _NONCE_RANDOM:
            raise ValueError("random_bytes returned the wrong number of bytes")
        return base64.urlsafe_b64encode(payload + self._nonce_tag(payload, name)).decode("ascii")

    def _nonce_tag(self, payload: bytes, algorithm: str) -> bytes:
        # The algorithm's name (canonical spelling, no NUL) and the fixed-length payload.
        message = algorithm.encode("ascii") + b"\x00" + payload
        return hmac.new(self._nonce_key, message, hashlib.sha256).digest()[:_NONCE_TAG]

    def challenge(self, now: float, stale: bool = False) -> list[tuple[str, str]]:
        """WWW-Authenticate headers for a 401: one per algorithm, in the configured order."""
        realm = _quote(self.realm)
        out = []
        for algorithm in self.algorithms:
            value = (f'Digest realm={realm}, qop="auth", algorithm={algorithm}, '
                     f'nonce="{self.new_nonce(now, algorithm)}", opaque="{self.opaque}"')
            if stale:
                value += ", stale=TRUE"
            out.append(("WWW-Authenticate", value))
        return out

    def _challenge(self, now: float, reason: str, stale: bool = False) -> Challenge:
        return Challenge(self.challenge(now, stale), stale, reason)

    # -- verification --

    def _nonce_issued_ms(self, nonce: str, algorithm: str) -> int | str:
        """The issue time of a nonce we signed for `algorithm`; otherwise why not (a reason
        for logs)."""
        if len(nonce) != _NONCE_CHARS:
            return "nonce not issued by us"
        try:
            raw = base64.b64decode(nonce.encode("ascii"), altchars=b"-_", validate=True)
        except (ValueError, UnicodeEncodeError):
            return "nonce not issued by us"
        if len(raw) != _NONCE_BYTES or base64.urlsafe_b64encode(raw).decode() != nonce:
            return "nonce not issued by us"  # also refuses "+" and "/" spellings of ours
        payload, tag = raw[:-_NONCE_TAG], raw[-_NONCE_TAG:]
        if not hmac.compare_digest(tag, self._nonce_tag(payload, algorithm)):
            for other in ALGORITHMS:
                if other != algorithm and \
                        hmac.compare_digest(tag, self._nonce_tag(payload, other)):
                    return "nonce issued for another algorithm"
            return "nonce not issued by us"
        issued_ms: int = struct.unpack(">Q", payload[:8])[0]
        return issued_ms

    def _select(self, request: Request) -> tuple[dict[str, str], str] | BadRequest | None:
        """The Digest credentials for our realm to verify, with their algorithm; None when
        there are none we could use."""
        ours: list[tuple[dict[str, str], str]] = []
        for value in request.headers.get_all("Authorization"):
            try:
                scheme, params = parse_credentials_header(value)
            except ValueError:
                # Non-Digest schemes are none of our business, but we cannot tell a
                # malformed value's scheme reliably unless it starts with a token.
                m = _SCHEME_RE.match(value)
                if m is not None and m.group(1).lower() != "digest":
                    continue
                return BadRequest("Malformed Authorization header field")
            if scheme.lower() != "digest" or params.get("realm") != self.realm:
                continue
            algorithm = _algorithm(params.get("algorithm", "MD5"))
            if algorithm is not None and algorithm in self.algorithms:
                ours.append((params, algorithm))
        if not ours:
            return None
        # Several for our realm (one per algorithm, say): the one we offer first.
        ours.sort(key=lambda pair: self.algorithms.index(pair[1]))
        return ours[0]

    def authenticate(self, request: Request, now: float) -> AuthResult:
        """Verify the request's Authorization (RFC 3261 22.4). Of `request`, its `method`,
        `uri` and `headers` are read."""
        selected = self._select(request)
        if selected is None:
            return self._challenge(now, "no credentials for this realm")
        if isinstance(selected, BadRequest):
            return selected
        params, algorithm = selected

        missing = [name for name in _REQUIRED if name not in params]
        if missing:
            return BadRequest(f"Authorization lacks {missing[0]}")
        qop = params.get("qop")
        if qop is None:
            return Forbidden("Digest without qop=auth is not accepted")
        if qop.lower() != "auth":
            return Forbidden("Only qop=auth is supported")
        cnonce, nc = params.get("cnonce"), params.get("nc")
        if not cnonce or nc is None:
            return BadRequest("Authorization with qop lacks cnonce or nc")
        if not _NC_RE.fullmatch(nc):
            return BadRequest("Malformed nonce-count")
        response = params["response"]
        if len(response) != _HEX_LEN[algorithm] or not _HEX_RE.fullmatch(response):
            return BadRequest("Malformed digest response")
        uri = params["uri"]
        if not _same_resource(uri, request.uri):
            return BadRequest("Digest URI does not match Request-URI")

        opaque = params.get("opaque")
        if opaque is not None and not hmac.compare_digest(_encode(opaque),
                                                          self.opaque.encode("ascii")):
            return self._challenge(now, "opaque is not ours")
        nonce = params["nonce"]
        issued_ms = self._nonce_issued_ms(nonce, algorithm)
        if isinstance(issued_ms, str):
            return self._challenge(now, issued_ms)

        username = params["username"]
        stored = self.credentials.lookup(username, self.realm, algorithm)
        # An unknown user costs the same work as a known one (no timing oracle).
        known = stored is not None
        ha1_hex = stored if stored is not None else "0" * _HEX_LEN[algorithm]
        expected = digest_response(algorithm, ha1_hex, nonce, nc, cnonce, qop,
                                   request.method, uri)
        if not hmac.compare_digest(expected.encode("ascii"), response.lower().encode("ascii")):
            return self._challenge(now, "wrong password" if known else "unknown user")
        if not known:  # someone computed a response with the all-zero placeholder HA1
            return self._challenge(now, "unknown user")

        age = now - issued_ms / 1000.0
        if age > self.nonce_lifetime or age < -CLOCK_SKEW:
            return self._challenge(now, "nonce expired", stale=True)
        count = int(nc, 16)
        entry = self._counts.get(nonce)
        if entry is None:
            if issued_ms <= self._floor_ms:
                return self._challenge(now, "nonce forgotten", stale=True)
            highest = 0
        else:
            highest = entry[0]
        if count <= highest:
            return self._challenge(now, "nonce-count replayed", stale=True)
        self._remember(nonce, count, issued_ms, now)
        return Authenticated(username, algorithm)

    def _remember(self, nonce: str, count: int, issued_ms: int, now: float) -> None:
        counts = self._counts
        if nonce in counts:
            counts.move_to_end(nonce)
        else:
            while len(counts) >= self.max_nonces:
                _, (_, evicted_ms) = counts.popitem(last=False)
                # Forgetting a nonce that is still usable would let its old requests be
                # replayed: raise the floor over it instead. Expired ones need nothing.
                if now - evicted_ms / 1000.0 <= self.nonce_lifetime:
                    self._floor_ms = max(self._floor_ms, evicted_ms)
        counts[nonce] = (count, issued_ms)

    def __repr__(self) -> str:
        return (f"<DigestAuthenticator realm={self.realm!r} algorithms={self.algorithms} "
                f"nonces={len(self._counts)}>")


def _ms(seconds: float) -> int:
    return int(seconds * 1000)
