"""Who may watch (SUBSCRIBE to) whom: the `[watchers]` table of the authorization policy
(sip_adapter.protocol.authorization, Policy.may_watch)."""

from __future__ import annotations

from pathlib import Path

import pytest

from sip_adapter.protocol.authorization import EVERY_USER, Policy, PolicyError, load_policy

REALM = "example.com"

BOTH_TABLES = """
# user -> extra resources (AORs or patterns) they may publish for
[users]
alice = ["sip:carol@example.com"]
gateway = ["sip:*@example.com"]

# user -> resources (AORs or patterns) they may watch, besides their own
[watchers]
alice = ["sip:bob@example.com;transport=tcp", "sips:sales-?@Example.COM", "pres:Team@Example.com"]
"alice.smith" = ["sip:[0-9]*@pbx.example"]
"*" = ["sip:lobby@example.com"]
"""


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "policy.toml"
    path.write_text(text)
    return path


@pytest.fixture
def policy(tmp_path: Path) -> Policy:
    return load_policy(write(tmp_path, BOTH_TABLES))


# ---- no [watchers] table: everyone may watch everything ---------------------------------------

def test_no_policy_allows_every_watcher() -> None:
    policy = Policy()
    assert not policy.restricts_watching
    assert policy.may_watch("alice", "sip:bob@example.com", REALM)
    assert policy.may_watch("alice", "sips:anyone@other.example", REALM)
    assert policy.may_watch("mallory", "tel:+15551234", REALM)


@pytest.mark.parametrize("text", ["", "# nothing\n", '[users]\nalice = ["sip:bob@example.com"]'])
def test_file_without_watchers_table_allows_every_watcher(tmp_path: Path, text: str) -> None:
    policy = load_policy(write(tmp_path, text))
    assert not policy.restricts_watching
    assert policy.may_watch("carol", "sip:alice@example.com", REALM)
    assert policy.may_watch("carol", "pres:team@example.com", REALM)


# ---- with a [watchers] table -------------------------------------------------------------------

def test_empty_watchers_table_allows_own_aor_only(tmp_path: Path) -> None:
    policy = load_policy(write(tmp_path, "[watchers]\n"))
    assert policy.restricts_watching
    assert policy.may_watch("alice", "sip:alice@example.com", REALM)
    assert not policy.may_watch("alice", "sip:bob@example.com", REALM)


def test_own_aor(policy: Policy) -> None:
    assert policy.may_watch("bob", "sip:bob@example.com", REALM)
    assert policy.may_watch("bob", "sips:bob@EXAMPLE.com", "Example.COM")
    assert policy.may_watch("alice smith", "sip:alice%20smith@example.com", REALM)
    assert not policy.may_watch("bob", "sip:Bob@example.com", REALM)          # user case-sensitive
    assert not policy.may_watch("bob", "sip:bob@other.example", REALM)       # other realm


def test_exact_entry(policy: Policy) -> None:
    assert policy.may_watch("alice", "sip:bob@example.com", REALM)           # ;transport dropped
    assert policy.may_watch("alice", "sip:bob@EXAMPLE.COM:5061", REALM)
    assert policy.may_watch("alice", "sip:%62ob@example.com", REALM)         # escapes normalised
    assert policy.may_watch("alice", "pres:team@example.com", REALM)         # other scheme: text
    assert not policy.may_watch("alice", "sip:Bob@example.com", REALM)
    assert not policy.may_watch("alice", "sip:team@example.com", REALM)      # pres: only


def test_pattern(policy: Policy) -> None:
    assert policy.may_watch("alice", "sip:sales-1@example.com", REALM)
    assert not policy.may_watch("alice", "sip:sales-12@example.com", REALM)
    assert not policy.may_watch("alice", "sip:sales-1@other.example", REALM)
    assert policy.may_watch("alice.smith", "sip:5551234@pbx.example", REALM)
    assert not policy.may_watch("alice.smith", "sip:x5551234@pbx.example", REALM)
    assert not policy.may_watch("alice.smith", "sip:pbx.example", REALM)     # no user part


def test_every_user_entries(policy: Policy) -> None:
    for user in ("alice", "alice.smith", "bob", "nobody-listed"):
        assert policy.may_watch(user, "sip:lobby@example.com", REALM), user
        assert policy.may_watch(user, "sips:lobby@example.com", REALM), user
    assert policy.watch_grants(EVERY_USER) == ("sip:lobby@example.com",)
    # the "*" entries are not a wildcard over resources
    assert not policy.may_watch("bob", "sip:carol@example.com", REALM)


def test_sip_and_sips_interchangeable(policy: Policy) -> None:
    # entry sip:, request sips: ...
    assert policy.may_watch("alice", "sips:bob@example.com", REALM)
    # ... entry sips: (a pattern), request sip:
    assert policy.may_watch("alice", "sip:sales-7@example.com", REALM)
    assert policy.may_watch("alice", "sips:sales-7@example.com", REALM)


def test_refused_otherwise(policy: Policy) -> None:
    assert not policy.may_watch("bob", "sip:alice@example.com", REALM)
    assert not policy.may_watch("alice", "sip:carol@example.com", REALM)     # [users]: no watching
    assert not policy.may_watch("gateway", "sip:anyone@example.com", REALM)  # nor its patterns
    assert not policy.may_watch("alice", "tel:+15551234", REALM)
    assert not policy.may_watch("alice", "not a uri", REALM)
    assert not policy.may_watch("alice", "", REALM)


def test_file_with_both_tables(policy: Policy) -> None:
    # [users] still governs publishing, untouched by [watchers]
    assert policy.allows("alice", "sip:carol@example.com", REALM)
    assert not policy.allows("alice", "sip:bob@example.com", REALM)
    assert policy.allows("gateway", "sip:anyone@example.com", REALM)
    assert not policy.allows("bob", "sip:lobby@example.com", REALM)
    assert policy.grants("alice") == ("sip:carol@example.com",)
    assert policy.watch_grants("alice") == ("pres:team@example.com", "sip:bob@example.com",
                                            "sip:sales-?@example.com")
    assert policy.restricts_watching
    assert len(policy) == 2
    assert repr(policy) == "<Policy 2 users, 3 watchers>"


def test_policy_is_truthy_even_without_users(tmp_path: Path) -> None:
    # `config.policy or Policy()` must not trade a restrictive [watchers] table for the default
    policy = load_policy(write(tmp_path, "[watchers]\n"))
    assert len(policy) == 0
    assert (policy or Policy()) is policy


def test_constructor() -> None:
    policy = Policy({"alice": ["sip:carol@example.com"]},
                    watchers={"*": ["sip:*@example.com"], "bob": ["pres:x@example.com"]})
    assert policy.may_watch("zed", "sip:anyone@example.com", REALM)
    assert not policy.may_watch("zed", "pres:x@example.com", REALM)
    assert policy.may_watch("bob", "pres:x@example.com", REALM)
    assert Policy(watchers={}).restricts_watching
    with pytest.raises(PolicyError, match=r"^watchers\.bob\[0\]: 'nope': not a valid URI$"):
        Policy(watchers={"bob": ["nope"]})
    with pytest.raises(PolicyError, match="^watchers.bob: expected a list of AORs, got a string$"):
        Policy(watchers={"bob": "sip:x@example.com"})


# ---- errors -------------------------------------------------------------------------------------

@pytest.mark.parametrize("text, message", [
    ("watchers = 3", "'watchers' must be a table"),
    ('watchers = ["sip:bob@example.com"]', "'watchers' must be a table"),
    ('[watchers]\nalice = "sip:bob@example.com"', "watchers.alice: expected a list of AORs"),
    ('[watchers]\n"*" = {a = 1}', 'watchers."*": expected a list of AORs, got dict'),
    ("[watchers]\nalice = [3]", "watchers.alice[0]: expected a string, got int"),
    ('[watchers]\nalice = ["sip:*@*.example.com"]', "wildcards are allowed only in the user part"),
    ('[watchers]\nalice = ["*"]', "watchers.alice[0]: '*': a pattern must be"),
    ('[watchers]\n"*" = ["tel:*"]', "watchers.\"*\"[0]: 'tel:*': a pattern must be"),
    ('[watchers]\n"a.b" = ["sip:bob@example.com", "not a uri"]',
     "watchers.\"a.b\"[1]: 'not a uri': not a valid URI"),
    ('[watchers]\nalice = ["sip:*@example.com:5060"]', "only a host"),
    ('[watchers]\nalice = ["sip:*@"]', "watchers.alice[0]: 'sip:*@': a pattern must be"),
    ('[users]\n[watchers]\n[groups]\na = []', "unknown key 'groups' (expected only [users] and "
                                              "[watchers])"),
    ('[users]\nalice = ["sip:bob@example.com"]\n[watchers]\nbob = ["bad"]',
     "watchers.bob[0]: 'bad': not a valid URI"),
    ('[users]\nalice = ["bad"]\n[watchers]\nbob = ["sip:bob@example.com"]',
     "users.alice[0]: 'bad': not a valid URI"),
])
def test_watchers_errors(tmp_path: Path, text: str, message: str) -> None:
    path = write(tmp_path, text)
    with pytest.raises(PolicyError) as info:
        load_policy(path)
    assert str(info.value).startswith(f"{path}: "), str(info.value)
    assert message in str(info.value), str(info.value)
    assert "\n" not in str(info.value)
