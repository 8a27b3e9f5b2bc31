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
