"""Field checks shared by every record: types, finiteness, time range, text limits.

Each check takes the decoded JSON object and a field name and returns the clean value
or raises `SchemaError` with a stable reason code.
"""
from __future__ import annotations

import math
import re
from typing import Any

from schemas.errors import SchemaError

# Event time must fall in [2000-01-01, 2100-01-01) UTC, in integer nanoseconds.
MIN_TS_NS = 946_684_800 * 10**9
MAX_TS_NS = 4_102_444_800 * 10**9
MAX_SYMBOL_CHARS = 32
MAX_ID_CHARS = 128
MAX_HEADLINE_CHARS = 1_000
MAX_BODY_CHARS = 20_000
MAX_SYMBOLS_PER_NEWS = 64
# Prices and sizes beyond any real market: their ratios and sums would overflow the features.
MIN_PRICE = 1e-6
MAX_PRICE = 1e9
MAX_SIZE = 1e12


def require(obj: dict[str, Any], name: str) -> Any:
    if name not in obj or obj[name] is None:
        raise SchemaError("missing_field", f"field {name!r} is required")
    return obj[name]


def integer(obj: dict[str, Any], name: str) -> int:
    value = obj.get(name)
    if type(value) is int:
        return value
    value = require(obj, name)
    if isinstance(value, bool) or not isinstance(value, int):
        raise SchemaError("bad_type", f"{name} must be an integer, got {type(value).__name__}")
    return value


def number(obj: dict[str, Any], name: str) -> float:
    value = obj.get(name)
    if type(value) is float and value - value == 0.0:   # the common case, finite (inf - inf and NaN are NaN)
        return value
    value = require(obj, name)
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise SchemaError("bad_type", f"{name} must be a number, got {type(value).__name__}")
    value = float(value)
    if not math.isfinite(value):
        raise SchemaError("non_finite", f"{name} must be finite, got {value}")
    return value


def positive(obj: dict[str, Any], name: str) -> float:
    """A price: > 0, and within [MIN_PRICE, MAX_PRICE]."""
    value = number(obj, name)
    if value <= 0:
        raise SchemaError("non_positive_price", f"{name} must be > 0, got {value}")
    if not MIN_PRICE <= value <= MAX_PRICE:
        raise SchemaError("price_out_of_range", f"{name}={value} is outside [{MIN_PRICE}, {MAX_PRICE}]")
    return value


def non_negative(obj: dict[str, Any], name: str) -> float:
    """A size: >= 0, and at most MAX_SIZE."""
    value = number(obj, name)
    if value < 0:
        raise SchemaError("negative_size", f"{name} must be >= 0, got {value}")
    if value > MAX_SIZE:
        raise SchemaError("size_out_of_range", f"{name}={value} is above {MAX_SIZE}")
    return value


def probability(obj: dict[str, Any], name: str) -> float:
    value = number(obj, name)
    if not 0.0 <= value <= 1.0:
        raise SchemaError("bad_probability", f"{name} must be in [0, 1], got {value}")
    return value


def timestamp_ns(obj: dict[str, Any], name: str = "ts_ns") -> int:
    value = integer(obj, name)
    if not MIN_TS_NS <= value < MAX_TS_NS:
        raise SchemaError("ts_out_of_range", f"{name}={value} is outside [2000, 2100) UTC")
    return value


def text(obj: dict[str, Any], name: str, max_chars: int, *, optional: bool = False) -> str | None:
    if optional and obj.get(name) is None:
        return None
    value = require(obj, name)
    if not isinstance(value, str):
        raise SchemaError("bad_type", f"{name} must be a string, got {type(value).__name__}")
    if len(value) > max_chars:
        raise SchemaError("text_too_long", f"{name} has {len(value)} chars, limit {max_chars}")
    if "\x00" in value:
        raise SchemaError("bad_text", f"{name} contains NUL characters")
    return value


def identifier(obj: dict[str, Any], name: str, max_chars: int = MAX_ID_CHARS) -> str:
    value = text(obj, name, max_chars)
    if not value or value != value.strip():
        raise SchemaError("bad_identifier", f"{name} must be non-empty without surrounding spaces")
    return value


ADAPTER_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")


def adapter_name(obj: dict[str, Any], name: str = "adapter") -> str:
    """A LoRA adapter's registered name: letters, digits, '_', '.', '-', never a path ('/', '..')."""
    value = identifier(obj, name)
    if not ADAPTER_NAME.fullmatch(value) or ".." in value:
        raise SchemaError("bad_adapter", f"{name} {value[:80]!r} is not an adapter name")
    return value


def symbol(obj: dict[str, Any], name: str = "symbol") -> str:
    return identifier(obj, name, MAX_SYMBOL_CHARS)
