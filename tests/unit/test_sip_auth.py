"""SIP Digest authentication (sip_adapter.protocol.digest) and publish authorization
(sip_adapter.protocol.authorization). Every test passes `now` and a fixed secret; expected digests are
computed here with hashlib, independently of the code under test."""

from __future__ import annotations

import base64
import hashlib
import hmac
import re
import struct

import pytest

from sip_adapter.protocol.authorization import Policy, PolicyError, is_own_aor, load_policy
from sip_adapter.protocol.digest import (
    Authenticated,
    BadRequest,
    Challenge,
    Credentials,
    CredentialsError,
    DigestAuthenticator,
    Forbidden,
    credential_line,
    digest_response,
    ha1,
    load_credentials,
    parse_credentials,
    parse_credentials_header,
)
from sip_adapter.protocol.messages import Request

NOW = 1_700_000_000.0
REALM = "example.com"
URI = "sip:alice@example.com"
SECRET = b"0123456789abcdef0123456789abcdef"
HASH = {"SHA-256": hashlib.sha256, "MD5": hashlib.md5}


def H(algorithm: str, text: str) -> str:
    return HASH[algorithm](text.encode()).hexdigest()


ODD = 'o"dd, user'


def creds_text() -> str:
    odd_ha1 = H("SHA-256", f"{ODD}:{REALM}:pw")
    return "\n".join([
        "# test users",
        "",
        f"alice:{REALM}:SHA-256:{H('SHA-256', f'alice:{REALM}:secret')}",
        f"alice:{REALM}:MD5:{H('MD5', f'alice:{REALM}:secret')}",
        f"bob:{REALM}:MD5:{H('MD5', f'bob:{REALM}:hunter2')}",
        f"{ODD}:{REALM}:SHA-256:{odd_ha1}",
        f"carol:other.example:SHA-256:{H('SHA-256', 'carol:other.example:pw')}",
    ]) + "\n"


def make_auth(**kw) -> DigestAuthenticator:
    kw.setdefault("secret", SECRET)
    return DigestAuthenticator(parse_credentials(creds_text()), REALM, **kw)


def nonces(headers) -> list[str]:
    return [re.search(r'nonce="([^"]*)"', v).group(1) for _, v in headers]


def fresh_nonce(auth: DigestAuthenticator, now: float = NOW, algorithm="SHA-256") -> str:
    headers = auth.challenge(now)
    index = [re.search(r"algorithm=([\w-]+)", v).group(1) for _, v in headers].index(algorithm)
    return nonces(headers)[index]


def authorization(username, password, nonce, *, realm=REALM, algorithm="SHA-256",
                  method="PUBLISH", uri=URI, nc="00000001", cnonce="0a4f113b", qop="auth",
                  opaque=None, send_algorithm=True, response=None) -> str:
    ha1_hex = H(algorithm, f"{username}:{realm}:{password}")
    ha2 = H(algorithm, f"{method}:{uri}")
    if response is None:
        response = H(algorithm, f"{ha1_hex}:{nonce}:{nc}:{cnonce}:{qop}:{ha2}")
    quoted_user = username.replace("\\", "\\\\").replace('"', '\\"')
    parts = [f'Digest username="{quoted_user}"', f'realm="{realm}"', f'nonce="{nonce}"',
             f'uri="{uri}"', f'response="{response}"']
    if send_algorithm:
        parts.append(f"algorithm={algorithm}")
    if qop is not None:
        parts += [f"qop={qop}", f"nc={nc}", f'cnonce="{cnonce}"']
    if opaque is not None:
        parts.append(f'opaque="{opaque}"')
    return ", ".join(parts)


def publish(*authorizations: str, uri: str = URI, method: str = "PUBLISH") -> Request:
    headers = [("Via", "SIP/2.0/UDP 192.0.2.1;branch=z9hG4bK1"), ("CSeq", f"1 {method}")]
    headers += [("Authorization", a) for a in authorizations]
    return Request(method, uri, headers)


# ---- digest computation ----------------------------------------------------------------------

# RFC 7616 section 3.9.1
MUFASA = dict(nonce="7ypf/xlj9XXwfDPEoM4URrv/xwf94BcCAzFZH4GiTo0v", nc="00000001",
              cnonce="f2/wE4q74E6zIJEtWaHKaf5wv/H5QzzpXusqGemxURZJ", qop="auth", method="GET",
              uri="/dir/index.html")


@pytest.mark.parametrize("algorithm, expected", [
    ("SHA-256", "753927fa0e85d155564e2e272a28d1802ca10daf4496794697cf8db5856cb6c1"),
    ("MD5", "8ca523f5e9506fed4657c9700eebdbec"),
])
def test_rfc7616_example(algorithm, expected):
    secret_ha1 = ha1("Mufasa", "http-auth@example.org", "Circle of Life", algorithm)
    assert digest_response(algorithm, secret_ha1, **MUFASA) == expected


def test_ha1_and_credential_line():
    assert ha1("alice", REALM, "secret", "SHA-256") == H("SHA-256", "alice:example.com:secret")
    assert ha1("alice", REALM, "secret", "md5") == H("MD5", "alice:example.com:secret")
    line = credential_line("alice", REALM, "secret", "sha-256")
    assert line == f"alice:{REALM}:SHA-256:{H('SHA-256', 'alice:example.com:secret')}"
    parsed = parse_credentials(line)
    assert parsed.lookup("alice", REALM, "SHA-256") == H("SHA-256", "alice:example.com:secret")
    with pytest.raises(ValueError):
        credential_line("al:ice", REALM, "x")
    with pytest.raises(ValueError):
        credential_line("alice", REALM, "x", "SHA-1")


# ---- challenges ------------------------------------------------------------------------------

def test_challenge_headers():
    auth = make_auth(random_bytes=lambda n: b"\x07" * n)
    headers = auth.challenge(NOW)
    assert [name for name, _ in headers] == ["WWW-Authenticate"] * 2
    sha, md5 = (v for _, v in headers)
    assert sha.startswith('Digest realm="example.com", qop="auth", algorithm=SHA-256, nonce="')
    assert "algorithm=MD5" in md5 and 'qop="auth"' in md5
    assert "stale" not in sha
    scheme, params = parse_credentials_header(sha)
    assert scheme == "Digest" and params["opaque"] == auth.opaque and len(params["nonce"]) == 48
    # deterministic with injected randomness, stale flag on request
    assert auth.challenge(NOW) == headers
    assert all(v.endswith(", stale=TRUE") for _, v in auth.challenge(NOW, stale=True))


def test_challenges_are_offered_in_the_configured_order_strongest_first_by_default():
    # MD5 first serves clients that answer only a first challenge in MD5 (baresip 1.0, sipsak).
    auth = make_auth(algorithms=("md5", "SHA-256"))
    assert ["MD5" in v for _, v in auth.challenge(NOW)] == [True, False]
    assert ["SHA-256" in v for _, v in make_auth().challenge(NOW)] == [True, False]
    only = make_auth(algorithms=("SHA-256",))
    assert len(only.challenge(NOW)) == 1


def test_nonces_are_fresh():
    auth = make_auth()
    assert len(set(nonces(auth.challenge(NOW)) + nonces(auth.challenge(NOW)))) == 4


# ---- successful authentication ---------------------------------------------------------------

@pytest.mark.parametrize("algorithm", ["SHA-256", "MD5"])
def test_success(algorithm):
    auth = make_auth()
    nonce = fresh_nonce(auth, algorithm=algorithm)
    request = publish(authorization("alice", "secret", nonce, algorithm=algorithm,
                                    opaque=auth.opaque))
    assert auth.authenticate(request, NOW + 1) == Authenticated("alice", algorithm)


def test_missing_algorithm_means_md5():
    auth = make_auth()
    header = authorization("bob", "hunter2", fresh_nonce(auth, algorithm="MD5"),
                           algorithm="MD5", send_algorithm=False)
    assert auth.authenticate(publish(header), NOW) == Authenticated("bob", "MD5")


def test_quoted_strings_escapes_and_case_insensitive_names():
    auth = make_auth()
    nonce = fresh_nonce(auth)
    header = authorization(ODD, "pw", nonce)
    header = (header.replace("username=", "UserName =").replace("realm=", "REALM= ")
              .replace("qop=auth", 'QOP="auth"').replace("nc=", "Nc="))
    assert header.count('\\"') == 1
    assert auth.authenticate(publish(header), NOW) == Authenticated(ODD, "SHA-256")


def test_nonce_survives_restart_with_same_secret():
    nonce = fresh_nonce(make_auth())
    other = make_auth()  # a new process, or another node, with the same secret
    assert isinstance(other.authenticate(publish(authorization("alice", "secret", nonce)),
                                         NOW + 10), Authenticated)


def test_equivalent_digest_uri_accepted():
    auth = make_auth()
    for uri_sent in ("sip:alice@EXAMPLE.com", "sip:%61lice@example.com"):
        header = authorization("alice", "secret", fresh_nonce(auth), uri=uri_sent)
        assert isinstance(auth.authenticate(publish(header), NOW), Authenticated)
    header = authorization("alice", "secret", fresh_nonce(auth), uri="sip:alice@example.com")
    request = publish(header, uri="sip:alice@example.com;lr")
    assert isinstance(auth.authenticate(request, NOW), Authenticated)


def test_several_authorization_headers_uses_the_one_for_our_realm():
    auth = make_auth()
    nonce = fresh_nonce(auth)
    foreign = authorization("alice", "x", "abc", realm="proxy.example")
    request = publish('Basic YWxpY2U6c2VjcmV0', foreign,
                      authorization("alice", "secret", nonce))
    assert auth.authenticate(request, NOW) == Authenticated("alice", "SHA-256")


def test_several_for_our_realm_prefers_the_strongest():
    auth = make_auth()
    md5 = authorization("alice", "wrong", fresh_nonce(auth, algorithm="MD5"), algorithm="MD5")
    sha = authorization("alice", "secret", fresh_nonce(auth))
    assert auth.authenticate(publish(md5, sha), NOW) == Authenticated("alice", "SHA-256")


# ---- refused: 401 ----------------------------------------------------------------------------

def challenged(result, stale=False) -> bool:
    return (isinstance(result, Challenge) and result.stale is stale and result.status == 401
            and len(result.headers) == 2
            and all(("stale=TRUE" in v) is stale for _, v in result.headers))


def test_no_credentials_challenges():
    auth = make_auth()
    assert challenged(auth.authenticate(publish(), NOW))
    assert challenged(auth.authenticate(publish("Basic YWxpY2U6c2VjcmV0"), NOW))
    other_realm = authorization("carol", "pw", fresh_nonce(auth), realm="other.example")
    assert challenged(auth.authenticate(publish(other_realm), NOW))


def test_wrong_password():
    auth = make_auth()
    result = auth.authenticate(publish(authorization("alice", "guess", fresh_nonce(auth))), NOW)
    assert challenged(result) and result.reason == "wrong password"


def test_unknown_user_is_a_plain_challenge():
    auth = make_auth()
    result = auth.authenticate(publish(authorization("mallory", "x", fresh_nonce(auth))), NOW)
    assert challenged(result) and result.reason == "unknown user"
    # a user known only in another realm, or without a credential for this algorithm
    result = auth.authenticate(publish(authorization("bob", "hunter2", fresh_nonce(auth))), NOW)
    assert challenged(result)


def test_unknown_user_with_placeholder_ha1_is_refused():
    auth = make_auth()
    nonce = fresh_nonce(auth)
    ha2 = H("SHA-256", f"PUBLISH:{URI}")
    response = H("SHA-256", f"{'0' * 64}:{nonce}:00000001:c:auth:{ha2}")
    header = authorization("mallory", "", nonce, cnonce="c", response=response)
    assert challenged(auth.authenticate(publish(header), NOW))


def test_expired_nonce_is_stale_only_when_the_response_is_right():
    auth = make_auth(nonce_lifetime=300)
    nonce = fresh_nonce(auth, NOW)
    good = publish(authorization("alice", "secret", nonce))
    assert challenged(auth.authenticate(good, NOW + 301), stale=True)
    bad = publish(authorization("alice", "guess", nonce))
    assert challenged(auth.authenticate(bad, NOW + 301), stale=False)
    assert isinstance(auth.authenticate(good, NOW + 300), Authenticated)


def test_nonce_from_the_future_beyond_skew_is_stale():
    auth = make_auth()
    nonce = fresh_nonce(auth, NOW + 3600)
    result = auth.authenticate(publish(authorization("alice", "secret", nonce)), NOW)
    assert challenged(result, stale=True)


def test_forged_nonces():
    auth = make_auth()
    genuine = fresh_nonce(auth)
    tampered = ("B" if genuine[0] == "A" else "A") + genuine[1:]
    other_secret = fresh_nonce(make_auth(secret=b"another secret, 16+ bytes"))
    other_realm = fresh_nonce(DigestAuthenticator(Credentials(), "other.example",
                                                  secret=SECRET))
    plus_slash = genuine.replace("-", "+").replace("_", "/")
    forged = ["dcd98b7102dd2f0e8b11d0f600bfb0c093", tampered, other_secret, other_realm, "",
              "é" * 48]
    if plus_slash != genuine:
        forged.append(plus_slash)
    for nonce in forged:
        result = auth.authenticate(publish(authorization("alice", "secret", nonce)), NOW)
        assert challenged(result) and result.reason == "nonce not issued by us", nonce


def test_wrong_opaque_challenges():
    auth = make_auth()
    header = authorization("alice", "secret", fresh_nonce(auth), opaque="nope")
    assert challenged(auth.authenticate(publish(header), NOW))


def test_algorithm_not_offered():
    auth = make_auth(algorithms=("SHA-256",))
    nonce = fresh_nonce(make_auth(), algorithm="MD5")
    header = authorization("alice", "secret", nonce, algorithm="MD5")
    result = auth.authenticate(publish(header), NOW)
    assert isinstance(result, Challenge) and len(result.headers) == 1
    sess = authorization("alice", "secret", fresh_nonce(auth)).replace(
        "algorithm=SHA-256", "algorithm=SHA-256-sess")
    assert isinstance(auth.authenticate(publish(sess), NOW), Challenge)


# ---- a nonce is valid only with the algorithm it was issued for -------------------------------

@pytest.mark.parametrize("issued_for, answered_with", [("SHA-256", "MD5"), ("MD5", "SHA-256")])
def test_nonce_answered_with_another_algorithm_is_refused(issued_for, answered_with):
    auth = make_auth()
    nonce = fresh_nonce(auth, algorithm=issued_for)
    # a response that is right for that nonce, password and algorithm: still not accepted
    request = publish(authorization("alice", "secret", nonce, algorithm=answered_with))
    result = auth.authenticate(request, NOW)
    assert challenged(result, stale=False)
    assert result.reason == "nonce issued for another algorithm"
    # the refusal used up nothing: the nonce still works with its own algorithm
    request = publish(authorization("alice", "secret", nonce, algorithm=issued_for))
    assert auth.authenticate(request, NOW) == Authenticated("alice", issued_for)


def test_sha256_nonce_answered_without_algorithm_is_refused():
    # no algorithm parameter means MD5 (RFC 7616 3.4): not what the nonce was issued for
    auth = make_auth()
    header = authorization("alice", "secret", fresh_nonce(auth, algorithm="SHA-256"),
                           algorithm="MD5", send_algorithm=False)
    result = auth.authenticate(publish(header), NOW)
    assert challenged(result) and result.reason == "nonce issued for another algorithm"


def test_each_challenge_carries_a_nonce_for_its_own_algorithm():
    auth = make_auth()
    headers = auth.challenge(NOW)
    for _, value in headers:
        algorithm = re.search(r"algorithm=([\w-]+)", value).group(1)
        nonce = re.search(r'nonce="([^"]*)"', value).group(1)
        other = make_auth()  # another node or a restart with the same secret
        request = publish(authorization("alice", "secret", nonce, algorithm=algorithm))
        assert other.authenticate(request, NOW + 1) == Authenticated("alice", algorithm)


def test_new_nonce_needs_a_supported_algorithm():
    auth = make_auth()
    assert auth.new_nonce(NOW, "sha-256") != auth.new_nonce(NOW, "MD5")
    with pytest.raises(ValueError):
        auth.new_nonce(NOW, "SHA-512-256")


def test_nonce_signed_without_an_algorithm_is_not_ours():
    # how nonces were signed before they were bound to an algorithm: refused after an upgrade
    # (the client gets a plain challenge and answers it with a new nonce)
    auth = make_auth()
    payload = struct.pack(">Q", int(NOW * 1000)) + b"\x01" * 12
    tag = hmac.new(auth._nonce_key, payload, hashlib.sha256).digest()[:16]
    old = base64.urlsafe_b64encode(payload + tag).decode("ascii")
    for algorithm in ("SHA-256", "MD5"):
        request = publish(authorization("alice", "secret", old, algorithm=algorithm))
        result = auth.authenticate(request, NOW)
        assert challenged(result) and result.reason == "nonce not issued by us"


# ---- nonce-count replay protection -----------------------------------------------------------

def test_replayed_nonce_count_is_refused_and_increasing_counts_accepted():
    auth = make_auth()
    nonce = fresh_nonce(auth)

    def attempt(nc: str, t: float = NOW):
        return auth.authenticate(publish(authorization("alice", "secret", nonce, nc=nc)), t)

    assert isinstance(attempt("00000001"), Authenticated)
    result = attempt("00000001", NOW + 1)
    assert challenged(result, stale=True) and result.reason == "nonce-count replayed"
    assert isinstance(attempt("00000002", NOW + 2), Authenticated)
    assert isinstance(attempt("0000000A", NOW + 3), Authenticated)   # hex, upper case ok
    assert challenged(attempt("00000009", NOW + 4), stale=True)      # lower than seen
    assert challenged(attempt("0000000a", NOW + 5), stale=True)      # same count, other case
    assert isinstance(attempt("0000000b", NOW + 6), Authenticated)


def test_nonce_count_zero_is_never_accepted():
    auth = make_auth()
    header = authorization("alice", "secret", fresh_nonce(auth), nc="00000000")
    assert challenged(auth.authenticate(publish(header), NOW), stale=True)


def test_counts_are_per_nonce():
    auth = make_auth()
    first, second = fresh_nonce(auth), fresh_nonce(auth)
    for nonce in (first, second):
        header = authorization("alice", "secret", nonce)
        assert isinstance(auth.authenticate(publish(header), NOW), Authenticated)


def test_bounded_memory_never_reopens_a_replay():
    auth = make_auth(max_nonces=2)
    issued = [fresh_nonce(auth, NOW + i) for i in range(4)]
    requests = [publish(authorization("alice", "secret", n)) for n in issued]
    for request in requests[:3]:                # the third evicts the first
        assert isinstance(auth.authenticate(request, NOW + 10), Authenticated)
    assert len(auth._counts) == 2
    result = auth.authenticate(requests[0], NOW + 11)
    assert challenged(result, stale=True)       # forgotten, but not replayable
    # a never-used nonce issued no later than the evicted one is refused too (client retries)
    older = fresh_nonce(auth, NOW - 1)
    result = auth.authenticate(publish(authorization("alice", "secret", older)), NOW + 11)
    assert challenged(result, stale=True)
    # newer nonces are unaffected
    assert isinstance(auth.authenticate(requests[3], NOW + 11), Authenticated)


def test_reject_nonces_before_start():
    old = fresh_nonce(make_auth(), NOW - 5)
    auth = make_auth(reject_nonces_before=NOW)
    request = publish(authorization("alice", "secret", old))
    assert challenged(auth.authenticate(request, NOW), stale=True)
    assert isinstance(auth.authenticate(
        publish(authorization("alice", "secret", fresh_nonce(auth, NOW))), NOW), Authenticated)


# ---- refused: 400 / 403 ----------------------------------------------------------------------

def test_wrong_digest_uri_is_bad_request():
    auth = make_auth()
    for uri_sent in ("sip:bob@example.com", "sip:example.com", "sip:alice@example.com:5060",
                     "sips:alice@example.com", "sip:alice@example.com;transport=tcp",
                     "not a uri"):
        header = authorization("alice", "secret", fresh_nonce(auth), uri=uri_sent)
        result = auth.authenticate(publish(header), NOW)
        assert isinstance(result, BadRequest) and result.status == 400, uri_sent


def test_missing_qop_is_forbidden():
    auth = make_auth()
    nonce = fresh_nonce(auth)
    ha1_hex = H("SHA-256", f"alice:{REALM}:secret")
    rfc2069 = H("SHA-256", f"{ha1_hex}:{nonce}:{H('SHA-256', f'PUBLISH:{URI}')}")
    header = authorization("alice", "secret", nonce, qop=None, response=rfc2069)
    result = auth.authenticate(publish(header), NOW)
    assert isinstance(result, Forbidden) and result.status == 403 and "qop" in result.reason
    auth_int = authorization("alice", "secret", fresh_nonce(auth), qop="auth-int")
    assert isinstance(auth.authenticate(publish(auth_int), NOW), Forbidden)


GOOD = 'Digest username="alice", realm="example.com", nonce="n", uri="sip:alice@example.com", ' \
       'response="' + "0" * 64 + '", algorithm=SHA-256, qop=auth, nc=00000001, cnonce="c"'


@pytest.mark.parametrize("header", [
    'Digest username="alice, realm="example.com"',                      # unterminated quote
    'Digest username="alice" realm="example.com"',                      # missing comma
    'Digest username="alice",, realm="example.com"',                    # empty element
    'Digest username="alice", username="bob", realm="example.com"',     # repeated parameter
    'Digest username=, realm="example.com"',                            # empty value
    'Digest realm="example.com", =x',                                   # no name
    '"Digest" realm="example.com"',                                     # no scheme token
    GOOD.replace(', uri="sip:alice@example.com"', ""),                  # missing uri
    GOOD.replace(', nonce="n"', ""),                                    # missing nonce
    GOOD.replace('response="' + "0" * 64 + '"', 'response="' + "0" * 32 + '"'),  # wrong size
    GOOD.replace('response="' + "0" * 64 + '"', 'response="' + "z" * 64 + '"'),  # not hex
    GOOD.replace("nc=00000001", "nc=1"),                                # nc not 8LHEX
    GOOD.replace("nc=00000001", "nc=0000000g"),
    GOOD.replace(', cnonce="c"', ""),                                   # qop without cnonce
])
def test_bad_authorization_syntax(header):
    result = make_auth().authenticate(publish(header), NOW)
    assert isinstance(result, BadRequest) and result.status == 400, result
    assert "\n" not in result.reason


def test_parse_credentials_header():
    scheme, params = parse_credentials_header(
        'Digest  USERNAME = "a\\"b,c" ,realm="r",nc=00000001,\tqop="auth"')
    assert scheme == "Digest"
    assert params == {"username": 'a"b,c', "realm": "r", "nc": "00000001", "qop": "auth"}
    assert parse_credentials_header("Digest") == ("Digest", {})


# ---- credentials file ------------------------------------------------------------------------

def test_load_credentials(tmp_path):
    path = tmp_path / "users"
    path.write_text("\ufeff" + creds_text().replace("\n", "\r\n"), encoding="utf-8")
    creds = load_credentials(path)
    assert len(creds) == 5
    assert creds.realms == {"example.com", "other.example"}
    assert creds.users(REALM) == {"alice", "bob", 'o"dd, user'}
    assert creds.lookup("alice", REALM, "sha-256") == H("SHA-256", "alice:example.com:secret")
    assert creds.lookup("alice", REALM, "MD5") == H("MD5", "alice:example.com:secret")
    assert creds.lookup("bob", REALM, "SHA-256") is None
    assert creds.lookup("alice", "other.example", "MD5") is None
    assert "secret" not in repr(creds) and H("MD5", "alice:example.com:secret") not in repr(creds)


def test_uppercase_hex_is_accepted():
    digest = H("MD5", "u:r:p").upper()
    assert parse_credentials(f"u:r:md5:{digest}").lookup("u", "r", "MD5") == digest.lower()


MD5_HEX = "0" * 32
SHA_HEX = "0" * 64


@pytest.mark.parametrize("text, line, message", [
    (f"alice:example.com:{SHA_HEX}", 1, "4 fields"),
    (f"# c\nalice:example.com:SHA-256:x:{SHA_HEX}", 2, "got 5 fields"),
    (f"alice:example.com:SHA-1:{SHA_HEX}", 1, "unknown algorithm"),
    (f"alice:example.com:SHA-256:{'g' * 64}", 1, "not a hexadecimal"),
    (f"alice:example.com:SHA-256:{MD5_HEX}", 1, "must be 64 hex digits, got 32 (an MD5"),
    (f"alice:example.com:MD5:{SHA_HEX}", 1, "must be 32 hex digits"),
    (f"\n\nalice:example.com:MD5:{MD5_HEX}\nalice:example.com:md5:{MD5_HEX}", 4,
     "duplicate entry for user 'alice' realm 'example.com' MD5 (first on line 3)"),
    (f":example.com:MD5:{MD5_HEX}", 1, "empty username"),
    (f"alice::MD5:{MD5_HEX}", 1, "empty realm"),
    (f"alice :example.com:MD5:{MD5_HEX}", 1, "white space"),
    (f"al\x01ice:example.com:MD5:{MD5_HEX}", 1, "control character"),
])
def test_credentials_errors(tmp_path, text, line, message):
    path = tmp_path / "users"
    path.write_text(text, encoding="utf-8")
    with pytest.raises(CredentialsError) as info:
        load_credentials(path)
    text = str(info.value)
    assert text.startswith(f"{path}:{line}: ") and message in text and "\n" not in text
    assert SHA_HEX not in text


def test_credentials_file_errors(tmp_path):
    empty = tmp_path / "empty"
    empty.write_text("# nobody yet\n\n")
    with pytest.raises(CredentialsError, match="no credentials"):
        load_credentials(empty)
    with pytest.raises(CredentialsError, match="cannot read"):
        load_credentials(tmp_path / "missing")
    binary = tmp_path / "binary"
    binary.write_bytes(b"# ok\n\xff\xfe\n")
    with pytest.raises(CredentialsError, match=r"binary:2: not UTF-8"):
        load_credentials(binary)


def test_authenticator_arguments():
    creds = parse_credentials(creds_text())
    with pytest.raises(ValueError):
        DigestAuthenticator(creds, REALM, algorithms=("SHA-1",))
    with pytest.raises(ValueError):
        DigestAuthenticator(creds, REALM, algorithms=())
    with pytest.raises(ValueError):
        DigestAuthenticator(creds, REALM, secret=b"short")
    with pytest.raises(ValueError):
        DigestAuthenticator(creds, "")
    with pytest.raises(ValueError):
        DigestAuthenticator(creds, REALM, nonce_lifetime=0)
    assert DigestAuthenticator(creds, REALM).opaque != DigestAuthenticator(creds, REALM).opaque


# ---- authorization policy --------------------------------------------------------------------

def test_own_aor_rule():
    assert is_own_aor("alice", "sip:alice@example.com", "example.com")
    assert is_own_aor("alice", "sips:alice@EXAMPLE.com", "Example.COM")
    assert is_own_aor("alice", "sip:%61lice@example.com", "example.com")
    assert is_own_aor("alice smith", "sip:alice%20smith@example.com", "example.com")
    assert not is_own_aor("alice", "sip:Alice@example.com", "example.com")
    assert not is_own_aor("alice", "sip:alice@other.example", "example.com")
    assert not is_own_aor("alice", "sip:example.com", "example.com")
    assert not is_own_aor("alice", "tel:+15551234", "example.com")
    assert not is_own_aor("alice", "not a uri", "example.com")


def test_default_policy_allows_only_own_aor():
    policy = Policy()
    assert policy.allows("alice", "sip:alice@example.com", REALM)
    assert not policy.allows("alice", "sip:bob@example.com", REALM)


POLICY_TOML = """
# user -> extra resources (AORs or patterns) they may publish for
[users]
alice = ["sip:alice@example.com", "sip:bob@example.com;transport=tcp", "pres:Team@Example.com"]
gateway = ["sip:*@example.com"]   # fnmatch-style wildcard in the user part
"sales.desk" = ["sips:sales-?@example.com", "sip:[0-9]*@pbx.example"]
"""


@pytest.fixture
def policy(tmp_path) -> Policy:
    path = tmp_path / "policy.toml"
    path.write_text(POLICY_TOML)
    return load_policy(path)


def test_policy_listed_aors(policy):
    assert policy.allows("alice", "sip:bob@example.com", REALM)
    assert policy.allows("alice", "sips:bob@EXAMPLE.COM", REALM)   # sip/sips interchangeable
    assert policy.allows("alice", "pres:team@example.com", REALM)
    assert not policy.allows("alice", "sip:carol@example.com", REALM)
    assert not policy.allows("alice", "sip:Bob@example.com", REALM)
    assert not policy.allows("bob", "sip:alice@example.com", REALM)
    assert policy.allows("bob", "sip:bob@example.com", REALM)       # own AOR still
    assert not policy.allows("alice", "garbage", REALM)


def test_policy_wildcards(policy):
    assert policy.allows("gateway", "sip:anyone@example.com", REALM)
    assert policy.allows("gateway", "sips:x@example.com", REALM)
    assert not policy.allows("gateway", "sip:anyone@other.example", REALM)
    assert not policy.allows("gateway", "sip:example.com", REALM)
    assert policy.allows("sales.desk", "sip:sales-1@example.com", REALM)
    assert not policy.allows("sales.desk", "sip:sales-12@example.com", REALM)
    assert policy.allows("sales.desk", "sip:5551234@pbx.example", REALM)
    assert not policy.allows("sales.desk", "sip:x5551234@pbx.example", REALM)
    assert not policy.allows("gateway", "tel:+15551234", REALM)


def test_empty_policy_file(tmp_path):
    path = tmp_path / "p.toml"
    path.write_text("# nothing\n")
    assert not load_policy(path).allows("alice", "sip:bob@example.com", REALM)


@pytest.mark.parametrize("text, message", [
    ("[users\nalice = 1", "invalid TOML"),
    ("[groups]\na = []", "unknown key 'groups'"),
    ("users = 3", "'users' must be a table"),
    ('[users]\nalice = "sip:bob@example.com"', "users.alice: expected a list"),
    ("[users]\nalice = [3]", "users.alice[0]: expected a string"),
    ('[users]\nalice = ["sip:*@*.example.com"]', "wildcards are allowed only in the user part"),
    ('[users]\nalice = ["*"]', "a pattern must be"),
    ('[users]\nalice = ["tel:*"]', "a pattern must be"),
    ('[users]\nalice = ["sip:bob@example.com", "not a uri"]', "users.alice[1]: 'not a uri'"),
    ('[users]\nalice = ["sip:*@example.com:5060"]', "only a host"),
])
def test_policy_errors(tmp_path, text, message):
    path = tmp_path / "p.toml"
    path.write_text(text)
    with pytest.raises(PolicyError) as info:
        load_policy(path)
    assert str(info.value).startswith(f"{path}: ") and message in str(info.value)
    assert "\n" not in str(info.value)


def test_policy_file_missing(tmp_path):
    with pytest.raises(PolicyError, match="cannot read"):
        load_policy(tmp_path / "nope.toml")


# ---- the two together, as the service uses them -----------------------------------------------

def test_authenticate_then_authorize(policy):
    auth = make_auth()
    for aor, allowed in (("sip:alice@example.com", True), ("sip:bob@example.com", True),
                         ("sip:carol@example.com", False)):
        nonce = fresh_nonce(auth)
        header = authorization("alice", "secret", nonce, uri=aor)
        result = auth.authenticate(publish(header, uri=aor), NOW)
        assert isinstance(result, Authenticated)
        assert policy.allows(result.username, aor, auth.realm) is allowed
