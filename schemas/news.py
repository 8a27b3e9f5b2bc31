"""A news item: headline (and optional body) naming one or more symbols."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from schemas import fields as f
from schemas.codec import parse_object
from schemas.errors import SchemaError


@dataclass(frozen=True, slots=True)
class NewsItem:
    id: str
    ts_ns: int
    source: str
    headline: str
    symbols: tuple[str, ...]
    body: str | None = None

    @classmethod
    def from_obj(cls, obj: dict[str, Any]) -> NewsItem:
        headline = f.text(obj, "headline", f.MAX_HEADLINE_CHARS)
        if not headline.strip():
            raise SchemaError("empty_headline", "headline is blank")
        return cls(f.identifier(obj, "id"), f.timestamp_ns(obj), f.identifier(obj, "source"),
                   headline, _symbols(obj), f.text(obj, "body", f.MAX_BODY_CHARS, optional=True))


def _symbols(obj: dict[str, Any]) -> tuple[str, ...]:
    raw = f.require(obj, "symbols")
    if not isinstance(raw, list) or not raw:
        raise SchemaError("bad_symbols", "symbols must be a non-empty list")
    if len(raw) > f.MAX_SYMBOLS_PER_NEWS:
        raise SchemaError("bad_symbols", f"{len(raw)} symbols, limit {f.MAX_SYMBOLS_PER_NEWS}")
    names = [f.symbol({"symbol": s}) for s in raw]
    return tuple(dict.fromkeys(names))


def decode_news(data: bytes) -> NewsItem:
    return NewsItem.from_obj(parse_object(data))


@dataclass(frozen=True, slots=True)
class NewsWatermark:
    """A news publisher's promise: it will send no more news with `ts_ns` below this one.

    Publishers send one to every partition of `news` (replay does, every second of event time);
    the agents hold each forecast trigger until the news stream has passed it, so a forecast
    sees exactly the news at or before its time however the two streams interleave."""

    source: str
    ts_ns: int
    origin: int = 0   # the `news` partition it was published to (set by the agents' news router)
    kind: str = "watermark"

    @classmethod
    def from_obj(cls, obj: dict[str, Any]) -> NewsWatermark:
        origin = obj.get("origin", 0)
        if isinstance(origin, bool) or not isinstance(origin, int) or origin < 0:
            raise SchemaError("bad_type", "origin must be a partition number")
        return cls(f.identifier(obj, "source"), f.timestamp_ns(obj), origin)


def decode_news_event(data: bytes) -> NewsItem | NewsWatermark:
    """What the `news` topic carries: news items, and watermarks (`"kind": "watermark"`)."""
    obj = parse_object(data)
    return NewsWatermark.from_obj(obj) if obj.get("kind") == "watermark" else NewsItem.from_obj(obj)
