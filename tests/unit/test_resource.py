"""The resource is the Request-URI's address of record: scheme, user, host."""

import pytest

from domain import InvalidResource, address_of_record


@pytest.mark.parametrize("uri, aor", [
    ("sip:alice@example.com", "sip:alice@example.com"),
    # scheme and host are case-insensitive; the user part is not
    ("SIP:Alice@EXAMPLE.COM", "sip:Alice@example.com"),
    ("sips:Bob@Example.Org", "sips:Bob@example.org"),
    # port, URI parameters and headers are not part of the AOR
    ("sip:alice@example.com:5070", "sip:alice@example.com"),
    ("sip:alice@example.com;transport=tcp;lr", "sip:alice@example.com"),
    ("sip:alice@example.com:5060;transport=udp?subject=hi&priority=urgent",
     "sip:alice@example.com"),
    ("sip:alice@example.com?to=bob%40example.org", "sip:alice@example.com"),
    # a password is not part of the AOR
    ("sip:alice:secret@example.com", "sip:alice@example.com"),
    # name-addr brackets and surrounding blanks
    ("  <sip:alice@Example.com:5060>  ", "sip:alice@example.com"),
    # %-escapes of unreserved characters are decoded so equivalent URIs match
    ("sip:%61lice@example.com", "sip:alice@example.com"),
    # IP hosts, with and without a port
    ("sip:alice@192.0.2.1:5060", "sip:alice@192.0.2.1"),
    ("sip:alice@[2001:DB8::1]:5060;transport=tcp", "sip:alice@[2001:db8::1]"),
    # a fully qualified host with its trailing dot is the same host
    ("sip:alice@example.com.", "sip:alice@example.com"),
    # a URI without a user part names the host itself
    ("sip:Example.COM:5060;transport=tls", "sip:example.com"),
])
def test_address_of_record(uri, aor):
    assert address_of_record(uri) == aor


def test_user_part_case_is_kept_so_different_users_stay_different():
    assert address_of_record("sip:Alice@example.com") != address_of_record("sip:alice@example.com")


def test_equivalent_spellings_name_one_resource():
    spellings = ["sip:alice@example.com", "sip:alice@EXAMPLE.com:5060",
                 "SIP:alice@example.com;transport=tcp", "<sip:alice@Example.Com>",
                 "sip:alice@example.com?subject=x"]
    assert {address_of_record(s) for s in spellings} == {"sip:alice@example.com"}


def test_address_of_record_is_idempotent():
    aor = address_of_record("SIP:Alice@EXAMPLE.com:5070;transport=tcp")
    assert address_of_record(aor) == aor


@pytest.mark.parametrize("uri", ["", "alice", "alice@example.com", "sip:", ":alice@x",
                                 "sip:alice@", "sip:alice@:5060", "1sip:alice@example.com",
                                 "sip:alice@[2001:db8::1"])
def test_not_a_resource(uri):
    with pytest.raises(InvalidResource):
        address_of_record(uri)
