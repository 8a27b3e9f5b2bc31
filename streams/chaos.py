"""Malformed records of every kind a feed gets wrong, to show (and test) that they are contained."""
from __future__ import annotations

import orjson

TS_NS = 1_767_623_400_000_000_000


def _tick(**fields: object) -> bytes:
    return orjson.dumps({"symbol": "ACME", "ts_ns": TS_NS, "price": 100.0, "size": 1.0} | fields)


def _news(**fields: object) -> bytes:
    return orjson.dumps({"id": "bad", "ts_ns": TS_NS, "source": "wire", "headline": "x", "symbols": ["ACME"]}
                        | fields)


BAD_TICKS: tuple[tuple[bytes, str], ...] = (
    (b"\xff\xfe not utf-8", "invalid_utf8"),
    (b"{truncated json", "invalid_json"),
    (b"[1, 2, 3]", "not_an_object"),
    (_tick(price=-5.0), "non_positive_price"),
    (_tick(size=-1.0), "negative_size"),
    (_tick(price="cheap"), "bad_type"),
    (_tick(ts_ns=12), "ts_out_of_range"),
    (orjson.dumps({"symbol": "ACME", "ts_ns": TS_NS, "bid_px": 10.5, "bid_sz": 1, "ask_px": 10.0, "ask_sz": 1}),
     "crossed_quote"),
    (orjson.dumps({"ts_ns": TS_NS, "price": 1.0, "size": 1.0}), "missing_field"),
    (orjson.dumps({"kind": "bundle", "symbol": "ACME", "ticks": [{"ts_ns": TS_NS, "price": -1.0, "size": 1.0}]}),
     "non_positive_price"),
    (orjson.dumps({"kind": "bundle", "symbol": "ACME", "ticks": [{"symbol": "BOLT", "ts_ns": TS_NS, "price": 1.0,
                                                                  "size": 1.0}]}), "bundle_symbol_mismatch"),
)
BAD_NEWS: tuple[tuple[bytes, str], ...] = (
    (_news(symbols=[]), "bad_symbols"),
    (_news(headline="y" * 5_000), "text_too_long"),
    (_news(ts_ns=4_200_000_000 * 10**9), "ts_out_of_range"),
    (b"\x00\x01\x02 binary", "invalid_json"),
)


def malformed_records(count: int) -> list[tuple[str, bytes, str]]:
    """`count` bad records as (topic kind "tick"/"news", bytes, expected dead-letter reason), cycling kinds."""
    pool = [("tick", raw, reason) for raw, reason in BAD_TICKS] + [("news", raw, reason) for raw, reason in BAD_NEWS]
    return [pool[i % len(pool)] for i in range(count)]
