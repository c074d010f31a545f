"""Non-INVITE client transactions (sip_adapter/protocol/client_transactions.py, RFC 3261
section 17.1.2): Timer E's schedule, Timer F's 408, completion exactly once, the bounds."""

from __future__ import annotations

import random
from typing import TypeVar

import pytest

from sip_adapter.protocol.client_transactions import (
    ENTRY_OVERHEAD, ClientTransactions, Completed,
)

C = TypeVar("C")
REQUEST = b"NOTIFY sip:bob@192.0.2.7 SIP/2.0\r\nContent-Length: 0\r\n\r\n"


def run(table: ClientTransactions[C],
        until: float) -> tuple[list[float], list[tuple[float, Completed[C]]]]:
    """Drive the table as an event loop would: due() at each next_deadline() up to `until`.
    Returns the times of retransmissions and the completions with their times."""
    sent: list[float] = []
    completed: list[tuple[float, Completed[C]]] = []
    while True:
        deadline = table.next_deadline()
        if deadline is None or deadline > until:
            return sent, completed
        retransmit, timed_out = table.due(deadline)
        sent.extend(deadline for _ in retransmit)
        completed.extend((deadline, c) for c in timed_out)


def intervals(times: list[float], start: float = 0.0) -> list[float]:
    points = [start, *times]
    return [round(b - a, 9) for a, b in zip(points, points[1:])]


# --- Timers -----------------------------------------------------------------------------------


def test_timer_e_over_udp_doubles_up_to_t2():
    table: ClientTransactions[str] = ClientTransactions()
    assert table.start("z9hG4bKa", REQUEST, False, 0.0, "job")
    sent, completed = run(table, 31.9)
    assert intervals(sent)[:7] == [0.5, 1, 2, 4, 4, 4, 4]
    assert sent[:5] == [0.5, 1.5, 3.5, 7.5, 11.5]
    assert completed == []


def test_retransmissions_carry_the_bytes_and_context():
    table: ClientTransactions[str] = ClientTransactions()
    table.start("z9hG4bKa", REQUEST, False, 10.0, "job")
    assert table.due(10.49) == ([], [])
    assert table.due(10.5) == ([(REQUEST, "job")], [])
    assert table.due(10.5) == ([], [])  # once per firing


def test_no_timer_e_over_tcp():
    table: ClientTransactions[str] = ClientTransactions()
    table.start("z9hG4bKa", REQUEST, True, 0.0, "job")
    assert table.next_deadline() == 32.0
    sent, completed = run(table, 100.0)
    assert sent == []
    assert completed == [(32.0, Completed("job", 408))]


def test_timer_f_gives_408_at_32_seconds_over_udp():
    table: ClientTransactions[str] = ClientTransactions()
    table.start("z9hG4bKa", REQUEST, False, 100.0, "job")
    assert table.due(131.99)[1] == []
    retransmit, timed_out = table.due(132.0)
    assert timed_out == [Completed("job", 408)]
    assert len(table) == 0 and table.bytes_held == 0
    assert table.next_deadline() is None
    assert table.due(1000.0) == ([], [])  # 408 once; no retransmission after it


def test_the_full_udp_schedule_ends_with_timer_f():
    table: ClientTransactions[str] = ClientTransactions()
    table.start("z9hG4bKa", REQUEST, False, 0.0, "job")
    sent, completed = run(table, 1000.0)
    assert sent == [0.5, 1.5, 3.5, 7.5, 11.5, 15.5, 19.5, 23.5, 27.5, 31.5]
    assert completed == [(32.0, Completed("job", 408))]


def test_a_provisional_response_moves_timer_e_to_t2():
    table: ClientTransactions[str] = ClientTransactions()
    table.start("z9hG4bKa", REQUEST, False, 0.0, "job")
    assert table.due(0.5)[0] == [(REQUEST, "job")]  # next in 1 s (Trying)
    assert table.on_response("z9hG4bKa", "NOTIFY", 100, 0.7) is None
    assert table.next_deadline() == 1.5  # the running Timer E is kept ...
    table.due(1.5)
    assert table.next_deadline() == 5.5  # ... then reset to T2 each time
    table.due(5.5)
    assert table.next_deadline() == 9.5


def test_a_late_due_call_resets_timer_e_from_now():
    table: ClientTransactions[str] = ClientTransactions()
    table.start("z9hG4bKa", REQUEST, False, 0.0, "job")
    assert len(table.due(2.0)[0]) == 1  # one retransmission, not a burst
    assert table.next_deadline() == 3.0


def test_custom_t1_and_t2():
    table: ClientTransactions[str] = ClientTransactions(t1=0.1, t2=0.3)
    table.start("z9hG4bKa", REQUEST, False, 0.0, "job")
    sent, completed = run(table, 100.0)
    assert intervals(sent)[:5] == [0.1, 0.2, 0.3, 0.3, 0.3]
    assert completed == [(pytest.approx(6.4), Completed("job", 408))]


# --- Responses ---------------------------------------------------------------------------------


def test_a_final_response_completes_exactly_once():
    table: ClientTransactions[str] = ClientTransactions()
    table.start("z9hG4bKa", REQUEST, False, 0.0, "job")
    assert table.on_response("z9hG4bKa", "NOTIFY", 200, 0.1) == Completed("job", 200)
    assert len(table) == 0 and table.bytes_held == 0
    # a retransmitted final, or another one, matches nothing
    assert table.on_response("z9hG4bKa", "NOTIFY", 200, 0.2) is None
    assert table.on_response("z9hG4bKa", "NOTIFY", 481, 0.3) is None
    # and its timers are gone: no retransmission, no 408
    assert run(table, 1000.0) == ([], [])
    assert table.next_deadline() is None


@pytest.mark.parametrize("status", [202, 300, 408, 481, 489, 500, 503, 603])
def test_any_final_status_completes(status):
    table: ClientTransactions[str] = ClientTransactions()
    table.start("z9hG4bKa", REQUEST, True, 0.0, "job")
    assert table.on_response("z9hG4bKa", "NOTIFY", status, 1.0) == Completed("job", status)
    assert run(table, 100.0) == ([], [])


def test_a_final_after_provisionals_completes():
    table: ClientTransactions[str] = ClientTransactions()
    table.start("z9hG4bKa", REQUEST, False, 0.0, "job")
    assert table.on_response("z9hG4bKa", "NOTIFY", 100, 0.1) is None
    assert table.on_response("z9hG4bKa", "NOTIFY", 180, 0.2) is None
    assert len(table) == 1
    assert table.on_response("z9hG4bKa", "NOTIFY", 200, 0.3) == Completed("job", 200)


def test_a_response_to_another_branch_or_method_is_ignored():
    table: ClientTransactions[str] = ClientTransactions()
    table.start("z9hG4bKa", REQUEST, False, 0.0, "job")
    assert table.on_response("z9hG4bKb", "NOTIFY", 200, 0.1) is None
    assert table.on_response("z9hG4bKa", "SUBSCRIBE", 200, 0.1) is None
    assert len(table) == 1
    assert table.on_response("z9hG4bKa", "NOTIFY", 200, 0.1) == Completed("job", 200)


def test_a_response_after_timer_f_is_ignored():
    table: ClientTransactions[str] = ClientTransactions()
    table.start("z9hG4bKa", REQUEST, False, 0.0, "job")
    assert table.due(32.0)[1] == [Completed("job", 408)]
    assert table.on_response("z9hG4bKa", "NOTIFY", 200, 32.1) is None


def test_a_transport_error_completes_with_503_once():
    table: ClientTransactions[str] = ClientTransactions()
    table.start("z9hG4bKa", REQUEST, True, 0.0, "job")
    assert table.on_transport_error("z9hG4bKa") == Completed("job", 503)
    assert table.on_transport_error("z9hG4bKa") is None
    assert run(table, 100.0) == ([], [])


def test_out_of_range_statuses_are_refused():
    table: ClientTransactions[str] = ClientTransactions()
    table.start("z9hG4bKa", REQUEST, False, 0.0, "job")
    for status in (0, 99, 700):
        with pytest.raises(ValueError):
            table.on_response("z9hG4bKa", "NOTIFY", status, 0.1)


def test_start_refuses_a_duplicate_branch_and_invite():
    table: ClientTransactions[str] = ClientTransactions()
    table.start("z9hG4bKa", REQUEST, False, 0.0, "job")
    with pytest.raises(ValueError):
        table.start("z9hG4bKa", REQUEST, False, 0.0, "again")
    with pytest.raises(ValueError):
        table.start("z9hG4bKb", b"INVITE sip:x SIP/2.0\r\n\r\n", False, 0.0, "invite")
    with pytest.raises(ValueError):
        table.start("z9hG4bKc", b"garbage", False, 0.0, "garbage")
    assert len(table) == 1


def test_the_method_matched_is_the_request_lines():
    table: ClientTransactions[str] = ClientTransactions()
    table.start("z9hG4bKa", b"OPTIONS sip:x SIP/2.0\r\n\r\n", True, 0.0, "options")
    assert table.on_response("z9hG4bKa", "NOTIFY", 200, 0.1) is None
    assert table.on_response("z9hG4bKa", "OPTIONS", 200, 0.1) == Completed("options", 200)


# --- Bounds ------------------------------------------------------------------------------------


def test_the_table_refuses_past_max_entries():
    table: ClientTransactions[int] = ClientTransactions(max_entries=3)
    assert all(table.start(f"z9hG4bK{i}", REQUEST, False, 0.0, i) for i in range(3))
    assert not table.start("z9hG4bK3", REQUEST, False, 0.0, 3)
    assert len(table) == 3
    assert table.on_response("z9hG4bK3", "NOTIFY", 200, 0.1) is None  # nothing stored
    assert table.on_response("z9hG4bK0", "NOTIFY", 200, 0.1) == Completed(0, 200)
    assert table.start("z9hG4bK3", REQUEST, False, 0.2, 3)  # room again


def test_the_table_refuses_past_max_bytes():
    size = ENTRY_OVERHEAD + len(REQUEST) + len("z9hG4bK0")
    table: ClientTransactions[int] = ClientTransactions(max_bytes=2 * size + size // 2)
    assert table.start("z9hG4bK0", REQUEST, False, 0.0, 0)
    assert table.bytes_held == size
    assert table.start("z9hG4bK1", REQUEST, False, 0.0, 1)
    assert not table.start("z9hG4bK2", REQUEST, False, 0.0, 2)
    assert table.bytes_held == 2 * size
    big = REQUEST + b"x" * 10_000
    table.on_response("z9hG4bK0", "NOTIFY", 200, 0.1)
    assert not table.start("z9hG4bK3", big, False, 0.1, 3)  # one request beyond the bound
    assert table.start("z9hG4bK3", REQUEST, False, 0.1, 3)


def test_timer_f_frees_room():
    table: ClientTransactions[int] = ClientTransactions(max_entries=1)
    assert table.start("z9hG4bK0", REQUEST, True, 0.0, 0)
    assert not table.start("z9hG4bK1", REQUEST, True, 1.0, 1)
    table.due(32.0)
    assert table.start("z9hG4bK1", REQUEST, True, 32.0, 1)


def test_bad_bounds_and_timers_are_refused():
    for kwargs in ({"max_entries": 0}, {"max_bytes": 10}, {"t1": 0.0}, {"t1": 5.0, "t2": 4.0}):
        with pytest.raises(ValueError):
            ClientTransactions(**kwargs)  # type: ignore[arg-type]


# --- Many transactions -------------------------------------------------------------------------


def test_many_transactions_each_complete_once_and_stale_timers_are_reclaimed():
    rng = random.Random(7)
    table: ClientTransactions[int] = ClientTransactions(max_bytes=1 << 30)
    n = 20_000
    for i in range(n):
        assert table.start(f"z9hG4bK{i:016x}", REQUEST, i % 3 == 0, i * 0.001, i)
    heap_before = len(table._heap)
    answered = set(rng.sample(range(n), 3 * n // 4))
    outcomes: dict[int, int] = {}
    for i in answered:
        done = table.on_response(f"z9hG4bK{i:016x}", "NOTIFY", 200, 20.0)
        assert done is not None
        outcomes[done.context] = done.status
    # the heap was rebuilt from its live items: stale ones never outnumber the live ones
    assert len(table._heap) < heap_before
    assert table._stale <= max(1024, len(table._heap) // 2)
    _, completed = run(table, 1000.0)
    for _, done in completed:
        assert done.context not in outcomes
        outcomes[done.context] = done.status
    assert len(outcomes) == n
    assert sum(1 for s in outcomes.values() if s == 408) == n - len(answered)
    assert len(table) == 0 and table.bytes_held == 0 and table.next_deadline() is None
    assert table._heap == [] and table._stale == 0


def test_completions_come_in_deadline_order():
    table: ClientTransactions[int] = ClientTransactions()
    for i, start in enumerate([5.0, 1.0, 3.0]):
        table.start(f"z9hG4bK{i}", REQUEST, True, start, i)
    _, completed = run(table, 100.0)
    assert [(t, c.context) for t, c in completed] == [(33.0, 1), (35.0, 2), (37.0, 0)]
