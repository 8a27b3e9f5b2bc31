import math

import orjson
import pytest

import schemas as s

TS = 1_767_623_400_000_000_000


def trade(**kw):
    obj = {"symbol": "ACME", "ts_ns": TS, "price": 10.5, "size": 3}
    obj.update(kw)
    return orjson.dumps(obj)


def quote(**kw):
    obj = {"symbol": "ACME", "ts_ns": TS, "bid_px": 10.0, "bid_sz": 1, "ask_px": 10.1, "ask_sz": 2}
    obj.update(kw)
    return orjson.dumps(obj)


def news(**kw):
    obj = {"id": "n1", "ts_ns": TS, "source": "wire", "headline": "ACME beats", "symbols": ["ACME"]}
    obj.update(kw)
    return orjson.dumps(obj)


def test_trade_and_quote_round_trip():
    t = s.decode_tick(trade())
    q = s.decode_tick(quote())
    assert isinstance(t, s.Trade) and t.price == 10.5 and t.size == 3.0
    assert isinstance(q, s.Quote) and q.mid == pytest.approx(10.05)
    assert s.decode_tick(s.encode(t)) == t and s.decode_tick(s.encode(q)) == q


@pytest.mark.parametrize("data, reason", [
    (trade(price=float("nan")) if False else b'{"symbol":"ACME","ts_ns":1767623400000000000,"price":NaN,"size":1}',
     "invalid_json"),
    (trade(price=-1.0), "non_positive_price"),
    (trade(price=0), "non_positive_price"),
    (trade(size=-2), "negative_size"),
    (trade(price="10"), "bad_type"),
    (trade(ts_ns=True), "bad_type"),
    (trade(ts_ns=1.5e18), "bad_type"),
    (trade(ts_ns=5), "ts_out_of_range"),
    (trade(ts_ns=2**62), "ts_out_of_range"),
    (trade(symbol=None), "missing_field"),
    (trade(symbol=""), "bad_identifier"),
    (trade(symbol="X" * 40), "text_too_long"),
    (quote(bid_px=10.2), "crossed_quote"),
    (quote(kind="trade"), "missing_field"),
    (orjson.dumps({"symbol": "A", "ts_ns": TS}), "unknown_kind"),
    (b"\xff\xfe{}", "invalid_utf8"),
    (b"[1, 2]", "not_an_object"),
    (b"{not json", "invalid_json"),
])
def test_bad_ticks_are_rejected_with_reason(data, reason):
    with pytest.raises(s.SchemaError) as err:
        s.decode_tick(data)
    assert err.value.reason == reason


def test_infinite_price_rejected():
    with pytest.raises(s.SchemaError) as err:
        s.Trade.from_obj({"symbol": "A", "ts_ns": TS, "price": math.inf, "size": 1})
    assert err.value.reason == "non_finite"


def test_news_validation():
    item = s.decode_news(news(symbols=["ACME", "BOLT", "ACME"], body=None))
    assert item.symbols == ("ACME", "BOLT") and item.body is None
    assert s.decode_news(s.encode(item)) == item
    for bad, reason in [(news(symbols=[]), "bad_symbols"), (news(headline="  "), "empty_headline"),
                        (news(headline="x" * 5000), "text_too_long"), (news(id=None), "missing_field"),
                        (news(symbols="ACME"), "bad_symbols"), (news(headline="a\x00b"), "bad_text")]:
        with pytest.raises(s.SchemaError) as err:
            s.decode_news(bad)
        assert err.value.reason == reason


def test_probs_direction_and_normalisation():
    assert s.Probs.normalised(2, 1, 1).p_up == 0.5
    assert s.Probs(0.5, 0.2, 0.3).direction == "up"
    assert s.Probs(0.2, 0.5, 0.3).direction == "down"
    assert s.Probs(0.4, 0.2, 0.4).direction == "flat"
    with pytest.raises(s.SchemaError):
        s.Probs.from_obj({"p_up": 0.5, "p_down": 0.5, "p_flat": 0.5})


def test_forecast_id_is_deterministic_and_distinguishes_triggers():
    a = s.forecast_id("ACME", TS, "cadence")
    assert a == s.forecast_id("ACME", TS, "cadence")
    assert a != s.forecast_id("ACME", TS, "news", "n1") != s.forecast_id("ACME", TS, "news", "n2")


def test_deadletter_keeps_original_bytes():
    raw = b"\xff garbage"
    dl = s.DeadLetter.of(topic="ticks", reason="invalid_utf8", detail="x", key=b"ACME", value=raw,
                         stage="agents", ts_wall_ns=1)
    back = s.decode_deadletter(s.encode(dl))
    assert back.value == raw and back.key == "ACME" and back.reason == "invalid_utf8"


def test_tick_bundle_decodes_good_ticks_and_isolates_bad_ones():
    bundle = orjson.dumps({"kind": "bundle", "symbol": "ACME", "ticks": [
        {"ts_ns": TS, "price": 10.0, "size": 1.0},
        {"ts_ns": TS + 1, "price": -1.0, "size": 1.0},
        {"ts_ns": TS + 2, "bid_px": 9.9, "bid_sz": 1, "ask_px": 10.1, "ask_sz": 2},
        {"symbol": "BOLT", "ts_ns": TS + 3, "price": 10.0, "size": 1.0},
        "junk"]})
    good, bad = s.decode_ticks(bundle)
    assert [t.ts_ns - TS for t in good] == [0, 2] and all(t.symbol == "ACME" for t in good)
    assert [e.reason for _, e in bad] == ["non_positive_price", "bundle_symbol_mismatch", "not_an_object"]
    assert s.decode_ticks(trade()) == ([s.decode_tick(trade())], [])
    for broken in (orjson.dumps({"kind": "bundle", "symbol": "ACME", "ticks": []}),
                   orjson.dumps({"kind": "bundle", "ticks": [{"ts_ns": TS, "price": 1.0, "size": 1.0}]})):
        with pytest.raises(s.SchemaError):
            s.decode_ticks(broken)
