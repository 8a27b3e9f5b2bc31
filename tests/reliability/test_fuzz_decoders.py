"""Every wire decoder, fed random and malformed input, returns a valid record or raises SchemaError.

SchemaError is what the agents and the inference worker turn into a dead letter with its `reason`;
any other exception would crash (or wedge) a worker. Hypothesis throws random bytes, random JSON,
and valid records with one field replaced by a wrong type, a missing value, a non-finite or
negative number, a crossed quote, a timestamp far in the past or future, huge or binary text.
"""
from __future__ import annotations

import math

import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import schemas as s
from schemas.fields import MAX_TS_NS, MIN_TS_NS

pytestmark = pytest.mark.reliability
TS = 1_767_623_400_000_000_000
FUZZ = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])

GOOD = {
    "trade": {"symbol": "ACME", "ts_ns": TS, "price": 10.5, "size": 3},
    "quote": {"symbol": "ACME", "ts_ns": TS, "bid_px": 10.0, "bid_sz": 1, "ask_px": 10.1, "ask_sz": 2},
    "news": {"id": "n1", "ts_ns": TS, "source": "wire", "headline": "ACME beats", "symbols": ["ACME"]},
    "watermark": {"kind": "watermark", "source": "replay", "ts_ns": TS, "origin": 1},
    "request": {"id": "r1", "symbol": "ACME", "ts_ns": TS, "horizon_s": 60, "trigger": "cadence",
                "prompt": "News: none (up, down or flat):", "numeric": {"p_up": 0.3, "p_down": 0.3, "p_flat": 0.4},
                "news_ids": ["n1"], "adapter": None, "ingest_wall_ns": TS, "created_wall_ns": TS,
                "deadline_wall_ns": TS, "features": {"ret_short": 0.001}},
    "forecast": {"id": "f1", "symbol": "ACME", "ts_ns": TS, "horizon_s": 60, "p_up": 0.3, "p_down": 0.3,
                 "p_flat": 0.4, "direction": "flat", "trigger": "news", "status": "ok",
                 "numeric": {"p_up": 0.3, "p_down": 0.3, "p_flat": 0.4}, "llm": None, "news_ids": [],
                 "model": "tiny@abc", "adapter": "lora-a", "published_wall_ns": TS,
                 "latency": {"queue_ms": 1.0, "inference_ms": 2.0, "total_ms": 3.0}},
    "deadletter": {"topic": "ticks", "reason": "invalid_json", "detail": "x", "key": None, "value_b64": "AAE=",
                   "stage": "agents", "ts_wall_ns": TS, "partition": 0, "offset": 1},
}
DECODERS = {
    "trade": s.decode_tick, "quote": s.decode_tick, "news": s.decode_news_event, "watermark": s.decode_news_event,
    "request": s.decode_request, "forecast": s.decode_forecast, "deadletter": s.decode_deadletter,
}
ALL_DECODERS = (s.decode_tick, s.decode_news_event, s.decode_news, s.decode_request, s.decode_forecast,
                s.decode_deadletter)

json_leaf = st.one_of(
    st.none(), st.booleans(), st.integers(min_value=-(2**63), max_value=2**64 - 1),
    st.floats(allow_nan=False, allow_infinity=False), st.text(max_size=40))
json_value = st.recursive(json_leaf, lambda inner: st.one_of(
    st.lists(inner, max_size=4), st.dictionaries(st.text(max_size=10), inner, max_size=4)), max_leaves=12)
bad_value = st.one_of(
    json_value,
    st.sampled_from([-1, 0, -1e-9, 1e308, -1e308, 2**63 - 1, -(2**63), MIN_TS_NS - 1, MAX_TS_NS, 1, True, "", " ",
                     "\x00", "a\x00b", "x" * 70_000, [], {}, [None], {"p_up": 1}]),
    st.binary(max_size=64).map(lambda b: b.decode("latin-1")))


def decodes_or_rejects(decoder, data: bytes):
    """The only acceptable outcomes: a record, or SchemaError with a non-empty reason."""
    try:
        return decoder(data)
    except s.SchemaError as error:
        assert error.reason and isinstance(error.reason, str)
        return None


@FUZZ
@given(data=st.binary(max_size=512))
def test_random_bytes_never_crash_a_decoder(data):
    for decoder in ALL_DECODERS:
        decodes_or_rejects(decoder, data)


@FUZZ
@given(value=json_value)
def test_random_json_never_crashes_a_decoder(value):
    data = orjson.dumps(value)
    for decoder in ALL_DECODERS:
        decodes_or_rejects(decoder, data)


@FUZZ
@given(kind=st.sampled_from(sorted(GOOD)), data=st.data())
def test_one_field_mutated_is_rejected_or_still_valid(kind, data):
    obj = dict(GOOD[kind])
    name = data.draw(st.sampled_from(sorted(obj)), label="field")
    if data.draw(st.booleans(), label="drop"):
        del obj[name]
    else:
        obj[name] = data.draw(bad_value, label="value")
    record = decodes_or_rejects(DECODERS[kind], orjson.dumps(obj))
    if record is not None:     # what passes validation is a sane record
        assert_sane(record)


@FUZZ
@given(kind=st.sampled_from(sorted(GOOD)), extra=st.dictionaries(st.text(max_size=8), json_value, max_size=3))
def test_unknown_fields_do_not_matter(kind, extra):
    obj = {k: v for k, v in extra.items() if k not in GOOD[kind] and k != "kind"} | GOOD[kind]
    assert DECODERS[kind](orjson.dumps(obj)) == DECODERS[kind](orjson.dumps(GOOD[kind]))


def assert_sane(record) -> None:
    ts_ns = getattr(record, "ts_ns", None)
    if ts_ns is not None:
        assert MIN_TS_NS <= ts_ns < MAX_TS_NS
    for name in ("price", "bid_px", "ask_px"):
        if hasattr(record, name):
            assert math.isfinite(getattr(record, name)) and getattr(record, name) > 0
    for name in ("size", "bid_sz", "ask_sz"):
        if hasattr(record, name):
            assert getattr(record, name) >= 0
    if isinstance(record, s.Quote):
        assert record.bid_px <= record.ask_px
    if isinstance(record, s.InferenceRequest):
        assert all(math.isfinite(v) for v in record.features.values())


@pytest.mark.parametrize("raw, reason", [
    (b'{"symbol":"ACME","ts_ns":1767623400000000000,"price":NaN,"size":1}', "invalid_json"),
    (b'{"symbol":"ACME","ts_ns":1767623400000000000,"price":Infinity,"size":1}', "invalid_json"),
    (b'{"symbol":"ACME","ts_ns":1767623400000000000,"price":1e400,"size":1}', "invalid_json"),
    (orjson.dumps(GOOD["trade"] | {"price": -3.0}), "non_positive_price"),
    (orjson.dumps(GOOD["trade"] | {"price": 1e300}), "price_out_of_range"),
    (orjson.dumps(GOOD["trade"] | {"price": 1e-300}), "price_out_of_range"),
    (orjson.dumps(GOOD["trade"] | {"size": 1e300}), "size_out_of_range"),
    (orjson.dumps(GOOD["quote"] | {"bid_px": 10.2}), "crossed_quote"),
    (orjson.dumps(GOOD["trade"] | {"ts_ns": 5}), "ts_out_of_range"),
    (orjson.dumps(GOOD["trade"] | {"ts_ns": MAX_TS_NS + 1}), "ts_out_of_range"),
    (orjson.dumps(GOOD["trade"] | {"ts_ns": 2**64 - 1}), "ts_out_of_range"),
    (orjson.dumps(GOOD["trade"] | {"symbol": "A" * 100}), "text_too_long"),
    (orjson.dumps(GOOD["trade"] | {"symbol": "\x00"}), "bad_text"),
    (b'{"symbol":"\\udcff","ts_ns":1767623400000000000,"price":1,"size":1}', "invalid_json"),
    (b"\x89PNG\r\n\x1a\n" + bytes(range(256)), "invalid_utf8"),
    (b"{" * 100_000, "invalid_json"),
    (b" " * (1 << 21), "too_large"),
])
def test_named_bad_ticks_get_their_reason(raw, reason):
    with pytest.raises(s.SchemaError) as caught:
        s.decode_tick(raw)
    assert caught.value.reason == reason


def test_huge_news_text_is_rejected_not_truncated():
    huge = orjson.dumps(GOOD["news"] | {"body": "b" * 50_000})
    with pytest.raises(s.SchemaError) as caught:
        s.decode_news_event(huge)
    assert caught.value.reason == "text_too_long"
