"""Market ticks: a trade (price, size) or a quote (bid/ask prices and sizes)."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

from schemas import fields as f
from schemas.codec import parse_object
from schemas.errors import SchemaError


@dataclass(frozen=True, slots=True)
class Trade:
    symbol: str
    ts_ns: int
    price: float
    size: float
    kind: Literal["trade"] = "trade"

    @classmethod
    def from_obj(cls, obj: dict[str, Any]) -> Trade:
        return cls(f.symbol(obj), f.timestamp_ns(obj), f.positive(obj, "price"), f.non_negative(obj, "size"))


@dataclass(frozen=True, slots=True)
class Quote:
    symbol: str
    ts_ns: int
    bid_px: float
    bid_sz: float
    ask_px: float
    ask_sz: float
    kind: Literal["quote"] = "quote"

    @classmethod
    def from_obj(cls, obj: dict[str, Any]) -> Quote:
        bid_px, ask_px = f.positive(obj, "bid_px"), f.positive(obj, "ask_px")
        if bid_px > ask_px:
            raise SchemaError("crossed_quote", f"bid {bid_px} > ask {ask_px}")
        return cls(f.symbol(obj), f.timestamp_ns(obj), bid_px, f.non_negative(obj, "bid_sz"),
                   ask_px, f.non_negative(obj, "ask_sz"))

    @property
    def mid(self) -> float:
        return 0.5 * (self.bid_px + self.ask_px)


Tick = Trade | Quote


def tick_from_obj(obj: dict[str, Any]) -> Tick:
    """A trade has `price`; a quote has `bid_px`; an explicit `kind` must agree."""
    kind = obj.get("kind")
    if kind is None:
        kind = "trade" if "price" in obj else "quote" if "bid_px" in obj else None
    if kind == "trade":
        return Trade.from_obj(obj)
    if kind == "quote":
        return Quote.from_obj(obj)
    raise SchemaError("unknown_kind", f"tick kind must be 'trade' or 'quote', got {kind!r}")


def decode_tick(data: bytes) -> Tick:
    return tick_from_obj(parse_object(data))


MAX_BUNDLE_TICKS = 10_000


def decode_ticks(data: bytes) -> tuple[list[Tick], list[tuple[dict[str, Any], SchemaError]]]:
    """What the `ticks` topic carries: one tick, or a bundle of one symbol's ticks in event-time order:

        {"kind": "bundle", "symbol": "ACME", "ticks": [{"ts_ns": ..., "price": ..., "size": ...}, ...]}

    (each tick may omit `symbol`: it is the bundle's). Returns the valid ticks and, for a bundle, each
    invalid tick with its error; a record that is not readable at all raises SchemaError."""
    obj = parse_object(data)
    if obj.get("kind") != "bundle":
        return [tick_from_obj(obj)], []
    symbol, rows = f.symbol(obj), obj.get("ticks")
    if not isinstance(rows, list) or not rows or len(rows) > MAX_BUNDLE_TICKS:
        raise SchemaError("bad_bundle", f"ticks must be a list of 1 to {MAX_BUNDLE_TICKS} ticks")
    good: list[Tick] = []
    bad: list[tuple[dict[str, Any], SchemaError]] = []
    for row in rows:
        try:
            good.append(_bundled(row, symbol))
        except SchemaError as error:
            bad.append((row if isinstance(row, dict) else {"value": row}, error))
    return good, bad


def _bundled(row: Any, symbol: str) -> Tick:
    if not isinstance(row, dict):
        raise SchemaError("not_an_object", f"bundled tick must be an object, got {type(row).__name__}")
    if row.setdefault("symbol", symbol) != symbol:
        raise SchemaError("bundle_symbol_mismatch", f"tick of {row['symbol']!r} in a bundle of {symbol!r}")
    return tick_from_obj(row)
