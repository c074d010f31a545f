"""Non-INVITE server transactions: RFC 3261 17.2.2 (states, Timer J) and 17.2.3 (matching)."""

from __future__ import annotations

import pytest

from sip_adapter.parser import parse_message
from sip_adapter.transaction import (
    ABSORB, NEW, RETRANSMIT, Absorb, New, Retransmit, TransactionTable, transaction_key,
)

SRC = ("192.0.2.10", 5060)


def request(method="PUBLISH", branch="z9hG4bKabc", sent_by="192.0.2.10:5060", cseq=1,
            cseq_method=None, uri="sip:alice@example.com", to_tag=None, from_tag="f1",
            call_id="cid@example.com", via_extra=""):
    to = "<sip:alice@example.com>" + (f";tag={to_tag}" if to_tag else "")
    branch_param = f";branch={branch}" if branch is not None else ""
    data = (
        f"{method} {uri} SIP/2.0\r\n"
        f"Via: SIP/2.0/UDP {sent_by}{branch_param}{via_extra}\r\n"
        f"From: <sip:alice@example.com>;tag={from_tag}\r\nTo: {to}\r\n"
        f"Call-ID: {call_id}\r\nCSeq: {cseq} {cseq_method or method}\r\nContent-Length: 0\r\n\r\n"
    )
    return parse_message(data.encode())


def new_key(decision):
    assert isinstance(decision, New), decision
    return decision.key


def test_decision_names():
    assert NEW is New and RETRANSMIT is Retransmit and isinstance(ABSORB, Absorb)


def test_new_then_absorbed_while_processing_then_replayed():
    table = TransactionTable()
    key = new_key(table.on_request(request(), SRC, "UDP", now=0.0))
    assert table.on_request(request(), SRC, "UDP", now=0.5) is ABSORB
    table.on_response(key, b"SIP/2.0 200 OK\r\n...", now=1.0)
    first = table.on_request(request(), SRC, "UDP", now=1.5)
    second = table.on_request(request(), SRC, "UDP", now=2.0)
    assert first == second == Retransmit(b"SIP/2.0 200 OK\r\n...")
    assert len(table) == 1


def test_provisional_is_replayed_while_proceeding():
    table = TransactionTable()
    key = new_key(table.on_request(request(), SRC, "UDP", 0.0))
    table.on_provisional(key, b"SIP/2.0 100 Trying\r\n")
    assert table.on_request(request(), SRC, "UDP", 0.1) == Retransmit(b"SIP/2.0 100 Trying\r\n")
    table.on_response(key, b"final", 0.2)
    assert table.on_request(request(), SRC, "UDP", 0.3) == Retransmit(b"final")
    table.on_provisional(key, b"late provisional")  # ignored once completed
    assert table.on_request(request(), SRC, "UDP", 0.4) == Retransmit(b"final")


def test_only_the_first_final_response_is_kept():
    table = TransactionTable()
    key = new_key(table.on_request(request(), SRC, "UDP", 0.0))
    table.on_response(key, b"first", 0.0)
    table.on_response(key, b"second", 0.1)
    assert table.on_request(request(), SRC, "UDP", 0.2) == Retransmit(b"first")


def test_new_branch_is_a_new_transaction():
    table = TransactionTable()
    k1 = new_key(table.on_request(request(branch="z9hG4bK1"), SRC, "UDP", 0.0))
    k2 = new_key(table.on_request(request(branch="z9hG4bK2", cseq=2), SRC, "UDP", 0.0))
    assert k1 != k2 and len(table) == 2


def test_same_branch_from_another_sent_by_or_method_is_another_transaction():
    table = TransactionTable()
    new_key(table.on_request(request(), SRC, "UDP", 0.0))
    new_key(table.on_request(request(sent_by="192.0.2.11:5060"), SRC, "UDP", 0.0))
    new_key(table.on_request(request(sent_by="192.0.2.10"), SRC, "UDP", 0.0))
    new_key(table.on_request(request(method="OPTIONS"), SRC, "UDP", 0.0))
    assert len(table) == 4


def test_sent_by_host_compares_case_insensitively_and_branch_exactly():
    table = TransactionTable()
    key = new_key(table.on_request(request(sent_by="Host.Example.com:5060"), SRC, "UDP", 0.0))
    table.on_response(key, b"r", 0.0)
    assert table.on_request(request(sent_by="host.example.COM:5060"), SRC, "UDP", 0.1) == Retransmit(b"r")
    new_key(table.on_request(request(branch="z9hG4bKABC"), SRC, "UDP", 0.1))


def test_timer_j_on_unreliable_transport():
    table = TransactionTable(t1=0.5)
    key = new_key(table.on_request(request(), SRC, "UDP", now=10.0))
    assert table.next_deadline() == 10.0 + 32.0  # proceeding timeout, 64*T1
    table.on_response(key, b"resp", now=11.0)
    assert table.next_deadline() == 11.0 + 32.0  # Timer J
    assert table.expire(now=42.999) == 0 and len(table) == 1
    assert table.on_request(request(), SRC, "UDP", now=42.9) == Retransmit(b"resp")
    assert table.expire(now=43.0) == 1 and len(table) == 0
    assert table.next_deadline() is None
    # after Timer J the same request is new again
    new_key(table.on_request(request(), SRC, "UDP", now=44.0))


def test_timer_j_scales_with_t1():
    table = TransactionTable(t1=0.1)
    key = new_key(table.on_request(request(), SRC, "UDP", 0.0))
    table.on_response(key, b"r", 1.0)
    assert table.next_deadline() == pytest.approx(1.0 + 6.4)


@pytest.mark.parametrize("transport", ["TCP", "tls", "SCTP", "WS", "WSS"])
def test_reliable_transport_drops_at_once_when_asked(transport):
    table = TransactionTable(linger_reliable=False)
    key = new_key(table.on_request(request(), SRC, transport, 0.0))
    assert table.on_request(request(), SRC, transport, 0.1) is ABSORB
    table.on_response(key, b"resp", 0.2)
    assert len(table) == 0 and table.next_deadline() is None


@pytest.mark.parametrize("transport", ["TCP", "tls"])
def test_reliable_transport_lingers_by_default_so_a_resend_is_answered(transport):
    table = TransactionTable(t1=0.5)
    key = new_key(table.on_request(request(), SRC, transport, 0.0))
    table.on_response(key, b"resp", 0.2)
    assert table.on_request(request(), SRC, transport, 5.0) == Retransmit(b"resp")
    assert table.expire(0.2 + 32.0) == 1 and len(table) == 0


def test_proceeding_entries_time_out():
    table = TransactionTable(t1=0.5)
    new_key(table.on_request(request(), SRC, "UDP", 0.0))
    assert table.expire(31.9) == 0
    assert table.expire(32.0) == 1 and len(table) == 0


def test_late_response_for_a_dropped_transaction_is_still_stored():
    table = TransactionTable(t1=0.5)
    key = new_key(table.on_request(request(), SRC, "UDP", 0.0))
    table.expire(40.0)
    table.on_response(key, b"late", 40.0)
    assert table.on_request(request(), SRC, "UDP", 41.0) == Retransmit(b"late")


def test_ack_is_always_absorbed():
    table = TransactionTable()
    assert table.on_request(request(method="ACK"), SRC, "UDP", 0.0) is ABSORB
    key = new_key(table.on_request(request(method="INVITE"), SRC, "UDP", 0.0))
    assert key[-1] == "INVITE"
    table.on_response(key, b"SIP/2.0 405 Method Not Allowed", 0.1)
    ack = request(method="ACK")
    assert transaction_key(ack) == key  # ACK matches the INVITE (17.2.3)
    assert table.on_request(ack, SRC, "UDP", 0.2) is ABSORB
    assert len(table) == 1


def test_cancel_is_its_own_transaction_and_needs_a_target():
    table = TransactionTable()
    assert table.on_request(request(method="CANCEL"), SRC, "UDP", 0.0) is ABSORB
    assert len(table) == 0
    target = new_key(table.on_request(request(), SRC, "UDP", 0.0))
    cancel = new_key(table.on_request(request(method="CANCEL"), SRC, "UDP", 0.1))
    assert cancel != target and cancel[:-1] == target[:-1] and cancel[-1] == "CANCEL"
    table.on_response(cancel, b"SIP/2.0 200 OK (cancel)", 0.2)
    assert table.on_request(request(method="CANCEL"), SRC, "UDP", 0.3) == Retransmit(b"SIP/2.0 200 OK (cancel)")
    assert table.on_request(request(), SRC, "UDP", 0.3) is ABSORB  # the PUBLISH is unaffected


# --- RFC 2543 matching (no magic cookie) -------------------------------------------------------


@pytest.mark.parametrize("branch", [None, "z9hG4bK", "abc123", "Z9HG4BKabc"])
def test_rfc2543_keys_are_used_without_a_magic_cookie_branch(branch):
    assert transaction_key(request(branch=branch))[0] == "2543"
    assert transaction_key(request(branch="z9hG4bKx"))[0] == "3261"


def test_rfc2543_matching():
    table = TransactionTable()
    base = dict(branch=None)
    key = new_key(table.on_request(request(**base), SRC, "UDP", 0.0))
    table.on_response(key, b"r2543", 0.1)
    assert table.on_request(request(**base), SRC, "UDP", 0.2) == Retransmit(b"r2543")
    for change in (dict(uri="sip:bob@example.com"), dict(to_tag="t9"), dict(from_tag="f9"),
                   dict(call_id="other@example.com"), dict(cseq=2),
                   dict(sent_by="192.0.2.99:5060"), dict(via_extra=";received=10.0.0.1")):
        assert isinstance(table.on_request(request(**base, **change), SRC, "UDP", 0.3), New), change


def test_rfc2543_cancel_matches_its_target():
    table = TransactionTable()
    new_key(table.on_request(request(branch="old1"), SRC, "UDP", 0.0))
    new_key(table.on_request(request(method="CANCEL", branch="old1", cseq_method="CANCEL"), SRC, "UDP", 0.1))
    assert table.on_request(request(method="CANCEL", branch="old2"), SRC, "UDP", 0.1) is ABSORB


# --- bound -----------------------------------------------------------------------------------------


def test_table_is_bounded_and_evicts_oldest_completed_first():
    table = TransactionTable(max_entries=3)
    k1 = new_key(table.on_request(request(branch="z9hG4bK1"), SRC, "UDP", 0.0))
    k2 = new_key(table.on_request(request(branch="z9hG4bK2"), SRC, "UDP", 0.0))
    k3 = new_key(table.on_request(request(branch="z9hG4bK3"), SRC, "UDP", 0.0))
    table.on_response(k2, b"r2", 0.1)
    table.on_response(k3, b"r3", 0.2)
    new_key(table.on_request(request(branch="z9hG4bK4"), SRC, "UDP", 0.3))
    assert len(table) == 3
    # k2 (oldest completed) went; k1 (still in progress) and k3 stayed
    assert table.on_request(request(branch="z9hG4bK1"), SRC, "UDP", 0.4) is ABSORB
    assert table.on_request(request(branch="z9hG4bK3"), SRC, "UDP", 0.4) == Retransmit(b"r3")
    assert isinstance(table.on_request(request(branch="z9hG4bK2"), SRC, "UDP", 0.4), New)
    assert len(table) == 3
    del k1


def test_flood_cannot_grow_the_table():
    table = TransactionTable(max_entries=100)
    for i in range(5000):
        key = new_key(table.on_request(request(branch=f"z9hG4bKf{i}"), SRC, "UDP", i * 0.001))
        if i % 2:
            table.on_response(key, b"r", i * 0.001)
        assert len(table) <= 100
    assert len(table) == 100
    table.expire(1e9)
    assert len(table) == 0


def test_invalid_max_entries():
    with pytest.raises(ValueError):
        TransactionTable(max_entries=0)
