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
