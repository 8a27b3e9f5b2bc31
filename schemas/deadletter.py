"""A record that failed validation, kept whole with where it came from and why."""
from __future__ import annotations

import base64
from dataclasses import dataclass
from typing import Any

from schemas import fields as f
from schemas.codec import parse_object


@dataclass(frozen=True, slots=True)
class DeadLetter:
    topic: str
    reason: str
    detail: str
    key: str | None
    value_b64: str
    stage: str
    ts_wall_ns: int
    partition: int | None = None
    offset: int | None = None

    @classmethod
    def of(cls, *, topic: str, reason: str, detail: str, key: bytes | None, value: bytes | None,
           stage: str, ts_wall_ns: int, partition: int | None = None, offset: int | None = None) -> DeadLetter:
        key_text = None if key is None else key.decode("utf-8", "backslashreplace")
        value_b64 = base64.b64encode(value or b"").decode("ascii")
        return cls(topic, reason, detail[:2000], key_text, value_b64, stage, ts_wall_ns, partition, offset)

    @property
    def value(self) -> bytes:
        return base64.b64decode(self.value_b64)

    @classmethod
    def from_obj(cls, obj: dict[str, Any]) -> DeadLetter:
        return cls(f.text(obj, "topic", 256), f.text(obj, "reason", 64), f.text(obj, "detail", 4000),
                   f.text(obj, "key", 1024, optional=True), f.text(obj, "value_b64", 2 << 20),
                   f.text(obj, "stage", 64), f.integer(obj, "ts_wall_ns"), obj.get("partition"), obj.get("offset"))


def decode_deadletter(data: bytes) -> DeadLetter:
    return DeadLetter.from_obj(parse_object(data))
