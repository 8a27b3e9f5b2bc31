"""orjson encoding of records and the first step of decoding: bytes -> JSON object."""
from __future__ import annotations

from typing import Any

import orjson

from schemas.errors import SchemaError

MAX_RECORD_BYTES = 1 << 20


def encode(record: Any) -> bytes:
    """Serialise a record dataclass (or plain JSON data) with orjson; tuples become lists."""
    return orjson.dumps(record)


def parse_object(data: bytes | bytearray | memoryview | str) -> dict[str, Any]:
    """Bytes to a JSON object, with a reason code for every way it can fail."""
    if isinstance(data, str):
        data = data.encode("utf-8", "surrogatepass")
    raw = bytes(data)
    if len(raw) > MAX_RECORD_BYTES:
        raise SchemaError("too_large", f"record has {len(raw)} bytes, limit {MAX_RECORD_BYTES}")
    try:
        raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise SchemaError("invalid_utf8", str(exc)) from None
    try:
        obj = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise SchemaError("invalid_json", str(exc)) from None
    if not isinstance(obj, dict):
        raise SchemaError("not_an_object", f"expected a JSON object, got {type(obj).__name__}")
    return obj
