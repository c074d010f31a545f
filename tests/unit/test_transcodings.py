"""The fast transcoder must read and write what eventsourcing's JSONTranscoder does."""

from __future__ import annotations

import math
from datetime import datetime, timezone
from uuid import uuid4

from eventsourcing.persistence import DatetimeAsISO, JSONTranscoder, UUIDAsHex
from hypothesis import given, settings
from hypothesis import strategies as st

from infrastructure.transcodings import BytesAsBase64, FastJSONTranscoder


def transcoders() -> tuple[JSONTranscoder, FastJSONTranscoder]:
    pair = (JSONTranscoder(), FastJSONTranscoder())
    for transcoder in pair:
        for transcoding in (UUIDAsHex(), DatetimeAsISO(), BytesAsBase64()):
            transcoder.register(transcoding)
    return pair


STANDARD, FAST = transcoders()

values = st.one_of(
    st.none(), st.booleans(), st.text(), st.binary(max_size=64),
    st.integers(min_value=-2**70, max_value=2**70),
    st.floats(allow_nan=True, allow_infinity=True),
    st.datetimes(timezones=st.just(timezone.utc)),
    st.uuids(),
)
states = st.dictionaries(st.text(max_size=12), values, max_size=8)
nested = st.recursive(values, lambda inner: st.one_of(
    st.lists(inner, max_size=3), st.dictionaries(st.text(max_size=5), inner, max_size=3)),
    max_leaves=10)


def same(a, b) -> bool:
    if isinstance(a, float) and isinstance(b, float) and math.isnan(a):
        return math.isnan(b)
    if isinstance(a, dict):
        return isinstance(b, dict) and a.keys() == b.keys() and all(same(a[k], b[k]) for k in a)
    if isinstance(a, list):
        return isinstance(b, list) and len(a) == len(b) and all(map(same, a, b))
    return type(a) is type(b) and a == b


def round_trips(state) -> None:
    try:
        expected = STANDARD.decode(STANDARD.encode(state))
    except Exception:  # what the standard transcoder refuses, the fast one refuses too
        try:
            FAST.encode(state)
        except Exception:
            return
        raise AssertionError(f"fast transcoder accepted what the standard refused: {state!r}")
    for written in (FAST.encode(state), STANDARD.encode(state)):
        assert same(FAST.decode(written), expected)
        assert same(STANDARD.decode(written), expected)


@settings(max_examples=400, deadline=None)
@given(states)
def test_flat_states_round_trip_the_same_both_ways(state):
    round_trips(state)


@settings(max_examples=200, deadline=None)
@given(st.dictionaries(st.text(max_size=5), nested, max_size=4))
def test_nested_states_round_trip_the_same_both_ways(state):
    round_trips(state)


def test_an_event_like_state_takes_the_fast_path_and_keeps_the_tagged_form():
    state = {"aor": "sip:alice@example.com", "expires_at": 1764201600.25,
             "body": b"<presence/>", "timestamp": datetime(2026, 11, 27, tzinfo=timezone.utc),
             "source": None, "version": 3}
    written = FAST.encode(state)
    assert b'{"_type_":"b64","_data_":"PHByZXNlbmNlLz4="}' in written
    assert b'"_type_":"datetime_iso"' in written
    assert STANDARD.decode(written) == state


def test_uuids_and_non_finite_floats_keep_the_standard_form():
    ident = uuid4()
    written = FAST.encode({"id": ident, "x": float("inf")})
    assert written == STANDARD.encode({"id": ident, "x": float("inf")})
    assert FAST.decode(written)["id"] == ident
